"""``mcl dump`` and ``mcl load``: every live item of the server(s) to a file and
back, through :mod:`memcachedlite.cli.transfer`, with a progress bar and one-line
errors, registered on the :func:`memcachedlite.cli.main` group.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import click

from .common import (
    TOO_LARGE_HINT,
    ClientConfig,
    NotFound,
    OutputClosed,
    ServerReplyError,
    Unreachable,
    closed_message,
    current_config,
    main,
    timeout_message,
    write_fully,
)


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
    from . import transfer as bulk

    try:
        yield
    except bulk.ServerReplyError as exc:
        raise ServerReplyError(str(exc)) from None
    except bulk.BulkError as exc:
        raise click.ClickException(str(exc)) from None
    except bulk.Closed:
        raise Unreachable(closed_message(config)) from None
    except TimeoutError:
        raise Unreachable(timeout_message(config)) from None
    except (ConnectionError, socket.gaierror) as exc:
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
    from . import transfer as bulk

    config = current_config()
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
                write_fully(out, data)
            except BrokenPipeError:
                if file != "-":
                    raise
                raise OutputClosed() from None  # 'mcl dump | head': the reader has all it wants
            except OSError as exc:  # a full disk: not the server's fault
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
            except BrokenPipeError:
                raise OutputClosed() from None
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
    from . import transfer as bulk

    config = current_config()
    route = None
    if len(config.servers) > 1:
        spread = config.client()  # pymemcache's HashClient: place keys exactly as 'mcl set' does
        # str keys, as key_for() gives HashClient
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
        hint = f"; {TOO_LARGE_HINT}" if "object too large" in report.first_error else ""
        raise ServerReplyError(f"the server refused {report.failed} items, the first with {report.first_error}{hint}")
    if report.not_stored or source.skipped:
        raise NotFound(f"{total - report.stored} items were not loaded")
