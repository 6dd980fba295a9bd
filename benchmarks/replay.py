"""Start-up speed: how fast a data file of N small items is replayed.

    python benchmarks/replay.py [--items 1000000] [--value-size 20] [--snapshot | --pipelined]

Writes a data file (in a temporary directory) with one ``set`` record per
item (with ``--snapshot``, then compacts it, so the items sit in a snapshot
section that loads in bulk; with ``--pipelined``, through the protocol engine
in runs of 100 pipelined sets, as W8 writes it, so they are ``sets``
records), then times ``Store(path)`` and reports records per second and the
peak resident memory of the process while loading.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memcachedlite import Session, Store  # noqa: E402
from memcachedlite.storage.records import HEADER, encode_set  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--value-size", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="loads to time; the median and best are shown")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--snapshot", action="store_true", help="compact the file first (a snapshot section)")
    form.add_argument("--pipelined", action="store_true", help="write it in runs of 100 pipelined sets")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.txt")
        value = b"v" * args.value_size
        if args.pipelined:
            store = Store(path, memory_limit=1 << 40, compact_min_size=1 << 62)
            session = Session(store)
            for first in range(0, args.items, 100):
                session.feed(
                    b"".join(
                        b"set key:%d 0 0 %d\r\n%s\r\n" % (i, len(value), value)
                        for i in range(first, min(first + 100, args.items))
                    )
                )
            store.close()
            del store, session
        else:
            with open(path, "wb") as f:
                f.write(HEADER)
                chunk = []
                for i in range(args.items):
                    chunk.append(encode_set(b"key:%d" % i, value, 0, 0, i + 1))
                    if len(chunk) == 10000:
                        f.write(b"".join(chunk))
                        chunk.clear()
                f.write(b"".join(chunk))
        if args.snapshot:
            store = Store(path, memory_limit=1 << 40)
            store.compact()
            store.close()
            del store
        size = os.path.getsize(path)
        times = []
        for _ in range(args.repeat):
            before = rss_mib()
            start = time.perf_counter()
            store = Store(path, memory_limit=1 << 40)
            times.append(time.perf_counter() - start)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            loaded = len(store)
            after = rss_mib()
            store.close()
            del store
    times.sort()
    median, best = times[len(times) // 2], times[0]
    form = "in a snapshot section" if args.snapshot else "as sets records" if args.pipelined else "as set records"
    print(f"file: {size / 2**20:.1f} MiB, {args.items} items of {args.value_size}-byte values {form}")
    print(
        f"replayed {loaded} items: median {median:.2f} s ({args.items / median:,.0f} records/s),"
        f" best {best:.2f} s ({args.items / best:,.0f} records/s) over {len(times)} loads"
    )
    print(f"RSS before {before:.0f} MiB, after {after:.0f} MiB, peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
