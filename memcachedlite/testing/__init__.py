"""memcachedlite inside another program's tests: a real server on a free port
of 127.0.0.1 served by a background thread of the test process, the faults
it can show on purpose, and the pytest plugin built on it
(:mod:`memcachedlite.testing.plugin`, registered through the ``pytest11``
entry point).

The names below come from :mod:`memcachedlite.testing.background` when first
used: the plugin is loaded into every pytest run of an environment where
memcachedlite is installed, and importing this package alone must not
import the server.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DISK_FULL",
    "BackgroundServer",
    "ExternalServer",
    "Faults",
    "join_address",
    "serve_in_background",
    "server_factory",
    "split_address",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import background

        return getattr(background, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
