"""The ``mcl`` command group: its options, the client plumbing every command
shares (exit-code exceptions, :class:`ClientConfig`, :func:`_talking`) and the
small client verbs (``mcl get``, ``mcl set``, ...). Thin by design: parse
options, call the library or pymemcache, turn failures into one-line messages
and exit codes. The server side (:mod:`.cli_serve`), the benchmark
(:mod:`.cli_bench`) and dump/load (:mod:`.cli_bulk`) register their commands on
the same group, imported at the end of this module.

Exit codes: 0 success, 1 the key was missing or not stored, 2 bad usage,
3 the server could not be reached, 4 the server answered with an error,
5 the server could not start.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import click

from . import __version__

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
    servers = []
    for value in values:
        for item in value.replace(",", " ").split():
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise click.BadParameter(f"{item!r} is not HOST:PORT", param_hint="--server")
            servers.append((host.strip("[]"), int(port)))
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
        return ", ".join(f"{h}:{p}" for h, p in self.servers)

    def client(self) -> Any:
        from pymemcache.client.base import Client
        from pymemcache.client.hash import HashClient

        options = dict(connect_timeout=self.timeout, timeout=self.timeout, no_delay=True, default_noreply=False)
        if self.tls_context is not None:
            options["tls_context"] = self.tls_context
        if len(self.servers) == 1:
            return Client(self.servers[0], **options)
        return HashClient(
            self.servers, use_pooling=False, ignore_exc=False, retry_attempts=1, allow_unicode_keys=True, **options
        )


@contextmanager
def _talking(config: ClientConfig) -> Iterator[Any]:
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
    except (TimeoutError, OSError) as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise Unreachable(f"cannot reach server {config.describe()}: {reason}") from None
    except MemcacheUnexpectedCloseError:
        hint = "" if config.tls_context is not None else " (if it serves TLS, add --tls)"
        raise Unreachable(f"server {config.describe()} closed the connection{hint}") from None
    except MemcacheClientError as exc:
        reason = _reason(exc)
        if reason == "unauthenticated":
            reason += " (the server wants a user and password: see --credentials)"
        raise ServerReplyError(f"the server refused the request: {reason}") from None
    except MemcacheError as exc:
        raise ServerReplyError(f"server error: {_reason(exc)}") from None
    finally:
        client.close()


def _reason(exc: Exception) -> str:
    """pymemcache puts the server's error text in as bytes; show it as text."""
    text = exc.args[0] if exc.args else ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text) or type(exc).__name__


def _binary_stream(name: str) -> Any:
    """The byte stream under sys.stdin/sys.stdout (click 8.5 deprecates its helper)."""
    stream = getattr(sys, name)
    return getattr(stream, "buffer", stream)


def _key(key: str) -> Any:
    """The key as the client wants it: bytes for one server (any byte is
    kept); str for several, because pymemcache's HashClient hashes a bytes
    key as its repr and would place it apart from the same key set as str by
    other Python programs."""
    if len(_config().servers) > 1:
        return key
    return os.fsencode(key)


_file = click.Path(exists=True, dir_okay=False)


def _file_option(flag: str, envvar: str, help: str, **options: Any) -> Callable:
    """An option naming a file that must exist (certificates, keys, credentials),
    its variable named in the help when click is not asked to show it."""
    if not options.get("show_envvar"):
        help = f"{help}  [env: {envvar}]"
    return click.option(flag, type=_file, default=None, envvar=envvar, help=help, **options)


_option = dict(show_default=True, show_envvar=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    "-s",
    "servers",
    multiple=True,
    envvar="MCL_SERVER",
    metavar="HOST:PORT",
    help=(
        "Server to talk to; repeat it (or give a comma list) to spread keys over several."
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
@_file_option("--tls-ca", "MCL_TLS_CA", "CA certificate(s) to verify the server with, instead of the system's.")
@_file_option("--tls-cert", "MCL_TLS_CLIENT_CERT", "Client certificate, for a server started with --tls-ca.")
@_file_option("--tls-key", "MCL_TLS_CLIENT_KEY", "Private key of --tls-cert, if not in that file.")
@_file_option("--credentials", "MCL_CREDENTIALS", "Authenticate with the first user:password line of this file.")
@click.version_option(__version__, prog_name="memcachedlite")
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
        from .security import client_context

        try:
            tls_context = client_context(tls_ca, tls_cert, tls_key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise click.UsageError(f"cannot load the TLS files: {getattr(exc, 'strerror', None) or exc}") from None
    secret = None
    if credentials:
        from .security import AuthFileError, read_auth_file

        try:
            user, password = read_auth_file(credentials)[0]
        except AuthFileError as exc:
            raise click.UsageError(str(exc)) from None
        secret = user + b" " + password
    ctx.obj = ClientConfig(_split_servers(servers), timeout, tls_context, secret)


# -- the client ---------------------------------------------------------------


def _config() -> ClientConfig:
    return click.get_current_context().find_object(ClientConfig)


@main.command()
@click.argument("key")
def get(key: str) -> None:
    """Print the value of KEY (raw bytes); exit 1 if it is missing."""
    config = _config()
    with _talking(config) as client:
        value = client.get(_key(key))
    if value is None:
        raise NotFound(f"{key}: not found")
    out = _binary_stream("stdout")
    out.write(value)
    if out.isatty() and not value.endswith(b"\n"):
        out.write(b"\n")  # keep the prompt off the value; pipes get the exact bytes
    out.flush()


def _store(verb: str, key: str, value: str, ttl: int, flags: int) -> None:
    data = _binary_stream("stdin").read() if value == "-" else os.fsencode(value)
    with _talking(_config()) as client:
        ok = getattr(client, verb)(_key(key), data, expire=ttl, noreply=False, flags=flags)
    if not ok:
        raise NotFound(f"{key}: not stored")
    click.echo("STORED")


_ttl = click.option(
    "--ttl", default=0, show_default=True, type=click.IntRange(0), help="Seconds until the item expires (0: never)."
)
_flags = click.option(
    "--flags",
    default=0,
    show_default=True,
    type=click.IntRange(0, 2**32 - 1),
    help="32-bit client flags kept with the value.",
)


@main.command("set")
@click.argument("key")
@click.argument("value")
@_ttl
@_flags
def set_(key: str, value: str, ttl: int, flags: int) -> None:
    """Store VALUE under KEY ('-' reads the value from standard input)."""
    _store("set", key, value, ttl, flags)


@main.command()
@click.argument("key")
@click.argument("value")
@_ttl
@_flags
def add(key: str, value: str, ttl: int, flags: int) -> None:
    """Store VALUE under KEY only if KEY is not there yet."""
    _store("add", key, value, ttl, flags)


@main.command()
@click.argument("key")
def delete(key: str) -> None:
    """Delete KEY; exit 1 if it was not there."""
    with _talking(_config()) as client:
        deleted = client.delete(_key(key), noreply=False)
    if not deleted:
        raise NotFound(f"{key}: not found")
    click.echo("DELETED")


def _arith(verb: str, key: str, delta: int) -> None:
    with _talking(_config()) as client:
        value = getattr(client, verb)(_key(key), delta, noreply=False)
    if value is None:
        raise NotFound(f"{key}: not found")
    click.echo(value)


@main.command()
@click.argument("key")
@click.argument("delta", default=1, type=click.IntRange(0, 2**64 - 1))
def incr(key: str, delta: int) -> None:
    """Add DELTA (default 1) to the number stored under KEY."""
    _arith("incr", key, delta)


@main.command()
@click.argument("key")
@click.argument("delta", default=1, type=click.IntRange(0, 2**64 - 1))
def decr(key: str, delta: int) -> None:
    """Subtract DELTA (default 1) from the number under KEY, stopping at 0."""
    _arith("decr", key, delta)


@main.command()
@click.argument("key")
@click.argument("ttl", type=click.IntRange(0))
def touch(key: str, ttl: int) -> None:
    """Give KEY a new time to live of TTL seconds (0: never expires)."""
    with _talking(_config()) as client:
        touched = client.touch(_key(key), ttl, noreply=False)
    if not touched:
        raise NotFound(f"{key}: not found")
    click.echo("TOUCHED")


@main.command("flush-all")
@click.option(
    "--delay", default=0, show_default=True, type=click.IntRange(0), help="Seconds before the items are invalidated."
)
def flush_all(delay: int) -> None:
    """Invalidate every item (on every server given)."""
    with _talking(_config()) as client:
        client.flush_all(delay=delay, noreply=False)
    click.echo("OK")


@main.command()
@click.option(
    "--wait",
    default=600.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds to wait for it to finish (0: just start it).",
)
def compact(wait: float) -> None:
    """Compact the data file of the server(s) now, and wait until it is done."""
    config = _config()
    for server in config.servers:
        one = config.only(server)
        with _talking(one) as client:
            before = client.stats()
            reply = client.raw_command("compact", b"\r\n")
            if reply.strip() != b"OK":
                raise ServerReplyError(reply.decode("utf-8", "replace").strip())
            deadline = time.monotonic() + wait
            while wait:
                now = client.stats()
                if int(now[b"compaction_failures"]) > int(before[b"compaction_failures"]):
                    raise ServerReplyError(f"{one.describe()}: the compaction failed; see the server's log")
                if int(now[b"compactions"]) > int(before[b"compactions"]):
                    click.echo(f"{one.describe()}: data file compacted to {now[b'data_file_bytes']} bytes")
                    break
                if time.monotonic() > deadline:
                    raise ServerReplyError(f"{one.describe()}: still compacting after {wait:g} s")
                time.sleep(0.05)
    click.echo("OK")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (server -> {name: value}) for scripts.")
@click.argument("group", required=False, type=click.Choice(["settings"]))
def stats(as_json: bool, group: Optional[str]) -> None:
    """Show the server's statistics."""
    config = _config()
    table = {}
    for server in config.servers:
        one = config.only(server)
        with _talking(one) as client:
            raw = client.stats(*([group] if group else []))
        table[one.describe()] = {_text(k): _text(v) for k, v in raw.items()}
    if as_json:
        click.echo(json.dumps(table, indent=2, sort_keys=False))
        return
    for server, values in table.items():
        if len(table) > 1:
            click.echo(f"[{server}]")
        width = max((len(k) for k in values), default=0)
        for name, value in values.items():
            click.echo(f"{name.ljust(width)}  {value}")


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


# The server side, the benchmark and dump/load live in modules of their own
# (moved there from here) and register their commands on ``main`` when
# imported; importing them here gives ``mcl`` (memcachedlite.cli:main) every
# command. Modules, not names: either side may be imported first.
from . import cli_bench, cli_bulk, cli_serve  # noqa: E402, F401
