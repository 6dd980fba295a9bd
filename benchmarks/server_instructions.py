"""User-space instructions per operation of the real server, pure build
against compiled build, counted by valgrind's callgrind: the figure issue
25's targets are set on, since the CPU time of one operation swings by up to
2x between runs of the same build on a shared machine while instruction
counts repeat.

    python benchmarks/server_instructions.py [--builds pure,compiled] [--tree DIR]
        [--only W1,W3] [--scale 0.2] [--keep DIR] [--profile] [--json out.json]

For each build (``benchmarks/builds.py``: the checkout itself, and a scratch
copy compiled with mypyc), starts ``python -m memcachedlite serve`` (a data
file, ``--fsync everysec``, as ``run.py`` runs it) under ``valgrind
--tool=callgrind`` with ``PYTHONHASHSEED=0``, stores the key spaces the
workloads use (10,000 keys of 100 B and 10,000 of 1 KiB, so that every
counted set replaces an item, as in a long run), sends the requests of a
window of each workload once unmeasured (first-call costs, and the first
read of an item: a get of an item never read before costs the pure build
about 3,000 instructions more than the next ones), and then, one workload at a
time and three times over (``--windows``), zeroes the counters
(``callgrind_control -z``), sends the workload's requests from this process
over a connection opened beforehand, checks every reply byte for byte, and
dumps the counters (``callgrind_control -d``); the figure is the median
window's, and the spread of the windows is printed (a few tenths of a
percent: a collection of the garbage collector's oldest generation, or the
data file's flush, falls in one window and not in another).
Everything the server process does in that window counts, all its threads
together: the handler thread, the accept loop, the group commit's flusher
and the sweeper. The same window with no request in it (``idle``) says how
much of that is background (per second; it is not subtracted).

The workloads, one connection each (what one operation costs the server;
how the threads of many connections take turns is left to ``run.py``'s CPU
time measurements):

  W1  get of one 100 B item, request/response
  W2  set of a 100 B value, request/response (W2's write)
  W4  set of a 1 KiB value, request/response
  W3  get of 100 keys in one request (per request)
  W6  sets of 100 B, 100 per send (per set)

It prints instructions per operation for each build (``summary`` of the
dump: see :func:`total_instructions`), the pure/compiled
ratio ("x fewer") and the issue's targets for it. ``--keep DIR`` keeps every
dump (``<build>-<workload>.callgrind``, for ``callgrind_annotate``);
``--profile`` prints where each workload's instructions go: by object (the
compiled modules' extensions, the interpreter, the standard library's C
modules, libc), the eval loop's own share (the bytecode of the code left
interpreted), and the functions with most instructions of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import builds as buildtrees  # noqa: E402  (benchmarks/builds.py)
from benchmarks.run import markdown_table  # noqa: E402
from memcachedlite.loadgen import LoadConfig  # noqa: E402
from memcachedlite.loadgen.keys import Keyspace  # noqa: E402

KEYS = 10_000


@dataclass(frozen=True)
class Workload:
    id: str
    title: str
    #: Requests of one counted window at scale 1.
    requests: int
    #: Operations per request (the figure is per operation).
    per_request: int = 1
    #: The key space: its value size.
    size: int = 100


WORKLOADS = (
    Workload("W1", "get, 100 B, request/response", 1000),
    Workload("W2", "set, 100 B, request/response", 1000),
    Workload("W4", "set, 1 KiB, request/response", 1000, size=1024),
    Workload("W3", "get of 100 keys per request", 100),
    Workload("W6", "sets of 100 B, 100 per send", 30, per_request=100),
)

#: The issue's targets: at least this many times fewer instructions per operation on the compiled build.
TARGETS = {"W1": 1.8, "W2": 1.8, "W4": 1.8, "W3": 1.6, "W6": 1.4}


def request(workload: Workload, spaces: dict[int, Keyspace], n: int) -> tuple[bytes, bytes]:
    """The ``n``-th request of a workload and the exact reply it must get."""
    space = spaces[workload.size]
    first = n * workload.per_request
    if workload.id == "W3":
        command, expected = space.get_many(first * 100, 100)
        return command, expected[2]
    if workload.id == "W1":
        command, expected = space.get_one(first % KEYS)
        return command, expected[2]
    sets = [space.set_command((first + i) % KEYS) for i in range(workload.per_request)]
    return b"".join(sets), b"STORED\r\n" * workload.per_request


def key_spaces() -> dict[int, Keyspace]:
    return {size: Keyspace(LoadConfig(keys=KEYS, value_size=size)) for size in (100, 1024)}


def fill(sock: socket.socket, space: Keyspace) -> None:
    """Store every key of ``space``, 100 sets a send."""
    for first in range(0, KEYS, 100):
        exchange(sock, b"".join(space.set_command(i) for i in range(first, first + 100)), b"STORED\r\n" * 100)


def exchange(sock: socket.socket, command: bytes, expected: bytes) -> None:
    """Send one request; read its whole reply, which must be ``expected``."""
    sock.sendall(command)
    got = bytearray()
    while len(got) < len(expected):
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError(f"the server closed the connection after {bytes(got[:80])!r}")
        got += chunk
    if got != expected:
        raise RuntimeError(f"wrong reply to {command[:60]!r}: {bytes(got[:120])!r}")


# -- the server under callgrind ---------------------------------------------------------


class Counted:
    """``python -m memcachedlite serve`` of one tree under callgrind; its counters zeroed and dumped on demand."""

    def __init__(self, tree: Path, workdir: Path) -> None:
        self.tree = tree
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.dumps = 0
        self.log_path = workdir / "server.log"

    def __enter__(self) -> Counted:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={self.workdir}/cg.%p",
            sys.executable,
            "-m",
            "memcachedlite",
            "serve",
            *("--port", str(self.port), "--data-file", str(self.workdir / "data.txt"), "--fsync", "everysec"),
        ]
        env = dict(os.environ, PYTHONPATH=str(self.tree), PYTHONHASHSEED="0")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self.wait_for_port(timeout=300)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for_port(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nothing listening on port {self.port} after {timeout} s") from None
                time.sleep(0.2)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def control(self, option: str) -> None:
        assert self.proc is not None
        subprocess.run(["callgrind_control", option, str(self.proc.pid)], check=True, capture_output=True, timeout=300)

    def zero(self) -> None:
        self.control("-z")

    def dump(self) -> Path:
        """Dump the counters since the last zero; the dump's file."""
        self.control("-d")
        self.dumps += 1
        assert self.proc is not None
        path = self.workdir / f"cg.{self.proc.pid}.{self.dumps}"
        if not path.is_file():
            raise RuntimeError(f"callgrind wrote no {path.name}")
        return path

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=600)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(300)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def total_instructions(dump: Path, line: str = "summary") -> int:
    """The instructions a callgrind dump counted: its ``summary`` (or ``totals``) line.

    The summary adds up each thread's own counter since the zero; the totals
    add up the costs the dump attributes to code. They agree but in the odd
    window: the first one after the key spaces were stored had totals twice
    its summary once, in windows whose summary matched the next ones'. The
    summary leaves out a thread that ended inside the window; none does here
    (a workload's connection stays open through its windows).
    """
    match = re.search(rf"^{line}: (\d+)", dump.read_text(errors="replace"), re.M)
    if match is None:
        raise RuntimeError(f"{dump} has no {line} line")
    return int(match.group(1))


def stats_settings(sock: socket.socket) -> dict[str, str]:
    sock.sendall(b"stats settings\r\n")
    buf = b""
    while not buf.endswith(b"END\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return {p[1]: p[2] for p in (line.split(" ", 2) for line in buf.decode().splitlines()) if len(p) == 3}


@dataclass
class Count:
    """One workload counted on one build: the instructions of each window of ``operations``."""

    build: str
    workload: str
    operations: int
    windows: list[int]
    seconds: float
    #: The last window's dump.
    dump: Path | None = None
    profile: dict[str, Any] = field(default_factory=dict)

    @property
    def per_op(self) -> float:
        """Instructions per operation of the median window."""
        return statistics.median(self.windows) / self.operations

    @property
    def spread(self) -> float:
        """(largest - smallest window) / median: how well the windows repeat."""
        return (max(self.windows) - min(self.windows)) / statistics.median(self.windows)


def count_build(
    build: str,
    tree: Path,
    workloads: list[Workload],
    scale: float,
    windows: int,
    workdir: Path,
    log: Callable[[str], None],
) -> tuple[list[Count], float]:
    """Every workload counted on the server of one build, in ``windows`` windows each; and the server's
    background (instructions per idle second)."""
    spaces = key_spaces()
    counts = []
    with Counted(tree, workdir) as server:
        log(f"  {build}: server under callgrind on port {server.port} (pid {server.proc.pid if server.proc else '?'})")
        with server.connect() as sock:
            said = stats_settings(sock).get("build")
            if said is not None and said != buildtrees.BUILD_KEYS[build]:
                raise RuntimeError(f"the {build} build's server says it is build {said}")
            for space in spaces.values():  # every counted set replaces an item, as in a long run
                fill(sock, space)
        server.zero()
        time.sleep(2.0)
        idle = total_instructions(server.dump()) / 2.0
        for workload in workloads:
            requests = max(1, round(workload.requests * scale))
            c = Count(build, workload.id, requests * workload.per_request, [], 0.0)
            with server.connect() as sock:
                for n in range(requests):  # unmeasured: the first read of an item costs more than the next ones
                    exchange(sock, *request(workload, spaces, n))
                for _ in range(windows):
                    server.zero()
                    started = time.monotonic()
                    for n in range(requests):
                        exchange(sock, *request(workload, spaces, n))
                    c.seconds += time.monotonic() - started
                    c.dump = server.dump()
                    c.windows.append(total_instructions(c.dump))
            counts.append(c)
            log(
                f"  {build} {workload.id}: {c.per_op:,.0f} instructions/op (median of {windows} windows of "
                f"{c.operations} ops, spread {c.spread:.2%}, {c.seconds:.1f} s)"
            )
    return counts, idle


# -- where the instructions go (a callgrind dump read) ------------------------------------


_NAMED = re.compile(r"^(c?ob|c?fn|c?f[lie])=\((\d+)\)(?: (.*))?$")


def read_costs(dump: Path) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str, str, str], int]]:
    """Self instructions per (object, function), and instructions of calls per (caller's object, function,
    callee's object, function), from a callgrind dump (one event, Ir)."""
    names: dict[tuple[str, str], str] = {}
    own: dict[tuple[str, str], int] = {}
    calls: dict[tuple[str, str, str, str], int] = {}
    ob = fn = cob = cfn = ""
    after_calls = False
    with open(dump, errors="replace") as f:
        for line in f:
            if not line or line[0] in "\n#":
                continue
            named = _NAMED.match(line.rstrip("\n"))
            if named:
                kind, number, name = named.groups()
                base = kind[1:] if kind.startswith("c") else kind
                key = (base if base in ("ob", "fn") else "fl", number)  # files, inlined or not, share their ids
                if name is not None:
                    names[key] = name
                value = names.get(key, number)
                if kind == "ob":
                    ob = cob = value
                elif kind == "fn":
                    fn = value
                    cob = ob
                elif kind == "cob":
                    cob = value
                elif kind == "cfn":
                    cfn = value
                continue
            if line.startswith("calls="):
                after_calls = True
                continue
            head = line[0]
            if head.isdigit() or head in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if after_calls:
                    edge = (ob, fn, cob, cfn)
                    calls[edge] = calls.get(edge, 0) + cost
                    after_calls = False
                    cob = ob
                else:
                    own[ob, fn] = own.get((ob, fn), 0) + cost
    return own, calls


def kind_of(obj: str, tree: Path) -> str:
    """What an object file is: the compiled modules, the interpreter, the standard library's C modules, libc..."""
    if obj.endswith(".so") and Path(obj).is_relative_to(tree):  # not a sibling such as <tree>-venv/
        return "compiled modules"
    name = Path(obj).name
    if name.startswith("libpython") or name.startswith("python"):
        return "interpreter"
    if "lib-dynload" in obj:
        return "stdlib C modules"
    if name.startswith(("libc.", "libc-", "libm.", "ld-linux")):
        return "libc"
    return "other"


def profile(dump: Path, tree: Path, operations: int, top: int = 12) -> dict[str, Any]:
    """Instructions per operation by kind of object, in the eval loop, and per function.

    ``compiled`` lists the compiled functions with most instructions under
    them (their own and their callees', as the dump's call costs give them):
    the first is the entry point of the request's compiled part (``Session.feed``),
    so its figure is the share of the work done under compiled code. They are
    not to be added up: a caller's figure holds its callees'.
    """
    own, calls = read_costs(dump)
    total = sum(own.values()) or 1
    by_kind: dict[str, int] = {}
    for (obj, _), cost in own.items():
        kind = kind_of(obj, tree)
        by_kind[kind] = by_kind.get(kind, 0) + cost
    eval_loop = sum(cost for (obj, fn), cost in own.items() if fn.split("'")[0] == "_PyEval_EvalFrameDefault")
    functions = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    under: dict[str, int] = {}
    for (obj, fn), cost in own.items():
        if kind_of(obj, tree) == "compiled modules" and fn.startswith("CPyDef_"):
            under[fn] = under.get(fn, 0) + cost
    for (_, caller, _, callee), cost in calls.items():
        if caller in under and callee.split("'")[0] != caller.split("'")[0]:
            under[caller] += cost
    return {
        "per_op": total / operations,
        "by_kind": {k: v / operations for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "eval_loop_self": eval_loop / operations,
        "functions": [
            {"function": fn, "kind": kind_of(obj, tree), "object": Path(obj).name, "per_op": cost / operations}
            for (obj, fn), cost in functions
        ],
        "compiled": [
            {"function": fn, "per_op": cost / operations}
            for fn, cost in sorted(under.items(), key=lambda kv: -kv[1])[: top // 2]
        ],
    }


def format_profile(c: Count) -> str:
    p = c.profile
    total = p["per_op"] or 1
    lines = [f"{c.build} {c.workload}: {p['per_op']:,.0f} instructions/op in the last window (its dump's costs)"]
    for kind, n in p["by_kind"].items():
        lines.append(f"    {100 * n / total:5.1f}%  {n:10,.0f}  {kind} (own instructions)")
    lines.append(
        f"    {100 * p['eval_loop_self'] / total:5.1f}%  {p['eval_loop_self']:10,.0f}  the eval loop's own "
        "(_PyEval_EvalFrameDefault: interpreted bytecode)"
    )
    lines.append("  functions with most instructions of their own:")
    for f in p["functions"]:
        lines.append(f"    {100 * f['per_op'] / total:5.1f}%  {f['per_op']:10,.0f}  {f['function']}  [{f['kind']}]")
    if p["compiled"]:
        lines.append("  compiled functions with most instructions under them (own and callees'; not to be added up):")
        for f in p["compiled"]:
            lines.append(f"    {100 * f['per_op'] / total:5.1f}%  {f['per_op']:10,.0f}  {f['function']}")
    return "\n".join(lines)


# -- the table --------------------------------------------------------------------------


def compare(counts: list[Count], builds: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per workload: instructions per operation of each build, pure/compiled, and the target."""
    rows = []
    for workload in dict.fromkeys(c.workload for c in counts):
        per = {c.build: c.per_op for c in counts if c.workload == workload}
        fewer = None
        if buildtrees.PURE in per and buildtrees.COMPILED in per and per[buildtrees.COMPILED]:
            fewer = per[buildtrees.PURE] / per[buildtrees.COMPILED]
        target = TARGETS.get(workload)
        met = None if fewer is None or target is None else fewer >= target
        rows.append({"workload": workload, "per_op": per, "fewer": fewer, "target": target, "met": met})
    return rows


def format_table(rows: list[dict[str, Any]], builds: tuple[str, ...]) -> str:
    titles = {w.id: w.title for w in WORKLOADS}
    header = ["workload", *(f"{b} instr/op" for b in builds), "pure/compiled", "target"]
    lines = [header]
    for r in rows:
        target = ""
        if r["target"] is not None and r["fewer"] is not None:
            target = f">={r['target']:g}x {'met' if r['met'] else 'MISSED'}"
        lines.append(
            [
                f"{r['workload']} {titles.get(r['workload'], '')}",
                *(f"{r['per_op'][b]:,.0f}" if b in r["per_op"] else "-" for b in builds),
                "-" if r["fewer"] is None else f"{r['fewer']:.2f}x",
                target,
            ]
        )
    return markdown_table(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--builds", default="pure,compiled", help="builds to count (default pure,compiled)")
    parser.add_argument("--tree", type=Path, metavar="DIR", help="count this checkout's builds (default: this one)")
    parser.add_argument("--only", help="comma list of workloads (W1,W2,W4,W3,W6)")
    parser.add_argument("--scale", type=float, default=1.0, help="requests per window, times the default (e.g. 0.2)")
    parser.add_argument("--windows", type=int, default=3, help="counted windows per workload (default 3; the median)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the dumps there (for callgrind_annotate)")
    parser.add_argument("--profile", action="store_true", help="print where each workload's instructions go")
    parser.add_argument("--json", type=Path, help="write the counts (and profiles) to this file")
    args = parser.parse_args(argv)
    try:
        args.builds = buildtrees.parse_builds(args.builds)
    except ValueError as exc:
        parser.error(f"--builds: {exc}")
    known = {w.id for w in WORKLOADS}
    args.only = {w.strip().upper() for w in (args.only or ",".join(known)).split(",") if w.strip()}
    if args.only - known:
        parser.error(f"unknown workloads: {', '.join(sorted(args.only - known))}")
    if args.scale <= 0 or args.windows < 1:
        parser.error("--scale and --windows must be positive")
    if args.tree is not None and not (args.tree / "memcachedlite" / "__init__.py").is_file():
        parser.error(f"--tree: {args.tree} is not a checkout of memcachedlite")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install valgrind)", file=sys.stderr)
            return 2

    def log(text: str) -> None:
        print(text, flush=True)

    workloads = [w for w in WORKLOADS if w.id in args.only]
    source = (args.tree or ROOT).resolve()
    counts: list[Count] = []
    idle: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="mcl-instructions-") as tmp,
        buildtrees.prepared(args.builds, source, log) as trees,
    ):
        for build, tree in trees.items():
            workdir = Path(tmp) / build
            workdir.mkdir()
            done, idle[build] = count_build(build, tree, workloads, args.scale, args.windows, workdir, log)
            for c in done:
                if args.profile:
                    c.profile = profile(c.dump, tree, c.operations) if c.dump else {}
                if args.keep is not None and c.dump is not None:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    c.dump = Path(shutil.copy(c.dump, args.keep / f"{build}-{c.workload}.callgrind"))
            counts.extend(done)
    rows = compare(counts, args.builds)
    log("")
    log(f"user-space instructions per operation of the server process (callgrind, PYTHONHASHSEED=0), {source}:")
    log(format_table(rows, args.builds))
    log(
        "background (instructions per second with no request, counted the same way; not subtracted): "
        + ", ".join(f"{b} {n:,.0f}/s" for b, n in idle.items())
    )
    log(
        "spread of the windows ((largest - smallest) / median): "
        + ", ".join(f"{c.build} {c.workload} {c.spread:.2%}" for c in counts)
    )
    if args.profile:
        for c in counts:
            log("")
            log(format_profile(c))
    if args.json is not None:
        payload = {
            "source": str(source),
            "rows": rows,
            "idle_per_second": idle,
            "counts": [
                dict(vars(c), per_op=c.per_op, spread=c.spread, dump=str(c.dump) if args.keep else None) for c in counts
            ],
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        log(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
