"""Run the whole test suite on the compiled build (issue 25): copy the
checkout to a scratch folder, compile the modules of
``memcachedlite/buildinfo.py`` there with mypyc (``MEMCACHEDLITE_COMPILE=1``,
built in place), and run pytest on that copy with
``MEMCACHEDLITE_EXPECT_BUILD=mypyc``, so that tests/test_build.py fails if
the compiled modules are not the ones imported.

    python3 tests/run_compiled.py [pytest arguments...]

A copy, not this checkout: compiled modules left beside their sources would
shadow every later edit of them. Its exit status is pytest's. Coverage is
not measured here: it cannot see into compiled code (the pure run measures it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# the benchmarks build their compiled copy the same way: one copy of the steps
from benchmarks.builds import compile_in_place, copy_checkout  # noqa: E402


def run_tests(tree: Path, args: list[str]) -> int:
    """pytest on ``tree``, which imports its own (compiled) memcachedlite."""
    env = dict(os.environ, PYTHONPATH=str(tree), MEMCACHEDLITE_EXPECT_BUILD="mypyc")
    env.pop("COVERAGE_PROCESS_START", None)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=tree, env=env).returncode


def main(args: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="memcachedlite-compiled-") as scratch:
        tree = copy_checkout(ROOT, Path(scratch) / "memcachedlite")
        print(f"compiling with mypyc in {tree} ...", flush=True)
        try:
            seconds = compile_in_place(tree, Path(scratch) / "mypyc.log")
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"compiled in {seconds:.0f} s", flush=True)
        return run_tests(tree, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
