"""memcached's binary protocol on raw bytes: every opcode and status, the
quiet variants, one store shared with the text protocol, SASL PLAIN, bad
input and fuzzing, detection per connection and ``--protocol``."""

from __future__ import annotations

import base64
import errno
import logging
import struct
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memcachedlite import Settings, Store
from memcachedlite.protocols.auth import AuthFile
from memcachedlite.protocols.binary import (
    ADD,
    ADDQ,
    APPEND,
    APPENDQ,
    AUTH_CONTINUE,
    AUTH_ERROR,
    DECREMENT,
    DECREMENTQ,
    DELETE,
    DELETEQ,
    DELTA_BADVAL,
    E2BIG,
    EINVAL,
    ENOMEM,
    FLUSH,
    FLUSHQ,
    GAT,
    GATK,
    GATKQ,
    GATQ,
    GET,
    GETK,
    GETKQ,
    GETQ,
    INCREMENT,
    INCREMENTQ,
    KEY_EEXISTS,
    KEY_ENOENT,
    NOOP,
    NOT_STORED,
    PREPEND,
    PREPENDQ,
    QUIT,
    QUITQ,
    REPLACE,
    REPLACEQ,
    SASL_AUTH,
    SASL_LIST_MECHS,
    SASL_STEP,
    SET,
    SETQ,
    STAT,
    SUCCESS,
    TOUCH,
    UNKNOWN_COMMAND,
    VERBOSITY,
    VERSION,
    BinarySession,
    request,
)
from memcachedlite.protocols.stats import PROTOCOL_VERSION
from memcachedlite.server.tls import client_context, server_context
from memcachedlite.storage import datafile
from memcachedlite.storage.items import BINARY_KEY
from tests.conftest import Raw, Running
from tests.test_security import PKI, TLSRaw, write_auth

pytestmark = pytest.mark.usefixtures("no_mcl_environment")

U32 = 0xFFFFFFFF


class Packet(NamedTuple):
    magic: int
    opcode: int
    extlen: int
    status: int
    opaque: int
    cas: int
    extras: bytes
    key: bytes
    value: bytes


def parse(data: bytes) -> list[Packet]:
    """Every whole packet in ``data``; a torn tail is an error."""
    out = []
    pos = 0
    while pos < len(data):
        magic, op, keylen, extlen, datatype, status, body, opaque, cas = struct.unpack_from(">BBHBBHIIQ", data, pos)
        assert datatype == 0
        start = pos + 24
        assert start + body <= len(data), "torn packet"
        extras = data[start : start + extlen]
        key = data[start + extlen : start + extlen + keylen]
        value = data[start + extlen + keylen : start + body]
        out.append(Packet(magic, op, extlen, status, opaque, cas, extras, key, value))
        pos = start + body
    return out


def one(data: bytes) -> Packet:
    packets = parse(data)
    assert len(packets) == 1, packets
    return packets[0]


def set_extras(flags: int = 0, exptime: int = 0) -> bytes:
    return struct.pack(">II", flags, exptime)


def arith_extras(delta: int = 1, initial: int = 0, exptime: int = 0) -> bytes:
    return struct.pack(">QQI", delta, initial, exptime)


def setp(key: bytes, value: bytes, op: int = SET, flags: int = 0, exptime: int = 0, cas: int = 0, opaque: int = 0):
    return request(op, key, value, set_extras(flags, exptime), opaque=opaque, cas=cas)


def error_body(status: int) -> bytes:
    return {
        KEY_ENOENT: b"Not found",
        KEY_EEXISTS: b"Data exists for key.",
        E2BIG: b"Too large.",
        EINVAL: b"Invalid arguments",
        NOT_STORED: b"Not stored.",
        DELTA_BADVAL: b"Non-numeric server-side value for incr or decr",
        AUTH_ERROR: b"Auth failure.",
        UNKNOWN_COMMAND: b"Unknown command",
        ENOMEM: b"Out of memory",
    }[status]


def assert_error(packet: Packet, opcode: int, status: int, opaque: int = 0) -> None:
    assert packet == Packet(0x81, opcode, 0, status, opaque, 0, b"", b"", error_body(status))


@pytest.fixture
def store() -> Store:
    return Store(None)


@pytest.fixture
def session(store: Store) -> BinarySession:
    return BinarySession(store)


class BinRaw(Raw):
    """The raw socket client, reading whole binary packets."""

    def packet(self) -> Packet:
        header = self.read_exactly(24)
        body = struct.unpack_from(">I", header, 8)[0]
        return one(header + self.read_exactly(body))

    def ask(self, data: bytes, replies: int = 1) -> list[Packet]:  # type: ignore[override]
        self.send(data)
        return [self.packet() for _ in range(replies)]


@pytest.fixture
def binraw(server: Running):
    client = BinRaw(server.port)
    yield client
    client.close()


# -- every opcode, byte for byte ------------------------------------------------------


def test_set_then_get_byte_exact(session: BinarySession) -> None:
    reply = session.feed(setp(b"k", b"hello", flags=0xDEADBEEF, opaque=0x01020304))
    assert reply == bytes.fromhex("81010000 00000000 00000000 01020304 0000000000000001")
    reply = session.feed(request(GET, b"k", opaque=5))
    assert reply == bytes.fromhex("81000000 04000000 00000009 00000005 0000000000000001 deadbeef") + b"hello"


def test_getk_and_misses(session: BinarySession) -> None:
    session.feed(setp(b"key", b"v", flags=3))
    hit = one(session.feed(request(GETK, b"key", opaque=1)))
    assert (hit.status, hit.extras, hit.key, hit.value, hit.cas) == (SUCCESS, b"\0\0\0\3", b"key", b"v", 1)
    miss = one(session.feed(request(GETK, b"nope", opaque=2)))
    # a GETK miss names the key, with no message
    assert miss == Packet(0x81, GETK, 0, KEY_ENOENT, 2, 0, b"", b"nope", b"")
    assert_error(one(session.feed(request(GET, b"nope", opaque=3))), GET, KEY_ENOENT, 3)


def test_quiet_gets_answer_only_hits_and_noop_ends_the_batch(session: BinarySession) -> None:
    session.feed(setp(b"a", b"1"))
    reply = parse(
        session.feed(
            request(GETQ, b"a", opaque=1)
            + request(GETQ, b"missing", opaque=2)
            + request(GETKQ, b"a", opaque=3)
            + request(GETKQ, b"missing", opaque=4)
            + request(NOOP, opaque=5)
        )
    )
    assert [(p.opcode, p.opaque, p.key, p.value) for p in reply] == [
        (GETQ, 1, b"", b"1"),
        (GETKQ, 3, b"a", b"1"),
        (NOOP, 5, b"", b""),
    ]


def test_quiet_gets_answered_together_keep_their_order() -> None:
    now = [1_000_000.0]
    store = Store(None, clock=lambda: now[0])
    session = BinarySession(store)
    session.feed(setp(b"a", b"1") + setp(b"b", b"2") + setp(b"old", b"x", exptime=10))
    now[0] += 20  # "old" has expired
    stream = (
        request(GETKQ, b"a", opaque=1)
        + request(GETQ, b"old", opaque=2)
        + setp(b"a", b"again", op=ADDQ, opaque=3)  # an error between two runs of quiet gets
        + request(GETQ, b"b", opaque=4)
        + request(GETKQ, b"nope", opaque=5)
        + request(GET, b"b", opaque=6)
    )
    replies = parse(session.feed(stream))
    assert [(p.opaque, p.status, p.key, p.value) for p in replies] == [
        (1, SUCCESS, b"a", b"1"),
        (3, KEY_EEXISTS, b"", b"Data exists for key."),
        (4, SUCCESS, b"", b"2"),
        (6, SUCCESS, b"", b"2"),
    ]
    stats = store.stats()
    assert (stats["cmd_get"], stats["get_hits"], stats["get_misses"], stats["get_expired"]) == (5, 3, 2, 1)


def test_add_replace_and_their_statuses(session: BinarySession) -> None:
    first = one(session.feed(setp(b"k", b"a", op=ADD)))
    assert (first.status, first.cas) == (SUCCESS, 1)
    assert_error(one(session.feed(setp(b"k", b"b", op=ADD))), ADD, KEY_EEXISTS)
    assert_error(one(session.feed(setp(b"other", b"b", op=REPLACE))), REPLACE, KEY_ENOENT)
    replaced = one(session.feed(setp(b"k", b"c", op=REPLACE)))
    assert (replaced.status, replaced.cas) == (SUCCESS, 2)


def test_quiet_mutations_answer_only_errors(session: BinarySession, store: Store) -> None:
    stream = (
        setp(b"k", b"v", op=SETQ, opaque=1)
        + setp(b"k", b"v", op=ADDQ, opaque=2)  # exists: answered
        + setp(b"new", b"v", op=ADDQ, opaque=3)
        + setp(b"gone", b"v", op=REPLACEQ, opaque=4)  # missing: answered
        + request(APPENDQ, b"k", b"+", opaque=5)
        + request(PREPENDQ, b"k", b"-", opaque=6)
        + request(APPENDQ, b"gone", b"+", opaque=7)  # missing: answered
        + request(DELETEQ, b"new", opaque=8)
        + request(DELETEQ, b"new", opaque=9)  # missing: answered
        + request(INCREMENTQ, b"n", extras=arith_extras(1, 5), opaque=10)
        + request(DECREMENTQ, b"n", extras=arith_extras(2), opaque=11)
        + request(INCREMENTQ, b"k", extras=arith_extras(1), opaque=12)  # not a number: answered
        + request(NOOP, opaque=13)
    )
    replies = parse(session.feed(stream))
    assert [(p.opcode, p.status, p.opaque) for p in replies] == [
        (ADDQ, KEY_EEXISTS, 2),
        (REPLACEQ, KEY_ENOENT, 4),
        (APPENDQ, NOT_STORED, 7),
        (DELETEQ, KEY_ENOENT, 9),
        (INCREMENTQ, DELTA_BADVAL, 12),
        (NOOP, SUCCESS, 13),
    ]
    assert store.peek(b"k").value == b"-v+"
    assert store.peek(b"n").value == b"3"
    assert store.peek(b"new") is None


def test_cas_on_set_add_replace(session: BinarySession, store: Store) -> None:
    cas = one(session.feed(setp(b"k", b"a"))).cas
    assert_error(one(session.feed(setp(b"k", b"b", cas=cas + 1))), SET, KEY_EEXISTS)
    assert_error(one(session.feed(setp(b"missing", b"b", cas=cas))), SET, KEY_ENOENT)
    ok = one(session.feed(setp(b"k", b"b", cas=cas)))
    assert ok.status == SUCCESS and ok.cas == store.peek(b"k").cas != cas
    # a non-zero cas makes ADD and REPLACE compare too, as in memcached
    assert_error(one(session.feed(setp(b"k", b"c", op=ADD, cas=cas))), ADD, KEY_EEXISTS)
    assert one(session.feed(setp(b"k", b"c", op=REPLACE, cas=ok.cas))).status == SUCCESS
    counters = store.stats()
    assert (counters["cas_hits"], counters["cas_badval"], counters["cas_misses"]) == (2, 2, 1)


def test_append_prepend(session: BinarySession, store: Store) -> None:
    cas = one(session.feed(setp(b"k", b"mid", flags=7))).cas
    appended = one(session.feed(request(APPEND, b"k", b">")))
    assert appended.status == SUCCESS and appended.cas == store.peek(b"k").cas
    assert_error(one(session.feed(request(PREPEND, b"k", b"<", cas=cas))), PREPEND, KEY_EEXISTS)
    assert one(session.feed(request(PREPEND, b"k", b"<", cas=appended.cas))).status == SUCCESS
    assert store.peek(b"k")[:2] == (b"<mid>", 7)
    assert_error(one(session.feed(request(APPEND, b"nope", b"x"))), APPEND, NOT_STORED)


def test_append_past_the_item_limit_is_not_stored() -> None:
    store = Store(None)
    session = BinarySession(store, Settings(max_item_size=10))
    session.feed(setp(b"k", b"12345678"))
    assert_error(one(session.feed(request(APPEND, b"k", b"abc"))), APPEND, NOT_STORED)
    assert store.peek(b"k").value == b"12345678"


def test_delete_with_and_without_cas(session: BinarySession, store: Store) -> None:
    cas = one(session.feed(setp(b"k", b"v"))).cas
    assert_error(one(session.feed(request(DELETE, b"k", cas=cas + 9))), DELETE, KEY_EEXISTS)
    assert one(session.feed(request(DELETE, b"k", cas=cas))) == Packet(0x81, DELETE, 0, 0, 0, 0, b"", b"", b"")
    assert_error(one(session.feed(request(DELETE, b"k"))), DELETE, KEY_ENOENT)
    assert (store.stats()["delete_hits"], store.stats()["delete_misses"]) == (1, 1)


def test_incr_decr_initial_value_and_no_create(session: BinarySession, store: Store) -> None:
    created = one(session.feed(request(INCREMENT, b"n", extras=arith_extras(5, 10), opaque=1)))
    assert (created.status, created.value, created.cas) == (SUCCESS, struct.pack(">Q", 10), store.peek(b"n").cas)
    up = one(session.feed(request(INCREMENT, b"n", extras=arith_extras(5, 10))))
    assert up.value == struct.pack(">Q", 15) and up.cas == store.peek(b"n").cas != created.cas
    down = one(session.feed(request(DECREMENT, b"n", extras=arith_extras(100))))
    assert down.value == struct.pack(">Q", 0)  # decrement stops at 0
    wrap = one(session.feed(request(INCREMENT, b"big", extras=arith_extras(2, 2**64 - 1))))
    assert wrap.value == struct.pack(">Q", 2**64 - 1)
    assert one(session.feed(request(INCREMENT, b"big", extras=arith_extras(2)))).value == struct.pack(">Q", 1)
    # 0xffffffff: do not create, counted as a miss
    assert_error(one(session.feed(request(DECREMENT, b"x", extras=arith_extras(1, 0, U32)))), DECREMENT, KEY_ENOENT)
    assert store.peek(b"x") is None and store.stats()["decr_misses"] == 1
    assert_error(one(session.feed(request(INCREMENT, b"n", extras=arith_extras(1), cas=1))), INCREMENT, KEY_EEXISTS)
    session.feed(setp(b"text", b"abc"))
    bad = one(session.feed(request(DECREMENT, b"text", extras=arith_extras(1))))
    assert_error(bad, DECREMENT, DELTA_BADVAL)


def test_touch_gat_gatk(session: BinarySession, store: Store) -> None:
    cas = one(session.feed(setp(b"k", b"v", flags=9))).cas
    touched = one(session.feed(request(TOUCH, b"k", extras=struct.pack(">I", 100))))
    assert touched == Packet(0x81, TOUCH, 4, 0, 0, cas, b"\0\0\0\x09", b"", b"")
    assert store.peek(b"k").exptime == store.now() + 100
    gat = one(session.feed(request(GAT, b"k", extras=struct.pack(">I", 0))))
    assert (gat.extras, gat.key, gat.value, gat.cas) == (b"\0\0\0\x09", b"", b"v", cas)
    assert store.peek(b"k").exptime == 0
    gatk = one(session.feed(request(GATK, b"k", extras=struct.pack(">I", 0))))
    assert (gatk.key, gatk.value) == (b"k", b"v")
    assert_error(one(session.feed(request(TOUCH, b"no", extras=bytes(4)))), TOUCH, KEY_ENOENT)
    assert_error(one(session.feed(request(GAT, b"no", extras=bytes(4)))), GAT, KEY_ENOENT)
    assert one(session.feed(request(GATK, b"no", extras=bytes(4)))).key == b"no"
    quiet = parse(
        session.feed(
            request(GATQ, b"no", extras=bytes(4)) + request(GATKQ, b"k", extras=bytes(4)) + request(NOOP, opaque=1)
        )
    )
    assert [(p.opcode, p.key) for p in quiet] == [(GATKQ, b"k"), (NOOP, b"")]
    counters = store.stats()
    assert (counters["cmd_touch"], counters["touch_hits"], counters["touch_misses"]) == (8, 4, 4)
    assert counters["cmd_get"] == 0  # gat counts as a touch only, as memcached's binary protocol counts it


def test_flush_and_flushq_with_delay(session: BinarySession, store: Store) -> None:
    session.feed(setp(b"a", b"1"))
    assert one(session.feed(request(FLUSH, opaque=4))) == Packet(0x81, FLUSH, 0, 0, 4, 0, b"", b"", b"")
    assert store.peek(b"a") is None
    session.feed(setp(b"b", b"2"))
    assert session.feed(request(FLUSHQ, extras=struct.pack(">I", 60))) == b""
    assert store.peek(b"b").exptime == store.now() + 60 and store.flush_at == store.now() + 60
    assert store.stats()["cmd_flush"] == 2


def test_noop_version_quit(session: BinarySession) -> None:
    assert one(session.feed(request(NOOP, opaque=9))) == Packet(0x81, NOOP, 0, 0, 9, 0, b"", b"", b"")
    version = one(session.feed(request(VERSION)))
    assert version.value == PROTOCOL_VERSION.encode() and version.status == SUCCESS
    assert one(session.feed(request(QUIT, opaque=2) + request(NOOP))).opcode == QUIT  # nothing after QUIT runs
    assert session.closing
    quiet = BinarySession(Store(None))
    assert quiet.feed(request(QUITQ) + request(NOOP)) == b"" and quiet.closing


def test_stat_groups(session: BinarySession) -> None:
    session.feed(request(GET, b"miss"))
    packets = parse(session.feed(request(STAT, opaque=3)))
    assert packets[-1] == Packet(0x81, STAT, 0, 0, 3, 0, b"", b"", b"")
    stats = {p.key: p.value for p in packets[:-1]}
    assert stats[b"cmd_get"] == b"1" and stats[b"get_misses"] == b"1"
    assert all(p.opaque == 3 and p.opcode == STAT and p.status == 0 for p in packets)
    settings_ = {p.key: p.value for p in parse(session.feed(request(STAT, b"settings")))[:-1]}
    assert settings_[b"binding_protocol"] == b"auto-negotiate" and settings_[b"item_size_max"] == b"1048576"
    assert parse(session.feed(request(STAT, b"items"))) == [Packet(0x81, STAT, 0, 0, 0, 0, b"", b"", b"")]
    assert parse(session.feed(request(STAT, b"reset"))) == [Packet(0x81, STAT, 0, 0, 0, 0, b"", b"", b"")]
    stats = {p.key: p.value for p in parse(session.feed(request(STAT)))[:-1]}
    assert stats[b"cmd_get"] == b"0"
    assert_error(one(session.feed(request(STAT, b"nonsense", opaque=1))), STAT, KEY_ENOENT, 1)


def stat(session: BinarySession, key: bytes, opaque: int = 0) -> list[Packet]:
    return parse(session.feed(request(STAT, key, opaque=opaque)))


def test_stat_detail_on_off_dump(session: BinarySession, store: Store) -> None:
    """memcached's process_bin_stat (and its t/binary.t, which starts with
    ``detail on``): on and off answer the empty end packet, dump answers one
    statistic named ``detailed`` holding the text protocol's dump; any other
    detail word is KEY_ENOENT."""
    end = Packet(0x81, STAT, 0, 0, 5, 0, b"", b"", b"")
    assert stat(session, b"detail on", 5) == [end]
    assert store.prefixes.enabled
    session.feed(setp(b"p:a", b"1") + request(GET, b"p:a") + request(GETQ, b"p:b") + request(DELETE, b"p:a"))
    session.feed(request(TOUCH, b"p:a", extras=bytes(4)) + request(APPEND, b"p:big", b"x") + request(NOOP))
    dump = stat(session, b"detail dump", 5)
    assert dump == [
        Packet(0x81, STAT, 0, 0, 5, 0, b"", b"detailed", b"PREFIX p get 3 hit 1 set 2 del 1\r\nEND\r\n"),
        end,
    ]
    assert stat(session, b"detail off", 5) == [end] and not store.prefixes.enabled
    session.feed(request(GET, b"p:a"))
    assert stat(session, b"detail dump")[0].value == b"PREFIX p get 3 hit 1 set 2 del 1\r\nEND\r\n"
    for word in (b"detail", b"detail bogus", b"detailed"):
        assert_error(one(session.feed(request(STAT, word, opaque=6))), STAT, KEY_ENOENT, 6)
    assert stat(session, b"reset")[0] == Packet(0x81, STAT, 0, 0, 0, 0, b"", b"", b"")
    assert stat(session, b"detail dump")[0].value == b"END\r\n"  # a reset forgets the counts


def test_unknown_opcodes_and_verbosity(session: BinarySession) -> None:
    """VERBOSITY is not in memcached 1.6.18's binary protocol: UNKNOWN_COMMAND,
    as from memcached. The value of an unknown opcode is read and dropped,
    even when it arrives later, and the connection goes on."""
    reply = parse(session.feed(request(0x50, value=b"xyz", opaque=1) + request(VERBOSITY, extras=bytes(4), opaque=2)))
    assert_error(reply[0], 0x50, UNKNOWN_COMMAND, 1)
    assert_error(reply[1], VERBOSITY, UNKNOWN_COMMAND, 2)
    head = request(0x44, value=b"x" * 100)
    assert_error(one(session.feed(head[:60])), 0x44, UNKNOWN_COMMAND)
    assert session.pending()
    assert one(session.feed(head[60:] + request(NOOP))).opcode == NOOP
    assert not session.closing


def test_sasl_opcodes_without_an_auth_file_are_unknown(session: BinarySession) -> None:
    assert_error(one(session.feed(request(SASL_LIST_MECHS))), SASL_LIST_MECHS, UNKNOWN_COMMAND)
    assert_error(one(session.feed(request(SASL_AUTH, b"PLAIN", b"\0a\0b"))), SASL_AUTH, UNKNOWN_COMMAND)
    assert one(session.feed(request(NOOP))).status == SUCCESS


# -- one store, one log, one set of counters ---------------------------------------------


def test_items_cross_protocols_with_flags_and_cas(server: Running, binraw: BinRaw, connect) -> None:
    text = connect(server.port)
    stored = binraw.ask(setp(b"from-binary", b"v\r\n1", flags=42))[0]
    assert text.ask(b"gets from-binary\r\n") == b"VALUE from-binary 42 4 %d\r\nv\r\n1\r\nEND\r\n" % stored.cas
    assert text.ask(b"set from-text 7 0 2\r\nhi\r\n") == b"STORED\r\n"
    cas = int(text.ask(b"gets from-text\r\n").split()[4])
    got = binraw.ask(request(GET, b"from-text"))[0]
    assert (got.extras, got.value, got.cas) == (struct.pack(">I", 7), b"hi", cas)
    assert text.ask(b"cas from-binary 0 0 1 %d\r\nx\r\n" % stored.cas) == b"STORED\r\n"


def test_counters_are_shared(server: Running, binraw: BinRaw) -> None:
    binraw.ask(setp(b"k", b"v") + request(GET, b"k") + request(GET, b"nope") + request(DELETE, b"nope"), 4)
    stats = server.store.stats()
    assert (stats["cmd_set"], stats["cmd_get"], stats["get_hits"], stats["get_misses"]) == (1, 2, 1, 1)
    assert stats["delete_misses"] == 1 and stats["total_items"] == 1


def test_a_binary_set_is_logged_as_a_text_set_is(tmp_path: Path) -> None:
    text_store, binary_store = Store(tmp_path / "text.txt"), Store(tmp_path / "binary.txt")
    try:
        from memcachedlite.protocols.session import Session

        Session(text_store).feed(b"set k 5 0 3\r\nabc\r\nincr n 1\r\ndelete k\r\n")
        BinarySession(binary_store).feed(
            setp(b"k", b"abc", flags=5)
            + request(INCREMENT, b"n", extras=arith_extras(1, 0, U32))
            + request(DELETE, b"k")
        )
    finally:
        text_store.close()
        binary_store.close()
    from memcachedlite.storage.records import parse_records, read_header

    def logged(path: Path) -> list:  # the records, without the sync marks (which carry the file's id)
        data = path.read_bytes()
        return [r for r in parse_records(data, read_header(data)[0]) if r[0] != b"sync"]

    assert logged(tmp_path / "binary.txt") == logged(tmp_path / "text.txt")
    reopened = Store(tmp_path / "binary.txt")
    try:
        assert reopened.peek(b"k") is None and len(reopened) == 0
    finally:
        reopened.close()


def test_a_key_of_any_bytes_is_logged_replayed_and_read_from_meta(tmp_path: Path) -> None:
    """A binary key the text rule refuses goes to the data file as the meta
    protocol's base64 keys do (``bset``...), replays, and meta reads it with
    ``b``; a key the text rule takes is an ordinary key."""
    from memcachedlite.protocols.session import Session

    path = tmp_path / "data.txt"
    store = Store(path)
    session = BinarySession(store)
    session.feed(setp(b"a b", b"spaced", flags=4) + setp(b"\x00\x01", b"nul") + setp(b"plain", b"p"))
    session.feed(request(INCREMENT, b"n\tn", extras=arith_extras(1, 41)) + request(TOUCH, b"a b", extras=bytes(4)))
    session.feed(request(INCREMENT, b"n\tn", extras=arith_extras(1)))
    session.feed(request(APPEND, b"\x00\x01", b"!") + setp(b"gone now", b"x") + request(DELETE, b"gone now"))
    store.close()
    data = path.read_bytes()
    for key in (b"a b", b"\x00\x01", b"n\tn"):
        assert b"bset " + base64.b64encode(key) + b" " in data
    assert b"btouch " + base64.b64encode(b"a b") + b" " in data
    assert b"bdelete " + base64.b64encode(b"gone now") + b" " in data
    assert b"set plain " in data and b"a b" not in data
    store = Store(path)
    try:
        assert store.peek(b"a b")[:2] == (b"spaced", 4) and store.peek(b"\x00\x01").value == b"nul!"
        assert store.peek(b"n\tn").value == b"42" and store.peek(b"gone now") is None
        assert all(store.peek(key).state & BINARY_KEY for key in (b"a b", b"\x00\x01", b"n\tn"))
        meta = Session(store)
        token = base64.b64encode(b"a b")
        assert meta.feed(b"mg %s b v f k\r\n" % token) == b"VA 6 f4 k%s b\r\nspaced\r\n" % token
        assert meta.feed(b"get plain\r\n") == b"VALUE plain 0 1\r\np\r\nEND\r\n"
        assert one(BinarySession(store).feed(request(GETK, b"\x00\x01"))).value == b"nul!"
    finally:
        store.close()


def test_flush_is_refused_under_disable_flush_all(store: Store) -> None:
    """memcached's binary FLUSH under -F: AUTH_ERROR, and (unlike the text
    flush_all) not counted."""
    session = BinarySession(store, Settings(flush_enabled=False))
    session.feed(setp(b"k", b"v"))
    assert_error(one(session.feed(request(FLUSH, opaque=2))), FLUSH, AUTH_ERROR, 2)
    assert store.peek(b"k").value == b"v" and store.stats()["cmd_flush"] == 0


def test_items_survive_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "data.txt")
    session = BinarySession(store)
    session.feed(setp(b"a", b"1", flags=3) + request(INCREMENT, b"n", extras=arith_extras(1, 41)))
    session.feed(request(INCREMENT, b"n", extras=arith_extras(1)) + request(APPEND, b"a", b"2"))
    store.close()
    store = Store(tmp_path / "data.txt")
    try:
        assert store.peek(b"a")[:2] == (b"12", 3) and store.peek(b"n").value == b"42"
    finally:
        store.close()


def test_a_batch_that_cannot_be_written_fails_every_request(tmp_path: Path, monkeypatch) -> None:
    """Including those whose quiet reply was kept back: each gets an error
    packet with its own opcode and opaque, and memory is left as it was."""
    store = Store(tmp_path / "data.txt")
    try:
        session = BinarySession(store)
        session.feed(setp(b"k", b"old"))

        def full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(datafile.os, "write", full)
        replies = parse(
            session.feed(
                setp(b"k", b"new", op=SETQ, opaque=1)
                + request(DELETEQ, b"k", opaque=2)
                + request(INCREMENT, b"n", extras=arith_extras(1, 1), opaque=3)
                + request(GETQ, b"missing", opaque=4)
                + request(NOOP, opaque=5)
            )
        )
        monkeypatch.undo()
        assert [(p.opcode, p.opaque, p.status) for p in replies] == [
            (SETQ, 1, ENOMEM),
            (DELETEQ, 2, ENOMEM),
            (INCREMENT, 3, ENOMEM),
            (NOOP, 5, ENOMEM),
        ]
        assert b"disk" in replies[0].value
        assert store.peek(b"k").value == b"old" and store.peek(b"n") is None
    finally:
        store.close()


def test_out_of_memory_without_eviction(session: BinarySession) -> None:
    store = Store(None, memory_limit=2000, evict=False)
    session = BinarySession(store)
    replies = parse(session.feed(setp(b"a", b"x" * 1000) + setp(b"b", b"y" * 1500)))
    assert replies[0].status == SUCCESS
    assert replies[1] == Packet(0x81, SET, 0, ENOMEM, 0, 0, b"", b"", b"Out of memory allocating item")


def test_a_counter_cannot_be_created_when_memory_is_full() -> None:
    store = Store(None, memory_limit=1200, evict=False)
    session = BinarySession(store)
    assert one(session.feed(setp(b"a", b"x" * 900))).status == SUCCESS
    reply = one(session.feed(request(INCREMENT, b"counter-with-a-long-name" * 10, extras=arith_extras(1, 7))))
    assert reply == Packet(0x81, INCREMENT, 0, ENOMEM, 0, 0, b"", b"", b"Out of memory allocating new item")


@pytest.mark.parametrize("opcode", [GET, GETKQ])
def test_an_unexpected_failure_is_answered_and_logged(caplog, opcode: int) -> None:
    """A bug below the protocol (here the store's clock, a callable it is
    given, fails while a get reads it) is answered ENOMEM "internal error"
    and logged; the connection goes on. A GETKQ fails in the quiet gets'
    own path, which answers a run of them with one store call."""
    broken = False

    def clock() -> float:
        if broken:
            raise RuntimeError("bug")
        return 1_800_000_000.0

    session = BinarySession(Store(None, clock=clock))
    broken = True
    with caplog.at_level(logging.ERROR, logger="memcachedlite.protocols.binary"):
        replies = parse(session.feed(request(opcode, b"k", opaque=4) + request(NOOP)))
    assert replies[0] == Packet(0x81, opcode, 0, ENOMEM, 4, 0, b"", b"", b"internal error")
    assert replies[1].opcode == NOOP and not session.closing
    assert "RuntimeError: bug" in caplog.text


def test_failed_reply_of_an_empty_reply_is_empty(session: BinarySession) -> None:
    from memcachedlite.errors import LogWriteError

    assert session.failed_reply(b"", LogWriteError("disk")) == b""  # QUITQ's
    failed = one(session.failed_reply(request(NOOP, opaque=3).replace(b"\x80", b"\x81", 1), LogWriteError("")))
    assert (failed.opcode, failed.status, failed.opaque, failed.value) == (NOOP, ENOMEM, 3, b"Out of memory")


# -- bad input ---------------------------------------------------------------------


def test_too_large_a_value_is_refused_and_dropped_unbuffered() -> None:
    store = Store(None)
    session = BinarySession(store, Settings(max_item_size=1000))
    packet = setp(b"k", b"x" * 5000, opaque=6)
    assert_error(one(session.feed(packet[:100])), SET, E2BIG, 6)
    assert len(session._buf) == 0 and session.pending()
    for at in range(100, len(packet), 1000):
        assert session.feed(packet[at : at + 1000]) == b""
    assert one(session.feed(request(NOOP))).opcode == NOOP
    # counted as the text and meta protocols count it (memcached's binary path does not: docs/protocols.md)
    assert store.peek(b"k") is None and store.stats()["store_too_large"] == 1


def test_too_large_a_value_of_another_opcode_is_enomem_and_a_failing_unlink_is_answered() -> None:
    """Past the limit, a value not bounded by the item size (SASL's) is
    ENOMEM, uncounted; a SET whose unlink the store refuses (a full disk)
    answers that failure instead of E2BIG, and the stream stays in step."""
    store = Store(None)
    session = BinarySession(store, Settings(max_item_size=1024))
    reply = one(session.feed(request(SASL_AUTH, b"PLAIN", b"x" * 2000, opaque=3)))
    assert (reply.opcode, reply.status, reply.opaque) == (SASL_AUTH, ENOMEM, 3)
    store.set(b"k", b"old")
    store.refuse_writes("cannot write data file: No space left on device")
    failed = parse(session.feed(setp(b"k", b"x" * 2000, opaque=4) + request(NOOP)))
    assert (failed[0].status, failed[0].value) == (ENOMEM, b"cannot write data file: No space left on device")
    assert failed[1].opcode == NOOP and store.peek(b"k").value == b"old"
    assert store.stats()["store_too_large"] == 0


@pytest.mark.parametrize("op", [SET, SETQ])
def test_a_set_refused_as_too_large_unlinks_the_old_value(op: int, tmp_path: Path) -> None:
    """As memcached's process_bin_update (and the text set, the meta ms): a
    reader must not get the value an update failed to replace. Only a SET:
    ADD, REPLACE, APPEND and PREPEND leave the old value. The removal is
    logged, so a restart does not bring the value back."""
    store = Store(tmp_path / "data.txt")
    session = BinarySession(store, Settings(max_item_size=1024))
    store.prefixes.enabled = True
    session.feed(setp(b"p:k", b"old") + setp(b"p:a", b"old"))
    reply = parse(session.feed(setp(b"p:k", b"x" * 2000, op=op, opaque=1) + request(NOOP)))
    assert_error(reply[0], op, E2BIG, 1)
    refused = [setp(b"p:a", b"x" * 2000, op=other) for other in (ADD, REPLACE)]
    refused += [request(kind, b"p:a", b"x" * 2000) for kind in (APPEND, PREPEND)]
    replies = parse(session.feed(b"".join(refused)))
    assert [p.status for p in replies] == [E2BIG] * 4
    assert store.peek(b"p:k") is None and store.peek(b"p:a").value == b"old"
    assert store.stats()["store_too_large"] == 5 and store.stats()["cmd_set"] == 2
    # each set counted in stats detail before it is refused, as memcached counts them
    assert store.prefixes.dump() == b"PREFIX p get 0 hit 0 set 7 del 0\r\nEND\r\n"
    store.close()
    store = Store(tmp_path / "data.txt")
    try:
        assert store.peek(b"p:k") is None and store.peek(b"p:a").value == b"old"
    finally:
        store.close()


@pytest.mark.parametrize(
    "packet, status",
    [
        (request(GET, b"k" * 251), EINVAL),  # a key over 250 bytes
        (request(SET, b"k", b"v", extras=bytes(4)), EINVAL),  # extras that do not fit the opcode
        (request(GET, b"k", extras=bytes(4)), EINVAL),
        (request(INCREMENT, b"k", extras=bytes(8)), EINVAL),
        (request(FLUSH, extras=bytes(3)), EINVAL),
        (request(NOOP, b"k"), EINVAL),
        (request(GET), EINVAL),  # no key
        (request(DELETE, b"k", b"value"), EINVAL),
        (request(SASL_AUTH), EINVAL),
        (struct.pack(">BBHBBHIIQ", 0x80, GET, 10, 0, 0, 0, 4, 0, 0) + b"k" * 10, UNKNOWN_COMMAND),  # body < key
        (struct.pack(">BBHBBHIIQ", 0x80, SET, 1, 8, 0, 0, 2**30 + 1, 0, 0) + bytes(9), EINVAL),  # body > 1 GiB
    ],
)
def test_malformed_packets_are_answered_then_closed(packet: bytes, status: int, store: Store) -> None:
    store.set(b"keep", b"me")
    session = BinarySession(store)
    reply = one(session.feed(packet + request(SET, b"keep", b"changed", set_extras())))
    assert reply.status == status and reply.value == error_body(status)
    assert session.closing
    assert store.peek(b"keep").value == b"me"


def test_a_wrong_magic_mid_stream_closes_without_a_reply(session: BinarySession) -> None:
    reply = session.feed(request(NOOP, opaque=1) + b"\x81" + bytes(23) + request(NOOP, opaque=2))
    assert [p.opaque for p in parse(reply)] == [1]
    assert session.closing


def test_a_key_of_any_bytes_is_stored(session: BinarySession, store: Store) -> None:
    """As memcached: a binary key may hold any byte (pylibmc's tests store
    ``"\x00\x01"`` and keys with spaces). One the text protocol could not
    carry is stored as the meta protocol stores a key given in base64."""
    stream = (
        setp(b"a b", b"v") + request(INCREMENT, b"a\nb", extras=arith_extras(initial=5)) + request(APPEND, b"a b", b"x")
    )
    stream += request(GET, b"a b") + request(TOUCH, b"a b", extras=bytes(4)) + request(DELETE, b"a\nb")
    stream += setp(b"\x00\x01", b"nul")
    replies = parse(session.feed(stream + request(GET, b"\x00\x01") + request(NOOP)))
    assert [(p.opcode, p.status) for p in replies] == [
        (SET, SUCCESS),
        (INCREMENT, SUCCESS),
        (APPEND, SUCCESS),
        (GET, SUCCESS),
        (TOUCH, SUCCESS),
        (DELETE, SUCCESS),
        (SET, SUCCESS),
        (GET, SUCCESS),
        (NOOP, SUCCESS),
    ]
    assert replies[3].value == b"vx" and replies[7].value == b"nul"
    assert store.peek(b"a\nb") is None and not session.closing
    assert all(store.peek(key).state & BINARY_KEY for key in (b"a b", b"\x00\x01"))
    plain = parse(session.feed(setp(b"plain", b"v") + request(NOOP)))[0]
    assert plain.status == SUCCESS and not store.peek(b"plain").state & BINARY_KEY  # the item text get sees


def test_pieces_of_a_packet_wait_for_the_rest(session: BinarySession) -> None:
    stream = setp(b"key", b"value", opaque=1) + request(GETK, b"key", opaque=2)
    out = b""
    for byte in range(len(stream)):
        out += session.feed(stream[byte : byte + 1])
        assert session.pending() == (byte + 1 not in (len(stream) - 27, len(stream)))
    assert [(p.opaque, p.value) for p in parse(out)] == [(1, b""), (2, b"value")]


_KNOWN_MUTATIONS = {SET, ADD, REPLACE, DELETE, INCREMENT, DECREMENT, FLUSH, APPEND, PREPEND, TOUCH, GAT, GATK}
_MUTATING = _KNOWN_MUTATIONS | {op + 0x10 for op in (SET, ADD, REPLACE, DELETE, INCREMENT, DECREMENT, FLUSH)}
_MUTATING |= {APPENDQ, PREPENDQ, GATQ, GATKQ}


@st.composite
def headers(draw) -> bytes:
    """A header with a random non-mutating opcode and random lengths, and a
    random tail: whatever it claims, it must not change the store."""
    op = draw(st.integers(0, 255).filter(lambda o: o not in _MUTATING))
    keylen = draw(st.sampled_from([0, 1, 5, 250, 251, 65535]) | st.integers(0, 300))
    extlen = draw(st.sampled_from([0, 4, 8, 20, 255]) | st.integers(0, 30))
    body = draw(st.sampled_from([0, keylen, keylen + extlen, 2**30 + 1, 2**32 - 1]) | st.integers(0, 2000))
    head = struct.pack(
        ">BBHBBHIIQ", 0x80, op, keylen, extlen, draw(st.integers(0, 255)), 0, body, draw(st.integers(0, U32)), 0
    )
    return head + draw(st.binary(max_size=400))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=st.lists(headers(), min_size=1, max_size=6))
def test_fuzzed_headers_never_crash_nor_change_data(stream: list[bytes], caplog) -> None:
    store = Store(None)
    store.set(b"k", b"v", 3)
    before = store.peek(b"k")
    session = BinarySession(store, Settings(max_item_size=4096))
    with caplog.at_level(logging.ERROR, logger="memcachedlite"):
        caplog.clear()
        for chunk in stream:
            reply = session.feed(chunk)
            assert all(p.magic == 0x81 for p in parse(reply))
            # never more buffered than a header, extras, a key and one item
            assert len(session._buf) <= 24 + 255 + 65535 + 4096
            if session.closing:
                break
    assert not caplog.records  # no traceback logged
    assert store.peek(b"k") == before and len(store) == 1


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=1, max_size=600))
def test_fuzzed_bytes_never_crash(data: bytes) -> None:
    session = BinarySession(Store(None), Settings(max_item_size=4096))
    for at in range(0, len(data), 97):
        parse(session.feed(b"\x80" + data[at : at + 97] if at == 0 else data[at : at + 97]))
        if session.closing:
            break


# -- SASL ------------------------------------------------------------------------------


@pytest.fixture
def auth_file(tmp_path: Path) -> Path:
    return write_auth(tmp_path / "auth", "alice:secret\nbob:hunter2\n")


@pytest.fixture
def gated(auth_file: Path) -> BinarySession:
    return BinarySession(Store(None), auth=AuthFile(auth_file))


def test_sasl_list_mechs_and_plain(gated: BinarySession) -> None:
    assert gated.pending()  # unauthenticated: the read timeout bounds the connection
    assert one(gated.feed(request(SASL_LIST_MECHS, opaque=1))).value == b"PLAIN"
    assert one(gated.feed(request(VERSION))).status == SUCCESS  # allowed before authenticating, as in memcached
    wrong = one(gated.feed(request(SASL_AUTH, b"PLAIN", b"\0alice\0wrong", opaque=2)))
    assert_error(wrong, SASL_AUTH, AUTH_ERROR, 2)
    ok = one(gated.feed(request(SASL_AUTH, b"PLAIN", b"\0alice\0secret", opaque=3)))
    assert ok == Packet(0x81, SASL_AUTH, 0, SUCCESS, 3, 0, b"", b"", b"Authenticated")
    assert gated.authenticated and not gated.pending()
    assert one(gated.feed(setp(b"k", b"v"))).status == SUCCESS
    assert (gated.auth.auth_cmds, gated.auth.auth_errors) == (2, 1)


def test_sasl_step_after_an_empty_auth(gated: BinarySession) -> None:
    go_on = one(gated.feed(request(SASL_AUTH, b"PLAIN")))
    assert go_on == Packet(0x81, SASL_AUTH, 0, AUTH_CONTINUE, 0, 0, b"", b"", b"")
    assert one(gated.feed(request(SASL_STEP, b"PLAIN", b"authz\0bob\0hunter2"))).value == b"Authenticated"
    # a step with no auth begun fails, and an attempt drops an earlier success
    assert_error(one(gated.feed(request(SASL_STEP, b"PLAIN", b"\0bob\0hunter2"))), SASL_STEP, AUTH_ERROR)
    assert not gated.authenticated
    assert_error(one(gated.feed(request(SASL_AUTH, b"CRAM-MD5", b"x"))), SASL_AUTH, AUTH_ERROR)
    assert_error(one(gated.feed(request(SASL_AUTH, b"PLAIN", b"no nuls"))), SASL_AUTH, AUTH_ERROR)


def test_unauthenticated_requests_get_auth_error_and_a_close(gated: BinarySession) -> None:
    assert_error(one(gated.feed(request(GET, b"k", opaque=7) + request(NOOP))), GET, AUTH_ERROR, 7)
    assert gated.closing


def test_sasl_and_text_login_share_the_users(start_server, auth_file: Path, connect) -> None:
    server = start_server(server_options={"auth_file": auth_file})
    binary = BinRaw(server.port)
    try:
        assert binary.ask(request(SASL_AUTH, b"PLAIN", b"\0alice\0secret"))[0].status == SUCCESS
        assert binary.ask(setp(b"k", b"shared"))[0].status == SUCCESS
    finally:
        binary.close()
    text = connect(server.port)
    assert text.ask(b"get k\r\n") == b"CLIENT_ERROR unauthenticated\r\n"
    assert text.ask(b"set x 0 0 11\r\nbob hunter2\r\n") == b"STORED\r\n"
    assert text.ask(b"get k\r\n") == b"VALUE k 0 6\r\nshared\r\nEND\r\n"
    assert b"STAT auth_enabled_sasl yes\r\n" in text.ask(b"stats settings\r\n")
    assert b"STAT auth_cmds 2\r\n" in text.ask(b"stats\r\n")


@pytest.mark.external
def test_sasl_over_tls(start_server, auth_file: Path, tmp_path: Path) -> None:
    pki = PKI(tmp_path)
    context = server_context(pki.pem("server"), pki.key("server"))
    server = start_server(server_options={"auth_file": auth_file, "ssl_context": context})
    client = TLSRaw(server.port, client_context(pki.pem("ca")))
    try:
        client.send(request(SASL_AUTH, b"PLAIN", b"\0alice\0secret") + setp(b"k", b"tls") + request(GET, b"k"))
        replies = [BinRaw.packet(client) for _ in range(3)]  # type: ignore[arg-type]
        assert [p.status for p in replies] == [SUCCESS, SUCCESS, SUCCESS] and replies[2].value == b"tls"
    finally:
        client.close()


# -- detection, --protocol and the read timeout ----------------------------------------------


def test_each_connection_picks_its_protocol(server: Running, binraw: BinRaw, connect) -> None:
    text = connect(server.port)
    assert text.ask(b"set a 0 0 1\r\n1\r\n") == b"STORED\r\n"
    assert binraw.ask(request(GET, b"a"))[0].value == b"1"
    # a text connection stays text even when a later request starts with 0x80
    assert text.ask(b"\x80\r\n") == b"ERROR\r\n"


def closed_without_a_word(port: int, data: bytes) -> bool:
    """Whether a new connection that sends ``data`` is closed with no reply."""
    client = Raw(port)
    try:
        client.send(data)
        return client.closed_by_peer() and client.buf == b""
    finally:
        client.close()


def test_protocol_ascii_closes_a_binary_client_at_once(start_server) -> None:
    server = start_server(server_options={"protocol": "ascii"})
    assert closed_without_a_word(server.port, request(NOOP))
    text = Raw(server.port)
    try:
        assert b"STAT binding_protocol ascii\r\n" in text.ask(b"stats settings\r\n")
    finally:
        text.close()


def test_protocol_binary_closes_a_text_client(start_server) -> None:
    server = start_server(server_options={"protocol": "binary"})
    assert closed_without_a_word(server.port, b"get a\r\n")
    binary = BinRaw(server.port)
    try:
        settings_ = {p.key: p.value for p in binary.ask(request(STAT, b"settings"), 1)}
        while b"binding_protocol" not in settings_:
            packet = binary.packet()
            settings_[packet.key] = packet.value
        assert settings_[b"binding_protocol"] == b"binary"
    finally:
        binary.close()


def test_unknown_protocol_is_refused() -> None:
    from memcachedlite import MemcacheServer

    with pytest.raises(ValueError, match="protocol"):
        MemcacheServer(("127.0.0.1", 0), Store(None), protocol="udp", bind_and_activate=False)


@pytest.mark.parametrize("cut", [10, 24 + 8 + 1 + 2], ids=["half a header", "half a value"])
def test_a_stalled_packet_is_bounded_by_the_read_timeout(start_server, cut: int) -> None:
    server = start_server(server_options={"read_timeout": 0.5})
    client = BinRaw(server.port)
    try:
        client.send(setp(b"k", b"value")[:cut])
        assert client.closed_by_peer(wait=10.0)
    finally:
        client.close()


def test_mcl_serve_protocol_option(spawn) -> None:
    proc = spawn(env={"MCL_PROTOCOL": "binary"})
    client = BinRaw(proc.port)
    try:
        assert client.ask(setp(b"k", b"v") + request(GET, b"k"), 2)[1].value == b"v"
    finally:
        client.close()
    assert closed_without_a_word(proc.port, b"version\r\n")
    assert proc.terminate() == 0
