"""Building a ready server from the options of ``mcl serve``: the one place that
turns those options into a bound :class:`MemcacheServer` with its
:class:`Store`, so the CLI and :mod:`memcachedlite.testing` cannot drift apart.

Every keyword of :func:`build_server` is named as the ``mcl serve`` option it
stands for (``--max-item-size`` is ``max_item_size``), so adding an option is a
click decorator in ``cli_serve.py`` and a keyword here.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from typing import Any, Iterable, Optional, Union

from ..errors import CorruptLogError
from ..protocols.settings import Settings
from ..protocols.text import DEFAULT_MAX_ITEM_SIZE
from ..storage import repair
from ..storage.durability import DEFAULT_COMPACT_MIN_SIZE
from ..storage.store import Store
from .tcp import DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_TIMEOUT, MemcacheServer

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Size = Union[int, str]


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
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        importlib.import_module(spec)
    log.info("loaded verbs from %s", spec)


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


def build_server(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    data_file: Optional[PathLike] = None,
    no_data_file: bool = False,
    fsync: str = "everysec",
    dialect: str = "memcached",
    max_item_size: Size = DEFAULT_MAX_ITEM_SIZE,
    memory_limit: int = 64,
    no_evict: bool = False,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    idle_timeout: float = 0.0,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    backlog: int = 1024,
    compact_min_size: Size = DEFAULT_COMPACT_MIN_SIZE,
    repair: bool = False,
    modules: Iterable[str] = (),
    tls_cert: Optional[PathLike] = None,
    tls_key: Optional[PathLike] = None,
    tls_ca: Optional[PathLike] = None,
    auth_file: Optional[PathLike] = None,
    simulate_delay: bool = False,
    enable_shutdown: bool = False,
    disable_flush_all: bool = False,
    disable_cas: bool = False,
    protocol: str = "auto",
) -> MemcacheServer:
    """A server listening on ``host:port`` (0: a free port), with its store
    open, ready for ``serve_forever()``.

    ``data_file=None`` or ``no_data_file=True`` keeps the data in memory only,
    as memcached does; ``memory_limit`` is in MiB, sizes take ``512k``/``1m``.
    The caller owns the result: ``server.stop()`` then ``server.store.close()``.
    Raises :class:`UsageProblem` for contradictory options and
    :class:`LaunchError` when the environment says no; either way nothing is
    left open and no data file is created.
    """
    for spec in modules:
        try:
            load_module(spec)
        except LaunchError:
            raise
        except Exception as exc:
            raise LaunchError(f"cannot load {spec}: {exc}") from None
    try:
        settings = Settings(
            dialect=dialect,
            max_item_size=parse_size(max_item_size),
            simulate_delay=simulate_delay,
            enable_shutdown=enable_shutdown,
            flush_enabled=not disable_flush_all,
        )
        compact_min_size = parse_size(compact_min_size)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    check_item_size(settings.max_item_size, memory_limit * 1024 * 1024)
    path = None if no_data_file else data_file
    tls_context = server_tls(tls_cert, tls_key, tls_ca)
    from ..protocols.auth import AuthFileError

    # Bind first: a port in use should not leave a new data file behind.
    try:
        server = MemcacheServer(
            (host, port),
            None,
            settings=settings,
            backlog=backlog,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            read_timeout=read_timeout,
            bind_and_activate=False,
            ssl_context=tls_context,
            auth_file=auth_file,
            protocol=protocol,
        )
    except AuthFileError as exc:
        raise LaunchError(str(exc)) from None
    try:
        server.server_bind()
        server.store = _open_store(path, repair, fsync, memory_limit, no_evict, compact_min_size)
        if disable_cas:
            server.store.disable_cas()
        server.server_activate()
    except OSError as exc:
        server.server_close()
        raise LaunchError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    except BaseException:
        server.server_close()
        raise
    return server


def _open_store(
    path: Optional[PathLike], repair: bool, fsync: str, memory_limit: int, no_evict: bool, compact_min_size: int
) -> Store:
    """The store, from the data file (repaired first when asked and damaged) or in memory only."""
    options: dict[str, Any] = dict(
        memory_limit=memory_limit * 1024 * 1024, evict=not no_evict, compact_min_size=compact_min_size
    )
    if path is None:
        return Store(None, **options)
    if repair and os.path.exists(path):
        _repair_if_damaged(path)
    try:
        return Store(path, fsync=fsync, **options)
    except CorruptLogError as exc:
        raise LaunchError(f"{exc}; run 'mcl repair {os.fspath(path)}' to salvage the valid records") from None
    except (OSError, RuntimeError) as exc:
        reason = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LaunchError(f"cannot open data file: {reason}") from None


def _repair_if_damaged(path: PathLike) -> None:
    try:
        with open(path, "rb") as f:
            damaged = repair.salvage(f.read())[1].damaged_offsets
        if damaged:
            repair.repair(path)  # logs what it kept and where the original went
    except (OSError, CorruptLogError) as exc:
        raise LaunchError(f"cannot repair {os.fspath(path)}: {exc}") from None
