"""The group commit thread of ``fsync=always``: it runs the fsync for every
waiting batch, then sends each connection the replies it covered (reply hand-off).
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any, Optional

from ..errors import LogWriteError
from . import datafile

if TYPE_CHECKING:  # pragma: no cover
    from ..protocols.session import Session

logger = logging.getLogger(__name__)

#: How long a connection that closes waits for its handed-off replies.
DRAIN_TIMEOUT = 10.0


class _Waiting:
    """Replies of one batch waiting for the fsync that covers ``lsn``."""

    __slots__ = ("lsn", "session", "replies", "done", "error")

    def __init__(self, lsn: int, session: Optional["Session"], replies: list[bytes]) -> None:
        self.lsn = lsn
        self.session = session
        self.replies = replies
        self.done = threading.Event() if session is None else None
        self.error: Optional[LogWriteError] = None


class Committer:
    """The group commit thread of ``fsync=always``.

    Batches queue their replies here with the log position they need; the
    thread fsyncs while anything waits, then sends (or, for a caller with no
    socket, releases) every reply the fsync covered. A send that would block
    (a client not reading) is finished by a thread of its own, so one slow
    client never holds up the others; later replies of that connection queue
    behind it.
    """

    def __init__(self, log: datafile.DataLog, on_synced: Any, on_failure: Any) -> None:
        self._log = log
        self._on_synced = on_synced
        self._on_failure = on_failure
        self._cond = threading.Condition()
        self._queue: collections.deque[_Waiting] = collections.deque()
        #: replies a client was not reading fast enough for, per connection
        self._backlog: dict[Any, bytearray] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="mcl-commit", daemon=True)
        self._thread.start()

    def hand_off(self, session: "Session", lsn: int, replies: list[bytes]) -> None:
        """Send ``replies`` on ``session.sender`` once ``lsn`` is durable."""
        with self._cond:
            session.unsent += 1
            self._queue.append(_Waiting(lsn, session, replies))
            self._cond.notify()

    def wait(self, lsn: int) -> None:
        """Block until ``lsn`` is durable; raise LogWriteError if it never will be."""
        if self._log.synced_lsn >= lsn:
            return
        waiting = _Waiting(lsn, None, [])
        with self._cond:
            self._queue.append(waiting)
            self._cond.notify()
        assert waiting.done is not None
        waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error

    def drain(self, session: "Session", timeout: float = DRAIN_TIMEOUT) -> None:
        """Wait until every reply handed off by ``session`` has left."""
        with self._cond:
            self._cond.wait_for(lambda: session.unsent == 0, timeout)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    # -- the thread --------------------------------------------------------

    def _loop(self) -> None:
        log = self._log
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._queue:
                    break
                behind = any(w.lsn > log.synced_lsn for w in self._queue)
            error: Optional[LogWriteError] = None
            try:
                if behind:
                    try:
                        log.sync()
                    except LogWriteError as exc:
                        error = exc
                        self._on_failure(exc.message)
                    else:
                        self._on_synced()
                self._release(error)
            except Exception:  # a bug: never leave the waiting replies hanging
                logger.exception("the group commit failed")
                error = LogWriteError("internal error")
                self._on_failure(error.message)
                self._release(error)
        self._release(LogWriteError("server is stopping"))

    def _release(self, error: Optional[LogWriteError]) -> None:
        synced = self._log.synced_lsn
        ready: list[_Waiting] = []
        with self._cond:
            keep: collections.deque[_Waiting] = collections.deque()
            for waiting in self._queue:
                if waiting.lsn <= synced:
                    ready.append(waiting)
                elif error is not None or self._log.failed:
                    waiting.error = error or LogWriteError(f"data file not writable: {self._log.failed}")
                    ready.append(waiting)
                else:
                    keep.append(waiting)
            self._queue = keep
        sent: list["Session"] = []
        for waiting in ready:
            session = waiting.session
            if session is None:
                assert waiting.done is not None
                waiting.done.set()
                continue
            replies = waiting.replies
            if waiting.error is not None:
                replies = [session.failed_reply(reply, waiting.error) for reply in replies]
            if self._send(session, b"".join(replies)):
                sent.append(session)
        if sent:
            with self._cond:
                for session in sent:
                    session.unsent -= 1
                self._cond.notify_all()  # drain() waiters

    def _send(self, session: "Session", data: bytes) -> bool:
        """Send without blocking; what does not fit goes to the connection's
        backlog, which a thread of its own sends. Returns whether all of it
        (and everything before it) has left."""
        if self._backlog:  # only this thread adds to it: empty, nobody has a backlog
            with self._cond:
                backlog = self._backlog.get(session)
                if backlog is not None:
                    backlog += data
                    session.unsent -= 1  # the backlog stands for it now
                    return False
        if data:
            try:
                sent = session.sender.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = len(data)  # the client is gone: nothing more to deliver
            if sent < len(data):
                with self._cond:
                    self._backlog[session] = bytearray(data[sent:])
                threading.Thread(target=self._drain_backlog, args=(session,), name="mcl-backlog", daemon=True).start()
                return False  # its unsent count drops when the backlog is empty
        return True

    def _drain_backlog(self, session: "Session") -> None:
        """Send a slow reader's backlog with blocking sends (bounded by the
        socket's timeout), then hand the connection back to the committer."""
        while True:
            with self._cond:
                data = self._backlog[session]
                if not data:
                    del self._backlog[session]
                    session.unsent -= 1
                    self._cond.notify_all()
                    return
                self._backlog[session] = bytearray()
            try:
                session.sender.sendall(data)
            except OSError:
                pass  # the client is gone: nothing more to deliver
