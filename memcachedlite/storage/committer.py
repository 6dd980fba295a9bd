"""The group commit thread of ``fsync=always``: one fsync covers every batch
waiting for the disk, then each waiter hears the outcome.

A waiter is a position in the log and a callback. The callback runs on this
thread once an fsync has covered the position (with ``None``), or once it is
certain that none ever will (with the :class:`~memcachedlite.errors.LogWriteError`
that says why). Callbacks run one at a time, in the order the positions were
handed in among those an fsync released, so a caller that hands in positions
in increasing order hears of them in that order. What a callback does with
the news (send replies to a client, wake a thread) is the caller's business:
nothing here knows a socket or a protocol.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, Optional

from ..errors import LogWriteError
from .datafile import DataLog

logger = logging.getLogger(__name__)

#: What a waiter is told: None once its position is durable, else why it never will be.
Outcome = Callable[[Optional[LogWriteError]], None]


class _Waiting:
    """One position waiting for the fsync that covers it."""

    __slots__ = ("lsn", "done")

    def __init__(self, lsn: int, done: Outcome) -> None:
        self.lsn = lsn
        self.done = done


class Committer:
    """The group commit thread of ``fsync=always`` (see the module docstring).

    ``on_synced`` runs after each good fsync and ``on_failure`` (with the
    reason) after a failed one, before any waiter hears of it: the store
    forgets what the fsync made safe, or undoes what it lost.
    """

    def __init__(self, log: DataLog, on_synced: Callable[[], None], on_failure: Callable[[str], None]) -> None:
        self._log = log
        self._on_synced = on_synced
        self._on_failure = on_failure
        self._cond = threading.Condition()
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="mcl-commit", daemon=True)
        self._thread.start()

    def when_durable(self, lsn: int, done: Outcome) -> None:
        """Call ``done`` on the commit thread once log position ``lsn`` is durable,
        with None, or with the error that means it never will be."""
        with self._cond:
            self._queue.append(_Waiting(lsn, done))
            self._cond.notify()

    def wait(self, lsn: int) -> None:
        """Block until ``lsn`` is durable; raise LogWriteError if it never will be."""
        if self._log.synced_lsn >= lsn:
            return
        released = threading.Event()
        outcome: list[Optional[LogWriteError]] = []

        def done(error: Optional[LogWriteError]) -> None:
            outcome.append(error)
            released.set()

        self.when_durable(lsn, done)
        released.wait()
        if outcome[0] is not None:
            raise outcome[0]

    def close(self) -> None:
        """Stop the thread; waiters still queued hear that the server is stopping."""
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
            # What was durable before this round: if its fsync fails, nothing
            # past it is, whatever the rewrite that the failure starts (on a
            # thread of its own) may make of the positions meanwhile.
            synced = log.synced_lsn
            error: Optional[LogWriteError] = None
            try:
                if behind:
                    error = self._sync()
                self._release(error, synced if error is not None else log.synced_lsn)
            except Exception:  # a bug: never leave the waiters hanging
                logger.exception("the group commit failed")
                error = LogWriteError("internal error")
                self._on_failure(error.message)
                self._release(error, synced)
        self._release(LogWriteError("server is stopping"), log.synced_lsn)

    def _sync(self) -> Optional[LogWriteError]:
        """One group fsync; the error it ended with, if any."""
        try:
            self._log.sync()
        except LogWriteError as exc:
            self._on_failure(exc.message)
            return exc
        self._on_synced()
        return None

    def _release(self, error: Optional[LogWriteError], synced: int) -> None:
        """Tell every waiter whose outcome is now known: durable (up to
        ``synced``), or failed (``error``, or the data file no longer takes
        writes)."""
        ready: list[tuple[_Waiting, Optional[LogWriteError]]] = []
        with self._cond:
            keep: collections.deque[_Waiting] = collections.deque()
            for waiting in self._queue:
                if waiting.lsn <= synced:
                    ready.append((waiting, None))
                elif error is not None or self._log.failed:
                    ready.append((waiting, error or LogWriteError(f"data file not writable: {self._log.failed}")))
                else:
                    keep.append(waiting)
            self._queue = keep
        for waiting, outcome in ready:
            try:
                waiting.done(outcome)
            except Exception:  # one waiter's bug must not keep the others waiting
                logger.exception("a waiter of the group commit failed")
