"""memcachedlite: a memcached-compatible key-value server with durable storage.

Public API: :class:`MemcacheServer` (and :class:`MemcacheUnixServer`), :class:`Store`, the verb registry
(:data:`default_registry`, :func:`command`, :class:`Registry`), :class:`Session`,
:class:`Settings` and the error types. The layers behind them, lowest first:
:mod:`~memcachedlite.errors`, :mod:`~memcachedlite.storage`,
:mod:`~memcachedlite.protocols`, :mod:`~memcachedlite.server`, then
:mod:`~memcachedlite.cli`, :mod:`~memcachedlite.loadgen` and
:mod:`~memcachedlite.testing`.
"""

from __future__ import annotations

from .errors import (
    BadCommandLine,
    ClientError,
    CorruptLogError,
    LogWriteError,
    ProtocolError,
    ServerError,
    UnknownCommand,
)
from .protocols.registry import Command, Registry, command, default_registry
from .protocols.session import Session
from .protocols.settings import Settings
from .server.tcp import MemcacheHandler, MemcacheServer, MemcacheUnixServer
from .storage.items import Item
from .storage.store import Store
from .version import __version__

__all__ = [
    "BadCommandLine",
    "ClientError",
    "Command",
    "CorruptLogError",
    "Item",
    "LogWriteError",
    "MemcacheHandler",
    "MemcacheServer",
    "MemcacheUnixServer",
    "ProtocolError",
    "Registry",
    "ServerError",
    "Session",
    "Settings",
    "Store",
    "UnknownCommand",
    "__version__",
    "command",
    "default_registry",
]
