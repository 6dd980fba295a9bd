"""Crash tests with real server processes: kill -9 under write load, a file
size limit standing in for a full disk."""

from __future__ import annotations

import os
import resource
import signal
import threading
import time
from pathlib import Path

import pytest

from memcachedlite import Store
from tests.conftest import Raw

WRITERS = 6
KEYS_PER_WRITER = 40


def write_until_killed(port: int, writer: int, acked: dict, stop: threading.Event) -> None:
    """Set keys over and over; record a value only once its STORED arrived."""
    try:
        client = Raw(port, timeout=5)
    except OSError:
        return
    try:
        i = 0
        while not stop.is_set():
            key = b"w%d-%d" % (writer, i % KEYS_PER_WRITER)
            value = b"%d:" % i + b"v" * (i % 300)
            client.send(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
            if client.readline() != b"STORED\r\n":
                raise AssertionError("unexpected reply")
            acked[key] = i
            i += 1
    except (OSError, ConnectionError):
        pass  # the server was killed mid-request: that write was never acknowledged
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
def test_kill_9_under_load_loses_nothing_acknowledged(spawn, tmp_path: Path, policy: str) -> None:
    proc = spawn("--fsync", policy)
    acked: dict[bytes, int] = {}
    stop = threading.Event()
    threads = [threading.Thread(target=write_until_killed, args=(proc.port, w, acked, stop)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(acked) < WRITERS * KEYS_PER_WRITER and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # well into the load
    proc.proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) == WRITERS * KEYS_PER_WRITER

    store = Store(proc.data_file)  # what a restarted server would load
    try:
        for key, i in acked.items():
            item = store.peek(key)
            assert item is not None, key
            stored = int(item.value.split(b":")[0])
            assert stored >= i, (key, stored, i)  # the acknowledged value or a later one
            assert item.value == b"%d:" % stored + b"v" * (stored % 300)
    finally:
        store.close()
    restarted = spawn("--fsync", policy, data_file=proc.data_file)
    c = Raw(restarted.port)
    try:
        key, i = next(iter(acked.items()))
        assert c.ask(b"get %s\r\n" % key).startswith(b"VALUE %s 0 " % key)
    finally:
        c.close()
    assert restarted.terminate() == 0


def test_full_disk_answers_server_error_and_recovers(spawn, tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    proc = spawn(data_file=path)
    limit = path.stat().st_size + 4096
    # soft limit only: raising it back needs no privilege
    resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    c = Raw(proc.port)
    try:
        assert c.ask(b"set keep 0 0 4\r\nsafe\r\n") == b"STORED\r\n"
        value = b"x" * 1000
        replies = [c.ask(b"set k%d 0 0 1000\r\n%s\r\n" % (i, value)) for i in range(10)]
        assert b"STORED\r\n" in replies
        refused = [i for i, r in enumerate(replies) if r != b"STORED\r\n"]
        assert refused and all(replies[i].startswith(b"SERVER_ERROR ") for i in refused)
        assert replies[refused[0]] == b"SERVER_ERROR cannot write data file: out of disk space\r\n"
        # the refused write is not in memory, reads and the connection still work
        first = refused[0]
        assert c.ask(b"get k%d keep\r\n" % first) == b"VALUE keep 0 4\r\nsafe\r\nEND\r\n"
        # space returns: writes work again
        resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert c.ask(b"set k%d 0 0 3\r\nnew\r\n" % first) == b"STORED\r\n"
        stored = {i for i, r in enumerate(replies) if r == b"STORED\r\n"} | {first}
    finally:
        c.close()
    assert proc.terminate() == 0
    store = Store(path)
    try:
        assert {k for k in store.keys() if k != b"keep"} == {b"k%d" % i for i in stored}
        assert store.peek(b"keep").value == b"safe"
    finally:
        store.close()


def test_sigterm_mid_pipeline_answers_what_it_received(spawn, tmp_path: Path) -> None:
    proc = spawn()
    c = Raw(proc.port)
    try:
        batch = b"".join(b"set p%d 0 0 2\r\nok\r\n" % i for i in range(2000))
        c.send(batch)
        proc.proc.send_signal(signal.SIGTERM)
        replies = b""
        c.sock.settimeout(10)
        while True:
            try:
                chunk = c.sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            replies += chunk
    finally:
        c.close()
    assert proc.wait() == 0
    acknowledged = replies.count(b"STORED\r\n")
    store = Store(proc.data_file)
    try:
        assert len(store.keys()) >= acknowledged
    finally:
        store.close()
    assert os.path.exists(proc.data_file)
