"""memcachedlite.testing: servers in background threads of the test process,
their options, their clean stop, their fault switches; launch.build_server;
``mcl serve --no-data-file``."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError, MemcacheUnexpectedCloseError

from memcachedlite import Store, default_registry
from memcachedlite.server.build import LaunchError, UsageProblem, build_server, parse_size
from memcachedlite.server.config import ServerConfig
from memcachedlite.testing import (
    DISK_FULL,
    BackgroundServer,
    ExternalServer,
    join_address,
    serve_in_background,
    server_factory,
    split_address,
)
from tests.conftest import ROOT, Raw
from tests.test_security import PKI


def refused(port: int) -> bool:
    """True if nothing listens on ``port`` of 127.0.0.1 any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def settings_of(client: Client) -> dict[bytes, bytes]:
    return client.stats("settings")


def test_a_server_in_the_background_serves_and_stops_cleanly() -> None:
    threads_before = set(threading.enumerate())
    with serve_in_background() as server:
        assert server.host == "127.0.0.1" and server.port > 0
        assert server.address == f"127.0.0.1:{server.port}"
        client = server.client()
        assert client.set("greeting", b"hello") is True
        assert server.store.get(b"greeting").value == b"hello"
        server.store.set(b"other", b"from the store")
        assert client.get("other") == b"from the store"
        assert set(threading.enumerate()) > threads_before  # the accept loop, a worker, the sweeper
        port = server.port
    assert set(threading.enumerate()) <= threads_before
    assert refused(port)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.store


def test_it_stops_cleanly_when_the_test_fails_inside() -> None:
    threads_before = set(threading.enumerate())
    with pytest.raises(KeyError), serve_in_background() as server:
        server.client().set("k", b"v")
        port = server.port
        raise KeyError("the test's own failure")
    assert set(threading.enumerate()) <= threads_before and refused(port)


def test_many_servers_at_once_each_with_its_own_data() -> None:
    threads_before = set(threading.enumerate())
    servers = [BackgroundServer().start() for _ in range(12)]
    ports = [s.port for s in servers]
    try:
        assert len({s.port for s in servers}) == 12
        for n, server in enumerate(servers):
            server.client().set("who", str(n))
        assert [s.client().get("who") for s in servers] == [str(n).encode() for n in range(12)]
    finally:
        for server in servers:
            server.stop()
    assert set(threading.enumerate()) <= threads_before
    assert all(refused(port) for port in ports)


def test_memory_only_by_default_and_stats_settings_say_so() -> None:
    with serve_in_background() as server:
        assert server.store.log is None and not server.persistent
        settings = settings_of(server.client())
        assert settings[b"memory_only"] == b"yes" and settings[b"data_file"] == b""


def test_persistent_servers_keep_their_data_across_a_restart(tmp_path: Path) -> None:
    data_file = tmp_path / "cache.txt"
    with serve_in_background(data_file=data_file, fsync="always") as server:
        assert server.persistent
        client = server.client()
        client.set("k", b"kept", expire=3600, flags=5)
        assert settings_of(client)[b"memory_only"] == b"no"
        old_store = server.store
        server.restart()
        assert server.store is not old_store  # replayed from the file
        with pytest.raises(MemcacheUnexpectedCloseError):
            client.get("k")  # a restart closes every connection
        assert client.gets("k") is not None and client.get("k") == b"kept"
        server.restart(keep_data=False)
        assert server.client().get("k") is None
    s = Store(data_file)
    try:
        assert len(s) == 0  # a new, empty file
    finally:
        s.close()


def test_persistent_true_uses_a_temporary_data_file_removed_on_stop() -> None:
    with serve_in_background(persistent=True) as server:
        path = Path(server.config.data_file)
        server.client().set("k", b"v")
        server.restart()
        assert server.store.get(b"k").value == b"v"
        assert path.exists()
    assert not path.parent.exists()


def test_every_serve_option_by_keyword(tmp_path: Path) -> None:
    auth = tmp_path / "users"
    auth.write_text("alice:secret\n")
    auth.chmod(0o600)
    options = dict(
        memory_limit=2,
        no_evict=True,
        max_item_size="2k",
        max_connections=5,
        idle_timeout=30,
        read_timeout=3,
        backlog=16,
        dialect="lite",
        modules=[str(ROOT / "examples" / "upper.py")],
        auth_file=auth,
    )
    with serve_in_background(**options) as server:
        raw = Raw(server.port)
        try:
            assert raw.ask(b"get k\r\n") == b"CLIENT_ERROR unauthenticated\r\n"
            assert raw.ask(b"set auth 0 0 12\r\nalice secret\r\n") == b"STORED\r\n"
            assert raw.ask(b"set k 0 0 5\r\nhello\r\n") == b"STORED\r\n"
            assert raw.ask(b"upper k\r\n") == b"VALUE k 0 5\r\nHELLO\r\nEND\r\n"  # the loaded verb
            raw.send(b"get k\r\n")
            assert [raw.readline() for _ in range(3)] == [b"VALUE k 5\r\n", b"HELLO\r\n", b"END\r\n"]  # lite
            assert raw.ask(b"set big 3000\r\n" + b"x" * 3000 + b"\r\n").startswith(b"SERVER_ERROR object too large")
            stats = dict(line.split(b" ")[1:] for line in raw.ask(b"stats settings\r\n").splitlines()[:-1])
        finally:
            raw.close()
            default_registry.remove("upper")  # loaded into the process's registry, as --load does
    assert stats[b"maxbytes"] == b"2097152" and stats[b"evictions"] == b"off"
    assert stats[b"item_size_max"] == b"2048" and stats[b"maxconns"] == b"5" and stats[b"idle_timeout"] == b"30"
    assert stats[b"dialect"] == b"lite" and stats[b"auth_enabled_ascii"] == str(auth).encode()


@pytest.mark.external
def test_tls_by_keyword(tmp_path: Path) -> None:
    from memcachedlite.server.tls import client_context

    pki = PKI(tmp_path)
    with serve_in_background(tls_cert=pki.pem("server"), tls_key=pki.key("server")) as server:
        client = server.client(tls_context=client_context(pki.pem("ca")))
        assert client.set("k", b"over tls") and client.get("k") == b"over tls"
        assert settings_of(client)[b"ssl_enabled"] == b"yes"


def test_build_server_refuses_bad_options_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with serve_in_background() as taken, pytest.raises(LaunchError, match="cannot listen on 127.0.0.1"):
        build_server(ServerConfig(port=taken.port, data_file=tmp_path / "data.txt"))
    assert not (tmp_path / "data.txt").exists()
    with pytest.raises(UsageProblem, match="need --tls-cert"):
        build_server(ServerConfig(tls_key=tmp_path / "key.pem"))
    with pytest.raises(UsageProblem, match="not a size"):
        build_server(ServerConfig(max_item_size="12q"))
    with pytest.raises(LaunchError, match="cannot load nonexistent_module_xyz"):
        build_server(ServerConfig(modules=["nonexistent_module_xyz"]))
    assert parse_size("512k") == 524288 and parse_size(7) == 7 and parse_size(" 1M ") == 1048576


def test_one_config_object_builds_servers_and_keywords_change_it(tmp_path: Path) -> None:
    shared = ServerConfig(memory_limit=8, max_item_size="2k", dialect="lite")
    with serve_in_background(shared) as first, serve_in_background(shared, max_item_size="4k") as second:
        assert first.config == shared and second.config == shared.replace(max_item_size="4k")
        assert first.store.memory_limit == second.store.memory_limit == 8 * 1024 * 1024
        assert first.server.settings.max_item_size == 2048 and second.server.settings.max_item_size == 4096
        assert first.client().set("k", b"v") and second.client().get("k") is None  # two servers
    with pytest.raises(TypeError, match="unknown server option.*max_item"):
        ServerConfig.of(max_item=1)
    assert ServerConfig(modules=["a", "b"]).modules == ("a", "b")  # hashable, as a frozen config is
    assert ServerConfig(data_file=tmp_path / "d", no_data_file=True).path is None


def test_building_and_stopping_a_server_changes_nothing_process_wide(tmp_path: Path, monkeypatch) -> None:
    """The worker threads' small stack is theirs alone, and ``--load`` leaves
    ``sys.path`` as it found it (the module is still imported from the
    current directory, as ``python -m`` would)."""
    import sys
    import threading

    (tmp_path / "verbs_of_mine.py").write_text(
        "from memcachedlite import command\n\n"
        "@command('mine_ping')\n"
        "def mine_ping(ctx, args, data):\n"
        "    return b'PONG\\r\\n'\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    path_before = list(sys.path)
    stack_before = threading.stack_size()
    try:
        with serve_in_background(modules=["verbs_of_mine"]) as server:
            assert server.client().raw_command(b"mine_ping", b"\r\n") == b"PONG"
            assert threading.stack_size() == stack_before  # while workers run, too
            started_elsewhere: list[int] = []
            other = threading.Thread(target=lambda: started_elsewhere.append(threading.stack_size()))
            other.start()
            other.join()
            assert started_elsewhere == [stack_before]
        assert sys.path == path_before
        assert threading.stack_size() == stack_before
    finally:
        default_registry.remove("mine_ping")
        sys.modules.pop("verbs_of_mine", None)


def test_mcl_serve_no_data_file(spawn, tmp_path: Path) -> None:
    proc = spawn("--no-data-file")
    raw = Raw(proc.port)
    try:
        assert raw.ask(b"set k 0 0 1\r\nv\r\n") == b"STORED\r\n"
        settings = raw.ask(b"stats settings\r\n")
        assert b"STAT memory_only yes\r\n" in settings and b"STAT fsync none\r\n" in settings
    finally:
        raw.close()
    assert proc.terminate() == 0
    assert not (tmp_path / "data.txt").exists()
    assert "data in memory only" in proc.output()


# -- faults -------------------------------------------------------------------------


@pytest.fixture
def server():  # noqa: F811  (this module's own: conftest's in-process server has no faults)
    with serve_in_background() as running:
        yield running


def test_fail_writes_answers_server_error_and_changes_nothing(server: BackgroundServer) -> None:
    client = server.client()
    client.set("k", b"before")
    with server.faults.fail_writes():
        assert server.faults.active == ["fail_writes"]
        for write in (
            lambda: client.set("k", b"after"),
            lambda: client.delete("k"),
            lambda: client.incr("n", 1),
            lambda: client.touch("k", 10),
        ):
            with pytest.raises(MemcacheServerError, match=DISK_FULL):
                write()
        assert client.get("k") == b"before"  # reads still work
        raw = Raw(server.port)
        try:
            assert raw.ask(b"ms k 1\r\nx\r\n") == b"SERVER_ERROR " + DISK_FULL.encode() + b"\r\n"
            assert raw.ask(b"set k 0 0 1 noreply\r\nx\r\nmn\r\n") == b"MN\r\n"  # silenced, and nothing stored
        finally:
            raw.close()
        assert client.get("k") == b"before"
    assert server.faults.active == []
    assert client.set("k", b"after") and client.get("k") == b"after"
    server.faults.fail_writes("out of memory storing object")
    with pytest.raises(MemcacheServerError, match="out of memory"):
        client.add("new", b"v")


def test_fail_writes_holds_across_a_restart_and_from_before_start() -> None:
    """The failure is the store's; a server built anew (a restart of a
    persistent server, or the first start) is given it too."""
    server = BackgroundServer(persistent=True)
    server.faults.fail_writes()
    with server.start():
        client = server.client()
        with pytest.raises(MemcacheServerError, match=DISK_FULL):
            client.set("k", b"v")
        server.restart()
        client = server.client()
        with pytest.raises(MemcacheServerError, match=DISK_FULL):
            client.set("k", b"v")
        server.faults.reset()
        assert client.set("k", b"v") and client.get("k") == b"v"


def test_drop_connection_sends_half_a_reply_then_closes(server: BackgroundServer) -> None:
    server.store.set(b"k", b"0123456789" * 10)
    whole = b"VALUE k 0 100\r\n" + b"0123456789" * 10 + b"\r\nEND\r\n"
    server.faults.drop_connection(times=2, verbs=["get"])
    raw = Raw(server.port)
    try:
        assert raw.ask(b"version\r\n").startswith(b"VERSION")  # not a chosen verb: untouched
        raw.send(b"get k\r\n")
        assert raw.closed_by_peer()
        assert raw.buf == whole[: len(whole) // 2]
    finally:
        raw.close()
    raw = Raw(server.port)
    try:
        raw.send(b"get k\r\n")
        assert raw.closed_by_peer() and raw.buf and whole.startswith(raw.buf) and raw.buf != whole
    finally:
        raw.close()
    assert server.faults.active == []  # used up
    assert server.client().get("k") == b"0123456789" * 10


def test_refuse_connections_keeps_open_ones_and_reopens_the_same_port(server: BackgroundServer) -> None:
    port = server.port
    client = server.client()
    client.set("k", b"v")
    with server.faults.refuse_connections():
        assert refused(port)
        assert client.get("k") == b"v"  # the connection made before still works
        assert server.faults.active == ["refuse_connections"]
        server.faults.refuse_connections()  # twice is harmless
    assert server.port == port and not refused(port)
    assert server.client().get("k") == b"v"


def test_slow_holds_chosen_verbs_back(server: BackgroundServer) -> None:
    impatient = server.client(timeout=0.3)
    server.faults.slow(30, verbs=["get"])
    assert server.client().set("k", b"v")  # not slowed: 30 s would time this 5 s client out
    with pytest.raises(socket.timeout):
        impatient.get("k")  # held back far longer than the client waits
    server.faults.reset()  # cuts the waiting command short
    assert server.client().get("k") == b"v"
    with pytest.raises(ValueError):
        server.faults.slow(-1)


def test_stop_cuts_a_delay_short_and_joins_every_thread() -> None:
    threads_before = set(threading.enumerate())
    server = BackgroundServer().start()
    server.faults.slow(600)
    raw = Raw(server.port)
    try:
        raw.send(b"version\r\n")
        server.stop()  # would hang for ten minutes if the delay were a sleep
    finally:
        raw.close()
    assert set(threading.enumerate()) <= threads_before


def test_restart_keeps_or_loses_memory_only_data(server: BackgroundServer) -> None:
    client = server.client()
    client.set("k", b"v")
    port = server.port
    server.faults.fail_writes()
    server.restart()
    assert server.port == port and server.faults.active == ["fail_writes"]  # faults stay
    with pytest.raises(MemcacheUnexpectedCloseError):
        client.get("k")
    assert client.get("k") == b"v"
    server.faults.reset()
    server.restart(keep_data=False)
    assert server.client().get("k") is None and len(server.store) == 0


def test_clients_that_follow_restarts_connect_again_by_themselves(tmp_path: Path) -> None:
    with serve_in_background(data_file=tmp_path / "cache.txt") as server:
        following = server.client(follow_restarts=True, timeout=2)
        plain = server.client()
        following.set("k", b"v")
        assert plain.get("k") == b"v"
        server.restart()
        assert following.get("k") == b"v"  # replayed from the file, no error first
        with pytest.raises(MemcacheUnexpectedCloseError):
            plain.get("k")
        server.restart(keep_data=False)
        assert following.get("k") is None
    assert following.sock is None  # closed with the server


def test_external_server_has_no_faults() -> None:
    with serve_in_background() as server:
        external = ExternalServer(server.address)
        assert (external.host, external.port) == ("127.0.0.1", server.port)
        external.client(follow_restarts=True).set("k", b"v")  # accepted; nothing here restarts it
        external.reset()
        assert external.client().get("k") is None
        with pytest.raises(RuntimeError, match="fault injection needs the in-process"):
            _ = external.faults
        external.stop()
    assert split_address("[::1]:11211") == ("::1", 11211) and join_address("::1", 11211) == "[::1]:11211"
    with pytest.raises(ValueError):
        split_address("localhost")


own = server_factory(memory_limit=3)


def test_server_factory_gives_a_fixture_with_its_options(own: BackgroundServer) -> None:
    assert settings_of(own.client())[b"maxbytes"] == 3 * 1024 * 1024


def test_a_port_taken_while_refusing_is_reported_and_can_be_retried() -> None:
    with BackgroundServer() as server:
        assert repr(server) == f"<BackgroundServer {server.address}>"
        server.faults.refuse_connections()
        squatter = socket.socket()
        try:
            squatter.bind(("127.0.0.1", server.port))
            squatter.listen()
            with pytest.raises(RuntimeError, match=f"cannot listen on {server.address} again"):
                server.faults.accept_connections()
        finally:
            squatter.close()
        server.faults.accept_connections()
        assert server.client().set("k", b"v") and server.faults.active == []
    assert repr(server) == "<BackgroundServer stopped>"
