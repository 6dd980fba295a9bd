"""The open data file: appending with an fsync policy, sync marks, loading at
start-up with crash classification, and the rewrite that compaction does.

The record format is in :mod:`memcachedlite.storage.records` and repair in
:mod:`memcachedlite.storage.repair`; see ``docs/data-file.md``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import logging
import os
import struct
import threading
from typing import TYPE_CHECKING, Callable, Optional, Union
from zlib import crc32

from ..errors import CorruptLogError, LogWriteError
from .fileio import fsync_directory, write_all
from .items import SIZE_BASE
from .records import (
    LEGACY_ID,
    BadRecord,
    Record,
    encode_sync,
    highest_sync_mark,
    is_header_prefix,
    make_header,
    new_file_id,
    next_valid_record,
    parse_one,
    parse_records,
    read_header,
    read_snapshot,
)

if TYPE_CHECKING:  # pragma: no cover
    from .slabs import Slabs

log = logging.getLogger(__name__)

FSYNC_POLICIES = ("always", "everysec", "no")


def load_records(
    buf: bytes, start: int, items: dict, pack: Callable[..., bytes], on_other: Callable[[Record], None], slabs: Slabs
) -> tuple[int, int, int]:
    """Replay ``buf`` from ``start`` into ``items`` (key -> the store's item
    form, ``pack(cas, exptime, flags, class, size) + b" <flags> <bytes>\\r\\n<value>\\r\\n"``,
    see :mod:`memcachedlite.storage.items`, with the class ``slabs`` gives);
    every other record, ``bset`` included, goes to ``on_other``. Returns the
    number of records, the highest cas seen by this loop, and how many of its
    sets carried an expiry.

    This is :func:`parse_records` with the common ``set`` record inlined,
    because start-up time is mostly this loop; anything unusual takes the
    general path, which also reports damage precisely.
    """
    n = len(buf)
    pos = start
    find = buf.find
    starts = buf.startswith
    table, chunk_limit, largest = slabs.table, slabs.chunk_limit, slabs.largest
    count = max_cas = expiring = 0
    while pos < n:
        if starts(b"set ", pos):
            # the line ends at its first LF, which a CR must precede, as parse_one reads it
            eol = find(b"\n", pos) - 1
            head = buf[pos:eol]
            try:
                _, key, flags, exptime, length, cas, crc = head.split(b" ")
                size = int(length)
                end = eol + 2 + size
                value = buf[eol + 2 : end]
                if (
                    eol > 0
                    and buf[eol] == 13
                    and size >= 0
                    and len(crc) == 8  # what head[:-9] assumes; parse_one judges any other spelling
                    and buf[end : end + 2] == b"\r\n"
                    and crc32(value, crc32(head[:-9])) == int(crc, 16)
                ):
                    number = int(cas)
                    flag_value = 0 if flags == b"0" else int(flags)
                    msize = SIZE_BASE + len(key) + size + (4 if flag_value else 0)  # items.memcached_size
                    cls = table[msize] if msize <= chunk_limit else largest
                    if exptime == b"0":
                        meta = pack(number, 0, flag_value, cls, msize)
                    else:
                        meta = pack(number, int(exptime), flag_value, cls, msize)
                        expiring += 1
                    # the value is followed by CRLF in the file too: one slice takes both.
                    # The numbers as the store writes them, not as the file spells them.
                    items[key] = b"%b %d %d\r\n%b" % (meta, flag_value, size, buf[eol + 2 : end + 2])
                    if number > max_cas:
                        max_cas = number
                    count += 1
                    pos = end + 2
                    continue
            except (ValueError, struct.error):  # struct.error: a number the item layout cannot hold
                pass  # not a well-formed set: the general path says what is wrong
        try:
            record, pos = parse_one(buf, pos)
        except BadRecord as bad:
            bad.progress = (count, max_cas, 1)  # expiring: unknown, so assume some
            raise
        for one in record[1] if record[0] == b"group" else (record,):
            count += 1
            if one[0] == b"set":  # in a group (the fast path takes every other good set)
                _, key, value, flags, exptime, cas = one
                items.pop(key, None)  # re-inserted at the young end
                msize = SIZE_BASE + len(key) + len(value) + (4 if flags else 0)
                meta = pack(cas, exptime, flags, slabs.of(msize), msize)
                items[key] = b"%b %d %d\r\n%b\r\n" % (meta, flags, len(value), value)
                max_cas = max(max_cas, cas)
                expiring += exptime != 0
            else:
                on_other(one)
    return count, max_cas, expiring


class Rewrite:
    """A compaction in progress: a temporary file being filled with the live
    items while the live file keeps taking appends, which are also kept here
    to be copied over before the switch. The new file gets an id of its own."""

    def __init__(self, path: str) -> None:
        self.tmp_path = path + ".compact"
        self.file_id = new_file_id()
        self.fd = os.open(self.tmp_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.pending: list[bytes] = []
        self.size = 0
        self.snapshot_end = 0

    def write(self, data: bytes) -> None:
        write_all(self.fd, data)
        self.size += len(data)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            os.unlink(self.tmp_path)


#: errnos after which a failed write leaves the file as it was, once the
#: partial bytes are cut back: the disk is full, nothing was lost.
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class DataLog:
    """One append-only data file, held open (and locked) for appending.

    ``append`` hands each record to the operating system before returning, so
    a write acknowledged after it survives the process being killed; ``sync``
    adds the disk, with group commit (one fsync covers every record appended
    before it started).

    Positions: ``size`` is the file's length and ``synced`` how much of it is
    known to be on disk; ``lsn`` counts every byte ever appended through this
    object (it does not go back when compaction shrinks the file) and
    ``synced_lsn`` how many of those are durable, which is what a reply that
    must wait for the disk waits on.

    After an fsync fails, or a write fails in a way that leaves the file's
    contents in doubt, ``failed`` says why and the file takes no more appends
    or fsyncs: the kernel may already have dropped the pages it could not
    write, so a later fsync that succeeds proves nothing (PostgreSQL's
    "fsyncgate"). Only a rewrite (:meth:`finish_rewrite`) clears it.
    """

    def __init__(self, path: Union[str, os.PathLike], fsync: str = "everysec") -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {', '.join(FSYNC_POLICIES)}")
        self.path = os.fspath(path)
        self.policy = fsync
        self.always = fsync == "always"
        self._fd = self._open_locked()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path + ".compact")  # left by a compaction that crashed
        self.size = os.fstat(self._fd).st_size
        self.synced = self.size
        self.lsn = self.synced_lsn = self.written_lsn = 0
        #: fsync=always queues appended records until the group fsync writes them
        self.buffering = self.always
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.failed = ""
        #: Called (with the reason) when the background fsync of ``everysec`` fails.
        self.on_failure: Callable[[str], None] = lambda reason: None
        self._mark_due: Optional[int] = None
        self._sync_lock = threading.Lock()
        self._closed = threading.Event()
        self._syncer: threading.Thread | None = None
        self._rewrite: Optional[Rewrite] = None
        if self.size == 0:
            self.file_id = new_file_id()
            self._start_file()
        else:
            header = read_header(os.pread(self._fd, 64, 0))
            self.file_id = header[1] if header is not None else LEGACY_ID

    def _start_file(self) -> None:
        """Write the header of an empty file and make the file itself durable."""
        self._write(make_header(self.file_id))
        os.fsync(self._fd)
        fsync_directory(self.path)
        self.synced = self.size

    def _open_locked(self) -> int:
        """Open the file and take its lock, or refuse: two servers appending to
        one log would corrupt it.

        A compaction renames a new file over the path; a server that opened the
        old one just before could lock it once it is released. The lock only
        counts if the locked file is still the one at the path.
        """
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RuntimeError(f"{self.path} is in use by another running server") from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # replaced under us: lock the file that is there now
        raise RuntimeError(f"{self.path} keeps being replaced; is another server compacting it?")  # pragma: no cover

    # -- replay -----------------------------------------------------------

    def load(
        self, items: dict, pack: Callable[..., bytes], on_other: Callable[[Record], None], slabs: Slabs
    ) -> tuple[int, int, int]:
        """Replay the file into ``items`` (see :func:`load_records`).

        The first record that cannot be read ends the replay. If it lies
        where a sync mark proves the file had reached the disk, that is
        corruption: :class:`CorruptLogError`, with its offset. Otherwise it is
        what a crash leaves in the part of the file that was never synced (a
        cut, zeros, stale or reordered pages): the file is cut there, keeping
        the longest valid prefix, with one warning.
        """
        with open(self.path, "rb") as f:
            buf = f.read()
        header = read_header(buf)
        if header is None:
            if is_header_prefix(buf):  # crashed while writing the header itself
                self._cut(0, buf, "an unfinished header")
                self.file_id = new_file_id()
                self._start_file()
                return 0, 0, 0
            raise CorruptLogError(self.path, 0, "not a memcachedlite data file (bad header)")
        start, self.file_id = header

        def other(record: Record) -> None:
            if record[0] != b"sync":
                on_other(record)

        collecting = gc.isenabled()
        gc.disable()  # a million new tuples would trigger needless collections
        try:
            self.snapshot_end = 0
            if buf.startswith(b"snapshot ", start):
                try:
                    (_, item_format, next_cas, expiring, pairs), after = read_snapshot(buf, start)
                except BadRecord as bad:
                    bad.offset = start
                    raise
                on_other((b"snapshot", item_format, next_cas, expiring, pairs))
                self.snapshot_end = start = after
            result = load_records(buf, start, items, pack, other, slabs)
        except BadRecord as bad:
            synced = highest_sync_mark(buf, self.file_id)
            if bad.offset < synced:
                raise CorruptLogError(
                    self.path, bad.offset, f"{bad}, in data that had reached the disk (synced up to {synced})"
                ) from None
            self._cut(bad.offset, buf, str(bad))
            result = bad.progress
        finally:
            if collecting:
                gc.enable()
        os.fsync(self._fd)  # what was read is what the disk keeps from now on
        self.synced = self.size
        if self.size > start:
            self._mark_due = self.size
        return result

    def _cut(self, offset: int, buf: bytes, reason: str) -> None:
        """Drop the file from ``offset`` on: a crash's unfinished tail."""
        dropped = len(buf) - offset
        intact = _intact_records_after(buf, offset)
        log.warning(
            "%s: dropped %d bytes from offset %d that a crash left unfinished (%s)%s",
            self.path,
            dropped,
            offset,
            reason,
            f"; {intact} intact records after it were never confirmed durable and were dropped too" if intact else "",
        )
        os.ftruncate(self._fd, offset)
        os.fsync(self._fd)
        self.size = self.synced = offset
        self.dropped_at_start = (offset, dropped, intact)

    dropped_at_start: Optional[tuple[int, int, int]] = None
    #: Where the snapshot section at the head of the file ends (0: none):
    #: what compaction compares the log's growth with.
    snapshot_end = 0

    # -- writing ----------------------------------------------------------

    def append(self, data: bytes) -> int:
        """Write ``data`` at the end of the file; return the new size.

        With ``fsync=always`` the data is only queued (see :meth:`flush`):
        nothing is acknowledged before the group fsync, which writes every
        queued record with one system call first, as Redis's event loop does.
        Otherwise it is written at once.
        """
        if self.failed:
            raise LogWriteError(f"data file not writable: {self.failed}")
        if self.buffering:
            with self._buffer_lock:
                self._buffer.append(data)
                self.lsn += len(data)
                self._buffered += len(data)
            return self.size + self._buffered
        size = self._write(data)
        self.lsn = self.written_lsn = self.lsn + len(data)
        return size

    def flush(self) -> None:
        """Write what :meth:`append` queued (``fsync=always``), in one call.

        Raises :class:`LogWriteError` if the write fails: the queued records
        are then lost to the file, and the caller must treat every change not
        yet durable as failed.
        """
        with self._flush_lock:  # records reach the file in the order they were queued
            with self._buffer_lock:
                queued, self._buffer = self._buffer, []
                upto = self.lsn
                self._buffered = 0
            if queued:
                self._write(b"".join(queued))
            self.written_lsn = upto

    def discard_queued(self) -> None:
        """Forget what :meth:`append` queued and no flush has written: the
        changes it held were undone (a failed fsync under ``always``)."""
        with self._flush_lock, self._buffer_lock:
            self._buffer = []
            self._buffered = 0
            self.written_lsn = self.lsn

    def _write(self, data: bytes) -> int:
        """Write ``data`` at the end of the file; return the new size.

        On failure the file is cut back to its previous size, so it never
        holds half a record that a later append would bury in the middle. A
        failure that leaves the file in doubt (an I/O error, or a cut that
        did not work) also sets ``failed``.
        """
        mark = self._mark_due
        if mark is not None:  # rides along with the next record: no write of its own
            data = encode_sync(mark, self.file_id) + data
            self._mark_due = None
        start = self.size
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError as exc:
            self._mark_due = mark
            certain = exc.errno in _FULL
            if written:
                try:
                    os.ftruncate(self._fd, start)
                except OSError as cut:
                    log.error("could not cut back a partial record in %s: %s", self.path, cut)
                    certain = False
            reason = "out of disk space" if exc.errno in _FULL else exc.strerror
            log.error("cannot write to %s: %s", self.path, exc)
            if not certain:
                self.failed = f"write failed: {exc.strerror}"
            raise LogWriteError(f"cannot write data file: {reason}") from exc
        self.size = start + written
        if self._rewrite is not None:
            self._rewrite.pending.append(data)
        return self.size

    # -- compaction -------------------------------------------------------

    @property
    def rewriting(self) -> Optional[Rewrite]:
        """The compaction under way (:meth:`start_rewrite`), or None."""
        return self._rewrite

    def start_rewrite(self) -> Rewrite:
        """Begin a compaction. From now on appends are also kept for the new
        file; the caller writes the live items with ``Rewrite.write`` and ends
        with :meth:`finish_rewrite` or :meth:`abort_rewrite`, all under the
        same lock that serializes appends for the first and last step."""
        if self._rewrite is not None:
            raise RuntimeError("a compaction is already running")
        self._rewrite = Rewrite(self.path)
        return self._rewrite

    def abort_rewrite(self) -> None:
        if self._rewrite is not None:
            self._rewrite.abort()
            self._rewrite = None

    def finish_rewrite(self) -> int:
        """Copy the appends made meanwhile, make the new file durable and put
        it in place of the old one atomically. Returns the bytes saved.

        Everything written so far is then on disk, in the new file (what
        ``fsync=always`` still queues goes to the new file with the next
        flush). If the directory cannot be synced after the rename, the new
        file is in use but its name may not survive a power cut: ``failed``
        is set, so that writes stop until another rewrite succeeds.
        """
        rewrite = self._rewrite
        assert rewrite is not None
        with self._sync_lock, self._flush_lock:  # no flush or fsync of the old file meanwhile
            try:
                rewrite.write(b"".join(rewrite.pending))
                # The file is synced before it takes the name, so from the rename
                # on all of it is on disk: the mark may say so before the fsync.
                rewrite.write(encode_sync(rewrite.size, rewrite.file_id))
                os.fsync(rewrite.fd)
                os.rename(rewrite.tmp_path, self.path)
            except OSError as exc:
                self.abort_rewrite()
                raise LogWriteError(f"compaction failed: {exc.strerror}") from exc
            old_fd, old_size = self._fd, self.size
            self._fd = rewrite.fd
            self.file_id = rewrite.file_id
            self.size = self.synced = rewrite.size
            self.snapshot_end = rewrite.snapshot_end
            self.synced_lsn = self.written_lsn
            self._mark_due = self.size
            self._rewrite = None
            self.failed = ""
            os.close(old_fd)  # also releases the old file's lock; the new one is held
        try:
            fsync_directory(self.path)
        except OSError as exc:
            self.failed = f"directory sync failed: {exc.strerror}"
            log.error("cannot sync the directory of %s after a rewrite: %s", self.path, exc)
            raise LogWriteError(f"cannot sync data file directory: {exc.strerror}") from exc
        return old_size - self.size

    def sync(self) -> None:
        """Make everything appended so far durable (group commit).

        Raises :class:`LogWriteError` if the fsync fails, and from then on
        without trying again (see the class docstring).
        """
        target = self.lsn
        if self.synced_lsn >= target:
            return
        with self._sync_lock:
            if self.failed:
                raise LogWriteError(f"data file not writable: {self.failed}")
            if self.synced_lsn >= target:
                return
            if self.buffering:
                self.flush()
            lsn, end = self.written_lsn, self.size  # written before the fsync starts: covered by it
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.failed = f"fsync failed: {exc.strerror}"
                log.error("fsync of %s failed: %s", self.path, exc)
                raise LogWriteError(f"cannot sync data file: {exc.strerror}") from exc
            self.synced_lsn = lsn
            self.synced = end
            self._mark_due = end

    def start_background_sync(self, interval: float = 1.0) -> None:
        """For ``everysec``: fsync at least every ``interval`` seconds."""
        if self.policy != "everysec" or self._syncer is not None:
            return
        self._syncer = threading.Thread(target=self._sync_loop, args=(interval,), name="mcl-fsync", daemon=True)
        self._syncer.start()

    def _sync_loop(self, interval: float) -> None:
        while not self._closed.wait(interval):
            if self.failed:
                continue  # the store is rewriting the file; nothing to sync until then
            try:
                self.sync()
            except LogWriteError as exc:
                self.on_failure(exc.message)

    def close(self) -> None:
        """Flush to disk and release the file (and its lock). The next start
        syncs what it read and marks it with the first record it appends."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.abort_rewrite()
        if self._syncer is not None:
            self._syncer.join()
        if not self.failed:
            try:
                self.flush()
                os.fsync(self._fd)
            except (OSError, LogWriteError):
                log.exception("final fsync of %s failed", self.path)
        os.close(self._fd)


def _intact_records_after(buf: bytes, offset: int) -> int:
    """How many readable records lie after damage at ``offset`` (for the warning)."""
    count = 0
    pos = next_valid_record(buf, offset + 1)
    while pos is not None:
        try:
            for _ in parse_records(buf, pos):
                count += 1
            return count
        except BadRecord as bad:
            pos = next_valid_record(buf, bad.offset + 1)
    return count
