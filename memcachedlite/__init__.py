"""memcachedlite: a memcached-compatible key-value server with durable storage.

Public API: :class:`MemcacheServer` (and :class:`MemcacheUnixServer`), :class:`Store`, the verb registry
(:data:`default_registry`, :func:`command`, :class:`Registry`), :class:`Session`,
:class:`Settings` and the error types. The layers behind them, lowest first:
:mod:`~memcachedlite.errors`, :mod:`~memcachedlite.storage`,
:mod:`~memcachedlite.protocols`, :mod:`~memcachedlite.server`, then
:mod:`~memcachedlite.cli`, :mod:`~memcachedlite.loadgen` and
:mod:`~memcachedlite.testing`.

Each name is imported from its module when first used (PEP 562), so that
``import memcachedlite`` costs nothing: the pytest plugin
(:mod:`memcachedlite.testing.plugin`) is loaded into every pytest run of an
environment where memcachedlite is installed, and must not pay for the
server, nor fail where the server cannot run. ``from memcachedlite import
command`` imports the server's protocols at that moment, as before.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each public name lives (imported on first use).
_HOMES = {
    "BadCommandLine": "errors",
    "ClientError": "errors",
    "CorruptLogError": "errors",
    "LogWriteError": "errors",
    "ProtocolError": "errors",
    "ServerError": "errors",
    "UnknownCommand": "errors",
    "UnsupportedPlatform": "errors",
    "Command": "protocols.registry",
    "Registry": "protocols.registry",
    "command": "protocols.registry",
    "default_registry": "protocols.registry",
    "Session": "protocols.session",
    "Settings": "protocols.settings",
    "MemcacheHandler": "server.tcp",
    "MemcacheServer": "server.tcp",
    "MemcacheUnixServer": "server.tcp",
    "Item": "storage.items",
    "Store": "storage.store",
    "__version__": "version",
}

#: The subpackages and modules ``memcachedlite.<name>`` reaches without an import of its own.
_MODULES = frozenset({"cli", "errors", "loadgen", "protocols", "server", "storage", "testing", "version"})

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    elif name in _MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next use is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_MODULES})
