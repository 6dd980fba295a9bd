"""The longest pause a client sees while the data file is compacted.

    python benchmarks/compaction_pause.py [--items 1000000]

Starts ``mcl serve`` on a free port with a temporary data file, stores N
items of 100 bytes (pipelined), then, while one client keeps sending
``get`` request after request, asks for a compaction and reports that
client's latencies during it: the longest, and the 99th percentile.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_server(data_file: str) -> tuple[subprocess.Popen, int, str]:
    log_path = data_file + ".log"
    log = open(log_path, "wb")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "memcachedlite", "serve", "--port", "0", "--data-file", data_file, "-m", "4096"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(rb"listening on [\d.]+:(\d+)", Path(log_path).read_bytes())
        if match:
            return proc, int(match.group(1)), log_path
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def ask(sock: socket.socket, request: bytes, end: bytes) -> bytes:
    sock.sendall(request)
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def stat(sock: socket.socket, name: bytes) -> int:
    reply = ask(sock, b"stats\r\n", b"END\r\n")
    return int(re.search(rb"STAT " + name + rb" (\d+)", reply).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, _ = start_server(os.path.join(tmp, "data.txt"))
        try:
            fill = socket.create_connection(("127.0.0.1", port))
            value = b"v" * 100
            batch = []
            for i in range(args.items):
                batch.append(b"set key:%d 0 0 100 noreply\r\n%s\r\n" % (i, value))
                if len(batch) == 2000:
                    fill.sendall(b"".join(batch))
                    batch.clear()
            fill.sendall(b"".join(batch))
            ask(fill, b"version\r\n", b"\r\n")
            size_before = stat(fill, b"data_file_bytes")

            latencies: list[tuple[float, float]] = []
            stop = threading.Event()

            def reader() -> None:
                c = socket.create_connection(("127.0.0.1", port))
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                i = 0
                while not stop.is_set():
                    start = time.perf_counter()
                    ask(c, b"get key:%d\r\n" % (i % args.items), b"END\r\n")
                    latencies.append((start, time.perf_counter() - start))
                    i += 7919
                c.close()

            thread = threading.Thread(target=reader)
            thread.start()
            time.sleep(1.0)
            before = stat(fill, b"compactions")
            began = time.perf_counter()
            ask(fill, b"compact\r\n", b"\r\n")
            while stat(fill, b"compactions") == before:
                time.sleep(0.01)
            ended = time.perf_counter()
            time.sleep(0.5)
            stop.set()
            thread.join()
            size_after = stat(fill, b"data_file_bytes")
            fill.close()
        finally:
            proc.terminate()
            proc.wait(30)
    during = sorted(lat for t, lat in latencies if began <= t <= ended)
    idle = sorted(lat for t, lat in latencies if t < began)
    p99 = during[int(len(during) * 0.99)] if during else 0.0
    print(f"{args.items} items; data file {size_before / 2**20:.0f} MiB -> {size_after / 2**20:.0f} MiB")
    print(f"compaction took {ended - began:.2f} s; {len(during)} gets answered meanwhile")
    print(f"get latency before: p50 {idle[len(idle) // 2] * 1e3:.3f} ms, max {idle[-1] * 1e3:.2f} ms")
    print(
        f"get latency during: p50 {during[len(during) // 2] * 1e3:.3f} ms, p99 {p99 * 1e3:.2f} ms, "
        f"longest pause {during[-1] * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
