"""``mcl serve --cpu``: nothing pinned by default (as memcached), ``--cpu N``
pins to N, and ``--cpu auto`` takes the least loaded allowed CPU: fewest
processes pinned to it alone, then least busy. The choice is checked on a
``/proc`` tree written by the test (so other programs on the machine do not
change the answer), the pinning on real ``mcl serve`` processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from memcachedlite.cli import cpu
from memcachedlite.cli.cpu import Load, least_loaded
from tests.conftest import ROOT

ALLOWED = sorted(os.sched_getaffinity(0))
KERNEL_THREAD_FLAGS = 0x00208040  # PF_KTHREAD among others


class FakeProc:
    """A ``/proc`` with the files :mod:`memcachedlite.cli.cpu` reads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.stat([(100, 900), (100, 900)])

    def process(self, pid: int, allowed: str, name: str = "python3", flags: int = 0x400000) -> None:
        folder = self.root / str(pid)
        folder.mkdir()
        (folder / "stat").write_text(f"{pid} ({name}) S 1 {pid} {pid} 0 -1 {flags} 0 0 0 0 5 2 0 0 20 0 1 0\n")
        (folder / "status").write_text(f"Name:\t{name}\nCpus_allowed:\tff\nCpus_allowed_list:\t{allowed}\n")

    def stat(self, cpus: list[tuple[int, int]]) -> None:
        """``(busy, idle)`` ticks for each CPU, split over the fields /proc/stat has."""
        lines = ["cpu  1 2 3 4 5 6 7 8 0 0"]
        for n, (busy, idle) in enumerate(cpus):
            lines.append(f"cpu{n} {busy - 3} 1 1 {idle - 2} 2 1 0 0 0 0")
        lines += ["intr 12345 0 0", "ctxt 999", "btime 1700000000"]
        (self.root / "stat").write_text("\n".join(lines) + "\n")


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


def test_cpu_lists_in_the_kernels_form() -> None:
    assert cpu.parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert cpu.parse_cpu_list("5") == {5}
    assert cpu.parse_cpu_list("") == set()


def test_only_user_processes_pinned_to_one_allowed_cpu_count(proc: FakeProc) -> None:
    proc.process(10, "0")  # pinned to CPU 0
    proc.process(11, "0", name="a (weird) name")  # the name may hold spaces and parentheses
    proc.process(12, "1")
    proc.process(13, "0-1")  # free to move: not pinned
    proc.process(14, "1", flags=KERNEL_THREAD_FLAGS)  # ksoftirqd/1 and the like
    proc.process(15, "7")  # pinned, but to a CPU this process may not use
    proc.process(os.getpid(), "0")  # this process itself
    (proc.root / "16").mkdir()  # a process that ended while the folder was read
    proc.process(17, "0")
    (proc.root / "17" / "status").write_text("Name:\tzombie\n")  # no affinity given
    (proc.root / "self").mkdir()
    assert cpu.pinned_counts([0, 1], str(proc.root)) == {0: 2, 1: 1}


def test_busy_fractions_from_two_readings_of_proc_stat(proc: FakeProc) -> None:
    before = cpu.cpu_times(str(proc.root))
    assert before == {0: (100, 1000), 1: (100, 1000)}
    proc.stat([(190, 910), (110, 990)])  # CPU 0: 90 of 100 ticks busy; CPU 1: 10 of 100
    after = cpu.cpu_times(str(proc.root))
    assert cpu.busy_fractions(before, after) == {0: 0.9, 1: 0.1}
    assert cpu.busy_fractions(after, after) == {0: 0.0, 1: 0.0}  # no tick passed
    assert cpu.busy_fractions({}, after) == {0: 0.0, 1: 0.0}  # a CPU that came online meanwhile


def test_auto_takes_the_fewest_pinned_then_the_least_busy_then_the_lowest() -> None:
    assert least_loaded([Load(0, 2, 0.0), Load(1, 1, 0.9)]).cpu == 1
    assert least_loaded([Load(0, 1, 0.5), Load(1, 1, 0.2)]).cpu == 1
    assert least_loaded([Load(2, 0, 0.0), Load(1, 0, 0.0), Load(3, 0, 0.0)]).cpu == 1


def test_servers_choosing_in_turn_spread_over_the_cpus(proc: FakeProc) -> None:
    """What a server sees after another pinned itself: each takes a CPU of its own."""
    chosen = []
    for pid in (50, 51, 52, 53):
        choice = least_loaded(cpu.measure([0, 1, 2, 3], str(proc.root), sample=0)).cpu
        chosen.append(choice)
        proc.process(pid, str(choice))
    assert chosen == [0, 1, 2, 3]


def test_measure_without_proc_stat_counts_every_cpu_idle(proc: FakeProc) -> None:
    (proc.root / "stat").unlink()
    proc.process(20, "1")
    assert cpu.measure([0, 1], str(proc.root), sample=0) == [Load(0, 0, 0.0), Load(1, 1, 0.0)]


def test_measure_reads_the_real_proc() -> None:
    loads = cpu.measure(ALLOWED, sample=0.01)
    assert [load.cpu for load in loads] == ALLOWED
    assert all(load.pinned >= 0 and 0.0 <= load.busy <= 1.0 for load in loads)


def test_the_lock_file_is_private_and_its_absence_is_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with cpu._one_chooser_at_a_time():
        lock = tmp_path / f"memcachedlite-cpu-{os.getuid()}.lock"
        assert lock.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    with cpu._one_chooser_at_a_time():
        pass  # chosen without the lock


def run_pin(choice: str, allowed: list[int] = ALLOWED) -> subprocess.CompletedProcess:
    """``pin(choice)`` in a process of its own that may use ``allowed``; prints the affinity after it."""
    code = (
        "import logging, os, sys\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        f"os.sched_setaffinity(0, {set(allowed)!r})\n"
        "from memcachedlite.cli.cpu import pin\n"
        f"print(pin({choice!r}), sorted(os.sched_getaffinity(0)))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_none_pins_nothing_and_n_pins_to_n() -> None:
    result = run_pin("none")
    assert result.stdout == f"None {ALLOWED}\n" and not result.stderr
    result = run_pin(str(ALLOWED[0]))
    assert result.stdout == f"{ALLOWED[0]} [{ALLOWED[0]}]\n"
    assert f"pinned to CPU {ALLOWED[0]} (--cpu {ALLOWED[0]})" in result.stderr


@pytest.mark.skipif(len(ALLOWED) < 2, reason="one CPU allowed: --cpu auto has nothing to choose (tested below)")
def test_auto_pins_to_one_allowed_cpu_and_says_why() -> None:
    result = run_pin("auto")
    chosen = int(result.stdout.split()[0])
    assert chosen in ALLOWED and result.stdout == f"{chosen} [{chosen}]\n"
    assert re.search(
        rf"pinned to CPU {chosen} \(--cpu auto: the least loaded of CPUs {','.join(map(str, ALLOWED))},"
        r" \d+ other processes pinned to it, \d+% busy\)",
        result.stderr,
    ), result.stderr


def test_auto_with_one_cpu_allowed_leaves_it_as_it_is() -> None:
    result = run_pin("auto", allowed=ALLOWED[:1])
    assert result.stdout == f"None [{ALLOWED[0]}]\n"
    assert f"--cpu auto: not pinned, only CPU {ALLOWED[0]} is allowed" in result.stderr


def test_a_cpu_not_allowed_is_refused() -> None:
    with pytest.raises(
        cpu.CpuChoiceError, match=r"--cpu must be auto, none or one of the allowed CPUs \[.*\], not '4096'"
    ):
        cpu.pin("4096")
    with pytest.raises(cpu.CpuChoiceError, match="not 'fast'"):
        cpu.pin("fast")


def test_where_nothing_can_be_pinned_a_choice_is_ignored_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(os, "sched_setaffinity")  # macOS, for one
    assert cpu.pin("auto") is None and cpu.pin("1") is None
    assert "--cpu auto ignored: this platform cannot keep a process on one CPU" in caplog.text


def test_mcl_serve_pins_nothing_by_default_and_pins_when_asked(spawn) -> None:
    default = spawn("--no-data-file")
    assert os.sched_getaffinity(default.proc.pid) == set(ALLOWED)
    assert "pinned" not in default.output()
    pinned = spawn("--no-data-file", "--cpu", str(ALLOWED[-1]))
    assert os.sched_getaffinity(pinned.proc.pid) == {ALLOWED[-1]}
    assert f"pinned to CPU {ALLOWED[-1]} (--cpu {ALLOWED[-1]})" in pinned.output()


def test_mcl_serve_refuses_a_cpu_it_may_not_use(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "memcachedlite", "serve", "--port", "0", "--no-data-file", "--cpu", "4096"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 5 and "--cpu must be auto, none or one of the allowed CPUs" in result.stderr
