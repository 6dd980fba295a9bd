"""Safe on a network: the loopback default and the exposure warning, TLS
(with throwaway certificates made by the ``openssl`` command at test time),
memcached's text-protocol authentication, and memory that stays flat
whatever a client sends."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from click.testing import CliRunner
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError, MemcacheUnexpectedCloseError

from memcachedlite import Session, Settings, Store
from memcachedlite.cli import main
from memcachedlite.protocols.auth import MAX_AUTH_TOKEN, AuthFile, AuthFileError
from memcachedlite.server.tls import client_context, exposure_warning, is_loopback, server_context
from tests.conftest import Raw, Running

UNAUTHENTICATED = b"CLIENT_ERROR unauthenticated\r\n"
AUTH_FAILURE = b"CLIENT_ERROR authentication failure\r\n"
BAD_TOKEN = b"CLIENT_ERROR bad authentication token format\r\n"
AUTH = b"set auth 0 0 12\r\nalice secret\r\n"
WAIT = 10.0


pytestmark = pytest.mark.usefixtures("no_mcl_environment")


# -- throwaway certificates ------------------------------------------------------


class PKI:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it
    signed, plus an unrelated CA, all as PEM files in one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._ca("ca")
        self._ca("other-ca")
        self._leaf("server", "ca", "serverAuth")
        self._leaf("client", "ca", "clientAuth")
        self._leaf("stranger", "other-ca", "clientAuth")

    def pem(self, name: str) -> str:
        return str(self.root / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.root / f"{name}.key")

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.root, check=True, capture_output=True, timeout=60)

    def _ca(self, name: str) -> None:
        self._openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=memcachedlite test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip

    def _leaf(self, name: str, ca: str, usage: str) -> None:
        self._openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        )  # fmt: skip
        (self.root / f"{name}.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        )
        self._openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
            "-extfile", f"{name}.ext", "-out", f"{name}.pem",
        )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start(start_server) -> Callable[..., Running]:
    """Factory: an in-process server on 127.0.0.1 with server options (TLS, auth file...)."""
    return lambda **server_options: start_server(server_options=server_options)


class TLSRaw(Raw):
    """The raw client over TLS."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        super().__init__(port)
        self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")


def pymemcache(port: int, **options: object) -> Client:
    return Client(("127.0.0.1", port), connect_timeout=WAIT, timeout=WAIT, default_noreply=False, **options)


def read_until_closed(sock: socket.socket, wait: float = WAIT) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    sock.settimeout(wait)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data


# -- safe defaults ---------------------------------------------------------------


def test_mcl_serve_listens_on_loopback_only_by_default(spawn) -> None:
    p = spawn()
    assert "listening on 127.0.0.1:" in p.output()
    assert "WARNING" not in p.output()
    assert p.terminate() == 0


def test_listening_on_every_address_without_protection_warns(spawn) -> None:
    p = spawn("--host", "0.0.0.0")
    out = p.output()
    warning = [line for line in out.splitlines() if " WARNING " in line]
    assert len(warning) == 1, out
    assert "0.0.0.0" in warning[0] and "neither TLS nor an auth file" in warning[0]
    assert out.index(" WARNING ") < out.index("listening on")  # said at start-up, before serving
    client = Raw(p.port)  # traffic only to 127.0.0.1
    try:
        assert client.ask(b"version\r\n").startswith(b"VERSION ")
    finally:
        client.close()
    assert p.terminate() == 0


@pytest.mark.parametrize(
    "host, tls, client_certs, auth, says",
    [
        ("127.0.0.1", False, False, False, None),
        ("127.5.6.7", False, False, False, None),
        ("::1", False, False, False, None),
        ("0.0.0.0", False, False, False, "neither TLS nor an auth file"),
        ("192.0.2.10", False, False, False, "neither TLS nor an auth file"),
        ("0.0.0.0", False, False, True, "clear text"),
        ("0.0.0.0", True, False, False, "neither client certificates"),
        ("0.0.0.0", True, True, False, None),
        ("0.0.0.0", True, False, True, None),
    ],
)
def test_exposure_warning(host: str, tls: bool, client_certs: bool, auth: bool, says: str | None) -> None:
    warning = exposure_warning(host, tls=tls, client_certs=client_certs, auth=auth)
    if says is None:
        assert warning is None
    else:
        assert warning is not None and says in warning and host in warning


def test_only_numeric_loopback_addresses_count_as_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1")
    assert not is_loopback("localhost") and not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_loopback_server_logs_no_warning(start, caplog: pytest.LogCaptureFixture) -> None:
    start()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_stats_settings_say_what_is_on(start, pki: PKI, tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.write_text("alice:secret\n")
    auth.chmod(0o600)
    plain = start()
    raw = Raw(plain.port)
    try:
        settings = raw.ask(b"stats settings\r\n")
        general = raw.ask(b"stats\r\n")
    finally:
        raw.close()
    assert b"STAT ssl_enabled no\r\n" in settings and b"STAT auth_enabled_ascii no\r\n" in settings
    assert b"STAT auth_cmds 0\r\n" in general and b"STAT auth_errors 0\r\n" in general
    secure = start(ssl_context=server_context(pki.pem("server"), pki.key("server"), pki.pem("ca")), auth_file=auth)
    raw = TLSRaw(secure.port, client_context(pki.pem("ca"), pki.pem("client"), pki.key("client")))
    try:
        assert raw.ask(b"set auth 0 0 9\r\nalice bad\r\n" + AUTH, replies=2) == AUTH_FAILURE + b"STORED\r\n"
        settings = raw.ask(b"stats settings\r\n")
        general = raw.ask(b"stats\r\n")
    finally:
        raw.close()
    assert b"STAT ssl_enabled yes\r\n" in settings and b"STAT ssl_verify_mode 2\r\n" in settings
    assert b"STAT auth_enabled_ascii %s\r\n" % os.fsencode(auth) in settings
    assert b"STAT auth_cmds 2\r\n" in general and b"STAT auth_errors 1\r\n" in general


# -- TLS -------------------------------------------------------------------------


@pytest.fixture
def tls_server(start, pki: PKI) -> Running:
    return start(ssl_context=server_context(pki.pem("server"), pki.key("server")), read_timeout=2.0)


def test_pymemcache_over_tls(tls_server: Running, pki: PKI) -> None:
    client = pymemcache(tls_server.port, tls_context=client_context(pki.pem("ca")))
    try:
        assert client.set(b"greeting", b"hello over tls") is True
        assert client.get(b"greeting") == b"hello over tls"
        assert client.get_many([b"greeting", b"missing"]) == {b"greeting": b"hello over tls"}
    finally:
        client.close()
    assert tls_server.store.get(b"greeting").value == b"hello over tls"


def test_large_values_and_pipelines_over_tls(tls_server: Running, pki: PKI) -> None:
    raw = TLSRaw(tls_server.port, client_context(pki.pem("ca")))
    try:
        value = os.urandom(1024 * 1024)
        batch = b"".join(b"set k%d 0 0 %d\r\n%s\r\n" % (i, len(value), value) for i in range(3))
        assert raw.ask(batch + b"get k2\r\n", replies=4) == b"STORED\r\n" * 3 + (
            b"VALUE k2 0 %d\r\n%s\r\nEND\r\n" % (len(value), value)
        )
    finally:
        raw.close()


def test_a_plain_text_client_is_refused(tls_server: Running, pki: PKI) -> None:
    plain = Raw(tls_server.port)
    try:
        plain.send(b"set k 0 0 5\r\nhello\r\nget k\r\nversion\r\n")
        answer = read_until_closed(plain.sock)
    finally:
        plain.close()
    assert b"STORED" not in answer and b"VERSION" not in answer and b"END" not in answer
    assert tls_server.store.get(b"k") is None
    # and the server still serves TLS clients
    client = pymemcache(tls_server.port, tls_context=client_context(pki.pem("ca")))
    try:
        assert client.version()
    finally:
        client.close()


def test_a_client_trusting_another_ca_fails_verification(tls_server: Running, pki: PKI) -> None:
    client = pymemcache(tls_server.port, tls_context=client_context(pki.pem("other-ca")))
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.set(b"k", b"v")
    finally:
        client.close()
    assert tls_server.store.get(b"k") is None


def test_a_stalled_handshake_does_not_hold_up_the_accept_loop(tls_server: Running, pki: PKI) -> None:
    silent = [Raw(tls_server.port) for _ in range(3)]  # connect, never say hello
    try:
        started = time.monotonic()
        client = pymemcache(tls_server.port, tls_context=client_context(pki.pem("ca")))
        try:
            assert client.set(b"k", b"v") is True
        finally:
            client.close()
        # served before the first stalled handshake timed out (2 s): not queued behind them
        assert time.monotonic() - started < 2.0
        for s in silent:  # and the stalled handshakes are cut off by the timeout
            assert s.closed_by_peer(wait=WAIT)
    finally:
        for s in silent:
            s.close()


def test_client_certificates_required_with_a_ca(start, pki: PKI) -> None:
    server = start(ssl_context=server_context(pki.pem("server"), pki.key("server"), pki.pem("ca")))
    good = pymemcache(server.port, tls_context=client_context(pki.pem("ca"), pki.pem("client"), pki.key("client")))
    try:
        assert good.set(b"k", b"v") is True
    finally:
        good.close()
    for context in (
        client_context(pki.pem("ca")),  # no certificate at all
        client_context(pki.pem("ca"), pki.pem("stranger"), pki.key("stranger")),  # signed by another CA
    ):
        client = pymemcache(server.port, tls_context=context)
        try:
            # TLS 1.3 reports the refusal on the first read, not in connect()
            with pytest.raises((ssl.SSLError, ConnectionError, MemcacheUnexpectedCloseError)):
                client.set(b"other", b"v")
        finally:
            client.close()
    assert server.store.get(b"other") is None


def test_stop_closes_tls_connections_cleanly(start, pki: PKI) -> None:
    server = start(ssl_context=server_context(pki.pem("server"), pki.key("server")))
    raw = TLSRaw(server.port, client_context(pki.pem("ca")))
    try:
        assert raw.ask(b"version\r\n").startswith(b"VERSION ")
        server.stop()  # wakes the handler blocked in its read; TLS must stay on
        raw.sock.settimeout(WAIT)
        try:
            leftover = raw.sock.recv(65536)
        except (ssl.SSLError, ConnectionError):
            leftover = b""
        assert leftover == b""
    finally:
        raw.close()


def test_past_the_connection_limit_tls_clients_are_closed_without_a_handshake(start, pki: PKI) -> None:
    server = start(ssl_context=server_context(pki.pem("server"), pki.key("server")), max_connections=1)
    first = TLSRaw(server.port, client_context(pki.pem("ca")))
    try:
        assert first.ask(b"version\r\n").startswith(b"VERSION ")
        second = Raw(server.port)
        try:  # no reply: one would need a handshake on the accept loop
            assert read_until_closed(second.sock) == b""
        finally:
            second.close()
        assert first.ask(b"version\r\n").startswith(b"VERSION ")
    finally:
        first.close()
    wait_for(lambda: server.server.connection_stats()["rejected_connections"] == 1, "the rejection count")


def test_mcl_serve_and_client_over_tls(spawn, pki: PKI) -> None:
    p = spawn("--tls-cert", pki.pem("server"), "--tls-key", pki.key("server"))
    assert "(TLS)" in p.output()
    tls = ["-s", f"127.0.0.1:{p.port}", "--tls-ca", pki.pem("ca")]
    runner = CliRunner()
    result = runner.invoke(main, [*tls, "set", "greeting", "hello"], prog_name="mcl")
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, [*tls, "get", "greeting"], prog_name="mcl")
    assert (result.exit_code, result.stdout_bytes) == (0, b"hello")
    result = runner.invoke(main, [*tls, "stats", "settings"], prog_name="mcl")
    assert result.exit_code == 0 and ["ssl_enabled", "yes"] in [line.split() for line in result.stdout.splitlines()]
    # trusting the wrong CA: exit 3 with a one-line reason
    result = runner.invoke(main, ["-s", f"127.0.0.1:{p.port}", "--tls-ca", pki.pem("other-ca"), "get", "greeting"])
    assert result.exit_code == 3 and "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert p.terminate() == 0


def test_mcl_client_certificate_options(spawn, pki: PKI) -> None:
    p = spawn("--tls-cert", pki.pem("server"), "--tls-key", pki.key("server"), "--tls-ca", pki.pem("ca"))
    assert "(TLS with client certificates)" in p.output()
    base = ["-s", f"127.0.0.1:{p.port}", "--tls-ca", pki.pem("ca")]
    runner = CliRunner()
    client_cert = ["--tls-cert", pki.pem("client"), "--tls-key", pki.key("client")]
    result = runner.invoke(main, [*base, *client_cert, "set", "k", "v"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, [*base, "get", "k"])
    assert result.exit_code in (3, 4) and result.stdout_bytes == b""
    result = runner.invoke(main, [*base, "--tls-key", pki.key("client"), "get", "k"])
    assert result.exit_code == 2 and "--tls-key needs --tls-cert" in result.stderr
    assert p.terminate() == 0


@pytest.mark.parametrize(
    "args, exit_code, says",
    [
        (["--tls-key", "{key}"], 2, "need --tls-cert"),
        (["--tls-cert", "{ca_key}"], 5, "cannot load the TLS certificate"),
        (["--tls-cert", "{cert}", "--tls-key", "{ca_key}"], 5, "cannot load the TLS certificate"),
    ],
)
def test_bad_tls_options_stop_the_server_with_one_line(pki: PKI, tmp_path: Path, args, exit_code, says) -> None:
    names = {"key": pki.key("server"), "cert": pki.pem("server"), "ca_key": pki.key("ca")}
    argv = ["serve", "--port", "0", "--data-file", str(tmp_path / "data.txt"), *(a.format(**names) for a in args)]
    result = CliRunner().invoke(main, argv, prog_name="mcl")
    assert result.exit_code == exit_code, result.output
    assert says in result.stderr
    assert not (tmp_path / "data.txt").exists()


# -- authentication: the auth file ------------------------------------------------


def write_auth(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_auth_file_format(tmp_path: Path) -> None:
    auth = AuthFile(write_auth(tmp_path / "auth", "# comment\n\nalice:secret\r\nbob:pa:ss\ncarol:x"))
    assert len(auth) == 3
    assert auth.check(b"alice", b"secret")
    assert auth.check(b"bob", b"pa:ss")  # the password is everything after the first colon
    assert auth.check(b"carol", b"x")  # no final newline: nothing is chopped
    assert not auth.check(b"alice", b"secre")
    assert not auth.check(b"alice", b"secret\r")
    assert not auth.check(b"ALICE", b"secret")
    assert not auth.check(b"bob", b"secret")
    assert not auth.check(b"", b"")
    assert (auth.auth_cmds, auth.auth_errors) == (8, 5)


@pytest.mark.parametrize(
    "text, says",
    [
        ("alice\n", ":1: not a user:password line"),
        ("alice:secret\n:nouser\n", ":2: not a user:password line"),
        ("alice:\n", ":1: not a user:password line"),
        ("alice:two words\n", ":1: user names and passwords cannot hold spaces"),
        ("# only a comment\n\n", "has no user:password lines"),
    ],
)
def test_malformed_auth_files_are_refused(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(AuthFileError, match=says):
        AuthFile(write_auth(tmp_path / "auth", text))


def test_missing_auth_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AuthFileError, match="cannot read auth file .*missing"):
        AuthFile(tmp_path / "missing")


def test_an_auth_file_others_can_read_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_auth(tmp_path / "auth", "alice:secret\n")
    path.chmod(0o644)
    AuthFile(path)
    assert any("can be read by other users" in r.getMessage() for r in caplog.records)


def test_reload_swaps_users_and_keeps_them_on_error(tmp_path: Path) -> None:
    path = write_auth(tmp_path / "auth", "alice:secret\n")
    auth = AuthFile(path)
    write_auth(path, "bob:hunter2\ncarol:x\n")
    assert auth.reload() == 2
    assert auth.check(b"bob", b"hunter2") and not auth.check(b"alice", b"secret")
    write_auth(path, "garbage\n")
    with pytest.raises(AuthFileError):
        auth.reload()
    assert auth.check(b"bob", b"hunter2")  # the users loaded before stay in force


def test_passwords_are_compared_in_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    from memcachedlite.protocols import auth as security

    auth = AuthFile(write_auth(tmp_path / "auth", "alice:secret\nbob:hunter2\ncarol:x\n"))
    calls = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    for user, password in ((b"alice", b"secret"), (b"carol", b"nope"), (b"nobody", b"a" * 500)):
        calls.clear()
        auth.check(user, password)
        # every entry compared, user and password, always as fixed-size digests
        assert calls == [(32, 32)] * 6


# -- authentication: the protocol, on in-memory bytes ------------------------------


@pytest.fixture
def auth_file(tmp_path: Path) -> Path:
    return write_auth(tmp_path / "auth", "alice:secret\nbob:hunter2\n")


@pytest.fixture
def gated(auth_file: Path) -> Iterator[Session]:
    store = Store(None)
    yield Session(store, Settings(), auth=AuthFile(auth_file))
    store.close()


def test_a_meta_set_too_short_to_announce_a_block_is_refused_before_auth(gated: Session) -> None:
    """Found by fuzzing (fuzz/text_session.py): ``ms`` with no length made the
    login gate index past the line's tokens (IndexError out of ``feed``)."""
    assert gated.feed(b"ms\r\nms k\r\nms k 2\r\nhi\r\n") == UNAUTHENTICATED * 3
    assert not gated.authenticated and not gated.closing


def test_every_command_before_auth_is_refused_and_changes_nothing(gated: Session) -> None:
    stream = (
        b"get a\r\n"
        b"version\r\n"
        b"\r\n"
        b"bogus verb\r\n"
        b"delete a noreply\r\n"  # refused even under noreply, as memcached does
        b"add k 0 0 5\r\nhello\r\n"  # the data block is swallowed, not run as a command
        b"append k 0 0 9 noreply\r\nget x\r\nzz\r\n"
        b"set k 5\r\nhello\r\n"  # the lite form is no authentication
        b"cas k 0 0 3 1\r\nabc\r\n"
        b"incr n 1\r\n"
        b"flush_all\r\n"
        b"set k 0 0 big\r\n"  # no length: no block to swallow, as in the dispatch loop
        b"prepend k 0 0 -1\r\n"
        b"quit\r\n"
    )
    assert gated.feed(stream) == UNAUTHENTICATED * 14
    assert not gated.authenticated and not gated.closing
    assert len(gated.store) == 0


def test_good_credentials_authenticate_and_store_nothing(gated: Session) -> None:
    assert gated.feed(b"set anykey 0 0 12\r\nalice secret\r\n") == b"STORED\r\n"
    assert gated.authenticated
    assert len(gated.store) == 0  # the key of the authenticating set is ignored
    assert gated.feed(b"set k 0 0 1\r\nv\r\nget k anykey\r\n") == b"STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"


@pytest.mark.parametrize(
    "token, reply",
    [
        (b"alice wrong", AUTH_FAILURE),
        (b"alice secretx", AUTH_FAILURE),
        (b"mallory secret", AUTH_FAILURE),
        (b"bob secret", AUTH_FAILURE),
        (b"alice", BAD_TOKEN),
        (b"", BAD_TOKEN),
        (b"alice:secret", BAD_TOKEN),
    ],
)
def test_bad_credentials_are_refused(gated: Session, token: bytes, reply: bytes) -> None:
    assert gated.feed(b"set a 0 0 %d\r\n%s\r\nget a\r\n" % (len(token), token)) == reply + UNAUTHENTICATED
    assert not gated.authenticated
    # a later good attempt on the same connection still works
    assert gated.feed(b"set a 0 0 11\r\nbob hunter2\r\nget a\r\n") == b"STORED\r\nEND\r\n"


def test_auth_block_must_end_with_crlf(gated: Session) -> None:
    assert gated.feed(b"set a 0 0 12\r\nalice secretXX") == b"CLIENT_ERROR bad command line termination\r\n"
    assert not gated.authenticated
    assert gated.feed(b"get a\r\n") == UNAUTHENTICATED


def test_auth_pipelined_with_commands_in_one_read(gated: Session) -> None:
    out = gated.feed(b"get k\r\n" + AUTH + b"set k 0 0 1\r\nv\r\nget k\r\n")
    assert out == UNAUTHENTICATED + b"STORED\r\nSTORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"


def test_auth_arriving_byte_by_byte(gated: Session) -> None:
    stream = AUTH + b"get k\r\n"
    out = b"".join(gated.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert out == b"STORED\r\nEND\r\n"


def test_auth_set_honours_noreply(gated: Session) -> None:
    assert gated.feed(b"set a 0 0 9 noreply\r\nalice bad\r\nget k\r\n") == UNAUTHENTICATED
    assert gated.feed(b"set a 0 0 12 noreply\r\nalice secret\r\nget k\r\n") == b"END\r\n"


def test_an_oversized_auth_token_is_swallowed_not_buffered(gated: Session) -> None:
    size = 50 * 1024 * 1024
    assert gated.feed(b"set a 0 0 %d\r\n" % size) == BAD_TOKEN
    assert gated.feed(b"alice secret " * 1000) == b""
    assert len(gated._buf) == 0  # nothing of the block is kept
    gated.feed(b"x" * (size - 13000))
    assert gated.feed(b"\r\nget k\r\n") == UNAUTHENTICATED
    assert gated.feed(b"set a 0 0 %d\r\n%s\r\n" % (MAX_AUTH_TOKEN, b"a" * MAX_AUTH_TOKEN)) == BAD_TOKEN


def test_data_blocks_before_auth_are_swallowed_unread(gated: Session) -> None:
    assert gated.feed(b"append k 0 0 2000000000\r\n") == UNAUTHENTICATED
    for _ in range(4):
        assert gated.feed(b"\x00" * 1_000_000) == b""
        assert len(gated._buf) == 0
    assert gated.pending()


def test_long_lines_close_before_auth(gated: Session) -> None:
    # get may not use its long-line allowance before authenticating
    out = gated.feed(b"get " + b"k " * 2000)
    assert out == b"CLIENT_ERROR line too long\r\n" and gated.closing


def test_sessions_without_auth_do_not_pay_for_it(tmp_path: Path) -> None:
    store = Store(None)
    try:
        session = Session(store)
        assert session.authenticated
        # the class's own methods, no gate in front (a compiled session has no __dict__ at all)
        assert not getattr(session, "__dict__", {}).keys() & {"_run", "pending"}
    finally:
        store.close()


# -- authentication: over the network ----------------------------------------------


@pytest.fixture
def auth_server(start, auth_file: Path) -> Running:
    return start(auth_file=auth_file)


def test_raw_conversation_with_an_auth_server(auth_server: Running, connect) -> None:
    raw = connect(auth_server.port)
    assert raw.ask(b"set k 0 0 1\r\nv\r\n") == BAD_TOKEN
    assert raw.ask(b"get k\r\n") == UNAUTHENTICATED
    assert raw.ask(b"set auth 0 0 11\r\nalice wrong\r\n") == AUTH_FAILURE
    assert raw.ask(AUTH) == b"STORED\r\n"
    assert raw.ask(b"set k 0 0 1\r\nv\r\nget k\r\n", replies=2) == b"STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"
    # authentication is per connection
    other = connect(auth_server.port)
    assert other.ask(b"get k\r\n") == UNAUTHENTICATED
    assert auth_server.store.get(b"k").value == b"v" and auth_server.store.get(b"auth") is None


@pytest.mark.parametrize("noreply", [False, True])
def test_pymemcache_authenticates_with_a_set_first(auth_server: Running, noreply: bool) -> None:
    client = pymemcache(auth_server.port)
    try:
        client.set(b"auth", b"alice secret", noreply=noreply)
        assert client.set(b"k", b"v") is True
        assert client.get(b"k") == b"v"
    finally:
        client.close()


def test_pymemcache_without_credentials_is_refused(auth_server: Running) -> None:
    client = pymemcache(auth_server.port)
    try:
        with pytest.raises(MemcacheClientError, match="unauthenticated"):
            client.get(b"k")
        with pytest.raises(MemcacheClientError, match="authentication failure"):
            client.set(b"auth", b"alice wrong")
    finally:
        client.close()


def test_server_reload_auth(auth_server: Running, auth_file: Path, connect) -> None:
    before = connect(auth_server.port)
    assert before.ask(AUTH) == b"STORED\r\n"
    write_auth(auth_file, "dave:pw\n")
    assert auth_server.server.reload_auth() == 1
    raw = connect(auth_server.port)
    assert raw.ask(AUTH) == AUTH_FAILURE
    assert raw.ask(b"set a 0 0 7\r\ndave pw\r\n") == b"STORED\r\n"
    assert before.ask(b"get k\r\n") == b"END\r\n"  # already authenticated: stays so


def test_a_client_must_authenticate_within_the_read_timeout(start, auth_file: Path, connect) -> None:
    server = start(auth_file=auth_file, read_timeout=0.5)
    silent, slow, authenticated = connect(server.port), connect(server.port), connect(server.port)
    assert authenticated.ask(AUTH) == b"STORED\r\n"
    assert slow.ask(b"get k\r\n") == UNAUTHENTICATED
    assert silent.closed_by_peer(wait=WAIT) and slow.closed_by_peer(wait=WAIT)
    assert authenticated.quiet(1.0)  # idle but authenticated: no idle timeout by default
    assert authenticated.ask(b"get k\r\n") == b"END\r\n"


def test_reload_auth_without_an_auth_file(start) -> None:
    with pytest.raises(RuntimeError, match="no auth file"):
        start().server.reload_auth()


def test_mcl_credentials(auth_server: Running, tmp_path: Path) -> None:
    good = write_auth(tmp_path / "good", "# mine\nbob:hunter2\n")
    bad = write_auth(tmp_path / "bad", "bob:wrong\n")
    where = ["-s", f"127.0.0.1:{auth_server.port}"]
    runner = CliRunner()
    result = runner.invoke(main, [*where, "--credentials", str(good), "set", "k", "v"], prog_name="mcl")
    assert (result.exit_code, result.stdout) == (0, "STORED\n"), result.output
    result = runner.invoke(main, [*where, "--credentials", str(good), "stats"], prog_name="mcl")
    assert result.exit_code == 0 and ["auth_errors", "0"] in [line.split() for line in result.stdout.splitlines()]
    result = runner.invoke(main, [*where, "get", "k"], prog_name="mcl")
    assert result.exit_code == 4 and "unauthenticated" in result.stderr and "--credentials" in result.stderr
    result = runner.invoke(main, [*where, "--credentials", str(bad), "get", "k"], prog_name="mcl")
    assert result.exit_code == 4 and "authentication failure" in result.stderr
    result = runner.invoke(main, [*where, "--credentials", str(tmp_path), "get", "k"], prog_name="mcl")
    assert result.exit_code == 2
    write_auth(bad, "nocolon\n")
    result = runner.invoke(main, [*where, "--credentials", str(bad), "get", "k"], prog_name="mcl")
    assert result.exit_code == 2 and "not a user:password line" in result.stderr


def test_tls_and_auth_together(start, pki: PKI, auth_file: Path) -> None:
    server = start(ssl_context=server_context(pki.pem("server"), pki.key("server")), auth_file=auth_file)
    client = pymemcache(server.port, tls_context=client_context(pki.pem("ca")))
    try:
        with pytest.raises(MemcacheClientError, match="unauthenticated"):
            client.get(b"k")
        assert client.set(b"auth", b"bob hunter2") is True
        assert client.set(b"k", b"v") is True
        assert client.get(b"k") == b"v"
    finally:
        client.close()


def wait_for(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sighup_rereads_the_auth_file(spawn, tmp_path: Path) -> None:
    path = write_auth(tmp_path / "users", "alice:secret\n")
    p = spawn("--auth-file", str(path))
    assert "auth file" in p.output() and "WARNING" not in p.output()
    kept = Raw(p.port)
    try:
        assert kept.ask(AUTH) == b"STORED\r\n"
        write_auth(path, "bob:hunter2\n")
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded: 1 users" in p.output(), "the reload")
        fresh = Raw(p.port)
        try:
            assert fresh.ask(AUTH) == AUTH_FAILURE
            assert fresh.ask(b"set a 0 0 11\r\nbob hunter2\r\n") == b"STORED\r\n"
        finally:
            fresh.close()
        assert kept.ask(b"get k\r\n") == b"END\r\n"
        # a broken file on reload: logged, and bob stays in
        write_auth(path, "no colon here\n")
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "stay in force" in p.output(), "the failed reload")
        fresh = Raw(p.port)
        try:
            assert fresh.ask(b"set a 0 0 11\r\nbob hunter2\r\n") == b"STORED\r\n"
        finally:
            fresh.close()
    finally:
        kept.close()
    assert p.terminate() == 0


def test_mcl_serve_refuses_a_malformed_auth_file(tmp_path: Path) -> None:
    path = write_auth(tmp_path / "users", "alice secret\n")
    argv = ["serve", "--port", "0", "--data-file", str(tmp_path / "data.txt"), "--auth-file", str(path)]
    result = CliRunner().invoke(main, argv, prog_name="mcl")
    assert result.exit_code == 5, result.output
    assert f"{path}:1: not a user:password line" in result.stderr
    assert not (tmp_path / "data.txt").exists()


# -- the data file ---------------------------------------------------------------


def test_the_data_file_stays_private_and_locked_after_compaction(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    store = Store(path)
    try:
        for i in range(100):
            store.set(b"k", b"v%d" % i)
        store.compact()  # a new file is renamed into place: lock and mode must carry over
        assert path.stat().st_mode & 0o777 == 0o600
        with pytest.raises(RuntimeError, match=f"{path} is in use by another running server"):
            Store(path)
        store.set(b"after", b"1")
    finally:
        store.close()
    reopened = Store(path)
    try:
        assert reopened.get(b"k").value == b"v99" and reopened.get(b"after").value == b"1"
    finally:
        reopened.close()


# -- resource safety -------------------------------------------------------------


def rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


def flood(port: int, first: bytes, total: int, chunk: bytes) -> None:
    """Send ``first`` then ``total`` bytes of ``chunk``s; the server may hang up on us."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        try:
            sock.sendall(first)
            for _ in range(total // len(chunk)):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return
        read_until_closed(sock)


def test_memory_stays_flat_whatever_a_client_sends(spawn) -> None:
    p = spawn("--max-item-size", "1m")
    raw = Raw(p.port)
    try:
        assert raw.ask(b"set warm 0 0 5\r\nhello\r\nget warm\r\n", replies=2).endswith(b"END\r\n")
        before = rss(p.proc.pid)
        # a length of 2^40: refused before any data is read; the connection stays usable
        assert raw.ask(b"set k 0 0 1099511627776\r\n") == b"CLIENT_ERROR bad command line format\r\n"
        assert raw.ask(b"version\r\n").startswith(b"VERSION ")
        # megabytes of command line with no newline: an error, then the connection is closed
        flood(p.port, b"", 8 * 1024 * 1024, b"x" * 65536)
        flood(p.port, b"get ", 8 * 1024 * 1024, b"key " * 16384)
        # a length allowed by the protocol but past the item limit: the block is read and dropped
        size = 32 * 1024 * 1024
        big = Raw(p.port)
        try:
            big.send(b"set big 0 0 %d\r\n" % size)
            assert big.reply() == b"SERVER_ERROR object too large for cache\r\n"
            chunk = b"\x00" * (1024 * 1024)
            for _ in range(size // len(chunk)):
                big.send(chunk)
            assert big.ask(b"\r\nget big\r\n") == b"END\r\n"  # in step once the block is swallowed
        finally:
            big.close()
        # data blocks that never come, on many connections: nothing is allocated ahead
        waiting = [Raw(p.port) for _ in range(50)]
        try:
            for w in waiting:
                w.send(b"set k 0 0 1048576\r\n")
            assert raw.ask(b"version\r\n").startswith(b"VERSION ")
            after = rss(p.proc.pid)
        finally:
            for w in waiting:
                w.close()
        assert after - before < 20 * 1024 * 1024, (before, after)
        assert raw.ask(b"get warm\r\n") == b"VALUE warm 0 5\r\nhello\r\nEND\r\n"
    finally:
        raw.close()
    assert p.terminate() == 0


def test_plain_mcl_against_a_tls_server_says_to_add_tls(tls_server: Running) -> None:
    result = CliRunner().invoke(main, ["--server", f"127.0.0.1:{tls_server.port}", "get", "k"])
    assert result.exit_code == 3
    assert "closed the connection (if it serves TLS, add --tls)" in result.output


def test_dump_and_load_log_in_with_credentials(auth_server: Running, tmp_path: Path) -> None:
    creds = write_auth(tmp_path / "creds", "alice:secret\n")
    server = ["--server", f"127.0.0.1:{auth_server.port}", "--credentials", str(creds)]
    runner = CliRunner()
    assert runner.invoke(main, [*server, "set", "k", "v"]).exit_code == 0
    dump = tmp_path / "dump.jsonl"
    result = runner.invoke(main, [*server, "dump", str(dump)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(main, [*server, "delete", "k"]).exit_code == 0
    result = runner.invoke(main, [*server, "load", str(dump)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(main, [*server, "get", "k"]).stdout_bytes == b"v"
    # without credentials the dump says why it cannot
    result = runner.invoke(main, ["--server", f"127.0.0.1:{auth_server.port}", "dump", str(tmp_path / "x.jsonl")])
    assert result.exit_code != 0 and "unauthenticated" in result.output
