"""memcachedlite against the real memcached and Redis, side by side, on this machine.

    python benchmarks/run.py [--quick] [--only W7,W8] [--json out.json] [--png chart.png]
    python benchmarks/run.py --builds pure,compiled [--quick]

Starts memcached (``memcached -l 127.0.0.1 -p <free port> -U 0 -t 1``),
memcachedlite (``python -m memcachedlite serve --cpu N`` from this checkout,
with a data file in a temporary directory) and, where Redis is the reference,
Redis (``redis-server --appendonly yes``, automatic rewrites and RDB saves
off) on free ports of 127.0.0.1, one at a time and fresh for every
measurement, and runs the same workloads against each, alternating the order
round by round. It prints a table of medians with [min-max], the ratios
memcachedlite/memcached and memcachedlite/Redis, and checks the targets of
the performance issues.

Server CPU per operation, for every workload and server: the server
process's user + system CPU time (``/proc/<pid>/stat``, which sums all its
threads) read as the measured window opens and once its last reply is in,
divided by the operations of that window. The efficiency column is the other
server's CPU per operation over memcachedlite's (higher is better): unlike a
throughput ratio it holds whether or not the client keeps up, and it survives
other programs sharing the machine far better than wall-clock rates do.

The client-bound rule: a run whose load generator used >= 90% of its CPUs
(its processes' CPU time over the run's wall time, per client CPU) may have
measured the client, not the server. A throughput row with such a run (any
server) shows "client-bound" instead of a ratio, and its target is judged on
the efficiency instead. The "client CPU %" column gives the medians
(memcachedlite/memcached/Redis).

Workloads (load from memcachedlite.loadgen, which checks every reply, unless
said otherwise):

  W1  1 connection, get, request/response: ops/s and p50/p99 latency
  W2  50 connections, 90% get / 10% set, 100-byte values
  D1  W1 with memcachedlite --fsync always: nothing is written, so no read waits
  D2  W2 with memcachedlite --fsync always: sets wait for their group fsync,
      and so does a get of a key whose last change is not on disk yet
  B2  W2's mix over memcached's binary protocol (the project's load generator);
      memcachedlite's cell says "not supported by this build" when it does
      not answer a binary VERSION request
  M2  memcslap (libmemcached-tools, C), get and set with 50 threads; from its
      two runs, the server CPU per operation of W2's 90/10 mix (cross-check)
  MB  memcslap --binary, get and set with 50 threads (probed like B2)
  W3  get of 100 keys per request, 4 connections: keys/s
  W4  4 connections, set of 1 KiB values, request/response (fsync everysec)
  W5  memory: RSS growth after storing N 100-byte items (--w5-items), and
      per item; memcached and Redis
  W6  pipelined sets, 100 per send, 4 connections (fsync everysec)
  X6  memcslap --noreply sets, 4 threads (C; cross-check of W6; memcslap's
      own pipelining, --buffer, fails an assertion in libmemcached 1.1.4)
  W7  durable writes, 100-byte sets, 1 and 50 request/response writers:
      memcachedlite --fsync always against Redis appendfsync always (driven
      by the same load generator speaking RESP); memcached, which has no
      fsync, runs the same load for reference
  W8  restart: N items (--w8-items, 1,000,000 by default) written by the
      server itself through the protocol (100 sets a send), the server
      stopped, then the time from starting it again to the first ``get`` of
      the last key answered with its value, and items per second; Redis from
      its AOF, then (for reference) from an RDB snapshot made with SAVE

Builds (``--builds pure,compiled``; default: this checkout as it is, the
pure build, or the compiled one where its modules were compiled in place as
in ``tests/run_compiled.py``'s copy): the compiled build is this checkout
copied to a scratch folder and its
modules of ``memcachedlite/buildinfo.py``'s COMPILED compiled there with
mypyc (``benchmarks/builds.py``; about a minute and a half, under ``nice``),
never beside this checkout's sources. Each build's server runs with
``PYTHONPATH`` at its own tree, and must say its build in ``stats settings``
(``build pure`` / ``build mypyc``) at the end of every run, or the run counts
as an error. Every workload then runs against memcached, Redis where it is
the yardstick, and memcachedlite from each build, side by side in each round
(the order alternating round by round). The output has the usual table for
each build, then one comparing them: every workload's efficiency for both
builds and the compiled/pure ratio of each figure, with the compiled build's
own targets (W3 efficiency >= 0.95, W6 >= 0.35). In the JSON, a run of the
compiled build's server beside the pure one is named
``memcachedlite-compiled`` (a build measured alone keeps the name
``memcachedlite``; its runs' notes say which build); ``rows`` holds the
first build's table and ``builds`` each one's. ``--tree DIR`` measures
the builds of another checkout of the project (a ``git worktree`` of another
branch) instead of this one; the load generator is always this checkout's.

After the table, W2 and W6 are compared with memcslap's figures (M2, X6),
round by round: efficiency and throughput ratio, and whether they agree.

Options: ``--quick`` (1 round of short runs, 100,000 items for W5 and W8:
a few minutes), ``--rounds``, ``--duration``, ``--only W7,W8``, ``--json
FILE`` (every run, the summary and the cross-checks), ``--png FILE`` (a
chart; needs matplotlib: ``pip install '.[bench]'``), ``--w5-items``,
``--w8-items``, ``--procs-per-cpu`` (load generator processes per client
CPU for loads of several connections, default 2), ``--profile DIR`` (record
memcachedlite with py-spy during each run and print its hot spots; numbers
taken while profiling are slower), ``--no-pin`` (see "CPU placement"
below). Every process started is stopped at the end, on errors and on
Ctrl-C too.

CPU placement (the same budget for both servers): with two or more CPUs
allowed, the last one is the server's and the others are the clients'.
memcachedlite runs with ``--cpu N`` on it; memcached runs with one worker
thread (``-t 1``) and is pinned to the same CPU, all its threads included
(``sched_setaffinity`` before it starts), and so is Redis: each server gets
exactly one core.
The load generator's worker processes (``LoadConfig.cpus``), memcslap and
this script keep to the other CPUs, so the load never takes CPU time from the
server it measures. Without that, the OS placed one of the load generator's
processes on the server's core in some runs and not in others, and W1-W3
varied by up to 2-3x between rounds (W1 p50 26-95 us, W2 28k-40k ops/s in 5
rounds). ``--no-pin`` restores the old placement for comparison (nothing
pinned but memcachedlite's own ``--cpu auto``; memcached with ``-t 2``). With
a single CPU allowed nothing can be kept apart: nothing is pinned, and
memcached still runs with ``-t 1``.

After the table, runs are listed where the load generator used >= 90% of
its CPUs ("client-bound") or where other programs took >= 10% of the
server's CPU ("disturbed", from /proc/stat; only when pinned); the JSON has
both figures for every run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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

from benchmarks import builds as buildtrees  # noqa: E402  (benchmarks/builds.py)
from memcachedlite import loadgen  # noqa: E402
from memcachedlite.loadgen import keys as loadkeys  # noqa: E402
from memcachedlite.loadgen import wire  # noqa: E402

LITE = "memcachedlite"
PURE, COMPILED = buildtrees.PURE, buildtrees.COMPILED
#: The compiled build's server, in the runs and the JSON, when it runs beside the pure build.
LITE_COMPILED = "memcachedlite-compiled"


def lite_names(builds: tuple[str, ...]) -> dict[str, str]:
    """Each build's server name: LITE for a build measured alone (as before builds), and for the
    pure build beside the compiled one, which is LITE_COMPILED."""
    return {b: LITE_COMPILED if b == COMPILED and len(builds) > 1 else LITE for b in builds}


MEMCACHED = "memcached"
REDIS = "redis"
TARGETS = (LITE, MEMCACHED)
#: Every server a workload may run against, in the table's column order.
ALL_SERVERS = (LITE, MEMCACHED, REDIS)
#: What a binary-protocol cell says when memcachedlite does not answer a binary VERSION.
UNSUPPORTED = "not supported by this build"

# -- settings -------------------------------------------------------------------


@dataclass
class Settings:
    rounds: int = 3
    duration: float = 5.0  # measured seconds per timed run
    warmup: float = 1.0
    w5_items: int = 200_000
    w8_items: int = 1_000_000
    memcslap_ops: int = 1000  # per thread; 50 threads
    #: Load generator processes per client CPU. Two: one process that runs ahead of a slow server
    #: delivers its requests in batches, which lowers that server's CPU per request (memcachedlite's
    #: W2 efficiency read 0.70 with one, 0.40-0.52 with two, 0.34-0.41 from memcslap's 50
    #: independent threads); two keep the arrivals closer to independent clients'.
    procs_per_cpu: int = 2
    only: set | None = None
    profile_dir: Path | None = None
    #: Keep servers and load apart (see "CPU placement" in the module docstring).
    pin: bool = True
    #: Filled by place(): the servers' CPU and the load's, None when not pinned.
    server_cpu: int | None = None
    client_cpus: tuple[int, ...] | None = None
    #: The builds of memcachedlite measured, side by side (--builds), and the checkout they are built from.
    builds: tuple[str, ...] = (PURE,)
    source: Path = ROOT
    #: Filled once the builds are ready: the tree each build runs from (PYTHONPATH).
    trees: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def quick(cls) -> Settings:
        return cls(rounds=1, duration=1.5, warmup=0.5, memcslap_ops=200, w8_items=100_000, w5_items=100_000)


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
    settings.server_cpu = allowed[-1]  # the servers get the last CPU, the load generator the others
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
    #: The load generator's protocol for this server (LoadConfig.protocol).
    protocol = "text"
    #: Its PYTHONPATH (memcachedlite's build; nothing to the others).
    tree = ROOT

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

    def start(self, wait: bool = True) -> None:
        """Start the server on a new free port; with ``wait``, return once it listens."""
        if self._log is None:
            self._log = open(self.log_path, "ab")
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(self.tree))
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
        if not wait:
            return
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
                proc.wait(120)  # a clean stop flushes its data file
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

    def __init__(
        self, workdir: Path, fsync: str = "everysec", settings: Settings | None = None, build: str = PURE
    ) -> None:
        self.build = build
        self.name = lite_names((settings or Settings()).builds).get(build, LITE)
        super().__init__(workdir, fsync, settings)
        self.tree = self.settings.trees.get(build, self.settings.source)
        #: Kept across a restart (W8 starts the server again on it).
        self.data_file = workdir / f"data-{time.monotonic_ns()}.txt"
        #: --memory-limit in MiB: W8's million items must not be evicted.
        self.memory_mib = 4096

    def command(self) -> list[str]:
        data = self.data_file
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
            "--memory-limit",
            str(self.memory_mib),
        ]


class Redis(Server):
    """redis-server with its append-only file (``appendonly yes``), placed like memcached.

    ``fsync`` maps to ``appendfsync`` (``always`` or ``everysec``); automatic
    AOF rewrites and RDB saves are off, so a run measures the log as written.
    With ``rdb`` set it starts from ``dump.rdb`` instead (``appendonly no``).
    """

    name = REDIS
    protocol = "resp"

    def __init__(self, workdir: Path, fsync: str = "everysec", settings: Settings | None = None) -> None:
        super().__init__(workdir, fsync, settings)
        self.dir = workdir / f"redis-{time.monotonic_ns()}"
        self.dir.mkdir()
        self.rdb = False

    def command(self) -> list[str]:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        cmd += ["--save", "", "--daemonize", "no", "--protected-mode", "no", "--dbfilename", "dump.rdb"]
        cmd += ["--auto-aof-rewrite-percentage", "0"]
        if self.rdb:
            return [*cmd, "--appendonly", "no"]
        return [*cmd, "--appendonly", "yes", "--appendfsync", "always" if self.fsync == "always" else "everysec"]


SERVERS: dict[str, type[Server]] = {MEMCACHED: Memcached, REDIS: Redis}


def make_server(name: str, workdir: Path, fsync: str, settings: Settings) -> Server:
    """The server of that name: memcached, Redis, or memcachedlite of one build."""
    for build, lite in lite_names(settings.builds).items():
        if name == lite:
            return Lite(workdir, fsync=fsync, settings=settings, build=build)
    return SERVERS[name](workdir, fsync=fsync, settings=settings)


def served_build(port: int) -> str | None:
    """The build a memcachedlite says it runs (``stats settings``' ``build``; None from one too old to say)."""
    return raw_stats(port, b"stats settings").get("build")


def resp_call(port: int, *args: bytes, timeout: float = 600.0) -> bytes:
    """Send one Redis command; its reply's first line (a bulk reply: its data)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(wire.resp_command(*args))
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"redis closed the connection; got {buf[:80]!r}")
            buf += chunk
            line, sep, rest = buf.partition(b"\r\n")
            if not sep:
                continue
            if not line.startswith(b"$") or line == b"$-1":
                return line
            size = int(line[1:])
            if len(rest) >= size + 2:
                return rest[:size]


def served_ops(server: Server) -> tuple[int, int]:
    """Gets and sets the server has counted (``cmd_get``, ``cmd_set`` of its stats)."""
    stats = raw_stats(server.port)
    return int(stats.get("cmd_get", 0)), int(stats.get("cmd_set", 0))


def raw_stats(port: int, command: bytes = b"stats") -> dict[str, str]:
    """The server's ``stats`` (or another stats group) as a dict (raw socket, no client library)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(command + b"\r\n")
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
    if settings.profile_dir is None or not isinstance(server, Lite):
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
    #: Tags of the loads of this run whose client used >= CLIENT_BOUND of its CPUs ("" for the only one).
    client_bound: list[str] = field(default_factory=list)


def cpu_busy_seconds(cpu: int, interrupts: bool = False) -> float:
    """Seconds CPU ``cpu`` has spent running programs (or stolen by the hypervisor), from /proc/stat.

    Interrupt and softirq time is left out unless asked for: on the server's
    CPU much of it is the network traffic of the benchmark itself, not
    counted as the server's either; on the client's CPU it is time the load
    generator cannot have, so there it counts (``interrupts``).
    """
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
                return (user + nice + system + steal + (irq + softirq if interrupts else 0)) / _TICK
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


def cpu_per_op_us(cpu_before: float, cpu_after: float, ops: int) -> float | None:
    """Server CPU microseconds per operation over a window (None when nothing was served)."""
    if ops <= 0 or cpu_after < cpu_before:
        return None
    return round((cpu_after - cpu_before) * 1e6 / ops, 2)


def client_share(cpu_seconds_used: float, wall_seconds: float, cpus: int) -> float:
    """Share of its CPUs the load generator kept busy (1.0: all of them, all the time)."""
    if wall_seconds <= 0 or cpus <= 0:
        return 0.0
    return cpu_seconds_used / wall_seconds / cpus


def is_client_bound(share: float) -> bool:
    """The client-bound rule: a load that used this much of its CPUs may itself be the limit."""
    return share >= CLIENT_BOUND


def client_cpu_count(settings: Settings) -> int:
    return len(settings.client_cpus) if settings.client_cpus else os.cpu_count() or 1


def client_busy_seconds(settings: Settings) -> float | None:
    """Seconds the load's CPUs have spent running anything (None when the load is not pinned)."""
    if not settings.client_cpus:
        return None
    try:
        return sum(cpu_busy_seconds(cpu, interrupts=True) for cpu in settings.client_cpus)
    except (OSError, KeyError, ValueError):
        return None


def note_client(m: Measure, tag: str, share: float, busy: float | None = None) -> None:
    """Record the client's CPU share of a load, and flag the run when it is client-bound.

    ``busy`` is how busy the client's CPUs were with anything (this client and
    every other program): when other programs fill them, the load generator
    cannot get more CPU either, so the client side is the limit all the same.
    """
    m.metrics[f"client CPU %{tag}"] = round(100 * share, 1)
    if busy is not None:
        m.metrics[f"client CPUs busy %{tag}"] = round(100 * busy, 1)
    if is_client_bound(share):
        m.client_bound.append(tag)
        m.warnings.append(f"client-bound{tag} ({100 * share:.0f}% of its CPUs)")
    elif busy is not None and is_client_bound(busy):
        m.client_bound.append(tag)
        m.warnings.append(
            f"client-bound{tag} (its CPUs {100 * busy:.0f}% busy, {100 * share:.0f}% of them the load generator)"
        )


def load(server: Server, settings: Settings, m: Measure, tag: str = "", **options: Any) -> loadgen.BenchResult:
    """Run the project's load generator against ``server`` and note what it saw.

    The server's CPU time (all its threads, /proc/<pid>/stat) is read as the
    measured window opens and once its last reply is in, and divided by the
    operations of that window: CPU per operation, a figure that holds whether
    or not the client kept the server busy.
    """
    options.setdefault("duration", settings.duration)
    options.setdefault("warmup", settings.warmup)
    options.setdefault("cpus", settings.client_cpus)
    options.setdefault("protocol", server.protocol)
    if "processes" not in options:
        options["processes"] = min(options.get("connections", 4), settings.procs_per_cpu * client_cpu_count(settings))
    config = loadgen.LoadConfig(host="127.0.0.1", port=server.port, **options)
    sampler = CpuSampler(server.pid, config.warmup, config.warmup + config.duration, settings.server_cpu)
    marks: dict[str, float] = {}

    def window(event: str) -> None:
        marks[f"{event} at"] = time.monotonic()
        busy = client_busy_seconds(settings)
        if busy is not None:
            marks[f"{event} busy"] = busy
        with contextlib.suppress(OSError):
            marks[event] = cpu_seconds(server.pid)

    result = loadgen.run(config, progress=sampler, progress_interval=0.25, window=window)
    m.errors += result.errors
    for kind, n in result.error_kinds.items():
        m.error_kinds[kind] = m.error_kinds.get(kind, 0) + n
    server_cpu = sampler.percent()
    others = sampler.others_percent()
    share = client_share(
        result.client_cpu,
        config.warmup + result.elapsed,
        min(client_cpu_count(settings), max(1, result.processes)),
    )
    m.notes[f"loadgen{tag}"] = dict(
        result.to_dict(),
        server_cpu_percent=server_cpu,
        others_on_server_cpu_percent=others,
        client_share_of_its_cpus=round(share, 2),
    )
    busy = None
    if "start busy" in marks and "end busy" in marks and marks["end at"] > marks["start at"]:
        busy = (marks["end busy"] - marks["start busy"]) / (marks["end at"] - marks["start at"])
        busy /= client_cpu_count(settings)
    if config.duration > 0:
        note_client(m, tag, share, busy)
        if result.ops:
            seconds = config.warmup + result.elapsed
            m.metrics[f"client CPU us/op{tag}"] = round(
                result.client_cpu * 1e6 * result.elapsed / seconds / result.ops, 2
            )
    if others is not None and others >= DISTURBED:
        m.warnings.append(f"disturbed{tag} (other programs took {others:.0f}% of the server's CPU)")
    per_op = cpu_per_op_us(marks.get("start", 0.0), marks.get("end", -1.0), result.ops)
    if per_op is not None and config.duration > 0:
        m.metrics[f"server CPU us/op{tag}"] = per_op
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


def item_count(server: Server) -> int:
    """Items the server holds (memcached's ``curr_items``; Redis's ``DBSIZE``)."""
    if server.protocol == "resp":
        return int(resp_call(server.port, b"DBSIZE").lstrip(b":"))
    return int(raw_stats(server.port).get("curr_items", -1))


def w5(server: Server, s: Settings, m: Measure) -> None:
    item_count(server)  # one connection served before the baseline
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
    items = item_count(server)
    m.metrics.update(
        {
            "RSS growth MiB": round((after - before) / 1024, 1),
            "bytes/item": round((after - before) * 1024 / max(1, s.w5_items)),
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


def first_get_seconds(server: Server, key: bytes, value: bytes, timeout: float = 600.0) -> float:
    """Start ``server`` and time it to the first ``get`` of ``key`` answered with ``value``.

    Until then a refused connection, a closed one or any other reply (Redis's
    ``-LOADING``) means "not yet": ask again 5 ms later.
    """
    if server.protocol == "resp":
        request = wire.resp_command(b"GET", key)
        wanted = b"$%d\r\n%s\r\n" % (len(value), value)
    else:
        request = b"get " + key + b"\r\n"
        wanted = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(value), value)
    started = time.monotonic()
    server.start(wait=False)
    assert server.proc is not None
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited while restarting:\n{server.output()}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{server.name} did not answer a get within {timeout:g} s of starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(request)
            got = b""
            while len(got) < len(wanted) and (not got or wanted.startswith(got)):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
            if got == wanted:
                return time.monotonic() - started
        time.sleep(0.005)


def data_size(server: Server) -> int:
    """Bytes of what the server restarts from: memcachedlite's data file, Redis's AOF directory or RDB."""
    if isinstance(server, Lite):
        return server.data_file.stat().st_size
    if isinstance(server, Redis):
        return sum(f.stat().st_size for f in server.dir.rglob("*") if f.is_file())
    return 0


def w8(server: Server, s: Settings, m: Measure) -> None:
    """Restart on N items written through the protocol: seconds to the first correct get, and items/s."""
    prefix = "w8:"
    r = load(
        server, s, m, connections=4, duration=0.0, warmup=0.0, value_size=100, keys=s.w8_items, processes=1,
        key_prefix=prefix,
    )  # fmt: skip
    m.metrics["written/s"] = r.prefill_items / max(r.prefill_seconds, 1e-9)
    # the last key written, so the first correct answer means the whole file was read
    ks = loadkeys.Keyspace(loadgen.LoadConfig(port=server.port, keys=s.w8_items, value_size=100, key_prefix=prefix))
    key = ks.key(s.w8_items - 1)
    value = ks.value(key)
    server.stop()
    m.notes["restart_from_bytes"] = data_size(server)
    seconds = first_get_seconds(server, key, value)
    items = item_count(server)
    m.metrics.update({"restart s": seconds, "restart items/s": s.w8_items / seconds})
    m.notes.update(items_after_restart=items, rss_after_restart_kib=proc_status(server.pid, "VmRSS"))
    if items != s.w8_items:
        m.errors += 1
        m.error_kinds[f"{items} items after the restart, not {s.w8_items}"] = 1
    if isinstance(server, Redis):  # for reference: the same items from an RDB snapshot
        reply = resp_call(server.port, b"SAVE")
        if reply != b"+OK":
            raise RuntimeError(f"redis SAVE answered {reply!r}")
        server.stop()
        server.rdb = True
        m.notes["rdb_bytes"] = (server.dir / "dump.rdb").stat().st_size
        seconds = first_get_seconds(server, key, value)
        m.metrics.update({"restart s (RDB)": seconds, "restart items/s (RDB)": s.w8_items / seconds})


def binary_w2(server: Server, s: Settings, m: Measure) -> None:
    """W2's mix over memcached's binary protocol, where the server speaks it."""
    if binary_unsupported(server, m):
        return
    r = load(server, s, m, connections=50, get_ratio=0.9, value_size=100, keys=10_000, protocol="binary")
    m.metrics.update({"ops/s": r.ops_per_sec, "p99 us": r.latency_us()["p99"]})


def binary_unsupported(server: Server, m: Measure) -> bool:
    """True (and noted) when the server does not answer a binary VERSION request."""
    version = wire.binary_probe("127.0.0.1", server.port)
    m.notes["binary_version"] = version
    if version is None:
        m.notes["unsupported"] = UNSUPPORTED
        return True
    return False


_MEMCSLAP_LINE = re.compile(r"Time to (get|set)\s+(\d+) keys by\s+(\d+) threads:\s+([\d.]+) seconds")


def children_cpu() -> float:
    """CPU seconds of the child processes waited for so far (memcslap)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def c_client(server: Server, s: Settings, m: Measure, cmd: list[str], tag: str) -> subprocess.CompletedProcess | None:
    """Run a C load generator (memcslap) against ``server``; note CPU per op and client CPU.

    CPU per operation divides the server's CPU time over the run by the
    requests its own stats counted (gets and sets), so it does not depend on
    how the tool counts or on its start-up phase.
    """
    binary = shutil.which(cmd[0])
    if binary is None:
        raise RuntimeError(f"{cmd[0]} is not installed (apt-get install libmemcached-tools)")
    gets, sets = served_ops(server)
    cpu = cpu_seconds(server.pid)
    client = children_cpu()
    busy = client_busy_seconds(s)
    started = time.monotonic()
    # the C client runs where this script runs: on the load's CPUs (see place())
    try:
        done = subprocess.run([binary, *cmd[1:]], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        m.errors += 1
        m.error_kinds[f"{cmd[0]}{tag} timed out"] = 1
        return None
    wall = time.monotonic() - started
    cpu = cpu_seconds(server.pid) - cpu
    now_gets, now_sets = served_ops(server)
    gets, sets = now_gets - gets, now_sets - sets
    per_op = cpu_per_op_us(0.0, cpu, gets + sets)
    if per_op is not None:
        m.metrics[f"server CPU us/op{tag}"] = per_op
    now_busy = client_busy_seconds(s)
    busy_share = None if busy is None or now_busy is None else (now_busy - busy) / wall / client_cpu_count(s)
    note_client(m, tag, client_share(children_cpu() - client, wall, client_cpu_count(s)), busy_share)
    m.notes[f"{cmd[0]}{tag}"] = {
        "command": " ".join(cmd),
        "gets": gets,
        "sets": sets,
        "served": gets + sets,
        "server_cpu_seconds": round(cpu, 4),
        "seconds": round(wall, 3),
    }
    return done


def memcslap(server: Server, s: Settings, m: Measure, binary: bool = False) -> None:
    if binary and binary_unsupported(server, m):
        return
    threads = 50
    for test in ("get", "set"):
        cmd = [
            "memcslap",
            f"--servers=127.0.0.1:{server.port}",
            f"--concurrency={threads}",
            f"--execute-number={s.memcslap_ops}",
            f"--test={test}",
            "--tcp-nodelay",
            *(["--binary"] if binary else []),
        ]
        done = c_client(server, s, m, cmd, f" ({test})")
        if done is None:
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
    mix = w2_mix_cpu(m.notes.get("memcslap (get)"), m.notes.get("memcslap (set)"))
    if mix is not None:
        m.metrics["W2 mix CPU us/op"] = mix


def w2_mix_cpu(get_run: dict[str, Any] | None, set_run: dict[str, Any] | None, get_share: float = 0.9) -> float | None:
    """Server CPU per operation of W2's mix (90 % gets), from memcslap's two runs.

    memcslap's set run sends only sets, which gives a set's cost; its get run
    stores its keys before reading them, so a get's cost is what that run
    used beyond its sets. The mix weighs the two as W2 does.
    """
    if not get_run or not set_run or not set_run["sets"] or not get_run["gets"]:
        return None
    per_set = set_run["server_cpu_seconds"] / set_run["sets"]
    per_get = max(0.0, get_run["server_cpu_seconds"] - get_run["sets"] * per_set) / get_run["gets"]
    return round(1e6 * (get_share * per_get + (1 - get_share) * per_set), 2)


def memcslap_binary(server: Server, s: Settings, m: Measure) -> None:
    memcslap(server, s, m, binary=True)


def x6(server: Server, s: Settings, m: Measure) -> None:
    """Streamed sets from memcslap (C): 4 threads, ``--noreply``, so each sends without waiting.

    memcslap's ``--buffer`` (its pipelining) fails an assertion in
    libmemcached 1.1.4 against memcached itself, so sets without replies are
    the nearest C equivalent of W6's pipelined sets; the server parses and
    stores the same commands, only writes no reply.
    """
    threads = 4
    ops = s.memcslap_ops * 50
    cmd = ["memcslap", f"--servers=127.0.0.1:{server.port}", f"--concurrency={threads}"]
    cmd += [f"--execute-number={ops}", "--test=set", "--noreply", "--tcp-nodelay"]
    done = c_client(server, s, m, cmd, "")
    if done is None:
        return
    match = _MEMCSLAP_LINE.search(done.stdout)
    served = m.notes.get("memcslap", {}).get("served", 0)
    if done.returncode or match is None or served < threads * ops:
        m.errors += 1
        m.error_kinds[f"memcslap --noreply: exit {done.returncode}, {served} of {threads * ops} sets counted"] = 1
    if match and float(match.group(4)) > 0:
        m.metrics["sets/s"] = int(match.group(2)) / float(match.group(4))


@dataclass
class Workload:
    id: str
    title: str
    run: Callable[[Server, Settings, Measure], None]
    #: memcachedlite's --fsync and Redis's appendfsync (memcached has none).
    fsync: str = "everysec"
    servers: tuple[str, ...] = TARGETS


WITH_REDIS = (LITE, MEMCACHED, REDIS)

WORKLOADS = [
    Workload("W1", "1 connection, get, request/response", w1),
    Workload("W2", "50 connections, 90% get / 10% set, 100 B values", w2),
    Workload("D1", "W1 with memcachedlite --fsync always (the cost of durable reads)", w1, "always", TARGETS),
    Workload("D2", "W2 with memcachedlite --fsync always (a get of a key being written waits)", w2, "always", TARGETS),
    Workload("B2", "W2's mix over the binary protocol (project's load generator)", binary_w2),
    Workload("M2", "memcslap, 50 threads, get / set (second load generator)", memcslap),
    Workload("MB", "memcslap --binary, 50 threads, get / set", memcslap_binary),
    Workload("W3", "get of 100 keys per request, 4 connections", w3),
    Workload("W4", "4 connections, set 1 KiB values, request/response", w4),
    Workload("W5", "memory: RSS growth after storing N items of 100 B", w5, servers=WITH_REDIS),
    Workload("W6", "pipelined sets, 100 per send, 4 connections", w6),
    Workload("X6", "sets streamed by memcslap --noreply (C), 4 threads (cross-check of W6)", x6),
    Workload("W7", "durable writes: --fsync always / appendfsync always, 50 vs 1 writer", w7, "always", WITH_REDIS),
    Workload("W8", "restart on N items: start to the first correct get", w8, servers=(LITE, REDIS)),
]


@dataclass
class Row:
    """One line of the table: a metric of a workload, its direction and target.

    ``vs`` is the server the target's ratio is taken against; ``tag`` names
    the load of the workload the row's CPU and client figures come from;
    ``throughput`` rows lose their ratio when a run was client-bound.
    """

    workload: str
    metric: str
    better: str  # "higher" or "lower"
    target: float | None = None  # on the ratio, or on memcachedlite's own value if own_target
    own_target: bool = False
    vs: str = MEMCACHED
    tag: str = ""
    throughput: bool = False


def _cpu(workload: str, tag: str = "") -> Row:
    return Row(workload, f"server CPU us/op{tag}", "lower", tag=tag)


ROWS = [
    Row("W1", "ops/s", "higher", throughput=True),
    Row("W1", "p50 us", "lower", 1.15),
    Row("W1", "p99 us", "lower"),
    _cpu("W1"),
    Row("W2", "ops/s", "higher", 0.5, throughput=True),
    Row("W2", "p99 us", "lower"),
    _cpu("W2"),
    Row("D1", "ops/s", "higher", throughput=True),
    Row("D1", "p50 us", "lower"),
    _cpu("D1"),
    Row("D2", "ops/s", "higher", throughput=True),
    Row("D2", "p99 us", "lower"),
    _cpu("D2"),
    Row("B2", "ops/s", "higher", throughput=True),
    _cpu("B2"),
    Row("M2", "get ops/s", "higher", tag=" (get)", throughput=True),
    _cpu("M2", " (get)"),
    Row("M2", "set ops/s", "higher", tag=" (set)", throughput=True),
    _cpu("M2", " (set)"),
    Row("M2", "W2 mix CPU us/op", "lower"),
    Row("MB", "get ops/s", "higher", tag=" (get)", throughput=True),
    _cpu("MB", " (get)"),
    Row("MB", "set ops/s", "higher", tag=" (set)", throughput=True),
    _cpu("MB", " (set)"),
    Row("W3", "keys/s", "higher", 0.65, throughput=True),
    _cpu("W3"),
    Row("W4", "ops/s", "higher", 0.65, throughput=True),
    _cpu("W4"),
    Row("W5", "RSS growth MiB", "lower", 1.2),
    Row("W5", "bytes/item", "lower"),
    Row("W6", "sets/s", "higher", 0.4, throughput=True),
    _cpu("W6"),
    Row("X6", "sets/s", "higher", throughput=True),
    _cpu("X6"),
    Row("W7", "1 writer ops/s", "higher", tag=" (1 writer)", throughput=True, vs=REDIS),
    _cpu("W7", " (1 writer)"),
    Row("W7", "50 writers ops/s", "higher", 0.5, tag=" (50 writers)", throughput=True, vs=REDIS),
    _cpu("W7", " (50 writers)"),
    Row("W7", "gain 50w/1w", "higher", 12.0, own_target=True),
    Row("W8", "restart s", "lower"),
    Row("W8", "restart items/s", "higher", 1.0, vs=REDIS),
    Row("W8", "restart items/s (RDB)", "higher"),
    Row("W8", "written/s", "higher"),
]


# -- running ------------------------------------------------------------------------


def servers_of(workload: Workload, builds: tuple[str, ...]) -> tuple[str, ...]:
    """The servers a workload runs against: memcachedlite once per build, in its place, then the others."""
    out: list[str] = []
    for name in workload.servers:
        out.extend(lite_names(builds).values() if name == LITE else [name])
    return tuple(out)


def check_served_build(server: Server, m: Measure) -> None:
    """Note the build memcachedlite says it runs; a run of another build than meant is an error."""
    if not isinstance(server, Lite):
        return
    said = m.notes["build"] = served_build(server.port)
    meant = buildtrees.BUILD_KEYS[server.build]
    if said is not None and said != meant:
        m.errors += 1
        m.error_kinds[f"stats settings says build {said}, not {meant}"] = 1


def run_all(settings: Settings, workdir: Path, log: Callable[[str], None]) -> list[Measure]:
    measures: list[Measure] = []
    for workload in WORKLOADS:
        if settings.only and workload.id not in settings.only:
            continue
        servers = servers_of(workload, settings.builds)
        for round_ in range(settings.rounds):
            order = servers if round_ % 2 == 0 else servers[::-1]
            for name in order:
                m = Measure(workload.id, name, round_ + 1)
                started = time.monotonic()
                label = f"{workload.id}-round{round_ + 1}" + ("" if name == LITE else f"-{name}")
                with make_server(name, workdir, workload.fsync, settings) as server:
                    with profiled(server, label, settings):
                        workload.run(server, settings, m)
                    m.notes["server_cpu_seconds_total"] = cpu_seconds(server.pid)
                    m.notes["server_rss_kib_end"] = proc_status(server.pid, "VmRSS")
                    check_served_build(server, m)
                measures.append(m)
                shown = ", ".join(f"{k} {_num(v)}" for k, v in m.metrics.items() if "client" not in k)
                if "unsupported" in m.notes:
                    shown = m.notes["unsupported"]
                log(
                    f"  {workload.id} round {round_ + 1} {name:<{13 if len(settings.builds) == 1 else 22}} {shown}"
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
    """The table: per row, each server's summary, the ratios, efficiency, client CPU and the target.

    ``ratio`` is memcachedlite's median over memcached's, ``ratio_redis`` over
    Redis's. ``efficiency`` (and ``efficiency_redis``) is the other server's
    CPU per operation over memcachedlite's, from the same load. A throughput
    ratio one of whose two servers had a client-bound run shows no value: it
    is kept as ``ratio_client_bound`` (``ratio_redis_client_bound``), and a
    target on it is judged on the efficiency instead.
    """
    rows = []
    titles = {w.id: w.title for w in WORKLOADS}
    for row in ROWS:
        per: dict[str, dict[str, Any]] = {}
        errors = {}
        cpu: dict[str, float | None] = {}
        client: dict[str, float | None] = {}
        bound: dict[str, bool] = {}
        for name in ALL_SERVERS:
            runs = [m for m in measures if m.workload == row.workload and m.server == name]
            per[name] = summarize([m.metrics[row.metric] for m in runs if row.metric in m.metrics])
            if runs and all("unsupported" in m.notes for m in runs):
                per[name]["note"] = runs[0].notes["unsupported"]
            errors[name] = sum(m.errors for m in runs)
            cpu_metric = row.metric if "CPU us/op" in row.metric else f"server CPU us/op{row.tag}"
            cpu[name] = summarize([m.metrics[cpu_metric] for m in runs if cpu_metric in m.metrics])["median"]
            client[name] = summarize([m.metrics[k] for m in runs if (k := f"client CPU %{row.tag}") in m.metrics])[
                "median"
            ]
            bound[name] = any(row.tag in m.client_bound for m in runs)
        if all(per[name]["median"] is None for name in ALL_SERVERS):
            continue
        r = ratio(per[LITE]["median"], per[MEMCACHED]["median"])
        r_redis = ratio(per[LITE]["median"], per[REDIS]["median"])
        efficiency = ratio(cpu[MEMCACHED], cpu[LITE])
        efficiency_redis = ratio(cpu[REDIS], cpu[LITE])
        withheld = row.throughput and (bound[LITE] or bound[MEMCACHED])
        withheld_redis = row.throughput and (bound[LITE] or bound[REDIS])
        met = None
        judged_on = "ratio"
        if row.target is not None:
            against = r_redis if row.vs == REDIS else r
            if row.own_target:
                value, judged_on = per[LITE]["median"], "memcachedlite"
            elif withheld_redis if row.vs == REDIS else withheld:
                value, judged_on = (efficiency_redis if row.vs == REDIS else efficiency), "efficiency"
            else:
                value = against
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
                REDIS: per[REDIS],
                "ratio": None if withheld else r,
                "ratio_redis": None if withheld_redis else r_redis,
                "ratio_client_bound": r if withheld else None,
                "ratio_redis_client_bound": r_redis if withheld_redis else None,
                "client_bound": withheld or withheld_redis,
                "efficiency": efficiency,
                "efficiency_redis": efficiency_redis,
                "server_cpu_us_per_op": cpu,
                "client_cpu_percent": client,
                "target": row.target,
                "target_vs": row.vs,
                "target_on": judged_on,
                "met": met,
                "errors": errors,
            }
        )
    return rows


def as_build(measures: list[Measure], mine: str) -> list[Measure]:
    """The runs as if the memcachedlite named ``mine`` were the only one: its runs named LITE, the other
    build's left out."""
    others = {LITE, LITE_COMPILED} - {mine}
    return [dataclasses.replace(m, server=LITE) if m.server == mine else m for m in measures if m.server not in others]


#: The compiled build's own targets (issue 25): its efficiency against memcached, in CPU time.
BUILD_TARGETS = {("W3", "server CPU us/op"): 0.95, ("W6", "server CPU us/op"): 0.35}


def compare_builds(pure_rows: list[dict[str, Any]], compiled_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every workload's CPU per operation and efficiency for both builds, and their ratio.

    One entry per CPU row (a load of a workload) the two builds share. ``gain``
    is the compiled build's efficiency over the pure one's, which is the pure
    build's CPU per operation over the compiled one's (memcached's and Redis's
    runs are the same for both), so > 1 means the compiled build does the same
    work with less CPU. A :data:`BUILD_TARGETS` row is judged on the compiled
    build's efficiency against memcached.
    """
    compiled = {(r["workload"], r["metric"]): r for r in compiled_rows}
    out = []
    for p in pure_rows:
        key = (p["workload"], p["metric"])
        c = compiled.get(key)
        if c is None or "CPU us/op" not in p["metric"]:
            continue
        cpu = {
            PURE: p[LITE]["median"],
            COMPILED: c[LITE]["median"],
            MEMCACHED: p[MEMCACHED]["median"],
            REDIS: p[REDIS]["median"],
        }
        target = BUILD_TARGETS.get(key)
        out.append(
            {
                "workload": p["workload"],
                "metric": p["metric"],
                "cpu_us_per_op": cpu,
                "efficiency": {PURE: p["efficiency"], COMPILED: c["efficiency"]},
                "efficiency_redis": {PURE: p["efficiency_redis"], COMPILED: c["efficiency_redis"]},
                "gain": ratio(cpu[PURE], cpu[COMPILED]),
                "target": target,
                "met": None if target is None or c["efficiency"] is None else c["efficiency"] >= target,
            }
        )
    return out


def format_comparison(entries: list[dict[str, Any]]) -> str:
    """The builds compared, as a plain-text (Markdown) table."""

    def efficiency(entry: dict[str, Any], build: str) -> str:
        shown = [f"{entry['efficiency'][build]:.2f}" if entry["efficiency"][build] is not None else ""]
        if entry["efficiency_redis"][build] is not None:
            shown.append(f"Redis {entry['efficiency_redis'][build]:.2f}")
        return " ".join(e for e in shown if e) or "-"

    header = ["workload", "metric ↓", "pure", "compiled", MEMCACHED, "Redis"]
    header += ["efficiency pure", "efficiency compiled", "compiled/pure", "target (compiled)"]
    lines = [header]
    for e in entries:
        cpu = e["cpu_us_per_op"]
        target = ""
        if e["target"] is not None:
            target = f">={e['target']:g} {VERDICTS[e['met']]}"
        lines.append(
            [
                e["workload"],
                e["metric"],
                *(_num(cpu[name]) for name in (PURE, COMPILED, MEMCACHED, REDIS)),
                efficiency(e, PURE),
                efficiency(e, COMPILED),
                "-" if e["gain"] is None else f"{e['gain']:.2f}x",
                target,
            ]
        )
    return markdown_table(lines)


def cross_checks(rows: list[dict[str, Any]], measures: list[Measure]) -> list[dict[str, Any]]:
    """W2 against memcslap (M2) and W6 against memcslap (X6): do the two load generators tell the same story?

    Compared per round: the efficiency (memcached's CPU per op over
    memcachedlite's: W2's against the same mix worked out from memcslap's get
    and set runs) and the throughput ratio (W2's against memcslap's gets).
    They agree when the two ranges over the rounds overlap, or their medians
    are within 15 % of each other.
    """
    out = []
    pairs = (
        ("W2", "ops/s", "server CPU us/op", "M2", "get ops/s", "W2 mix CPU us/op"),
        ("W6", "sets/s", "server CPU us/op", "X6", "sets/s", "server CPU us/op"),
    )
    for ours, metric, cpu, theirs, their_metric, their_cpu in pairs:
        entry: dict[str, Any] = {"ours": ours, "independent": theirs}
        figures = (("efficiency", (cpu, their_cpu), True), ("ratio", (metric, their_metric), False))
        for figure, keys, lower_is_better in figures:
            spans = []
            for workload, key in zip((ours, theirs), keys, strict=True):
                per_round = []
                for n in sorted({m.round for m in measures if m.workload == workload}):
                    got = {m.server: m.metrics.get(key) for m in measures if m.workload == workload and m.round == n}
                    a, b = got.get(LITE), got.get(MEMCACHED)
                    value = ratio(b, a) if lower_is_better else ratio(a, b)
                    if value is not None:
                        per_round.append(value)
                spans.append(summarize(per_round))
            mine, other = spans
            agree = None
            if mine["median"] is not None and other["median"] is not None:
                overlap = mine["min"] <= other["max"] and other["min"] <= mine["max"]
                agree = overlap or abs(mine["median"] - other["median"]) <= 0.15 * max(mine["median"], other["median"])
            entry[figure] = {ours: mine, theirs: other, "agree": agree}
        bound = {r["workload"]: r["client_bound"] for r in rows if r["metric"] in (metric, their_metric)}
        entry["client_bound"] = {ours: bound.get(ours), theirs: bound.get(theirs)}
        out.append(entry)
    return out


def format_cross_checks(checks: list[dict[str, Any]]) -> str:
    lines = []
    for c in checks:
        parts = []
        for figure in ("efficiency", "ratio"):
            f = c[figure]
            mine, other = f[c["ours"]], f[c["independent"]]
            if mine["median"] is None or other["median"] is None:
                parts.append(f"{figure}: not measured by both")
                continue
            verdict = "agree" if f["agree"] else "DISAGREE"
            parts.append(
                f"{figure} {mine['median']:.2f} [{mine['min']:.2f}-{mine['max']:.2f}] vs "
                f"{other['median']:.2f} [{other['min']:.2f}-{other['max']:.2f}]: {verdict}"
            )
        bound = ", ".join(f"{k} client-bound" for k, v in c["client_bound"].items() if v)
        lines.append(f"  {c['ours']} vs {c['independent']}: " + "; ".join(parts) + (f" ({bound})" if bound else ""))
    return "\n".join(lines)


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
    if v >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(summary: dict[str, Any]) -> str:
    if summary["median"] is None:
        return summary.get("note", "-")
    if len(summary["values"]) == 1:
        return _num(summary["median"])
    return f"{_num(summary['median'])} [{_num(summary['min'])}-{_num(summary['max'])}]"


VERDICTS = {True: "met", False: "MISSED", None: "?"}


def _target_text(row: dict[str, Any]) -> str:
    if row["target"] is None:
        return ""
    sign = ">=" if row["better"] == "higher" else "<="
    where = {"ratio": "", "memcachedlite": " (own)", "efficiency": " (efficiency)"}[row["target_on"]]
    vs = " Redis" if row["target_vs"] == REDIS and row["target_on"] != "memcachedlite" else ""
    return f"{sign}{row['target']:g}{vs}{where} {VERDICTS[row['met']]}"


def _ratio_text(value: float | None, withheld: float | None) -> str:
    if withheld is not None:
        return "client-bound"
    return "-" if value is None else f"{value:.2f}"


def _percents(values: dict[str, float | None]) -> str:
    shown = [f"{v:.0f}" if v is not None else "-" for v in (values[n] for n in ALL_SERVERS)]
    return "/".join(shown) if any(v is not None for v in values.values()) else ""


def format_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a plain-text table (also valid Markdown)."""
    header = [
        "workload",
        "metric",
        LITE,
        MEMCACHED,
        "Redis",
        "ratio",
        "vs Redis",
        "efficiency",
        "target",
        "client CPU %",
        "errors",
    ]
    lines = [header]
    for row in rows:
        direction = "↑" if row["better"] == "higher" else "↓"
        efficiency = [f"{row['efficiency']:.2f}" if row["efficiency"] is not None else ""]
        if row["efficiency_redis"] is not None:
            efficiency.append(f"Redis {row['efficiency_redis']:.2f}")
        lines.append(
            [
                row["workload"],
                f"{row['metric']} {direction}",
                _cell(row[LITE]),
                _cell(row[MEMCACHED]),
                _cell(row[REDIS]),
                _ratio_text(row["ratio"], row["ratio_client_bound"]),
                _ratio_text(row["ratio_redis"], row["ratio_redis_client_bound"]),
                " ".join(e for e in efficiency if e),
                _target_text(row),
                _percents(row["client_cpu_percent"]) if "CPU" not in row["metric"] else "",
                "/".join(str(row["errors"][n]) for n in ALL_SERVERS),
            ]
        )
    return markdown_table(lines)


def markdown_table(lines: list[list[str]]) -> str:
    """Rows of cells (the first: the header) as a table with aligned columns."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def machine(source: Path = ROOT) -> dict[str, Any]:
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
        git = ["git", "-C", str(source)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            changed = len(dirty.stdout.splitlines())
            info["code"] = head.stdout.strip() + (f" + {changed} uncommitted files" if changed else "")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        binary = shutil.which("memcached") or "memcached"
        info["memcached"] = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10).stdout.strip()
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        binary = shutil.which("redis-server") or "redis-server"
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.split()
        info["redis"] = "Redis " + version[2].removeprefix("v=")
    return info


def draw_chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Left: memcachedlite against memcached per workload, throughput ratio (hatched grey where
    client-bound) beside the efficiency; right: the same against Redis (W7, W8). Higher is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bars(ax: Any, shown: list[dict[str, Any]], ratio_key: str, efficiency_key: str, against: str) -> None:
        labels = []
        y = 0.0
        ticks = []
        top = 1.2
        for r in shown:
            value = r[ratio_key] if r[ratio_key] is not None else r[f"{ratio_key}_client_bound"]
            good = value if value is None or r["better"] == "higher" else 1 / value if value else 0.0
            target = None
            if r["target"] is not None and r["target_on"] != "memcachedlite" and r["target_vs"] == against:
                target = r["target"] if r["better"] == "higher" else 1 / r["target"]
            if good is not None:
                withheld = r[ratio_key] is None
                colour = "#bbbbbb" if withheld or target is None else "#2a9d4b" if good >= target else "#d1495b"
                ax.barh(y + 0.2, good, height=0.38, color=colour, hatch="//" if withheld else None)
                ax.text(good, y + 0.2, f" {good:.2f}{' client-bound' if withheld else ''}", va="center", fontsize=7)
                top = max(top, good)
                if target is not None:
                    ax.plot([target, target], [y - 0.4, y + 0.4], color="black", linewidth=2)
            eff = r.get(efficiency_key)
            if eff is not None:
                ax.barh(y - 0.2, eff, height=0.38, color="#3b6ea8")
                ax.text(eff, y - 0.2, f" {eff:.2f} CPU", va="center", fontsize=7)
                top = max(top, eff)
            ticks.append(y)
            labels.append(f"{r['workload']} {r['metric']}")
            y -= 1.0
        ax.axvline(1.0, color="#444444", linestyle="--", linewidth=1)
        ax.set_yticks(ticks, labels, fontsize=8)
        ax.set_xlim(0, top * 1.3)

    left = [
        r
        for r in rows
        if "CPU" not in r["metric"]
        and (r["ratio"] is not None or r["ratio_client_bound"] is not None)
        and r["workload"] not in ("W7", "W8")
        and r["metric"] != "bytes/item"
    ]
    right = [
        r
        for r in rows
        if (r["ratio_redis"] is not None or r["ratio_redis_client_bound"] is not None)
        and "CPU" not in r["metric"]
        and r["metric"] not in ("bytes/item", "restart s")
    ]
    height = 0.42 * max(len(left), 2 * len(right)) + 2
    fig, axes = plt.subplots(1, 2, figsize=(13, height), gridspec_kw={"width_ratios": [3, 2]}, squeeze=False)
    bars(axes[0][0], left, "ratio", "efficiency", MEMCACHED)
    axes[0][0].set_xlabel(
        "memcachedlite / memcached (1 = as good; grey bar: throughput, blue: CPU efficiency; | = target)", fontsize=8
    )
    if right:
        bars(axes[0][1], right, "ratio_redis", "efficiency_redis", REDIS)
        axes[0][1].set_xlabel("memcachedlite / Redis (1 = as good)", fontsize=8)
    else:
        axes[0][1].axis("off")
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
    parser.add_argument("--w5-items", type=int, help="items stored by W5 (default 200000; --quick 100000)")
    parser.add_argument("--w8-items", type=int, help="items W8 restarts on (default 1000000; --quick 100000)")
    parser.add_argument(
        "--procs-per-cpu", type=int, help="load generator processes per client CPU where a load has several (default 2)"
    )
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
    parser.add_argument(
        "--builds",
        help="memcachedlite's builds to measure side by side: pure, compiled or pure,compiled (default: the "
        "checkout as it is, pure unless compiled in place; the compiled one is built with mypyc in a scratch copy)",
    )
    parser.add_argument(
        "--tree",
        type=Path,
        metavar="DIR",
        help="measure the builds of this checkout of memcachedlite (default: this one)",
    )
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    for name in ("rounds", "duration", "warmup", "w5_items", "w8_items", "memcslap_ops", "procs_per_cpu"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if args.only:
        settings.only = {w.strip().upper() for w in args.only.split(",") if w.strip()}
        unknown = settings.only - {w.id for w in WORKLOADS}
        if unknown:
            parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if (
        settings.rounds < 1
        or settings.duration <= 0
        or settings.warmup < 0
        or min(settings.w5_items, settings.w8_items, settings.procs_per_cpu) < 1
    ):
        parser.error("--rounds, --duration, --w5-items, --w8-items and --procs-per-cpu must be positive")
    settings.profile_dir = args.profile
    settings.pin = not args.no_pin
    if args.tree is not None:
        if not (args.tree / "memcachedlite" / "__init__.py").is_file():
            parser.error(f"--tree: {args.tree} is not a checkout of memcachedlite")
        settings.source = args.tree.resolve()
    try:
        settings.builds = buildtrees.parse_builds(args.builds or buildtrees.own_build(settings.source))
    except ValueError as exc:
        parser.error(f"--builds: {exc}")
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
    info = machine(settings.source)
    log(
        f"{date}  {info.get('cpus')} cores  {info.get('cpu', '')}  {info.get('memcached', '')}  "
        f"Python {info['python']}  code {info.get('code', '?')}"
    )
    log(f"rounds {settings.rounds}, {settings.duration:g} s measured after {settings.warmup:g} s warm-up per run")
    try:
        with contextlib.ExitStack() as stack:
            try:  # before place(): the build may use every CPU (it runs under nice)
                settings.trees = stack.enter_context(buildtrees.prepared(settings.builds, settings.source, log))
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                return 2
            info["builds"] = {build: str(tree) for build, tree in settings.trees.items()}
            info["placement"] = place(settings)
            log(info["placement"])
            with tempfile.TemporaryDirectory(prefix="mcl-bench-") as tmp:
                measures = run_all(settings, Path(tmp), log)
    except KeyboardInterrupt:
        print("\ninterrupted; every server and load process was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    names = lite_names(settings.builds)
    by_build = {build: build_rows(as_build(measures, names[build])) for build in settings.builds}
    checks = {build: cross_checks(by_build[build], as_build(measures, names[build])) for build in settings.builds}
    compared = compare_builds(by_build[PURE], by_build[COMPILED]) if len(settings.builds) > 1 else []
    elapsed = time.monotonic() - started
    log("")
    log(f"{command}  ({date}, {info.get('cpus')} cores, {elapsed:.0f} s)")
    log(
        f"medians of {settings.rounds} round{'s' if settings.rounds > 1 else ''} [min-max]; "
        "ratio = memcachedlite / memcached (vs Redis: / Redis); efficiency = the other server's CPU per op / "
        "memcachedlite's; ↑ higher is better, ↓ lower is better; client CPU % and errors: memcachedlite/memcached/Redis"
    )
    for build in settings.builds:
        if len(settings.builds) > 1:
            log(f"\nmemcachedlite's {build} build ({names[build]} in the runs and the JSON):")
        log(format_table(by_build[build]))
        if any(c["efficiency"][c["ours"]]["median"] is not None for c in checks[build]):
            log("\ncross-check against independent C load generators (ratios per round, [min-max]):")
            log(format_cross_checks(checks[build]))
    if compared:
        log(
            "\nthe builds compared: server CPU per operation (us) of each, memcached's and Redis's, each build's "
            "efficiency, and compiled/pure = the compiled build's efficiency over the pure one's "
            "(the pure build's CPU per op over the compiled one's; > 1: less CPU for the same work):"
        )
        log(format_comparison(compared))
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
    first = settings.builds[0]
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
            "rows": by_build[first],
            "cross_checks": checks[first],
            "builds": {build: {"rows": by_build[build], "cross_checks": checks[build]} for build in settings.builds},
            "comparison": compared,
            "runs": [vars(m) for m in measures],
            "profiles": profiles,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        log(f"results written to {args.json}")
    if args.png is not None:
        for build in settings.builds:
            path = args.png if len(settings.builds) == 1 else args.png.with_stem(f"{args.png.stem}-{build}")
            draw_chart(
                by_build[build],
                path,
                f"memcachedlite ({build} build) vs {info.get('memcached', 'memcached')} and "
                f"{info.get('redis', 'Redis')} — {date[:10]}, {info.get('cpus')} cores, medians of {settings.rounds}",
            )
            log(f"chart written to {path}")
    if errors:
        log(f"{errors} ERRORS (wrong or missing replies): see the errors column and the JSON")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
