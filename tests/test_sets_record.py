"""The ``sets`` record: a run of pipelined sets logged as the client sent it,
under one checksum. It must replay to exactly what the sets stored, whole or
not at all, and damage in it must be told apart like any other record's."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from memcachedlite import CorruptLogError, Session, Store
from memcachedlite import log as datalog
from memcachedlite.cli import main
from memcachedlite.log import parse_records, read_header
from memcachedlite.records import _Bad, encode_sets, read_sets

from .conftest import mark_synced

RUN = (
    b"set k1 0 0 5\r\nhello\r\n"
    b"set k2 7 0 8 noreply\r\nwith\r\nlf\r\n"  # data holding CRLF, and a quiet command
    b"set k3 4294967295 0 0\r\n\r\n"
    b"set k1 00012 0 3\r\nnew\r\n"  # flags as memcached reads them, and a key stored twice
)


def kinds(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [bytes(data[start : data.index(b" ", start)]) for start in _record_starts(data)]


def _record_starts(data: bytes) -> list[int]:
    starts, pos = [], read_header(data)[0]
    while pos < len(data):
        starts.append(pos)
        pos = datalog.parse_one(data, pos)[1]
    return starts


def state(store: Store) -> dict:
    return {k: store.peek(k)[:4] for k in sorted(store.keys())}


def fill(path: Path, stream: bytes = RUN) -> tuple[bytes, dict]:
    store = Store(path)
    try:
        replies = Session(store).feed(stream)
        return replies, state(store)
    finally:
        store.close()


def test_a_run_of_sets_is_one_record_and_replays_to_what_was_stored(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    replies, before = fill(path)
    assert replies == b"STORED\r\n" * 3  # the noreply one stays quiet
    assert kinds(path) == [b"sets"]
    assert path.read_bytes().endswith(RUN)  # logged as sent
    store = Store(path)
    try:
        assert state(store) == before  # values, flags and cas values
        assert before[b"k1"] == (b"new", 12, 0, 4) and before[b"k2"] == (b"with\r\nlf", 7, 0, 2)
        assert store.peek(b"k3")[:2] == (b"", 4294967295)
        assert Session(store).feed(b"set after 0 0 1\r\nx\r\ngets after\r\n").endswith(b" 5\r\nx\r\nEND\r\n")
    finally:
        store.close()


@pytest.mark.parametrize(
    "odd",
    [
        b"set e 0 100 1\r\ne\r\n",
        b"set e 0 00 1\r\ne\r\n",
        b"set e 0 4294967296 1\r\ne\r\n",
        b"set e 4294967296 0 1\r\ne\r\n",
    ],
    ids=["expiring", "exptime-00", "exptime-wraps-to-0", "bad-flags"],
)
def test_a_run_with_any_other_set_is_logged_record_by_record(tmp_path: Path, odd: bytes) -> None:
    path = tmp_path / "data.txt"
    replies, before = fill(path, b"set a 0 0 1\r\n1\r\n" + odd + b"set b 0 0 1\r\n2\r\n")
    assert b"sets" not in kinds(path)
    assert replies.count(b"STORED\r\n") == 2 + (b"4294967296 0 " not in odd)
    store = Store(path)
    try:
        assert state(store) == before
    finally:
        store.close()


def test_a_run_that_meets_the_memory_limit_is_logged_record_by_record(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    store = Store(path, memory_limit=1200, evict=True)
    try:
        stream = b"".join(b"set key%d 0 0 100\r\n%s\r\n" % (i, b"v" * 100) for i in range(12))
        assert Session(store).feed(stream) == b"STORED\r\n" * 12
        before = state(store)
        assert len(before) < 12  # some were evicted
    finally:
        store.close()
    assert b"sets" not in kinds(path)
    again = Store(path, memory_limit=1200)
    try:
        assert state(again) == before
    finally:
        again.close()


def test_a_torn_run_replays_none_of_its_sets(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    fill(path, b"set before 0 0 1\r\nb\r\n")
    fill(path)
    whole = path.read_bytes()
    start = _record_starts(whole)[-1]
    assert whole[start:].startswith(b"sets ")
    for cut in range(start + 1, len(whole), 7):
        path.write_bytes(whole[:cut])
        store = Store(path)  # the run was never covered by an fsync: a crash's tail
        try:
            assert sorted(store.keys()) == [b"before"], cut
        finally:
            store.close()


def test_a_damaged_run_in_synced_data_refuses_to_start_and_repair_salvages(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    fill(path)
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
        assert list(store.keys()) == []  # the whole run went with its checksum
    finally:
        store.close()


def test_sets_records_read_back_as_groups_and_reencode(tmp_path: Path) -> None:
    head, raw = encode_sets(RUN, 4, 10)
    buf = head + raw
    records, end = read_sets(buf, 0)
    assert end == len(buf)
    assert [r[5] for r in records] == [10, 11, 12, 13]
    assert records[1] == (b"set", b"k2", b"with\r\nlf", 7, 0, 11)
    (group,) = list(parse_records(buf, 0))
    assert group == (b"group", records)
    assert datalog.encode(group) == datalog.encode_group([datalog.encode(r) for r in records])


@pytest.mark.parametrize(
    "count, body",
    [
        (5, RUN),  # fewer commands than the header says
        (1, b"set k 0 5 1\r\nx\r\n"),  # an exptime: never logged this way
        (1, b"get k\r\n"),
        (1, b"set k 0 0 3\r\nx\r\n"),  # data running past the record
        (1, b"set k 4294967296 0 1\r\nx\r\n"),
    ],
)
def test_a_sets_record_that_does_not_hold_what_it_says_is_refused(count: int, body: bytes) -> None:
    head, raw = encode_sets(body, count, 1)  # a good checksum over a bad body
    with pytest.raises(_Bad):
        read_sets(head + raw, 0)


@pytest.mark.parametrize(
    "buf, torn",
    [
        (b"sets 1 1 x 00000000\r\n", False),
        (b"sets 1 1\r\n", False),
        (b"sets 1 1 100 00000000\r\nset k 0 0 1\r\n", True),
        (b"sets 1 1 3", True),
    ],
)
def test_malformed_sets_headers(buf: bytes, torn: bool) -> None:
    with pytest.raises(_Bad) as caught:
        read_sets(buf, 0)
    assert caught.value.torn is torn
