"""User-space instructions per request of the in-process protocol engine,
counted by valgrind's callgrind: the figure to compare two versions by, since
CPU time on a shared machine swings up to 2x between runs of the same code.

    python benchmarks/instructions.py [--tree DIR] [--only get]
    python benchmarks/instructions.py --builds pure,compiled [--tree DIR]

Runs the cases of ``micro_session.py`` and ``micro_binary.py`` (the same
batches: ``Session.feed`` and ``BinarySession.feed`` over a store appending
to a data file, fsync everysec) once each under ``valgrind --tool=callgrind``
with ``PYTHONHASHSEED=0``; counting is zeroed (``callgrind_control -z``)
just before the measured loop and dumped (``callgrind_control -d``) just
after it, so start-up and set-up are not counted. Prints instructions per
request. ``--tree`` counts another checkout of the project (a ``git
worktree`` of the version before a change), so that both versions are
counted by this same script in one sitting. ``--builds pure,compiled``
counts one checkout's two builds instead (``benchmarks/builds.py``: the
checkout, and a scratch copy of it compiled with mypyc) and prints how many
times fewer instructions the compiled build needs. The in-process engine
leaves out the server around it (sockets, threads, the handler): for the
server process as a whole, see ``server_instructions.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import builds as buildtrees  # noqa: E402  (benchmarks/builds.py)

#: name: (protocol, kind, batches, requests per batch); as micro_session.py and micro_binary.py
CASES = {
    "text set x100": ("text", "set", 60, 100),
    "text set x1": ("text", "set", 3000, 1),
    "text set1k x1": ("text", "set1k", 3000, 1),
    "text get x1": ("text", "get", 3000, 1),
    "text get x100": ("text", "get", 60, 100),
    "text mget100 x1": ("text", "mget", 300, 1),
    "binary get x1": ("binary", "get", 3000, 1),
    "binary set x1": ("binary", "set", 3000, 1),
    "binary getkq x100 + noop": ("binary", "mget", 60, 100),
}

#: What runs inside valgrind: build the batches, fill the store, then the
#: measured loop between the two callgrind_control calls.
INNER = r"""
import os, struct, subprocess, sys, tempfile
from pathlib import Path
tree, protocol, kind, n, per = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sys.path.insert(0, tree)
try:
    from memcachedlite.protocols.binary import BinarySession, request
    from memcachedlite.protocols.session import Session
    from memcachedlite.storage.store import Store
except ImportError:  # a checkout from before the layered layout
    from memcachedlite.binary import BinarySession, request
    from memcachedlite.session import Session
    from memcachedlite.store import Store

def key(i):
    return b"mclbench:100:%d" % (i % 10000)

def text(kind, i):
    k = key(i)
    if kind == "set":
        return b"set %s 0 0 100\r\n%s\r\n" % (k, (k + b"." * 100)[:100])
    if kind == "set1k":
        return b"set %s 0 0 1024\r\n%s\r\n" % (k, (k + b"." * 1024)[:1024])
    if kind == "get":
        return b"get %s\r\n" % k
    return b"get " + b" ".join(key(i + j) for j in range(100)) + b"\r\n"

def binary(kind, i):
    k = key(i)
    if kind == "get":
        return request(0x00, k)
    if kind == "set":
        return request(0x01, k, (k + b"." * 100)[:100], struct.pack(">II", 0, 0))
    return request(0x0D, k)  # GETKQ; the batch ends with a NOOP

make = text if protocol == "text" else binary
batches = []
i = 0
for _ in range(n):
    reqs = []
    for _ in range(per):
        reqs.append(make(kind, i))
        i += 1
    if protocol == "binary" and kind == "mget":
        reqs.append(request(0x0A))
    batches.append(b"".join(reqs))
with tempfile.TemporaryDirectory() as tmp:
    store = Store(Path(tmp) / "data.txt", fsync="everysec")
    fill = Session(store)
    for start in range(0, 10000, 100):
        fill.feed(b"".join(text("set", j) for j in range(start, start + 100)))
    session = (BinarySession if protocol == "binary" else Session)(store)
    feed = session.feed
    for batch in batches[:3]:  # first-call costs (caches, lazy imports) out of the count
        feed(batch)
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
    for batch in batches[3:]:
        feed(batch)
    subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    store.close()
"""


def count(tree: Path, case: str) -> float:
    """Instructions per request of ``case`` in the checkout at ``tree``."""
    protocol, kind, n, per = CASES[case]
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, PYTHONHASHSEED="0")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=yes",
                f"--callgrind-out-file={out}/cg.%p",
                sys.executable,
                "-c",
                INNER,
                str(tree),
                protocol,
                kind,
                str(n),
                str(per),
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        # the dump of the measured loop is the one callgrind_control -d made (cg.<pid>.1)
        dumps = sorted(Path(out).glob("cg.*.1"))
        if not dumps:
            raise RuntimeError("no callgrind dump of the measured loop")
        text = dumps[0].read_text(errors="replace")
    match = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    assert match is not None, "callgrind dump without totals"
    return int(match.group(1)) / ((n - 3) * per)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, action="append", help="checkout(s) to count (default: this one)")
    parser.add_argument("--only", default="", help="only the cases whose name holds this")
    parser.add_argument("--builds", help="count these builds of one checkout side by side, e.g. pure,compiled")
    args = parser.parse_args()
    if args.builds is None:
        print_counts({str(t)[-24:]: t for t in args.tree or [ROOT]}, args.only)
        return
    if args.tree and len(args.tree) > 1:
        parser.error("--builds counts the builds of one checkout: give one --tree at most")
    try:
        builds = buildtrees.parse_builds(args.builds)
    except ValueError as exc:
        parser.error(f"--builds: {exc}")
    with buildtrees.prepared(builds, (args.tree or [ROOT])[0].resolve()) as trees:
        print_counts(trees, args.only, fewer=set(trees) == set(buildtrees.BUILDS))


def print_counts(trees: dict[str, Path], only: str, fewer: bool = False) -> None:
    """A line per case: instructions per request in each tree, and the change from the first to the second
    (with ``fewer``: how many times fewer the second needs)."""
    last = "   fewer" if fewer else "   change" if len(trees) == 2 else ""
    print("case".ljust(26) + "".join(label.rjust(26) for label in trees) + last)
    for case in CASES:
        if only not in case:
            continue
        figures = [count(tree, case) for tree in trees.values()]
        line = case.ljust(26) + "".join(f"{f:26,.0f}" for f in figures)
        if fewer:
            line += f"   {figures[0] / figures[1]:.2f}x"
        elif len(figures) == 2:
            line += f"   {figures[1] / figures[0] - 1:+.1%}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
