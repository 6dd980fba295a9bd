"""The data file: format, replay, torn tails, damage, write failures, locking."""

from __future__ import annotations

import errno
import os
import stat
import zlib
from pathlib import Path

import pytest

from memcachedlite import CorruptLogError, LogWriteError, Session, Store
from memcachedlite.storage import datafile
from memcachedlite.storage import records as fmt
from memcachedlite.storage.datafile import DataLog
from memcachedlite.storage.items import item_size, make_item
from memcachedlite.storage.records import parse_records, read_header

from .conftest import mark_synced, stop_as_killed


def records(data: bytes) -> list:
    """The records of a data file's contents, without its sync marks."""
    start, _ = read_header(data)
    return [r for r in parse_records(data, start) if r[0] != b"sync"]


def wait_writable(store: Store, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not store.writable:
        assert time.monotonic() < deadline, "the store never became writable again"
        time.sleep(0.01)


class Clock:
    def __init__(self, now: float = 1_800_000_000) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data.txt"


def reopen(path: Path, **options) -> Store:
    return Store(path, **options)


def test_new_file_has_header_and_private_mode(path):
    Store(path).close()
    data = path.read_bytes()
    head = fmt.read_head(data)
    assert data.startswith(b"MEMCACHEDLITE-LOG 2 %s\r\nsync " % head.file_id)
    assert len(head.file_id) == 16 and head.file_id != fmt.LEGACY_ID
    # the head mark vouches for all of it, and a mark at the end for the head mark
    assert head.marked and head.synced == len(data) and records(data) == []
    assert data.endswith(fmt.encode_sync(fmt.HEAD_MARK_AT + fmt.HEAD_MARK_SIZE, head.file_id))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_records_are_readable_and_checksummed(path):
    s = Store(path)
    s.set(b"k", b"v\r\n\0", 5, 0)
    s.delete(b"k")
    s.close()
    data = path.read_bytes()
    assert b"\r\nset k 5 0 4 1 " in data
    assert records(data) == [
        (b"set", b"k", b"v\r\n\0", 5, 0, 1),
        (b"delete", b"k"),
    ]


def test_every_mutation_survives_a_restart(path):
    clock = Clock()
    s = Store(path, clock=clock)
    s.set(b"plain", b"x")
    s.set(b"binary", b"a\r\nb\0c\r\n", flags=2**32 - 1)
    s.set(b"ttl", b"t", exptime=100)
    s.set(b"abs", b"t", exptime=int(clock.now) + 5000)
    s.add(b"added", b"1")
    s.set(b"r", b"old")
    s.replace(b"r", b"new", flags=3)
    s.set(b"cat", b"b")
    s.append(b"cat", b"c")
    s.prepend(b"cat", b"a")
    s.set(b"n", b"10")
    s.incr(b"n", 5)
    s.decr(b"n", 1)
    s.set(b"gone", b"x")
    s.delete(b"gone")
    s.set(b"touched", b"x")
    s.touch(b"touched", 50)
    s.set(b"c", b"1")
    cas = s.peek(b"c").cas
    assert s.cas(b"c", b"2", 0, 0, cas)
    before = {k: s.peek(k) for k in s.keys()}
    last_cas = max(item.cas for item in before.values())
    s.close()

    s2 = Store(path, clock=clock)
    try:
        after = {k: s2.peek(k) for k in s2.keys()}
        # a touch fetches the item, as memcached's does; whether an item was
        # fetched is not logged, so a restart forgets it (and nothing else)
        assert before[b"touched"].fetched and not after[b"touched"].fetched
        before[b"touched"] = before[b"touched"]._replace(state=0)
        assert after == before
        assert after[b"n"].value == b"14"
        assert after[b"cat"].value == b"abc"
        assert after[b"ttl"].exptime == int(clock.now) + 100
        assert after[b"touched"].exptime == int(clock.now) + 50
        assert s2.set(b"new", b"x") > last_cas
    finally:
        s2.close()


def test_expiry_is_absolute_across_restart(path):
    clock = Clock()
    s = Store(path, clock=clock)
    s.set(b"short", b"x", exptime=10)
    s.set(b"long", b"x", exptime=1000)
    s.close()
    clock.now += 11
    s2 = Store(path, clock=clock)
    try:
        assert s2.peek(b"short") is None
        assert s2.peek(b"long") is not None
    finally:
        s2.close()


def test_cas_values_never_repeat_after_deleting_the_newest(path):
    s = Store(path)
    s.set(b"a", b"1")
    top = s.set(b"b", b"2")
    s.delete(b"b")
    s.close()
    s2 = Store(path)
    try:
        assert s2.set(b"c", b"3") > top
    finally:
        s2.close()


def test_flush_all_is_replayed(path):
    clock = Clock()
    s = Store(path, clock=clock)
    s.set(b"a", b"1")
    s.flush_all()
    s.set(b"b", b"2")
    s.close()
    s2 = Store(path, clock=clock)
    try:
        assert s2.keys() == [b"b"]
    finally:
        s2.close()


def test_delayed_flush_all_is_replayed(path):
    clock = Clock()
    s = Store(path, clock=clock)
    s.set(b"before", b"1")
    s.flush_all(10)
    clock.now += 5
    s.set(b"during", b"2")
    s.close()
    s2 = Store(path, clock=clock)
    assert sorted(s2.keys()) == [b"before", b"during"]
    s2.close()
    clock.now += 6  # past the flush moment
    s3 = Store(path, clock=clock)
    try:
        assert s3.keys() == []
        s3.set(b"after", b"3")
        assert s3.keys() == [b"after"]
    finally:
        s3.close()


def test_evicted_items_do_not_come_back(path):
    s = Store(path, memory_limit=2000)
    for i in range(30):
        s.set(b"k%d" % i, b"x" * 100)
    live = set(s.keys())
    assert s.stats()["evictions"] > 0 and len(live) < 30
    s.close()
    s2 = Store(path, memory_limit=2000)
    try:
        assert set(s2.keys()) == live
    finally:
        s2.close()


def _log_with_two_records(path: Path) -> int:
    s = Store(path)
    s.set(b"first", b"one")
    size_before_last = path.stat().st_size
    s.set(b"second", b"two\r\n2")
    stop_as_killed(s)  # the second record is not vouched for: what a crash may tear
    return size_before_last


def test_torn_last_record_cut_at_every_offset(path, caplog):
    start = _log_with_two_records(path)
    whole = path.read_bytes()
    assert whole.endswith(b"two\r\n2\r\n")
    for cut in range(start, len(whole)):
        path.write_bytes(whole[:cut])
        caplog.clear()
        s = Store(path)
        try:
            assert s.peek(b"first").value == b"one"
            assert s.peek(b"second") is None
        finally:
            s.close()
        if cut > start:
            assert f"dropped {cut - start} bytes from offset {start}" in caplog.text
        # cut back, and marked as synced by the start-up that cut it
        mark = fmt.encode_sync(start, read_header(whole)[1])
        assert path.stat().st_size == start + len(mark) and path.read_bytes().endswith(mark)


def test_a_file_cut_inside_its_header_is_refused(path):
    """A new file takes its name once its header is on disk, so a header cut
    short is never a crash's doing."""
    path.write_bytes(b"MEMCACHEDLITE-LOG 2 0123")
    with pytest.raises(CorruptLogError, match="offset 0: not a memcachedlite data file"):
        Store(path)


def test_an_empty_file_is_a_new_one(path):
    """What a crash while a file was created leaves: the next start creates it."""
    path.write_bytes(b"")
    s = Store(path)
    s.set(b"a", b"1")
    s.close()
    data = path.read_bytes()
    assert fmt.read_head(data).marked
    assert records(data) == [(b"set", b"a", b"1", 0, 0, 1)]


def test_zero_filled_tail_is_treated_as_torn(path):
    _log_with_two_records(path)
    with open(path, "ab") as f:
        f.write(b"\0" * 100)
    s = Store(path)
    try:
        assert s.peek(b"second").value == b"two\r\n2"
    finally:
        s.close()


def test_damage_in_the_middle_refuses_to_start(path):
    start = _log_with_two_records(path)
    s = Store(path)  # a restart syncs what it read: its first record carries a sync mark
    s.set(b"third", b"3")
    s.close()
    data = bytearray(path.read_bytes())
    assert b"\r\nsync " in data
    data[start - 4] ^= 0x01  # inside the first record's data block
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError) as err:
        Store(path)
    start = data.index(b"set first ")
    assert err.value.offset == start
    assert f"offset {start}" in str(err.value)
    # refusing to start does not modify the file
    assert path.read_bytes() == bytes(data)


def test_foreign_file_refuses_to_start(path):
    """Refused as another format, not as damage (see tests/test_startup_logs.py)."""
    path.write_bytes(b"key value\nother thing\n")
    with pytest.raises(CorruptLogError, match="not a memcachedlite data file; it looks like '<key> <value>' lines"):
        Store(path)


@pytest.mark.parametrize(
    "record",
    [
        fmt.seal(b"bogus 1"),
        b"delete k zzzzzzzz\r\n",
        fmt.seal(b"touch k"),
        b"set k 0 0 1 1 00000000\r\nx\r\n",
    ],
    ids=["unknown-verb", "bad-crc-digits", "wrong-field-count", "bad-checksum"],
)
def test_each_kind_of_middle_damage_is_detected(path, record):
    s = Store(path)
    s.set(b"a", b"1")
    s.close()
    file_id = read_header(path.read_bytes())[1]
    with open(path, "ab") as f:
        f.write(record)
        f.write(fmt.encode_set(b"b", b"2", 0, 0, 9))
    # a later fsync vouches for all of it: the damage is in synced data
    end = path.stat().st_size
    with open(path, "ab") as f:
        f.write(fmt.encode_sync(end, file_id))
    with pytest.raises(CorruptLogError, match="reached the disk"):
        Store(path)


def sealed_set(head: bytes, value: bytes) -> bytes:
    """A set record as the file would hold it, checksum and all, with the
    numbers spelled as ``head`` spells them."""
    return b"%s %08x\r\n%s\r\n" % (head, zlib.crc32(value, zlib.crc32(head)), value)


@pytest.mark.parametrize(
    "head, value",
    [
        (b"set k -1 0 1 5", b"x"),  # flags the item layout cannot hold
        (b"set k 4294967296 0 1 5", b"x"),
        (b"set k 0 9223372036854775808 1 5", b"x"),
        (b"set k 0 0 1 -5", b"x"),  # a negative cas
        (b"set k 0 0 1 18446744073709551616", b"x"),
        (b"set k 0 0 -2 5", b""),  # a negative length whose "data block" is the line's own CRLF
    ],
    ids=["negative-flags", "flags-2**32", "exptime-2**63", "negative-cas", "cas-2**64", "negative-length"],
)
def test_a_checksummed_record_with_numbers_out_of_range_is_damage(path, head, value):
    """Found by fuzzing (fuzz/datafile.py): a record whose checksum holds but
    whose numbers the item layout cannot hold raised struct.error out of
    start-up, or loaded an item that no reply could show. It is damage like
    any other: the file is cut before it (or refused, in synced data)."""
    s = Store(path)
    s.set(b"a", b"1")
    s.close()
    with open(path, "ab") as f:
        f.write(sealed_set(head, value) if value else b"%s %08x\r\n" % (head, zlib.crc32(head)))
    s = Store(path)
    try:
        assert s.keys() == [b"a"]
    finally:
        s.close()
    with open(path, "ab") as f:
        f.write(fmt.encode_group([sealed_set(head.replace(b"set k", b"set g"), value or b"x")]))
    mark_synced(path)
    with pytest.raises(CorruptLogError, match="malformed record"):
        Store(path)


def test_a_set_record_whose_line_holds_a_bare_lf_is_damage(path):
    """Found by fuzzing (fuzz/datafile.py): start-up's fast path read a set
    record's line up to its CRLF, so a line holding a bare LF (``set a<LF>b
    ...``, checksum intact) loaded, while every other reader of the file
    (repair, the record parser) stops there: start-up must stop there too."""
    s = Store(path)
    s.set(b"a", b"1")
    s.close()
    with open(path, "ab") as f:
        f.write(sealed_set(b"set a\nb 0 0 1 5", b"x") + fmt.encode_set(b"c", b"3", 0, 0, 6))
    s = Store(path)
    try:
        assert s.keys() == [b"a"]
    finally:
        s.close()


def test_a_set_record_whose_checksum_is_not_8_digits_is_judged_on_its_whole_line(path):
    """Found by fuzzing (fuzz/datafile.py): start-up's fast path checked a
    set record's checksum over its line less the last 9 bytes, whatever the
    checksum field's length; a field of 7 digits that matched one byte less
    of the line (here the ``0`` of cas ``40``) passed, though the record
    parser, repair and salvage find the checksum wrong."""
    s = Store(path)
    s.set(b"a", b"1")
    s.close()
    value = next(v for v in map(bytes, zip(range(256))) if zlib.crc32(v, zlib.crc32(b"set k 0 0 1 4")) < 1 << 28)
    forged = b"set k 0 0 1 40 %07x\r\n%s\r\n" % (zlib.crc32(value, zlib.crc32(b"set k 0 0 1 4")), value)
    with open(path, "ab") as f:
        f.write(forged + fmt.encode_set(b"c", b"3", 0, 0, 41))
    s = Store(path)
    try:
        assert s.keys() == [b"a"]
    finally:
        s.close()


def test_numbers_spelled_with_leading_zeros_load_as_the_server_writes_them(path):
    """Found by fuzzing (fuzz/datafile.py): start-up copied a set record's
    flags and length into the item as the file spelled them, so ``get``
    answered ``VALUE k 007 01`` and the item's size was counted wrong."""
    s = Store(path)
    s.close()
    with open(path, "ab") as f:
        f.write(sealed_set(b"set k 007 0 01 5", b"x"))
    s = Store(path)
    try:
        assert Session(s).feed(b"get k\r\n") == b"VALUE k 7 1\r\nx\r\nEND\r\n"
        assert s.stats()["bytes_in_memory"] == item_size(b"k", make_item(b"x", 7, 0, 5))
    finally:
        s.close()


def test_the_same_damage_past_the_last_sync_is_a_crash_tail(path, caplog):
    s = Store(path)
    s.set(b"a", b"1")
    s.close()
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(fmt.seal(b"bogus 1"))
        f.write(fmt.encode_set(b"b", b"2", 0, 0, 9))
    s = Store(path)
    try:
        assert s.peek(b"a").value == b"1" and s.peek(b"b") is None  # a prefix, never what lies past a hole
    finally:
        s.close()
    assert "1 intact records after it were never confirmed durable" in caplog.text
    assert path.stat().st_size == size


def test_second_server_on_the_same_file_is_refused(path):
    s = Store(path)
    try:
        with pytest.raises(RuntimeError, match="in use by another running server"):
            Store(path)
    finally:
        s.close()


def test_failed_write_changes_nothing(path, monkeypatch):
    s = Store(path)
    s.set(b"a", b"old")
    size = path.stat().st_size

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datafile.os, "write", full)
    with pytest.raises(LogWriteError, match="out of disk space"):
        s.set(b"a", b"new")
    with pytest.raises(LogWriteError):
        s.delete(b"a")
    assert s.peek(b"a").value == b"old"  # reads keep working, memory unchanged
    monkeypatch.undo()
    assert path.stat().st_size == size
    s.set(b"a", b"newer")  # writes work again once space returns
    s.close()
    s2 = Store(path)
    assert s2.peek(b"a").value == b"newer"
    s2.close()


def test_partial_write_is_cut_back(path, monkeypatch):
    s = Store(path)
    size = path.stat().st_size
    real_write = os.write
    calls = []

    def half_then_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(datafile.os, "write", half_then_full)
    with pytest.raises(LogWriteError, match="I/O error"):
        s.set(b"k", b"v" * 100)
    monkeypatch.undo()
    assert path.stat().st_size == size
    assert s.peek(b"k") is None
    wait_writable(s)  # an I/O error leaves the file in doubt: rewritten from memory first
    assert s.stats()["data_file_errors"] == 1
    s.set(b"k", b"ok")
    s.close()
    s2 = Store(path)
    assert s2.peek(b"k").value == b"ok"
    s2.close()


def test_fsync_always_syncs_before_returning(path, monkeypatch):
    syncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(datafile.os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd)))
    log = DataLog(path, fsync="always")
    syncs.clear()  # creating the file made it durable
    log.append(b"x")
    log.sync()
    log.sync()  # nothing new: no second fsync
    assert len(syncs) == 1 and log.synced == log.size
    log.close()


def test_unknown_fsync_policy_is_refused(path):
    with pytest.raises(ValueError):
        DataLog(path, fsync="sometimes")


def test_a_pipelined_batch_is_one_write(path, monkeypatch):
    from memcachedlite import Session

    s = Store(path)
    writes = []
    real_write = os.write
    monkeypatch.setattr(datafile.os, "write", lambda fd, data: (writes.append(len(data)), real_write(fd, data))[1])
    session = Session(s)
    batch = b"".join(b"set k%d 0 0 1\r\n%d\r\n" % (i, i % 10) for i in range(100)) + b"delete k0\r\nincr k1 5\r\n"
    assert session.feed(batch) == b"STORED\r\n" * 100 + b"DELETED\r\n6\r\n"
    assert len(writes) == 1
    monkeypatch.undo()
    s.close()
    s2 = Store(path)
    try:
        assert len(s2.keys()) == 99 and s2.peek(b"k1").value == b"6"
    finally:
        s2.close()


def test_a_batch_that_cannot_be_written_is_undone_and_not_acknowledged(path, monkeypatch):
    from memcachedlite import Session

    s = Store(path, memory_limit=3000)
    s.set(b"keep", b"old")
    s.set(b"gone", b"x")
    for i in range(3):
        s.set(b"e%d" % i, b"y" * 400)
    before = {k: s.peek(k) for k in s.keys()}
    size, used = path.stat().st_size, s.bytes

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datafile.os, "write", full)
    session = Session(s)
    batch = (
        b"set keep 0 0 3\r\nnew\r\ndelete gone\r\nset big 0 0 900\r\n" + b"z" * 900 + b"\r\n"
        b"touch e0 100\r\nget keep\r\nflush_all\r\nset after 0 0 1\r\n1\r\nset noisy 0 0 1 noreply\r\n1\r\n"
    )
    replies = session.feed(batch)
    error = b"SERVER_ERROR cannot write data file: out of disk space\r\n"
    assert replies == error * 7  # one per reply the batch would have sent
    monkeypatch.undo()
    assert {k: s.peek(k) for k in s.keys()} == before
    assert s.bytes == used and path.stat().st_size == size
    assert session.feed(b"set keep 0 0 3\r\nnew\r\n") == b"STORED\r\n"  # space is back
    s.close()


def test_group_commit_one_fsync_covers_concurrent_writers(start_server, monkeypatch):
    """With --fsync always, writers that arrive while an fsync runs share the next one."""
    import threading

    from tests.conftest import Raw

    syncs = []
    real_fsync = os.fsync

    def counted_fsync(fd):
        syncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(datafile.os, "fsync", counted_fsync)
    server = start_server(fsync="always")
    store = server.store
    writers, each = 20, 30

    def write(n):
        c = Raw(server.port)
        try:
            for i in range(each):
                assert c.ask(b"set w%d-%d 0 0 1\r\nx\r\n" % (n, i)) == b"STORED\r\n"
        finally:
            c.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(store) == writers * each  # every acknowledged write...
    assert store.log.synced == store.log.size  # ...is on disk
    assert 0 < len(syncs) < writers * each  # and fsyncs were shared


@pytest.mark.parametrize("after", ["creation", "compaction"])
def test_a_write_cut_back_leaves_no_hole_on_a_file_written_without_o_append(path, monkeypatch, after):
    """A new file and a compacted one are written through the descriptor of
    the file renamed into place, opened without O_APPEND: cutting back a
    partial write must move its position back too, or the next record
    would land after a hole of zeros."""
    store = Store(path)
    try:
        store.set(b"a", b"1")
        if after == "compaction":
            store.compact()
        real_write = datafile.os.write
        calls = []

        def half_then_full_disk(fd: int, data) -> int:
            if fd != store.log._fd:
                return real_write(fd, data)
            calls.append(len(data))
            if len(calls) == 1:
                return real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(datafile.os, "write", half_then_full_disk)
            with pytest.raises(LogWriteError, match="out of disk space"):
                store.set(b"b", b"x" * 100)
        store.set(b"c", b"3")
    finally:
        store.close()
    assert records(path.read_bytes())[-1][:3] == (b"set", b"c", b"3")  # every record reads: no hole


@pytest.mark.parametrize("fails", ["rename", "dirsync"])
def test_a_new_file_that_cannot_be_put_in_place_leaves_the_empty_one(path, monkeypatch, fails):
    """Creating a file writes it aside and renames it into place: if that
    fails, start-up fails with the error, the empty file stays (the next
    start creates it again) and nothing is left open or beside it."""
    from tests.crashsim import FsRecorder, modules_with_os

    path.write_bytes(b"")
    with monkeypatch.context() as patch:
        recorder = FsRecorder(path.parent).install(patch, *modules_with_os())
        recorder.fail(fails)
        with pytest.raises(OSError, match="injected"):
            Store(path)
    if fails == "rename":
        assert path.read_bytes() == b"" and sorted(p.name for p in path.parent.iterdir()) == ["data.txt"]
    store = Store(path)  # the lock was released: the next start works
    try:
        store.set(b"a", b"1")
    finally:
        store.close()
    assert records(path.read_bytes()) == [(b"set", b"a", b"1", 0, 0, 1)]


@pytest.mark.parametrize(
    "header",
    [b"MEMCACHEDLITE-LOG 2 0123456789abcdeg\r\n", b"MEMCACHEDLITE-LOG 2 0123456789abcdef\n\n"],
    ids=["file-id-not-hex", "no-crlf"],
)
def test_a_header_line_that_does_not_read_is_refused(path, header):
    path.write_bytes(header + fmt.encode_set(b"a", b"1", 0, 0, 1))
    with pytest.raises(CorruptLogError, match="offset 0: not a memcachedlite data file"):
        Store(path)


@pytest.mark.parametrize("when", ["start-up", "clean stop"])
def test_a_full_disk_does_not_stop_a_start_or_a_stop_from_marking(path, monkeypatch, caplog, when):
    """Start-up and a clean stop append a sync mark: on a full disk they say
    they could not, and go on (a start serves reads; writes fail as always
    on a full disk, and work again once there is room)."""
    path.write_bytes(fmt.HEADER + fmt.encode_set(b"a", b"1", 0, 0, 1))  # no mark yet: one is due
    real_write = datafile.os.write

    def full(fd: int, data) -> int:
        if os.path.samefile(f"/proc/self/fd/{fd}", path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    with monkeypatch.context() as patch:
        if when == "start-up":
            patch.setattr(datafile.os, "write", full)
        store = Store(path)
        try:
            assert store.get(b"a").value == b"1"
            if when == "clean stop":
                store.set(b"b", b"2")  # to be marked by the stop
                patch.setattr(datafile.os, "write", full)
            with pytest.raises(LogWriteError, match="out of disk space"):
                store.set(b"c", b"3")
        finally:
            store.close()
    assert "could not mark the file as synced" in caplog.text
    kept = [(b"set", b"a", b"1", 0, 0, 1)] + ([(b"set", b"b", b"2", 0, 0, 2)] if when == "clean stop" else [])
    assert records(path.read_bytes()) == kept
    store = Store(path)  # room again
    try:
        store.set(b"c", b"3")
    finally:
        store.close()
