"""Start-up and repair after a crash: sync marks tell the unsynced tail a
power cut may leave (cut, zeroed, holes before intact records) from damage
in data that had reached the disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from memcachedlite import CorruptLogError, Store
from memcachedlite.cli import main
from memcachedlite.storage import records, repair
from memcachedlite.storage.records import read_header

from .conftest import stop_as_killed


def synced_then_unsynced(path: Path) -> tuple[int, int]:
    """A file whose first part is vouched for by sync marks (a restart
    synced it and marked it so; an fsync covered one more record), followed
    by three records no fsync covered (the server was killed). Returns where
    the unsynced part starts and where its second record starts."""
    s = Store(path)
    s.set(b"old", b"1")
    s.close()
    s = Store(path)  # what the restart read is synced, and marked so
    s.set(b"a", b"2")
    s.sync()  # the next record carries the mark for it
    unsynced = path.stat().st_size
    s.set(b"b", b"3")
    second = path.stat().st_size
    s.set(b"c", b"4")
    s.delete(b"old")
    stop_as_killed(s)
    return unsynced, second


def keys(path: Path) -> dict:
    s = Store(path)
    try:
        return {k: s.peek(k).value for k in sorted(s.keys())}
    finally:
        s.close()


@pytest.mark.parametrize("hole", [b"\0", b"\xa5"], ids=["zeroed", "garbage"])
def test_a_hole_before_intact_records_keeps_the_prefix_and_starts(tmp_path: Path, caplog, hole: bytes) -> None:
    path = tmp_path / "data.txt"
    unsynced, second = synced_then_unsynced(path)
    data = bytearray(path.read_bytes())
    data[unsynced : second - 2] = hole * (second - 2 - unsynced)  # the page holding "b" never reached the disk
    path.write_bytes(bytes(data))
    # "c" and the delete of "old" are intact after the hole, but a state with
    # them and without "b" never existed: they are dropped too
    assert keys(path) == {b"a": b"2", b"old": b"1"}
    assert f"from offset {unsynced}" in caplog.text
    assert "2 intact records after it were never confirmed durable" in caplog.text
    mark = records.encode_sync(unsynced, read_header(bytes(data))[1])  # the start-up that cut it marked it synced
    assert path.stat().st_size == unsynced + len(mark) and path.read_bytes().endswith(mark)


def test_a_flipped_bit_in_synced_data_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    unsynced, _ = synced_then_unsynced(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"set old ")
    data[start + 4] ^= 0x01  # inside "set old", which the marks vouch for
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match=f"offset {start}.*reached the disk"):
        Store(path)
    assert path.read_bytes() == bytes(data)  # refused without touching it


def test_a_zeroed_block_in_the_middle_of_old_data_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    s = Store(path)
    for i in range(200):
        s.set(b"k%d" % i, b"v" * 50)
    s.close()  # a clean stop marks all of it as synced
    data = bytearray(path.read_bytes())
    data[4096:8192] = bytes(4096)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError):
        Store(path)


def test_a_mark_of_another_file_is_not_trusted(tmp_path: Path) -> None:
    """A stale page from an older file may hold a genuine-looking mark:
    its file id differs, so the damage before it is still a crash's."""
    path = tmp_path / "data.txt"
    s = Store(path)
    s.set(b"a", b"1")
    s.close()
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\0" * 100)
        f.write(records.encode_sync(size + 50, b"0123456789abcdef"))
    assert keys(path) == {b"a": b"1"}


def test_a_mark_naming_a_place_after_itself_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    s = Store(path)
    s.set(b"a", b"1")
    s.close()
    file_id = read_header(path.read_bytes())[1]
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\0" * 10)
        f.write(records.encode_sync(size + 10_000, file_id))
    assert keys(path) == {b"a": b"1"}


def test_a_version_1_file_with_a_crash_tail_starts(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_bytes(
        records.HEADER + records.encode_set(b"a", b"1", 0, 0, 1) + b"\0" * 64 + records.encode_set(b"b", b"2", 0, 0, 2)
    )
    assert keys(path) == {b"a": b"1"}
    assert path.read_bytes().startswith(records.HEADER)  # still version 1, appended to as before


def test_repair_of_a_crash_keeps_a_prefix(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    unsynced, second = synced_then_unsynced(path)
    data = bytearray(path.read_bytes())
    data[unsynced:second] = bytes(second - unsynced)
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["repair", str(path)])
    assert result.exit_code == 0, result.output
    assert f"cut at offset {unsynced}" in result.output and "WARNING" not in result.output
    assert keys(path) == {b"a": b"2", b"old": b"1"}


def test_repair_of_corruption_says_it_kept_records_across_it(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    synced_then_unsynced(path)
    s = Store(path)
    s.set(b"d", b"5")  # a mark now vouches for all of the above
    s.close()
    data = bytearray(path.read_bytes())
    at = data.index(b"set b ")
    data[at + 4] ^= 0x20
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["repair", str(path)])
    assert result.exit_code == 0, result.output
    assert "WARNING: damage lay in data that had reached the disk" in result.output
    assert keys(path) == {b"a": b"2", b"c": b"4", b"d": b"5"}


def test_salvage_reports_the_synced_offset(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    unsynced, _ = synced_then_unsynced(path)
    records, report = repair.salvage(path.read_bytes())
    assert report.synced == unsynced  # the mark the fsync left, with the first unsynced record
    assert not report.damaged_offsets and all(r[0] != b"sync" for r in records)
