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

import collections
import socket
import threading
from typing import Callable, Optional

from ..errors import LogWriteError, ProtocolError
from ..storage.committer import Committer

#: How long a connection that closes waits for its handed-off replies.
DRAIN_TIMEOUT = 10.0

#: How a protocol turns a reply whose batch could not be made durable into its error reply.
FailedReply = Callable[[bytes, ProtocolError], bytes]


class _Batch:
    """One batch of replies handed over, and what the disk said of it."""

    __slots__ = ("replies", "failed", "error", "known")

    def __init__(self, replies: list[bytes], failed: FailedReply) -> None:
        self.replies = replies
        self.failed = failed
        self.error: Optional[LogWriteError] = None
        #: whether the group commit has told this batch's outcome yet
        self.known = False

    def outgoing(self) -> bytes:
        """The bytes to send: the replies, or their error replies if the disk failed them."""
        if self.error is None:
            return b"".join(self.replies)
        return b"".join(self.failed(reply, self.error) for reply in self.replies)


class Courier:
    """Sends one connection's replies once the disk has what they acknowledge,
    in the order they were handed over.

    Each batch hears its own outcome (the log position it needs is durable,
    or never will be), but leaves only after every batch handed over before
    it: a batch that waits for nothing still queues behind one that waits,
    and is never failed for another batch's failure.
    """

    def __init__(self, sock: socket.socket, committer: Committer) -> None:
        self._sock = sock
        self._committer = committer
        self._cond = threading.Condition()
        #: batches handed over whose replies have not all left yet
        self.unsent = 0
        #: batches handed over and not sent yet, oldest first
        self._waiting: collections.deque[_Batch] = collections.deque()
        #: what a send could not place; a thread of its own is sending it
        self._backlog: Optional[bytearray] = None
        #: the client is gone (a send failed): nothing more is sent
        self._gone = False

    def hand_off(self, lsn: int, replies: list[bytes], failed: FailedReply) -> None:
        """Send ``replies`` once log position ``lsn`` is durable (0: at once,
        behind the batches handed over before); if it never will be, send
        what ``failed`` makes of each instead."""
        batch = _Batch(replies, failed)
        with self._cond:
            self.unsent += 1
            self._waiting.append(batch)
        self._committer.when_durable(lsn, lambda error: self._told(batch, error))

    def _told(self, batch: _Batch, error: Optional[LogWriteError]) -> None:
        """On the commit thread: ``batch``'s outcome is known; send every
        batch from the oldest on whose outcome is known."""
        ready: list[_Batch] = []
        with self._cond:
            batch.error, batch.known = error, True
            while self._waiting and self._waiting[0].known:
                ready.append(self._waiting.popleft())
        for one in ready:
            self._send(one.outgoing())

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
