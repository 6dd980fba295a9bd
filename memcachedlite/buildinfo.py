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
import sys

#: The modules the compiled build compiles, by profile (the request path).
COMPILED = (
    "memcachedlite.storage.items",
    "memcachedlite.storage.numbers",
    "memcachedlite.storage.records",
    "memcachedlite.storage.durability",
    "memcachedlite.storage.statistics",
    "memcachedlite.storage.memory",
    "memcachedlite.storage.batches",
    "memcachedlite.storage.store",
    "memcachedlite.storage.datafile",
    "memcachedlite.storage.slabs",
    "memcachedlite.storage.prefixes",
    "memcachedlite.storage.keys",
    "memcachedlite.protocols.registry",
    "memcachedlite.protocols.text",
    "memcachedlite.protocols.session",
    "memcachedlite.protocols.commands",
    "memcachedlite.protocols.meta",
    "memcachedlite.protocols.binary",
    "memcachedlite.server.tcp",
    "memcachedlite.server.delivery",
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


def refuse_python_subclass(cls: type, base: type) -> None:
    """What ``__init_subclass__`` of a public class that the compiled build
    compiles (:class:`~memcachedlite.storage.store.Store`,
    :class:`~memcachedlite.protocols.session.Session`,
    :class:`~memcachedlite.protocols.registry.Registry`) calls.

    A compiled class takes no subclass written in Python: mypyc would let
    the class statement pass and refuse every instance ("interpreted classes
    cannot inherit from compiled"). This refuses the class statement instead,
    saying what to do. The pure build takes any subclass, and so does a
    compiled module (``BinarySession`` is a compiled subclass of ``Session``).
    """
    if cls.__module__ in COMPILED:
        return
    module = sys.modules.get(base.__module__)
    if not str(getattr(module, "__file__", "") or "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        return
    raise TypeError(
        f"class {cls.__qualname__} cannot subclass {base.__name__}: this is memcachedlite's compiled (mypyc) "
        f"build, whose {base.__name__} takes no subclass written in Python. Wrap a {base.__name__} instead, "
        "or install the pure build (pip install memcachedlite, without MEMCACHEDLITE_COMPILE=1); "
        "see docs/compiled-build.md"
    )
