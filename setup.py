"""Build switch: ``MEMCACHEDLITE_COMPILE=1`` compiles the modules listed in
``memcachedlite/buildinfo.py`` with mypyc; without it, the package is pure
Python (all metadata lives in setup.cfg)."""

import ast
import os
from pathlib import Path

from setuptools import setup


def compiled_modules() -> list:
    """The COMPILED tuple of memcachedlite/buildinfo.py, read without importing the package."""
    tree = ast.parse(Path(__file__).with_name("memcachedlite").joinpath("buildinfo.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMPILED" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit("memcachedlite/buildinfo.py has no COMPILED tuple")


if os.environ.get("MEMCACHEDLITE_COMPILE", "") not in ("", "0"):
    # setuptools asks setup.py for its build requirements first: mypy is one only here
    try:
        from mypyc.build import mypycify
    except ImportError:
        setup(setup_requires=["mypy>=1.10"])
    else:
        paths = [name.replace(".", "/") + ".py" for name in compiled_modules()]
        # group_name: the shared runtime library is memcachedlite__mypyc.<abi>.so, not
        # <hash of the module list>__mypyc.<abi>.so, so a rebuild replaces it instead of
        # leaving the old one beside it
        ext_modules = mypycify(paths, opt_level="3", group_name="memcachedlite")
        setup(ext_modules=ext_modules, setup_requires=["mypy>=1.10"])
else:
    setup()
