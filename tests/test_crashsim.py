"""The crash simulator itself (tests/crashsim.py): it records what really
happened, and every state it builds is one a power loss could leave."""

from __future__ import annotations

import errno
import os
import random
import types
from pathlib import Path

import pytest

from tests.crashsim import PAGE, CrashState, FsRecorder, Trace


@pytest.fixture
def rec(tmp_path: Path) -> FsRecorder:
    (tmp_path / "old.txt").write_bytes(b"already there")
    return FsRecorder(tmp_path)


def append(rec: FsRecorder, fd: int, data: bytes) -> None:
    assert rec.write(fd, data) == len(data)


def open_log(rec: FsRecorder, path: Path) -> int:
    return rec.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)


def dir_sync(rec: FsRecorder, directory: Path) -> None:
    fd = rec.open(directory, os.O_RDONLY)
    try:
        rec.fsync(fd)
    finally:
        rec.close(fd)


def test_calls_pass_through_and_are_recorded(rec: FsRecorder, tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    fd = open_log(rec, path)
    append(rec, fd, b"hello ")
    rec.fsync(fd)
    append(rec, fd, b"world")
    rec.ftruncate(fd, 8)
    rec.close(fd)
    assert path.read_bytes() == b"hello wo"
    assert [op.kind for op in rec.ops] == ["create", "write", "fsync", "write", "truncate"]
    writes = [op for op in rec.ops if op.kind == "write"]
    assert [(w.offset, w.data) for w in writes] == [(0, b"hello "), (6, b"world")]
    assert rec.ops[2].upto == 2  # the fsync covers the create and the first write


def test_files_elsewhere_and_other_attributes_are_untouched(rec: FsRecorder, tmp_path: Path) -> None:
    other = tmp_path / "sub"
    other.mkdir()
    fd = rec.open(other / "x", os.O_WRONLY | os.O_CREAT, 0o600)
    rec.write(fd, b"abc")
    rec.fsync(fd)
    rec.close(fd)
    assert rec.ops == []
    assert (other / "x").read_bytes() == b"abc"
    assert rec.O_APPEND == os.O_APPEND and rec.getpid() == os.getpid()


def test_positional_writes_record_their_offset(rec: FsRecorder, tmp_path: Path) -> None:
    fd = rec.open(tmp_path / "c", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    rec.write(fd, b"aaaa")
    rec.pwrite(fd, b"ZZ", 1)
    rec.write(fd, b"bb")
    rec.close(fd)
    assert (tmp_path / "c").read_bytes() == b"aZZabb"
    assert [(op.offset, op.data) for op in rec.ops if op.kind == "write"] == [(0, b"aaaa"), (1, b"ZZ"), (4, b"bb")]
    assert rec.trace().content(rec.ops[0].inode, len(rec.ops)) == b"aZZabb"


def test_extremes_are_what_was_synced_and_what_was_written(rec: FsRecorder, tmp_path: Path) -> None:
    fd = open_log(rec, tmp_path / "data.txt")
    append(rec, fd, b"A" * 5000)
    rec.fsync(fd)
    dir_sync(rec, tmp_path)
    append(rec, fd, b"B" * 5000)
    rec.close(fd)
    trace = rec.trace()
    end = len(trace)
    assert trace.synced_state(end).files == {"old.txt": b"already there", "data.txt": b"A" * 5000}
    assert trace.written_state(end).files["data.txt"] == (tmp_path / "data.txt").read_bytes()


def test_every_state_keeps_the_synced_data_and_is_made_of_written_bytes(rec: FsRecorder, tmp_path: Path) -> None:
    fd = open_log(rec, tmp_path / "data.txt")
    append(rec, fd, b"s" * 6000)
    rec.fsync(fd)
    dir_sync(rec, tmp_path)
    rng = random.Random(1)
    unsynced = bytes(rng.randrange(1, 256) for _ in range(5 * PAGE))
    for i in range(0, len(unsynced), 3000):
        append(rec, fd, unsynced[i : i + 3000])
    rec.close(fd)
    trace = rec.trace()
    written = b"s" * 6000 + unsynced
    styles = set()
    for state in trace.crash_states(len(trace), random.Random(7), 300):
        data = state.files["data.txt"]
        styles.add(state.how.split(",")[0])
        assert 6000 <= len(data) <= len(written), state.how
        assert data[:6000] == b"s" * 6000, state.how
        for offset in range(6000, len(data)):
            if data[offset] not in (0, written[offset]) and "stale" not in state.how:
                raise AssertionError(f"byte {offset} neither written nor zero: {state.how}")
    assert {"synced only", "everything written", "cut", "hole", "pages"} <= styles


def test_states_include_holes_followed_by_later_pages(rec: FsRecorder, tmp_path: Path) -> None:
    """Out-of-order writeback: a later page present while an earlier one is zero."""
    fd = open_log(rec, tmp_path / "data.txt")
    append(rec, fd, b"x" * 100)
    rec.fsync(fd)
    dir_sync(rec, tmp_path)
    append(rec, fd, b"y" * (4 * PAGE))
    rec.close(fd)
    trace = rec.trace()
    found = False
    for state in trace.crash_states(len(trace), random.Random(3), 100):
        data = state.files["data.txt"]
        pages = [data[p : p + PAGE] for p in range(0, len(data), PAGE)]
        zero_then_data = any(
            not pages[i].strip(b"\0") and any(b"y" in later for later in pages[i + 1 :]) for i in range(len(pages))
        )
        found = found or zero_then_data
    assert found


def test_torn_pages_mix_sectors(rec: FsRecorder, tmp_path: Path) -> None:
    fd = rec.open(tmp_path / "p", os.O_RDWR | os.O_CREAT, 0o600)
    rec.write(fd, b"o" * PAGE)
    rec.fsync(fd)
    dir_sync(rec, tmp_path)
    rec.pwrite(fd, b"n" * PAGE, 0)  # an overwrite of synced data, never synced
    rec.close(fd)
    trace = rec.trace()
    seen = set()
    for state in trace.crash_states(len(trace), random.Random(5), 200):
        data = state.files["p"]
        assert len(data) == PAGE and set(data) <= {ord("o"), ord("n")}, state.how  # synced bytes never zeroed
        seen.add(data)
    assert b"o" * PAGE in seen and b"n" * PAGE in seen
    assert any(len(set(d)) == 2 for d in seen)  # some torn: part new, part old


def test_a_rename_is_durable_only_after_the_directory_fsync(rec: FsRecorder, tmp_path: Path) -> None:
    fd = rec.open(tmp_path / "new.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    rec.write(fd, b"new contents")
    rec.fsync(fd)
    rec.close(fd)
    rec.rename(tmp_path / "new.tmp", tmp_path / "old.txt")
    before_dirsync = len(rec.ops)
    dir_sync(rec, tmp_path)
    trace = rec.trace()
    rng = random.Random(11)
    olds = {state.files.get("old.txt") for state in trace.crash_states(before_dirsync, rng, 60)}
    assert olds == {b"already there", b"new contents"}
    afters = [state.files for state in trace.crash_states(len(trace), rng, 30)]
    assert all(files == {"old.txt": b"new contents"} for files in afters)


def test_a_new_file_may_vanish_until_the_directory_is_synced(rec: FsRecorder, tmp_path: Path) -> None:
    fd = open_log(rec, tmp_path / "data.txt")
    append(rec, fd, b"record")
    rec.fsync(fd)
    rec.close(fd)
    trace = rec.trace()
    assert "data.txt" not in trace.synced_state(len(trace)).files
    dir_sync(rec, tmp_path)
    trace = rec.trace()
    assert trace.synced_state(len(trace)).files["data.txt"] == b"record"


def test_fsync_covers_only_what_was_written_before_it_began(rec: FsRecorder, tmp_path: Path) -> None:
    fd = open_log(rec, tmp_path / "data.txt")
    append(rec, fd, b"first")
    # a write from another thread while the fsync runs
    rec.hooks["fsync"] = lambda name: (rec.hooks.clear(), append(rec, fd, b"second"))
    rec.fsync(fd)
    rec.close(fd)
    trace = rec.trace()
    fsync = next(op for op in trace.ops if op.kind == "fsync")
    assert trace.content(fsync.inode, fsync.upto) == b"first"
    assert trace.synced_state(len(trace)).files.get("data.txt", b"first") in (b"first", b"")


def test_same_seed_same_states(rec: FsRecorder, tmp_path: Path) -> None:
    fd = open_log(rec, tmp_path / "data.txt")
    for i in range(20):
        append(rec, fd, bytes([65 + i]) * 1000)
        if i % 7 == 0:
            rec.fsync(fd)
    rec.close(fd)
    trace = rec.trace()

    def states(seed: int) -> list[CrashState]:
        rng = random.Random(seed)
        return [s for at in trace.moments("fsync") for s in trace.crash_states(at, rng, 5)]

    assert states(42) == states(42)
    assert states(42) != states(43)


def test_moments_are_before_and_after_each_op_of_a_kind() -> None:
    from tests.crashsim import Op

    trace = Trace({}, {}, [Op("create", 1, "a"), Op("write", 1, "a", data=b"x"), Op("fsync", 1, "a", upto=2)])
    assert trace.moments("fsync") == [2, 3]
    assert trace.moments() == [0, 1, 2, 3]


def test_a_fault_fires_at_the_nth_call_and_then_the_disk_works(rec: FsRecorder, tmp_path: Path) -> None:
    fd = open_log(rec, tmp_path / "data.txt")
    fault = rec.fail("write", nth=2, err=errno.ENOSPC)
    append(rec, fd, b"one")
    with pytest.raises(OSError) as info:
        rec.write(fd, b"two")
    assert info.value.errno == errno.ENOSPC
    append(rec, fd, b"three")
    rec.close(fd)
    assert fault.fired == 1
    assert (tmp_path / "data.txt").read_bytes() == b"onethree"


def test_a_persistent_fault_lasts_until_healed(rec: FsRecorder, tmp_path: Path) -> None:
    fd = open_log(rec, tmp_path / "data.txt")
    rec.fail("fsync", err=errno.EIO, persistent=True)
    for _ in range(3):
        with pytest.raises(OSError) as info:
            rec.fsync(fd)
        assert info.value.errno == errno.EIO
    rec.heal()
    rec.fsync(fd)
    rec.close(fd)
    assert [op.kind for op in rec.ops] == ["create", "fsync"]
    assert rec.calls["fsync"] == 4


def test_a_short_write_writes_half(rec: FsRecorder, tmp_path: Path) -> None:
    fd = open_log(rec, tmp_path / "data.txt")
    rec.fail("write", short=True)
    assert rec.write(fd, b"abcdef") == 3
    rec.close(fd)
    assert (tmp_path / "data.txt").read_bytes() == b"abc"


def test_a_failed_fsync_can_lose_the_unsynced_pages(rec: FsRecorder, tmp_path: Path) -> None:
    fd = open_log(rec, tmp_path / "data.txt")
    append(rec, fd, b"k" * (PAGE + 10))
    rec.fsync(fd)
    append(rec, fd, b"u" * 3 * PAGE)
    rec.fail("fsync", lose_unsynced=True)
    with pytest.raises(OSError):
        rec.fsync(fd)
    rec.close(fd)
    data = (tmp_path / "data.txt").read_bytes()
    assert data == b"k" * (PAGE + 10) + bytes(3 * PAGE)


def test_only_the_named_file_fails(rec: FsRecorder, tmp_path: Path) -> None:
    rec.fail("write", name="data.txt", persistent=True)
    fd = rec.open(tmp_path / "other", os.O_WRONLY | os.O_CREAT, 0o600)
    rec.write(fd, b"fine")
    rec.close(fd)
    fd = open_log(rec, tmp_path / "data.txt")
    with pytest.raises(OSError):
        rec.write(fd, b"refused")
    rec.close(fd)


def test_installs_in_place_of_a_modules_os(rec: FsRecorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.SimpleNamespace(os=os)
    rec.install(monkeypatch, module)
    assert module.os is rec
    fd = module.os.open(tmp_path / "m", os.O_WRONLY | os.O_CREAT, 0o600)
    module.os.write(fd, b"via module")
    module.os.close(fd)
    assert rec.ops[-1].data == b"via module"


def test_faults_follow_a_renamed_file(rec: FsRecorder, tmp_path: Path) -> None:
    fd = rec.open(tmp_path / "data.txt.compact", os.O_WRONLY | os.O_CREAT, 0o600)
    rec.rename(tmp_path / "data.txt.compact", tmp_path / "data.txt")
    rec.fail("write", name="data.txt")
    with pytest.raises(OSError):
        rec.write(fd, b"now named data.txt")
    rec.close(fd)


def test_a_stale_page_may_hold_another_files_old_bytes(rec: FsRecorder, tmp_path: Path) -> None:
    """A block freed by one file and reused by another can show up, unsynced,
    with the old file's contents (valid records of an older data file)."""
    old = rec.open(tmp_path / "data.txt", os.O_WRONLY | os.O_CREAT, 0o600)
    rec.write(old, b"O" * PAGE)
    rec.fsync(old)
    rec.close(old)
    new = rec.open(tmp_path / "data.txt.compact", os.O_WRONLY | os.O_CREAT, 0o600)
    rec.write(new, b"N" * 100)
    rec.fsync(new)
    dir_sync(rec, tmp_path)
    rec.write(new, b"n" * PAGE)
    rec.close(new)
    trace = rec.trace()
    tails = {s.files["data.txt.compact"][PAGE:] for s in trace.crash_states(len(trace), random.Random(4), 300)}
    assert any(tail and set(tail) == {ord("O")} for tail in tails)
