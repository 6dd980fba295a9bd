"""The data file's record format: the header and file id, record encoders
and parsers, the snapshot section, groups and sync marks.

File format (version 2; version 1 files, whose header has no file id, are
still read and appended to), documented in ``docs/data-file.md``::

    MEMCACHEDLITE-LOG 2 <file id>\\r\\n                        header
    snapshot <format> <count> <next cas> <expiring> <bytes> <crc>\\r\\n<bytes>\\r\\n
                                    (written by compaction, at the head only)
    sync <offset> <file id> <crc>\\r\\n                     sync mark
    group <records> <bytes> <crc>\\r\\n<records>              one change, all or nothing
    sets <format> <count> <next cas> <expiring> <bytes> <crc>\\r\\n<bytes>\\r\\n
                                    (items a run of pipelined sets stored, as a snapshot holds them)
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
import os
import re
import sys
from array import array
from itertools import accumulate
from typing import Iterator, NamedTuple, Optional
from zlib import crc32

from .items import ITEM_FORMAT, bulk_expiring

# The mypyc note: mypyc 2.4 compiles a bytes slice whose start lies past its
# end into SystemError ("Negative size passed to PyBytes_FromStringAndSize"),
# not b"". The parsers below test a length before each slice that malformed
# input could turn backwards, so that it is a BadRecord on both builds.

#: The header of a version 1 file (no file id); still read, never written.
HEADER = b"MEMCACHEDLITE-LOG 1\r\n"
_HEADER_V2 = b"MEMCACHEDLITE-LOG 2 "
_MAGIC = b"MEMCACHEDLITE-LOG "
#: The file id that sync marks in a version 1 file carry.
LEGACY_ID = b"0" * 16


def new_file_id() -> bytes:
    """A random id for a new data file. Sync marks carry it, so that a mark
    on a stale page left over from another file is never taken for one of
    this file's."""
    return os.urandom(8).hex().encode("ascii")


#: Where the head mark of a version 2 file lies: right after its header line.
HEAD_MARK_AT = len(_HEADER_V2) + 16 + 2


def encode_head_mark(offset: int, file_id: bytes) -> bytes:
    """The head mark: a sync mark (see :func:`encode_sync`) right after the
    header line, whose offset has 19 digits so that it keeps its length when
    it is rewritten in place, each time the server knows the whole file is
    on disk. Lying before what it vouches for, it is the one mark that a
    file cut short cannot lose. Readers that do not know it take it for an
    ordinary mark naming a place after itself, and ignore it."""
    return seal(b"sync %019d %s" % (offset, file_id))


HEAD_MARK_SIZE = len(b"sync  ") + 19 + 16 + len(b" 12345678\r\n")
_HEAD_MARK = re.compile(rb"sync (\d{19}) ([0-9a-f]{16}) ([0-9a-f]{8})\r\n")


def make_header(file_id: bytes, synced: int = 0) -> bytes:
    """The head of a new file: its header line and its head mark, vouching
    for the first ``synced`` bytes."""
    return _HEADER_V2 + file_id + b"\r\n" + encode_head_mark(synced, file_id)


class Head(NamedTuple):
    """What the head of a data file says (see :func:`read_head`)."""

    #: where the records start: after the head mark, if there is one
    start: int
    file_id: bytes
    #: where the header line ends, and the head mark, if any, lies
    line_end: int
    #: whether the file has a head mark (written since version 2 files have one)
    marked: bool
    #: the offset the head mark vouches for (0: none)
    synced: int


def read_head(buf: bytes) -> Optional[Head]:
    """The head of the data file ``buf``; None when it does not start with a
    whole header line (or its head mark carries another file id)."""
    if buf.startswith(HEADER):
        line_end, file_id = len(HEADER), LEGACY_ID
    else:
        line_end = HEAD_MARK_AT
        file_id = bytes(buf[len(_HEADER_V2) : line_end - 2])
        if not (buf.startswith(_HEADER_V2) and buf[line_end - 2 : line_end] == b"\r\n" and len(file_id) == 16):
            return None
        if len(file_id.strip(b"0123456789abcdef")) != 0:
            return None
    match = _HEAD_MARK.match(buf, line_end)
    if match is not None and int(match.group(3), 16) == crc32(b"sync %s %s" % match.group(1, 2)):
        if match.group(2) != file_id:  # written with the header, so one of the two ids is damaged
            return None
        return Head(match.end(), file_id, line_end, True, int(match.group(1)))
    return Head(line_end, file_id, line_end, False, 0)


def read_header(buf: bytes) -> Optional[tuple[int, bytes]]:
    """Where the records of a data file start (after its head mark, if it
    has one), and its file id; None when ``buf`` does not start with a whole
    header line."""
    head = read_head(buf)
    return None if head is None else (head.start, head.file_id)


def begins_as_data_file(buf: bytes) -> bool:
    """Whether ``buf`` begins as a data file does, even cut inside its header."""
    start = bytes(buf[: len(_MAGIC)])
    return bool(start) and _MAGIC.startswith(start)


def looks_like_head_mark(buf: bytes, pos: int) -> bool:
    """Whether the bytes at ``pos``, right after a header line, begin as a
    head mark does (a mere ``s`` could also begin a ``set``). A head mark
    that does not read is never a crash's doing: it is written with the
    header, synced before the file takes its name, and only ever rewritten
    in place, within one disk sector."""
    start = bytes(buf[pos : pos + 5])
    return start == b"sync " or (len(start) >= 2 and b"sync ".startswith(start))


def guess_file_id(buf: bytes) -> bytes:
    """The file id of a file whose header cannot be read: the one its last
    intact sync mark carries (:data:`LEGACY_ID` when it has none)."""
    found = LEGACY_ID
    for match in _SYNC_MARK.finditer(buf):
        if int(match.group(3), 16) == crc32(b"sync %s %s" % (match.group(1), match.group(2))):
            found = bytes(match.group(2))
    return found


Record = tuple  # ("set", key, value, flags, exptime, cas) | ("delete", key) | ...


def _key(key: bytes, binary: bool) -> bytes:
    return binascii.b2a_base64(key, newline=False) if binary else key


def record_key(verb: bytes, field: bytes) -> tuple[bytes, bytes, bool]:
    """A parsed record's kind (``set``...), key and whether the key is binary,
    from its verb (``set`` or ``bset``...) and key field."""
    if verb in _BINARY_VERBS:
        return verb[1:], binascii.a2b_base64(field), True
    return verb, field, False


def seal(head: bytes, data: bytes = b"") -> bytes:
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
    return seal(b"bdelete " + _key(key, True) if binary else b"delete " + key)


def encode_touch(key: bytes, exptime: int, binary: bool = False) -> bytes:
    return seal(b"%s %s %d" % (b"btouch" if binary else b"touch", _key(key, binary), exptime))


def encode_invalidate(key: bytes, cas: int, binary: bool = False) -> bytes:
    """The item under ``key`` is now stale, with this cas (meta delete with ``I``)."""
    return seal(b"%s %s %d" % (b"binvalidate" if binary else b"invalidate", _key(key, binary), cas))


def encode_flush(at: int) -> bytes:
    return seal(b"flush_all %d" % at)


def encode_next_cas(cas: int) -> bytes:
    return seal(b"next_cas %d" % cas)


def encode_sync(offset: int, file_id: bytes) -> bytes:
    """A sync mark: every byte of this file before ``offset`` had reached the
    disk (an fsync covering it had returned) before this mark was written.

    The mark itself may sit in the part of the file that a power cut can
    take back; it is only ever a lower bound, and start-up trusts the
    highest genuine one it can find, wherever it lies.
    """
    return seal(b"sync %d %s" % (offset, file_id))


_BINARY_VERBS = frozenset([b"bset", b"bdelete", b"btouch", b"binvalidate"])

# whole groups, then a padded last group; or whole groups and any padding
# after them, which strict_mode lets pass too
_STRICT_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?|(?:[A-Za-z0-9+/]{4})+=+")


def strict_b64decode(data: bytes) -> bytes:
    """Decode base64 that has its padding and nothing outside the alphabet,
    else raise :class:`binascii.Error`: what ``a2b_base64(strict_mode=True)``
    does on Python 3.11, which 3.10 lacks."""
    if _STRICT_BASE64.fullmatch(data) is None:
        raise binascii.Error("not strict base64")
    return binascii.a2b_base64(data)


class BadRecord(Exception):
    """A record that cannot be read; ``torn`` when it runs into the end of file."""

    def __init__(self, reason: str, torn: bool = False) -> None:
        super().__init__(reason)
        self.torn = torn
        self.offset = 0
        self.progress = (0, 0, 0)  # records loaded, highest cas, sets with an expiry, before this one


def _header_line(buf: bytes, pos: int, what: str) -> tuple[bytes, list[bytes], int]:
    """The header line of the ``what`` section at ``pos`` (without its CRLF),
    its space-separated fields and the offset after its CRLF; :class:`BadRecord`
    (torn) when the line has no end."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        raise BadRecord(f"{what} header has no end of line", torn=True)
    line = buf[pos:eol]
    return line, line.split(b" "), eol + 2


def encode_group(records: list[bytes]) -> bytes:
    """Records that make one change (a stale set: a set and an invalidate; a
    set that evicts: a set and deletes; ``md k I T``: a touch and an
    invalidate): replay applies all of them or, when a crash cut into them,
    none, so no state that never existed can come back."""
    body = b"".join(records)
    return seal(b"group %d %d" % (len(records), len(body))) + body


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
    :class:`BadRecord` at ``pos`` if any of it cannot be read."""
    line, parts, start = _header_line(buf, pos, "group")
    try:
        if len(parts) != 4 or crc32(line[: line.rfind(b" ")]) != int(parts[3], 16):
            raise ValueError("bad group header")
        count, length = int(parts[1]), int(parts[2])
    except ValueError as exc:
        raise BadRecord(f"malformed group: {exc}") from None
    end = start + length
    if end > len(buf):
        raise BadRecord("group runs past the end of the file", torn=True)
    records = []
    at = start
    try:
        while at < end:
            record, at = parse_one(buf, at)
            records.append(record)
    except BadRecord as bad:
        raise BadRecord(f"record {len(records) + 1} of a group: {bad}", torn=bad.torn) from None
    if at != end or len(records) != count or any(r[0] in (b"group", b"snapshot", b"sets", b"sync") for r in records):
        raise BadRecord("group does not hold what its header says")
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
    return _encode_bulk(b"snapshot", [k for k, _ in pairs], [b for _, b in pairs], item_format, next_cas, expiring)


def encode_sets(keys: list[bytes], blobs: list[bytes], item_format: int, next_cas: int) -> list[bytes]:
    """A ``sets`` record: items just stored by a run of pipelined sets (none
    with an expiry), in the snapshot's form, so that logging them is a few C
    loops instead of a record per set, and start-up loads them in bulk too.
    Replayed whole or not at all, like a group; each item replaces whatever
    its key held."""
    return _encode_bulk(b"sets", keys, blobs, item_format, next_cas, 0)


def _encode_bulk(
    verb: bytes, keys: list[bytes], blobs: list[bytes], item_format: int, next_cas: int, expiring: int
) -> list[bytes]:
    key_lengths = array("H", map(len, keys))
    blob_lengths = array("I", map(len, blobs))
    if sys.byteorder == "big":  # pragma: no cover - the file is little-endian everywhere
        key_lengths.byteswap()
        blob_lengths.byteswap()
    payload = [key_lengths.tobytes(), blob_lengths.tobytes(), b"".join(keys), b"".join(blobs)]
    head = b"%s %d %d %d %d %d" % (verb, item_format, len(keys), next_cas, expiring, sum(map(len, payload)))
    crc = crc32(head)
    for part in payload:
        crc = crc32(part, crc)
    return [b"%s %08x\r\n" % (head, crc), *payload, b"\r\n"]


def read_snapshot(buf: bytes, pos: int, what: str = "snapshot") -> tuple[Record, int]:
    """The snapshot section (or, with ``what="sets"``, the ``sets`` record)
    at ``pos``: ``(b"snapshot", item_format, next_cas, expiring, pairs)``
    with ``pairs`` an iterator of (key, item), and the offset after it. Every
    key and item is sliced out of ``buf`` by C loops: this is what makes a
    compacted file load fast. Items of the store's own layout are checked to
    be framed as items, and a count of 0 items with an expiry is not taken
    on trust (see :func:`memcachedlite.storage.items.bulk_expiring`)."""
    n = len(buf)
    line, parts, start = _header_line(buf, pos, what)
    try:
        if len(parts) != 7:
            raise ValueError("wrong field count")
        item_format, count, next_cas, expiring, length = map(int, parts[1:6])
        crc = int(parts[6], 16)
        if count < 0 or length < 0:  # (else a backwards slice: see the mypyc note)
            raise ValueError("negative count or length")
    except ValueError as exc:
        raise BadRecord(f"malformed {what} header: {exc}") from None
    end = start + length
    if end + 2 > n:
        raise BadRecord(f"{what} runs past the end of the file", torn=True)
    view = memoryview(buf)
    if buf[end : end + 2] != b"\r\n" or crc32(view[start:end], crc32(line[: line.rfind(b" ")])) != crc:
        raise BadRecord(f"{what} checksum mismatch")
    if not 0 <= 6 * count <= length:  # the length table alone would run past the payload
        raise BadRecord(f"{what} lengths do not add up")
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
        raise BadRecord(f"{what} lengths do not add up")
    take = buf.__getitem__
    keys = map(take, map(slice, key_offsets, key_offsets[1:]))
    blobs = list(map(take, map(slice, blob_offsets, blob_offsets[1:])))
    if item_format == ITEM_FORMAT:  # another layout's items are judged by whoever knows it (replay refuses)
        try:
            expiring = bulk_expiring(blobs, min(blob_lengths, default=0), expiring)
        except ValueError as exc:
            raise BadRecord(f"{what} holds {exc}") from None
    return (what.encode(), item_format, next_cas, expiring, zip(keys, blobs, strict=True)), end + 2


_U32, _U64, _I64 = 1 << 32, 1 << 64, 1 << 63


def _number(field: bytes, low: int, high: int) -> int:
    """A record's number, refused (ValueError) outside ``[low, high)``, the
    range the item layout holds it in: a checksum does not make a record
    the server could have written."""
    value = int(field)
    if not low <= value < high:
        raise ValueError("number out of range")
    return value


def parse_one(buf: bytes, pos: int) -> tuple[Record, int]:
    """Parse the record at ``pos``; return it and the offset just after it.

    Raises :class:`BadRecord` (with its ``offset``) when it cannot be read; the
    caller decides whether that is a torn tail or damage.
    """
    n = len(buf)
    try:
        eol = buf.find(b"\n", pos)
        if eol < 0:
            raise BadRecord("record has no end of line", torn=True)
        if eol == pos or buf[eol - 1] != 13:  # (else a backwards slice: see the mypyc note)
            raise BadRecord("record line not ended by CRLF", torn=eol + 1 >= n)
        if buf.startswith(b"snapshot ", pos):
            record, end = read_snapshot(buf, pos)
            return record[:4] + (list(record[4]),), end
        if buf.startswith(b"group ", pos):
            records, end = read_group(buf, pos)
            return (b"group", records), end
        if buf.startswith(b"sets ", pos):
            record, end = read_snapshot(buf, pos, "sets")
            return record[:4] + (list(record[4]),), end
        line = buf[pos : eol - 1]
        cut = line.rfind(b" ")
        parts = line.split(b" ")
        verb = parts[0]
        kind = verb[1:] if verb in _BINARY_VERBS else verb
        try:
            crc = int(parts[-1], 16)
            if kind is not verb and len(parts) > 2:
                try:
                    strict_b64decode(parts[1])
                except binascii.Error:
                    raise ValueError("key is not base64") from None
            if kind == b"set" and len(parts) == 7:
                data_end = eol + 1 + _number(parts[4], 0, _U64)
                if data_end + 2 > n:
                    raise BadRecord("data block runs past the end of the file", torn=True)
                value = buf[eol + 1 : data_end]
                if buf[data_end : data_end + 2] != b"\r\n":
                    raise BadRecord("data block not ended by CRLF", torn=data_end + 2 >= n)
                if crc32(value, crc32(line[:cut])) != crc:
                    raise BadRecord("checksum mismatch", torn=data_end + 2 >= n)
                flags, exptime = _number(parts[2], 0, _U32), _number(parts[3], -_I64, _I64)
                return (verb, parts[1], value, flags, exptime, _number(parts[5], 0, _U64)), data_end + 2
            if crc32(line[:cut]) != crc:
                raise BadRecord("checksum mismatch", torn=eol + 1 >= n)
            if kind == b"delete" and len(parts) == 3:
                return (verb, parts[1]), eol + 1
            if kind == b"touch" and len(parts) == 4:
                return (verb, parts[1], _number(parts[2], -_I64, _I64)), eol + 1
            if kind == b"invalidate" and len(parts) == 4:
                return (verb, parts[1], _number(parts[2], 0, _U64)), eol + 1
            if verb == b"flush_all" and len(parts) == 3:
                return (b"flush_all", _number(parts[1], -_I64, _I64)), eol + 1
            if verb == b"next_cas" and len(parts) == 3:
                return (b"next_cas", _number(parts[1], 0, _U64)), eol + 1
            if verb == b"sync" and len(parts) == 4:
                return (b"sync", int(parts[1]), parts[2]), eol + 1
        except ValueError as exc:
            raise BadRecord(f"malformed record: {exc}", torn=eol + 1 >= n) from None
        raise BadRecord(f"unknown record {bytes(verb[:20])!r}")
    except BadRecord as bad:
        bad.offset = pos
        raise


def parse_records(buf: bytes, start: int) -> Iterator[Record]:
    """Yield each record from offset ``start`` to the end of ``buf``.

    Raises :class:`BadRecord` at the first record that cannot be read.
    """
    pos = start
    n = len(buf)
    while pos < n:
        record, pos = parse_one(buf, pos)
        yield record


_RECORD_START = re.compile(rb"(?:b?(?:set|delete|touch|invalidate)|sets|flush_all|next_cas|sync|snapshot|group) ")
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


def ends_with_mark(buf: bytes, size: int, file_id: bytes) -> bool:
    """Whether the first ``size`` bytes of ``buf`` end with a sync mark that
    vouches for everything before it."""
    at = buf.rfind(b"\r\nsync ", max(size - 64, 0), size) + 2
    return at >= 2 and buf[at:size] == encode_sync(at, file_id)


def next_valid_record(buf: bytes, start: int) -> Optional[int]:
    """The offset of the first intact record at or after ``start``, if any.

    Candidates are the places a record verb starts (after a line end or
    not: damage may have taken the line end before an intact record); the
    checksum makes a false match in the middle of a value practically
    impossible.
    """
    for match in _RECORD_START.finditer(buf, start):
        offset = match.start()
        try:
            next(parse_records(buf, offset))
        except (BadRecord, StopIteration):
            continue
        return offset
    return None


def encode(record: Record) -> bytes:
    """The bytes of one parsed record (the inverse of :func:`parse_records`;
    a ``b`` record's key stays in base64)."""
    verb = record[0]
    kind = verb[1:] if verb in _BINARY_VERBS else verb
    if kind == b"set":
        _, field, value, flags, exptime, cas = record
        return set_record(field, bytes(value), flags, exptime, cas, verb)
    if kind == b"delete":
        return seal(verb + b" " + record[1])
    if kind in (b"touch", b"invalidate"):
        return seal(b"%s %s %d" % (verb, record[1], record[2]))
    if kind == b"flush_all":
        return encode_flush(record[1])
    if kind == b"sync":
        return encode_sync(record[1], record[2])
    if kind in (b"snapshot", b"sets"):  # (kind, item format, next cas, expiring, pairs)
        return b"".join(_encode_bulk(kind, [k for k, _ in record[4]], [b for _, b in record[4]], *record[1:4]))
    if kind == b"group":
        return encode_group([encode(r) for r in record[1]])
    return encode_next_cas(record[1])
