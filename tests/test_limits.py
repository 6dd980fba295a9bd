"""Under load and abuse: connection limits, the worker pool, memory limits,
expiry reclaiming, timeouts, garbage input, many clients, shutdown under load."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from pymemcache.client.base import Client

from memcachedlite import MemcacheServer, Store
from tests.conftest import Raw


@pytest.fixture
def limited(start_server) -> MemcacheServer:
    """A server that takes at most 3 connections."""
    return start_server(server_options={"max_connections": 3}).server


def stats_of(port: int) -> dict[str, str]:
    c = Raw(port)
    try:
        reply = c.ask(b"stats\r\n")
    finally:
        c.close()
    return {k.decode(): v.decode() for _, k, v in (line.split(b" ", 2) for line in reply.split(b"\r\n")[:-2])}


def test_connections_past_the_limit_are_refused_and_the_others_served(limited, connect) -> None:
    clients = [connect(limited.port) for _ in range(3)]
    for i, c in enumerate(clients):
        assert c.ask(b"set k%d 0 0 1\r\n%d\r\n" % (i, i)) == b"STORED\r\n"
    extra = connect(limited.port)
    assert extra.readline() == b"ERROR Too many open connections\r\n"
    assert extra.closed_by_peer()
    for c in clients:  # existing clients keep being served
        assert c.ask(b"get k0\r\n") == b"VALUE k0 0 1\r\n0\r\nEND\r\n"
    clients[0].close()
    deadline = time.monotonic() + 5
    while limited.connection_stats()["curr_connections"] > 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    again = connect(limited.port)  # a freed place is taken again
    assert again.ask(b"version\r\n").startswith(b"VERSION ")
    s = clients[1].ask(b"stats\r\n")
    assert b"STAT rejected_connections 1\r\n" in s
    assert b"STAT max_connections 3\r\n" in s
    assert b"STAT curr_connections 3\r\n" in s
    assert b"STAT total_connections 4\r\n" in s  # as in memcached, a refused one is not counted


def test_worker_threads_are_reused(limited, connect) -> None:
    for _ in range(10):
        c = Raw(limited.port)
        assert c.ask(b"version\r\n").startswith(b"VERSION")
        c.close()
        deadline = time.monotonic() + 5
        while limited.pool.busy and time.monotonic() < deadline:
            time.sleep(0.005)
    assert limited.pool.size == 1  # ten connections, one thread


def test_no_evict_answers_out_of_memory(start_server) -> None:
    server = start_server(memory_limit=4000, evict=False)
    c = Raw(server.port)
    try:
        replies = [c.ask(b"set k%d 0 0 500\r\n%s\r\n" % (i, b"x" * 500)) for i in range(12)]
        assert replies[0] == b"STORED\r\n"
        assert replies[-1] == b"SERVER_ERROR out of memory storing object\r\n"
        stored = replies.count(b"STORED\r\n")
        assert c.ask(b"get k0\r\n").startswith(b"VALUE k0 ")  # nothing was evicted
        s = c.ask(b"stats\r\n")
        assert b"STAT evictions 0\r\n" in s and b"STAT curr_items %d\r\n" % stored in s
        assert b"STAT store_no_memory %d\r\n" % (12 - stored) in s
    finally:
        c.close()


def test_lru_evicts_the_least_recently_used(tmp_path: Path) -> None:
    store = Store(tmp_path / "data.txt", memory_limit=3500)  # five items of about 650 accounted bytes
    try:
        for i in range(4):
            store.set(b"k%d" % i, b"x" * 500)
        store.get(b"k0")  # k0 becomes the most recently used
        for i in range(4, 8):
            store.set(b"k%d" % i, b"x" * 500)
        keys = set(store.keys())
        assert b"k0" in keys and b"k1" not in keys
        assert store.stats()["evictions"] > 0
        assert store.bytes <= 3500
    finally:
        store.close()


def test_expired_items_are_reclaimed_without_being_asked_for(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    store = Store(tmp_path / "data.txt", clock=lambda: now[0])
    try:
        for i in range(100):
            store.set(b"t%d" % i, b"x" * 100, exptime=10 if i % 2 else 0)
        used = store.bytes
        now[0] += 11
        assert store.reclaim_expired(30) <= 30  # a slice at a time
        while store.reclaim_expired(30):
            pass
        store.reclaim_expired(1000)
        assert len(store) == 50 and store.bytes < used
        stats = store.stats()
        # as memcached counts its LRU crawler's finds: not in reclaimed (memory reused
        # from an expired item at the old end of the LRU), and never read: expired_unfetched
        assert (stats["crawler_reclaimed"], stats["reclaimed"], stats["expired_unfetched"]) == (50, 0, 50)
    finally:
        store.close()


def test_background_sweeper_runs_in_a_served_store(start_server) -> None:
    now = [1_800_000_000.0]
    store = start_server(clock=lambda: now[0]).store
    store.set(b"soon", b"x", exptime=5)
    now[0] += 6
    deadline = time.monotonic() + 5
    while len(store) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(store) == 0


def test_idle_timeout_closes_idle_connections(start_server, connect) -> None:
    c = connect(start_server(server_options={"idle_timeout": 0.3}).port)
    assert c.ask(b"version\r\n").startswith(b"VERSION")
    assert c.closed_by_peer(wait=5)


@pytest.mark.parametrize("partial", [b"get k", b"set k 0 0 10\r\nabc"], ids=["half-a-line", "half-a-block"])
def test_read_timeout_closes_a_stalled_request(start_server, connect, partial: bytes) -> None:
    server = start_server(server_options={"read_timeout": 0.3})
    c, other = connect(server.port), connect(server.port)
    c.send(partial)
    assert c.closed_by_peer(wait=5)
    assert other.ask(b"version\r\n").startswith(b"VERSION")  # idle is fine: no idle timeout
    assert server.store.peek(b"k") is None


def _garbage(rng: random.Random) -> bytes:
    pieces = [
        b"get",
        b"set",
        b"gets",
        b"cas",
        b"incr",
        b"touch",
        b"gat",
        b" ",
        b"\r\n",
        b"\n",
        b"0",
        b"1",
        b"-1",
        b"99999999999999999999999",
        b"noreply",
        b"\x00",
        b"\xff",
        b"k",
        b"x" * 300,
        b"stats",
        b"append",
    ]
    while True:
        out = b"".join(
            rng.choice(pieces) if rng.random() < 0.6 else bytes([rng.randrange(256)])
            for _ in range(rng.randrange(1, 60))
        )
        if b"flush" not in out and b"sentinel" not in out:
            return out


def test_garbage_never_kills_the_server_nor_changes_stored_data(server, connect) -> None:
    keeper = connect(server.port)
    assert keeper.ask(b"set sentinel 3 0 4\r\nsafe\r\n") == b"STORED\r\n"
    rng = random.Random(20261124)
    for round_ in range(40):
        c = Raw(server.port, timeout=2)
        try:
            for _ in range(rng.randrange(1, 6)):
                c.send(_garbage(rng))
            c.sock.shutdown(socket.SHUT_WR)
            c.closed_by_peer(wait=2)  # drain whatever it answers
        except OSError:
            pass
        finally:
            c.close()
        assert keeper.ask(b"get sentinel\r\n") == b"VALUE sentinel 3 4\r\nsafe\r\nEND\r\n", round_
    assert keeper.ask(b"version\r\n").startswith(b"VERSION")


def test_200_concurrent_connections_exact_counters(server) -> None:
    counts: Counter = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []
    start_line = threading.Barrier(201)

    def client(n: int) -> None:
        mine: Counter = Counter()
        try:
            c = Client(("127.0.0.1", server.port), default_noreply=False, timeout=30, connect_timeout=30)
            start_line.wait(30)
            rng = random.Random(n)
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                key = b"key%d" % rng.randrange(500)
                op = rng.random()
                if op < 0.6:
                    hit = c.get(key) is not None
                    mine["cmd_get"] += 1
                    mine["get_hits" if hit else "get_misses"] += 1
                elif op < 0.9:
                    assert c.set(key, b"v%d" % n)
                    mine["cmd_set"] += 1
                else:
                    mine["delete_hits" if c.delete(key) else "delete_misses"] += 1
            c.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        with lock:
            counts.update(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(200)]
    for t in threads:
        t.start()
    start_line.wait(30)
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    s = stats_of(server.port)
    for name in ("cmd_get", "get_hits", "get_misses", "cmd_set", "delete_hits", "delete_misses"):
        assert int(s[name]) == counts[name], name
    assert int(s["total_connections"]) >= 200
    assert sum(counts.values()) > 1000


@pytest.mark.slow
def test_sigterm_under_load_keeps_every_acknowledged_write(spawn, tmp_path: Path) -> None:
    proc = spawn()
    acked: dict[bytes, bytes] = {}
    lock = threading.Lock()
    stop_ = threading.Event()

    def writer(n: int) -> None:
        try:
            c = Raw(proc.port, timeout=10)
        except OSError:
            return
        try:
            i = 0
            while not stop_.is_set():
                key, value = b"w%d-%d" % (n, i % 20), b"%d" % i
                c.send(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
                if c.readline() != b"STORED\r\n":
                    return
                with lock:
                    acked[key] = value
                i += 1
        except (OSError, ConnectionError):
            pass
        finally:
            c.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    stop_.set()
    for t in threads:
        t.join(10)
    assert len(acked) > 50
    again = spawn(data_file=proc.data_file)
    c = Client(("127.0.0.1", again.port), default_noreply=False)
    try:
        got = c.get_many(list(acked))
    finally:
        c.close()
    for key, value in acked.items():
        assert int(got[key]) >= int(value), key  # the acknowledged value or a later one
    assert again.terminate() == 0


@pytest.mark.external
def test_memcstat_reads_the_stats(server) -> None:
    done = subprocess.run(
        ["memcstat", f"--servers=127.0.0.1:{server.port}"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "curr_connections" in done.stdout and "limit_maxbytes" in done.stdout
    assert f"Server: 127.0.0.1 ({server.port})" in done.stdout


def test_stats_has_every_key_the_prometheus_exporter_reads(raw) -> None:
    general = raw.ask(b"stats\r\n").decode()
    for key in [
        "uptime",
        "time",
        "version",
        "rusage_user",
        "rusage_system",
        "bytes",
        "limit_maxbytes",
        "curr_items",
        "total_items",
        "bytes_read",
        "bytes_written",
        "curr_connections",
        "total_connections",
        "rejected_connections",
        "conn_yields",
        "listen_disabled_num",
        "evictions",
        "reclaimed",
        "store_too_large",
        "store_no_memory",
        "lru_crawler_starts",
        "direct_reclaims",
        "crawler_items_checked",
        "crawler_reclaimed",
        "moves_to_cold",
        "moves_to_warm",
        "moves_within_lru",
        "accepting_conns",
        "cmd_flush",
        "cmd_set",
        "cas_badval",
    ]:
        assert f"\r\nSTAT {key} " in "\r\n" + general, key
    for op in ("get", "delete", "incr", "decr", "cas", "touch"):
        assert f"STAT {op}_hits " in general and f"STAT {op}_misses " in general
    settings = raw.ask(b"stats settings\r\n").decode()
    for key in (
        "maxconns",
        "lru_crawler",
        "lru_crawler_sleep",
        "lru_crawler_tocrawl",
        "lru_maintainer_thread",
        "hot_lru_pct",
        "warm_lru_pct",
        "hot_max_factor",
        "warm_max_factor",
    ):
        assert f"STAT {key} " in settings, key
    # the exporter reads total_malloced from stats slabs (its client merges the three answers)
    assert raw.ask(b"stats items\r\n") == b"END\r\n"
    assert raw.ask(b"stats slabs\r\n") == b"STAT active_slabs 0\r\nSTAT total_malloced 0\r\nEND\r\n"
    assert raw.ask(b"stats reset\r\n") == b"RESET\r\n"
