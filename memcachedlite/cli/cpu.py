"""Keeping ``mcl serve`` on one CPU (``--cpu``), and choosing which with
``--cpu auto``.

Only one thread runs Python at a time (the interpreter lock), so a second
core buys a server little; but each hand-off of the lock to a thread the
kernel put on another core costs a cross-core wake-up. On the benchmark
machine (2 cores) pinning tripled throughput with 50 connections (W2: 16k ->
51k ops/s) and halved its p99 latency. memcached pins nothing, and neither
does ``mcl serve`` unless asked: a pinned process is one the scheduler can
no longer move away from a busy core.

``--cpu auto`` takes the least loaded of the CPUs the process may use: the
one with the fewest processes pinned to it alone (other servers started with
``--cpu``, or anything ``taskset`` placed), then the least busy over a tenth
of a second (from ``/proc/stat``), then the lowest number. Servers choosing
at the same moment take turns under a lock file, so each sees where the one
before it went: several started together spread over the cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator, Optional

log = logging.getLogger("memcachedlite")

#: How long ``/proc/stat`` is watched to see how busy each CPU is.
SAMPLE_SECONDS = 0.1
#: ``/proc/<pid>/stat`` flag of a kernel thread: those are pinned per CPU by design.
_PF_KTHREAD = 0x00200000


class CpuChoiceError(ValueError):
    """``--cpu`` names no CPU this process may use."""


@dataclass(frozen=True)
class Load:
    """What ``--cpu auto`` weighs for one CPU."""

    cpu: int
    pinned: int  # processes pinned to this CPU alone
    busy: float  # fraction of the sample spent not idle


def parse_cpu_list(text: str) -> set[int]:
    """CPUs from the kernel's list form, as in ``Cpus_allowed_list``: ``0-3,8,10-11``."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if part:
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def pinned_counts(allowed: list[int], proc: str = "/proc") -> dict[int, int]:
    """For each CPU of ``allowed``, how many processes other than this one
    may run on it alone; kernel threads, pinned per CPU by design, are left out."""
    counts = dict.fromkeys(allowed, 0)
    me = str(os.getpid())
    for pid in os.listdir(proc):
        if not pid.isdigit() or pid == me:
            continue
        try:
            with open(os.path.join(proc, pid, "stat"), "rb") as f:
                flags = int(f.read().rsplit(b")", 1)[1].split()[6])  # field 9; the name may hold spaces
            if flags & _PF_KTHREAD:
                continue
            with open(os.path.join(proc, pid, "status"), "rb") as f:
                status = f.read().decode("ascii", "replace")
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
            continue
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                cpus = parse_cpu_list(line.split(":", 1)[1])
                if len(cpus) == 1 and (cpu := cpus.pop()) in counts:
                    counts[cpu] += 1
                break
    return counts


def cpu_times(proc: str = "/proc") -> dict[int, tuple[int, int]]:
    """``{cpu: (busy, total)}`` clock ticks since boot, from ``/proc/stat``
    (idle and iowait are not busy)."""
    times = {}
    with open(os.path.join(proc, "stat"), "rb") as f:
        for line in f:
            name, _, rest = line.partition(b" ")
            if name.startswith(b"cpu") and name[3:].isdigit():
                ticks = [int(t) for t in rest.split()[:8]]
                idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
                times[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return times


def busy_fractions(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[int, float]:
    """How busy each CPU was between two :func:`cpu_times` readings."""
    busy = {}
    for cpu, (busy_after, total_after) in after.items():
        busy_before, total_before = before.get(cpu, (busy_after, total_after))
        elapsed = total_after - total_before
        busy[cpu] = (busy_after - busy_before) / elapsed if elapsed > 0 else 0.0
    return busy


def least_loaded(loads: list[Load]) -> Load:
    """Fewest processes pinned to it, then least busy, then the lowest number."""
    return min(loads, key=lambda load: (load.pinned, load.busy, load.cpu))


def measure(allowed: list[int], proc: str = "/proc", sample: float = SAMPLE_SECONDS) -> list[Load]:
    """The load of each CPU of ``allowed``, now. Without a readable ``/proc/stat``
    every CPU counts as idle."""
    try:
        before = cpu_times(proc)
        time.sleep(sample)
        busy = busy_fractions(before, cpu_times(proc))
    except (OSError, ValueError):
        busy = {}
    pinned = pinned_counts(allowed, proc)
    return [Load(cpu, pinned[cpu], busy.get(cpu, 0.0)) for cpu in allowed]


@contextlib.contextmanager
def _one_chooser_at_a_time() -> Iterator[None]:
    """Servers of this user choosing at once take turns (a lock file in the
    runtime or temporary directory), so each sees the others' pinning. Where
    the lock cannot be had, choosing goes on without it."""
    import fcntl

    folder = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = os.path.join(folder, f"memcachedlite-cpu-{os.getuid()}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        log.debug("choosing a CPU without the lock %s: %s", path, exc.strerror)
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def pin(choice: str) -> Optional[int]:
    """Keep every thread of this process on the CPU ``choice`` names
    (``none``, ``auto`` or a number); returns it, or None when nothing was pinned.

    Raises :class:`CpuChoiceError` for a CPU this process may not use.
    """
    if choice == "none":
        return None
    if not hasattr(os, "sched_setaffinity"):
        log.warning("--cpu %s ignored: this platform cannot keep a process on one CPU", choice)
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if choice != "auto":
        if not choice.isdigit() or int(choice) not in allowed:
            raise CpuChoiceError(f"--cpu must be auto, none or one of the allowed CPUs {allowed}, not {choice!r}")
        os.sched_setaffinity(0, {int(choice)})
        log.info("pinned to CPU %s (--cpu %s)", choice, choice)
        return int(choice)
    if len(allowed) < 2:
        log.info("--cpu auto: not pinned, only CPU %d is allowed", allowed[0])
        return None
    with _one_chooser_at_a_time():
        chosen = least_loaded(measure(allowed))
        os.sched_setaffinity(0, {chosen.cpu})
    log.info(
        "pinned to CPU %d (--cpu auto: the least loaded of CPUs %s, %d other processes pinned to it, %.0f%% busy)",
        chosen.cpu,
        ",".join(map(str, allowed)),
        chosen.pinned,
        chosen.busy * 100,
    )
    return chosen.cpu
