"""Round trips through real memcached clients (pymemcache, python-memcached)
against a live in-process server, and concurrency that must come out exact."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator

import memcache
import pytest
from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheClientError, MemcacheServerError

from memcachedlite.protocols.stats import PROTOCOL_VERSION

BINARY = b"line one\r\nline two\r\n\x00\x01\xff END\r\n\r\nVALUE x 0 1\r\n"


class FlagsSerde:
    """Passes bytes through and hands back the flags the server returned."""

    def serialize(self, key: Any, value: Any) -> tuple[bytes, int]:
        return value, 0

    def deserialize(self, key: Any, value: bytes, flags: int) -> tuple[bytes, int]:
        return value, flags


@contextmanager
def pymemcache_client(port: int, **options: Any) -> Iterator[Client]:
    client = Client(("127.0.0.1", port), default_noreply=False, connect_timeout=10, timeout=10, **options)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def python_memcached(*ports: int) -> Iterator[memcache.Client]:
    client = memcache.Client([f"127.0.0.1:{p}" for p in ports], socket_timeout=10)
    try:
        yield client
    finally:
        client.disconnect_all()


def run_threads(count: int, work) -> list:
    """Run ``work(i)`` on ``count`` threads started together; return results, re-raising failures."""
    barrier = threading.Barrier(count, timeout=30)

    def start(i: int):
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(start, i) for i in range(count)]
        return [f.result(timeout=120) for f in futures]


# -- pymemcache Client ----------------------------------------------------------


def test_pymemcache_set_get_delete(server) -> None:
    with pymemcache_client(server.port) as c:
        assert c.set(b"greeting", b"hello") is True
        assert c.get(b"greeting") == b"hello"
        assert c.get(b"missing") is None
        assert c.get(b"missing", default=b"dflt") == b"dflt"
        assert c.delete(b"greeting") is True
        assert c.delete(b"greeting") is False
        assert c.get(b"greeting") is None


def test_pymemcache_binary_values_round_trip(server) -> None:
    with pymemcache_client(server.port) as c:
        assert c.set(b"bin", BINARY) is True
        assert c.get(b"bin") == BINARY
        every_byte = bytes(range(256)) * 4
        assert c.set(b"all-bytes", every_byte) is True
        assert c.get(b"all-bytes") == every_byte
        assert c.set(b"empty", b"") is True
        assert c.get(b"empty") == b""
        big = bytes(range(256)) * 2048  # 512 KiB
        assert c.set(b"big", big) is True
        assert c.get(b"big") == big
    assert server.store.get(b"bin").value == BINARY


def test_pymemcache_too_large_value_is_refused_and_connection_survives(server) -> None:
    with pymemcache_client(server.port) as c:
        with pytest.raises(MemcacheServerError, match="object too large"):
            c.set(b"huge", b"x" * (1024 * 1024 + 1))
        assert c.get(b"huge") is None
        assert c.set(b"after", b"ok") is True
        assert c.get(b"after") == b"ok"


def test_pymemcache_flags_round_trip(server) -> None:
    with pymemcache_client(server.port, serde=FlagsSerde()) as c:
        assert c.set(b"f", b"v", flags=0xDEADBEEF) is True
        assert c.get(b"f") == (b"v", 0xDEADBEEF)
        assert c.set(b"zero", b"v", flags=0) is True
        assert c.get(b"zero") == (b"v", 0)
        assert c.set(b"max", b"v", flags=2**32 - 1) is True
        assert c.get(b"max") == (b"v", 2**32 - 1)
        # append keeps the flags of the item
        assert c.append(b"f", b"w", flags=5) is True
        assert c.get(b"f") == (b"vw", 0xDEADBEEF)
    assert server.store.get(b"f").flags == 0xDEADBEEF


def test_pymemcache_get_many_and_set_many(server) -> None:
    with pymemcache_client(server.port) as c:
        values = {b"k%d" % i: b"v%d\r\n\x00" % i for i in range(50)}
        assert c.set_many(values) == []
        got = c.get_many([*values, b"nope", b"nada"])
        assert got == values
        assert c.get_many([]) == {}
        assert c.delete_many([b"k0", b"k1", b"nope"]) is True
        assert c.get_many([b"k0", b"k1", b"k2"]) == {b"k2": values[b"k2"]}


def test_pymemcache_gets_and_cas(server) -> None:
    with pymemcache_client(server.port) as c:
        assert c.gets(b"c") == (None, None)
        assert c.cas(b"c", b"x", b"1") is None  # NOT_FOUND
        c.set(b"c", b"one")
        value, token = c.gets(b"c")
        assert value == b"one" and token is not None
        assert c.cas(b"c", b"two", token) is True
        assert c.get(b"c") == b"two"
        assert c.cas(b"c", b"three", token) is False  # EXISTS: token is stale
        assert c.get(b"c") == b"two"
        value, token2 = c.gets(b"c")
        assert value == b"two" and int(token2) > int(token)
        many = c.gets_many([b"c", b"nope"])
        assert list(many) == [b"c"] and many[b"c"] == (b"two", token2)


def test_pymemcache_add_replace_append_prepend(server) -> None:
    with pymemcache_client(server.port) as c:
        assert c.replace(b"r", b"x") is False
        assert c.add(b"r", b"first") is True
        assert c.add(b"r", b"second") is False
        assert c.get(b"r") == b"first"
        assert c.replace(b"r", b"replaced") is True
        assert c.get(b"r") == b"replaced"
        assert c.append(b"r", b"\r\nafter") is True
        assert c.prepend(b"r", b"before\x00") is True
        assert c.get(b"r") == b"before\x00replaced\r\nafter"
        assert c.append(b"absent", b"x") is False
        assert c.prepend(b"absent", b"x") is False
        assert c.get(b"absent") is None


def test_pymemcache_incr_decr(server) -> None:
    with pymemcache_client(server.port) as c:
        assert c.incr(b"n", 1) is None
        assert c.decr(b"n", 1) is None
        c.set(b"n", b"10")
        assert c.incr(b"n", 5) == 15
        assert c.decr(b"n", 3) == 12
        assert c.decr(b"n", 100) == 0  # stops at zero
        c.set(b"n", b"18446744073709551615")
        assert c.incr(b"n", 2) == 1  # 64-bit wrap
        c.set(b"text", b"abc")
        with pytest.raises(MemcacheClientError, match="non-numeric"):
            c.incr(b"text", 1)
        assert c.get(b"text") == b"abc"


def test_pymemcache_touch(server) -> None:
    with pymemcache_client(server.port) as c:
        assert c.touch(b"t", 100) is False
        c.set(b"t", b"v")
        assert c.touch(b"t", 100) is True
        item = server.store.peek(b"t")
        assert item is not None and item.exptime >= server.store.now() + 99
        assert c.touch(b"t", -1) is True  # negative: expired at once
        assert c.get(b"t") is None


def test_pymemcache_flush_all_stats_version(server) -> None:
    with pymemcache_client(server.port) as c:
        assert c.version() == PROTOCOL_VERSION.encode()
        c.set_many({b"a": b"1", b"b": b"2"})
        c.get(b"a")
        c.get(b"zz")
        stats = c.stats()
        assert stats[b"curr_items"] == 2
        assert stats[b"get_hits"] >= 1 and stats[b"get_misses"] >= 1
        assert stats[b"version"] == PROTOCOL_VERSION.encode()
        assert stats[b"curr_connections"] >= 1
        settings = c.stats("settings")
        assert settings[b"item_size_max"] == 1024 * 1024
        assert c.flush_all() is True
        assert c.get_many([b"a", b"b"]) == {}
        assert c.stats()[b"curr_items"] == 0


def test_pymemcache_expiry_is_stored(server) -> None:
    with pymemcache_client(server.port) as c:
        assert c.set(b"e", b"v", expire=1000) is True
        item = server.store.peek(b"e")
        assert item is not None and item.exptime >= server.store.now() + 999
        assert c.set(b"gone", b"v", expire=-1) is True
        assert c.get(b"gone") is None


# -- pymemcache HashClient over three servers -------------------------------------


def test_hash_client_spreads_keys_over_three_servers(start_server) -> None:
    servers = [start_server() for _ in range(3)]
    client = HashClient(
        [("127.0.0.1", s.port) for s in servers],
        default_noreply=False,
        connect_timeout=10,
        timeout=10,
    )
    try:
        values = {b"key-%03d" % i: b"value-%d\r\n\x00" % i for i in range(90)}
        for key, value in values.items():
            assert client.set(key, value) is True
        for key, value in values.items():
            assert client.get(key) == value
        assert client.get_many(list(values)) == values
        # every key lives on exactly one server, and every server holds some
        holders = {key: [i for i, s in enumerate(servers) if s.store.peek(key) is not None] for key in values}
        assert all(len(h) == 1 for h in holders.values()), holders
        assert {h[0] for h in holders.values()} == {0, 1, 2}
        assert sum(len(s.store) for s in servers) == len(values)
        for key in list(values)[:10]:
            assert client.delete(key) is True
            assert client.get(key) is None
    finally:
        client.close()


def test_hash_client_incr_delete_flush(start_server) -> None:
    servers = [start_server() for _ in range(3)]
    client = HashClient([("127.0.0.1", s.port) for s in servers], default_noreply=False, timeout=10)
    try:
        for i in range(30):
            client.set(b"n%d" % i, b"%d" % i)
        for i in range(30):
            assert client.incr(b"n%d" % i, 10) == i + 10
        assert client.delete(b"n0") is True
        assert client.get(b"n0") is None
        client.flush_all()
        assert all(len(s.store) == 0 for s in servers)
    finally:
        client.close()


# -- python-memcached ---------------------------------------------------------


def test_python_memcached_round_trips(server) -> None:
    with python_memcached(server.port) as mc:
        assert mc.set("greeting", "hello")
        assert mc.get("greeting") == "hello"
        assert mc.get("missing") is None
        assert mc.set("bin", BINARY)
        assert mc.get("bin") == BINARY
        assert mc.set("counter", 5)  # python-memcached stores ints with a flag
        assert mc.get("counter") == 5
        assert mc.incr("counter", 10) == 15
        assert mc.decr("counter", 20) == 0
        assert mc.incr("absent") is None
        assert mc.set_multi({"a": "1", "b": "2", "c": "3"}) == []
        assert mc.get_multi(["a", "b", "c", "nope"]) == {"a": "1", "b": "2", "c": "3"}
        assert not mc.add("a", "x")
        assert mc.add("fresh", "x")
        assert mc.replace("a", "A")
        assert mc.append("a", "+")
        assert mc.prepend("a", "-")
        assert mc.get("a") == "-A+"
        assert mc.delete("a")
        assert mc.get("a") is None
        assert mc.touch("b", 100)
        assert mc.get_stats()[0][1]["curr_items"] == str(len(server.store))
        mc.flush_all()
        assert mc.get_multi(["b", "c"]) == {}


def test_python_memcached_pickled_values_and_cas(server) -> None:
    mc = memcache.Client([f"127.0.0.1:{server.port}"], socket_timeout=10, cache_cas=True)
    try:
        assert mc.set("obj", {"a": [1, 2, "three"]})
        assert mc.get("obj") == {"a": [1, 2, "three"]}
        assert mc.gets("obj") == {"a": [1, 2, "three"]}
        assert mc.cas("obj", {"b": 2})
        assert mc.get("obj") == {"b": 2}
        mc.gets("obj")
        with pymemcache_client(server.port) as other:
            other.set(b"obj", b"changed behind its back")
        assert not mc.cas("obj", {"c": 3})  # EXISTS
    finally:
        mc.disconnect_all()


# -- concurrency ----------------------------------------------------------------


def test_concurrent_incr_is_exact(server) -> None:
    threads, per_thread = 50, 200
    with pymemcache_client(server.port) as c:
        c.set(b"hits", b"0")

    def work(i: int) -> list[int]:
        with pymemcache_client(server.port) as c:
            return [c.incr(b"hits", 1) for _ in range(per_thread)]

    results = run_threads(threads, work)
    seen = [v for r in results for v in r]
    # every incr saw a distinct value: no two were applied to the same base
    assert sorted(seen) == list(range(1, threads * per_thread + 1))
    with pymemcache_client(server.port) as c:
        assert c.get(b"hits") == b"%d" % (threads * per_thread)
    assert server.store.get(b"hits").value == b"10000"


def test_concurrent_cas_retry_loop_loses_nothing(server) -> None:
    threads, per_thread = 20, 50
    with pymemcache_client(server.port) as c:
        c.set(b"journal", b"")

    def work(i: int) -> int:
        retries = 0
        with pymemcache_client(server.port) as c:
            for j in range(per_thread):
                while True:
                    value, token = c.gets(b"journal")
                    if c.cas(b"journal", value + b"%d.%d;" % (i, j), token):
                        break
                    retries += 1
        return retries

    retries = sum(run_threads(threads, work))
    with pymemcache_client(server.port) as c:
        final = c.get(b"journal")
    entries = final.split(b";")[:-1]
    assert len(entries) == threads * per_thread
    assert len(set(entries)) == len(entries)
    for i in range(threads):
        mine = [e for e in entries if e.startswith(b"%d." % i)]
        assert mine == [b"%d.%d" % (i, j) for j in range(per_thread)]  # in each thread's order
    stats = server.store.stats()
    assert stats["cas_hits"] == threads * per_thread
    assert stats["cas_badval"] == retries


def test_concurrent_sets_of_distinct_keys_all_land(server) -> None:
    threads, per_thread = 32, 100

    def work(i: int) -> None:
        with pymemcache_client(server.port) as c:
            for j in range(per_thread):
                assert c.set(b"t%d-k%d" % (i, j), b"%d:%d\r\n\x00" % (i, j)) is True

    run_threads(threads, work)
    expected = {b"t%d-k%d" % (i, j): b"%d:%d\r\n\x00" % (i, j) for i in range(threads) for j in range(per_thread)}
    with pymemcache_client(server.port) as c:
        keys = list(expected)
        got = {}
        for start in range(0, len(keys), 200):
            got.update(c.get_many(keys[start : start + 200]))
    assert got == expected
    assert len(server.store) == threads * per_thread
