"""The commit path of a store: batches and their undo, group commit, what
happens when the disk fails, and compaction.

:class:`Durability` is a base class of :class:`~memcachedlite.storage.store.Store`:
the store owns the items, this module owns the way a change reaches the
data file and when it may be shown to anyone.

The rules it keeps:

- **Write-ahead.** A change is logged, then applied to memory, then replied
  to. A batch (one receive of one connection) is logged with one write.
- **fsync=always: nothing is shown before it is durable.** A batch's replies
  wait for the group fsync that covers its records. So does a reply that
  read a key whose last change is not durable yet (the key is "dirty"): a
  reader waits for the fsync already due, it never adds one. Until then the
  store keeps the batch's undo, so that a failed fsync can take the changes
  back out of memory before anyone saw them.
- **Group commit.** The :class:`~memcachedlite.storage.committer.Committer`
  thread runs one fsync for every position waiting, then tells each waiter
  the outcome (a callback): the server's courier sends the replies it
  covered (:mod:`memcachedlite.server.delivery`), a caller with no socket
  wakes up.
- **A failed fsync is never retried and trusted.** The store stops taking
  writes (reads go on), fails every reply that waited for it, and rewrites
  the data file from memory, which then holds exactly what was durable (with
  ``always``) or acknowledged (otherwise). Writes resume once that rewrite
  is on disk. ``stats`` shows ``data_file_writable`` and ``data_file_errors``.
"""

from __future__ import annotations

import collections
import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator, NoReturn, Optional

from ..errors import LogWriteError, ServerError
from . import datafile, records
from .committer import Committer
from .replay import snapshot_section

logger = logging.getLogger(__name__)

#: The data file is compacted once it is past this size and twice the live data.
DEFAULT_COMPACT_MIN_SIZE = 64 * 1024 * 1024


#: ``bytes`` under a name of its own: in the class below, ``bytes`` is the
#: store's byte count, which hides the builtin from its annotations.
Bytes = bytes


class Durability:
    """The store's side of the commit path (see the module docstring).

    The store sets ``log`` and the item state; this base class keeps the
    batch state (``_pending`` records, ``_undo`` entries), the undo of
    batches not yet durable, the dirty keys, and the failure state. It
    undoes changes in the item table and snapshots it for compaction.
    """

    log: Optional[datafile.DataLog]
    _lock: Any
    _closing: threading.Event
    # the store's item state (see memcachedlite.storage.store)
    _items: dict[bytes, bytes]
    _flushed: dict[bytes, bytes]
    bytes: int
    flush_at: int
    _next_cas: int
    _max_given_cas: int
    compact_min_size: int

    # The store's methods, declared as methods (a Callable attribute would be
    # a slot of its own on the compiled class, never set: the store's method
    # would not be found through it).
    def _account(self, key: Bytes, blob: Bytes, sign: int) -> None:  # pragma: no cover
        """Count an item in (1) or out of (-1) its slab class and the memory used."""
        raise NotImplementedError

    def _recount(self) -> None:  # pragma: no cover
        """Count every item in its class anew."""
        raise NotImplementedError

    def _init_durability(self) -> None:
        # While a batch is open: the records waiting for one write, and how to
        # put memory back if that write (or, with always, its fsync) fails.
        self._pending: Optional[list[bytes]] = None
        self._undo: Optional[list[tuple]] = None
        self._unsynced: collections.deque[tuple[int, list[tuple]]] = collections.deque()
        #: key -> log position of its last change not known durable (None: flush_all)
        self._dirty: dict[Optional[bytes], int] = {}
        self._read_need = 0
        self._writable = True
        self._failure = ""
        self.data_file_errors = 0
        self.compactions = 0
        self.compaction_failures = 0
        self._compact_lock = threading.Lock()
        self._compactor: Optional[threading.Thread] = None
        self._recoverer: Optional[threading.Thread] = None
        self.committer: Optional[Committer] = None

    def _start_durability(self) -> None:
        """After replay: the policy's background thread."""
        log = self.log
        if log is None:
            return
        log.on_failure = self._fail
        if log.always:
            self.committer = Committer(log, self._synced, self._fail)
        log.start_background_sync()

    @property
    def writable(self) -> bool:
        """False while the data file's state is in doubt (after a failed fsync)."""
        return self._writable

    # -- batches ------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group the changes made inside into one write to the data file.

        The server wraps each pipelined batch of a connection in one, so a
        hundred ``set`` commands cost one system call. The lock is held
        throughout, so no other connection sees a change before it is
        written. If the write fails, every change of the batch is undone in
        memory and :class:`LogWriteError` is raised: the caller must then not
        acknowledge any of them. With ``fsync=always`` the caller must also
        wait for the position :meth:`end_batch` returns (see :meth:`wait_durable`).
        """
        opened = self.begin_batch()
        try:
            yield
        finally:
            self.end_batch(opened)

    def begin_batch(self) -> bool:
        """The first half of :meth:`batch`; returns what to pass to :meth:`end_batch`."""
        self._lock.acquire()
        if self._pending is not None or self.log is None:  # nested, or nothing to write to
            return False
        self._pending = []
        self._undo = []
        self._read_need = 0
        dirty = self._dirty
        if dirty:  # marks older than the last fsync make no reader wait: drop them now and then
            synced = self.log.synced_lsn
            if synced >= self.log.lsn:
                dirty.clear()
            elif len(dirty) > 4096:
                self._dirty = {k: v for k, v in dirty.items() if v > synced}
        return True

    def end_batch(self, opened: bool) -> int:
        """Write the batch's records (if ``opened``) and release the lock.

        Returns the log position the batch's replies must wait for before
        they are sent (0: none): with ``fsync=always``, the end of its own
        records, or the last change of a dirty key it read.
        """
        need = 0
        try:
            if opened:
                pending, undo = self._pending, self._undo
                self._pending = self._undo = None
                log = self.log
                assert log is not None and undo is not None
                if pending:
                    try:
                        size = log.append(b"".join(pending) if len(pending) > 1 else pending[0])
                    except LogWriteError:
                        self._rollback(undo)
                        self._failed_write()
                        raise
                    self._compact_if_worth_it(size)
                    if log.always:
                        need = log.lsn
                        self._unsynced.append((need, undo))
                        dirty = self._dirty
                        for entry in undo:  # (key, old), or (None, ...) for flush_all
                            dirty[entry[0]] = need
                if log.always:
                    need = max(need, self._read_need)
                    if need <= log.synced_lsn:
                        need = 0
        finally:
            self._lock.release()
        return need

    def _note_read(self, key: Bytes) -> None:
        """A reply is about to show ``key``: it must wait for the key's last change."""
        dirty = self._dirty
        need = max(dirty.get(key, 0), dirty.get(None, 0))
        if need > self._read_need:
            self._read_need = need

    def _remember(self, key: Optional[Bytes], old: Any) -> None:
        """Note what ``key`` held before a change made inside a batch."""
        if self._undo is not None:
            self._undo.append((key, old))

    def _append(self, record: Bytes) -> None:
        """Log ``record`` (in the open batch, if any); a change calls this
        before it touches memory, so a refusal leaves memory as it was."""
        log = self.log
        if log is None:
            return
        if not self._writable:
            self._refuse_in_doubt()
        if self._pending is not None:
            self._pending.append(record)
            return
        try:
            size = log.append(record)
            if log.buffering:  # a change made outside a batch reaches the OS before it returns
                log.flush()
        except LogWriteError as exc:
            self._failed_write(exc.message)
            raise
        self._compact_if_worth_it(size)

    def _refuse_in_doubt(self) -> NoReturn:
        """Refuse a change while the data file is in doubt (see :meth:`_fail`).

        Tested where a record is added, not by a list that refuses appends
        (a subclass of list whose ``append`` raises): compiled code appends
        to a list without calling an override."""
        raise LogWriteError(f"data file not writable: {self._failure}")

    def _compact_if_worth_it(self, size: int) -> None:
        """Start a background compaction once the file is past the minimum size
        and past twice the live data, or past twice the snapshot at its head
        (as Redis rewrites its AOF once it has grown 100% past its base): a log
        of fresh keys gets a snapshot too, so a restart loads it in bulk."""
        log = self.log
        assert log is not None
        if (
            size > self.compact_min_size
            and self._compactor is None
            and (size > 2 * self.bytes or size > 2 * log.snapshot_end)
        ):
            self.start_compaction()

    def _failed_write(self, reason: str = "") -> None:
        """A write to the data file failed. Cut back cleanly (a full disk),
        only that change failed; otherwise the file is in doubt (see :meth:`_fail`)."""
        log = self.log
        assert log is not None
        if log.failed or log.buffering:  # in doubt, or queued changes of others lost with it
            self._fail(log.failed or reason)
        else:
            with self._lock:
                self.data_file_errors += 1

    def _restore(self, undo: list[tuple]) -> None:
        """Put back what a batch's changes replaced, newest first: each undo
        entry is ``(key, what it held or None)``, or, for ``flush_all``,
        ``(None, the whole table, the flushed items, bytes, flush_at)``."""
        items = self._items
        for entry in undo[::-1]:  # (not reversed(): mypyc 2.4 cannot compile it over list[tuple])
            if entry[0] is None:  # whole tables, replaced by flush_all
                _, self._items, self._flushed, self.bytes, self.flush_at = entry
                items = self._items
                self._recount()
                continue
            key, old = entry
            current = items.pop(key, None)
            if current is not None:
                self._account(key, current, -1)
            if old is not None:
                items[key] = old
                self._account(key, old, 1)

    def _rollback(self, undo: list[tuple]) -> None:
        self._restore(undo)
        logger.warning("a batch of %d changes could not be written and was undone", len(undo))

    # -- durability ---------------------------------------------------------

    def wait_durable(self, lsn: int) -> None:
        """Block until the log position ``lsn`` is on disk (fsync=always);
        raises LogWriteError if the fsync failed and the change was undone."""
        if lsn and self.committer is not None:
            self.committer.wait(lsn)

    def sync(self) -> None:
        """Make every change so far durable on disk (group commit)."""
        log = self.log
        if log is None:
            return
        if self.committer is not None:
            self.committer.wait(log.lsn)
            return
        try:
            log.sync()
        except LogWriteError as exc:
            self._fail(exc.message)
            raise

    def _synced(self) -> None:
        """After a good fsync: forget the undo and dirty marks it made unnecessary."""
        log = self.log
        assert log is not None
        synced = log.synced_lsn
        unsynced = self._unsynced
        while unsynced and unsynced[0][0] <= synced:
            unsynced.popleft()  # the dirty marks are pruned by the next batch, which holds the lock

    # -- failure ------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        """The data file's state is in doubt: stop writes, undo what was not
        durable (always), and rewrite the file from memory in the background."""
        log = self.log
        assert log is not None
        with self._lock:
            unsynced = self._unsynced
            while unsynced:
                self._restore(unsynced.pop()[1])
            if log.buffering:
                log.discard_queued()  # their records must never reach the file now
            self._dirty.clear()
            if log.rewriting is not None:  # its snapshot may hold what was just undone
                log.abort_rewrite()
            if not self._writable:
                return
            self._writable = False
            self._failure = reason
            self.data_file_errors += 1
        logger.error(
            "%s: %s; writes are refused until the file is rewritten from memory (reads go on)", log.path, reason
        )
        self._recoverer = threading.Thread(target=self._recover, name="mcl-recover", daemon=True)
        self._recoverer.start()

    def _recover(self, first_delay: float = 0.05, most: float = 5.0) -> None:
        """Rewrite the data file from memory until it works, then take writes again."""
        delay = first_delay
        while not self._closing.is_set():
            try:
                self.compact(recovering=True)
            except Exception as exc:
                logger.error("rewriting the data file failed (%s); trying again in %.2f s", exc, delay)
                if self._closing.wait(delay):
                    return
                delay = min(delay * 2, most)
                continue
            with self._lock:
                self._writable = True
                self._failure = ""
            logger.warning("%s rewritten from memory: writes are taken again", self.log.path)  # type: ignore[union-attr]
            return

    # -- compaction ---------------------------------------------------------

    def _snapshot(self) -> tuple[dict, int, int]:
        """The item table, next cas and pending flush, for a compaction (lock held)."""
        # a C-level copy: the shortest pause
        return self._items.copy(), max(self._next_cas, self._max_given_cas + 1), self.flush_at

    def compact(self, recovering: bool = False) -> int:
        """Rewrite the data file to just the live items; returns the bytes saved.

        Clients keep being served: the lock is held only to take a snapshot of
        the item table and, at the end, to copy the changes made meanwhile and
        rename the new file into place. A crash at any point leaves either the
        complete old file or the complete new one. ``recovering``: this is the
        rewrite that makes the file certain again after a failure.
        """
        log = self.log
        if log is None:
            return 0
        if self._pending is not None and self._lock._is_owned():
            raise ServerError("cannot compact inside a batch; use start_compaction()")
        with self._compact_lock:
            with self._lock:
                if not self._writable and not recovering:
                    self._refuse_in_doubt()
                if log.rewriting is not None:
                    log.abort_rewrite()
                try:
                    rewrite = log.start_rewrite()
                except OSError as exc:
                    logger.error("compaction of %s failed: %s", log.path, exc)
                    raise LogWriteError(f"compaction failed: {exc.strerror}") from exc
                snapshot, next_cas, flush_at = self._snapshot()
            try:
                now = int(self._clock())  # type: ignore[attr-defined]
                rewrite.write(records.make_header(rewrite.file_id))
                for part in snapshot_section(snapshot, next_cas, now):  # see memcachedlite.storage.replay
                    rewrite.write(part)
                rewrite.snapshot_end = rewrite.size
                if flush_at > now:
                    rewrite.write(records.encode_flush(flush_at))
                rewrite.sync()  # the bulk reaches the disk outside the lock
                with self._lock:
                    if log.rewriting is not rewrite:
                        raise LogWriteError("compaction abandoned: the data file failed meanwhile")
                    saved = log.finish_rewrite()
                    self._unsynced.clear()  # all of it is in the new, synced file
                    self._dirty.clear()
            except OSError as exc:
                with self._lock:
                    if log.rewriting is rewrite:
                        log.abort_rewrite()
                logger.error("compaction of %s failed: %s", log.path, exc)
                raise LogWriteError(f"compaction failed: {exc.strerror}") from exc
            except LogWriteError:
                with self._lock:
                    if log.rewriting is rewrite:
                        log.abort_rewrite()
                if log.failed:
                    self._fail(log.failed)
                raise
            except BaseException:
                with self._lock:
                    if log.rewriting is rewrite:
                        log.abort_rewrite()
                raise
            self.compactions += 1
            logger.info("compacted %s: %d live items, %d bytes saved", log.path, len(snapshot), saved)
            return saved

    def start_compaction(self) -> bool:
        """Compact in a background thread (as Redis's BGREWRITEAOF); False if one already runs."""
        with self._lock:
            if self._compactor is not None or self.log is None or not self._writable:
                return False
            self._compactor = threading.Thread(target=self._compact_in_background, name="mcl-compact", daemon=True)
            self._compactor.start()
            return True

    @property
    def compacting(self) -> bool:
        return self._compactor is not None

    def _compact_in_background(self) -> None:
        try:
            self.compact()
        except Exception:
            self.compaction_failures += 1
            logger.exception("background compaction failed; the data file is unchanged")
        finally:
            self._compactor = None

    def _close_durability(self) -> None:
        for thread in (self._compactor, self._recoverer):
            if thread is not None:
                thread.join()
        if self.committer is not None:
            self.committer.close()
