"""Issue 14, item by item, on raw sockets against memcachedlite alone: what
each change does to the store, the data file, the counters and the server,
beyond the bytes that tests/test_differential_parity.py compares with
memcached."""

from __future__ import annotations

import base64
import errno
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from memcachedlite import Settings, Store
from memcachedlite.errors import BadCommandLine
from memcachedlite.protocols.session import Session
from memcachedlite.protocols.text import parse_exptime
from memcachedlite.storage.slabs import item_class, largest_class
from tests.conftest import Raw
from tests.test_cli import run_serve

STORED = b"STORED\r\n"
END = b"END\r\n"
OK = b"OK\r\n"
TOO_MANY = b"ERROR Too many open connections\r\n"


def stats(raw: Raw, group: bytes = b"") -> dict[str, str]:
    reply = raw.ask(b"stats%s\r\n" % (b" " + group if group else b""))
    return {k.decode(): v.decode() for _, k, v in (line.split(b" ", 2) for line in reply.split(b"\r\n")[:-2])}


def reopened(running: Any) -> Store:
    """The running server's data file, replayed into a new store after the server stops."""
    path = running.store.log.path
    running.stop()
    running.store.close()
    return Store(path)


# -- 1. exptimes as unsigned 32-bit numbers ---------------------------------------------------


@pytest.mark.parametrize(
    ("token", "value"),
    [
        (b"0", 0),
        (b"100", 100),
        (b"4294967295", -1),
        (b"4294967296", 0),
        (b"4294967396", 100),
        (b"2147483647", 2147483647),
        (b"2147483648", -2147483648),
        (b"-1", -1),
        (b"+5", 5),
        (b"9223372036854775807", -1),
        (b"-9223372036854775808", 0),
        (b"-4294967196", 100),
    ],
)
def test_exptime_is_the_low_32_bits_signed(token: bytes, value: int) -> None:
    assert parse_exptime(token) == value


@pytest.mark.parametrize("token", [b"", b"x", b"1.5", b"9223372036854775808", b"-9223372036854775809", b"--1", b"+-1"])
def test_exptime_outside_a_64_bit_long_is_a_bad_line(token: bytes) -> None:
    with pytest.raises(BadCommandLine):
        parse_exptime(token)


def test_django_dont_cache_set_is_a_logged_delete(start_server) -> None:
    """pylibmc sends timeout -1 as 4294967295: the old value goes, in memory and on disk."""
    running = start_server()
    raw = Raw(running.port)
    try:
        assert raw.ask(b"set k 0 0 3\r\nold\r\n") == STORED
        assert raw.ask(b"set k 0 4294967295 3\r\nnew\r\n") == STORED
        assert raw.ask(b"get k\r\n") == END
        assert raw.ask(b"set t 0 0 1\r\nx\r\ntouch t 4294967295\r\n", replies=2) == STORED + b"TOUCHED\r\n"
        assert raw.ask(b"get t\r\n") == END
        assert raw.ask(b"set kept 0 4294967396 1\r\nx\r\n") == STORED  # 4294967396 is 100 s
        ttl = running.store.peek(b"kept").exptime - running.store.now()
        assert 98 <= ttl <= 100
    finally:
        raw.close()
    store = reopened(running)
    try:
        assert store.peek(b"k") is None and store.peek(b"t") is None
        assert store.peek(b"kept").value == b"x"
    finally:
        store.close()


def test_expired_set_of_an_absent_key_logs_nothing(start_server) -> None:
    running = start_server()
    raw = Raw(running.port)
    try:
        before = running.store.log.size
        assert raw.ask(b"set new 0 4294967295 1\r\nx\r\n") == STORED
        assert running.store.log.size == before
        assert raw.ask(b"get new\r\n") == END
    finally:
        raw.close()


def test_meta_ttl_as_unsigned_32_bits(raw) -> None:
    assert raw.ask(b"ms k 1 T4294967295\r\nx\r\n") == b"HD\r\n"
    assert raw.ask(b"mg k v\r\n") == b"EN\r\n"
    assert raw.ask(b"ms k 1 T4294967396\r\nx\r\n") == b"HD\r\n"
    assert raw.ask(b"mg k t v\r\n") in (b"VA 1 t100\r\nx\r\n", b"VA 1 t99\r\nx\r\n")


# -- 2. stats detail ---------------------------------------------------------------------------


def test_stats_detail_counts_only_while_on(raw) -> None:
    assert raw.ask(b"stats detail dump\r\n") == END
    assert raw.ask(b"set a:1 0 0 1\r\nx\r\nget a:1\r\n", replies=2) == STORED + b"VALUE a:1 0 1\r\nx\r\nEND\r\n"
    assert raw.ask(b"stats detail dump\r\n") == END  # off: nothing counted
    assert raw.ask(b"stats detail on\r\n") == OK
    assert stats(raw, b"settings")["detail_enabled"] == "yes"
    raw.ask(b"get a:1 a:2 b:1\r\nset b:1 0 0 1\r\nx\r\ndelete a:2\r\n", replies=3)
    dump = raw.ask(b"stats detail dump\r\n", replies=3)
    assert dump == b"PREFIX a get 2 hit 1 set 0 del 1\r\nPREFIX b get 1 hit 0 set 1 del 0\r\nEND\r\n"
    assert raw.ask(b"stats detail off\r\n") == OK
    raw.ask(b"get a:1\r\n")
    assert raw.ask(b"stats detail dump\r\n", replies=3) == dump  # kept, no longer counted
    assert raw.ask(b"stats reset\r\n") == b"RESET\r\n"
    assert raw.ask(b"stats detail dump\r\n") == END


def test_stats_detail_counts_a_set_once_its_line_parsed(raw) -> None:
    """As memcached, after the key, flags, exptime (and cas) parse; even if the data is then refused."""
    assert raw.ask(b"stats detail on\r\n") == OK
    raw.ask(b"set s:k x 0 1\r\nx\r\ncas s:k 0 0 1 x\r\nx\r\nset s:%s 0 0 1\r\nx\r\n" % (b"k" * 249), replies=3)
    assert raw.ask(b"stats detail dump\r\n") == END
    refused = raw.ask(b"set s:k 0 0 1\r\nxy\r\n", replies=2)  # the y is then a line of its own
    assert refused == b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"
    raw.ask(b"set s:k 0 0 1\r\nx\r\ncas s:k 0 0 1 1\r\nx\r\n", replies=2)
    assert raw.ask(b"stats detail dump\r\n", replies=2) == b"PREFIX s get 0 hit 0 set 3 del 0\r\nEND\r\n"


def test_stats_detail_never_leaves_a_client_waiting(raw) -> None:
    for line in (b"stats detail\r\n", b"stats detail x\r\n"):
        assert raw.ask(line) == b"CLIENT_ERROR usage: stats detail on|off|dump\r\n"


# -- 3. general stats: the new counters ------------------------------------------------------------


def test_idle_kicks_counts_connections_closed_for_idling(start_server, connect) -> None:
    running = start_server(server_options={"idle_timeout": 0.2})
    idle = connect(running.port)
    assert idle.ask(b"version\r\n").startswith(b"VERSION ")
    assert idle.closed_by_peer(5)
    watcher = connect(running.port)
    assert stats(watcher)["idle_kicks"] == "1"
    assert "idle_kicks" not in stats(connect(start_server().port))  # as memcached: only with a timeout


class _OutOfDescriptorsOnce:
    """A listening socket whose first accept fails as with no file descriptor left."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.failed = False

    def accept(self) -> Any:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        return self._sock.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_listen_disabled_num_counts_accepts_that_ran_out_of_descriptors(start_server, connect) -> None:
    running = start_server()
    flaky = _OutOfDescriptorsOnce(running.server.socket)
    running.server.socket = flaky
    try:
        client = connect(running.port)
        numbers = stats(client)  # served once the next accept succeeds
    finally:
        running.server.socket = flaky._sock
    assert flaky.failed
    assert numbers["listen_disabled_num"] == "1"
    assert int(numbers["time_in_listen_disabled_us"]) > 0
    assert numbers["accepting_conns"] == "1"


# -- 4. refused connections read the refusal --------------------------------------------------------


def _refused_client_reads(sock: socket.socket) -> bytes:
    """What a client that writes to a refused connection (a command in two
    writes, after the refusal has arrived) then reads: closing a socket at once
    makes the second write fail with a broken pipe before the client reads."""
    data = b""
    try:
        sock.recv(1, socket.MSG_PEEK)  # the refusal has arrived (and, closing at once, the FIN)
        sock.sendall(b"get ")
        time.sleep(0.01)  # the server's kernel answers the first write before the second
        sock.sendall(b"k\r\n" * 100)
        while chunk := sock.recv(4096):
            data += chunk
    except (BrokenPipeError, ConnectionResetError) as exc:
        data += b"<%s>" % type(exc).__name__.encode()
    finally:
        sock.close()
    return data


def test_a_burst_past_the_limit_reads_the_refusal_every_time(start_server, connect) -> None:
    running = start_server(server_options={"max_connections": 2})
    held = [connect(running.port) for _ in range(2)]
    for c in held:
        assert c.ask(b"version\r\n").startswith(b"VERSION ")
    burst = [socket.create_connection(("127.0.0.1", running.port), timeout=10) for _ in range(40)]
    assert [_refused_client_reads(sock) for sock in burst] == [TOO_MANY] * 40
    numbers = stats(held[0])
    assert numbers["rejected_connections"] == "40"
    assert numbers["listen_disabled_num"] == "0"  # as memcached: refusals are not listen_disabled


def test_a_refused_client_that_never_closes_is_closed_after_the_linger(start_server, connect) -> None:
    running = start_server(server_options={"max_connections": 1})
    running.server.reaper.linger = 0.2
    held = connect(running.port)
    assert held.ask(b"version\r\n").startswith(b"VERSION ")
    stubborn = connect(running.port)
    assert stubborn.readline() == TOO_MANY
    stubborn.send(b"more\r\n")
    assert stubborn.closed_by_peer(5)
    assert threading.active_count() < 50  # no thread per refused client


# -- 5. HTTP is hung up on --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line", [b"GET / HTTP/1.0\r\n", b"POST /x HTTP/1.1\r\n", b"PUT /x HTTP/1.1\r\n", b"DELETE HTTP/1.1\r\n"]
)
def test_http_request_line_closes_without_a_reply(raw, line: bytes) -> None:
    raw.send(line + b"Host: localhost\r\n\r\n")
    assert raw.closed_by_peer(5)
    assert raw.buf == b""


# -- 6. shutdown ------------------------------------------------------------------------------------


def test_shutdown_when_not_enabled(raw) -> None:
    assert raw.ask(b"shutdown\r\n") == b"ERROR: shutdown not enabled\r\n"
    assert stats(raw, b"settings")["shutdown_command"] == "no"


@pytest.mark.parametrize("line", [b"shutdown\r\n", b"shutdown graceful\r\n"])
def test_shutdown_stops_the_server_cleanly(start_server, line: bytes) -> None:
    running = start_server(settings=Settings(enable_shutdown=True))
    other = Raw(running.port)
    raw = Raw(running.port)
    try:
        assert stats(other, b"settings")["shutdown_command"] == "yes"
        assert raw.ask(b"set k 0 0 1\r\nx\r\n") == STORED
        raw.send(line)
        assert raw.closed_by_peer(5) and raw.buf == b""
        running.thread.join(10)
        assert not running.thread.is_alive()
        assert running.server.stopping.is_set()
    finally:
        raw.close()
        other.close()
    store = reopened(running)
    try:
        assert store.peek(b"k").value == b"x"
    finally:
        store.close()


def test_shutdown_command_from_the_cli_exits_0(spawn) -> None:
    server = spawn("--enable-shutdown")
    raw = Raw(server.port)
    try:
        raw.send(b"shutdown graceful\r\n")
        assert raw.closed_by_peer(10)
    finally:
        raw.close()
    assert server.wait(20) == 0
    assert "stopped; data file flushed" in server.output()


# -- 7. operators' switches and commands ------------------------------------------------------------


VALUE_500K = b"v" * 500_000


def fill(raw: Raw, count: int) -> None:
    """Store ``count`` values of 500 kB as k0, k1..., oldest first."""
    for i in range(count):
        assert raw.ask(b"set k%d 0 0 %d\r\n%s\r\n" % (i, len(VALUE_500K), VALUE_500K)) == STORED


def test_cache_memlimit_evicts_down_to_the_new_limit(start_server) -> None:
    running = start_server()
    raw = Raw(running.port)
    try:
        fill(raw, 40)
        assert raw.ask(b"cache_memlimit 8\r\n") == OK
        numbers = stats(raw)
        assert numbers["limit_maxbytes"] == str(8 * 1024 * 1024)
        assert int(numbers["bytes_in_memory"]) <= 8 * 1024 * 1024  # the limit holds what the items take here
        assert int(numbers["evictions"]) >= 40 - 16
        assert stats(raw, b"settings")["maxbytes"] == str(8 * 1024 * 1024)
        assert raw.ask(b"get k39\r\n").startswith(b"VALUE k39 ")  # the most recent stays
        assert raw.ask(b"get k0\r\n") == END
        left = len(running.store)
    finally:
        raw.close()
    store = reopened(running)
    try:
        assert len(store) == left  # the evictions were logged
    finally:
        store.close()


def test_cache_memlimit_without_eviction_keeps_items_and_refuses_new_ones(start_server) -> None:
    running = start_server(evict=False)
    raw = Raw(running.port)
    try:
        fill(raw, 20)
        assert raw.ask(b"cache_memlimit 8\r\n") == OK
        assert len(running.store) == 20
        # refused for memory: the key's old value goes too, as memcached does
        assert (
            raw.ask(b"set k3 0 0 %d\r\n%s\r\n" % (len(VALUE_500K), VALUE_500K))
            == b"SERVER_ERROR out of memory storing object\r\n"
        )
        assert raw.ask(b"get k3\r\n") == END
    finally:
        raw.close()
    store = reopened(running)
    try:
        assert store.peek(b"k3") is None and store.peek(b"k4") is not None
    finally:
        store.close()


def test_too_large_set_removes_the_old_value_on_disk_too(start_server) -> None:
    running = start_server(settings=Settings(max_item_size=10))
    raw = Raw(running.port)
    try:
        assert raw.ask(b"set k 0 0 3\r\nold\r\nms m 3\r\nold\r\n", replies=2) == STORED + b"HD\r\n"
        too_big = b"x" * 11
        assert raw.ask(b"set k 0 0 11\r\n%s\r\n" % too_big) == b"SERVER_ERROR object too large for cache\r\n"
        assert raw.ask(b"ms m 11\r\n%s\r\n" % too_big) == b"SERVER_ERROR object too large for cache\r\n"
        token = base64.b64encode(b"m")
        assert raw.ask(b"ms %s 3 b\r\nold\r\nms !!! 11 b\r\n%s\r\n" % (token, too_big), replies=2) == (
            b"HD\r\nSERVER_ERROR object too large for cache\r\n"  # a key that does not decode: nothing to remove
        )
        assert raw.ask(b"ms %s 11 b\r\n%s\r\nmg m v\r\n" % (token, too_big), replies=2).endswith(b"EN\r\n")
        assert raw.ask(b"set a 0 0 1\r\nx\r\nappend a 0 0 11\r\n%s\r\n" % too_big, replies=2).startswith(STORED)
        assert raw.ask(b"get k m a\r\n") == b"VALUE a 0 1\r\nx\r\nEND\r\n"  # append keeps its old value
        assert stats(raw)["delete_hits"] == "0"  # a removal, not a counted delete
    finally:
        raw.close()
    store = reopened(running)
    try:
        assert store.peek(b"k") is None and store.peek(b"m") is None and store.peek(b"a").value == b"x"
    finally:
        store.close()


def test_disable_flush_all(start_server) -> None:
    running = start_server(settings=Settings(flush_enabled=False))
    raw = Raw(running.port)
    try:
        assert (
            raw.ask(b"set k 0 0 1\r\nx\r\nflush_all\r\n", replies=2)
            == STORED + b"CLIENT_ERROR flush_all not allowed\r\n"
        )
        assert raw.ask(b"get k\r\n") == b"VALUE k 0 1\r\nx\r\nEND\r\n"
        assert stats(raw)["cmd_flush"] == "1"
        assert stats(raw, b"settings")["flush_enabled"] == "no"
    finally:
        raw.close()


def test_disable_cas(start_server) -> None:
    running = start_server()
    running.store.disable_cas()
    raw = Raw(running.port)
    try:
        assert raw.ask(b"set k 0 0 1\r\nx\r\ngets k\r\n", replies=2) == STORED + b"VALUE k 0 1 0\r\nx\r\nEND\r\n"
        assert raw.ask(b"cas k 0 0 1 0\r\ny\r\n") == b"EXISTS\r\n"
        assert raw.ask(b"get k\r\n") == b"VALUE k 0 1\r\nx\r\nEND\r\n"
        assert stats(raw, b"settings")["cas_enabled"] == "no"
    finally:
        raw.close()


def test_cachedump_lists_the_newest_first_by_slab_class(raw) -> None:
    raw.ask(b"set a 0 0 1\r\nx\r\nset b 0 2000000000 2\r\nxy\r\nset c 0 0 300\r\n%s\r\n" % (b"z" * 300), replies=3)
    raw.ask(b"ms aw== 1 b\r\nx\r\n")  # a key given in base64 is left out, as memcached does
    raw.send(b"stats cachedump 1 0\r\n")
    assert raw.reply() == b"ITEM b [2 b; 2000000000 s]\r\n"
    assert raw.reply() == b"ITEM a [1 b; 0 s]\r\n"
    assert raw.reply() == END
    raw.send(b"stats cachedump 1 1\r\n")
    assert raw.reply() == b"ITEM b [2 b; 2000000000 s]\r\n"
    assert raw.reply() == END
    assert raw.ask(b"stats cachedump 2 0\r\n") == END
    big = item_class(b"c", 300, 0, True, 1024 * 1024)
    raw.send(b"stats cachedump %d 0\r\n" % big)
    assert raw.reply() == b"ITEM c [300 b; 0 s]\r\n"
    assert raw.reply() == END
    assert raw.ask(b"stats cachedump 64 0\r\n") == b"CLIENT_ERROR Illegal slab id\r\n"


def test_slab_classes_are_memcacheds() -> None:
    assert largest_class(1024 * 1024) == 39
    assert item_class(b"k", 1, 0, True, 1024 * 1024) == 1  # header 48, key and NUL 2, value and CRLF 3, cas 8
    assert item_class(b"k", 36, 0, True, 1024 * 1024) == 1  # 96 exactly
    assert item_class(b"k", 37, 0, True, 1024 * 1024) == 2
    assert item_class(b"k", 37, 0, False, 1024 * 1024) == 1  # no cas under -C
    assert item_class(b"k", 33, 1, True, 1024 * 1024) == 2  # flags take 4 bytes


def test_slabs_automove_is_kept_and_shown(raw) -> None:
    assert raw.ask(b"slabs automove 2\r\nslabs automove ratio 0.5\r\n", replies=2) == OK * 2
    settings = stats(raw, b"settings")
    assert settings["slab_automove"] == "2" and settings["slab_automove_ratio"] == "0.50"


def test_serve_switches_show_in_stats_settings(spawn) -> None:
    server = spawn("--enable-shutdown", "--disable-flush-all", "--disable-cas")
    raw = Raw(server.port)
    try:
        settings = stats(raw, b"settings")
        assert (settings["shutdown_command"], settings["flush_enabled"], settings["cas_enabled"]) == ("yes", "no", "no")
        assert raw.ask(b"flush_all\r\n") == b"CLIENT_ERROR flush_all not allowed\r\n"
        assert raw.ask(b"set k 0 0 1\r\nx\r\ngets k\r\n", replies=2) == STORED + b"VALUE k 0 1 0\r\nx\r\nEND\r\n"
    finally:
        raw.close()
    assert server.terminate() == 0


# -- 8. start-up checks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--max-item-size", "1000"), "Item max size cannot be less than 1024 bytes."),
        (("--max-item-size", "1023"), "Item max size cannot be less than 1024 bytes."),
        (("--max-item-size", "1m", "-m", "1"), "Cannot set item size limit higher than 1/2 of memory max."),
        (("--max-item-size", "33m"), "Cannot set item size limit higher than 1/2 of memory max."),
    ],
)
def test_item_size_limits_refuse_to_start(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    done = run_serve(tmp_path, "--port", "0", "--data-file", str(tmp_path / "d.txt"), *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr.decode()
    assert not (tmp_path / "d.txt").exists()


@pytest.mark.parametrize("args", [("--max-item-size", "1024"), ("--max-item-size", "1m", "-m", "2")])
def test_item_size_limits_at_the_edges_start(spawn, args: tuple[str, ...]) -> None:
    server = spawn(*args)
    raw = Raw(server.port)
    try:
        assert stats(raw, b"settings")["item_size_max"] == str(1024 if args[1] == "1024" else 1024 * 1024)
    finally:
        raw.close()
    assert server.terminate() == 0


def test_detail_counts_nothing_when_off() -> None:
    """The per-prefix table stays empty however much is stored and read while off."""
    store = Store()
    try:
        session = Session(store)
        session.feed(b"set a:b 0 0 1\r\nx\r\nget a:b\r\ndelete a:b\r\n" * 10)
        assert store.prefixes.dump() == END and not store.prefixes.enabled
    finally:
        store.close()


def test_a_refused_connection_does_not_hold_the_accept_loop(start_server) -> None:
    """Refused clients that never read nor close: new clients are still answered at once."""
    running = start_server(server_options={"max_connections": 1})
    held = Raw(running.port)
    silent = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(20)]
    try:
        assert held.ask(b"version\r\n").startswith(b"VERSION ")
        late = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        try:
            assert late.recv(100) == TOO_MANY
        finally:
            late.close()
    finally:
        held.close()
        for sock in silent:
            sock.close()
