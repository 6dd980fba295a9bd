"""The ``mcl`` command: run a server (``mcl serve``) or use one from a shell
(``mcl get``, ``mcl set``, ...). Thin by design: parse options, call the
library or pymemcache, turn failures into one-line messages and exit codes.

Exit codes: 0 success, 1 the key was missing or not stored, 2 bad usage,
3 the server could not be reached, 4 the server answered with an error,
5 the server could not start.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import click

from . import __version__

log = logging.getLogger("memcachedlite")

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

    def __init__(self, servers: list[tuple[str, int]], timeout: float) -> None:
        self.servers = servers
        self.timeout = timeout

    def describe(self) -> str:
        return ", ".join(f"{h}:{p}" for h, p in self.servers)

    def client(self) -> Any:
        from pymemcache.client.base import Client
        from pymemcache.client.hash import HashClient

        options = dict(connect_timeout=self.timeout, timeout=self.timeout, no_delay=True, default_noreply=False)
        if len(self.servers) == 1:
            return Client(self.servers[0], **options)
        return HashClient(self.servers, use_pooling=False, ignore_exc=False, retry_attempts=1, **options)


@contextmanager
def _talking(config: ClientConfig) -> Iterator[Any]:
    """A connected client; connection failures and error replies become exit codes."""
    from pymemcache.exceptions import MemcacheClientError, MemcacheError, MemcacheIllegalInputError

    client = config.client()
    try:
        yield client
    except MemcacheIllegalInputError as exc:
        raise click.UsageError(str(exc)) from None
    except (OSError, socket.timeout) as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise Unreachable(f"cannot reach server {config.describe()}: {reason}") from None
    except MemcacheClientError as exc:
        raise ServerReplyError(f"the server refused the request: {_reason(exc)}") from None
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


def _key(key: str) -> bytes:
    return os.fsencode(key)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    "-s",
    "servers",
    multiple=True,
    envvar="MCL_SERVER",
    metavar="HOST:PORT",
    help=f"Server to talk to; repeat it (or give a comma list) to spread keys over several.  [default: {DEFAULT_SERVER}; env: MCL_SERVER]",
)
@click.option("--timeout", default=5.0, show_default=True, envvar="MCL_TIMEOUT", help="Seconds to wait for the server.")
@click.version_option(__version__, prog_name="memcachedlite")
@click.pass_context
def main(ctx: click.Context, servers: tuple[str, ...], timeout: float) -> None:
    """memcachedlite: a memcached-compatible server with durable storage, and its client."""
    ctx.obj = ClientConfig(_split_servers(servers), timeout)


# -- the server ---------------------------------------------------------------


def _load_module(spec: str) -> None:
    """Import a user's module (dotted name or path to a .py file) so its verbs register."""
    if spec.endswith(".py") or os.sep in spec:
        name = os.path.splitext(os.path.basename(spec))[0]
        module_spec = importlib.util.spec_from_file_location(name, spec)
        if module_spec is None or module_spec.loader is None:
            raise click.BadParameter(f"cannot load {spec}", param_hint="--load")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        importlib.import_module(spec)
    log.info("loaded verbs from %s", spec)


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    text = str(value).strip().lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    if not number.isdigit() or int(number) <= 0:
        raise click.BadParameter(f"{value!r} is not a size like 1048576, 512k or 1m")
    return int(number) * scale


_size_option = dict(callback=_size, metavar="SIZE", show_default=True, show_envvar=True)
_option = dict(show_default=True, show_envvar=True)


@main.command()
@click.option("--host", default="127.0.0.1", envvar="MCL_HOST", help="Address to listen on.", **_option)
@click.option("--port", "-p", default=9889, type=click.IntRange(0, 65535), envvar="MCL_PORT", help="TCP port (0: any free port).", **_option)
@click.option("--data-file", default="data.txt", type=click.Path(dir_okay=False), envvar="MCL_DATA_FILE", help="Append-only data file, replayed at start.", **_option)
@click.option("--fsync", type=click.Choice(["always", "everysec", "no"]), default="everysec", envvar="MCL_FSYNC", help="When the data file is forced to disk (see README).", **_option)
@click.option("--dialect", type=click.Choice(["memcached", "lite"]), default="memcached", envvar="MCL_DIALECT", help="Reply shapes: memcached's, or the seed assignment's.", **_option)
@click.option("--max-item-size", default="1m", envvar="MCL_MAX_ITEM_SIZE", help="Largest value accepted: bytes, or with a k or m suffix.", **_size_option)
@click.option("--memory-limit", "-m", default=64, type=click.IntRange(1), envvar="MCL_MEMORY_LIMIT", help="Memory for items, in MiB; least recently used items are evicted past it.", **_option)
@click.option("--no-evict", "-M", is_flag=True, envvar="MCL_NO_EVICT", help="Refuse new items when memory is full instead of evicting.", **_option)
@click.option("--max-connections", "-c", default=1024, type=click.IntRange(1), envvar="MCL_MAX_CONNECTIONS", help="Connections served at once; more are refused.", **_option)
@click.option("--idle-timeout", default=0.0, type=click.FloatRange(0), envvar="MCL_IDLE_TIMEOUT", help="Close connections idle this many seconds (0: never).", **_option)
@click.option("--read-timeout", default=10.0, type=click.FloatRange(0), envvar="MCL_READ_TIMEOUT", help="Close a connection that stalls this long in the middle of a request (0: never).", **_option)
@click.option("--backlog", default=1024, type=click.IntRange(1), envvar="MCL_BACKLOG", help="Listen queue length.", **_option)
@click.option("--compact-min-size", default="64m", envvar="MCL_COMPACT_MIN_SIZE", help="Compact the data file once it is past this size and twice the live data.", **_size_option)
@click.option("--repair", is_flag=True, envvar="MCL_REPAIR", help="Salvage a damaged data file (keeping a backup) before starting.", **_option)
@click.option("--load", "modules", multiple=True, metavar="MODULE", envvar="MCL_LOAD", help="Import MODULE (a dotted name or a .py file) to register its verbs; repeatable.", show_envvar=True)
@click.option("--simulate-delay", is_flag=True, envvar="MCL_SIMULATE_DELAY", help="Sleep 0-2 s before each set and 0-1 s before each get (the seed's concurrency demo).", **_option)
@click.option("--verbose", "-v", count=True, help="Also log each connection opening and closing.")
def serve(
    host: str,
    port: int,
    data_file: str,
    fsync: str,
    dialect: str,
    max_item_size: int,
    memory_limit: int,
    no_evict: bool,
    max_connections: int,
    idle_timeout: float,
    read_timeout: float,
    backlog: int,
    compact_min_size: int,
    repair: bool,
    modules: tuple[str, ...],
    simulate_delay: bool,
    verbose: int,
) -> None:
    """Run the server until Ctrl-C or SIGTERM.

    On either, it stops accepting, answers every command already received,
    flushes the data file and exits 0.
    """
    from .errors import CorruptLogError
    from .server import MemcacheServer
    from .session import Settings
    from .store import Store

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for module in modules:
        try:
            _load_module(module)
        except click.ClickException:
            raise
        except Exception as exc:
            raise CannotStart(f"cannot load {module}: {exc}") from None
    settings = Settings(dialect=dialect, max_item_size=max_item_size, simulate_delay=simulate_delay)
    # Bind first: a port in use should not leave a new data file behind.
    server = MemcacheServer(
        (host, port),
        None,
        settings=settings,
        backlog=backlog,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        read_timeout=read_timeout,
        bind_and_activate=False,
    )
    try:
        server.server_bind()
    except OSError as exc:
        server.server_close()
        raise CannotStart(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    # A write past a file size limit must fail with EFBIG, not kill the server.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if repair and os.path.exists(data_file):
        _repair(data_file, only_if_damaged=True)
    try:
        store = Store(
            data_file,
            fsync=fsync,
            memory_limit=memory_limit * 1024 * 1024,
            evict=not no_evict,
            compact_min_size=compact_min_size,
        )
    except CorruptLogError as exc:
        server.server_close()
        raise CannotStart(f"{exc}; run 'mcl repair {data_file}' to salvage the valid records") from None
    except (OSError, RuntimeError) as exc:
        server.server_close()
        reason = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CannotStart(f"cannot open data file: {reason}") from None
    server.store = store
    server.server_activate()

    def request_stop(signum: int, frame: object) -> None:
        if not server.stopping.is_set():
            log.info("%s received, shutting down", signal.Signals(signum).name)
            server.stopping.set()
            threading.Thread(target=server.shutdown, name="mcl-shutdown").start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info(
        "memcachedlite %s listening on %s:%d, data in %s (%d items, fsync %s)",
        __version__, host, server.port, data_file, len(store), fsync,
    )
    try:
        server.serve_forever()
    finally:
        server.stop()
        store.close()
        log.info("stopped; data file flushed")


def _repair(path: str, only_if_damaged: bool) -> None:
    from . import log as datalog
    from .errors import CorruptLogError

    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
    _, report = datalog.salvage(buf)
    if only_if_damaged and not report.damaged_offsets:
        return
    if not buf.startswith(datalog.HEADER) and not report.records:
        raise click.ClickException(f"{path} is not a memcachedlite data file; nothing to salvage")
    try:
        report = datalog.repair(path)
    except (OSError, CorruptLogError) as exc:
        raise click.ClickException(f"cannot repair {path}: {exc}") from None
    click.echo(
        f"{path}: kept {report.records} records, dropped {report.dropped_bytes} damaged bytes"
        f" at offsets {', '.join(map(str, report.damaged_offsets)) or 'none'}; original saved as {report.backup}",
        err=True,
    )


@main.command("repair")
@click.argument("data_file", type=click.Path(exists=True, dir_okay=False))
def repair_cmd(data_file: str) -> None:
    """Salvage every intact record of a damaged DATA_FILE (the server must be stopped).

    The original is kept as DATA_FILE.broken-<time>.
    """
    _repair(data_file, only_if_damaged=False)


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


_ttl = click.option("--ttl", default=0, show_default=True, type=click.IntRange(0), help="Seconds until the item expires (0: never).")
_flags = click.option("--flags", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1), help="32-bit client flags kept with the value.")


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
@click.option("--delay", default=0, show_default=True, type=click.IntRange(0), help="Seconds before the items are invalidated.")
def flush_all(delay: int) -> None:
    """Invalidate every item (on every server given)."""
    with _talking(_config()) as client:
        client.flush_all(delay=delay, noreply=False)
    click.echo("OK")


@main.command()
def compact() -> None:
    """Ask the server(s) to compact the data file now."""
    config = _config()
    for server in config.servers:
        with _talking(ClientConfig([server], config.timeout)) as client:
            reply = client.raw_command("compact", b"\r\n")
        if reply.strip() != b"OK":
            raise ServerReplyError(reply.decode("utf-8", "replace").strip())
    click.echo("OK")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (server -> {name: value}) for scripts.")
@click.argument("group", required=False, type=click.Choice(["settings"]))
def stats(as_json: bool, group: Optional[str]) -> None:
    """Show the server's statistics."""
    config = _config()
    table = {}
    for server in config.servers:
        one = ClientConfig([server], config.timeout)
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
