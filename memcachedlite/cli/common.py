"""What every ``mcl`` command shares: the command group and its options,
the exit-code exceptions, :class:`ClientConfig` and :func:`talking`. The
commands themselves live in :mod:`.cli` (the client verbs), :mod:`.cli_serve`,
:mod:`.cli_bench` and :mod:`.cli_bulk`, each registering on :data:`main`.

Exit codes: 0 success, 1 the key was missing or not stored, 2 bad usage,
3 the server could not be reached, 4 the server answered with an error,
5 the server could not start, 141 standard output closed early (quietly).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from ..errors import UnsupportedPlatform
from ..storage.keys import CONTROL, MAX_KEY
from ..version import __version__

DEFAULT_SERVER = "127.0.0.1:9889"


class NotFound(click.ClickException):
    """The key is missing (or a conditional store was refused)."""

    exit_code = 1


class Unreachable(click.ClickException):
    """No connection to the server, or it stopped answering."""

    exit_code = 3


class ServerReplyError(click.ClickException):
    """The server answered with CLIENT_ERROR or SERVER_ERROR."""

    exit_code = 4


class CannotStart(click.ClickException):
    """``mcl serve`` could not start (port in use, damaged data file...)."""

    exit_code = 5


def _split_servers(values: tuple[str, ...]) -> list[tuple[str, int]]:
    """The servers of ``--server`` options: HOST:PORT, or a Unix socket
    (``/path`` or ``unix:path``), as ``(path, 0)``."""
    from ..server.addresses import parse_server

    servers = []
    for value in values:
        for item in value.replace(",", " ").split():
            try:
                servers.append(parse_server(item))
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--server") from None
    return servers or [("127.0.0.1", 9889)]


class ClientConfig:
    """What the group options say about reaching the server(s)."""

    def __init__(
        self, servers: list[tuple[str, int]], timeout: float, tls_context: Any = None, credentials: bytes | None = None
    ) -> None:
        self.servers = servers
        self.timeout = timeout
        self.tls_context = tls_context  # an ssl.SSLContext with --tls
        self.credentials = credentials  # b"user password" with --credentials

    def only(self, server: tuple[str, int]) -> ClientConfig:
        """The same options for one of the servers."""
        return ClientConfig([server], self.timeout, self.tls_context, self.credentials)

    def authenticate(self, client: Any) -> None:
        """Send the credentials (memcached's text-protocol authentication) on each connection."""
        if self.credentials is None:
            return
        clients = getattr(client, "clients", None)  # a HashClient holds one client per server
        for one in clients.values() if clients is not None else [client]:
            one.set(b"auth", self.credentials, noreply=False)

    def describe(self) -> str:
        from ..server.addresses import format_server

        return ", ".join(map(format_server, self.servers))

    def client(self) -> Any:
        from pymemcache.client.base import Client
        from pymemcache.client.hash import HashClient

        from ..server.addresses import is_unix

        options = dict(connect_timeout=self.timeout, timeout=self.timeout, no_delay=True, default_noreply=False)
        if self.tls_context is not None:
            options["tls_context"] = self.tls_context
        # pymemcache's form of a Unix socket is its path (where it uses neither no_delay nor TLS)
        servers = [host if is_unix(host) else (host, port) for host, port in self.servers]
        if len(servers) == 1:
            return Client(servers[0], **options)
        return HashClient(
            servers, use_pooling=False, ignore_exc=False, retry_attempts=1, allow_unicode_keys=True, **options
        )


@contextmanager
def talking(config: ClientConfig) -> Iterator[Any]:
    """A connected client; connection failures and error replies become exit codes."""
    from pymemcache.exceptions import (
        MemcacheClientError,
        MemcacheError,
        MemcacheIllegalInputError,
        MemcacheUnexpectedCloseError,
    )

    client = config.client()
    try:
        config.authenticate(client)
        yield client
    except MemcacheIllegalInputError as exc:
        raise click.UsageError(str(exc)) from None
    except TimeoutError:
        raise Unreachable(timeout_message(config)) from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise Unreachable(f"cannot reach server {config.describe()}: {reason}") from None
    except MemcacheUnexpectedCloseError:
        raise Unreachable(closed_message(config)) from None
    except MemcacheClientError as exc:
        reason = _reason(exc)
        if reason == "unauthenticated":
            reason += " (the server wants a user and password: see --credentials)"
        raise ServerReplyError(f"the server refused the request: {reason}") from None
    except MemcacheError as exc:
        raise ServerReplyError(f"server error: {_reason(exc)}") from None
    finally:
        client.close()


#: A binary-protocol VERSION request: magic 0x80, opcode 0x0b, no key, no body.
_BINARY_VERSION = b"\x80\x0b" + bytes(22)


def speaks_only_binary(server: tuple[str, int], timeout: float, tls_context: Any = None) -> bool:
    """Whether ``server`` answers a binary-protocol request (magic 0x81):
    asked once it has closed a text-protocol connection (memcachedlite with
    ``-B binary``) or left a text request unanswered (memcached with ``-B
    binary`` waits for the rest of a 24-byte header)."""
    from ..server.addresses import connect, is_unix

    try:
        sock = connect(server, timeout)
    except OSError:
        return False
    try:
        if tls_context is not None and not is_unix(server[0]):
            sock = tls_context.wrap_socket(sock, server_hostname=server[0])
        sock.sendall(_BINARY_VERSION)
        return sock.recv(24)[:1] == b"\x81"
    except OSError:
        return False
    finally:
        sock.close()


#: Seconds a server gets to answer the binary-protocol probe (it answers at once if it speaks it).
_PROBE_TIMEOUT = 1.0


def binary_only_message(config: ClientConfig) -> str | None:
    """The message naming the servers that speak only the binary protocol, if some do."""
    timeout = min(config.timeout, _PROBE_TIMEOUT)
    binary = [server for server in config.servers if speaks_only_binary(server, timeout, config.tls_context)]
    if not binary:
        return None
    names = ClientConfig(binary, config.timeout).describe()
    return (
        f"server {names} speaks only memcached's binary protocol (started with -B binary);"
        " mcl speaks the text protocol: start it with -B auto"
    )


def closed_message(config: ClientConfig) -> str:
    """Why the server(s) closed the connection mid-request, as far as can be told."""
    hint = "" if config.tls_context is not None else " (if it serves TLS, add --tls)"
    return binary_only_message(config) or f"server {config.describe()} closed the connection{hint}"


def timeout_message(config: ClientConfig) -> str:
    """Why the server(s) did not answer in time, as far as can be told."""
    return binary_only_message(config) or f"cannot reach server {config.describe()}: timed out"


def _reason(exc: Exception) -> str:
    """pymemcache puts the server's error text in as bytes; show it as text."""
    text = exc.args[0] if exc.args else ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text) or type(exc).__name__


def binary_stream(name: str) -> Any:
    """The byte stream under sys.stdin/sys.stdout (click 8.5 deprecates its helper)."""
    stream = getattr(sys, name)
    return getattr(stream, "buffer", stream)


def write_fully(stream: Any, data: bytes) -> None:
    """Write all of ``data``: under ``PYTHONUNBUFFERED`` the standard output's
    byte stream is unbuffered, and its ``write`` may take only part (a pipe
    whose reader left takes what fits, and the rest would be lost unseen)."""
    view = memoryview(data)
    while view:
        view = view[stream.write(view) :]


def key_problem(key: bytes) -> str | None:
    """What keeps ``key`` from being a memcached key, in words, or None."""
    # control characters escaped, so that the message is one line of plain text
    shown = repr(key[:60].decode("utf-8", "replace"))[1:-1] + ("..." if len(key) > 60 else "")
    if not key:
        return f"the key is empty; memcached keys are 1 to {MAX_KEY} bytes"
    if len(key) > MAX_KEY:
        return f"key is {len(key)} bytes; memcached keys are at most {MAX_KEY}"
    if key.translate(None, b" \t\n\r\v\f") != key:
        return f'key "{shown}" contains whitespace; memcached keys have no spaces or control characters'
    if key.translate(None, CONTROL) != key:
        return f'key "{shown}" contains a control character; memcached keys have no spaces or control characters'
    return None


def key_for(key: str) -> Any:
    """The key as the client wants it, once it is known to be a memcached
    key (a usage error says what is wrong with it otherwise): bytes for one
    server (any byte is kept); str for several, because pymemcache's
    HashClient hashes a bytes key as its repr and would place it apart from
    the same key set as str by other Python programs."""
    problem = key_problem(os.fsencode(key))
    if problem:
        raise click.UsageError(problem)
    if len(current_config().servers) > 1:
        return key
    return os.fsencode(key)


#: The hint that goes with the server's ``object too large for cache``.
TOO_LARGE_HINT = "the server's --max-item-size (1m by default; memcached's -I) raises the limit"


class OutputClosed(Exception):
    """Standard output was closed before all of it was written (``mcl dump | head``)."""


EXISTING_FILE = click.Path(exists=True, dir_okay=False)


def file_option(flag: str, envvar: str, help: str, **options: Any) -> Callable:
    """An option naming a file that must exist (certificates, keys, credentials),
    its variable named in the help when click is not asked to show it."""
    if not options.get("show_envvar"):
        help = f"{help}  [env: {envvar}]"
    return click.option(flag, type=EXISTING_FILE, default=None, envvar=envvar, help=help, **options)


SHOWN = dict(show_default=True, show_envvar=True)


#: The exit status when standard output closes early: a program killed by
#: SIGPIPE (128 + 13) shows it, as coreutils' ``yes | head`` does.
OUTPUT_CLOSED_STATUS = 141


class Mcl(click.Group):
    """The ``mcl`` group: what any of its commands may run into, said in one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UnsupportedPlatform as exc:  # the server-side commands, on Windows
            raise CannotStart(str(exc)) from None
        except (OutputClosed, BrokenPipeError):
            _quiet_exit_on_closed_output()


def _quiet_exit_on_closed_output() -> None:
    """Standard output went away (``mcl dump | head``): end quietly, with the
    status a program killed by SIGPIPE has, as ``head`` users expect of
    every program before it in the pipe. What is still buffered for
    standard output goes to /dev/null, so flushing it at exit says nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a test's captured output)
        pass
    sys.exit(OUTPUT_CLOSED_STATUS)


def _print_version(ctx: click.Context) -> None:
    """``mcl --version``: the release and which build runs (see :mod:`memcachedlite.buildinfo`)."""
    from .. import buildinfo  # imports the compiled modules to look at them: only when asked

    click.echo(f"memcachedlite, version {__version__} ({buildinfo.describe()})")
    ctx.exit()


@click.group(cls=Mcl, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    "-s",
    "servers",
    multiple=True,
    envvar="MCL_SERVER",
    metavar="HOST:PORT|PATH",
    help=(
        "Server to talk to (a Unix socket: /path or unix:path); repeat it (or give a comma list)"
        " to spread keys over several."
        f"  [default: {DEFAULT_SERVER}; env: MCL_SERVER]"
    ),
)
@click.option("--timeout", default=5.0, show_default=True, envvar="MCL_TIMEOUT", help="Seconds to wait for the server.")
@click.option(
    "--tls",
    is_flag=True,
    envvar="MCL_TLS",
    help="Connect over TLS (implied by the other --tls options).  [env: MCL_TLS]",
)
@file_option("--tls-ca", "MCL_TLS_CA", "CA certificate(s) to verify the server with, instead of the system's.")
@file_option("--tls-cert", "MCL_TLS_CLIENT_CERT", "Client certificate, for a server started with --tls-ca.")
@file_option("--tls-key", "MCL_TLS_CLIENT_KEY", "Private key of --tls-cert, if not in that file.")
@file_option("--credentials", "MCL_CREDENTIALS", "Authenticate with the first user:password line of this file.")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, _, shown: _print_version(ctx) if shown else None,
    help="Show the version and the build (pure Python or mypyc), and exit.",
)
@click.pass_context
def main(
    ctx: click.Context,
    servers: tuple[str, ...],
    timeout: float,
    tls: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    credentials: str | None,
) -> None:
    """memcachedlite: a memcached-compatible server with durable storage, and its client."""
    tls_context = None
    if tls or tls_ca or tls_cert or tls_key:
        if tls_key and not tls_cert:
            raise click.UsageError("--tls-key needs --tls-cert")
        from ..server.tls import client_context

        try:
            tls_context = client_context(tls_ca, tls_cert, tls_key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise click.UsageError(f"cannot load the TLS files: {getattr(exc, 'strerror', None) or exc}") from None
    secret = None
    if credentials:
        from ..protocols.auth import AuthFileError, read_auth_file

        try:
            user, password = read_auth_file(credentials)[0]
        except AuthFileError as exc:
            raise click.UsageError(str(exc)) from None
        secret = user + b" " + password
    ctx.obj = ClientConfig(_split_servers(servers), timeout, tls_context, secret)


# -- the client ---------------------------------------------------------------


def current_config() -> ClientConfig:
    return click.get_current_context().find_object(ClientConfig)
