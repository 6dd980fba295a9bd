"""A failed write or fsync of the data file (issue 13 item 3), injected with
:class:`tests.crashsim.FsRecorder` at every step of a pipelined batch and
of a compaction, under each fsync policy, with real connections.

What must hold, whatever step fails:

- every reply is the command's own or ``SERVER_ERROR <reason>``; the
  connection stays open and no traceback is logged;
- nothing is half-applied: memory always equals the acknowledged commands
  replayed on an in-memory store, and so does a restart from the file once
  the server has recovered (nothing acknowledged is lost, nothing refused
  is there);
- reads keep working while the disk fails; writes are refused with
  ``SERVER_ERROR`` until the server has made the file's state certain again,
  which ``stats`` shows (``data_file_writable`` 0/1, ``data_file_errors``);
- once the fault stops (:meth:`FsRecorder.heal`), writes resume.

A failing fsync also zeroes, in the real file, what it failed to sync (the
kernel dropping dirty pages): a server that retried the fsync and carried on
would then lose acknowledged data or refuse to start.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Iterator

import pytest

from memcachedlite.errors import LogWriteError
from tests.crashsim import Disk, is_error

BIG = b"B" * 60_000  # a batch with several of these spans several receives, so several writes

SEED_COMMANDS = [
    b"set a 0 0 3\r\nold\r\n",
    b"set b 1 0 4\r\nbase\r\n",
    b"set c 2 0 5\r\ngoner\r\n",
    b"set d 0 0 4\r\ntemp\r\n",
    b"set n 0 0 2\r\n10\r\n",
    b"ms e 4 F5\r\nmeta\r\n",
]

BATCH = [
    b"set a 0 0 3\r\nnew\r\n",
    b"incr n 5\r\n",
    b"append b 0 0 3\r\nxyz\r\n",
    b"set big1 0 0 %d\r\n%s\r\n" % (len(BIG), BIG),
    b"delete c\r\n",
    b"touch d 100\r\n",
    b"set big2 0 0 %d\r\n%s\r\n" % (len(BIG), BIG),
    b"ms e 3 T0 F6\r\nnew\r\n",
    b"add fresh 0 0 1\r\nz\r\n",
    b"md e I\r\n",
    b"set big3 0 0 %d\r\n%s\r\n" % (len(BIG), BIG),
    b"incr n 1\r\n",
]


@pytest.fixture
def disks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    made: list[Disk] = []

    def make(policy: str) -> Disk:
        disk = Disk(tmp_path / f"disk{len(made)}", monkeypatch, policy)
        made.append(disk)
        return disk

    yield make
    for disk in made:
        disk.stop()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    shown = [r.getMessage() for r in caplog.records if r.exc_info]
    assert not shown, f"tracebacks logged: {shown}"


def batch_steps(disks, policy: str, kind: str) -> int:  # type: ignore[no-untyped-def]
    """How many calls of ``kind`` the batch makes when nothing fails."""
    disk = disks(policy)
    assert all(not is_error(r) for r in disk.run(SEED_COMMANDS))
    before = disk.recorder.calls[kind]
    assert all(not is_error(r) for r in disk.run(BATCH))
    disk.check_memory()
    steps = disk.recorder.calls[kind] - before
    disk.stop()
    return steps


FAULTS = [
    ("write", errno.ENOSPC, {}, "write-ENOSPC"),
    ("write", errno.EIO, {}, "write-EIO"),
    ("write", errno.ENOSPC, {"short": True}, "short-write-then-ENOSPC"),
    ("write", errno.ENOSPC, {"short": True, "cut_back_fails": True}, "short-write-then-ENOSPC-cut-back-fails"),
    ("fsync", errno.EIO, {"lose_unsynced": True}, "fsync-EIO-pages-lost"),
    ("fsync", errno.EIO, {}, "fsync-EIO"),
    ("fsync", errno.ENOSPC, {}, "fsync-ENOSPC"),
]


def uncertain(kind: str, err: int, options: dict) -> bool:
    """Whether the fault leaves the file's state in doubt: a failed fsync,
    an I/O error on write, or a partial write that could not be cut back. A
    full disk whose partial record was cut off leaves the file as it was."""
    return kind == "fsync" or err != errno.ENOSPC or "cut_back_fails" in options


#: Under ``no`` nothing fsyncs while serving: only the write faults apply.
BATCH_CASES = [
    pytest.param(policy, kind, err, options, id=f"{policy}-{name}")
    for policy in ("always", "everysec", "no")
    for kind, err, options, name in FAULTS
    if not (policy == "no" and kind == "fsync")
]


@pytest.mark.slow
@pytest.mark.parametrize("policy, kind, err, options", BATCH_CASES)
def test_a_failure_at_each_step_of_a_batch(
    disks, caplog: pytest.LogCaptureFixture, policy: str, kind: str, err: int, options: dict
) -> None:
    # under everysec the one fsync that can fail is the background one
    steps = 1 if kind == "fsync" and policy == "everysec" else batch_steps(disks, policy, kind)
    assert steps >= 1, f"the batch makes no {kind} call"
    for nth in range(1, steps + 1):
        caplog.clear()
        disk = disks(policy)
        assert all(not is_error(r) for r in disk.run(SEED_COMMANDS))
        disk.store.sync()  # what came before the batch is durable under every policy
        errors_before = int(disk.stat("data_file_errors"))
        # the whole disk fails: the file the server would rewrite too
        if "cut_back_fails" in options:  # and the half-written record cannot be cut off
            disk.recorder.fail("truncate", 1, errno.EIO, persistent=True)
        fault = disk.recorder.fail(
            kind,
            nth,
            err,
            persistent=True,
            short=options.get("short", False),
            lose_unsynced=options.get("lose_unsynced", False),
        )
        replies = disk.run(BATCH)
        if fault.fired and (policy == "always" or kind == "write"):
            assert any(is_error(r) for r in replies), replies
        if kind == "fsync" and policy == "everysec":
            disk.wait_for(lambda: fault.fired > 0, "the background fsync to fail")  # noqa: B023
        # group commit may have needed fewer calls this time: later writes reach the step
        disk.wait_for(lambda: fault.fired or is_error(disk.probe()), f"the fault at {kind} #{nth} to fire")  # noqa: B023
        if uncertain(kind, err, options):
            disk.wait_for(lambda: int(disk.stat("data_file_errors")) > errors_before, "data_file_errors to count it")  # noqa: B023
        disk.check_memory()
        disk.check_reads()
        if uncertain(kind, err, options):
            disk.wait_for(lambda: disk.stat("data_file_writable") == "0", "data_file_writable to drop to 0")  # noqa: B023
        assert is_error(disk.probe()), "a write was taken while the disk still fails"
        disk.check_memory()
        disk.recover()
        disk.file_matches()
        disk.check_reads()
        assert not any(is_error(r) for r in disk.run(BATCH))
        disk.restart_matches()
        no_tracebacks(caplog)


@pytest.mark.slow
@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
def test_a_failed_background_fsync_stops_writes_until_the_file_is_certain(
    disks, caplog: pytest.LogCaptureFixture, err: int
) -> None:
    """``everysec``: the writes were acknowledged before the fsync failed;
    they stay, the server stops taking more and says so, as under ``always``."""
    disk = disks("everysec")
    assert all(not is_error(r) for r in disk.run(SEED_COMMANDS))
    fault = disk.recorder.fail("fsync", 1, err, persistent=True, lose_unsynced=True)
    assert not any(is_error(r) for r in disk.run(BATCH))
    disk.wait_for(lambda: fault.fired > 0, "the background fsync to fail")
    disk.wait_for(lambda: disk.stat("data_file_writable") == "0", "data_file_writable to drop to 0")
    assert int(disk.stat("data_file_errors")) >= 1
    disk.check_memory()
    disk.check_reads()
    assert is_error(disk.probe())
    disk.recover()
    disk.file_matches()
    disk.restart_matches()
    no_tracebacks(caplog)


def compaction_steps(disks, policy: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    disk = disks(policy)
    disk.run(SEED_COMMANDS)
    disk.run(BATCH)
    before = dict(disk.recorder.calls)
    disk.store.compact()
    steps = {kind: disk.recorder.calls[kind] - before[kind] for kind in before}
    disk.restart_matches()
    return steps


COMPACTION_FAULTS = [
    pytest.param("open", errno.ENOSPC, id="open-ENOSPC"),
    pytest.param("write", errno.ENOSPC, id="write-ENOSPC"),
    pytest.param("write", errno.EIO, id="write-EIO"),
    pytest.param("fsync", errno.EIO, id="fsync-EIO"),
    pytest.param("fsync", errno.ENOSPC, id="fsync-ENOSPC"),
    pytest.param("rename", errno.EIO, id="rename-EIO"),
    pytest.param("dirsync", errno.EIO, id="dirsync-EIO"),
]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
@pytest.mark.parametrize("kind, err", COMPACTION_FAULTS)
def test_a_failure_at_each_step_of_a_compaction(
    disks, caplog: pytest.LogCaptureFixture, policy: str, kind: str, err: int
) -> None:
    steps = compaction_steps(disks, policy)[kind]
    assert steps >= 1, f"a compaction makes no {kind} call"
    for nth in range(1, steps + 1):
        caplog.clear()
        disk = disks(policy)
        disk.run(SEED_COMMANDS)
        disk.run(BATCH)
        # only the compaction's own calls fail: the new file, its rename, the directory
        name = "." if kind == "dirsync" else "data.txt.compact"
        fault = disk.recorder.fail(kind, nth, err, persistent=True, name=name)
        with pytest.raises(LogWriteError):
            disk.store.compact()
        assert fault.fired
        disk.check_memory()
        disk.check_reads()
        # writes are taken only while the file's state is certain, and either way answered
        if disk.stat("data_file_writable") == "0":
            assert is_error(disk.probe())
        replies = disk.run(BATCH)
        assert all(not r.startswith(b"SERVER_ERROR") or is_error(r) for r in replies)
        disk.check_memory()
        disk.recover()
        disk.file_matches()
        disk.store.compact()  # and compaction works again
        disk.check_reads()
        disk.restart_matches()
        no_tracebacks(caplog)


def test_logs_say_what_failed(disks, caplog: pytest.LogCaptureFixture) -> None:
    """The operator sees the failure in the log too, in one line, without a traceback."""
    disk = disks("always")
    disk.run(SEED_COMMANDS)
    disk.recorder.fail("fsync", 1, errno.EIO, persistent=True)
    with caplog.at_level(logging.WARNING):
        assert all(is_error(r) for r in disk.run([b"set x 0 0 1\r\n1\r\n"]))
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("data.txt" in m for m in messages), messages
    no_tracebacks(caplog)
    disk.recover()
    disk.restart_matches()


@pytest.mark.parametrize("policy", ["always", "no"])
def test_a_full_disk_is_counted_for_the_operator(disks, policy: str) -> None:
    """A write refused for lack of space leaves the file certain (the partial
    record is cut off), so writes need not stop; but it is a failure an
    operator alerts on, so ``data_file_errors`` counts it."""
    disk = disks(policy)
    disk.run(SEED_COMMANDS)
    disk.recorder.fail("write", 1, errno.ENOSPC, persistent=True, short=True)
    assert all(is_error(r) for r in disk.run([b"set x 0 0 1\r\n1\r\n"]))
    assert int(disk.stat("data_file_errors")) >= 1
    disk.check_memory()
    disk.recover()
    disk.restart_matches()
