"""The append-only data file: record format, appending with an fsync policy,
and replay at start-up.

File format (version 1), documented in ``docs/data-file.md``::

    MEMCACHEDLITE-LOG 1\\r\\n                                  header
    set <key> <flags> <exptime> <bytes> <cas> <crc>\\r\\n<data>\\r\\n
    delete <key> <crc>\\r\\n
    touch <key> <exptime> <crc>\\r\\n
    invalidate <key> <cas> <crc>\\r\\n
    flush_all <at> <crc>\\r\\n
    next_cas <cas> <crc>\\r\\n

A key stored through the meta protocol's base64 form (``b`` flag) may hold
any byte: its records are ``bset``, ``bdelete``, ``btouch`` and
``binvalidate``, the same records with the key in base64. Files written
before these existed never hold them, so they read as they always did.

Fields are ASCII decimal; ``exptime`` and ``at`` are absolute unix times (0:
never / now). ``crc`` is the CRC-32 of the line before the space that
precedes it, continued over the data block, as 8 lowercase hex digits. Records
hold normalized effects (an ``incr`` is logged as the ``set`` it caused), so a
replay never needs a user's module.
"""

from __future__ import annotations

import binascii
import contextlib
import errno
import fcntl
import gc
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Union
from zlib import crc32

from .errors import CorruptLogError, LogWriteError

log = logging.getLogger(__name__)

HEADER = b"MEMCACHEDLITE-LOG 1\r\n"
FSYNC_POLICIES = ("always", "everysec", "no")

Record = tuple  # ("set", key, value, flags, exptime, cas) | ("delete", key) | ...


def _key(key: bytes, binary: bool) -> bytes:
    return binascii.b2a_base64(key, newline=False) if binary else key


def record_key(verb: bytes, field: bytes) -> tuple[bytes, bytes, bool]:
    """A parsed record's kind (``set``...), key and whether the key is binary,
    from its verb (``set`` or ``bset``...) and key field."""
    if verb in _BINARY_VERBS:
        return verb[1:], binascii.a2b_base64(field), True
    return verb, field, False


def _seal(head: bytes, data: bytes = b"") -> bytes:
    crc = crc32(data, crc32(head)) if data else crc32(head)
    return b"%s %08x\r\n" % (head, crc)


def encode_set(key: bytes, value: bytes, flags: int, exptime: int, cas: int, binary: bool = False) -> bytes:
    if binary:
        return set_record(_key(key, True), value, flags, exptime, cas, b"bset")
    return set_record(key, value, flags, exptime, cas)


def set_record(field: bytes, value: bytes, flags: int, exptime: int, cas: int, verb: bytes = b"set") -> bytes:
    """A ``set`` (or ``bset``) record of a key field as written."""
    head = b"%s %s %d %d %d %d" % (verb, field, flags, exptime, len(value), cas)
    return b"%s %08x\r\n%s\r\n" % (head, crc32(value, crc32(head)), value)


def encode_delete(key: bytes, binary: bool = False) -> bytes:
    return _seal(b"bdelete " + _key(key, True) if binary else b"delete " + key)


def encode_touch(key: bytes, exptime: int, binary: bool = False) -> bytes:
    return _seal(b"%s %s %d" % (b"btouch" if binary else b"touch", _key(key, binary), exptime))


def encode_invalidate(key: bytes, cas: int, binary: bool = False) -> bytes:
    """The item under ``key`` is now stale, with this cas (meta delete with ``I``)."""
    return _seal(b"%s %s %d" % (b"binvalidate" if binary else b"invalidate", _key(key, binary), cas))


def encode_flush(at: int) -> bytes:
    return _seal(b"flush_all %d" % at)


def encode_next_cas(cas: int) -> bytes:
    return _seal(b"next_cas %d" % cas)


_BINARY_VERBS = frozenset([b"bset", b"bdelete", b"btouch", b"binvalidate"])


class _Bad(Exception):
    """A record that cannot be read; ``torn`` when it runs into the end of file."""

    def __init__(self, reason: str, torn: bool = False) -> None:
        super().__init__(reason)
        self.torn = torn
        self.offset = 0
        self.progress = (0, 0)  # records loaded and highest cas, before this one


def parse_one(buf: bytes, pos: int) -> tuple[Record, int]:
    """Parse the record at ``pos``; return it and the offset just after it.

    Raises :class:`_Bad` (with its ``offset``) when it cannot be read; the
    caller decides whether that is a torn tail or damage.
    """
    n = len(buf)
    try:
        eol = buf.find(b"\n", pos)
        if eol < 0:
            raise _Bad("record has no end of line", torn=True)
        if buf[eol - 1] != 13:
            raise _Bad("record line not ended by CRLF", torn=eol + 1 >= n)
        line = buf[pos : eol - 1]
        cut = line.rfind(b" ")
        parts = line.split(b" ")
        verb = parts[0]
        kind = verb[1:] if verb in _BINARY_VERBS else verb
        try:
            crc = int(parts[-1], 16)
            if kind is not verb and len(parts) > 2:
                try:
                    binascii.a2b_base64(parts[1], strict_mode=True)
                except binascii.Error:
                    raise ValueError("key is not base64") from None
            if kind == b"set" and len(parts) == 7:
                data_end = eol + 1 + int(parts[4])
                if data_end + 2 > n:
                    raise _Bad("data block runs past the end of the file", torn=True)
                value = buf[eol + 1 : data_end]
                if buf[data_end : data_end + 2] != b"\r\n":
                    raise _Bad("data block not ended by CRLF", torn=data_end + 2 >= n)
                if crc32(value, crc32(line[:cut])) != crc:
                    raise _Bad("checksum mismatch", torn=data_end + 2 >= n)
                return (verb, parts[1], value, int(parts[2]), int(parts[3]), int(parts[5])), data_end + 2
            if crc32(line[:cut]) != crc:
                raise _Bad("checksum mismatch", torn=eol + 1 >= n)
            if kind == b"delete" and len(parts) == 3:
                return (verb, parts[1]), eol + 1
            if kind == b"touch" and len(parts) == 4:
                return (verb, parts[1], int(parts[2])), eol + 1
            if kind == b"invalidate" and len(parts) == 4:
                return (verb, parts[1], int(parts[2])), eol + 1
            if verb == b"flush_all" and len(parts) == 3:
                return (b"flush_all", int(parts[1])), eol + 1
            if verb == b"next_cas" and len(parts) == 3:
                return (b"next_cas", int(parts[1])), eol + 1
        except ValueError as exc:
            raise _Bad(f"malformed record: {exc}", torn=eol + 1 >= n) from None
        raise _Bad(f"unknown record {bytes(verb[:20])!r}")
    except _Bad as bad:
        bad.offset = pos
        raise


def parse_records(buf: bytes, start: int) -> Iterator[Record]:
    """Yield each record from offset ``start`` to the end of ``buf``.

    Raises :class:`_Bad` at the first record that cannot be read.
    """
    pos = start
    n = len(buf)
    while pos < n:
        record, pos = parse_one(buf, pos)
        yield record


def load_records(
    buf: bytes, start: int, items: dict, pack: Callable[..., bytes], on_other: Callable[[Record], None]
) -> tuple[int, int]:
    """Replay ``buf`` from ``start`` into ``items`` (key -> the store's item
    form, ``pack(cas, exptime, flags) + b" <flags> <bytes>\\r\\n<value>\\r\\n"``,
    see :mod:`memcachedlite.store`); every other record, ``bset`` included,
    goes to ``on_other``. Returns the number of records and the highest cas seen
    by this loop.

    This is :func:`parse_records` with the common ``set`` record inlined,
    because start-up time is mostly this loop; anything unusual takes the
    general path, which also reports damage precisely.
    """
    n = len(buf)
    pos = start
    find = buf.find
    starts = buf.startswith
    count = max_cas = 0
    while pos < n:
        if starts(b"set ", pos):
            eol = find(b"\r\n", pos)
            head = buf[pos:eol]
            try:
                _, key, flags, exptime, length, cas, crc = head.split(b" ")
                end = eol + 2 + int(length)
                value = buf[eol + 2 : end]
                if eol > 0 and buf[end : end + 2] == b"\r\n" and crc32(value, crc32(head[:-9])) == int(crc, 16):
                    number = int(cas)
                    meta = pack(number, 0 if exptime == b"0" else int(exptime), 0 if flags == b"0" else int(flags))
                    # the value is followed by CRLF in the file too: one slice takes both
                    items[key] = b"%b %b %b\r\n%b" % (meta, flags, length, buf[eol + 2 : end + 2])
                    if number > max_cas:
                        max_cas = number
                    count += 1
                    pos = end + 2
                    continue
            except ValueError:
                pass  # not a well-formed set: the general path says what is wrong
        try:
            record, pos = parse_one(buf, pos)
        except _Bad as bad:
            bad.progress = (count, max_cas)
            raise
        count += 1
        if record[0] == b"set":  # pragma: no cover - the fast path takes every good set
            _, key, value, flags, exptime, cas = record
            items[key] = b"%b %d %d\r\n%b\r\n" % (pack(cas, exptime, flags), flags, len(value), value)
            max_cas = max(max_cas, cas)
        else:
            on_other(record)
    return count, max_cas


_RECORD_START = re.compile(rb"\r\n(?=(?:b?(?:set|delete|touch|invalidate)|flush_all|next_cas) )")


def next_valid_record(buf: bytes, start: int) -> Optional[int]:
    """The offset of the first intact record at or after ``start``, if any.

    Candidates are line starts that begin with a record verb; the checksum
    makes a false match in the middle of a value practically impossible.
    """
    for match in _RECORD_START.finditer(buf, max(start - 2, 0)):
        offset = match.end()
        try:
            next(parse_records(buf, offset))
        except (_Bad, StopIteration):
            continue
        return offset
    return None


@dataclass
class RepairReport:
    """What ``repair`` kept and dropped."""

    records: int = 0
    dropped_bytes: int = 0
    damaged_offsets: list = field(default_factory=list)
    backup: str = ""


def salvage(buf: bytes) -> tuple[list[Record], RepairReport]:
    """Every intact record of a data file's contents, skipping damaged stretches."""
    report = RepairReport()
    records: list[Record] = []
    pos = len(HEADER) if buf.startswith(HEADER) else 0
    while pos < len(buf):
        try:
            for record in parse_records(buf, pos):
                records.append(record)
            break
        except _Bad as bad:
            report.damaged_offsets.append(bad.offset)
            nxt = next_valid_record(buf, bad.offset + 1)
            end = len(buf) if nxt is None else nxt
            report.dropped_bytes += end - bad.offset
            pos = end
    report.records = len(records)
    return records, report


def encode(record: Record) -> bytes:
    """The bytes of one parsed record (the inverse of :func:`parse_records`;
    a ``b`` record's key stays in base64)."""
    verb = record[0]
    kind = verb[1:] if verb in _BINARY_VERBS else verb
    if kind == b"set":
        _, field, value, flags, exptime, cas = record
        return set_record(field, bytes(value), flags, exptime, cas, verb)
    if kind == b"delete":
        return _seal(verb + b" " + record[1])
    if kind in (b"touch", b"invalidate"):
        return _seal(b"%s %s %d" % (verb, record[1], record[2]))
    if kind == b"flush_all":
        return encode_flush(record[1])
    return encode_next_cas(record[1])


def repair(path: Union[str, os.PathLike]) -> RepairReport:
    """Rewrite a damaged data file with every record that can be salvaged.

    The original is kept beside it as ``<path>.broken-<unix time>``. The
    rewrite goes through a temporary file and an atomic rename, so a crash
    during repair leaves either the old file or the new one.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        buf = f.read()
    records, report = salvage(buf)
    report.backup = f"{path}.broken-{int(time.time())}"
    shutil.copy2(path, report.backup)
    _write_atomically(path, [HEADER] + [encode(r) for r in records])
    log.warning(
        "%s repaired: kept %d records, dropped %d bytes at offsets %s; original saved as %s",
        path,
        report.records,
        report.dropped_bytes,
        report.damaged_offsets,
        report.backup,
    )
    return report


def _write_atomically(path: str, chunks: Iterable[bytes]) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(path)


def _fsync_directory(path: str) -> None:
    """Make a rename durable: fsync the directory holding ``path``."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Rewrite:
    """A compaction in progress: a temporary file being filled with the live
    items while the live file keeps taking appends, which are also kept here
    to be copied over before the switch."""

    def __init__(self, path: str) -> None:
        self.tmp_path = path + ".compact"
        self.fd = os.open(self.tmp_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.pending: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.size += len(data)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            os.unlink(self.tmp_path)


class DataLog:
    """One append-only data file, held open (and locked) for appending.

    ``append`` hands each record to the operating system before returning, so
    a write acknowledged after it survives the process being killed; ``sync``
    adds the disk, with group commit (one fsync covers every record appended
    before it started).
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
        self._sync_lock = threading.Lock()
        self._closed = threading.Event()
        self._syncer: threading.Thread | None = None
        self._rewrite: Optional[Rewrite] = None
        if self.size == 0:
            self.append(HEADER)

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

    def load(self, items: dict, pack: Callable[..., bytes], on_other: Callable[[Record], None]) -> tuple[int, int]:
        """Replay the file into ``items`` (see :func:`load_records`), cutting
        off a torn last record. Damage before it raises :class:`CorruptLogError`.
        """
        with open(self.path, "rb") as f:
            buf = f.read()
        if not buf.startswith(HEADER):
            if HEADER.startswith(buf):  # crashed while writing the header itself
                self._truncate(0, len(buf))
                self.append(HEADER)
                return 0, 0
            raise CorruptLogError(self.path, 0, "not a memcachedlite data file (bad header)")
        collecting = gc.isenabled()
        gc.disable()  # a million new tuples would trigger needless collections
        try:
            return load_records(buf, len(HEADER), items, pack, on_other)
        except _Bad as bad:
            damaged = bad.offset
            torn = bad.torn or not buf[damaged:].strip(b"\0")
            # A damaged length field can make a middle record look like it runs
            # to the end; a valid record further on proves it is not a torn tail.
            if not torn or next_valid_record(buf, damaged + 1) is not None:
                raise CorruptLogError(self.path, damaged, str(bad)) from None
            self._truncate(damaged, len(buf) - damaged)
            return bad.progress
        finally:
            if collecting:
                gc.enable()

    def _truncate(self, offset: int, dropped: int) -> None:
        log.warning(
            "%s: torn record at the end of the file (crash while writing); dropped its %d bytes at offset %d",
            self.path,
            dropped,
            offset,
        )
        os.ftruncate(self._fd, offset)
        os.fsync(self._fd)
        self.size = self.synced = offset

    # -- writing ----------------------------------------------------------

    def append(self, data: bytes) -> int:
        """Write ``data`` at the end of the file; return the new size.

        On failure the file is cut back to its previous size, so it never
        holds half a record that a later append would bury in the middle.
        """
        start = self.size
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError as exc:
            if written:
                try:
                    os.ftruncate(self._fd, start)
                except OSError:  # pragma: no cover - nothing more we can do
                    log.exception("could not cut back a partial record in %s", self.path)
            reason = "out of disk space" if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else exc.strerror
            log.error("cannot write to %s: %s", self.path, exc)
            raise LogWriteError(f"cannot write data file: {reason}") from exc
        self.size = start + written
        if self._rewrite is not None:
            self._rewrite.pending.append(data)
        return self.size

    # -- compaction -------------------------------------------------------

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
        it in place of the old one atomically. Returns the bytes saved."""
        rewrite = self._rewrite
        assert rewrite is not None
        try:
            rewrite.write(b"".join(rewrite.pending))
            os.fsync(rewrite.fd)
            os.rename(rewrite.tmp_path, self.path)
        except OSError as exc:
            self.abort_rewrite()
            raise LogWriteError(f"compaction failed: {exc.strerror}") from exc
        _fsync_directory(self.path)
        with self._sync_lock:  # the background fsync must not see the old fd closed
            old_fd, old_size = self._fd, self.size
            self._fd = rewrite.fd
            self.size = self.synced = rewrite.size
            self._rewrite = None
            os.close(old_fd)  # also releases the old file's lock; the new one is held
        return old_size - self.size

    def sync(self) -> None:
        """Make everything appended so far durable (group commit)."""
        target = self.size
        if self.synced >= target:
            return
        with self._sync_lock:
            if self.synced >= target:
                return
            end = self.size
            try:
                os.fsync(self._fd)
            except OSError as exc:
                log.error("fsync of %s failed: %s", self.path, exc)
                raise LogWriteError(f"cannot sync data file: {exc.strerror}") from exc
            self.synced = end

    def start_background_sync(self, interval: float = 1.0) -> None:
        """For ``everysec``: fsync at least every ``interval`` seconds."""
        if self.policy != "everysec" or self._syncer is not None:
            return
        self._syncer = threading.Thread(target=self._sync_loop, args=(interval,), name="mcl-fsync", daemon=True)
        self._syncer.start()

    def _sync_loop(self, interval: float) -> None:
        while not self._closed.wait(interval):
            try:
                self.sync()
            except LogWriteError:
                pass  # already logged; the next round tries again

    def close(self) -> None:
        """Flush to disk and release the file (and its lock)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.abort_rewrite()
        if self._syncer is not None:
            self._syncer.join()
        try:
            os.fsync(self._fd)
        except OSError:  # pragma: no cover - reported by sync() when it matters
            log.exception("final fsync of %s failed", self.path)
        os.close(self._fd)
