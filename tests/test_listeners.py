"""Where the server listens (issue 23, items 4 and 5): a Unix domain socket
(``mcl serve -s PATH -a MODE``) reached by pymemcache, pylibmc, Django and
libmemcached's tools, and several TCP addresses (memcached's ``-l`` list,
IPv6 included) served by one server: one store, one connection limit, one
stop. Only 127.0.0.1 and ::1 are bound; the IPv6 tests fail, saying why,
where the kernel has no IPv6 loopback (a container without IPv6)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import socketserver
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pylibmc
import pytest
from click.testing import CliRunner
from pymemcache.client.base import Client

from memcachedlite.cli import main
from memcachedlite.server.addresses import describe, format_server, interface, parse_listen, parse_server
from memcachedlite.server.build import LaunchError, UsageProblem, build_server
from memcachedlite.server.config import ServerConfig
from memcachedlite.server.tcp import TOO_MANY_CONNECTIONS, MemcacheUnixServer
from memcachedlite.testing import BackgroundServer, serve_in_background
from tests.conftest import ROOT, Raw, free_port
from tests.test_cli import wait_until
from tests.test_security import PKI, TLSRaw
from tests.test_testing_api import refused

WAIT = 10.0

pytestmark = pytest.mark.usefixtures("no_mcl_environment")


@pytest.fixture
def ipv6_loopback() -> None:
    """These tests need the kernel's IPv6 loopback (::1): without it they
    fail saying so (CI must not pass them by skipping), as a missing
    Debian program does."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.fail(f"this kernel has no IPv6 loopback (::1), which these tests need: {exc}")


needs_ipv6 = pytest.mark.usefixtures("ipv6_loopback")


class UnixRaw(Raw):
    """The raw client over a Unix socket."""

    def __init__(self, path: str | Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(os.fspath(path))
        self.buf = b""


def ask_once(client: Raw, request: bytes) -> bytes:
    try:
        return client.ask(request)
    finally:
        client.close()


def assert_turned_away(client: Raw) -> None:
    """The connection is refused past the connection limit, in memcached's words."""
    try:
        assert client.closed_by_peer() and client.buf == TOO_MANY_CONNECTIONS
    finally:
        client.close()


def settings_of(client: Raw) -> dict[str, str]:
    reply = client.ask(b"stats settings\r\n").decode()
    return dict(line.split(" ", 2)[1:] for line in reply.splitlines() if line.startswith("STAT "))


def pymemcache_unix(path: str | Path) -> Client:
    return Client(os.fspath(path), connect_timeout=WAIT, timeout=WAIT, default_noreply=False)


def mode_of(path: str | Path) -> int:
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode)
    return stat.S_IMODE(info.st_mode)


# -- mcl serve as a real process --------------------------------------------------------


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCL_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


class Serve:
    """``mcl serve ARGS`` as a subprocess, its log in a file, started once it
    logs where it listens."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log_path = tmp_path / f"serve-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "memcachedlite", "serve", "--no-data-file", "--cpu", "none", *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path)
        deadline = time.monotonic() + 20
        while "listening on" not in self.output():
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.02)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def listening(self) -> str:
        line = next(line for line in self.output().splitlines() if "listening on" in line)
        return line.split("listening on ", 1)[1].split(", data in", 1)[0]

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            self._log.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    started: list[Serve] = []

    def start(*args: str) -> Serve:
        started.append(Serve(tmp_path, *args))
        return started[-1]

    yield start
    for one in started:
        one.close()


def refused_start(tmp_path: Path, *args: str) -> tuple[int, str]:
    """``mcl serve ARGS`` that must not start: its exit code and its one error line."""
    done = subprocess.run(
        [sys.executable, "-m", "memcachedlite", "serve", "--no-data-file", "--cpu", "none", *args],
        capture_output=True,
        timeout=60,
        env=_env(),
        cwd=tmp_path,
    )
    text = done.stderr.decode(errors="replace")
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    return done.returncode, errors[0]


def libmemcached(tool: str, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which(tool)
    assert binary, f"{tool} is not installed (apt-get install libmemcached-tools)"
    return subprocess.run([binary, *args], capture_output=True, timeout=60)


# -- a Unix socket ----------------------------------------------------------------------


@pytest.mark.external
def test_a_unix_socket_alone_is_served_by_every_client_and_removed_on_a_clean_stop(serve, tmp_path: Path) -> None:
    path = tmp_path / "mcl.sock"
    server = serve("-s", str(path))
    assert server.listening() == f"unix:{path}"  # -s alone: no TCP listener
    assert mode_of(path) == 0o700  # memcached's default -a
    raw = UnixRaw(path)
    settings = settings_of(raw)
    raw.close()
    assert (settings["tcpport"], settings["inter"]) == ("0", "NULL")  # no TCP listener

    client = pymemcache_unix(path)
    assert client.set("greeting", b"hello") and client.get("greeting") == b"hello"
    client.close()
    pylib = pylibmc.Client([str(path)])  # pylibmc's form of a socket: its path
    assert pylib.get("greeting") == b"hello"
    pylib.set("from-pylibmc", "x")
    pylib.disconnect_all()

    # libmemcached's tools spell a socket server as its path
    servers = f"--servers={path}"
    stats = libmemcached("memcstat", servers)
    assert stats.returncode == 0 and b"curr_items: 2" in stats.stdout, stats
    value = tmp_path / "copied"
    value.write_bytes(b"a file's content")
    assert libmemcached("memccp", servers, str(value)).returncode == 0
    cat = libmemcached("memccat", servers, "copied")
    assert (cat.returncode, cat.stdout) == (0, b"a file's content\n")  # memccat ends the value with a newline
    assert libmemcached("memcflush", servers).returncode == 0
    assert ask_once(UnixRaw(path), b"get copied\r\n") == b"END\r\n"

    assert server.terminate() == 0
    assert not path.exists()  # removed on a clean stop


def test_a_socket_and_tcp_when_a_port_is_given_share_one_store(serve, tmp_path: Path) -> None:
    path = tmp_path / "mcl.sock"
    server = serve("-s", str(path), "-a", "0770", "--port", "0")
    tcp, unix = server.listening().split(", ")
    assert tcp.startswith("127.0.0.1:") and unix == f"unix:{path}"
    assert mode_of(path) == 0o770
    port = int(tcp.rsplit(":", 1)[1])
    assert ask_once(Raw(port), b"set k 0 0 3\r\ntcp\r\n") == b"STORED\r\n"
    assert ask_once(UnixRaw(path), b"get k\r\n") == b"VALUE k 0 3\r\ntcp\r\nEND\r\n"
    raw = Raw(port)
    settings = settings_of(raw)
    raw.close()
    assert (settings["tcpport"], settings["inter"]) == (str(port), "127.0.0.1")
    assert server.terminate() == 0
    assert not path.exists() and refused(port)


def test_a_socket_a_live_server_answers_on_is_refused_and_a_stale_one_replaced(tmp_path: Path) -> None:
    path = tmp_path / "mcl.sock"
    with serve_in_background(unix_socket=path) as live:
        code, error = refused_start(tmp_path, "-s", str(path))
        assert code == 5 and f"unix:{path}" in error and "another server is listening on it" in error
        assert live.client().set("k", b"still served")
        assert ask_once(UnixRaw(path), b"get k\r\n").startswith(b"VALUE k")

    stale = socket.socket(socket.AF_UNIX)  # a server that was killed leaves its file behind
    stale.bind(os.fspath(path))
    stale.close()
    assert path.exists()
    with serve_in_background(unix_socket=path) as server:
        assert server.client().set("k", b"v")
    assert not path.exists()

    path.write_text("not a socket")
    code, error = refused_start(tmp_path, "-s", str(path))
    assert code == 5 and "a file that is not a socket is in the way" in error
    assert path.read_text() == "not a socket"
    too_long = tmp_path / ("x" * 120)
    code, error = refused_start(tmp_path, "-s", str(too_long))
    assert code == 5 and "cannot listen on unix:" in error and "too long" in error


def test_a_stop_removes_its_own_socket_file_only(tmp_path: Path) -> None:
    path = tmp_path / "mcl.sock"
    first = BackgroundServer(unix_socket=path).start()
    path.unlink()  # someone removed it: a new server may take the path
    with serve_in_background(unix_socket=path) as second:
        first.stop()  # the file there now is the second server's
        assert second.client().set("k", b"v")
        path.unlink()
    assert not path.exists()  # and the second one's stop finds nothing to remove


def test_a_server_too_busy_to_accept_is_still_a_live_one(tmp_path: Path) -> None:
    path = tmp_path / "mcl.sock"
    busy = socket.socket(socket.AF_UNIX)
    busy.bind(os.fspath(path))
    busy.listen(0)
    waiting = []
    try:
        while True:  # fill its queue: a connect now waits instead of being answered
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            waiting.append(client)
            client.connect(os.fspath(path))
    except BlockingIOError:
        pass
    try:
        with pytest.raises(LaunchError, match="another server is listening on it"):
            build_server(ServerConfig(unix_socket=path))
    finally:
        for client in waiting:
            client.close()
        busy.close()
    assert path.exists()


def test_a_port_another_socket_listens_on_first_fails_at_listen(tmp_path: Path) -> None:
    """Two sockets bound to one port with SO_REUSEADDR: the second to listen is refused."""
    from memcachedlite import MemcacheServer, Store
    from memcachedlite.server.listeners import ListenError, peer_name

    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", 0))
    port = squatter.getsockname()[1]
    server = MemcacheServer(("127.0.0.1", 0), Store(None), extra_addresses=[("127.0.0.1", port)])
    try:
        server.server_close()
        server.socket = socket.socket()
        server.server_bind()
        squatter.listen()
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            server.server_activate()
    finally:
        server.server_close()
        squatter.close()
    closed = socket.socket(socket.AF_UNIX)
    closed.close()
    assert peer_name(closed, "") == "unix:"  # a client gone before it is named


@pytest.mark.external
def test_a_bad_mask_and_tls_on_a_socket_only_are_usage_errors(tmp_path: Path) -> None:
    code, error = refused_start(tmp_path, "-s", str(tmp_path / "s"), "-a", "0800")
    assert code == 2 and "octal" in error
    pki = PKI(tmp_path)
    tls = ("--tls-cert", pki.pem("server"), "--tls-key", pki.key("server"))
    code, error = refused_start(tmp_path, "-s", str(tmp_path / "s"), *tls)
    assert code == 2 and "TLS" in error and "--unix-socket alone" in error
    with pytest.raises(UsageProblem, match="octal mode"):
        build_server(ServerConfig(unix_socket=tmp_path / "s", unix_mask=0o1777))
    assert not (tmp_path / "s").exists()


def test_the_handler_names_a_unix_client_and_limits_it_as_any_other(tmp_path: Path, caplog) -> None:
    path = tmp_path / "mcl.sock"
    caplog.set_level("DEBUG", logger="memcachedlite.server.tcp")
    with serve_in_background(unix_socket=path, unix_mask=0o750, max_connections=1) as server:
        # what stats settings shows as memcached's domain_socket and umask (protocols/stats.py reads them)
        listening = server.server.connection_stats()
        assert (listening["domain_socket"], listening["umask"], listening["host"]) == (str(path), 750, "NULL")
        assert isinstance(server.server, MemcacheUnixServer)
        assert isinstance(server.server, socketserver.ThreadingUnixStreamServer)
        assert (server.address, server.host, server.port, server.unix_socket) == (str(path), str(path), 0, str(path))
        binary = UnixRaw(path)  # the same protocols as over TCP: binary (negotiated), text and meta
        binary.send(struct.pack(">BBHBBHIIQ", 0x80, 0x0B, 0, 0, 0, 0, 0, 0, 0))  # binary VERSION
        assert binary.read_exactly(24)[:2] == b"\x81\x0b"
        binary.close()
        # one connection at a time: wait until its worker is free too (it unregisters, then returns to the pool)
        wait_until(lambda: server.server.connection_stats()["curr_connections"] == 0 == server.server.pool.busy)
        text = UnixRaw(path)
        text.sock.sendall(b"stats settings\r\n")
        settings = b""
        while not settings.endswith(b"END\r\n"):
            chunk = text.sock.recv(65536)
            assert chunk, settings  # closed before the end (turned away?)
            settings += chunk
        assert b"STAT domain_socket %s\r\n" % os.fsencode(path) in settings and b"STAT umask 750\r\n" in settings
        text.close()
        wait_until(lambda: server.server.connection_stats()["curr_connections"] == 0 == server.server.pool.busy)
        first = UnixRaw(path)
        assert first.ask(b"version\r\n").startswith(b"VERSION ") and first.ask(b"mn\r\n") == b"MN\r\n"
        assert_turned_away(UnixRaw(path))
        assert first.ask(b"stats\r\n").count(b"STAT rejected_connections 1\r\n") == 1
        first.close()
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert f"connection from unix:{path} (pid {os.getpid()})" in messages
    assert f"rejected a connection from unix:{path} (pid {os.getpid()})" in messages


@pytest.mark.external
def test_tls_is_served_on_the_tcp_listeners_and_the_socket_stays_plain(tmp_path: Path) -> None:
    from memcachedlite.server.tls import client_context

    pki = PKI(tmp_path)
    other = free_port()
    path = tmp_path / "mcl.sock"
    options = dict(tls_cert=pki.pem("server"), tls_key=pki.key("server"), unix_socket=path)
    with serve_in_background(host=f"127.0.0.1,127.0.0.1:{other}", **options) as server:
        for port in (server.port, other):
            assert ask_once(TLSRaw(port, client_context(pki.pem("ca"))), b"version\r\n").startswith(b"VERSION ")
        assert ask_once(UnixRaw(path), b"version\r\n").startswith(b"VERSION ")


def test_the_pytest_helpers_take_a_socket(tmp_path: Path) -> None:
    from memcachedlite.testing import ExternalServer, join_address, split_address

    path = tmp_path / "mcl.sock"
    with serve_in_background(unix_socket=path) as server:
        for address in (str(path), f"unix:{path}"):
            external = ExternalServer(address)
            assert (external.host, external.port, external.address) == (str(path), 0, str(path))
            assert external.client().set("k", b"v") and server.store.get(b"k").value == b"v"
            external.reset()
            assert external.client().get("k") is None
            external.stop()
        server.restart()  # a socket only, still
        assert server.server.addresses == [str(path)] and server.client().set("k", b"v")
        with server.faults.refuse_connections():
            assert not path.exists()
        assert server.client().get("k") == b"v"
    assert split_address("unix:relative.sock") == (os.path.abspath("relative.sock"), 0)
    assert join_address("/run/m.sock", 0) == "/run/m.sock"


# -- Django, and mcl as a client --------------------------------------------------------


@pytest.mark.parametrize("backend", ["PyMemcacheCache", "PyLibMCCache"])
def test_django_with_a_unix_location(tmp_path: Path, backend: str) -> None:
    import django
    from django.conf import settings
    from django.core.cache import caches
    from django.test import override_settings

    if not settings.configured:
        settings.configure()
        django.setup()
    path = tmp_path / "mcl.sock"
    with serve_in_background(unix_socket=path) as server:
        location = {"BACKEND": f"django.core.cache.backends.memcached.{backend}", "LOCATION": f"unix:{path}"}
        with override_settings(CACHES={"default": location}):
            cache = caches["default"]
            try:
                cache.set("greeting", "hello", timeout=60)
                assert cache.get("greeting") == "hello"
                assert cache.add("n", 1) and cache.incr("n") == 2
                assert cache.get("n") == 2
                cache.delete("greeting")
                assert cache.get("greeting") is None
            finally:
                cache.close()
        assert server.store.get(b":1:n").value == b"2"  # Django's key prefix, through the socket


def mcl(*args: str, input: bytes | None = None) -> Any:
    return CliRunner().invoke(main, list(args), input=input, prog_name="mcl")


def test_mcl_talks_to_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "mcl.sock"
    dump = tmp_path / "items.jsonl"
    with serve_in_background(unix_socket=path) as server:
        assert mcl("--server", str(path), "set", "k", "v").exit_code == 0
        result = mcl("--server", f"unix:{path}", "get", "k")
        assert (result.exit_code, result.stdout) == (0, "v")
        result = mcl("--server", str(path), "stats", "--json")
        assert result.exit_code == 0 and f'"{path}"' in result.stdout
        result = mcl("--server", str(path), "dump", str(dump))
        assert result.exit_code == 0 and f"from {path}" in result.stderr
        server.flush()
        assert mcl("--server", str(path), "load", str(dump)).exit_code == 0
        assert server.store.get(b"k").value == b"v"
        result = mcl(
            "--server", str(path), "bench", "--duration", "0.2", "--warmup", "0", "--connections", "1",
            "--processes", "0", "--keys", "20", "--json",
        )  # fmt: skip
        assert result.exit_code == 0 and f'"server": "{path}"' in result.stdout, result.output
    for command in (["get", "k"], ["dump", str(dump)], ["bench", "--duration", "0.1", "--processes", "0"]):
        result = mcl("--server", str(path), *command)
        assert result.exit_code == 3, (command, result.output)
        assert str(path) in result.stderr and "No such file or directory" in result.stderr
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.fspath(path))
    stale.close()
    result = mcl("--server", str(path), "dump", str(dump))
    assert result.exit_code == 3 and "Connection refused" in result.stderr
    result = mcl("--server", "unix:", "get", "k")
    assert result.exit_code == 2 and "names no socket file" in result.stderr


# -- several addresses ------------------------------------------------------------------


def test_the_listen_list_is_read_as_memcached_reads_it() -> None:
    assert parse_listen("127.0.0.1,[::1]", 11211) == [("127.0.0.1", 11211), ("::1", 11211)]
    assert parse_listen(" localhost:1 ; [::1]:2 ,::1,*", 9) == [("localhost", 1), ("::1", 2), ("::1", 9), ("", 9)]
    for bad in ("[::1", "[::1]x", "[]", "host:port", "h:70000", " , "):
        with pytest.raises(ValueError):
            parse_listen(bad, 11211)
    assert interface([("127.0.0.1", 5), ("::1", 5, 0, 0), ("127.0.0.1", 6), "/s"]) == "127.0.0.1,[::1],127.0.0.1:6"
    assert interface(["/s"]) == "NULL"
    assert describe(("::1", 5, 0, 0)) == "[::1]:5" and describe("/s") == "unix:/s"
    assert parse_server("[::1]:5") == ("::1", 5) and format_server(("::1", 5)) == "[::1]:5"
    with pytest.raises(ValueError, match="not HOST:PORT or a Unix socket path"):
        parse_server("localhost")


def test_addresses_with_their_own_ports_are_one_server(tmp_path: Path) -> None:
    second = free_port()
    with serve_in_background(host=f"127.0.0.1,127.0.0.1:{second}", max_connections=2) as server:
        first = server.port
        assert server.server.addresses == [("127.0.0.1", first), ("127.0.0.1", second)]
        with pytest.raises(BlockingIOError):  # no connection waiting on either: socketserver's loop ignores this
            server.server.get_request()
        one, two = Raw(first), Raw(second)
        assert one.ask(b"set k 0 0 1\r\n1\r\n") == b"STORED\r\n"
        assert two.ask(b"incr k 1\r\n") == b"2\r\n"  # one store
        assert_turned_away(Raw(first))  # one connection limit over both listeners
        assert (settings_of(two)["inter"], settings_of(two)["tcpport"]) == (f"127.0.0.1,127.0.0.1:{second}", str(first))
        stats = two.ask(b"stats\r\n")
        assert b"STAT curr_connections 2\r\n" in stats and b"STAT rejected_connections 1\r\n" in stats
        one.close()
        two.close()
        with server.faults.refuse_connections():  # every listener closes, and opens again on its port
            assert refused(first) and refused(second)
        assert ask_once(Raw(second), b"get k\r\n") == b"VALUE k 0 1\r\n2\r\nEND\r\n"
        server.restart()
        assert server.server.addresses == [("127.0.0.1", first), ("127.0.0.1", second)]

        # a stop answers what was received, then closes every listener and connection
        client, idle = Raw(second), Raw(first)
        try:
            assert idle.ask(b"version\r\n").startswith(b"VERSION ")
            client.send(b"get k\r\n")
            wait_until(lambda: server.server.connection_stats()["bytes_read"] >= len(b"version\r\nget k\r\n"))
            server.stop()
            assert client.reply() == b"VALUE k 0 1\r\n2\r\nEND\r\n"
            assert client.closed_by_peer() and idle.closed_by_peer()
        finally:
            client.close()
            idle.close()
    assert refused(first) and refused(second)


@needs_ipv6
def test_ipv4_and_ipv6_loopback_on_one_port(serve, tmp_path: Path) -> None:
    path = tmp_path / "mcl.sock"
    server = serve("-l", "127.0.0.1,[::1]", "--port", "0", "-s", str(path), "-v")
    v4, v6, unix = server.listening().split(", ")
    port = int(v4.rsplit(":", 1)[1])
    assert (v4, v6, unix) == (f"127.0.0.1:{port}", f"[::1]:{port}", f"unix:{path}")  # port 0: one free port for all
    assert ask_once(Raw(port, host="::1"), b"set k 0 0 2\r\nv6\r\n") == b"STORED\r\n"
    raw = Raw(port)
    assert raw.ask(b"get k\r\n") == b"VALUE k 0 2\r\nv6\r\nEND\r\n"
    assert settings_of(raw)["inter"] == "127.0.0.1,[::1]"
    raw.close()
    assert "connection from [::1]:" in server.output()
    assert server.terminate() == 0
    assert not path.exists()


@needs_ipv6
def test_one_connection_limit_across_ipv4_ipv6_and_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "mcl.sock"
    with serve_in_background(host="127.0.0.1,::1", unix_socket=path, max_connections=2) as server:
        v4, v6 = Raw(server.port), Raw(server.port, host="::1")
        for client in (v4, v6):
            assert client.ask(b"version\r\n").startswith(b"VERSION ")
        assert_turned_away(UnixRaw(path))
        v6.close()
        v4.close()


def test_a_bad_or_unavailable_address_stops_the_start(tmp_path: Path) -> None:
    code, error = refused_start(tmp_path, "-l", "127.0.0.1,[::1", "--port", "0")
    assert code == 2 and "'[::1'" in error
    code, error = refused_start(tmp_path, "-l", "127.0.0.1,no-such-host.invalid", "--port", "0")
    assert code == 5 and "cannot listen on no-such-host.invalid" in error
    with serve_in_background() as taken:  # the second address is taken: nothing is left listening or written
        data_file = tmp_path / "data.txt"
        first = free_port()
        config = ServerConfig(host=f"127.0.0.1:{first},127.0.0.1:{taken.port}", data_file=data_file)
        with pytest.raises(LaunchError, match=f"cannot listen on 127.0.0.1:{taken.port}: Address already in use"):
            build_server(config)
        assert refused(first) and not data_file.exists()
    with pytest.raises(LaunchError, match="cannot listen on 192.0.2.1:0: Cannot assign requested address"):
        build_server(ServerConfig(host="192.0.2.1"))  # an address of no interface here: nothing is bound


def test_a_background_server_on_tcp_and_a_socket_is_addressed_by_tcp(tmp_path: Path) -> None:
    with BackgroundServer(host="127.0.0.1", unix_socket=tmp_path / "s") as server:
        assert server.address == f"127.0.0.1:{server.port}" and server.unix_socket == str(tmp_path / "s")
        assert ask_once(UnixRaw(tmp_path / "s"), b"version\r\n").startswith(b"VERSION ")
