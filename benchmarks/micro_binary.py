"""In-process microbenchmark of the binary protocol against the text one:
``BinarySession.feed`` and ``Session.feed`` on the same workloads (no
sockets), each with a Store appending to a data file (fsync everysec, the
server's default).

    python benchmarks/micro_binary.py [--repeat 9] [--only get] [--profile "binary get x1"]

Prints best-of-N microseconds of CPU time per request for each case in both protocols,
and the binary protocol's cost over the text one. Issue 12 asks for a binary
get or set to cost no more than 10% over its text counterpart.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memcachedlite.protocols.binary import GET, GETKQ, NOOP, SET, SETQ, BinarySession, request  # noqa: E402
from memcachedlite.protocols.session import Session  # noqa: E402
from memcachedlite.storage.store import Store  # noqa: E402

KEYS = 10000
_SET_EXTRAS = struct.pack(">II", 0, 0)


def key(i: int) -> bytes:
    return b"mclbench:100:%d" % (i % KEYS)


def value(k: bytes, size: int) -> bytes:
    return (k + b"." * size)[:size]


def text_request(kind: str, i: int) -> bytes:
    k = key(i)
    if kind == "set":
        return b"set %s 0 0 100\r\n%s\r\n" % (k, value(k, 100))
    if kind == "set1k":
        return b"set %s 0 0 1024\r\n%s\r\n" % (k, value(k, 1024))
    if kind == "get":
        return b"get %s\r\n" % k
    # a multi-get of 100 keys
    return b"get " + b" ".join(key(i + j) for j in range(100)) + b"\r\n"


def binary_request(kind: str, i: int) -> bytes:
    """What a binary client sends for the same work: SET, GET, and for a
    multi-get the GETKQ-per-key-then-NOOP pipeline libmemcached uses."""
    k = key(i)
    if kind == "set":
        return request(SET, k, value(k, 100), _SET_EXTRAS)
    if kind == "set1k":
        return request(SET, k, value(k, 1024), _SET_EXTRAS)
    if kind == "setq":
        return request(SETQ, k, value(k, 100), _SET_EXTRAS)
    if kind == "get":
        return request(GET, k)
    return b"".join(request(GETKQ, key(i + j)) for j in range(100)) + request(NOOP)


def batches(protocol: str, kind: str, n_batches: int, per: int) -> list[bytes]:
    make = binary_request if protocol == "binary" else text_request
    out = []
    i = 0
    for _ in range(n_batches):
        out.append(b"".join(make(kind, i + j) for j in range(per)))
        i += per
    return out


CASES = {
    # name: (kind, batches, requests per batch)
    "set x1": ("set", 20000, 1),
    "set x100": ("set", 200, 100),
    "set1k x1": ("set1k", 20000, 1),
    "get x1": ("get", 20000, 1),
    "get x100": ("get", 200, 100),
    "mget100 x1": ("mget", 2000, 1),
}
SESSIONS = {"text": Session, "binary": BinarySession}


def run_case(name: str, repeat: int, profile: str = "") -> dict[str, float]:
    """Best-of-``repeat`` microseconds per request in each protocol; the two
    take turns (and go first in turn), so that load from elsewhere on the
    machine hits both alike."""
    kind, nb, per = CASES[name]
    data = {protocol: batches(protocol, kind, nb, per) for protocol in SESSIONS}
    best = dict.fromkeys(SESSIONS, float("inf"))
    with tempfile.TemporaryDirectory() as tmp:
        # No compaction: a background rewrite would slow whichever protocol it overlaps.
        store = Store(Path(tmp) / "data.txt", fsync="everysec", compact_min_size=1 << 62)
        try:
            if kind in ("get", "mget"):
                loader = Session(store)
                for b in batches("text", "set", 100, 100):
                    loader.feed(b)
            for round_ in range(repeat):
                # each protocol goes first in every other round
                for protocol in sorted(SESSIONS, reverse=bool(round_ % 2)):
                    session_class = SESSIONS[protocol]
                    if profile and protocol != profile:
                        continue
                    feed = session_class(store).feed
                    prof = cProfile.Profile() if profile else None
                    if prof:
                        prof.enable()
                    t0 = time.process_time()
                    for b in data[protocol]:
                        feed(b)
                    t = time.process_time() - t0
                    if prof:
                        prof.disable()
                        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
                        return {}
                    best[protocol] = min(best[protocol], t)
        finally:
            store.close()
    return {protocol: t / (nb * per) * 1e6 for protocol, t in best.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--profile", help='one case, e.g. "binary get x1"')
    p.add_argument("--only")
    a = p.parse_args()
    if a.profile:
        protocol, name = a.profile.split(" ", 1)
        run_case(name, 1, profile=protocol)
        return
    print(f"{'case':<12} {'text':>8} {'binary':>8}  binary over text (us/request)")
    for name in CASES:
        if a.only and a.only not in name:
            continue
        t = run_case(name, a.repeat)
        print(f"{name:<12} {t['text']:8.2f} {t['binary']:8.2f}  {100 * (t['binary'] / t['text'] - 1):+6.1f}%")


if __name__ == "__main__":
    main()
