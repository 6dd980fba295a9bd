"""The server side of ``mcl``: ``mcl serve`` (build a server from its options,
pin it to a CPU if asked, stop it cleanly on a signal) and ``mcl repair`` (salvage a
damaged data file), registered on the :func:`memcachedlite.cli.main` group.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import click

from ..version import __version__
from .common import EXISTING_FILE, SHOWN, CannotStart, file_option, main

log = logging.getLogger("memcachedlite")


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    from ..server.build import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_size_option = dict(callback=_size, metavar="SIZE", show_default=True, show_envvar=True)


def _octal_mask(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """memcached's ``-a``: permission bits in octal (``0700``, ``770``)."""
    text = value.strip().lower().removeprefix("0o")
    if not text or any(c not in "01234567" for c in text) or int(text, 8) > 0o777:
        raise click.BadParameter(f"{value!r} is not an octal mode from 0 to 0777, like 0700")
    return int(text, 8)


@main.command()
@click.option(
    "--host",
    "-l",
    default="127.0.0.1",
    envvar="MCL_HOST",
    metavar="ADDRESSES",
    help=(
        "Address(es) to listen on: memcached's -l list, each address with --port or its own :PORT"
        " (127.0.0.1,[::1],10.0.0.5:11212)."
    ),
    **SHOWN,
)
@click.option(
    "--port",
    "-p",
    default=9889,
    type=click.IntRange(0, 65535),
    envvar="MCL_PORT",
    help="TCP port (0: any free port).",
    **SHOWN,
)
@click.option(
    "--unix-socket",
    "-s",
    default=None,
    type=click.Path(dir_okay=False),
    envvar="MCL_UNIX_SOCKET",
    help=(
        "Listen on this Unix socket (memcached's -s); alone, on it only: TCP too only with"
        " --host or --port given. Its TCP listeners aside, served without TLS."
    ),
    **SHOWN,
)
@click.option(
    "--unix-mask",
    "-a",
    default="0700",
    callback=_octal_mask,
    envvar="MCL_UNIX_MASK",
    metavar="MODE",
    help="Permission bits of the --unix-socket file, in octal (memcached's -a).",
    **SHOWN,
)
@click.option(
    "--data-file",
    default="data.txt",
    type=click.Path(dir_okay=False),
    envvar="MCL_DATA_FILE",
    help="Append-only data file, replayed at start.",
    **SHOWN,
)
@click.option(
    "--no-data-file",
    is_flag=True,
    envvar="MCL_NO_DATA_FILE",
    help="Keep the data in memory only, as memcached does (--data-file is ignored).",
    **SHOWN,
)
@click.option(
    "--fsync",
    type=click.Choice(["always", "everysec", "no"]),
    default="everysec",
    envvar="MCL_FSYNC",
    help="When the data file is forced to disk (see README).",
    **SHOWN,
)
@click.option(
    "--dialect",
    type=click.Choice(["memcached", "lite"]),
    default="memcached",
    envvar="MCL_DIALECT",
    help="Reply shapes: memcached's, or the seed assignment's.",
    **SHOWN,
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
    help="Memory for items, in MiB; least recently used items are evicted past it (logged as a warning).",
    **SHOWN,
)
@click.option(
    "--no-evict",
    "-M",
    is_flag=True,
    envvar="MCL_NO_EVICT",
    help="Refuse new items when memory is full instead of evicting.",
    **SHOWN,
)
@click.option(
    "--max-connections",
    "-c",
    default=1024,
    type=click.IntRange(1),
    envvar="MCL_MAX_CONNECTIONS",
    help="Connections served at once; more are refused.",
    **SHOWN,
)
@click.option(
    "--idle-timeout",
    default=0.0,
    type=click.FloatRange(0),
    envvar="MCL_IDLE_TIMEOUT",
    help="Close connections idle this many seconds (0: never).",
    **SHOWN,
)
@click.option(
    "--read-timeout",
    default=10.0,
    type=click.FloatRange(0),
    envvar="MCL_READ_TIMEOUT",
    help="Close a connection that stalls this long in the middle of a request (0: never).",
    **SHOWN,
)
@click.option(
    "--backlog", default=1024, type=click.IntRange(1), envvar="MCL_BACKLOG", help="Listen queue length.", **SHOWN
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
    **SHOWN,
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
@file_option("--tls-cert", "MCL_TLS_CERT", "Serve TLS with this certificate (PEM, with its chain).", **SHOWN)
@file_option("--tls-key", "MCL_TLS_KEY", "Private key of --tls-cert, if not in that file.", **SHOWN)
@file_option("--tls-ca", "MCL_TLS_CLIENT_CA", "Require client certificates signed by this CA.", **SHOWN)
@file_option(
    "--auth-file",
    "MCL_AUTH_FILE",
    "Require authentication: user:password lines (memcached's -Y), reread on SIGHUP.",
    **SHOWN,
)
@click.option(
    "--cpu",
    default="none",
    envvar="MCL_CPU",
    metavar="none|auto|N",
    help=(
        "Keep the server on one CPU: N that one, 'auto' the least loaded allowed one (fewest processes pinned"
        " to it, then least busy); 'none' lets the OS move it, as memcached does."
    ),
    **SHOWN,
)
@click.option(
    "--simulate-delay",
    is_flag=True,
    envvar="MCL_SIMULATE_DELAY",
    help="Sleep 0-2 s before each set and 0-1 s before each get (the seed's concurrency demo).",
    **SHOWN,
)
@click.option(
    "--protocol",
    "-B",
    type=click.Choice(["auto", "ascii", "binary"]),
    default="auto",
    envvar="MCL_PROTOCOL",
    help="Wire protocol (memcached's -B): 'auto' serves binary to connections whose first byte is 0x80.",
    **SHOWN,
)
@click.option(
    "--enable-shutdown",
    "-A",
    is_flag=True,
    envvar="MCL_ENABLE_SHUTDOWN",
    help="Let the 'shutdown' command stop the server (memcached's -A).",
    **SHOWN,
)
@click.option(
    "--disable-flush-all",
    "-F",
    is_flag=True,
    envvar="MCL_DISABLE_FLUSH_ALL",
    help="Refuse the flush_all command (memcached's -F).",
    **SHOWN,
)
@click.option(
    "--disable-cas",
    "-C",
    is_flag=True,
    envvar="MCL_DISABLE_CAS",
    help="No cas values: every item's is 0 and 'cas' never succeeds (memcached's -C).",
    **SHOWN,
)
@click.option("--verbose", "-v", count=True, help="Also log each connection opening and closing.")
def serve(cpu: str, verbose: int, **options: Any) -> None:
    """Run the server until Ctrl-C or SIGTERM.

    On either, it stops accepting, answers every command already received,
    flushes the data file and exits 0. SIGHUP rereads the --auth-file.
    """
    from ..buildinfo import describe as describe_build
    from ..protocols.auth import AuthFileError
    from ..server.addresses import describe
    from ..server.build import LaunchError, UsageProblem, build_server
    from ..server.config import ServerConfig

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _pin_to_one_cpu(cpu)
    # A write past a file size limit must fail with EFBIG, not kill the server.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if options["unix_socket"]:
        _only_given(click.get_current_context(), options, "host", "port")
    try:
        server = build_server(ServerConfig(**options))
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
        "memcachedlite %s (%s) listening on %s%s, data in %s (%d items, fsync %s)",
        __version__,
        describe_build(),
        ", ".join(describe(address) for address in server.addresses),
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


def _only_given(ctx: click.Context, options: dict[str, Any], *names: str) -> None:
    """Set to None the options left at their defaults (so that, with
    --unix-socket, TCP is served only when asked for)."""
    from click.core import ParameterSource

    for name in names:
        if ctx.get_parameter_source(name) == ParameterSource.DEFAULT:
            options[name] = None


def _security_summary(tls_context: Any, auth_file: str | None) -> str:
    parts = []
    if tls_context is not None:
        from ssl import CERT_REQUIRED

        parts.append("TLS" + (" with client certificates" if tls_context.verify_mode == CERT_REQUIRED else ""))
    if auth_file:
        parts.append(f"auth file {auth_file}")
    return f" ({', '.join(parts)})" if parts else ""


def _pin_to_one_cpu(choice: str) -> None:
    """``--cpu``: see :mod:`memcachedlite.cli.cpu` for why and how."""
    from .cpu import CpuChoiceError, pin

    try:
        pin(choice)
    except CpuChoiceError as exc:
        raise CannotStart(str(exc)) from None


def _repair(path: str) -> None:
    from ..errors import CorruptLogError, DataFileInUse
    from ..storage import repair

    try:
        report = repair.repair(path)
    except DataFileInUse as exc:
        raise CannotStart(str(exc)) from None  # in the words a second server gets
    except (OSError, CorruptLogError) as exc:
        raise click.ClickException(f"cannot repair {path}: {exc}") from None
    for line in report.describe(path):
        click.echo(line, err=True)


@main.command("repair")
@click.argument("data_file", type=EXISTING_FILE)
def repair_cmd(data_file: str) -> None:
    """Salvage every intact record of a damaged DATA_FILE.

    The original is kept as DATA_FILE.broken-<time>; an intact file is left
    as it is. A file a running server holds is refused, as a second server
    is.
    """
    _repair(data_file)
