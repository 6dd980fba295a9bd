"""Which build of memcachedlite is running, and which modules the compiled
build compiles.

memcachedlite is one Python source with two builds: the pure one (what
``pip install .`` gives), and one where the modules of :data:`COMPILED` are
compiled to C extensions with mypyc (``MEMCACHEDLITE_COMPILE=1 pip install .``;
see ``setup.py``). The list was chosen by profile: the modules that a get or
a set passes through, and nothing a user is invited to subclass or patch.
``setup.py`` reads it from this file without importing the package, so it
must stay a plain tuple of module names.
"""

from __future__ import annotations

import importlib
import importlib.machinery

#: The modules the compiled build compiles, by profile (the request path).
COMPILED = (
    "memcachedlite.storage.items",
    "memcachedlite.storage.numbers",
    "memcachedlite.storage.records",
    "memcachedlite.storage.durability",
    "memcachedlite.storage.statistics",
    "memcachedlite.storage.store",
    "memcachedlite.protocols.registry",
    "memcachedlite.protocols.text",
    "memcachedlite.protocols.session",
    "memcachedlite.protocols.commands",
    "memcachedlite.protocols.meta",
    "memcachedlite.protocols.binary",
)


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED` that were imported from a C extension."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    out = []
    for name in COMPILED:
        path = getattr(importlib.import_module(name), "__file__", None) or ""
        if path.endswith(suffixes):
            out.append(name)
    return out


def build() -> str:
    """``"mypyc"`` when the compiled modules are running, else ``"pure"``."""
    return "mypyc" if compiled_modules() else "pure"


def describe() -> str:
    """The build, as the start-up log and ``mcl --version`` say it."""
    return "mypyc build" if build() == "mypyc" else "pure Python build"
