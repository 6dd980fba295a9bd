"""Malformed input that would slice bytes backwards (a start past the end).

Python gives ``b""`` for such a slice; mypyc 2.4 compiles it into
``SystemError: Negative size passed to PyBytes_FromStringAndSize`` (found by
the ``datafile`` fuzz target on the compiled build, issue 25). The parsers
test a length first, so that each input below gets the same answer on both
builds: a :class:`BadRecord` for a record, the plain path's error for a
command, an empty value for a crafted item the loader trusts. These run on
the pure build with coverage, and on the compiled one in CI.
"""

from __future__ import annotations

import struct
from pathlib import Path
from zlib import crc32

import pytest

from memcachedlite import CorruptLogError, Registry, Session, Store
from memcachedlite.protocols.binary import GET, BinarySession
from memcachedlite.storage.items import ITEM_FORMAT, SHORTEST_ITEM, decode, item_value, make_item, pack_meta
from memcachedlite.storage.records import BadRecord, encode_sets, make_header, new_file_id, parse_one, seal

from .conftest import mark_synced

#: An item framed as one (as long as the shortest, ending with a line end)
#: whose only line end is its last byte: what a crafted bulk record can
#: hold, its text line's numbers being trusted (docs/fuzzing.md).
CRAFTED = pack_meta(0, 0, 0, 1, 0, 0, 1, 60) + b"1234567\n"


def bulk_header(verb: bytes, count: int, length: int) -> bytes:
    """A snapshot or ``sets`` header line with a good checksum (over no payload)."""
    head = b"%s %d %d 5 0 %d" % (verb, ITEM_FORMAT, count, length)
    return b"%s %08x\r\n" % (head, crc32(head))


def test_a_crafted_item_has_an_empty_value() -> None:
    assert len(CRAFTED) == SHORTEST_ITEM
    assert item_value(CRAFTED) == b""
    assert decode(CRAFTED).value == b""
    assert item_value(make_item(b"", 0, 0, 1)) == b""  # the server's own empty value
    assert item_value(make_item(b"v\r\n", 3, 0, 1)) == b"v\r\n"


def test_a_crafted_item_loads_and_reads_as_empty_over_the_binary_protocol(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_bytes(make_header(new_file_id()) + b"".join(encode_sets([b"k"], [CRAFTED], ITEM_FORMAT, 2)))
    store = Store(path)
    try:
        assert store.peek(b"k").value == b""
        request = struct.pack(">BBHBBHIIQ", 0x80, GET, 1, 0, 0, 0, 1, 7, 0) + b"k"
        reply = BinarySession(store).feed(request)
        magic, op, status, body, opaque = struct.unpack_from(">BBxxxxHI I", reply)
        assert (magic, op, status, body, opaque) == (0x81, GET, 0, 4, 7)  # the flags, and no value
    finally:
        store.close()


@pytest.mark.parametrize("verb", [b"snapshot", b"sets"])
@pytest.mark.parametrize("count, length", [(0, -1), (0, -40), (1, -2), (-1, 6)])
def test_a_bulk_record_with_a_negative_count_or_length_is_malformed(verb: bytes, count: int, length: int) -> None:
    buf = b"set x 0 0 1 1 00000000\r\n1\r\n" + bulk_header(verb, count, length) + b"\r\n" + b"z" * 60
    at = buf.index(verb)
    with pytest.raises(BadRecord, match=f"malformed {verb.decode()} header: negative count or length") as bad:
        parse_one(buf, at)
    assert bad.value.offset == at and not bad.value.torn


def test_start_up_refuses_a_bulk_record_with_a_negative_length_in_synced_data(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_bytes(make_header(new_file_id()) + bulk_header(b"sets", 0, -2) + seal(b"delete a"))
    mark_synced(path)
    with pytest.raises(CorruptLogError, match="negative count or length"):
        Store(path).close()


@pytest.mark.parametrize(
    "buf, pos",
    [
        (b"\r\nset k 0 0 1 1 00000000\r\n1\r\n", 1),  # an empty line after a CR
        (b"\nflush_all 0 00000000\r", 0),  # an empty first line, and a CR at the very end
    ],
)
def test_an_empty_record_line_is_not_ended_by_crlf(buf: bytes, pos: int) -> None:
    with pytest.raises(BadRecord, match="record line not ended by CRLF") as bad:
        parse_one(buf, pos)
    assert bad.value.offset == pos


def test_a_batch_pattern_letting_a_negative_length_through_leaves_it_to_the_plain_path() -> None:
    """A user's batch form whose pattern reads a length with a sign: the run
    stops there, and the plain path refuses the line, as without a batch form."""
    registry = Registry()

    @registry.command("put", min_args=2, max_args=2, data=1)
    def put(ctx, args, data):
        return b"PUT %s %d\r\n" % (args[0], len(data))

    registry.add_batch(
        "put", lambda ctx, requests: [b"MANY\r\n" for _ in requests], rb"put (\S+) (?P<length>-?\d+)\r\n"
    )
    session = Session(Store(None), registry=registry)
    replies = session.feed(b"put a 1\r\nx\r\nput b 1\r\ny\r\nput c -2\r\nput d 1\r\nz\r\n")
    assert replies == b"MANY\r\nMANY\r\nCLIENT_ERROR bad command line format\r\nPUT d 1\r\n"
