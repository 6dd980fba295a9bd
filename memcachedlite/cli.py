"""The ``mcl`` command: run a server (``mcl serve``) or use one from a shell
(``mcl get``, ``mcl set``, ...). Thin by design: parse options, call the
library or pymemcache, turn failures into one-line messages and exit codes.

Exit codes: 0 success, 1 the key was missing or not stored, 2 bad usage,
3 the server could not be reached, 4 the server answered with an error,
5 the server could not start.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator, Optional

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


# -- the server ---------------------------------------------------------------


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    from .launch import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_size_option = dict(callback=_size, metavar="SIZE", show_default=True, show_envvar=True)
_option = dict(show_default=True, show_envvar=True)


@main.command()
@click.option("--host", default="127.0.0.1", envvar="MCL_HOST", help="Address to listen on.", **_option)
@click.option(
    "--port",
    "-p",
    default=9889,
    type=click.IntRange(0, 65535),
    envvar="MCL_PORT",
    help="TCP port (0: any free port).",
    **_option,
)
@click.option(
    "--data-file",
    default="data.txt",
    type=click.Path(dir_okay=False),
    envvar="MCL_DATA_FILE",
    help="Append-only data file, replayed at start.",
    **_option,
)
@click.option(
    "--no-data-file",
    is_flag=True,
    envvar="MCL_NO_DATA_FILE",
    help="Keep the data in memory only, as memcached does (--data-file is ignored).",
    **_option,
)
@click.option(
    "--fsync",
    type=click.Choice(["always", "everysec", "no"]),
    default="everysec",
    envvar="MCL_FSYNC",
    help="When the data file is forced to disk (see README).",
    **_option,
)
@click.option(
    "--dialect",
    type=click.Choice(["memcached", "lite"]),
    default="memcached",
    envvar="MCL_DIALECT",
    help="Reply shapes: memcached's, or the seed assignment's.",
    **_option,
)
@click.option(
    "--max-item-size",
    default="1m",
    envvar="MCL_MAX_ITEM_SIZE",
    help="Largest value accepted: bytes, or with a k or m suffix.",
    **_size_option,
)
@click.option(
    "--memory-limit",
    "-m",
    default=64,
    type=click.IntRange(1),
    envvar="MCL_MEMORY_LIMIT",
    help="Memory for items, in MiB; least recently used items are evicted past it.",
    **_option,
)
@click.option(
    "--no-evict",
    "-M",
    is_flag=True,
    envvar="MCL_NO_EVICT",
    help="Refuse new items when memory is full instead of evicting.",
    **_option,
)
@click.option(
    "--max-connections",
    "-c",
    default=1024,
    type=click.IntRange(1),
    envvar="MCL_MAX_CONNECTIONS",
    help="Connections served at once; more are refused.",
    **_option,
)
@click.option(
    "--idle-timeout",
    default=0.0,
    type=click.FloatRange(0),
    envvar="MCL_IDLE_TIMEOUT",
    help="Close connections idle this many seconds (0: never).",
    **_option,
)
@click.option(
    "--read-timeout",
    default=10.0,
    type=click.FloatRange(0),
    envvar="MCL_READ_TIMEOUT",
    help="Close a connection that stalls this long in the middle of a request (0: never).",
    **_option,
)
@click.option(
    "--backlog", default=1024, type=click.IntRange(1), envvar="MCL_BACKLOG", help="Listen queue length.", **_option
)
@click.option(
    "--compact-min-size",
    default="64m",
    envvar="MCL_COMPACT_MIN_SIZE",
    help="Compact the data file once it is past this size and twice the live data.",
    **_size_option,
)
@click.option(
    "--repair",
    is_flag=True,
    envvar="MCL_REPAIR",
    help="Salvage a damaged data file (keeping a backup) before starting.",
    **_option,
)
@click.option(
    "--load",
    "modules",
    multiple=True,
    metavar="MODULE",
    envvar="MCL_LOAD",
    help="Import MODULE (a dotted name or a .py file) to register its verbs; repeatable.",
    show_envvar=True,
)
@_file_option("--tls-cert", "MCL_TLS_CERT", "Serve TLS with this certificate (PEM, with its chain).", **_option)
@_file_option("--tls-key", "MCL_TLS_KEY", "Private key of --tls-cert, if not in that file.", **_option)
@_file_option("--tls-ca", "MCL_TLS_CLIENT_CA", "Require client certificates signed by this CA.", **_option)
@_file_option(
    "--auth-file",
    "MCL_AUTH_FILE",
    "Require authentication: user:password lines (memcached's -Y), reread on SIGHUP.",
    **_option,
)
@click.option(
    "--cpu",
    default="auto",
    envvar="MCL_CPU",
    metavar="auto|none|N",
    help="Keep the server on one CPU: 'auto' picks the last one allowed, N that one, 'none' lets the OS move it.",
    **_option,
)
@click.option(
    "--simulate-delay",
    is_flag=True,
    envvar="MCL_SIMULATE_DELAY",
    help="Sleep 0-2 s before each set and 0-1 s before each get (the seed's concurrency demo).",
    **_option,
)
@click.option(
    "--protocol",
    "-B",
    type=click.Choice(["auto", "ascii", "binary"]),
    default="auto",
    envvar="MCL_PROTOCOL",
    help="Wire protocol (memcached's -B): 'auto' serves binary to connections whose first byte is 0x80.",
    **_option,
)
@click.option(
    "--enable-shutdown",
    "-A",
    is_flag=True,
    envvar="MCL_ENABLE_SHUTDOWN",
    help="Let the 'shutdown' command stop the server (memcached's -A).",
    **_option,
)
@click.option(
    "--disable-flush-all",
    "-F",
    is_flag=True,
    envvar="MCL_DISABLE_FLUSH_ALL",
    help="Refuse the flush_all command (memcached's -F).",
    **_option,
)
@click.option(
    "--disable-cas",
    "-C",
    is_flag=True,
    envvar="MCL_DISABLE_CAS",
    help="No cas values: every item's is 0 and 'cas' never succeeds (memcached's -C).",
    **_option,
)
@click.option("--verbose", "-v", count=True, help="Also log each connection opening and closing.")
def serve(cpu: str, verbose: int, **options: Any) -> None:
    """Run the server until Ctrl-C or SIGTERM.

    On either, it stops accepting, answers every command already received,
    flushes the data file and exits 0. SIGHUP rereads the --auth-file.
    """
    from .launch import LaunchError, UsageProblem, build_server
    from .security import AuthFileError

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _pin_to_one_cpu(cpu)
    # A write past a file size limit must fail with EFBIG, not kill the server.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        server = build_server(**options)
    except UsageProblem as exc:
        raise click.UsageError(str(exc)) from None
    except LaunchError as exc:
        raise CannotStart(str(exc)) from None
    store = server.store
    auth_file = options["auth_file"]

    def request_stop(signum: int, frame: object) -> None:
        server.request_stop(f"{signal.Signals(signum).name} received")

    def reload_auth() -> None:
        try:
            users = server.reload_auth()
        except AuthFileError as exc:
            log.error("%s; the users loaded before stay in force", exc)
        else:
            log.info("auth file %s reloaded: %d users", auth_file, users)

    def request_reload(signum: int, frame: object) -> None:
        log.info("SIGHUP received, rereading the auth file")
        threading.Thread(target=reload_auth, name="mcl-reload-auth").start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if auth_file:
        signal.signal(signal.SIGHUP, request_reload)
    log.info(
        "memcachedlite %s listening on %s:%d%s, data in %s (%d items, fsync %s)",
        __version__,
        options["host"],
        server.port,
        _security_summary(server.ssl_context, auth_file),
        store.log.path if store.log is not None else "memory only",
        len(store),
        store.log.policy if store.log is not None else "none",
    )
    try:
        server.serve_forever()
    finally:
        server.stop()
        store.close()
        log.info("stopped; data file flushed")


def _security_summary(tls_context: Any, auth_file: str | None) -> str:
    parts = []
    if tls_context is not None:
        from ssl import CERT_REQUIRED

        parts.append("TLS" + (" with client certificates" if tls_context.verify_mode == CERT_REQUIRED else ""))
    if auth_file:
        parts.append(f"auth file {auth_file}")
    return f" ({', '.join(parts)})" if parts else ""


def _pin_to_one_cpu(choice: str) -> None:
    """Keep every thread of the server on one CPU.

    Only one thread runs Python at a time (the GIL), so a second core buys
    little; but each hand-off of the GIL to a thread the kernel put on the
    other core costs a cross-core wake-up. On the benchmark machine (2 cores)
    pinning tripled throughput with 50 connections (W2: 16k -> 51k ops/s)
    and halved its p99 latency.
    """
    if choice == "none" or not hasattr(os, "sched_setaffinity"):
        return
    allowed = sorted(os.sched_getaffinity(0))
    if choice == "auto":
        if len(allowed) < 2:
            return
        target = allowed[-1]
    elif choice.isdigit() and int(choice) in allowed:
        target = int(choice)
    else:
        raise CannotStart(f"--cpu must be auto, none or one of the allowed CPUs {allowed}, not {choice!r}")
    os.sched_setaffinity(0, {target})
    log.info("running on CPU %d (--cpu none to let the OS move it)", target)


def _repair(path: str) -> None:
    from . import log as datalog
    from .errors import CorruptLogError

    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
    _, report = datalog.salvage(buf)
    if datalog.read_header(buf) is None and not report.records:
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
    if report.cut_offset is not None:
        click.echo(
            f"{path}: cut at offset {report.cut_offset}, past the last sync: what a crash leaves;"
            " the file is a prefix of what was written",
            err=True,
        )
    if report.kept_across_damage:
        click.echo(
            f"{path}: WARNING: damage lay in data that had reached the disk (synced up to {report.synced});"
            " the records after it were kept, so the result may combine changes that never existed together."
            f" Compare with {report.backup} before you rely on it.",
            err=True,
        )


@main.command("repair")
@click.argument("data_file", type=_file)
def repair_cmd(data_file: str) -> None:
    """Salvage every intact record of a damaged DATA_FILE (the server must be stopped).

    The original is kept as DATA_FILE.broken-<time>.
    """
    _repair(data_file)


# -- benchmark -------------------------------------------------------------------


def _duration_text(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} us"


class _BenchProgress:
    """One line on a terminal's stderr, rewritten each second; nothing elsewhere."""

    def __init__(self, warmup: float, duration: float) -> None:
        self.warmup = warmup
        self.total = warmup + duration
        self.last = (0.0, 0)
        self.shown = False
        self.enabled = sys.stderr.isatty()

    def __call__(self, elapsed: float, ops: int, errors: int) -> None:
        if not self.enabled:
            return
        then, before = self.last
        warm = elapsed > self.warmup + 0.05
        rate = (ops - before) / (elapsed - then) if elapsed > then and warm else 0.0
        self.last = (elapsed, ops)
        phase = f"{ops:,} ops  {rate:,.0f} ops/s" if warm else "warming up"
        click.echo(f"\r  {elapsed:4.0f}/{self.total:.0f} s  {phase}  {errors} errors\x1b[K", nl=False, err=True)
        self.shown = True

    def done(self) -> None:
        if self.shown:
            click.echo("\r\x1b[K", nl=False, err=True)


@main.command()
@click.option(
    "--connections", "-c", default=4, type=click.IntRange(1, 10000), help="Connections kept busy at once.", **_option
)
@click.option(
    "--duration", "-d", default=10.0, type=click.FloatRange(0.1), help="Seconds measured, after the warm-up.", **_option
)
@click.option(
    "--warmup", default=1.0, type=click.FloatRange(0), help="Seconds of load before the measuring starts.", **_option
)
@click.option(
    "--get-ratio",
    default=0.9,
    type=click.FloatRange(0, 1),
    help="Share of commands that are gets; the rest are sets.",
    **_option,
)
@click.option("--value-size", default=100, type=click.IntRange(1, 1024 * 1024), help="Bytes per value.", **_option)
@click.option(
    "--keys", default=10000, type=click.IntRange(1), help="Size of the key space, picked from uniformly.", **_option
)
@click.option(
    "--pipeline", default=1, type=click.IntRange(1, 10000), help="Commands per send (1: request/response).", **_option
)
@click.option("--multiget", default=1, type=click.IntRange(1, 10000), help="Keys per get.", **_option)
@click.option(
    "--processes",
    default=None,
    type=click.IntRange(0),
    help="Load processes  [default: one per core, at most one per connection; 0: none, run in mcl itself]",
)
@click.option("--prefill/--no-prefill", default=True, help="Store every key before the run, so gets hit.", **_option)
@click.option("--key-prefix", default="mclbench:", help="Keys are KEY_PREFIX<value size>:<n>.", **_option)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON, for scripts.")
def bench(
    connections: int,
    duration: float,
    warmup: float,
    get_ratio: float,
    value_size: int,
    keys: int,
    pipeline: int,
    multiget: int,
    processes: int | None,
    prefill: bool,
    key_prefix: str,
    as_json: bool,
) -> None:
    """Load a server and report throughput, latency percentiles and errors.

    Works against any memcached-protocol server (memcached too), so servers
    can be compared. It sets and gets keys named KEY_PREFIX<value size>:<n>
    (do not point it at data you care about). Every reply is checked: a wrong
    or missing one is counted as an error, and any error makes the exit
    code 4. A request's latency runs from sending its batch to reading its
    reply.
    """
    from . import loadgen

    config = _config()
    if len(config.servers) != 1:
        raise click.UsageError("bench drives one server at a time; give a single --server")
    host, port = config.servers[0]
    try:
        load = loadgen.LoadConfig(
            host=host,
            port=port,
            connections=connections,
            duration=duration,
            warmup=warmup,
            get_ratio=get_ratio,
            value_size=value_size,
            keys=keys,
            pipeline=pipeline,
            multiget=multiget,
            processes=processes,
            prefill=prefill,
            key_prefix=key_prefix,
            reply_timeout=config.timeout,
            connect_timeout=config.timeout,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    progress = _BenchProgress(warmup, duration)
    try:
        result = loadgen.run(load, progress=progress)
    except loadgen.ConnectFailed as exc:
        raise Unreachable(str(exc)) from None
    except loadgen.LoadError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        progress.done()
    if as_json:
        click.echo(json.dumps(dict(server=config.describe(), **result.to_dict()), indent=2))
    else:
        _bench_report(config.describe(), result)
    if result.errors:
        raise ServerReplyError(f"{result.errors} requests got a wrong reply or none (see above)")


def _bench_report(server: str, result: Any) -> None:
    cfg = result.config
    workers = f"{result.processes} processes" if result.processes else "in this process"
    click.echo(
        f"{server}: {cfg.connections} connections ({workers}), {cfg.duration:g} s after {cfg.warmup:g} s warm-up; "
        f"{cfg.get_ratio:.0%} gets, {cfg.value_size}-byte values, {cfg.keys:,} keys, "
        f"pipeline {cfg.pipeline}, {cfg.multiget} key{'s' if cfg.multiget > 1 else ''} per get"
    )
    if result.prefill_items:
        click.echo(f"prefill      {result.prefill_items:,} items in {result.prefill_seconds:.2f} s")
    rate = result.elapsed or 1.0
    click.echo(
        f"throughput   {result.ops_per_sec:,.0f} ops/s  ({result.ops:,} in {result.elapsed:.2f} s; "
        f"gets {result.gets / rate:,.0f}/s, sets {result.sets / rate:,.0f}/s)"
    )
    if result.keys:
        click.echo(f"keys read    {result.keys_per_sec:,.0f} keys/s, {result.hits / result.keys:.1%} hits")
    lat = result.latency_us()
    click.echo(
        "latency      "
        + "  ".join(f"{name} {_duration_text(lat[name])}" for name in ("p50", "p90", "p99", "p99.9", "max"))
    )
    click.echo(f"errors       {result.errors:,}")
    for kind, count in sorted(result.error_kinds.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {count:,} x {kind}")
    for sample in result.error_samples:
        click.echo(f"  e.g. {sample}")
    click.echo(
        f"client CPU   {result.client_cpu_percent:.0f}% (100 per busy core: near"
        f" {max(1, result.processes) * 100}% the client may be the limit)"
    )


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


# -- bulk dump and load ---------------------------------------------------------


class _NoProgress:
    def update(self, n: int) -> None:
        pass


@contextmanager
def _bulk_progress(length: int, label: str) -> Iterator[Any]:
    """click's progress bar on a terminal's stderr; nothing at all in scripts and pipes."""
    err = sys.stderr
    if not length or not err.isatty():
        yield _NoProgress()
        return
    with click.progressbar(length=length, label=label, file=err) as bar:
        yield bar


def _bulk_tls(config: ClientConfig) -> Any:
    """The client TLS context from the group options (--tls...), if any."""
    return getattr(config, "tls_context", None)


_NETWORK_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL})


@contextmanager
def _bulk_errors(config: ClientConfig) -> Iterator[None]:
    """Failures of a dump or load as one-line messages and exit codes."""
    from . import bulk

    try:
        yield
    except bulk.ServerReplyError as exc:
        raise ServerReplyError(str(exc)) from None
    except bulk.BulkError as exc:
        raise click.ClickException(str(exc)) from None
    except (ConnectionError, TimeoutError, socket.gaierror) as exc:
        raise Unreachable(f"cannot reach server {config.describe()}: {exc.strerror or exc}") from None
    except OSError as exc:
        if exc.errno in _NETWORK_ERRNOS:
            raise Unreachable(f"cannot reach server {config.describe()}: {exc.strerror}") from None
        where = f" {exc.filename}" if exc.filename else ""
        raise click.ClickException(f"cannot write{where}: {exc.strerror or exc}") from None


@main.command()
@click.argument("file", default="-", type=click.Path(dir_okay=False, writable=True, allow_dash=True))
def dump(file: str) -> None:
    """Write every live item to FILE (default: standard output).

    One JSON object per line, keys and values in base64, with flags and the
    seconds left to live (see README). Items are listed with memcached's
    'lru_crawler metadump all' and read with get, so any server that has that
    verb can be dumped. With several --server, all of them go into FILE.
    """
    from . import bulk

    config = _config()
    count = size = 0
    target = "standard output" if file == "-" else file
    with _bulk_errors(config), ExitStack() as stack:
        listing = []
        for server in config.servers:
            conn = stack.enter_context(bulk.Connection(server, config.timeout, _bulk_tls(config), config.credentials))
            listing.append((conn, bulk.server_time(conn), bulk.metadump(conn)))
        total = sum(len(entries) for _, _, entries in listing)
        out = sys.stdout.buffer if file == "-" else stack.enter_context(bulk.atomic_output(file))
        bar = stack.enter_context(_bulk_progress(total, "dumping"))

        def write(data: bytes) -> None:
            try:
                out.write(data)
            except OSError as exc:  # a full disk, a closed pipe: not the server's fault
                raise bulk.BulkError(f"cannot write {target}: {exc.strerror or exc}") from None

        write(bulk.header(config.servers))
        for conn, now, entries in listing:
            for item in bulk.dump_server(conn, entries, now, bar.update):
                write(bulk.encode_item(item))
                count += 1
                size += len(item.value)
        if file == "-":
            try:
                out.flush()
            except OSError as exc:
                raise bulk.BulkError(f"cannot write {target}: {exc.strerror or exc}") from None
    click.echo(f"dumped {count} items ({size} bytes of values) from {config.describe()} to {target}", err=True)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
def load(file: str) -> None:
    """Store every item of FILE (a dump, or '-' for standard input) with set.

    FILE is a dump written by 'mcl dump', or the data file of the original
    seed server ('<key> <value>' lines): the format is detected. Each item
    gets its flags and remaining ttl back. With several --server, keys are
    spread as 'mcl set' spreads them. Exit 1 if some item was not stored,
    4 if the server refused some.
    """
    from . import bulk

    config = _config()
    route = None
    if len(config.servers) > 1:
        spread = config.client()  # pymemcache's HashClient: place keys exactly as 'mcl set' does
        # str keys, as _key() gives HashClient
        route = lambda key: spread.clients[spread.hasher.get_node(key.decode("utf-8", "replace"))].server  # noqa: E731
    name = "standard input" if file == "-" else file
    with _bulk_errors(config), ExitStack() as stack:
        if file == "-":
            stream, length = sys.stdin.buffer, 0
        else:
            try:
                stream = stack.enter_context(open(file, "rb"))
            except OSError as exc:
                raise click.ClickException(f"cannot read {file}: {exc.strerror}") from None
            length = os.fstat(stream.fileno()).st_size
        source = bulk.Source(stream)
        loader = stack.enter_context(
            bulk.Loader(config.servers, config.timeout, route, _bulk_tls(config), config.credentials)
        )
        bar = stack.enter_context(_bulk_progress(length, f"loading {name}"))
        shown = [source.bytes_read]

        def progress() -> None:
            bar.update(source.bytes_read - shown[0])
            shown[0] = source.bytes_read

        report = loader.load(source, progress)
    for number, reason in source.skipped[:10]:
        click.echo(f"{name}:{number}: skipped: {reason}", err=True)
    if len(source.skipped) > 10:
        click.echo(f"... and {len(source.skipped) - 10} more lines skipped", err=True)
    total = report.stored + report.not_stored + report.failed + len(source.skipped)
    click.echo(
        f"loaded {report.stored} of {total} items from {name} ({source.format} format) into {config.describe()}"
        + (f"; {report.not_stored} not stored" if report.not_stored else "")
        + (f"; {report.failed} refused" if report.failed else "")
        + (f"; {len(source.skipped)} lines skipped" if source.skipped else "")
    )
    if report.failed:
        raise ServerReplyError(f"the server refused {report.failed} items, the first with {report.first_error}")
    if report.not_stored or source.skipped:
        raise NotFound(f"{total - report.stored} items were not loaded")
