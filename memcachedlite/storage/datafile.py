"""The open data file: appending with an fsync policy, sync marks, loading at
start-up with crash classification, and the rewrite that compaction does.

The record format is in :mod:`memcachedlite.storage.records` and repair in
:mod:`memcachedlite.storage.repair`; see ``docs/data-file.md``.

Every system call on a file goes through ``fileio.system`` (see
:mod:`memcachedlite.storage.fileio`), where the tests' crash simulator can
stand in for it on both builds.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import struct
import threading
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Union
from zlib import crc32

from ..errors import CorruptLogError, DataFileInUse, LogWriteError, UnsupportedPlatform
from . import fileio
from .fileio import absolute, fsync_directory, pwrite_all, write_all
from .foreign import check_ours
from .items import SIZE_BASE
from .records import (
    HEAD_MARK_AT,
    LEGACY_ID,
    BadRecord,
    Record,
    encode_head_mark,
    encode_sync,
    ends_with_mark,
    highest_sync_mark,
    looks_like_head_mark,
    make_header,
    new_file_id,
    next_valid_record,
    parse_one,
    parse_records,
    read_head,
    read_snapshot,
)

try:
    import fcntl  # the data file's lock (flock): POSIX only
except ImportError:
    raise UnsupportedPlatform("fcntl") from None

if TYPE_CHECKING:  # pragma: no cover
    from .slabs import Slabs

log = logging.getLogger(__name__)

FSYNC_POLICIES = ("always", "everysec", "no")

#: Bytes of the file replayed between two calls of the replay's progress
#: report: the loop checks the time once per step, never per record.
PROGRESS_STEP = 1024 * 1024

#: ``progress(offset, items)``: how far the replay has read, and how many items it holds.
Progress = Callable[[int, int], None]


def _no_progress(offset: int, items: int) -> None:
    pass


def load_records(
    buf: bytes,
    start: int,
    items: dict,
    pack: Callable[..., bytes],
    on_other: Callable[[Record], None],
    slabs: Slabs,
    progress: Progress = _no_progress,
) -> tuple[int, int, int]:
    """Replay ``buf`` from ``start`` into ``items`` (key -> the store's item
    form, ``pack(cas, exptime, flags, class, size) + b" <flags> <bytes>\\r\\n<value>\\r\\n"``,
    see :mod:`memcachedlite.storage.items`, with the class ``slabs`` gives);
    every other record, ``bset`` included, goes to ``on_other``. Returns the
    number of records, the highest cas seen by this loop, and how many of its
    sets carried an expiry. ``progress`` hears how far it got after each
    :data:`PROGRESS_STEP` bytes.

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
        progress(pos, len(items))
        step_end = min(pos + PROGRESS_STEP, n)  # a record may run past it: the next step starts after it
        while pos < step_end:
            if starts(b"set ", pos):
                # the line ends at its first LF, which a CR must precede, as parse_one reads it
                eol = find(b"\n", pos) - 1
                head = buf[pos:eol]
                try:
                    _, key, flags, exptime, length, cas, crc = head.split(b" ")
                    size = int(length)
                    if size < 0:  # (tested first: mypyc 2.4 compiles a backwards slice into SystemError)
                        raise ValueError("negative length")
                    end = eol + 2 + size
                    value = buf[eol + 2 : end]
                    if (
                        eol > 0
                        and buf[eol] == 13
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
                    # parsed: numbers where the fast path above has their digits (own names, so
                    # that the compiled build types each once)
                    _, set_key, set_value, set_flags, set_exptime, set_cas = one
                    items.pop(set_key, None)  # re-inserted at the young end
                    msize = SIZE_BASE + len(set_key) + len(set_value) + (4 if set_flags else 0)
                    meta = pack(set_cas, set_exptime, set_flags, slabs.of(msize), msize)
                    items[set_key] = b"%b %d %d\r\n%b\r\n" % (meta, set_flags, len(set_value), set_value)
                    max_cas = max(max_cas, set_cas)
                    expiring += set_exptime != 0
                else:
                    on_other(one)
    return count, max_cas, expiring


def open_locked(path: str, flags: int) -> int:
    """Open the data file at ``path`` and take its lock, or refuse with
    :class:`DataFileInUse`: two servers appending to one file would corrupt
    it, and a repair rewriting a file a server appends to would lose what
    the server appends. Every program that writes a data file takes it.

    A compaction renames a new file over the path; a process that opened the
    old one just before could lock it once it is released. The lock only
    counts if the locked file is still the one at the path.
    """
    for _ in range(100):
        fd = fileio.system.open(path, flags | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fileio.system.close(fd)
            raise DataFileInUse(path) from None
        try:
            if fileio.system.fstat(fd).st_ino == fileio.system.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        fileio.system.close(fd)  # replaced under us: lock the file that is there now
    raise RuntimeError(f"{path} keeps being replaced; is another server compacting it?")  # pragma: no cover


def load_buffer(
    buf: bytes,
    start: int,
    items: dict,
    pack: Callable[..., bytes],
    on_other: Callable[[Record], None],
    slabs: Slabs,
    progress: Progress = _no_progress,
) -> tuple[tuple[int, int, int], int]:
    """Replay the data file contents ``buf`` from ``start``, where its records
    start, into ``items``: its snapshot section (if it has one) in bulk, then
    its records with :func:`load_records`, sync marks left out. Returns what
    :func:`load_records` returns, and where the snapshot section ends (0:
    none). Raises :class:`BadRecord` at the first record that cannot be read.
    ``progress`` hears how far it got, as :func:`load_records` says (after the
    snapshot section too, which loads in one step)."""

    def other(record: Record) -> None:
        if record[0] != b"sync":
            on_other(record)

    snapshot_end = 0
    if buf.startswith(b"snapshot ", start):
        try:
            snapshot, after = read_snapshot(buf, start)
        except BadRecord as bad:
            bad.offset = start
            raise
        on_other(snapshot)
        snapshot_end = start = after
    return load_records(buf, start, items, pack, other, slabs, progress), snapshot_end


class Rewrite:
    """A compaction in progress: a temporary file being filled with the live
    items while the live file keeps taking appends, which are also kept here
    to be copied over before the switch. The new file gets an id of its own."""

    def __init__(self, path: str) -> None:
        self.tmp_path = path + ".compact"
        self.file_id = new_file_id()
        self.fd = fileio.system.open(self.tmp_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.pending: list[bytes] = []
        self.size = 0
        self.snapshot_end = 0
        # The compaction writes and syncs outside the store's lock while a
        # failure may abort it from another thread: closing the descriptor
        # under its feet would let the next socket or file opened take the
        # number and get the rest of the snapshot. So an abort closes it only
        # once no write or fsync is using it (the last user closes it then),
        # and nothing uses it after an abort; the abort never waits for the disk.
        self._io = threading.Lock()
        self._users = 0
        self.aborted = False

    @contextlib.contextmanager
    def _using(self) -> Iterator[int]:
        """The descriptor, for one write or fsync; refused once aborted."""
        with self._io:
            if self.aborted:
                raise OSError(errno.ECANCELED, "compaction abandoned: the data file failed meanwhile")
            self._users += 1
        try:
            yield self.fd
        finally:
            with self._io:
                self._users -= 1
                if self.aborted and not self._users:
                    self._close()

    def write(self, data: bytes) -> None:
        with self._using() as fd:
            write_all(fd, data)
        self.size += len(data)

    def sync(self) -> None:
        with self._using() as fd:
            fileio.system.fsync(fd)

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            fileio.system.close(self.fd)

    def abort(self) -> None:
        with self._io:
            self.aborted = True
            if not self._users:
                self._close()
        with contextlib.suppress(OSError):
            fileio.system.unlink(self.tmp_path)


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
        self.path = absolute(path)
        self.policy = fsync
        self.always = fsync == "always"
        self._fd = open_locked(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        with contextlib.suppress(FileNotFoundError):
            fileio.system.unlink(self.path + ".compact")  # left by a compaction that crashed
        self.size = fileio.system.fstat(self._fd).st_size
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
        #: where the head mark lies (0: the file has none, as files written
        #: before it existed) and the offset it vouches for
        self.head_at = self.head_synced = 0
        #: whether the file ends with a sync mark vouching for all before it
        self._marked_end = False
        #: whether load() read the file whole: until then nothing is marked in it
        self._loaded = False
        #: whether this object made the file (it was missing or empty): start-up then has nothing to replay
        self.created = False
        if self.size == 0:
            try:
                self._create()
            except BaseException:
                fileio.system.close(self._fd)
                raise
            self.created = True
        else:
            head = read_head(fileio.system.pread(self._fd, 128, 0))
            self.file_id = head.file_id if head is not None else LEGACY_ID

    def _create(self) -> None:
        """Give an empty file its header and head mark, the way compaction
        writes a file: in a temporary file, synced, then renamed into place.
        A crash meanwhile leaves the empty file, which the next start creates
        again, so a data file that does not start with a whole header is
        never a crash's doing."""
        rewrite = self.start_rewrite()
        try:
            rewrite.write(make_header(rewrite.file_id))
            self._take_rewrite()
        except BaseException:
            self.abort_rewrite()
            raise
        fsync_directory(self.path)

    # -- replay -----------------------------------------------------------

    def load(
        self,
        items: dict,
        pack: Callable[..., bytes],
        on_other: Callable[[Record], None],
        slabs: Slabs,
        progress: Progress = _no_progress,
    ) -> tuple[int, int, int]:
        """Replay the file into ``items`` (see :func:`load_records`, which
        ``progress`` hears from).

        The first record that cannot be read ends the replay. If it lies
        where a sync mark proves the file had reached the disk, that is
        corruption: :class:`CorruptLogError`, with its offset. Otherwise it is
        what a crash leaves in the part of the file that was never synced (a
        cut, zeros, stale or reordered pages): the file is cut there, keeping
        the longest valid prefix, with one warning. A file that is not a data
        file at all is :class:`NotADataFile`, which says what it looks like.
        """
        with open(self.path, "rb") as f:
            buf = f.read()
        head = read_head(buf)
        if head is None:  # never a crash's: a new file takes its name once its header is on disk
            check_ours(buf, self.path)
            raise CorruptLogError(self.path, 0, "not a memcachedlite data file (bad header)")
        start, self.file_id = head.start, head.file_id
        if head.marked:
            self.head_at, self.head_synced = head.line_end, head.synced
        collecting = gc.isenabled()
        gc.disable()  # a million new tuples would trigger needless collections
        try:
            self.snapshot_end = 0
            result, self.snapshot_end = load_buffer(buf, start, items, pack, on_other, slabs, progress)
        except BadRecord as bad:
            synced = max(head.synced, highest_sync_mark(buf, self.file_id))
            if bad.offset < synced:
                raise CorruptLogError(
                    self.path, bad.offset, f"{bad}, in data that had reached the disk (synced up to {synced})"
                ) from None
            if bad.offset == head.line_end and looks_like_head_mark(buf, bad.offset):
                raise CorruptLogError(self.path, bad.offset, f"damaged head mark ({bad})") from None
            self._cut(bad.offset, buf, str(bad))
            result = bad.progress
        finally:
            if collecting:
                gc.enable()
        if len(buf) < head.synced:
            raise CorruptLogError(
                self.path, len(buf), f"the file ends here, but its first {head.synced} bytes had reached the disk"
            )
        fileio.system.fsync(self._fd)  # what was read is what the disk keeps from now on
        self.synced = self.size
        self._marked_end = ends_with_mark(buf, self.size, self.file_id)
        self._loaded = True
        self._mark_if_possible()
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
        fileio.system.ftruncate(self._fd, offset)
        fileio.system.lseek(self._fd, offset, os.SEEK_SET)  # a descriptor without O_APPEND writes on from here
        fileio.system.fsync(self._fd)
        self.size = self.synced = offset
        self.dropped_at_start = (offset, dropped, intact)

    def mark_all_synced(self) -> None:
        """Say in the file that all of it is on disk; called right after an
        fsync that covered all of it (start-up, a clean stop).

        The head mark is rewritten in place to vouch for all of it (so that
        a later cut, a flipped bit or a zeroed block anywhere in it is told
        from a crash's tail), and a sync mark is appended, unless the file
        already ends with one: the only mark of a file without a head mark,
        and the one that vouches for the head mark itself. Then an fsync, so
        that the marks too are on disk before the server goes on. Neither
        vouches for itself, so a power cut while they are written leaves a
        file that loads as before.
        """
        synced = self.size
        if self._marked_end and self.head_synced >= synced:
            return
        if not self._marked_end:
            self._mark_due = None  # this mark says more
            self._write(encode_sync(synced, self.file_id))
            self._marked_end = True
        if self.head_at and self.head_synced < synced:
            fd = fileio.system.open(self.path, os.O_WRONLY | os.O_CLOEXEC)  # a descriptor that writes where it is told
            try:
                system = fileio.system
                if system.fstat(fd).st_ino != system.fstat(self._fd).st_ino:  # pragma: no cover - we hold the lock
                    raise LogWriteError(f"{self.path} was replaced while in use")
                pwrite_all(fd, encode_head_mark(synced, self.file_id), self.head_at)
            finally:
                fileio.system.close(fd)
            self.head_synced = synced
        fileio.system.fsync(self._fd)

    def _mark_if_possible(self) -> None:
        """:meth:`mark_all_synced`, which a full disk (or a failing one) must
        not turn into a failed start or stop: the marks are only ever a lower
        bound, and a write that fails later says why."""
        try:
            self.mark_all_synced()
        except (OSError, LogWriteError) as exc:
            log.warning(
                "%s: could not mark the file as synced (%s): damage in it found later may be taken for a crash's",
                self.path,
                exc,
            )

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
                written += fileio.system.write(self._fd, view[written:])
        except OSError as exc:
            self._mark_due = mark
            certain = exc.errno in _FULL
            if written:
                try:
                    fileio.system.ftruncate(self._fd, start)
                    fileio.system.lseek(self._fd, start, os.SEEK_SET)  # (no O_APPEND on some descriptors)
                except OSError as cut:
                    log.error("could not cut back a partial record in %s: %s", self.path, cut)
                    certain = False
            reason = "out of disk space" if exc.errno in _FULL else exc.strerror
            log.error("cannot write to %s: %s", self.path, exc)
            if not certain:
                self.failed = f"write failed: {exc.strerror}"
            raise LogWriteError(f"cannot write data file: {reason}") from exc
        self.size = start + written
        self._marked_end = False
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
        with self._sync_lock, self._flush_lock:  # no flush or fsync of the old file meanwhile
            try:
                old_size = self._take_rewrite()
            except OSError as exc:
                self.abort_rewrite()
                raise LogWriteError(f"compaction failed: {exc.strerror}") from exc
        try:
            fsync_directory(self.path)
        except OSError as exc:
            self.failed = f"directory sync failed: {exc.strerror}"
            log.error("cannot sync the directory of %s after a rewrite: %s", self.path, exc)
            raise LogWriteError(f"cannot sync data file directory: {exc.strerror}") from exc
        return old_size - self.size

    def _take_rewrite(self) -> int:
        """Finish the new file (the appends made meanwhile, its marks), sync
        it, rename it over the old one and write to it from now on; returns
        the old file's size. An OSError leaves the old file in place."""
        rewrite = self._rewrite
        assert rewrite is not None
        rewrite.write(b"".join(rewrite.pending))
        # The file is synced before it takes the name, so from the rename
        # on all of it is on disk: the marks may say so before the fsync.
        rewrite.write(encode_sync(rewrite.size, rewrite.file_id))
        pwrite_all(rewrite.fd, encode_head_mark(rewrite.size, rewrite.file_id), HEAD_MARK_AT)
        fileio.system.fsync(rewrite.fd)
        fileio.system.rename(rewrite.tmp_path, self.path)
        old_fd, old_size = self._fd, self.size
        self._fd = rewrite.fd
        self.file_id = rewrite.file_id
        self.size = self.synced = rewrite.size
        self.snapshot_end = rewrite.snapshot_end
        self.synced_lsn = self.written_lsn
        self.head_at, self.head_synced = HEAD_MARK_AT, rewrite.size
        self._marked_end = True
        self._mark_due = None
        self._rewrite = None
        self.failed = ""
        fileio.system.close(old_fd)  # also releases the old file's lock; the new one is held
        return old_size

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
                fileio.system.fsync(self._fd)
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
        """Flush to disk, mark all of the file as synced (a clean stop: see
        :meth:`mark_all_synced`) and release the file (and its lock)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.abort_rewrite()
        if self._syncer is not None:
            self._syncer.join()
        if not self.failed and self._loaded:  # a file refused at start-up is left as it was
            try:
                self.flush()
                fileio.system.fsync(self._fd)
            except (OSError, LogWriteError):
                log.exception("final fsync of %s failed", self.path)
            else:
                self.synced = self.size
                self._mark_if_possible()
        fileio.system.close(self._fd)


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
