"""Closing connections refused past ``--max-connections`` without destroying
the refusal on the way (see :class:`Reaper`)."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from typing import Optional

#: How long a refused connection is given to read its refusal before it is closed.
REFUSAL_LINGER = 2.0
#: Refused connections waiting to be closed at most; past it they are closed at once.
MAX_REFUSED_PENDING = 1024


class Reaper:
    """Closes refused connections without destroying the refusal on the way.

    A socket closed at once answers whatever the client sends next (its
    command, typically) with a reset: the client's next write fails with a
    broken pipe or a reset before it ever reads the refusal, and unread
    bytes at close send a reset too. So after the refusal is sent and the
    socket shut down for writing, one thread (for all of them: a refused
    client must not hold a worker) reads and drops what the client sends
    until it closes its side or ``linger`` seconds pass, then closes. The
    client sees the refusal, then the end of the stream.
    """

    def __init__(self, linger: float = REFUSAL_LINGER, limit: int = MAX_REFUSED_PENDING) -> None:
        self.linger = linger
        self.limit = limit
        self._lock = threading.Lock()
        self._pending: dict[socket.socket, float] = {}
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        # made on the first refusal: a server that never refuses opens nothing
        self._selector: Optional[selectors.BaseSelector] = None
        self._wake_read: Optional[socket.socket] = None
        self._wake_write: Optional[socket.socket] = None

    def _start(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="mcl-reaper", daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket) -> None:
        """Take over ``sock``, whose refusal has been sent, and close it gently."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        with self._lock:
            if self._closed or len(self._pending) >= self.limit:
                sock.close()
                return
            if self._thread is None:
                self._start()
            assert self._selector is not None
            self._pending[sock] = time.monotonic() + self.linger
            self._selector.register(sock, selectors.EVENT_READ)
        self._wake()

    def _wake(self) -> None:
        try:
            if self._wake_write is not None:
                self._wake_write.send(b"x")
        except OSError:  # the wake-up pipe is full (the thread is awake anyway), or closed
            pass

    def _drop(self, sock: socket.socket) -> None:
        assert self._selector is not None
        self._selector.unregister(sock)
        del self._pending[sock]
        sock.close()

    def _run(self) -> None:
        assert self._selector is not None and self._wake_read is not None
        while True:
            with self._lock:
                if self._closed:
                    for sock in list(self._pending):
                        self._drop(sock)
                    return
                first = min(self._pending.values(), default=None)
            wait = None if first is None else max(first - time.monotonic(), 0)
            events = self._selector.select(wait)
            with self._lock:
                for key, _ in events:
                    sock = key.fileobj
                    if sock is self._wake_read:
                        try:
                            while self._wake_read.recv(4096):
                                pass
                        except OSError:
                            pass
                        continue
                    if sock not in self._pending:
                        continue
                    try:
                        if sock.recv(65536):  # type: ignore[union-attr]
                            continue
                    except BlockingIOError:
                        continue
                    except OSError:
                        pass
                    self._drop(sock)  # type: ignore[arg-type]
                now = time.monotonic()
                for sock in [s for s, deadline in self._pending.items() if deadline <= now]:
                    self._drop(sock)

    def close(self) -> None:
        """Close every connection still waiting, and the thread; harmless twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._wake()
        thread.join(5)
        with self._lock:
            for sock in list(self._pending):
                self._drop(sock)
            assert self._selector is not None and self._wake_read is not None and self._wake_write is not None
            self._selector.close()
            self._wake_read.close()
            self._wake_write.close()
