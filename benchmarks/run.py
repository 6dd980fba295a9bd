"""memcachedlite against the real memcached, side by side, on this machine.

    python benchmarks/run.py [--quick] [--json out.json] [--png chart.png]

Starts memcached (``memcached -l 127.0.0.1 -p <free port> -U 0 -t 1``) and
memcachedlite (``python -m memcachedlite serve --cpu N`` from this checkout,
with a data file in a temporary directory) on free ports of 127.0.0.1, one at
a time and fresh for every measurement, and runs the same workloads against each,
alternating the order round by round (A B, B A, A B). It prints a table of
medians with [min-max] and the ratio memcachedlite/memcached, and checks the
targets of the performance issue.

Workloads (load from memcachedlite.loadgen, which checks every reply):

  W1  1 connection, get, request/response: ops/s and p50/p99 latency
  W2  50 connections, 90% get / 10% set, 100-byte values
  W3  get of 100 keys per request, 4 connections: keys/s
  W4  4 connections, set of 1 KiB values, request/response (fsync everysec)
  W5  memory: growth of the server's RSS after storing 200,000 100-byte items
  W6  pipelined sets, 100 per send, 4 connections (fsync everysec)
  W7  --fsync always: 50 writers against 1 writer (group commit); memcached,
      which has no fsync, runs the same load for reference
  M2  memcslap (libmemcached-tools), a second, independent load generator:
      get and set with 50 threads

Options: ``--quick`` (1 round of short runs, under two minutes), ``--rounds``,
``--duration``, ``--only W1,W3``, ``--json FILE`` (every run and the summary),
``--png FILE`` (a chart; needs matplotlib: ``pip install '.[bench]'``),
``--profile DIR`` (record memcachedlite with py-spy during each run and print
its hot spots; numbers taken while profiling are slower), ``--no-pin`` (see
"CPU placement" below). A full run takes about 7 minutes on 2 cores. Every process started is stopped at the end, on
errors and on Ctrl-C too.

CPU placement (the same budget for both servers): with two or more CPUs
allowed, the last one is the server's and the others are the clients'.
memcachedlite runs with ``--cpu N`` on it; memcached runs with one worker
thread (``-t 1``) and is pinned to the same CPU, all its threads included
(``sched_setaffinity`` before it starts): each server gets exactly one core.
The load generator's worker processes (``LoadConfig.cpus``), memcslap and
this script keep to the other CPUs, so the load never takes CPU time from the
server it measures. Without that, the OS placed one of the load generator's
processes on the server's core in some runs and not in others, and W1-W3
varied by up to 2-3x between rounds (W1 p50 26-95 us, W2 28k-40k ops/s in 5
rounds). ``--no-pin`` restores the old placement for comparison (nothing
pinned but memcachedlite's own ``--cpu auto``; memcached with ``-t 2``). With
a single CPU allowed nothing can be kept apart: nothing is pinned, and
memcached still runs with ``-t 1``.

The load generator shares the machine with the server: on 2 cores a Python
client on one core can be the limit for memcached, which flatters the ratios;
memcslap's rows are a check on that. After the table, runs are listed where
the load generator used >= 90% of its CPUs ("client-bound") or where other
programs took >= 10% of the server's CPU ("disturbed", from /proc/stat; only
when pinned); the JSON has both figures for every run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memcachedlite import loadgen  # noqa: E402

LITE = "memcachedlite"
MEMCACHED = "memcached"
TARGETS = (LITE, MEMCACHED)

# -- settings -------------------------------------------------------------------


@dataclass
class Settings:
    rounds: int = 3
    duration: float = 5.0  # measured seconds per timed run
    warmup: float = 1.0
    w5_items: int = 200_000
    memcslap_ops: int = 1000  # per thread; 50 threads
    only: set | None = None
    profile_dir: Path | None = None
    #: Keep servers and load apart (see "CPU placement" in the module docstring).
    pin: bool = True
    #: Filled by place(): the servers' CPU and the load's, None when not pinned.
    server_cpu: int | None = None
    client_cpus: tuple[int, ...] | None = None

    @classmethod
    def quick(cls) -> Settings:
        return cls(rounds=1, duration=1.5, warmup=0.5, memcslap_ops=200)


# -- placement ------------------------------------------------------------------


def place(settings: Settings) -> str:
    """Choose the server's CPU and the load's; pin this script to the load's.

    Returns a line saying what was chosen.
    """
    if not settings.pin:
        return "CPU placement: not pinned (--no-pin): memcachedlite --cpu auto, memcached -t 2"
    if not hasattr(os, "sched_setaffinity"):
        return "CPU placement: not pinned (this platform cannot)"
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return f"CPU placement: not pinned (only CPU {allowed[0]} allowed); memcached -t 1"
    settings.server_cpu = allowed[-1]  # the one memcachedlite's --cpu auto picks
    settings.client_cpus = tuple(allowed[:-1])
    os.sched_setaffinity(0, settings.client_cpus)  # this script, and memcslap after it
    clients = ",".join(map(str, settings.client_cpus))
    return (
        f"CPU placement: servers on CPU {settings.server_cpu} (memcachedlite --cpu {settings.server_cpu}, "
        f"memcached -t 1), load generator and this script on CPU {clients}"
    )


# -- servers --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s") from None
            time.sleep(0.02)


def proc_status(pid: int, field_name: str) -> int:
    """A kB field of /proc/<pid>/status (VmRSS...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class Server:
    """A server process on a free port of 127.0.0.1; stopped on exit, whatever happens."""

    name = ""

    def __init__(self, workdir: Path, fsync: str = "everysec", settings: Settings | None = None) -> None:
        self.workdir = workdir
        self.fsync = fsync
        self.settings = settings or Settings(pin=False)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"{self.name}-{time.monotonic_ns()}.log"
        self._log: Any = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> Server:
        self._log = open(self.log_path, "wb")
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def start(self) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        cpu = self.settings.server_cpu
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            start_new_session=True,  # a Ctrl-C reaches us, and we stop the server in order
            # on its CPU from the first instruction: every thread it starts inherits it
            preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}),
        )
        try:
            wait_for_port(self.port, self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{self.name} did not start: {exc}\n{self.output()}") from None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Memcached(Server):
    name = MEMCACHED

    def command(self) -> list[str]:
        binary = shutil.which("memcached") or "/usr/bin/memcached"
        threads = "2" if not self.settings.pin else "1"  # -t 1: one core, as memcachedlite
        cmd = [binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-t", threads]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # memcached refuses to run as root otherwise
        return cmd


class Lite(Server):
    name = LITE

    def command(self) -> list[str]:
        data = self.workdir / f"data-{time.monotonic_ns()}.txt"
        return [
            sys.executable,
            "-m",
            "memcachedlite",
            "serve",
            "--port",
            str(self.port),
            "--data-file",
            str(data),
            "--fsync",
            self.fsync,
            "--cpu",
            "auto" if self.settings.server_cpu is None else str(self.settings.server_cpu),
        ]


SERVERS: dict[str, type[Server]] = {LITE: Lite, MEMCACHED: Memcached}


def raw_stats(port: int) -> dict[str, str]:
    """The server's ``stats`` as a dict (raw socket, no client library)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"stats\r\n")
        buf = b""
        deadline = time.monotonic() + 10
        while not buf.endswith(b"END\r\n") and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    out = {}
    for line in buf.decode(errors="replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out


# -- profiling (optional) -------------------------------------------------------------


PROFILE_RATE = 200  # samples per second


@contextlib.contextmanager
def profiled(server: Server, label: str, settings: Settings) -> Iterator[None]:
    """With --profile, record memcachedlite with py-spy while the block runs.

    Only samples of the thread holding the GIL are kept (``--gil``): in a
    server of many threads and one GIL that is where the CPU time that limits
    throughput goes (threads waiting in recv would otherwise fill the profile).
    """
    if settings.profile_dir is None or server.name != LITE:
        yield
        return
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    settings.profile_dir.mkdir(parents=True, exist_ok=True)
    out = settings.profile_dir / f"{label}.txt"
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(server.pid),
            "--format",
            "raw",
            "--rate",
            str(PROFILE_RATE),
            "--gil",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(0.5)  # let it attach
    started = time.monotonic()
    try:
        yield
    finally:
        out.with_suffix(".json").write_text(json.dumps({"seconds": time.monotonic() - started, "rate": PROFILE_RATE}))
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def hot_spots(raw_file: Path, top: int = 15) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy's raw (collapsed) stacks: (self time, total time) per function, in % of the samples."""
    self_time: dict[str, int] = {}
    total_time: dict[str, int] = {}
    busy = 0
    for line in raw_file.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = [f for f in stack.split(";") if "(" in f and ".py" in f]
        if not frames:
            continue
        leaf = frames[-1]
        count = int(count_text)
        busy += count
        name = _frame_name(leaf)
        self_time[name] = self_time.get(name, 0) + count
        for frame_name in {_frame_name(f) for f in frames}:
            total_time[frame_name] = total_time.get(frame_name, 0) + count
    if not busy:
        return [], []

    def ranked(table: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, 100.0 * v / busy) for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:top]]

    return ranked(self_time), ranked(total_time)


def _frame_name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    match = re.match(r"(.*) \((.*?):\d+\)$", frame.strip())
    if not match:
        return frame.strip()
    return f"{match.group(1)} ({Path(match.group(2)).name})"


# -- workloads ----------------------------------------------------------------------


@dataclass
class Measure:
    """One run of one workload against one server."""

    workload: str
    server: str
    round: int
    metrics: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    #: What makes the figures less trustworthy (see load()): shown after the table.
    warnings: list[str] = field(default_factory=list)


def cpu_busy_seconds(cpu: int) -> float:
    """Seconds CPU ``cpu`` has spent running programs (or stolen by the hypervisor), from /proc/stat.

    Interrupt and softirq time is left out: much of it is the network traffic
    of the benchmark itself, and it is not counted as the server's either.
    """
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, line.split()[1:9])
                return (user + nice + system + steal) / _TICK
    raise KeyError(cpu)


class CpuSampler:
    """Server CPU use while the load is measured, from the load's progress calls.

    With the server pinned to ``server_cpu``, also how busy that CPU was with
    anything else (:meth:`others_percent`): some other program on the machine,
    which makes the run slower than it should be.
    """

    def __init__(self, pid: int, warmup: float, total: float, server_cpu: int | None = None) -> None:
        self.pid = pid
        self.warmup = warmup
        self.total = total
        self.server_cpu = server_cpu
        self.samples: list[tuple[float, float, float]] = []

    def __call__(self, elapsed: float, ops: int, errors: int) -> None:
        if self.warmup <= elapsed <= self.total + 0.01:
            with contextlib.suppress(OSError, KeyError, ValueError):
                busy = cpu_busy_seconds(self.server_cpu) if self.server_cpu is not None else 0.0
                self.samples.append((time.monotonic(), cpu_seconds(self.pid), busy))

    def percent(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, c0, _), (t1, c1, _) = self.samples[0], self.samples[-1]
        return round(100.0 * (c1 - c0) / (t1 - t0), 1) if t1 > t0 else None

    def others_percent(self) -> float | None:
        """CPU use of everything but the server on the server's CPU (None when not pinned)."""
        if self.server_cpu is None or len(self.samples) < 2:
            return None
        (t0, c0, b0), (t1, c1, b1) = self.samples[0], self.samples[-1]
        if t1 <= t0:
            return None
        return round(max(0.0, 100.0 * ((b1 - b0) - (c1 - c0)) / (t1 - t0)), 1)


#: A run is flagged when the load generator used this share of its CPUs (it,
#: not the server, may then be the limit) or when other programs took this
#: many percent of the server's CPU.
CLIENT_BOUND = 0.9
DISTURBED = 10.0


def load(server: Server, settings: Settings, m: Measure, tag: str = "", **options: Any) -> loadgen.BenchResult:
    """Run the project's load generator against ``server`` and note what it saw."""
    options.setdefault("duration", settings.duration)
    options.setdefault("warmup", settings.warmup)
    options.setdefault("cpus", settings.client_cpus)
    config = loadgen.LoadConfig(host="127.0.0.1", port=server.port, **options)
    sampler = CpuSampler(server.pid, config.warmup, config.warmup + config.duration, settings.server_cpu)
    result = loadgen.run(config, progress=sampler, progress_interval=0.25)
    m.errors += result.errors
    for kind, n in result.error_kinds.items():
        m.error_kinds[kind] = m.error_kinds.get(kind, 0) + n
    server_cpu = sampler.percent()
    others = sampler.others_percent()
    client_cores = len(config.cpus) if config.cpus else os.cpu_count() or 1
    client_share = result.client_cpu_percent / 100 / min(client_cores, max(1, result.processes))
    m.notes[f"loadgen{tag}"] = dict(
        result.to_dict(),
        server_cpu_percent=server_cpu,
        others_on_server_cpu_percent=others,
        client_share_of_its_cpus=round(client_share, 2),
    )
    if client_share >= CLIENT_BOUND:
        m.warnings.append(f"client-bound{tag} ({100 * client_share:.0f}% of its CPUs)")
    if others is not None and others >= DISTURBED:
        m.warnings.append(f"disturbed{tag} (other programs took {others:.0f}% of the server's CPU)")
    if server_cpu is not None and result.ops_per_sec:
        m.metrics[f"server CPU us/op{tag}"] = round(server_cpu / 100 * 1e6 / result.ops_per_sec, 2)
    return result


def w1(server: Server, s: Settings, m: Measure) -> None:
    r = load(server, s, m, connections=1, get_ratio=1.0, keys=1000, processes=1)
    lat = r.latency_us()
    m.metrics.update({"ops/s": r.ops_per_sec, "p50 us": lat["p50"], "p99 us": lat["p99"]})


def w2(server: Server, s: Settings, m: Measure) -> None:
    r = load(server, s, m, connections=50, get_ratio=0.9, value_size=100, keys=10_000)
    m.metrics.update({"ops/s": r.ops_per_sec, "p99 us": r.latency_us()["p99"]})


def w3(server: Server, s: Settings, m: Measure) -> None:
    r = load(server, s, m, connections=4, get_ratio=1.0, multiget=100, value_size=100, keys=10_000)
    m.metrics.update({"keys/s": r.keys_per_sec})
    if r.keys and r.hits != r.keys:
        m.notes["misses"] = r.keys - r.hits


def w4(server: Server, s: Settings, m: Measure) -> None:
    r = load(server, s, m, connections=4, get_ratio=0.0, value_size=1024, keys=10_000, prefill=False)
    m.metrics.update({"ops/s": r.ops_per_sec, "p99 us": r.latency_us()["p99"]})


def w5(server: Server, s: Settings, m: Measure) -> None:
    raw_stats(server.port)  # one connection served before the baseline
    time.sleep(0.2)
    before = proc_status(server.pid, "VmRSS")
    r = load(
        server,
        s,
        m,
        connections=4,
        duration=0.0,
        warmup=0.0,
        value_size=100,
        keys=s.w5_items,
        processes=1,
        key_prefix="w5:",
    )
    time.sleep(0.5)
    after = proc_status(server.pid, "VmRSS")
    items = int(raw_stats(server.port).get("curr_items", -1))
    m.metrics.update(
        {
            "RSS growth MiB": round((after - before) / 1024, 1),
            "stored/s": r.prefill_items / max(r.prefill_seconds, 1e-9),
        }
    )
    m.notes.update(rss_before_kib=before, rss_after_kib=after, curr_items=items)
    if items != s.w5_items:
        m.errors += 1
        m.error_kinds[f"curr_items is {items}, not {s.w5_items}"] = 1


def w6(server: Server, s: Settings, m: Measure) -> None:
    r = load(server, s, m, connections=4, get_ratio=0.0, pipeline=100, value_size=100, keys=10_000, prefill=False)
    m.metrics.update({"sets/s": r.ops_per_sec})


def w7(server: Server, s: Settings, m: Measure) -> None:
    one = load(server, s, m, " (1 writer)", connections=1, get_ratio=0.0, keys=10_000, prefill=False, processes=1)
    many = load(server, s, m, " (50 writers)", connections=50, get_ratio=0.0, keys=10_000, prefill=False)
    m.metrics.update({"1 writer ops/s": one.ops_per_sec, "50 writers ops/s": many.ops_per_sec})
    if one.ops_per_sec:
        m.metrics["gain 50w/1w"] = many.ops_per_sec / one.ops_per_sec


_MEMCSLAP_LINE = re.compile(r"Time to (get|set)\s+(\d+) keys by\s+(\d+) threads:\s+([\d.]+) seconds")


def memcslap(server: Server, s: Settings, m: Measure) -> None:
    binary = shutil.which("memcslap") or shutil.which("memslap")
    if binary is None:
        raise RuntimeError("memcslap is not installed (apt-get install libmemcached-tools)")
    threads = 50
    for test in ("get", "set"):
        cmd = [
            binary,
            f"--servers=127.0.0.1:{server.port}",
            f"--concurrency={threads}",
            f"--execute-number={s.memcslap_ops}",
            f"--test={test}",
            "--tcp-nodelay",
        ]
        # memcslap runs where this script runs: on the load's CPUs (see place())
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            m.errors += 1
            m.error_kinds[f"memcslap {test} timed out"] = 1
            continue
        match = _MEMCSLAP_LINE.search(done.stdout)
        # memcslap counts only the keys that succeeded and prints failures on stderr, exiting 0
        failures = sum(1 for line in done.stderr.splitlines() if "error" in line.lower() or "failure" in line.lower())
        expected = threads * s.memcslap_ops
        keys = int(match.group(2)) if match else 0
        lost = max(0, expected - keys) + failures
        if done.returncode or lost:
            m.errors += max(1, lost)
            m.error_kinds[f"memcslap {test}: {expected - keys} of {expected} missing, exit {done.returncode}"] = lost
        if match and float(match.group(4)) > 0:
            m.metrics[f"{test} ops/s"] = keys / float(match.group(4))
        m.notes[f"memcslap {test}"] = (done.stdout.strip().splitlines() or [""])[-3:]


@dataclass
class Workload:
    id: str
    title: str
    run: Callable[[Server, Settings, Measure], None]
    lite_fsync: str = "everysec"


WORKLOADS = [
    Workload("W1", "1 connection, get, request/response", w1),
    Workload("W2", "50 connections, 90% get / 10% set, 100 B values", w2),
    Workload("M2", "memcslap, 50 threads, get / set (second load generator)", memcslap),
    Workload("W3", "get of 100 keys per request, 4 connections", w3),
    Workload("W4", "4 connections, set 1 KiB values, request/response", w4),
    Workload("W5", "memory: RSS growth after storing 200,000 items of 100 B", w5),
    Workload("W6", "pipelined sets, 100 per send, 4 connections", w6),
    Workload("W7", "fsync always (memcachedlite): 50 writers vs 1 writer", w7, lite_fsync="always"),
]


@dataclass
class Row:
    """One line of the table: a metric of a workload, its direction and target."""

    workload: str
    metric: str
    better: str  # "higher" or "lower"
    target: float | None = None  # on the ratio, or on memcachedlite's own value if own_target
    own_target: bool = False


ROWS = [
    Row("W1", "ops/s", "higher"),
    Row("W1", "p50 us", "lower", 1.15),
    Row("W1", "p99 us", "lower"),
    Row("W2", "ops/s", "higher", 0.5),
    Row("W2", "p99 us", "lower"),
    Row("M2", "get ops/s", "higher"),
    Row("M2", "set ops/s", "higher"),
    Row("W3", "keys/s", "higher", 0.65),
    Row("W4", "ops/s", "higher", 0.65),
    Row("W5", "RSS growth MiB", "lower", 1.5),
    Row("W6", "sets/s", "higher", 0.5),
    Row("W7", "1 writer ops/s", "higher"),
    Row("W7", "50 writers ops/s", "higher"),
    Row("W7", "gain 50w/1w", "higher", 20.0, own_target=True),
]


# -- running ------------------------------------------------------------------------


def run_all(settings: Settings, workdir: Path, log: Callable[[str], None]) -> list[Measure]:
    measures: list[Measure] = []
    for workload in WORKLOADS:
        if settings.only and workload.id not in settings.only:
            continue
        for round_ in range(settings.rounds):
            order = TARGETS if round_ % 2 == 0 else TARGETS[::-1]
            for name in order:
                fsync = workload.lite_fsync if name == LITE else "everysec"
                m = Measure(workload.id, name, round_ + 1)
                started = time.monotonic()
                with SERVERS[name](workdir, fsync=fsync, settings=settings) as server:
                    with profiled(server, f"{workload.id}-round{round_ + 1}", settings):
                        workload.run(server, settings, m)
                    m.notes["server_cpu_seconds_total"] = cpu_seconds(server.pid)
                    m.notes["server_rss_kib_end"] = proc_status(server.pid, "VmRSS")
                measures.append(m)
                shown = ", ".join(f"{k} {_num(v)}" for k, v in m.metrics.items() if "CPU" not in k)
                log(
                    f"  {workload.id} round {round_ + 1} {name:<13} {shown}"
                    f"{f'  ERRORS {m.errors}' if m.errors else ''}  ({time.monotonic() - started:.1f} s)"
                )
    return measures


def summarize(values: list[float]) -> dict[str, Any]:
    """Median, min and max of the values of one metric (empty: None)."""
    if not values:
        return {"median": None, "min": None, "max": None, "values": []}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


def ratio(lite: float | None, memcached: float | None) -> float | None:
    """memcachedlite / memcached, or None when either is missing or memcached's is 0."""
    if lite is None or not memcached:
        return None
    return lite / memcached


def build_rows(measures: list[Measure]) -> list[dict[str, Any]]:
    rows = []
    titles = {w.id: w.title for w in WORKLOADS}
    for row in ROWS:
        per = {}
        errors = {}
        for name in TARGETS:
            runs = [m for m in measures if m.workload == row.workload and m.server == name]
            per[name] = summarize([m.metrics[row.metric] for m in runs if row.metric in m.metrics])
            errors[name] = sum(m.errors for m in runs)
        if per[LITE]["median"] is None and per[MEMCACHED]["median"] is None:
            continue
        r = ratio(per[LITE]["median"], per[MEMCACHED]["median"])
        met = None
        if row.target is not None:
            value = per[LITE]["median"] if row.own_target else r
            if value is not None:
                met = value >= row.target if row.better == "higher" else value <= row.target
        rows.append(
            {
                "workload": row.workload,
                "title": titles.get(row.workload, ""),
                "metric": row.metric,
                "better": row.better,
                LITE: per[LITE],
                MEMCACHED: per[MEMCACHED],
                "ratio": r,
                "target": row.target,
                "target_on": "memcachedlite" if row.own_target else "ratio",
                "met": met,
                "errors": errors,
            }
        )
    return rows


def _num(value: float | None) -> str:
    """Compact: 1234567 -> 1.23M, 45678 -> 45.7k, 12.345 -> 12.3."""
    if value is None:
        return "-"
    v = abs(value)
    if v >= 1e6:
        return f"{value / 1e6:.2f}M"
    if v >= 1e4:
        return f"{value / 1e3:.1f}k"
    if v >= 1e3:
        return f"{value / 1e3:.2f}k"
    if v >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"


def _cell(summary: dict[str, Any]) -> str:
    if summary["median"] is None:
        return "-"
    if len(summary["values"]) == 1:
        return _num(summary["median"])
    return f"{_num(summary['median'])} [{_num(summary['min'])}-{_num(summary['max'])}]"


def _target_text(row: dict[str, Any]) -> str:
    if row["target"] is None:
        return ""
    sign = ">=" if row["better"] == "higher" else "<="
    where = "" if row["target_on"] == "ratio" else " (own)"
    verdict = {True: "met", False: "MISSED", None: "?"}[row["met"]]
    return f"{sign}{row['target']:g}{where} {verdict}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a plain-text table (also valid Markdown)."""
    header = ["workload", "metric", LITE, MEMCACHED, "ratio", "target", "errors"]
    lines = [header]
    for row in rows:
        direction = "↑" if row["better"] == "higher" else "↓"
        lines.append(
            [
                row["workload"],
                f"{row['metric']} {direction}",
                _cell(row[LITE]),
                _cell(row[MEMCACHED]),
                "-" if row["ratio"] is None else f"{row['ratio']:.2f}",
                _target_text(row),
                f"{row['errors'][LITE]}/{row['errors'][MEMCACHED]}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            changed = len(dirty.stdout.splitlines())
            info["code"] = head.stdout.strip() + (f" + {changed} uncommitted files" if changed else "")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        binary = shutil.which("memcached") or "memcached"
        info["memcached"] = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10).stdout.strip()
    return info


def draw_chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Bars of memcachedlite relative to memcached (higher is better), with targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["ratio"] is not None and r["target_on"] == "ratio" and r["workload"] != "W7"]
    gains = [r for r in rows if r["target_on"] == "memcachedlite"]
    fig, axes = plt.subplots(
        1, 2, figsize=(12, 0.45 * len(shown) + 2), gridspec_kw={"width_ratios": [3, 1]}, squeeze=False
    )
    ax = axes[0][0]
    labels, values, colors, marks = [], [], [], []
    for r in shown:
        # as "how good": ratio for higher-is-better, its inverse for lower-is-better
        good = r["ratio"] if r["better"] == "higher" else 1 / r["ratio"] if r["ratio"] else 0.0
        target = None
        if r["target"] is not None:
            target = r["target"] if r["better"] == "higher" else 1 / r["target"]
        labels.append(f"{r['workload']} {r['metric']}")
        values.append(good)
        colors.append("#999999" if target is None else ("#2a9d4b" if good >= target else "#d1495b"))
        marks.append(target)
    y = list(range(len(shown)))[::-1]
    ax.barh(y, values, color=colors)
    for yy, v, t in zip(y, values, marks, strict=True):
        ax.text(v, yy, f" {v:.2f}", va="center", fontsize=8)
        if t is not None:
            ax.plot([t, t], [yy - 0.4, yy + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="#444444", linestyle="--", linewidth=1)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("memcachedlite relative to memcached (1 = as good, higher is better; | = target)")
    ax.set_xlim(0, max([1.2, *values]) * 1.15)
    ax = axes[0][1]
    if gains:
        r = gains[0]
        vals = [r[LITE]["median"] or 0.0, r[MEMCACHED]["median"] or 0.0]
        ax.bar([0, 1], vals, color=["#2a9d4b" if r["met"] else "#d1495b", "#999999"])
        ax.set_xticks([0, 1], ["memcachedlite\n(fsync always)", "memcached\n(no fsync)"], fontsize=8)
        ax.axhline(r["target"], color="black", linestyle="--", linewidth=1)
        ax.set_title("W7: 50 writers / 1 writer", fontsize=9)
        for x, v in zip([0, 1], vals, strict=True):
            ax.text(x, v, f"{v:.1f}x", ha="center", va="bottom", fontsize=8)
    else:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_profiles(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if settings.profile_dir is None:
        return out
    for raw in sorted(settings.profile_dir.glob("*.txt")):
        own, total = hot_spots(raw)
        samples = sum(int(line.rpartition(" ")[2]) for line in raw.read_text().splitlines() if line[-1:].isdigit())
        held = ""
        with contextlib.suppress(OSError, ValueError, KeyError):
            meta = json.loads(raw.with_suffix(".json").read_text())
            held = f"; the GIL was held {100 * samples / (meta['seconds'] * meta['rate']):.0f}% of the time"
        out[raw.stem] = {"self": own, "total": total, "samples": samples, "gil": held}
        log(f"\nhot spots of memcachedlite in {raw.stem} (py-spy --gil: % of samples holding the GIL{held}):")
        log("  self time:")
        for name, pct in own:
            log(f"    {pct:5.1f}%  {name}")
        log("  total time (function and what it calls):")
        for name, pct in total:
            log(f"    {pct:5.1f}%  {name}")
    return out


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(
        description="memcachedlite against the real memcached, side by side.",
        epilog="See the module docstring (benchmarks/run.py) for the workloads.",
    )
    parser.add_argument("--quick", action="store_true", help="one round of short runs (under two minutes)")
    parser.add_argument("--rounds", type=int, help="rounds per workload (default 3; --quick 1)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 5; --quick 1.5)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each run (default 1)")
    parser.add_argument("--only", help="comma list of workloads to run, e.g. W1,W5")
    parser.add_argument("--w5-items", type=int, help="items stored by W5 (default 200000)")
    parser.add_argument("--memcslap-ops", type=int, help="memcslap operations per thread (default 1000)")
    parser.add_argument("--json", type=Path, help="write every run and the summary to this file")
    parser.add_argument("--png", type=Path, help="draw the ratios to this PNG (needs matplotlib)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy memcachedlite into DIR; print hot spots")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let the OS place servers and load (memcached -t 2), as before; "
        "default: servers on the last CPU, load on the others",
    )
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    for name in ("rounds", "duration", "warmup", "w5_items", "memcslap_ops"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if args.only:
        settings.only = {w.strip().upper() for w in args.only.split(",") if w.strip()}
        unknown = settings.only - {w.id for w in WORKLOADS}
        if unknown:
            parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if settings.rounds < 1 or settings.duration <= 0 or settings.warmup < 0 or settings.w5_items < 1:
        parser.error("--rounds, --duration and --w5-items must be positive")
    settings.profile_dir = args.profile
    settings.pin = not args.no_pin
    return args, settings


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(argv)
    if args.png is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("--png needs matplotlib: pip install '.[bench]'", file=sys.stderr)
            return 2

    def log(text: str) -> None:
        print(text, flush=True)

    def stop_on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through every 'with', which stops its process

    previous = signal.signal(signal.SIGTERM, stop_on_term)
    started = time.monotonic()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    command = " ".join(["python benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    info = machine()
    log(
        f"{date}  {info.get('cpus')} cores  {info.get('cpu', '')}  {info.get('memcached', '')}  "
        f"Python {info['python']}  code {info.get('code', '?')}"
    )
    log(f"rounds {settings.rounds}, {settings.duration:g} s measured after {settings.warmup:g} s warm-up per run")
    info["placement"] = place(settings)
    log(info["placement"])
    try:
        with tempfile.TemporaryDirectory(prefix="mcl-bench-") as tmp:
            measures = run_all(settings, Path(tmp), log)
    except KeyboardInterrupt:
        print("\ninterrupted; every server and load process was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    rows = build_rows(measures)
    elapsed = time.monotonic() - started
    log("")
    log(f"{command}  ({date}, {info.get('cpus')} cores, {elapsed:.0f} s)")
    log(
        f"medians of {settings.rounds} round{'s' if settings.rounds > 1 else ''} [min-max]; "
        "ratio = memcachedlite / memcached; ↑ higher is better, ↓ lower is better; errors memcachedlite/memcached"
    )
    log(format_table(rows))
    flagged = [m for m in measures if m.warnings]
    if flagged:
        log(
            f"\nruns to read with care (client-bound: the load generator used >= {100 * CLIENT_BOUND:.0f}% "
            f"of its CPUs, so it may be the limit; disturbed: other programs took >= {DISTURBED:g}% of the "
            "server's CPU):"
        )
        for m in flagged:
            log(f"  {m.workload} round {m.round} {m.server}: {'; '.join(m.warnings)}")
    profiles = print_profiles(settings, log)
    errors = sum(m.errors for m in measures)
    if args.json is not None:
        payload = {
            "date": date,
            "command": command,
            "machine": info,
            "settings": {
                k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                for k, v in vars(settings).items()
            },
            "seconds": round(elapsed, 1),
            "rows": rows,
            "runs": [vars(m) for m in measures],
            "profiles": profiles,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        log(f"results written to {args.json}")
    if args.png is not None:
        draw_chart(
            rows,
            args.png,
            f"memcachedlite vs {info.get('memcached', 'memcached')} — {date[:10]}, "
            f"{info.get('cpus')} cores, medians of {settings.rounds}",
        )
        log(f"chart written to {args.png}")
    if errors:
        log(f"{errors} ERRORS (wrong or missing replies): see the errors column and the JSON")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
