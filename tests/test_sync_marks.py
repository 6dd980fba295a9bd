"""Sync marks wherever durability is known (issue 22, item 1).

After a clean stop, and after a compaction, the data file carries marks
that vouch for all of it. Damage anywhere in it is then corruption, never
taken for a crash's tail: a flipped bit, a zeroed block or a cut, at every
kind of place (the header, a record line, a data block, a checksum, a
group, a ``sets`` record, the snapshot section). Start-up refuses the file
and names the offset of the first damaged record; ``mcl repair`` keeps
every record the damage left intact, before and after it.

The files hold what text, meta (a base64 key of any bytes) and binary
protocol writes log.
"""

from __future__ import annotations

import binascii
import signal
import struct
from pathlib import Path
from typing import Callable, Optional
from unittest import mock

import pytest
from pymemcache.client.base import Client

from memcachedlite import CorruptLogError, Session, Store
from memcachedlite.protocols.binary import BinarySession
from memcachedlite.storage import durability, records
from memcachedlite.storage.batches import SETS_RECORD_MIN
from memcachedlite.storage.records import HEAD_MARK_AT, HEAD_MARK_SIZE, Record, parse_one, read_head
from memcachedlite.storage.repair import repair
from memcachedlite.storage.replay import snapshot_section

from .conftest import stop_as_killed
from .test_cli import run_mcl, run_serve

VALUE = b"v" * 1500  # records of a few per 4 KiB block, so that a zeroed block spares some
ODD_KEY = b"any \x00\r\n\xff key"  # a key only meta (base64) and binary writes can give


def binary_set(key: bytes, value: bytes) -> bytes:
    """A binary protocol SET request (flags 3, no expiry)."""
    extras = struct.pack(">II", 3, 0)
    body = extras + key + value
    return struct.pack(">BBHBBHIIQ", 0x80, 0x01, len(key), len(extras), 0, 0, len(body), 0, 0) + body


def first_writes(store: Store) -> None:
    """Text, meta (base64 key) and binary writes: what the snapshot will hold."""
    session = Session(store)
    assert session.feed(b"".join(b"set k%d 0 0 %d\r\n%s\r\n" % (i, len(VALUE), VALUE) for i in range(8))) == (
        b"STORED\r\n" * 8
    )
    assert session.feed(b"ms %s 5 b T0\r\nhello\r\n" % binascii.b2a_base64(ODD_KEY, newline=False)) == b"HD\r\n"
    assert BinarySession(store).feed(binary_set(b"bin\x01key", VALUE))[6:8] == b"\0\0"  # status: no error


def later_writes(store: Store) -> None:
    """A record of each kind after the snapshot: set lines and data blocks, a
    group (``md k I T``: a touch and an invalidate), a ``sets`` record (a
    pipelined run), a delete (a short line, its checksum), a base64 key."""
    session = Session(store)
    assert session.feed(b"set later 0 0 %d\r\n%s\r\n" % (len(VALUE), VALUE)) == b"STORED\r\n"
    assert session.feed(b"md k1 I T30\r\n") == b"HD\r\n"
    run = b"".join(b"set run%d 0 0 %d\r\n%s\r\n" % (i, len(VALUE), VALUE) for i in range(SETS_RECORD_MIN))
    assert session.feed(run) == b"STORED\r\n" * SETS_RECORD_MIN
    assert session.feed(b"delete k2\r\n") == b"DELETED\r\n"
    assert session.feed(b"ms %s 3 b\r\nnew\r\n" % binascii.b2a_base64(ODD_KEY, newline=False)) == b"HD\r\n"
    assert BinarySession(store).feed(binary_set(b"bin\x02key", b"x"))[6:8] == b"\0\0"
    assert session.feed(b"set last 0 0 %d\r\n%s\r\n" % (len(VALUE), VALUE)) == b"STORED\r\n"


def after_a_clean_stop(path: Path) -> None:
    """Writes, a compaction (the snapshot section), more writes, a clean stop."""
    store = Store(path, compact_min_size=1 << 40)
    first_writes(store)
    store.compact()
    later_writes(store)
    store.close()


def after_a_compaction(path: Path) -> None:
    """Writes, then a compaction during which more writes arrive (carried
    over into the new file), then the server is killed: no clean stop."""
    store = Store(path, compact_min_size=1 << 40)
    first_writes(store)

    def section_while_clients_write(snapshot: dict, next_cas: int, now: int) -> list[bytes]:
        later_writes(store)  # the lock is free while the snapshot is written
        return snapshot_section(snapshot, next_cas, now)

    with mock.patch.object(durability, "snapshot_section", section_while_clients_write):
        store.compact()
    stop_as_killed(store)


SCENARIOS: dict[str, Callable[[Path], None]] = {"clean-stop": after_a_clean_stop, "compaction": after_a_compaction}


class Unit:
    """A stretch of the file that is read as one: the header line, the head
    mark, or a record; a group's records are its ``leaves``."""

    def __init__(self, start: int, end: int, record: Optional[Record], leaves: list) -> None:
        self.start, self.end, self.record, self.leaves = start, end, record, leaves


def units(buf: bytes) -> list[Unit]:
    head = read_head(buf)
    assert head is not None and head.marked and head.line_end == HEAD_MARK_AT
    found = [Unit(0, HEAD_MARK_AT, None, []), Unit(HEAD_MARK_AT, head.start, None, [])]
    pos = head.start
    while pos < len(buf):
        record, end = parse_one(buf, pos)
        leaves = []
        if record[0] == b"group":  # each record inside is one a repair may keep alone
            at = buf.index(b"\r\n", pos) + 2
            while at < end:
                inner, after = parse_one(buf, at)
                leaves.append((at, after, inner))
                at = after
        elif record[0] != b"sync":
            leaves.append((pos, end, record))
        found.append(Unit(pos, end, record, leaves))
        pos = end
    return found


def places(buf: bytes) -> dict[str, int]:
    """A byte inside each kind of place of the file."""
    found: dict[str, int] = {"header": 5, "file id": 25, "head mark": HEAD_MARK_AT + 20}
    for unit in units(buf):
        record = unit.record
        if record is None:
            continue
        kind = record[0]
        line_end = buf.index(b"\r\n", unit.start)
        if kind == b"snapshot":
            found["snapshot section"] = line_end + 2 + (unit.end - line_end) // 2
        elif kind == b"sets":
            found["sets record"] = line_end + 2 + (unit.end - line_end) // 2
        elif kind == b"group":
            found["group"] = unit.leaves[1][0] + 3  # the line of its second record
        elif kind == b"set" and record[1] == b"later":
            found["record line"] = unit.start + 6
            found["data block"] = line_end + 2 + 700
        elif kind == b"delete":
            found["checksum"] = line_end - 3
    assert sorted(found) == sorted(PLACES), sorted(found)
    return found


def flipped(buf: bytes, at: int) -> tuple[bytes, int, int]:
    damaged = bytearray(buf)
    damaged[at] ^= 0x04
    return bytes(damaged), at, at + 1


def zeroed(buf: bytes, at: int) -> tuple[bytes, int, int]:
    start = at // 4096 * 4096
    end = min(start + 4096, len(buf))
    return buf[:start] + bytes(end - start) + buf[end:], start, end


def cut(buf: bytes, at: int) -> tuple[bytes, int, int]:
    return buf[:at], at, len(buf)


DAMAGES = {"flip": flipped, "zero": zeroed, "cut": cut}
PLACES = [
    "header",
    "file id",
    "head mark",
    "record line",
    "data block",
    "checksum",
    "group",
    "sets record",
    "snapshot section",
]


def leaves(records_: list) -> list:
    out = []
    for record in records_:
        out.extend(record[1] if record[0] == b"group" else [record])
    return [r for r in out if r[0] != b"sync"]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_damage_in_a_marked_file_refuses_to_start_and_repair_keeps_every_intact_record(
    tmp_path: Path, scenario: str, damage: str, place: str
) -> None:
    path = tmp_path / "data.txt"
    SCENARIOS[scenario](path)
    whole = path.read_bytes()
    found = units(whole)
    buf, low, high = DAMAGES[damage](whole, places(whole)[place])
    path.write_bytes(buf)

    # start-up refuses, naming where the first damaged stretch begins, and leaves the file alone
    expected = min(unit.start for unit in found if unit.start < high and unit.end > low)
    with pytest.raises(CorruptLogError) as refused:
        Store(path).close()
    assert refused.value.offset == expected, refused.value
    assert path.read_bytes() == buf

    # repair keeps every record the damage spared, before and after it
    report = repair(path)
    spared = [record for unit in found for start, end, record in unit.leaves if end <= low or start >= high]
    kept = leaves(list(records.parse_records(path.read_bytes(), read_head(path.read_bytes()).start)))
    assert kept == spared
    assert report.damaged and Path(report.backup).read_bytes() == buf
    if damage == "flip":  # the header line of a damaged bulk record still says how many items it held
        lost = [record for unit in found for start, end, record in unit.leaves if start < high and end > low]
        bulk = sum(len(record[4]) for record in lost if record[0] in (b"sets", b"snapshot"))
        assert report.lost_bulk_items == bulk
        assert (f"{bulk} items of bulk records there" in report.describe(str(path))[0]) == bool(bulk)
    # and warns when it kept records after the first damaged one (half a group, too)
    assert report.kept_across_damage == any(
        start > expected for unit in found for start, end, _ in unit.leaves if end <= low or start >= high
    )
    Store(path).close()  # and the repaired file starts


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_byte_of_a_marked_file_is_vouched_for(tmp_path: Path, scenario: str) -> None:
    """The head mark vouches for the whole file (after a clean stop, but for
    the last mark, written after the final fsync), and the last mark
    vouches for all before it, the head mark included."""
    path = tmp_path / "data.txt"
    SCENARIOS[scenario](path)
    buf = path.read_bytes()
    head = read_head(buf)
    last = buf.rindex(b"\r\nsync ") + 2
    assert buf[last:] == records.encode_sync(last, head.file_id)
    assert head.synced == (last if scenario == "clean-stop" else len(buf))  # a compaction syncs it whole
    assert records.highest_sync_mark(buf, head.file_id) == last > HEAD_MARK_AT + HEAD_MARK_SIZE


def test_a_restart_marks_what_it_read_and_a_clean_stop_marks_what_was_written(tmp_path: Path) -> None:
    """The head mark grows with each moment the whole file is known to be on
    disk; restarts with no writes only make it vouch for the last mark too."""
    path = tmp_path / "data.txt"
    store = Store(path)
    store.set(b"a", b"1")
    stop_as_killed(store)  # no clean stop: the record is a crash's tail...
    killed = path.read_bytes()
    assert read_head(killed).synced < len(killed)
    store = Store(path)  # ...until a start-up has read it and synced it
    assert read_head(path.read_bytes()).synced == len(killed)
    store.set(b"b", b"2")
    store.close()
    stopped = path.read_bytes()
    head = read_head(stopped)
    assert stopped.endswith(records.encode_sync(head.synced, head.file_id))  # all but this last mark
    assert head.synced + len(records.encode_sync(head.synced, head.file_id)) == len(stopped)
    Store(path).close()
    restarted = path.read_bytes()
    assert len(restarted) == len(stopped) and read_head(restarted).synced == len(stopped)
    Store(path).close()
    assert path.read_bytes() == restarted


def test_an_old_file_without_a_head_mark_gets_a_mark_at_its_end(tmp_path: Path) -> None:
    """A version 1 file (or a version 2 file written before head marks) is
    still read and appended to; a clean stop marks it at its end, so a
    flipped bit in it is corruption too."""
    path = tmp_path / "data.txt"
    path.write_bytes(records.HEADER + records.encode_set(b"a", b"1", 0, 0, 1))
    store = Store(path)
    store.set(b"b", b"2")
    store.close()
    buf = path.read_bytes()
    assert buf.startswith(records.HEADER) and not read_head(buf).marked
    assert records.ends_with_mark(buf, len(buf), records.LEGACY_ID)
    damaged = bytearray(buf)
    damaged[buf.index(b"set a") + 4] ^= 0x04
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptLogError, match=f"offset {len(records.HEADER)}"):
        Store(path)


def test_a_cut_exactly_between_records_is_refused(tmp_path: Path) -> None:
    """No record is torn, yet the file is shorter than the head mark says."""
    path = tmp_path / "data.txt"
    after_a_clean_stop(path)
    buf = path.read_bytes()
    boundary = [unit.start for unit in units(buf)][-3]
    path.write_bytes(buf[:boundary])
    with pytest.raises(CorruptLogError, match=f"offset {boundary}: the file ends here"):
        Store(path)
    report = repair(path)
    assert report.cut_short == read_head(buf).synced
    assert any("was cut short" in line for line in report.describe(str(path)))


def test_the_issue_scenario_a_flipped_bit_after_sigterm(spawn, tmp_path: Path) -> None:
    """Issue 22's report: 200 items of 1,000 bytes stored with pymemcache,
    SIGTERM (exit 0), one bit flipped in the middle of the file. The server
    used to start with 63 of them; now it refuses, naming the offset, and
    ``mcl repair`` keeps the 199 the flip spared."""
    proc = spawn()
    client = Client(("127.0.0.1", proc.port))
    try:
        for i in range(200):
            assert client.set(f"key{i}", b"%03d" % i + b"x" * 997, noreply=False)
    finally:
        client.close()
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0
    buf = bytearray(proc.data_file.read_bytes())
    record = [unit.start for unit in units(bytes(buf)) if unit.record is not None and unit.record[0] == b"set"][100]
    buf[record + 6] ^= 0x01  # in the middle of the file, inside the key of a set record
    proc.data_file.write_bytes(bytes(buf))

    refused = run_serve(tmp_path, "--port", "0", "--data-file", str(proc.data_file))
    assert refused.returncode not in (0, None)
    assert f"damaged record at byte offset {record}" in refused.stderr.decode()

    repaired = run_mcl(None, "repair", str(proc.data_file), cwd=tmp_path)
    assert repaired.returncode == 0, repaired.stderr
    assert b"kept 199 items" in repaired.stderr and b"WARNING" in repaired.stderr
    store = Store(proc.data_file)
    try:
        assert len(store) == 199
    finally:
        store.close()
