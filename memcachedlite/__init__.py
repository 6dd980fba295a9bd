"""memcachedlite: a memcached-compatible key-value server with durable storage.

Public API: :class:`MemcacheServer`, :class:`Store`, the verb registry
(:data:`default_registry`, :func:`command`, :class:`Registry`), :class:`Session`,
:class:`Settings` and the error types.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import admin as _admin  # noqa: E402,F401  (registers lru_crawler metadump)
from . import commands as _commands  # noqa: E402,F401  (registers the built-in verbs)
from . import meta as _meta  # noqa: E402,F401  (registers the meta verbs)
from .errors import (  # noqa: E402
    BadCommandLine,
    ClientError,
    CorruptLogError,
    LogWriteError,
    ProtocolError,
    ServerError,
    UnknownCommand,
)
from .registry import Command, Registry, command, default_registry  # noqa: E402
from .server import MemcacheHandler, MemcacheServer  # noqa: E402
from .session import Session, Settings  # noqa: E402
from .store import Item, Store  # noqa: E402

__all__ = [
    "BadCommandLine",
    "ClientError",
    "Command",
    "CorruptLogError",
    "Item",
    "LogWriteError",
    "MemcacheHandler",
    "MemcacheServer",
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
