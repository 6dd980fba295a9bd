"""Parity of the three protocols: the same scenarios, driven through the
text, meta and binary protocols of a real server over real sockets, must
answer alike and leave the same items (value, flags, expiry, cas, fetched,
key form), the same data file records (and the same table when the file is
replayed) and the same ``stats`` counters.

A scenario is a function of a client; every client has the same operations,
each spoken in its own protocol (``set`` is ``set``, ``ms`` or ``SET``).
Where a verb does not exist in a protocol (meta has no ``flush_all``, text
keys cannot hold a space), the scenario runs where it does. Where
memcached's own protocols differ, the test asserts memcached's behaviour
explicitly, and ``test_meta_counts_as_memcached_counts`` checks it against
the real memcached: its meta commands count nothing in ``stats detail``, and
``mg`` with ``T`` counts a miss as a get miss, not a touch miss.

The store runs on the test's own clock, so expiry needs no sleeping.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import pytest

from memcachedlite import MemcacheServer, Settings, Store
from memcachedlite.protocols.binary import (
    DECREMENT,
    DELETE,
    DELTA_BADVAL,
    E2BIG,
    ENOMEM,
    FLUSH,
    GAT,
    GET,
    INCREMENT,
    KEY_EEXISTS,
    KEY_ENOENT,
    NOT_STORED,
    SET,
    STAT,
    SUCCESS,
    TOUCH,
    request,
)
from memcachedlite.storage import records
from memcachedlite.storage.items import BINARY_KEY, FETCHED, STALE
from memcachedlite.storage.slabs import item_class
from memcachedlite.testing import BackgroundServer, Faults
from tests.conftest import Raw, Running, running_memcached
from tests.test_binary import Packet, one

NOW = 1_700_000_000
#: small, so that a value past it is cheap to send
LIMIT = 1024
BIG = b"x" * (LIMIT + 1)
NO_CREATE = 0xFFFFFFFF

#: ``stats`` lines that depend on the connection or the moment, not on what
#: the commands did: every other line is compared
VOLATILE = frozenset(
    [
        "pid",
        "uptime",
        "time",
        "rusage_user",
        "rusage_system",
        "curr_connections",
        "total_connections",
        "connection_structures",
        "read_buf_count",
        "read_buf_bytes",
        "bytes_read",
        "bytes_written",
    ]
)

Outcome = Union[str, int, bytes, None]


class Clock:
    """The store's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def detail_dump(raw: Raw) -> bytes:
    """``stats detail dump``: its PREFIX lines, then END."""
    raw.send(b"stats detail dump\r\n")
    lines = [raw.readline()]
    while lines[-1] != b"END\r\n":
        lines.append(raw.readline())
    return b"".join(lines)


def stats_of(raw: Raw) -> dict[str, int]:
    """The numbers ``stats``, ``stats items`` and ``stats slabs`` show (the
    per-class ones under memcached's names, ``items:<class>:<key>`` and
    ``<class>:<key>``), less the :data:`VOLATILE` ones and the ages."""
    lines = []
    for group in (b"stats\r\n", b"stats items\r\n", b"stats slabs\r\n"):
        lines += [line.split() for line in raw.ask(group).splitlines() if line.startswith(b"STAT ")]
    return {
        name.decode(): int(value)
        for _, name, value in lines
        if value.isdigit() and name.decode() not in VOLATILE and not _is_an_age(name.decode())
    }


def _is_an_age(name: str) -> bool:
    """``items:<class>:age`` (and its hot/warm forms): seconds, which tick on a slow run."""
    return name.startswith("items:") and name.rsplit(":", 1)[1].startswith("age")


def counted(counters: dict[str, int], *names: str) -> tuple[int, ...]:
    return tuple(counters[name] for name in names)


# -- one client per protocol, with the same operations ---------------------------


class TextClient:
    """memcached's classic text verbs."""

    name = "text"

    def __init__(self, port: int) -> None:
        self.raw = Raw(port)

    def close(self) -> None:
        self.raw.close()

    def _outcome(self, reply: bytes) -> Outcome:
        line = reply.rstrip(b"\r\n")
        if line.startswith(b"SERVER_ERROR object too large"):
            return "TOO_LARGE"
        if line.startswith(b"SERVER_ERROR"):
            return "SERVER_ERROR"
        if line == b"CLIENT_ERROR cannot increment or decrement non-numeric value":
            return "NON_NUMERIC"
        if line.isdigit():
            return int(line)
        return line.decode()

    def _value(self, reply: bytes) -> Optional[bytes]:
        if reply == b"END\r\n":
            return None
        head, _, rest = reply.partition(b"\r\n")
        return rest[: int(head.split()[3])]

    def set(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> Outcome:
        return self._outcome(self.raw.ask(b"set %b %d %d %d\r\n%b\r\n" % (key, flags, exptime, len(value), value)))

    def get(self, key: bytes) -> Optional[bytes]:
        return self._value(self.raw.ask(b"get %b\r\n" % key))

    def gets(self, key: bytes) -> int:
        return int(self.raw.ask(b"gets %b\r\n" % key).split(b"\r\n")[0].split()[4])

    def delete(self, key: bytes) -> Outcome:
        return self._outcome(self.raw.ask(b"delete %b\r\n" % key))

    def touch(self, key: bytes, exptime: int) -> Outcome:
        return self._outcome(self.raw.ask(b"touch %b %d\r\n" % (key, exptime)))

    def gat(self, key: bytes, exptime: int) -> Optional[bytes]:
        return self._value(self.raw.ask(b"gat %d %b\r\n" % (exptime, key)))

    def incr(self, key: bytes, delta: int) -> Outcome:
        return self._outcome(self.raw.ask(b"incr %b %d\r\n" % (key, delta)))

    def decr(self, key: bytes, delta: int) -> Outcome:
        return self._outcome(self.raw.ask(b"decr %b %d\r\n" % (key, delta)))

    def cas(self, key: bytes, value: bytes, unique: int) -> Outcome:
        return self._outcome(self.raw.ask(b"cas %b 0 0 %d %d\r\n%b\r\n" % (key, len(value), unique, value)))

    def flush_all(self, delay: int) -> Outcome:
        return self._outcome(self.raw.ask(b"flush_all %d\r\n" % delay))

    def detail(self, word: bytes) -> bytes:
        return detail_dump(self.raw) if word == b"dump" else self.raw.ask(b"stats detail %s\r\n" % word)


class MetaClient(TextClient):
    """memcached's meta commands; ``stats detail`` is the text verb, on the same connection."""

    name = "meta"
    _CODES = {b"HD": "STORED", b"NS": "NOT_STORED", b"EX": "EXISTS", b"NF": "NOT_FOUND"}

    def _code(self, reply: bytes, done: str = "STORED") -> Outcome:
        code = reply[:2]
        if code == b"HD":
            return done
        if code in self._CODES:
            return self._CODES[code]
        return self._outcome(reply)

    def _va(self, reply: bytes) -> Optional[bytes]:
        if reply.startswith(b"EN"):
            return None
        head, _, rest = reply.partition(b"\r\n")
        return rest[: int(head.split()[1])]

    def set(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> Outcome:
        return self._code(self.raw.ask(b"ms %b %d F%d T%d\r\n%b\r\n" % (key, len(value), flags, exptime, value)))

    def get(self, key: bytes) -> Optional[bytes]:
        return self._va(self.raw.ask(b"mg %b v\r\n" % key))

    def gets(self, key: bytes) -> int:
        return int(self.raw.ask(b"mg %b c\r\n" % key).split()[1][1:])

    def delete(self, key: bytes) -> Outcome:
        return self._code(self.raw.ask(b"md %b\r\n" % key), "DELETED")

    def touch(self, key: bytes, exptime: int) -> Outcome:
        reply = self.raw.ask(b"mg %b T%d\r\n" % (key, exptime))
        return "NOT_FOUND" if reply.startswith(b"EN") else self._code(reply, "TOUCHED")

    def gat(self, key: bytes, exptime: int) -> Optional[bytes]:
        return self._va(self.raw.ask(b"mg %b T%d v\r\n" % (key, exptime)))

    def incr(self, key: bytes, delta: int) -> Outcome:
        return self._arith(key, delta, b"I")

    def decr(self, key: bytes, delta: int) -> Outcome:
        return self._arith(key, delta, b"D")

    def _arith(self, key: bytes, delta: int, mode: bytes) -> Outcome:
        reply = self.raw.ask(b"ma %b D%d M%b v\r\n" % (key, delta, mode))
        return int(self._va(reply) or 0) if reply.startswith(b"VA") else self._code(reply)

    def cas(self, key: bytes, value: bytes, unique: int) -> Outcome:
        return self._code(self.raw.ask(b"ms %b %d C%d\r\n%b\r\n" % (key, len(value), unique, value)))

    def flush_all(self, delay: int) -> Outcome:
        raise NotImplementedError("the meta protocol has no flush verb")


class BinaryClient:
    """memcached's binary protocol."""

    name = "binary"
    _STATUSES = {
        KEY_ENOENT: "NOT_FOUND",
        KEY_EEXISTS: "EXISTS",
        NOT_STORED: "NOT_STORED",
        E2BIG: "TOO_LARGE",
        DELTA_BADVAL: "NON_NUMERIC",
        ENOMEM: "SERVER_ERROR",
    }

    def __init__(self, port: int) -> None:
        self.raw = Raw(port)

    def close(self) -> None:
        self.raw.close()

    def packet(self) -> Packet:
        header = self.raw.read_exactly(24)
        return one(header + self.raw.read_exactly(struct.unpack_from(">I", header, 8)[0]))

    def ask(self, packet: bytes) -> Packet:
        self.raw.send(packet)
        return self.packet()

    def _outcome(self, packet: Packet, done: str) -> Outcome:
        return done if packet.status == SUCCESS else self._STATUSES[packet.status]

    def set(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0, cas: int = 0) -> Outcome:
        return self._outcome(self.ask(request(SET, key, value, struct.pack(">II", flags, exptime), cas=cas)), "STORED")

    def get(self, key: bytes) -> Optional[bytes]:
        packet = self.ask(request(GET, key))
        return packet.value if packet.status == SUCCESS else None

    def gets(self, key: bytes) -> int:
        return self.ask(request(GET, key)).cas

    def delete(self, key: bytes) -> Outcome:
        return self._outcome(self.ask(request(DELETE, key)), "DELETED")

    def touch(self, key: bytes, exptime: int) -> Outcome:
        return self._outcome(self.ask(request(TOUCH, key, extras=struct.pack(">I", exptime & 0xFFFFFFFF))), "TOUCHED")

    def gat(self, key: bytes, exptime: int) -> Optional[bytes]:
        packet = self.ask(request(GAT, key, extras=struct.pack(">I", exptime & 0xFFFFFFFF)))
        return packet.value if packet.status == SUCCESS else None

    def incr(self, key: bytes, delta: int, op: int = INCREMENT) -> Outcome:
        # no initial value: a miss is not created, as the text verb does not create one
        packet = self.ask(request(op, key, extras=struct.pack(">QQI", delta, 0, NO_CREATE)))
        return struct.unpack(">Q", packet.value)[0] if packet.status == SUCCESS else self._outcome(packet, "")

    def decr(self, key: bytes, delta: int) -> Outcome:
        return self.incr(key, delta, DECREMENT)

    def cas(self, key: bytes, value: bytes, unique: int) -> Outcome:
        return self.set(key, value, cas=unique)

    def flush_all(self, delay: int) -> Outcome:
        return self._outcome(self.ask(request(FLUSH, extras=struct.pack(">I", delay))), "OK")

    def detail(self, word: bytes) -> bytes:
        """The binary STAT ``detail <word>``, as the text reply would show it."""
        packets = [self.ask(request(STAT, b"detail " + word))]
        while packets[-1].key or packets[-1].value:
            packets.append(self.packet())
        assert all(p.status == SUCCESS for p in packets), packets
        return b"".join(p.value for p in packets) or b"OK\r\n"


Client = Union[TextClient, MetaClient, BinaryClient]
CLIENTS: dict[str, Callable[[int], Client]] = {"text": TextClient, "meta": MetaClient, "binary": BinaryClient}


# -- running a scenario on a fresh server, and what it left ---------------------------


@dataclass
class World:
    """The server a scenario runs against: its store, clock and data file."""

    store: Store
    clock: Clock
    path: Path
    port: int


@dataclass
class Observed:
    """What one protocol's run of a scenario answered and left behind."""

    outcomes: list[Outcome]
    items: dict[bytes, tuple]
    records: list[tuple]
    replayed: dict[bytes, tuple]
    counters: dict[str, int]
    dump: bytes


def items_of(store: Store, states: int = FETCHED | STALE | BINARY_KEY) -> dict[bytes, tuple]:
    """Every live item: value, flags, expiry, cas and state bits (not the access time)."""
    out = {}
    for key in store.keys():
        item = store.peek(key)
        assert item is not None
        out[key] = (item.value, item.flags, item.exptime, item.cas, item.state & states)
    return out


def records_of(path: Path) -> list[tuple]:
    """The records a data file holds, less its header and sync marks."""
    data = path.read_bytes()
    header = records.read_header(data)
    assert header is not None
    return [r for r in records.parse_records(data, header[0]) if r[0] not in (b"sync", b"next_cas")]


@contextlib.contextmanager
def serving(tmp_path: Path, name: str, **store_options: Any) -> Iterator[World]:
    """A fresh server on a data file of its own, with a clock of the test's."""
    clock = Clock()
    path = tmp_path / f"{name}.txt"
    store = Store(path, clock=clock, **store_options)
    store.start_sweeper(interval=3600)  # parked: expired items wait for the reads that count them
    server = MemcacheServer(("127.0.0.1", 0), store, settings=Settings(max_item_size=LIMIT))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    running = Running(server, thread)
    try:
        yield World(store, clock, path, running.port)
    finally:
        running.stop()
        store.close()


Scenario = Callable[[Any, World], list[Outcome]]


def observe(tmp_path: Path, protocol: str, scenario: Scenario, **store_options: Any) -> Observed:
    with serving(tmp_path, f"{scenario.__name__}-{protocol}", **store_options) as world:
        client = CLIENTS[protocol](world.port)
        text = Raw(world.port)
        try:
            outcomes = scenario(client, world)
            stats = stats_of(text)
            dump = detail_dump(text)
        finally:
            client.close()
            text.close()
        items = items_of(world.store)
        world.store.sync()
        copy = tmp_path / f"{scenario.__name__}-{protocol}-replayed.txt"
        shutil.copyfile(world.path, copy)
    replay = Store(copy, clock=world.clock)
    try:
        replayed = items_of(replay, STALE | BINARY_KEY)  # fetched is not logged: a replayed item was never read
    finally:
        replay.close()
    return Observed(outcomes, items, records_of(world.path), replayed, stats, dump)


def observe_all(
    tmp_path: Path, scenario: Scenario, protocols: tuple[str, ...] = ("text", "meta", "binary"), **store_options: Any
) -> dict:
    return {protocol: observe(tmp_path, protocol, scenario, **store_options) for protocol in protocols}


def assert_alike(seen: dict[str, Observed], *, dump: bool = True) -> Observed:
    """Every protocol answered alike and left the same items, records, table
    after replay and counters (and, with ``dump``, ``stats detail``)."""
    first, *others = seen
    reference = seen[first]
    for other in others:
        got = seen[other]
        assert got.outcomes == reference.outcomes, (first, other)
        assert got.items == reference.items, (first, other)
        assert got.records == reference.records, (first, other)
        assert got.replayed == reference.replayed, (first, other)
        assert got.counters == reference.counters, (first, other)
        if dump:
            assert got.dump == reference.dump, (first, other)
    assert reference.replayed == {k: (v[0], v[1], v[2], v[3], v[4] & ~FETCHED) for k, v in reference.items.items()}
    return reference


# -- the scenarios ---------------------------------------------------------------------


def too_large_over_an_existing_key(c: Client, w: World) -> list[Outcome]:
    return [c.set(b"k", b"old", flags=3), c.set(b"k", BIG), c.get(b"k"), c.set(b"other", BIG), c.get(b"other")]


def test_a_set_refused_as_too_large_unlinks_the_old_value(tmp_path: Path) -> None:
    seen = assert_alike(observe_all(tmp_path, too_large_over_an_existing_key))
    assert seen.outcomes == ["STORED", "TOO_LARGE", None, "TOO_LARGE", None]
    assert seen.items == {} and seen.records[-1] == (b"delete", b"k")
    assert counted(seen.counters, "store_too_large", "cmd_set") == (2, 1)


def out_of_memory_without_eviction(c: Client, w: World) -> list[Outcome]:
    return [
        c.set(b"a", b"1" * 900),
        c.set(b"b", b"2" * 900),
        c.set(b"c", b"3" * 900),  # does not fit, and nothing may be evicted
        c.set(b"a", b"4" * 1000),  # neither does a's new value: the old one goes too, as in memcached
        c.get(b"a"),
        c.get(b"b"),
    ]


def test_no_evict_refuses_a_set_that_does_not_fit_alike(tmp_path: Path) -> None:
    """``-M``: SERVER_ERROR on text and meta, ENOMEM on binary (the exact
    words are checked against memcached in tests/test_eviction_warning.py)."""
    seen = assert_alike(observe_all(tmp_path, out_of_memory_without_eviction, memory_limit=2200, evict=False))
    assert seen.outcomes == ["STORED", "STORED", "SERVER_ERROR", "SERVER_ERROR", None, b"2" * 900]
    assert set(seen.items) == {b"b"} and seen.records[-1] == (b"delete", b"a")
    assert counted(seen.counters, "store_no_memory", "evictions", "cmd_set") == (2, 0, 4)


def detail(c: Client, w: World) -> list[Outcome]:
    c.detail(b"on")
    return [
        c.set(b"p:a", b"1"),
        c.set(b"p:b", b"2"),
        c.get(b"p:a"),
        c.get(b"p:miss"),
        c.delete(b"p:a"),
        c.delete(b"q:none"),
        c.set(b"p:big", BIG),
        c.gat(b"p:b", 0),
        c.set(b"nodelimiter", b"1"),
    ]


def test_stats_detail_counts_classic_and_binary_commands_not_meta_ones(tmp_path: Path) -> None:
    seen = observe_all(tmp_path, detail)
    # memcached's protocols differ here: its classic verbs and binary opcodes
    # count in stats detail (a set once its line parsed, even when the value
    # is then refused; gat as a get), its meta commands count nothing
    dump = b"PREFIX p get 3 hit 2 set 3 del 1\r\nPREFIX q get 0 hit 0 set 0 del 1\r\nEND\r\n"
    assert seen["text"].dump == seen["binary"].dump == dump
    assert seen["meta"].dump == b"END\r\n"
    reference = assert_alike(seen, dump=False)
    assert reference.outcomes == ["STORED", "STORED", b"1", None, "DELETED", "NOT_FOUND", "TOO_LARGE", b"2", "STORED"]
    assert counted(reference.counters, "get_hits", "touch_hits") == (1, 1)


def expired_and_flushed_reads(c: Client, w: World) -> list[Outcome]:
    out = [c.set(b"short", b"v", exptime=10), c.set(b"long", b"v")]
    w.store.flush_all(100)  # a delayed flush_all, issued below the protocols (meta has no flush verb)
    w.clock.now += 11
    out.append(c.get(b"short"))  # its own expiry ended it: get_expired
    w.clock.now += 100
    out.append(c.get(b"long"))  # the flush ended it: get_flushed
    out.append(c.get(b"never"))
    return out


def test_expired_and_flushed_reads_are_counted_alike(tmp_path: Path) -> None:
    seen = assert_alike(observe_all(tmp_path, expired_and_flushed_reads))
    assert seen.outcomes == ["STORED", "STORED", None, None, None]
    assert counted(seen.counters, "get_expired", "get_flushed", "get_misses") == (1, 1, 3)


def touch_and_gat(c: Client, w: World) -> list[Outcome]:
    return [
        c.set(b"k", b"v", exptime=50),
        c.touch(b"k", 100),
        c.gat(b"k", 200),
        c.get(b"k"),
        c.set(b"gone", b"v"),
        c.touch(b"gone", NOW - 1000),  # a unix time already past (the binary protocol's exptime is unsigned)
        c.get(b"gone"),
    ]


def test_touch_and_gat_alike(tmp_path: Path) -> None:
    seen = assert_alike(observe_all(tmp_path, touch_and_gat))
    assert seen.outcomes == ["STORED", "TOUCHED", b"v", b"v", "STORED", "TOUCHED", None]
    assert seen.items[b"k"][2] == NOW + 200
    assert counted(seen.counters, "cmd_touch", "touch_hits") == (3, 3)


def touch_a_missing_key(c: Client, w: World) -> list[Outcome]:
    return [c.touch(b"nope", 10), c.gat(b"nope", 10)]


def test_touch_of_a_missing_key_counts_as_memcached_counts(tmp_path: Path) -> None:
    seen = observe_all(tmp_path, touch_a_missing_key)
    for protocol in ("text", "binary"):
        assert counted(seen[protocol].counters, "cmd_touch", "touch_misses", "get_misses") == (2, 2, 0)
    # memcached's mg counts a miss as a get miss even with T (a hit that touches counts as a touch)
    assert counted(seen["meta"].counters, "cmd_touch", "touch_misses", "get_misses") == (0, 0, 2)
    assert all(seen[p].outcomes == ["NOT_FOUND", None] for p in seen)


def incr_decr_on_a_non_number(c: Client, w: World) -> list[Outcome]:
    return [
        c.set(b"n", b"abc", flags=7),
        c.incr(b"n", 1),
        c.decr(b"n", 1),
        c.get(b"n"),
        c.set(b"m", b"5"),
        c.incr(b"m", 2),
        c.decr(b"m", 10),
        c.incr(b"none", 1),
        c.decr(b"none", 1),
    ]


def test_incr_decr_on_a_non_number_alike(tmp_path: Path) -> None:
    seen = assert_alike(observe_all(tmp_path, incr_decr_on_a_non_number))
    assert seen.outcomes == ["STORED", "NON_NUMERIC", "NON_NUMERIC", b"abc", "STORED", 7, 0, "NOT_FOUND", "NOT_FOUND"]
    assert seen.items[b"n"][:2] == (b"abc", 7)
    assert counted(seen.counters, "incr_hits", "decr_hits", "incr_misses", "decr_misses") == (1, 1, 1, 1)


def cas_mismatch(c: Client, w: World) -> list[Outcome]:
    c.set(b"k", b"v")
    unique = c.gets(b"k")
    return [c.cas(b"k", b"w", unique + 1), c.get(b"k"), c.cas(b"k", b"w", unique), c.get(b"k"), c.cas(b"none", b"x", 5)]


def test_a_cas_mismatch_alike(tmp_path: Path) -> None:
    seen = assert_alike(observe_all(tmp_path, cas_mismatch))
    assert seen.outcomes == ["EXISTS", b"v", "STORED", b"w", "NOT_FOUND"]
    assert counted(seen.counters, "cas_badval", "cas_hits", "cas_misses", "cmd_set") == (1, 1, 1, 4)


def in_several_classes(c: Client, w: World) -> list[Outcome]:
    out = [c.set(b"small", b"s"), c.set(b"mid", b"m" * 300, flags=3), c.set(b"large", b"l" * 900)]
    out += [c.get(b"small"), c.get(b"mid"), c.get(b"mid"), c.get(b"large"), c.get(b"none")]
    out += [c.set(b"n", b"9"), c.incr(b"n", 1), c.incr(b"n", 1), c.decr(b"n", 5)]
    unique = c.gets(b"mid")
    out += [c.cas(b"mid", b"M" * 300, unique), c.cas(b"large", b"x", unique), c.touch(b"small", 100)]
    out += [c.delete(b"large"), c.set(b"mid", b"now small")]  # into another class
    return out


def test_each_protocol_counts_in_the_same_slab_classes(tmp_path: Path) -> None:
    """A hit, a set, an incr... of the binary or the meta protocol counts in
    the same class of ``stats slabs`` and ``stats items`` as the text one's."""
    seen = assert_alike(observe_all(tmp_path, in_several_classes))
    small, mid, large = (item_class(key, len(value), flags, True, 1024 * 1024) for key, value, flags in CLASSED)
    assert len({small, mid, large}) == 3
    counters = seen.counters
    assert (counters[f"{small}:get_hits"], counters[f"{mid}:get_hits"], counters[f"{large}:get_hits"]) == (1, 3, 1)
    assert (counters[f"{mid}:cas_hits"], counters[f"{large}:cas_badval"], counters[f"{large}:delete_hits"]) == (1, 1, 1)
    assert counters[f"{small}:touch_hits"] == 1 and counters[f"{small}:incr_hits"] == 2
    assert counters["get_hits"] == 5 and counters[f"items:{small}:number"] == 3  # small, n, and mid now
    assert f"items:{large}:number" not in counters and counters[f"{large}:used_chunks"] == 0


#: the items of in_several_classes whose classes differ
CLASSED = [(b"small", b"s", 0), (b"mid", b"m" * 300, 3), (b"large", b"l" * 900, 0)]


def delayed_flush_all(c: Client, w: World) -> list[Outcome]:
    out = [c.set(b"k", b"v"), c.set(b"t", b"v", exptime=500), c.flush_all(100), c.get(b"k")]
    out.append(c.set(b"after", b"v"))  # written before the flush falls due: it goes too
    w.clock.now += 101
    out += [c.get(b"k"), c.get(b"t"), c.get(b"after"), c.set(b"later", b"v"), c.get(b"later")]
    return out


def test_a_delayed_flush_all_alike(tmp_path: Path) -> None:
    """Text and binary (the meta protocol has no flush verb)."""
    seen = assert_alike(observe_all(tmp_path, delayed_flush_all, ("text", "binary")))
    assert seen.outcomes == ["STORED", "STORED", "OK", b"v", "STORED", None, None, None, "STORED", b"v"]
    assert counted(seen.counters, "cmd_flush", "get_flushed") == (1, 3)
    assert (b"flush_all", NOW + 100) in seen.records


def keys_of_any_bytes(c: Client, w: World) -> list[Outcome]:
    if isinstance(c, BinaryClient):
        key = b"a b\x00"
        return [
            c.set(key, b"v", flags=1),
            c.get(key),
            c.touch(key, 100),
            c.incr(key, 1),
            c.delete(key),
            c.set(key, b"w"),
        ]
    token = base64.b64encode(b"a b\x00")
    return [
        c._code(c.raw.ask(b"ms %b 1 F1 b\r\nv\r\n" % token)),
        c._va(c.raw.ask(b"mg %b b v\r\n" % token)),
        c._code(c.raw.ask(b"mg %b b T100\r\n" % token), "TOUCHED"),
        c._code(c.raw.ask(b"ma %b b\r\n" % token)),
        c._code(c.raw.ask(b"md %b b\r\n" % token), "DELETED"),
        c._code(c.raw.ask(b"ms %b 1 b\r\nw\r\n" % token)),
    ]


def test_binary_keys_are_stored_as_meta_base64_keys(tmp_path: Path) -> None:
    """A binary key may hold any byte; the text protocol's keys cannot (its
    rule stays: no whitespace, no control characters), the meta protocol
    reaches the same item with the key in base64 and ``b``."""
    seen = assert_alike(observe_all(tmp_path, keys_of_any_bytes, ("binary", "meta")))
    assert seen.outcomes == ["STORED", b"v", "TOUCHED", "NON_NUMERIC", "DELETED", "STORED"]
    assert seen.items == {b"a b\x00": (b"w", 0, 0, 2, BINARY_KEY)}
    assert [r[0] for r in seen.records] == [b"bset", b"btouch", b"bdelete", b"bset"]


def plain_binary_keys(c: Client, w: World) -> list[Outcome]:
    return [c.set(b"plain:key", b"v"), c.get(b"plain:key")]


def test_a_binary_key_the_text_rule_takes_is_a_plain_key(tmp_path: Path) -> None:
    seen = assert_alike(observe_all(tmp_path, plain_binary_keys, ("binary", "text")))
    assert seen.items[b"plain:key"][4] == FETCHED and seen.records[0][0] == b"set"


# -- a failed write, through the pytest plugin's fault switch ---------------------------


def failed_write(c: Client, w: Any) -> list[Outcome]:
    return [c.set(b"k", b"after"), c.delete(b"k"), c.incr(b"k", 1), c.touch(b"k", 10), c.set(b"new", b"v"), c.get(b"k")]


def test_a_failed_write_alike(memcached_server: BackgroundServer, memcached_faults: Faults) -> None:
    seen = {}
    for protocol in ("text", "meta", "binary"):
        memcached_server.reset()
        store = memcached_server.store
        while store.reclaim_expired():  # what the flush left goes now, not in the sweeper's next round mid-test
            pass
        store.set(b"k", b"before")
        client = CLIENTS[protocol](memcached_server.port)
        text = Raw(memcached_server.port)
        try:
            before = stats_of(text)
            with memcached_faults.fail_writes():
                outcomes = failed_write(client, None)
            after = stats_of(text)
        finally:
            client.close()
            text.close()
        delta = {name: after[name] - before[name] for name in after}
        items = {
            key: (value, flags, exptime, state) for key, (value, flags, exptime, _, state) in items_of(store).items()
        }
        seen[protocol] = (outcomes, items, delta)
    assert seen["text"] == seen["meta"] == seen["binary"]
    outcomes, items, delta = seen["text"]
    assert outcomes == ["SERVER_ERROR"] * 5 + [b"before"]
    assert items == {b"k": (b"before", 0, 0, FETCHED)}
    # nothing else counted (the hit in its class too, as memcached counts it)
    assert {name: d for name, d in delta.items() if d} == {
        "cmd_get": 1,
        "get_hits": 1,
        "1:get_hits": 1,
        "items:1:hits_to_cold": 1,
    }


# -- memcached's own differences, against the real memcached ---------------------------


#: the counters compared with the real memcached's
COUNTED_BY_MEMCACHED = ["cmd_get", "cmd_set", "cmd_touch", "get_hits", "get_misses", "delete_hits", "delete_misses"]
COUNTED_BY_MEMCACHED += ["incr_hits", "incr_misses", "touch_hits", "touch_misses", "curr_items"]


@pytest.mark.external
def test_meta_counts_as_memcached_counts(start_server) -> None:
    """What the parity tests assert where memcached's protocols differ, run
    on the real memcached: meta commands count nothing in ``stats detail``,
    and ``mg`` with ``T`` counts a miss as a get miss and a hit as a touch."""
    stream = [
        b"stats detail on\r\n",
        b"ms p:a 1\r\nv\r\n",
        b"mg p:a v\r\n",
        b"mg p:miss v\r\n",
        b"mg p:a T100 v\r\n",
        b"mg p:none T100\r\n",
        b"md p:a\r\n",
        b"ma p:n\r\n",
        b"stats detail dump\r\n",
        b"stats detail off\r\n",
    ]
    seen = []
    with running_memcached() as port:  # a fresh one: counters start at 0
        for p in (port, start_server().port):
            raw = Raw(p)
            try:
                replies = [detail_dump(raw) if b"dump" in line else raw.ask(line) for line in stream]
                stats = stats_of(raw)
            finally:
                raw.close()
            seen.append((replies, {n: stats[n] for n in COUNTED_BY_MEMCACHED}))
    assert seen[0] == seen[1]
    replies, counters = seen[0]
    assert replies[-2] == b"END\r\n"
    assert counted(counters, "get_misses", "touch_hits", "touch_misses") == (2, 1, 0)
