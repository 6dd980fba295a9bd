"""The ``sets`` record: the items a run of pipelined sets stored, logged in
the snapshot section's form under one checksum. It must replay to exactly
what the sets stored, whole or not at all, and damage in it must be told
apart like any other record's."""

from __future__ import annotations

import errno
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from memcachedlite import CorruptLogError, Session, Store
from memcachedlite.cli import main
from memcachedlite.storage import batches, datafile, records
from memcachedlite.storage.items import ITEM_FORMAT, SHORTEST_ITEM, make_item
from memcachedlite.storage.records import (
    BadRecord,
    encode_sets,
    make_header,
    new_file_id,
    parse_records,
    read_header,
    read_snapshot,
)
from memcachedlite.storage.repair import repair

from .conftest import mark_synced, stop_as_killed

RUN = (
    b"set k1 0 0 5\r\nhello\r\n"
    b"set k2 7 0 8 noreply\r\nwith\r\nlf\r\n"  # data holding CRLF, and a quiet command
    b"set k3 4294967295 0 0\r\n\r\n"
    b"set k1 00012 0 3\r\nnew\r\n"  # flags as memcached reads them, and a key stored twice
)


@pytest.fixture(autouse=True)
def short_runs_too(monkeypatch) -> None:
    """Log even these short runs as sets records (the server does from
    SETS_RECORD_MIN sets on, where the bulk form starts to cost less)."""
    monkeypatch.setattr(batches, "SETS_RECORD_MIN", 2)


def record_starts(data: bytes) -> list[int]:
    starts, pos = [], read_header(data)[0]
    while pos < len(data):
        starts.append(pos)
        pos = records.parse_one(data, pos)[1]
    return starts


def kinds(path: Path) -> list[bytes]:
    """The kinds of the records of the file at ``path``, its sync marks left out."""
    data = path.read_bytes()
    found = [bytes(data[start : data.index(b" ", start)]) for start in record_starts(data)]
    return [kind for kind in found if kind != b"sync"]


def state(store: Store) -> dict:
    return {k: store.peek(k)[:4] for k in store.keys()}  # in LRU order


def fill(path: Path, stream: bytes = RUN, killed: bool = False, **options) -> tuple[bytes, dict]:
    """Feed ``stream`` to a store on ``path``; stop it cleanly, or as kill -9 would."""
    store = Store(path, **options)
    try:
        replies = Session(store).feed(stream)
        return replies, state(store)
    finally:
        stop_as_killed(store) if killed else store.close()


def test_a_run_of_sets_is_one_record_and_replays_to_what_was_stored(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    fill(path, b"set k2 0 0 3\r\nold\r\nset other 0 0 1\r\no\r\n")
    replies, before = fill(path)
    assert replies == b"STORED\r\n" * 3  # the noreply one stays quiet
    assert kinds(path) == [b"sets", b"sets"]
    store = Store(path)
    try:
        assert state(store) == before  # values, flags, cas values and the LRU order
        assert list(before) == [b"other", b"k2", b"k3", b"k1"]
        assert before[b"k1"] == (b"new", 12, 0, 6) and before[b"k2"] == (b"with\r\nlf", 7, 0, 4)
        assert Session(store).feed(b"set after 0 0 1\r\nx\r\ngets after\r\n").endswith(b" 7\r\nx\r\nEND\r\n")
    finally:
        store.close()


@pytest.mark.parametrize(
    "odd",
    [b"set e 0 100 1\r\ne\r\n", b"set e 0 -1 1\r\ne\r\n", b"set e 4294967296 0 1\r\ne\r\n"],
    ids=["expiring", "expired", "bad-flags"],
)
def test_a_run_with_any_other_set_is_logged_record_by_record(tmp_path: Path, odd: bytes) -> None:
    path = tmp_path / "data.txt"
    replies, before = fill(path, b"set a 0 0 1\r\n1\r\n" + odd + b"set b 0 0 1\r\n2\r\n")
    refused = b"4294967296 0 " in odd  # stores nothing: the two others are still one run
    assert (b"sets" in kinds(path)) is refused
    assert replies.count(b"STORED\r\n") == 3 - refused
    store = Store(path)
    try:
        assert state(store) == before
    finally:
        store.close()


def test_a_short_run_is_logged_a_record_per_set(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(batches, "SETS_RECORD_MIN", 16)
    path = tmp_path / "data.txt"
    fill(path, b"".join(b"set s%d 0 0 1\r\n%d\r\n" % (i, i % 10) for i in range(15)))
    fill(path, b"".join(b"set l%d 0 0 1\r\n%d\r\n" % (i, i % 10) for i in range(16)))
    assert kinds(path) == [b"set"] * 15 + [b"sets"]


def test_a_run_that_meets_the_memory_limit_is_logged_record_by_record(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    stream = b"".join(b"set key%d 0 0 100\r\n%s\r\n" % (i, b"v" * 100) for i in range(12))
    replies, before = fill(path, stream, memory_limit=1200)
    assert replies == b"STORED\r\n" * 12
    assert len(before) < 12  # some were evicted
    assert b"sets" not in kinds(path)
    again = Store(path, memory_limit=1200)
    try:
        assert state(again) == before
    finally:
        again.close()


def test_a_torn_run_replays_none_of_its_sets(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    fill(path, b"set before 0 0 1\r\nb\r\n")
    fill(path, killed=True)
    whole = path.read_bytes()
    start = record_starts(whole)[-1]
    assert whole[start:].startswith(b"sets ")
    for cut in range(start + 1, len(whole), 5):
        path.write_bytes(whole[:cut])
        store = Store(path)  # the run was never covered by an fsync: a crash's tail
        try:
            assert list(store.keys()) == [b"before"], cut
        finally:
            store.close()


def test_a_damaged_run_in_synced_data_refuses_to_start_and_repair_salvages(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    fill(path)
    fill(path, b"set later 0 0 1\r\nl\r\n")
    mark_synced(path)
    data = bytearray(path.read_bytes())
    data[data.index(b"hello")] ^= 0x20
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError):
        Store(path)
    result = CliRunner().invoke(main, ["repair", str(path)])
    assert result.exit_code == 0, result.output
    store = Store(path)
    try:
        assert list(store.keys()) == [b"later"]  # the whole run went with its checksum
    finally:
        store.close()


def test_sets_records_read_back_and_reencode() -> None:
    items = [make_item(b"v%d" % i, i, 0, 10 + i, 1_800_000_000) for i in range(3)]
    buf = b"".join(encode_sets([b"a", b"b", b"c"], items, ITEM_FORMAT, 13))
    (record,) = list(parse_records(buf, 0))
    assert record == (b"sets", ITEM_FORMAT, 13, 0, list(zip([b"a", b"b", b"c"], items, strict=True)))
    assert records.encode(record) == buf


def test_a_sets_record_of_an_unknown_item_format_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    fill(path, b"set a 0 0 1\r\n1\r\n")
    with open(path, "ab") as f:
        f.write(b"".join(encode_sets([b"b"], [b"whatever"], ITEM_FORMAT + 1, 5)))
    mark_synced(path)
    with pytest.raises(CorruptLogError, match="unknown item format"):
        Store(path)


@pytest.mark.parametrize(
    "item",
    [b"not an item", make_item(b"2", 0, 0, 5)[:-1], make_item(b"", 0, 0, 5)[: SHORTEST_ITEM - 2] + b"\n", b""],
    ids=["short", "no-line-end", "one-short", "empty"],
)
def test_a_sets_record_holding_an_item_not_in_the_item_layout_is_damage(tmp_path: Path, item: bytes) -> None:
    """Found by fuzzing (fuzz/datafile.py): a ``sets`` record whose checksum
    holds but whose item is not framed as an item loaded, and every read of
    the item then failed (``SERVER_ERROR internal error``). Only a crafted
    file, or a writer's bug, makes one: it is damage, refused in synced data
    with its offset, and repair drops it and keeps the rest."""
    path = tmp_path / "data.txt"
    fill(path, b"set a 0 0 1\r\n1\r\n")
    at = path.stat().st_size
    assert len(make_item(b"", 0, 0, 5)) == SHORTEST_ITEM
    with open(path, "ab") as f:
        f.write(b"".join(encode_sets([b"b", b"c"], [make_item(b"3", 0, 0, 4), item], ITEM_FORMAT, 6)))
        f.write(records.encode_set(b"d", b"4", 0, 0, 7))
    mark_synced(path)
    with pytest.raises(CorruptLogError, match=f"offset {at}: sets holds an item not in the item layout"):
        Store(path).close()
    report = repair(path)
    assert report.damaged_offsets == [at] and report.kept_across_damage
    store = Store(path)
    try:
        assert store.keys() == [b"a", b"d"]
    finally:
        store.close()


def test_a_snapshot_holding_an_item_not_in_the_item_layout_past_the_last_mark_is_cut(tmp_path: Path) -> None:
    """The same damage where no mark vouches for it is a crash's tail: cut off."""
    path = tmp_path / "data.txt"
    file_id = new_file_id()
    section = b"".join(records.encode_snapshot([(b"gone", b"x" * 40)], ITEM_FORMAT, 8, 0))
    path.write_bytes(make_header(file_id) + section)
    store = Store(path)
    try:
        assert len(store) == 0
    finally:
        store.close()


@pytest.mark.parametrize("verb", ["snapshot", "sets"])
def test_an_expired_item_of_a_bulk_record_that_counts_none_is_left_out(tmp_path: Path, verb: str) -> None:
    """Found by fuzzing (fuzz/datafile.py): a snapshot section that said none
    of its items has an expiry, but held one already expired, loaded it, and
    ``curr_items`` counted it until the crawler dropped it. The writer always
    counts right: only a crafted file did this. Start-up now counts them."""
    path = tmp_path / "data.txt"
    expired = make_item(b"old", 0, 1_000_000_000, 7)
    kept = make_item(b"new", 0, 0, 8)
    if verb == "snapshot":  # says 0 items have an expiry
        section = records.encode_snapshot([(b"gone", expired), (b"kept", kept)], ITEM_FORMAT, 9, 0)
    else:  # a sets record always says 0
        section = encode_sets([b"gone", b"kept"], [expired, kept], ITEM_FORMAT, 9)
    path.write_bytes(make_header(new_file_id()) + b"".join(section))
    store = Store(path)
    try:
        assert store.keys() == [b"kept"] and store.stats()["curr_items"] == 1
    finally:
        store.close()


def test_a_sets_record_counting_more_items_than_it_holds_is_damage(tmp_path: Path) -> None:
    """Found by fuzzing (fuzz/datafile.py): a ``sets`` record (checksum
    intact) whose count of items runs its length table past the end of the
    file raised ValueError out of start-up, instead of being damage."""
    path = tmp_path / "data.txt"
    fill(path, b"set a 0 0 1\r\n1\r\n")
    payload = b"".join(encode_sets([b"b"], [make_item(b"2", 0, 0, 5)], ITEM_FORMAT, 6)[1:-1])
    rest = len(payload) + 2
    # a count whose item-length table starts inside the file and ends past it, mid-entry
    count = next(c for c in range(1, rest) if 2 * c < rest < 6 * c and (rest - 2 * c) % 4)
    head = b"sets %d %d 6 0 %d" % (ITEM_FORMAT, count, len(payload))
    with open(path, "ab") as f:
        f.write(b"%s %08x\r\n%s\r\n" % (head, zlib.crc32(payload, zlib.crc32(head)), payload))
    store = Store(path)  # the record is a crash's tail: cut off
    try:
        assert store.keys() == [b"a"]
    finally:
        store.close()


def test_a_group_never_holds_a_sets_record() -> None:
    inner = b"".join(encode_sets([b"a"], [make_item(b"1", 0, 0, 1)], ITEM_FORMAT, 2))
    with pytest.raises(BadRecord):
        records.read_group(records.encode_group([inner]), 0)


@pytest.mark.parametrize(
    "buf, torn",
    [
        (b"sets 1 1 2 0 x 00000000\r\n", False),
        (b"sets 1 1 2\r\n", False),
        (b"sets 1 1 2 0 100 00000000\r\n\x01\x00", True),
        (b"sets 1 1 2 0 3", True),
    ],
)
def test_malformed_sets_headers(buf: bytes, torn: bool) -> None:
    with pytest.raises(BadRecord) as caught:
        read_snapshot(buf, 0, "sets")
    assert caught.value.torn is torn


def test_a_run_whose_write_fails_is_refused_whole_and_undone(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "data.txt"
    fill(path, b"set k1 0 0 3\r\nold\r\n")
    store = Store(path)
    try:
        size = path.stat().st_size
        real_write = datafile.os.write

        def disk_full(fd: int, data) -> int:
            if fd == store.log._fd:  # the data file only: half of it, then no space
                if len(data) > 100:
                    return real_write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        session = Session(store)
        with monkeypatch.context() as patch:
            patch.setattr(datafile.os, "write", disk_full)
            replies = session.feed(RUN * 4)
        assert replies == b"SERVER_ERROR cannot write data file: out of disk space\r\n" * 12  # noreply: quiet
        assert state(store) == {b"k1": (b"old", 0, 0, 1)}
        assert path.stat().st_size == size  # the half-written record was cut back
        assert session.feed(RUN * 4).count(b"STORED\r\n") == 12  # the disk has room again
        after = state(store)
    finally:
        store.close()
    assert kinds(path)[-1] == b"sets"
    again = Store(path)
    try:
        assert state(again) == after
    finally:
        again.close()
