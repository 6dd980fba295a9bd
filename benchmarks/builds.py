"""The two builds of one checkout, side by side, for the benchmarks: the pure
one (the checkout itself) and the compiled one (a scratch copy of it whose
modules of ``memcachedlite/buildinfo.py``'s COMPILED are compiled with mypyc
beside their sources, ``MEMCACHEDLITE_COMPILE=1 python setup.py build_ext
--inplace``).

A copy, never the checkout itself: compiled modules left beside their
sources shadow every later edit of them. Each tree is checked before it is
measured (:func:`check_build`): a "pure" checkout with a stale compiled
module in it, or a "compiled" copy that imports its ``.py`` files, would
compare a build with itself.

Used by ``run.py --builds`` and ``instructions.py`` / ``server_instructions.py
--builds``; a server or an interpreter runs a build with ``PYTHONPATH=<its tree>``.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent

PURE = "pure"
COMPILED = "compiled"
BUILDS = (PURE, COMPILED)
#: What ``memcachedlite.buildinfo.build()`` (and ``stats settings``' ``build``) says of each build.
BUILD_KEYS = {PURE: "pure", COMPILED: "mypyc"}

#: What a copy of the checkout leaves out: history, build output, caches, data.
LEFT_OUT = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.pyd", ".coverage*", ".pytest_cache",
    ".hypothesis", ".ruff_cache", ".import_linter_cache", ".mypy_cache", "site", ".venv", "venv", "corpus",
    "artifacts", "results", "data.txt",
)  # fmt: skip


def parse_builds(text: str) -> tuple[str, ...]:
    """``"pure,compiled"`` -> ``("pure", "compiled")``: known names, each once, in the order given."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BUILDS))
    if unknown:
        raise ValueError(f"unknown builds: {', '.join(unknown)} (known: {', '.join(BUILDS)})")
    if not names:
        raise ValueError(f"no build named (known: {', '.join(BUILDS)})")
    if len(set(names)) != len(names):
        raise ValueError(f"a build is named twice: {text}")
    return tuple(names)


def copy_checkout(source: Path, target: Path) -> Path:
    """The checkout's files in ``target``, without history, build output or compiled modules."""
    shutil.copytree(source, target, ignore=LEFT_OUT, symlinks=True)
    return target


def compile_in_place(tree: Path, log_file: Path) -> float:
    """Compile ``tree``'s COMPILED modules with mypyc beside their sources; seconds it took.

    Run under ``nice``: the machine is shared, and a build need not be quick.
    Its output goes to ``log_file``; a failed build raises with its errors.
    """
    env = dict(os.environ, MEMCACHEDLITE_COMPILE="1")
    command = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
    if shutil.which("nice"):
        command = ["nice", "-n", "10", *command]
    started = time.monotonic()
    with open(log_file, "wb") as out:
        done = subprocess.run(command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        lines = log_file.read_text(errors="replace").splitlines()
        errors = [line for line in lines if "error" in line.lower()] or lines[-20:]
        raise RuntimeError(f"the mypyc build of {tree} failed (exit {done.returncode}):\n" + "\n".join(errors[:20]))
    return time.monotonic() - started


def extension_files(tree: Path) -> list[Path]:
    """Compiled modules (C extensions) inside the package of ``tree``."""
    package = tree / "memcachedlite"
    return sorted({p for suffix in importlib.machinery.EXTENSION_SUFFIXES for p in package.rglob(f"*{suffix}")})


def imported_build(tree: Path) -> dict[str, list[str]]:
    """What an interpreter with ``PYTHONPATH=tree`` imports: the modules meant to be compiled, and those that are."""
    probe = (
        "import json\nfrom memcachedlite import buildinfo\n"
        "print(json.dumps({'listed': list(buildinfo.COMPILED), 'compiled': buildinfo.compiled_modules()}))"
    )
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, "-c", probe], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"cannot import memcachedlite.buildinfo from {tree}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def own_build(tree: Path) -> str:
    """The build ``tree`` runs as it is: compiled when its modules were compiled in place, else pure."""
    return COMPILED if extension_files(tree) else PURE


def check_build(tree: Path, build: str) -> None:
    """Raise unless ``tree`` runs ``build``: a pure tree has no compiled module, a compiled one imports them all."""
    if build == PURE:
        stale = extension_files(tree)
        if stale:
            shown = ", ".join(str(p.relative_to(tree)) for p in stale[:3])
            raise RuntimeError(
                f"{tree} is to be measured as the pure build but has compiled modules beside its sources "
                f"({shown}{', ...' if len(stale) > 3 else ''}): delete them, or they shadow the .py files"
            )
        return
    seen = imported_build(tree)
    missing = sorted(set(seen["listed"]) - set(seen["compiled"]))
    if not seen["listed"] or missing:
        shown = ", ".join(missing) or "no module listed in COMPILED"
        raise RuntimeError(f"{tree} is to be measured as the compiled build but imports {shown} from .py files")


@contextlib.contextmanager
def prepared(
    builds: tuple[str, ...], source: Path = ROOT, log: Callable[[str], None] = print
) -> Iterator[dict[str, Path]]:
    """The tree of each build of ``source``, checked: the checkout itself for the pure build, a
    compiled scratch copy for the compiled one (deleted when the block ends).

    A ``source`` whose modules are compiled already (a scratch copy such as
    ``tests/run_compiled.py``'s) is its own compiled build, and cannot be
    the pure one.
    """
    with tempfile.TemporaryDirectory(prefix="mcl-builds-") as scratch:
        trees: dict[str, Path] = {}
        for build in builds:
            if build == PURE or extension_files(source):
                tree = source
            else:
                tree = copy_checkout(source, Path(scratch) / "compiled")
                log(f"compiling {source} with mypyc in a scratch copy ({tree}) ...")
                seconds = compile_in_place(tree, Path(scratch) / "compile.log")
                log(f"compiled in {seconds:.0f} s")
            check_build(tree, build)
            trees[build] = tree
        yield trees
