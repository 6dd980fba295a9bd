"""The append-only data file: record format, appending with an fsync policy,
and replay at start-up.

File format (version 2; version 1 files, whose header has no file id, are
still read and appended to), documented in ``docs/data-file.md``::

    MEMCACHEDLITE-LOG 2 <file id>\\r\\n                        header
    snapshot <format> <count> <next cas> <expiring> <bytes> <crc>\\r\\n<bytes>\\r\\n
                                    (written by compaction, at the head only)
    sync <offset> <file id> <crc>\\r\\n                     sync mark
    group <records> <bytes> <crc>\\r\\n<records>              one change, all or nothing
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
import sys
import threading
import time
from array import array
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Callable, Iterable, Iterator, Optional, Union
from zlib import crc32

from .errors import CorruptLogError, LogWriteError

log = logging.getLogger(__name__)

#: The header of a version 1 file (no file id); still read, never written.
HEADER = b"MEMCACHEDLITE-LOG 1\r\n"
_HEADER_V2 = b"MEMCACHEDLITE-LOG 2 "
#: The file id that sync marks in a version 1 file carry.
LEGACY_ID = b"0" * 16
FSYNC_POLICIES = ("always", "everysec", "no")


def new_file_id() -> bytes:
    """A random id for a new data file. Sync marks carry it, so that a mark
    on a stale page left over from another file is never taken for one of
    this file's."""
    return os.urandom(8).hex().encode("ascii")


def make_header(file_id: bytes) -> bytes:
    return _HEADER_V2 + file_id + b"\r\n"


def read_header(buf: bytes) -> Optional[tuple[int, bytes]]:
    """Where the records of a data file start, and its file id; None when
    ``buf`` does not start with a whole header."""
    if buf.startswith(HEADER):
        return len(HEADER), LEGACY_ID
    end = len(_HEADER_V2) + 16
    if buf.startswith(_HEADER_V2) and buf[end : end + 2] == b"\r\n":
        file_id = buf[len(_HEADER_V2) : end]
        if len(file_id.strip(b"0123456789abcdef")) == 0:
            return end + 2, bytes(file_id)
    return None


def is_header_prefix(buf: bytes) -> bool:
    """Whether ``buf`` is the beginning of a header cut short by a crash."""
    return HEADER.startswith(buf) or _HEADER_V2.startswith(buf[: len(_HEADER_V2)])


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


def encode_sync(offset: int, file_id: bytes) -> bytes:
    """A sync mark: every byte of this file before ``offset`` had reached the
    disk (an fsync covering it had returned) before this mark was written.

    The mark itself may sit in the part of the file that a power cut can
    take back; it is only ever a lower bound, and start-up trusts the
    highest genuine one it can find, wherever it lies.
    """
    return _seal(b"sync %d %s" % (offset, file_id))


_BINARY_VERBS = frozenset([b"bset", b"bdelete", b"btouch", b"binvalidate"])


class _Bad(Exception):
    """A record that cannot be read; ``torn`` when it runs into the end of file."""

    def __init__(self, reason: str, torn: bool = False) -> None:
        super().__init__(reason)
        self.torn = torn
        self.offset = 0
        self.progress = (0, 0, 0)  # records loaded, highest cas, sets with an expiry, before this one


def encode_group(records: list[bytes]) -> bytes:
    """Records that make one change (a stale set: a set and an invalidate; a
    set that evicts: a set and deletes; ``md k I T``: a touch and an
    invalidate): replay applies all of them or, when a crash cut into them,
    none, so no state that never existed can come back."""
    body = b"".join(records)
    return _seal(b"group %d %d" % (len(records), len(body))) + body


def regroup(chunks: list[bytes]) -> bytes:
    """One group of every record in ``chunks`` (groups among them flattened):
    the records a single command appended in several steps."""
    flat: list[Record] = []
    body = b"".join(chunks)
    for record in parse_records(body, 0):
        flat.extend(record[1] if record[0] == b"group" else (record,))
    return encode_group([encode(r) for r in flat])


def read_group(buf: bytes, pos: int) -> tuple[list[Record], int]:
    """The records of the group at ``pos`` and the offset after them;
    :class:`_Bad` at ``pos`` if any of it cannot be read."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        raise _Bad("group header has no end of line", torn=True)
    line = buf[pos:eol]
    parts = line.split(b" ")
    try:
        if len(parts) != 4 or crc32(line[: line.rfind(b" ")]) != int(parts[3], 16):
            raise ValueError("bad group header")
        count, length = int(parts[1]), int(parts[2])
    except ValueError as exc:
        raise _Bad(f"malformed group: {exc}") from None
    start = eol + 2
    end = start + length
    if end > len(buf):
        raise _Bad("group runs past the end of the file", torn=True)
    records = []
    at = start
    try:
        while at < end:
            record, at = parse_one(buf, at)
            records.append(record)
    except _Bad as bad:
        raise _Bad(f"record {len(records) + 1} of a group: {bad}", torn=bad.torn) from None
    if at != end or len(records) != count or any(r[0] in (b"group", b"snapshot", b"sync") for r in records):
        raise _Bad("group does not hold what its header says")
    return records, end


def encode_snapshot(pairs: list[tuple[bytes, bytes]], item_format: int, next_cas: int, expiring: int) -> list[bytes]:
    """A snapshot section: every live item at once, in a form that loads in
    bulk (the way Redis puts an RDB preamble at the head of its AOF).

    ``pairs`` are the store's (key, item) pairs, the item in the store's own
    layout number ``item_format``; ``expiring`` counts the items with an
    expiry (0 lets start-up skip looking for expired ones). The payload is
    the key lengths (uint16) and item lengths (uint32), little-endian, then
    the keys, then the items, each run back to back.
    """
    keys = [k for k, _ in pairs]
    blobs = [b for _, b in pairs]
    key_lengths = array("H", map(len, keys))
    blob_lengths = array("I", map(len, blobs))
    if sys.byteorder == "big":  # pragma: no cover - the file is little-endian everywhere
        key_lengths.byteswap()
        blob_lengths.byteswap()
    payload = [key_lengths.tobytes(), blob_lengths.tobytes(), b"".join(keys), b"".join(blobs)]
    head = b"snapshot %d %d %d %d %d" % (item_format, len(pairs), next_cas, expiring, sum(map(len, payload)))
    crc = crc32(head)
    for part in payload:
        crc = crc32(part, crc)
    return [b"%s %08x\r\n" % (head, crc), *payload, b"\r\n"]


def read_snapshot(buf: bytes, pos: int) -> tuple[Record, int]:
    """The snapshot section at ``pos``: ``(b"snapshot", item_format,
    next_cas, expiring, pairs)`` with ``pairs`` an iterator of (key, item),
    and the offset after it. Every key and item is sliced out of ``buf`` by
    C loops: this is what makes a compacted file load fast."""
    n = len(buf)
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        raise _Bad("snapshot header has no end of line", torn=True)
    line = buf[pos:eol]
    parts = line.split(b" ")
    try:
        if len(parts) != 7:
            raise ValueError("wrong field count")
        item_format, count, next_cas, expiring, length = map(int, parts[1:6])
        crc = int(parts[6], 16)
    except ValueError as exc:
        raise _Bad(f"malformed snapshot header: {exc}") from None
    start = eol + 2
    end = start + length
    if end + 2 > n:
        raise _Bad("snapshot runs past the end of the file", torn=True)
    view = memoryview(buf)
    if buf[end : end + 2] != b"\r\n" or crc32(view[start:end], crc32(line[: line.rfind(b" ")])) != crc:
        raise _Bad("snapshot checksum mismatch")
    key_lengths = array("H")
    key_lengths.frombytes(view[start : start + 2 * count])
    blob_lengths = array("I")
    blob_lengths.frombytes(view[start + 2 * count : start + 6 * count])
    if sys.byteorder == "big":  # pragma: no cover
        key_lengths.byteswap()
        blob_lengths.byteswap()
    key_offsets = list(accumulate(key_lengths, initial=start + 6 * count))
    blob_offsets = list(accumulate(blob_lengths, initial=key_offsets[-1]))
    if blob_offsets[-1] != end:
        raise _Bad("snapshot lengths do not add up")
    take = buf.__getitem__
    keys = map(take, map(slice, key_offsets, key_offsets[1:]))
    blobs = map(take, map(slice, blob_offsets, blob_offsets[1:]))
    return (b"snapshot", item_format, next_cas, expiring, zip(keys, blobs, strict=True)), end + 2


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
        if buf.startswith(b"snapshot ", pos):
            record, end = read_snapshot(buf, pos)
            return record[:4] + (list(record[4]),), end
        if buf.startswith(b"group ", pos):
            records, end = read_group(buf, pos)
            return (b"group", records), end
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
            if verb == b"sync" and len(parts) == 4:
                return (b"sync", int(parts[1]), parts[2]), eol + 1
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
) -> tuple[int, int, int]:
    """Replay ``buf`` from ``start`` into ``items`` (key -> the store's item
    form, ``pack(cas, exptime, flags) + b" <flags> <bytes>\\r\\n<value>\\r\\n"``,
    see :mod:`memcachedlite.store`); every other record, ``bset`` included,
    goes to ``on_other``. Returns the number of records, the highest cas seen
    by this loop, and how many of its sets carried an expiry.

    This is :func:`parse_records` with the common ``set`` record inlined,
    because start-up time is mostly this loop; anything unusual takes the
    general path, which also reports damage precisely.
    """
    n = len(buf)
    pos = start
    find = buf.find
    starts = buf.startswith
    count = max_cas = expiring = 0
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
                    if exptime == b"0":
                        meta = pack(number, 0, 0 if flags == b"0" else int(flags))
                    else:
                        meta = pack(number, int(exptime), 0 if flags == b"0" else int(flags))
                        expiring += 1
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
            bad.progress = (count, max_cas, 1)  # expiring: unknown, so assume some
            raise
        for one in record[1] if record[0] == b"group" else (record,):
            count += 1
            if one[0] == b"set":  # in a group (the fast path takes every other good set)
                _, key, value, flags, exptime, cas = one
                items.pop(key, None)  # re-inserted at the young end
                items[key] = b"%b %d %d\r\n%b\r\n" % (pack(cas, exptime, flags), flags, len(value), value)
                max_cas = max(max_cas, cas)
                expiring += exptime != 0
            else:
                on_other(one)
    return count, max_cas, expiring


_RECORD_START = re.compile(rb"\r\n(?=(?:b?(?:set|delete|touch|invalidate)|flush_all|next_cas|sync|snapshot|group) )")
_SYNC_MARK = re.compile(rb"\r\nsync (\d{1,19}) ([0-9a-f]{16}) ([0-9a-f]{8})\r\n")


def highest_sync_mark(buf: bytes, file_id: bytes, start: int = 0) -> int:
    """The highest offset that a genuine sync mark at or after ``start``
    vouches for: its checksum holds, it carries this file's id, and it lies
    at or past the offset it names (a mark is written after its fsync)."""
    best = 0
    for match in _SYNC_MARK.finditer(buf, max(start - 2, 0)):
        offset = int(match.group(1))
        head = b"sync %s %s" % (match.group(1), match.group(2))
        if (
            match.group(2) == file_id
            and int(match.group(3), 16) == crc32(head)
            and offset <= match.start() + 2
            and offset > best
        ):
            best = offset
    return best


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
    """What ``repair`` kept and dropped.

    ``damaged_offsets`` lists where unreadable stretches began. Damage at or
    past ``synced`` (the highest offset a sync mark vouches for) is what a
    crash leaves: the file is cut there (``cut_offset``), so the result is a
    state that existed. Damage before it is corruption of data that had
    reached the disk: the records after it are kept (``kept_across_damage``),
    which may combine changes that never coexisted, and the user is told.
    """

    records: int = 0
    dropped_bytes: int = 0
    damaged_offsets: list = field(default_factory=list)
    backup: str = ""
    synced: int = 0
    cut_offset: Optional[int] = None
    kept_across_damage: bool = False


def salvage(buf: bytes) -> tuple[list[Record], RepairReport]:
    """The records of a data file's contents that repair keeps (see :class:`RepairReport`).

    Sync marks are not kept: they speak of offsets of the old file.
    """
    report = RepairReport()
    records: list[Record] = []
    header = read_header(buf)
    pos, file_id = header if header is not None else (0, LEGACY_ID)
    report.synced = highest_sync_mark(buf, file_id)
    while pos < len(buf):
        try:
            for record in parse_records(buf, pos):
                if record[0] != b"sync":
                    records.append(record)
            break
        except _Bad as bad:
            report.damaged_offsets.append(bad.offset)
            if bad.offset >= report.synced:  # a crash's damage: keep the prefix only
                report.cut_offset = bad.offset
                report.dropped_bytes += len(buf) - bad.offset
                break
            nxt = next_valid_record(buf, bad.offset + 1)
            end = len(buf) if nxt is None else nxt
            report.dropped_bytes += end - bad.offset
            report.kept_across_damage = nxt is not None
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
    if kind == b"sync":
        return encode_sync(record[1], record[2])
    if kind == b"snapshot":
        return b"".join(encode_snapshot(record[4], record[1], record[2], record[3]))
    if kind == b"group":
        return encode_group([encode(r) for r in record[1]])
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
    file_id = new_file_id()
    chunks = [make_header(file_id)] + [encode(r) for r in records]
    chunks.append(encode_sync(sum(map(len, chunks)), file_id))  # synced whole before it takes the name
    _write_atomically(path, chunks)
    log.warning(
        "%s repaired: kept %d records, dropped %d bytes at offsets %s; original saved as %s",
        path,
        report.records,
        report.dropped_bytes,
        report.damaged_offsets,
        report.backup,
    )
    if report.kept_across_damage:
        log.warning(
            "%s: records after damage in data that had reached the disk were kept; "
            "they may hold changes that never existed together. The original is in %s",
            path,
            report.backup,
        )
    return report


def _write_atomically(path: str, chunks: Iterable[bytes]) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            _write_all(fd, b"".join(chunks))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
        _write_all(self.fd, data)
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
        _fsync_directory(self.path)
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

    def load(self, items: dict, pack: Callable[..., bytes], on_other: Callable[[Record], None]) -> tuple[int, int, int]:
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
                except _Bad as bad:
                    bad.offset = start
                    raise
                on_other((b"snapshot", item_format, next_cas, expiring, pairs))
                self.snapshot_end = start = after
            result = load_records(buf, start, items, pack, other)
        except _Bad as bad:
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
            _fsync_directory(self.path)
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
        except _Bad as bad:
            pos = next_valid_record(buf, bad.offset + 1)
    return count
