"""Where a durable write's server CPU goes: W7's load against memcachedlite alone.

    python benchmarks/durable_probe.py [--writers 50] [--seconds 5] [--rounds 3] [--perf]

Starts ``mcl serve --fsync always`` pinned to the last CPU (as ``run.py``
does), drives it with the project's load generator from the other CPUs (50
request/response writers of 100-byte sets by default) and reports, per
acknowledged set, what ``run.py`` cannot break down: the server's user and
system CPU, its voluntary and involuntary context switches (summed over all
its threads from ``/proc``), and its fsyncs (``strace -c`` is far too
intrusive, so they are read as the data file's sync marks: one per fsync that
was followed by a write). With ``--perf`` it also records ``perf stat`` of the
server for the measured window (needs the ``perf`` tool). The figures are for
A/B comparisons of the commit path on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run import free_port, wait_for_port  # noqa: E402  (benchmarks/run.py, beside this file)

from memcachedlite.loadgen import runner as loadgen  # noqa: E402
from memcachedlite.loadgen.config import LoadConfig  # noqa: E402


def _cpu_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime (clock ticks)


def _switches(pid: int) -> tuple[int, int]:
    voluntary = involuntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # a thread that just ended
        voluntary += int(re.search(r"voluntary_ctxt_switches:\s+(\d+)", text).group(1))
        involuntary += int(re.search(r"nonvoluntary_ctxt_switches:\s+(\d+)", text).group(1))
    return voluntary, involuntary


def _marks(path: Path) -> int:
    return path.read_bytes().count(b"\nsync ")


def probe(writers: int, seconds: float, use_perf: bool, record: str = "") -> dict[str, float]:
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpus = cpus[-1], tuple(cpus[:-1]) or (cpus[-1],)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.txt"
        proc = subprocess.Popen(
            [sys.executable, "-m", "memcachedlite", "serve", "--port", str(port), "--data-file", str(data),
             "--fsync", "always", "--cpu", str(server_cpu)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for_port(port, proc)
            config = dict(port=port, connections=writers, get_ratio=0.0, keys=10_000, prefill=False, cpus=client_cpus)
            loadgen.run(LoadConfig(duration=1.0, **config))  # warm-up
            perf = None
            if record.endswith(".txt"):  # py-spy's collapsed stacks
                perf = subprocess.Popen(
                    ["py-spy", "record", "-p", str(proc.pid), "-o", record, "-f", "raw", "-r", "400", "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
            elif record:
                perf = subprocess.Popen(
                    ["perf", "record", "-e", "cpu-clock", "-F", "4000", "-g", "-p", str(proc.pid), "-o", record],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
            elif use_perf:
                perf = subprocess.Popen(
                    ["perf", "stat", "-p", str(proc.pid), "-e", "task-clock,context-switches,page-faults"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
            ticks0, switches0, marks0 = _cpu_ticks(proc.pid), _switches(proc.pid), _marks(data)
            result = loadgen.run(LoadConfig(duration=seconds, **config))
            ticks1, switches1, marks1 = _cpu_ticks(proc.pid), _switches(proc.pid), _marks(data)
            perf_text = ""
            if perf is not None:
                perf.send_signal(2)
                perf_text = perf.communicate()[1]
        finally:
            proc.terminate()
            proc.wait(10)
    ops = result.ops
    if result.errors:
        raise RuntimeError(f"{result.errors} errors")
    hz = os.sysconf("SC_CLK_TCK")
    out = {
        "ops/s": result.ops_per_sec,
        "user us/op": (ticks1[0] - ticks0[0]) / hz / ops * 1e6,
        "sys us/op": (ticks1[1] - ticks0[1]) / hz / ops * 1e6,
        "voluntary cs/op": (switches1[0] - switches0[0]) / ops,
        "involuntary cs/op": (switches1[1] - switches0[1]) / ops,
        "sets/fsync": ops / max(marks1 - marks0, 1),
    }
    if perf_text and use_perf:
        print(perf_text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--perf", action="store_true", help="perf stat the server during each measured window")
    parser.add_argument(
        "--record", metavar="FILE", default="",
        help="record the server's measured window of the first round into FILE: py-spy's collapsed stacks "
        "if FILE ends in .txt, else perf record with call graphs",
    )  # fmt: skip
    args = parser.parse_args()
    runs = [probe(args.writers, args.seconds, args.perf, args.record if i == 0 else "") for i in range(args.rounds)]
    for name in runs[0]:
        values = [run[name] for run in runs]
        print(f"{name:18} {statistics.median(values):10.2f}  [{min(values):.2f}-{max(values):.2f}]")


if __name__ == "__main__":
    main()
