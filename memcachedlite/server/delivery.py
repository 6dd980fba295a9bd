"""Delivering the replies that wait for the disk (``fsync=always``).

A connection whose replies may not leave before their records are durable
hands them to its :class:`Courier` and goes back to reading its socket. The
courier asks the store's group commit thread to tell it when the position
they wait for is durable, and then sends them from that thread, without
blocking: one wake-up per request instead of two, and one fsync for all.
If the disk failed instead, every reply of the batch becomes the protocol's
error reply, so nothing is acknowledged.

A client that does not read its replies must not hold up the others: what a
send cannot place in the socket's buffer goes to a backlog, which a thread
of the connection's own sends with blocking sends, and later replies of the
connection queue behind it.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable, Optional

from ..errors import LogWriteError, ProtocolError
from ..storage.committer import Committer

#: How long a connection that closes waits for its handed-off replies.
DRAIN_TIMEOUT = 10.0

#: How a protocol turns a reply whose batch could not be made durable into its error reply.
FailedReply = Callable[[bytes, ProtocolError], bytes]


class Courier:
    """Sends one connection's replies once the disk has what they acknowledge,
    in the order they were handed over."""

    def __init__(self, sock: socket.socket, committer: Committer) -> None:
        self._sock = sock
        self._committer = committer
        self._cond = threading.Condition()
        #: batches handed over whose replies have not all left yet
        self.unsent = 0
        #: the highest log position handed over: a later batch never overtakes it
        self._last = 0
        #: what a send could not place; a thread of its own is sending it
        self._backlog: Optional[bytearray] = None
        #: the client is gone (a send failed): nothing more is sent
        self._gone = False

    def hand_off(self, lsn: int, replies: list[bytes], failed: FailedReply) -> None:
        """Send ``replies`` once log position ``lsn`` is durable; if it never
        will be, send what ``failed`` makes of each instead."""
        with self._cond:
            self.unsent += 1
            lsn = self._last = max(lsn, self._last)

        def deliver(error: Optional[LogWriteError]) -> None:
            outgoing = replies if error is None else [failed(reply, error) for reply in replies]
            self._send(b"".join(outgoing))

        self._committer.when_durable(lsn, deliver)

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Wait until every reply handed over has left (or ``timeout`` passes)."""
        with self._cond:
            self._cond.wait_for(lambda: self.unsent == 0, timeout)

    def _send(self, data: bytes) -> None:
        """Send without blocking, on the commit thread; what does not fit
        goes to the backlog."""
        with self._cond:
            if self._backlog is not None:  # queue behind what is still being sent
                self._backlog += data
                self._done()
                return
            if self._gone:
                self._done()
                return
        sent = len(data)
        if data:
            try:
                sent = self._sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._gone = True  # the client is gone: nothing more to deliver
        if sent < len(data):
            with self._cond:
                self._backlog = bytearray(data[sent:])
            # this batch stays unsent until the backlog is empty
            threading.Thread(target=self._send_backlog, name="mcl-backlog", daemon=True).start()
            return
        with self._cond:
            self._done()

    def _send_backlog(self) -> None:
        """Send the backlog with blocking sends (bounded by the socket's timeout)
        until it is empty."""
        while True:
            with self._cond:
                assert self._backlog is not None
                data = bytes(self._backlog)
                if not data or self._gone:
                    self._backlog = None
                    self._done()
                    return
                self._backlog = bytearray()
            try:
                self._sock.sendall(data)
            except OSError:
                with self._cond:
                    self._gone = True  # the client is gone: nothing more to deliver

    def _done(self) -> None:
        """One batch has left (lock held)."""
        self.unsent -= 1
        self._cond.notify_all()
