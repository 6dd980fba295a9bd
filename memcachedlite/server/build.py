"""Building a ready server from a :class:`~memcachedlite.server.config.ServerConfig`:
the one place that turns ``mcl serve``'s options into a bound
:class:`MemcacheServer` with its :class:`Store`, so the CLI and
:mod:`memcachedlite.testing` cannot drift apart.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import socket
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Optional

from ..errors import CorruptLogError, DataFileInUse, NotADataFile
from ..protocols.settings import Settings
from ..storage import repair
from ..storage.fileio import absolute
from ..storage.store import Store
from .addresses import Address, parse_listen, resolve
from .config import PathLike, ServerConfig, Size
from .listeners import ListenError
from .tcp import MemcacheServer, MemcacheUnixServer

log = logging.getLogger(__name__)


class LaunchError(Exception):
    """The server cannot start (port in use, damaged data file, unreadable
    certificate...); the message is one line meant for the user."""


class UsageProblem(LaunchError):
    """The options contradict each other or name something unusable: a
    mistake in how the server was asked for, not in its environment."""


def parse_size(value: Size) -> int:
    """A size in bytes from ``1048576``, ``512k`` or ``1m`` (as ``mcl serve`` takes them)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"{value!r} is not a positive size")
        return value
    text = str(value).strip().lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    if not number.isdigit() or int(number) <= 0:
        raise ValueError(f"{value!r} is not a size like 1048576, 512k or 1m")
    return int(number) * scale


def load_module(spec: str) -> None:
    """Import a user's module (dotted name, or a path to a .py file) so its verbs register."""
    if spec.endswith(".py") or os.sep in spec:
        name = os.path.splitext(os.path.basename(spec))[0]
        module_spec = importlib.util.spec_from_file_location(name, spec)
        if module_spec is None or module_spec.loader is None:
            raise UsageProblem(f"cannot load {spec}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        with _current_directory_importable():
            importlib.import_module(spec)
    log.info("loaded verbs from %s", spec)


@contextmanager
def _current_directory_importable() -> Iterator[None]:
    """The current directory on ``sys.path`` while a ``--load`` module is
    imported (as ``python -m`` has it), and ``sys.path`` as it was after."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        yield
    finally:
        if added:
            sys.path.remove(here)


def server_tls(cert: Optional[PathLike], key: Optional[PathLike], ca: Optional[PathLike]) -> Any:
    """The server's ``ssl.SSLContext`` from the TLS options, or None without a certificate."""
    if not cert:
        if key or ca:
            raise UsageProblem("--tls-key and --tls-ca need --tls-cert")
        return None
    from .tls import server_context

    try:
        return server_context(cert, key, ca)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        reason = getattr(exc, "strerror", None) or exc
        raise LaunchError(f"cannot load the TLS certificate {cert}: {reason}") from None


#: memcached's smallest item size limit (ITEM_SIZE_MAX_LOWER_LIMIT).
MIN_ITEM_SIZE = 1024


def check_item_size(max_item_size: int, memory_limit: int) -> None:
    """Refuse the item sizes memcached refuses at start-up, in its words."""
    if max_item_size < MIN_ITEM_SIZE:
        raise UsageProblem("Item max size cannot be less than 1024 bytes.")
    if max_item_size > memory_limit // 2:
        raise UsageProblem("Cannot set item size limit higher than 1/2 of memory max.")


def build_server(config: ServerConfig) -> MemcacheServer:
    """A server listening as ``config`` says (port 0: a free port), with its
    store open, ready for ``serve_forever()``.

    The caller owns the result: ``server.stop()`` then ``server.store.close()``.
    Raises :class:`UsageProblem` for contradictory options and
    :class:`LaunchError` when the environment says no; either way nothing is
    left open and no data file is created.
    """
    load_modules(config.modules)
    settings = protocol_settings(config)
    compact_min_size = _size(config.compact_min_size)
    check_item_size(settings.max_item_size, config.memory_limit * 1024 * 1024)
    if config.tls_cert and not config.tcp:
        raise UsageProblem(
            "--tls-cert serves TLS on TCP only, and --unix-socket alone listens on no TCP address "
            "(a Unix socket never leaves the machine): add --host or --port, or drop --tls-cert"
        )
    tls_context = server_tls(config.tls_cert, config.tls_key, config.tls_ca)
    addresses = listen_addresses(config)
    server = _unbound_server(config, settings, tls_context, addresses)
    # Bind first: a port in use should not leave a new data file behind.
    try:
        server.server_bind()
        server.store = _open_store(config, compact_min_size, settings.max_item_size)
        if config.disable_cas:
            server.store.disable_cas()
        server.server_activate()
    except ListenError as exc:
        server.server_close()
        raise LaunchError(str(exc)) from None
    except BaseException:
        server.server_close()
        raise
    return server


def listen_addresses(config: ServerConfig) -> list[Address]:
    """Where the server listens: each address of the ``host`` list resolved
    (a name may give several; one named twice is listened on once), then
    the Unix socket. A malformed list is a :class:`UsageProblem`, a name
    that does not resolve a :class:`LaunchError`."""
    addresses: list[Address] = []
    if config.tcp:
        try:
            pairs = parse_listen(config.listen_host, config.listen_port)
        except ValueError as exc:
            raise UsageProblem(f"--host: {exc}") from None
        for host, port in pairs:
            try:
                found = resolve(host, port)
            except (socket.gaierror, UnicodeError) as exc:
                reason = getattr(exc, "strerror", None) or exc
                raise LaunchError(f"cannot listen on {host or '*'}: {reason}") from None
            addresses += [address for address in found if address not in addresses]
    if config.unix_socket is not None:
        addresses.append(os.fspath(config.unix_socket))
    return addresses


def load_modules(specs: Iterable[str]) -> None:
    """Import the user's modules (``--load``) so their verbs register."""
    for spec in specs:
        try:
            load_module(spec)
        except LaunchError:
            raise
        except Exception as exc:
            raise LaunchError(f"cannot load {spec}: {exc}") from None


def protocol_settings(config: ServerConfig) -> Settings:
    """The protocol behaviour ``config`` asks for, every connection's."""
    try:
        return Settings(
            dialect=config.dialect,
            max_item_size=parse_size(config.max_item_size),
            simulate_delay=config.simulate_delay,
            enable_shutdown=config.enable_shutdown,
            flush_enabled=not config.disable_flush_all,
        )
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None


def _size(value: Size) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None


def _unbound_server(
    config: ServerConfig, settings: Settings, tls_context: Any, addresses: list[Address]
) -> MemcacheServer:
    """The server object, not yet bound, with no store yet: a
    :class:`MemcacheUnixServer` when it listens on a Unix socket only."""
    from ..protocols.auth import AuthFileError

    kind = MemcacheUnixServer if isinstance(addresses[0], str) else MemcacheServer
    if not 0 <= config.unix_mask <= 0o777:
        raise UsageProblem(f"--unix-mask must be an octal mode from 0 to 0777, not {config.unix_mask:o}")
    try:
        return kind(
            addresses[0],
            None,
            extra_addresses=addresses[1:],
            unix_mask=config.unix_mask,
            settings=settings,
            backlog=config.backlog,
            max_connections=config.max_connections,
            idle_timeout=config.idle_timeout,
            read_timeout=config.read_timeout,
            bind_and_activate=False,
            ssl_context=tls_context,
            auth_file=config.auth_file,
            protocol=config.protocol,
        )
    except AuthFileError as exc:
        raise LaunchError(str(exc)) from None


def _open_store(config: ServerConfig, compact_min_size: int, item_size_max: int) -> Store:
    """The store, from the data file (repaired first when asked and damaged) or in memory only."""
    options: dict[str, Any] = dict(
        memory_limit=config.memory_limit * 1024 * 1024,
        evict=not config.no_evict,
        compact_min_size=compact_min_size,
        item_size_max=item_size_max,
    )
    if config.path is None:
        return Store(None, **options)
    path = absolute(config.path)  # as every message names it
    if config.repair and os.path.exists(path):
        _repair_if_damaged(path)
    try:
        return Store(path, fsync=config.fsync, **options)
    except NotADataFile as exc:
        raise LaunchError(str(exc)) from None  # repair has nothing to salvage; the message says what to do
    except CorruptLogError as exc:
        raise LaunchError(f"{exc}; run 'mcl repair {path}' to salvage the valid records") from None
    except DataFileInUse as exc:
        raise LaunchError(str(exc)) from None
    except (OSError, RuntimeError) as exc:
        reason = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LaunchError(f"cannot open data file: {reason}") from None


def _repair_if_damaged(path: str) -> None:
    """``--repair``: salvage the file if it is damaged (holding its lock, as
    ``mcl repair`` does), and log what was kept and what could not be."""
    try:
        report = repair.repair(path)
    except DataFileInUse as exc:
        raise LaunchError(str(exc)) from None  # in the words a second server gets
    except NotADataFile as exc:
        raise LaunchError(f"cannot repair {exc}") from None  # the message names the file
    except (OSError, CorruptLogError) as exc:
        raise LaunchError(f"cannot repair {path}: {exc}") from None
    if report.damaged:
        for line in report.describe(path):
            log.warning("%s", line)
