"""fsync=always: replies handed to the committer thread, one fsync for many
writers, per-connection order, slow readers, and the data after a restart."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from memcachedlite import Store
from memcachedlite.storage import datafile
from tests.conftest import Raw


def test_many_writers_share_fsyncs_and_every_reply_is_right(start_server, tmp_path: Path, monkeypatch) -> None:
    syncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(datafile.os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd)))
    running = start_server(fsync="always")
    assert running.store.committer is not None
    errors: list[str] = []

    def writer(n: int) -> None:
        c = Raw(running.port)
        try:
            for i in range(100):
                c.send(b"set w%d:%d 0 0 %d\r\n%d\r\n" % (n, i, len(b"%d" % i), i))
                reply = c.readline()
                if reply != b"STORED\r\n":
                    errors.append(f"{n}:{i}: {reply!r}")
        finally:
            c.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(syncs) < 2000  # group commit: fewer fsyncs than acknowledged writes
    path = running.store.log.path
    running.stop()
    running.store.close()
    again = Store(path)
    try:
        assert len(again) == 2000 and again.peek(b"w7:42").value == b"42"
    finally:
        again.close()


def test_a_connection_gets_its_replies_in_order(start_server) -> None:
    """A get of an untouched key needs no fsync, but it must not overtake
    the reply of the set before it, which waits for one."""
    running = start_server(fsync="always")
    running.store.set(b"clean", b"c")
    c = Raw(running.port)
    try:
        for i in range(50):
            c.send(b"set k 0 0 1\r\n%d\r\n" % (i % 10))
            c.send(b"get clean\r\n")
            assert c.readline() == b"STORED\r\n"
            assert c.reply() == b"VALUE clean 0 1\r\nc\r\nEND\r\n"
        c.send(b"set a 0 0 1\r\n1\r\nget clean\r\nincr a 5\r\nget a\r\n")
        assert c.readline() == b"STORED\r\n"
        assert c.reply() == b"VALUE clean 0 1\r\nc\r\nEND\r\n"
        assert c.readline() == b"6\r\n"
        assert c.reply() == b"VALUE a 0 1\r\n6\r\nEND\r\n"
    finally:
        c.close()


def test_a_client_that_does_not_read_holds_up_nobody(start_server) -> None:
    """Replies the committer cannot send without blocking wait in its
    backlog; other connections are served meanwhile and nothing is lost."""
    running = start_server(fsync="always")
    value = b"x" * 4000
    slow = socket.create_connection(("127.0.0.1", running.port))
    other = Raw(running.port)
    try:
        batch = b"set big 0 0 4000\r\n" + value + b"\r\n" + b"get big\r\n" * 3000
        slow.sendall(batch)  # 12 MB of replies, far past the socket buffers
        for i in range(20):  # another client is not held up by it
            other.send(b"set o%d 0 0 1\r\nx\r\n" % i)
            assert other.readline() == b"STORED\r\n"
        expected = b"STORED\r\n" + (b"VALUE big 0 4000\r\n" + value + b"\r\nEND\r\n") * 3000
        got = b""
        slow.settimeout(10)
        while len(got) < len(expected):
            chunk = slow.recv(65536)
            assert chunk, "connection closed early"
            got += chunk
        assert got == expected
    finally:
        slow.close()
        other.close()


def test_replies_of_a_connection_with_a_backlog_queue_behind_it(start_server) -> None:
    """A later batch of a connection whose earlier replies wait in the
    backlog is appended to that backlog, never sent ahead of it."""
    running = start_server(fsync="always")
    value = b"y" * 4000
    slow = socket.create_connection(("127.0.0.1", running.port))
    try:
        slow.sendall(b"set big 0 0 4000\r\n" + value + b"\r\n" + b"get big\r\n" * 3000)
        for i in range(5):  # while the megabytes above wait for this client to read
            slow.sendall(b"set later%d 0 0 1\r\n%d\r\n" % (i, i))
        expected = b"STORED\r\n" + (b"VALUE big 0 4000\r\n" + value + b"\r\nEND\r\n") * 3000 + b"STORED\r\n" * 5
        got = b""
        slow.settimeout(10)
        while len(got) < len(expected):
            chunk = slow.recv(65536)
            assert chunk, "connection closed early"
            got += chunk
        assert got == expected
    finally:
        slow.close()
    assert running.store.peek(b"later4").value == b"4"


def test_the_reply_before_quit_still_arrives(start_server) -> None:
    running = start_server(fsync="always")
    c = Raw(running.port)
    try:
        c.send(b"set q 0 0 1\r\n1\r\nquit\r\n")
        assert c.readline() == b"STORED\r\n"
        c.sock.settimeout(5)
        assert c.sock.recv(10) == b""  # then closed
    finally:
        c.close()
    assert running.store.peek(b"q").value == b"1"


def test_a_store_used_directly_waits_for_the_disk(tmp_path: Path) -> None:
    store = Store(tmp_path / "data.txt", fsync="always")
    try:
        store.set(b"a", b"1")
        store.sync()
        assert store.log.synced_lsn == store.log.lsn and store.log.synced == store.log.size
    finally:
        store.close()
    again = Store(tmp_path / "data.txt")
    try:
        assert again.peek(b"a").value == b"1"
    finally:
        again.close()


# -- the courier, on its own (server/delivery.py) -----------------------------------------


class _Told:
    """A stand-in for the group commit thread: tells each waiter at once."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def when_durable(self, lsn: int, done) -> None:
        done(self.error)


class _Socket:
    """A socket whose sends go as scripted: ``send`` places ``room`` bytes
    (or raises ``send_error``); ``sendall`` raises ``sendall_error`` or keeps it all."""

    def __init__(self, room: int = 1 << 30, send_error=None, sendall_error=None) -> None:
        self.room = room
        self.send_error = send_error
        self.sendall_error = sendall_error
        self.sent = b""

    def send(self, data: bytes, flags: int = 0) -> int:
        if self.send_error is not None:
            raise self.send_error
        placed = data[: self.room]
        self.sent += placed
        return len(placed)

    def sendall(self, data: bytes) -> None:
        if self.sendall_error is not None:
            raise self.sendall_error
        self.sent += data


def _failed(reply: bytes, exc: Exception) -> bytes:
    return b"FAILED\r\n" if reply else b""


def test_a_courier_sends_the_error_replies_when_the_disk_failed() -> None:
    from memcachedlite.errors import LogWriteError
    from memcachedlite.server.delivery import Courier

    sock = _Socket()
    courier = Courier(sock, _Told(LogWriteError("fsync failed")))  # type: ignore[arg-type]
    courier.hand_off(5, [b"STORED\r\n", b"", b"STORED\r\n"], _failed)
    courier.drain(1)
    assert sock.sent == b"FAILED\r\nFAILED\r\n" and courier.unsent == 0


@pytest.mark.parametrize(
    "sock",
    [_Socket(send_error=ConnectionResetError()), _Socket(room=3, sendall_error=BrokenPipeError())],
    ids=["send fails", "backlog send fails"],
)
def test_a_courier_whose_client_is_gone_delivers_nothing_more_and_stays_countable(sock: _Socket) -> None:
    from memcachedlite.server.delivery import Courier

    courier = Courier(sock, _Told())  # type: ignore[arg-type]
    courier.hand_off(1, [b"VALUE k 0 1\r\nx\r\nEND\r\n"], _failed)
    courier.hand_off(2, [b"STORED\r\n"], _failed)  # queues behind whatever is left
    courier.drain(5)
    assert courier.unsent == 0  # a closing connection does not wait for a client that left
    assert len(sock.sent) <= 3
