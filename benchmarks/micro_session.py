"""In-process microbenchmark of the protocol engine: Session.feed on
pipelined batches (no sockets), with a Store appending to a data file
(fsync everysec, as the server's default).

    python benchmarks/micro_session.py [--repeat 5] [--profile set|get|set1k|...]

Prints the best-of-N microseconds of CPU time (``time.process_time``) per
command for each case: CPU time, so that other programs on the machine do
not show up in it.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memcachedlite.protocols.session import Session  # noqa: E402
from memcachedlite.storage.store import Store  # noqa: E402


def batches(kind: str, n_batches: int, per: int) -> list[bytes]:
    out = []
    k = 0
    for _ in range(n_batches):
        cmds = []
        for _ in range(per):
            key = b"mclbench:100:%d" % (k % 10000)
            k += 1
            if kind == "set":
                cmds.append(b"set %s 0 0 100\r\n%s\r\n" % (key, (key + b"." * 100)[:100]))
            elif kind == "set1k":
                cmds.append(b"set %s 0 0 1024\r\n%s\r\n" % (key, (key + b"." * 1024)[:1024]))
            elif kind == "get":
                cmds.append(b"get %s\r\n" % key)
            elif kind == "mget":
                cmds.append(b"get " + b" ".join(b"mclbench:100:%d" % ((k + i) % 10000) for i in range(100)) + b"\r\n")
        out.append(b"".join(cmds))
    return out


CASES = {
    # name: (kind, batches, commands per batch)
    "set x100 (W6)": ("set", 200, 100),
    "set x1 (W2/W4)": ("set", 20000, 1),
    "set1k x1 (W4)": ("set1k", 20000, 1),
    "get x1 (W1/W2)": ("get", 20000, 1),
    "get x100": ("get", 200, 100),
    "mget100 x1 (W3)": ("mget", 2000, 1),
}


def run_case(name: str, repeat: int, profile: bool = False) -> float:
    kind, nb, per = CASES[name]
    data = batches(kind, nb, per)
    best = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "data.txt", fsync="everysec")
        try:
            if kind in ("get", "mget"):
                s = Session(store)
                for b in batches("set", 100, 100):
                    s.feed(b)
            for _ in range(repeat):
                s = Session(store)
                feed = s.feed
                prof = cProfile.Profile() if profile else None
                if prof:
                    prof.enable()
                t0 = time.process_time()
                for b in data:
                    feed(b)
                t = time.process_time() - t0
                if prof:
                    prof.disable()
                    pstats.Stats(prof).sort_stats("tottime").print_stats(12)
                    return t
                best = min(best, t)
        finally:
            store.close()
    return best / (nb * per) * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--profile")
    p.add_argument("--only")
    a = p.parse_args()
    if a.profile:
        run_case(a.profile, 1, profile=True)
        return
    for name in CASES:
        if a.only and a.only not in name:
            continue
        print(f"{name:<18} {run_case(name, a.repeat):6.2f} us/command")


if __name__ == "__main__":
    main()
