"""Round trips through a real meta-protocol client, meta-memcache from PyPI (its
wire code is the meta-memcache-socket extension), against memcachedlite and
against the real memcached 1.6.18: every protocol test runs on both, so what
the client expects is checked against the reference as well. Restart tests run
on memcachedlite only.

What the client sends, for reading a failure (meta-memcache 4.3):
``get`` is ``mg <key> f v t l h`` (``c`` for the cas variants, ``N<ttl>`` for
leases, ``R<ttl>`` for recache, ``T<ttl>`` to touch); ``touch`` is
``mg <key> T<ttl>``; ``set`` is ``ms <key> <size> T<ttl> F<flags>`` (``C<cas>``,
``I`` on a stale cas, ``ME``/``MR``/``MA``/``MP`` modes, ``c`` for set_cas);
``delete`` is ``md <key>`` (``C<cas>``, ``I T<ttl>`` to mark stale); deltas are
``ma <key> D<n>`` (``MD`` to decrement, ``N<ttl> J<initial>``, ``T<ttl>``,
``v``); ``no_reply`` adds ``q`` and an ``mn``. Keys that are not plain ASCII
without spaces go base64 with ``b``; keys over 186 characters go as the base64
of their 18-byte blake2b digest, with ``b``. Values longer than 128 bytes are
zlib-compressed by the client (flag bit 8): bytes are flag 16, str 0, int 2,
anything else a pickle, 1."""

from __future__ import annotations

import hashlib
import pickle
import random
import socket
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

import pytest
from meta_memcache import (
    CacheClient,
    ConnectionPool,
    Key,
    LeasePolicy,
    MemcacheServerError,
    RecachePolicy,
    RequestFlags,
    ServerAddress,
    SetMode,
    StalePolicy,
    Value,
)
from meta_memcache.interfaces.cache_api import CacheApi
from pymemcache.client.base import Client

from memcachedlite import Store
from tests.conftest import running_memcached

STR, PICKLE, INT, ZLIB, BINARY = 0, 1, 2, 8, 16  # the client's MixedSerializer flags
BIG = random.Random(500).randbytes(500 * 1024)  # incompressible, so ~500 KiB go on the wire


@pytest.fixture(params=[pytest.param("memcached", marks=pytest.mark.external), "memcachedlite"])
def port(request, start_server) -> Iterator[int]:
    """The server under test: the real memcached (missing binary fails) or memcachedlite."""
    if request.param == "memcached":
        with running_memcached() as p:
            yield p
    else:
        yield start_server().port


@pytest.fixture
def connect_meta() -> Iterator:
    """Factory: connect_meta(port) -> a meta-memcache client; its sockets are closed at the end
    (the client has no close of its own; the extension works on the Python socket, so closing
    it is safe)."""
    opened: list[socket.socket] = []

    def pool(address: ServerAddress) -> ConnectionPool:
        def new_socket() -> socket.socket:
            s = socket.create_connection((address.host, address.port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            opened.append(s)
            return s

        # read_buffer_size: with the default 4 KiB, meta-memcache-socket 0.3.1 takes ~12 s to read
        # a 500 KiB value, from memcached too; 64 KiB reads it in a millisecond.
        return ConnectionPool(
            server=str(address),
            socket_factory_fn=new_socket,
            initial_pool_size=1,
            max_pool_size=2,
            read_buffer_size=64 * 1024,
        )

    def connect(port: int) -> CacheApi:
        return CacheClient.cache_client_from_servers(
            [ServerAddress("127.0.0.1", port)], connection_pool_factory_fn=pool
        )

    yield connect
    for s in opened:
        s.close()


@pytest.fixture
def meta(port: int, connect_meta) -> CacheApi:
    return connect_meta(port)


class FlagsSerde:
    """pymemcache serde that passes bytes through and returns the flags: set takes (bytes, flags)."""

    def serialize(self, key: Any, value: tuple[bytes, int]) -> tuple[bytes, int]:
        return value

    def deserialize(self, key: Any, value: bytes, flags: int) -> tuple[bytes, int]:
        return value, flags


@pytest.fixture
def classic(port: int) -> Iterator[Client]:
    client = Client(("127.0.0.1", port), serde=FlagsSerde(), default_noreply=False, connect_timeout=10, timeout=10)
    yield client
    client.close()


def ttl_of(meta: CacheApi, key: str) -> int | None:
    """The server's remaining TTL for ``key`` (``mg <key> t``): -1 for never, None if missing."""
    result = meta.meta_get(Key(key), flags=RequestFlags(return_ttl=True))
    return None if not hasattr(result, "flags") else result.flags.ttl


VALUES = {
    "bytes": b"line one\r\nline two\r\n\x00\x01\xff END\r\n",
    "str": "héllo wörld ✓ \r\n",
    "int": 42,
    "negative": -7,
    "bigint": 2**70,
    "float": 3.25,
    "bool": True,
    "dict": {"a": [1, 2, (3, 4)], "b": None},
    "list": ["x", b"y", 1.5],
    "long_str": "compressible " * 100,
}


# -- basic round trips ------------------------------------------------------------


def test_set_get_round_trips_every_serialisable_type(meta):
    for name, value in VALUES.items():
        assert meta.set(f"v-{name}", value, ttl=0) is True, name
    for name, value in VALUES.items():
        got = meta.get(f"v-{name}")
        assert got == value and type(got) is type(value), (name, got)


def test_empty_bytes_value_round_trips(meta):
    assert meta.set("empty", b"", ttl=0)
    assert meta.get("empty") == b""
    assert meta.get_cas("empty")[1] is not None


def test_missing_key(meta):
    assert meta.get("nope") is None
    assert meta.get_cas("nope") == (None, None)
    assert meta.touch("nope", 100) is False
    assert meta.delete("nope") is False
    assert meta.invalidate("nope") is True  # "gone either way"
    assert meta.delta("nope", 1) is False
    assert meta.delta_and_get("nope", 1) is None
    assert meta.set("nope", b"x", ttl=0, cas_token=12345) is False  # a cas on nothing stores nothing
    assert meta.get("nope") is None


def test_overwrite_and_delete(meta):
    assert meta.set("k", b"one", ttl=0)
    assert meta.set("k", "two", ttl=0)
    assert meta.get("k") == "two"
    assert meta.delete("k") is True
    assert meta.get("k") is None
    assert meta.delete("k") is False


def test_multi_get_and_multi_get_cas(meta):
    for i in range(5):
        assert meta.set(f"m{i}", f"value {i}", ttl=0)
    keys = [f"m{i}" for i in range(5)] + ["m-missing"]
    got = meta.multi_get(keys)
    assert got == {Key(f"m{i}"): f"value {i}" for i in range(5)} | {Key("m-missing"): None}
    with_cas = meta.multi_get_cas(keys)
    assert with_cas[Key("m-missing")] == (None, None)
    for i in range(5):
        value, cas = with_cas[Key(f"m{i}")]
        assert value == f"value {i}"
        assert cas == meta.get_cas(f"m{i}")[1]
    assert len({with_cas[Key(f"m{i}")][1] for i in range(5)}) == 5  # every item its own cas


def test_no_reply_writes_land(meta):
    """``q`` mode: the client sends the command and an ``mn``, and reads only the ``MN``."""
    assert meta.set("q", b"quiet", ttl=0, no_reply=True)
    assert meta.get("q") == b"quiet"
    assert meta.delta_initialize("qc", 1, initial_value=5, initial_ttl=0, no_reply=True)
    assert meta.delta("qc", 2, no_reply=True)
    assert int(meta.get("qc")) == 7
    assert meta.delete("q", no_reply=True)
    assert meta.get("q") is None


# -- TTLs -----------------------------------------------------------------------


def test_touch_and_ttls(meta):
    assert meta.set("t", b"v", ttl=0)
    assert ttl_of(meta, "t") == -1  # never expires
    assert meta.touch("t", 100) is True
    assert 98 <= ttl_of(meta, "t") <= 100
    assert meta.get("t", touch_ttl=500) == b"v"  # get-and-touch
    assert 498 <= ttl_of(meta, "t") <= 500
    assert meta.set("t2", b"v", ttl=60)
    assert 58 <= ttl_of(meta, "t2") <= 60
    assert ttl_of(meta, "missing") is None


def test_ttl_expires(meta):
    assert meta.set("short", b"v", ttl=1)
    assert meta.set("long", b"v", ttl=100)
    assert meta.get("short") == b"v"
    time.sleep(2.5)
    assert meta.get("short") is None
    assert meta.get("long") == b"v"


# -- counters -------------------------------------------------------------------


def test_delta_with_initial_value(meta):
    # Created by the initial value (the delta is not applied to a new counter, as in memcached).
    assert meta.delta_initialize_and_get("c", 5, initial_value=10, initial_ttl=0) == 10
    assert meta.delta_initialize_and_get("c", 5, initial_value=10, initial_ttl=0) == 15
    assert meta.delta_and_get("c", 3) == 18
    assert meta.delta_and_get("c", -8) == 10
    assert meta.delta_and_get("c", -100) == 0  # decrements stop at zero
    assert meta.delta("c", 2) is True
    assert int(meta.get("c")) == 2  # the stored text may keep memcached's space padding
    assert meta.delta_initialize("c2", -1, initial_value=7, initial_ttl=50) is True
    assert meta.delta_and_get("c2", -1) == 6
    assert 48 <= ttl_of(meta, "c2") <= 50
    assert meta.delta("c2", 1, refresh_ttl=300) is True
    assert 298 <= ttl_of(meta, "c2") <= 300


def test_delta_on_client_written_int_and_wrap(meta):
    assert meta.set("n", 41, ttl=0)
    assert meta.delta_and_get("n", 1) == 42
    assert meta.get("n") == 42  # still the client's int encoding (flag 2)
    assert meta.set("w", 2**64 - 1, ttl=0)
    assert meta.delta_and_get("w", 1) == 0  # incr wraps at 2**64


def test_delta_on_non_number_is_refused(meta):
    assert meta.set("txt", "abc", ttl=0)
    with pytest.raises(MemcacheServerError):
        meta.delta("txt", 1)  # CLIENT_ERROR from the server; the client drops the connection
    assert meta.get("txt") == "abc"


# -- cas and set modes --------------------------------------------------------------


def test_cas(meta):
    assert meta.set("x", b"v1", ttl=0)
    value, cas = meta.get_cas("x")
    assert value == b"v1" and isinstance(cas, int)
    assert meta.set("x", b"v2", ttl=0, cas_token=cas) is True
    assert meta.set("x", b"v3", ttl=0, cas_token=cas) is False  # stale token
    assert meta.get("x") == b"v2"
    new_cas = meta.set_cas("x", b"v4", ttl=0)
    assert new_cas is not None and new_cas != cas
    assert meta.get_cas("x") == (b"v4", new_cas)
    assert meta.delete("x", cas_token=new_cas + 1000) is False
    assert meta.get("x") == b"v4"
    assert meta.delete("x", cas_token=new_cas) is True
    assert meta.get("x") is None


def test_set_modes(meta):
    assert meta.refill("r", b"first", ttl=0) is True  # add
    assert meta.refill("r", b"second", ttl=0) is False
    assert meta.set("r", b"third", ttl=0, set_mode=SetMode.ADD) is False
    assert meta.get("r") == b"first"
    assert meta.set("absent", b"x", ttl=0, set_mode=SetMode.REPLACE) is False
    assert meta.get("absent") is None
    assert meta.set("r", b"mid", ttl=0, set_mode=SetMode.REPLACE) is True
    assert meta.set("r", b">", ttl=0, set_mode=SetMode.APPEND) is True
    assert meta.set("r", b"<", ttl=0, set_mode=SetMode.PREPEND) is True
    assert meta.get("r") == b"<mid>"
    assert meta.set("absent", b"x", ttl=0, set_mode=SetMode.APPEND) is False
    assert meta.get("absent") is None


# -- sizes and keys -------------------------------------------------------------------


def test_large_value(meta, classic):
    assert meta.set("big", BIG, ttl=0)
    assert meta.get("big") == BIG
    stored, flags = classic.get("big")  # what the server holds: the client's zlib of it
    assert flags == BINARY | ZLIB
    assert len(stored) > 500 * 1024
    assert zlib.decompress(stored) == BIG


KEYS = [
    "clé",  # non-ASCII: base64
    "with space",
    "tab\tand\nnewline",
    "nul\x00byte",
    "emoji 🎉",
    "a" * 186,  # the longest key sent as it is
    "a" * 187,  # hashed from here on
    "a" * 250,
    "b" * 1000,
]


def test_keys_needing_base64_or_hashing(meta):
    for i, key in enumerate(KEYS):
        assert meta.set(key, f"value {i}", ttl=0), repr(key)
    for i, key in enumerate(KEYS):
        assert meta.get(key) == f"value {i}", repr(key)
    assert meta.multi_get(KEYS) == {Key(k): f"value {i}" for i, k in enumerate(KEYS)}
    assert meta.get("a" * 251) is None  # a different long key is a different item
    assert meta.delta_initialize_and_get("compteur é", 1, initial_value=1, initial_ttl=0) == 1
    assert meta.delta_and_get("compteur é", 1) == 2
    assert meta.delete("emoji 🎉") is True
    assert meta.get("emoji 🎉") is None
    assert meta.get("with space") == "value 1"


LONG_KEYS = [f"{i:03d}" + "k" * 200 for i in range(1000)]


def test_base64_key_is_the_same_item_as_the_raw_key(meta, classic):
    """``mg <base64> b`` names the decoded bytes, so a classic client sees the same item."""
    assert meta.set("clé", b"from meta", ttl=0)
    assert classic.get("clé".encode()) == (b"from meta", BINARY)
    assert classic.set("naïve".encode(), (b"from classic", BINARY))
    assert meta.get("naïve") == b"from classic"
    # A long key is stored under its digest; take one whose digest a classic client can send.
    long_key, digest = next(
        (key, digest)
        for key, digest in ((k, hashlib.blake2b(k.encode(), digest_size=18).digest()) for k in LONG_KEYS)
        if not any(b <= 32 or b == 127 for b in digest)
    )
    assert meta.set(long_key, b"hashed", ttl=0)
    assert classic.get(digest) == (b"hashed", BINARY)
    assert classic.set(digest, (b"rewritten", BINARY))
    assert meta.get(long_key) == b"rewritten"


# -- herd control: leases, recache, stale ----------------------------------------------


def test_get_or_lease(port, connect_meta):
    winner, loser = connect_meta(port), connect_meta(port)
    policy = LeasePolicy(ttl=30, miss_retries=3, miss_retry_wait=0.01, miss_max_retry_wait=0.02)
    value, token = winner.get_or_lease_cas("lease", policy)
    assert value is None and token is not None  # a miss: this client won the lease
    waits: list[float] = []
    assert loser.get_or_lease("lease", policy, lease_wait_fn=waits.append) is None
    assert len(waits) == policy.miss_retries - 1  # it waited for the winner, then gave up
    assert winner.set("lease", "filled", ttl=0, cas_token=token) is True
    waits.clear()
    assert loser.get_or_lease("lease", policy, lease_wait_fn=waits.append) == "filled"
    assert waits == []
    assert loser.get_or_lease_cas("lease", policy)[0] == "filled"


def test_get_or_lease_winner_can_lose_its_lease(port, connect_meta):
    winner, other = connect_meta(port), connect_meta(port)
    policy = LeasePolicy(ttl=30, miss_retries=1)
    _, token = winner.get_or_lease_cas("lease2", policy)
    assert other.set("lease2", "fresher", ttl=0)  # someone wrote in the meantime
    assert winner.set("lease2", "older", ttl=0, cas_token=token) is False
    assert winner.get_or_lease("lease2", policy) == "fresher"


def test_recache_policy(port, connect_meta):
    a, b = connect_meta(port), connect_meta(port)
    recache = RecachePolicy(ttl=30)
    assert a.set("rc", "old", ttl=10)
    assert a.get("rc", recache_policy=recache) is None  # ttl < 30: this one wins the recache
    assert b.get("rc", recache_policy=recache) == "old"  # the others keep the value
    raw = b.meta_get(Key("rc"), flags=RequestFlags(return_value=True, recache_ttl=30))
    assert isinstance(raw, Value) and raw.flags.win is False
    assert a.set("rc", "new", ttl=100)
    assert b.get("rc", recache_policy=recache) == "new"
    assert a.get("rc", recache_policy=recache) == "new"


def test_stale_on_delete(port, connect_meta):
    a, b = connect_meta(port), connect_meta(port)
    stale = StalePolicy(mark_stale_on_deletion_ttl=30)
    assert a.set("st", "v1", ttl=0)
    assert a.delete("st", stale_policy=stale) is True  # md I T30: marked stale, not gone
    value, token = a.get_cas("st")
    assert value is None and token is not None  # the first reader wins the refill
    raw = b.meta_get(Key("st"), flags=RequestFlags(return_value=True, return_ttl=True))
    assert isinstance(raw, Value) and raw.flags.stale is True and raw.flags.win is False
    assert 28 <= raw.flags.ttl <= 30
    assert b.get("st") == "v1"  # the others get the stale value meanwhile
    assert a.set("st", "v2", ttl=0, cas_token=token) is True
    raw = b.meta_get(Key("st"), flags=RequestFlags(return_value=True))
    assert raw.flags.stale is False and raw.flags.win is None
    assert b.get("st") == "v2"


def test_stale_on_cas_mismatch(meta):
    assert meta.set("sc", "v1", ttl=0)
    _, old = meta.get_cas("sc")
    assert meta.set("sc", "v2", ttl=0)
    policy = StalePolicy(mark_stale_on_cas_mismatch=True)
    assert meta.set("sc", "late", ttl=0, cas_token=old, stale_policy=policy) is True  # ms I: stored stale
    raw = meta.meta_get(Key("sc"), flags=RequestFlags(return_value=True))
    assert raw.flags.stale is True and raw.flags.win is True
    assert meta.get("sc") == "late"  # later readers get the stale value


# -- the meta client and a classic client on the same data ---------------------------


def test_meta_writes_read_by_classic_client(meta, classic):
    assert meta.set("b", b"raw\r\nbytes", ttl=0)
    assert meta.set("s", "text é", ttl=0)
    assert meta.set("i", 41, ttl=0)
    assert meta.set("d", {"k": 1}, ttl=0)
    assert classic.get("b") == (b"raw\r\nbytes", BINARY)
    assert classic.get("s") == ("text é".encode(), STR)
    assert classic.get("i") == (b"41", INT)
    data, flags = classic.get("d")
    assert flags == PICKLE and pickle.loads(data) == {"k": 1}
    assert classic.incr("i", 1) == 42  # the client's int is a plain decimal
    assert meta.get("i") == 42
    _, meta_cas = meta.get_cas("b")
    _, classic_cas = classic.gets("b")
    assert classic_cas == str(meta_cas).encode()  # one cas unique for both protocols
    assert classic.cas("b", (b"via gets", BINARY), classic_cas) is True
    assert meta.get("b") == b"via gets"


def test_classic_writes_read_by_meta_client(meta, classic):
    assert classic.set("cb", (b"\x00\xffbin", BINARY), expire=100)
    assert classic.set("cs", ("tëxt".encode(), STR))
    assert classic.set("cn", (b"10", 0))
    assert meta.get("cb") == b"\x00\xffbin"
    assert 98 <= ttl_of(meta, "cb") <= 100
    assert meta.get("cs") == "tëxt"
    assert meta.delta_and_get("cn", 5) == 15
    assert classic.get("cn") == (b"15", 0)
    _, cas = classic.gets("cs")
    assert meta.set("cs", "by meta", ttl=0, cas_token=int(cas)) is True
    assert classic.cas("cs", (b"stale", STR), cas) is False
    assert classic.touch("cs", 50)
    assert 48 <= ttl_of(meta, "cs") <= 50
    assert classic.delete("cs")
    assert meta.get("cs") is None
    assert meta.delete("cb") is True
    assert classic.get("cb") is None


# -- restarts (memcachedlite only) -------------------------------------------------------


def write_for_restart(meta: CacheApi) -> None:
    for name, value in VALUES.items():
        assert meta.set(f"v-{name}", value, ttl=0)
    assert meta.set("big", BIG, ttl=0)
    assert meta.set("ttl", b"lives", ttl=1000)
    assert meta.set("clé ✓", "base64 key", ttl=0)
    assert meta.set("z" * 300, "hashed key", ttl=0)
    assert meta.delta_initialize_and_get("counter", 1, initial_value=100, initial_ttl=0) == 100
    assert meta.delta_and_get("counter", 5) == 105
    assert meta.set("gone", b"x", ttl=0) and meta.delete("gone")
    assert meta.set("cas", b"a", ttl=0)
    _, cas = meta.get_cas("cas")
    assert meta.set("cas", b"b", ttl=0, cas_token=cas)
    assert meta.set("cat", b"mid", ttl=0)
    assert meta.set("cat", b"!", ttl=0, set_mode=SetMode.APPEND)
    assert meta.set("q", b"quiet", ttl=0, no_reply=True)
    assert meta.get("q") == b"quiet"  # the quiet write is acknowledged by now


def check_after_restart(meta: CacheApi) -> None:
    for name, value in VALUES.items():
        got = meta.get(f"v-{name}")
        assert got == value and type(got) is type(value), name  # flags survived too
    assert meta.get("big") == BIG
    assert meta.get("ttl") == b"lives"
    assert 900 <= ttl_of(meta, "ttl") <= 1000
    assert ttl_of(meta, "v-int") == -1
    assert meta.get("clé ✓") == "base64 key"
    assert meta.get("z" * 300) == "hashed key"
    assert meta.delta_and_get("counter", 1) == 106
    assert meta.get("gone") is None
    assert meta.get("cas") == b"b"
    assert meta.get("cat") == b"mid!"
    assert meta.get("q") == b"quiet"
    _, cas = meta.get_cas("cas")  # cas still works after a restart
    assert meta.set("cas", b"c", ttl=0, cas_token=cas) is True
    assert meta.set("cas", b"d", ttl=0, cas_token=cas) is False


def test_meta_data_survives_a_restart(start_server, connect_meta, tmp_path: Path):
    path = tmp_path / "meta.txt"
    store = Store(path)
    first = start_server(store=store)
    write_for_restart(connect_meta(first.port))
    first.stop()
    store.close()
    store = Store(path)
    second = start_server(store=store)
    try:
        check_after_restart(connect_meta(second.port))
    finally:
        second.stop()
        store.close()


def test_meta_data_survives_a_killed_server_process(spawn, connect_meta, tmp_path: Path):
    """``mcl serve`` as a process, SIGKILLed after the writes: every acknowledged meta write is back."""
    path = tmp_path / "killed.txt"
    first = spawn(data_file=path)
    write_for_restart(connect_meta(first.port))
    first.kill()
    second = spawn(data_file=path)
    check_after_restart(connect_meta(second.port))
    assert second.terminate() == 0
