"""Fuzz target: reading a data file (replay at start-up, and repair).

The input is a data file. Most inputs are first *resealed*: every record's
checksum is recomputed, so that the fuzzer reaches the parsing of fields
behind the checksum instead of being stopped by it (which of the two is
chosen from a checksum of the input).

Properties, for the file:

- ``Store(path)`` either loads it or refuses it with ``CorruptLogError``;
  nothing else escapes, and nothing is logged as an error;
- refused, the error names the offset where the first record that cannot
  be read starts (or 0, for a file that is not a data file at all);
- loaded, the items are exactly those that the file's readable records
  produce, replayed one by one into a plain dict (:func:`replay_model`,
  built on :func:`memcachedlite.storage.records.parse_records`): the longest
  prefix of valid records, so some prefix of the file's records; and the
  store's invariants hold;
- ``repair`` (on a copy of the file) returns its report (or refuses a file
  that holds no record and does not even begin as a data file), and the
  file it leaves loads cleanly, to exactly the records ``salvage`` kept.
"""

from __future__ import annotations

import os
import struct
import zlib
from zlib import crc32

from common import NOW, ErrorLog, PropertyViolation, check_invariants, clear_dir, clock, durable_state, workdir

from memcachedlite import CorruptLogError, Store
from memcachedlite.storage.items import BINARY_KEY, ITEM_FORMAT, Item, decode, make_item, upgrade
from memcachedlite.storage.records import BadRecord, begins_as_data_file, parse_one, read_head, read_header, record_key
from memcachedlite.storage.repair import repair, salvage

#: Longest file tried.
MAX_LEN = 16384

_errors = ErrorLog()
_dir = os.path.join(workdir(), "datafile")
os.makedirs(_dir, exist_ok=True)
_loaded_path = os.path.join(_dir, "load.txt")
_repaired_path = os.path.join(_dir, "repair.txt")


def reseal(buf: bytes) -> bytes:
    """``buf`` with the checksum of every line that looks like a record recomputed."""
    header = read_header(buf)
    pos = header[0] if header is not None else 0
    out = [buf[:pos]]
    n = len(buf)
    while pos < n:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            out.append(buf[pos:])
            break
        line = buf[pos:eol]
        cut = line.rfind(b" ")
        parts = line.split(b" ")
        if cut <= 0:
            out.append(buf[pos : eol + 2])
            pos = eol + 2
            continue
        head = line[:cut]
        data = b""
        try:
            if parts[0] in (b"set", b"bset") and len(parts) == 7:
                data = buf[eol + 2 : eol + 2 + max(int(parts[4]), 0)]
            elif parts[0] in (b"snapshot", b"sets") and len(parts) == 7:
                data = buf[eol + 2 : eol + 2 + max(int(parts[5]), 0)]
        except ValueError:
            pass
        out.append(b"%s %08x\r\n%s" % (head, crc32(data, crc32(head)), data))
        pos = eol + 2 + len(data)
    return b"".join(out)


class Model:
    """The items a sequence of records leaves, as a plain dict:
    key -> (value, flags, exptime, cas, stale, binary key)."""

    def __init__(self) -> None:
        self.items: dict[bytes, tuple] = {}

    def apply(self, record: tuple) -> None:
        kind = record[0]
        items = self.items
        if kind == b"group":
            for one in record[1]:
                self.apply(one)
        elif kind in (b"snapshot", b"sets"):
            if record[1] not in (1, ITEM_FORMAT):  # the store upgrades items of format 1
                raise Unreadable(f"{kind.decode()} of unknown item format {record[1]}")
            for key, blob in record[4]:
                item = well_formed(key, blob, record[1])
                items.pop(key, None)
                items[key] = (item.value, item.flags, item.exptime, item.cas, item.stale, bool(item.state & BINARY_KEY))
        elif kind == b"flush_all":
            at = record[1]
            if at <= NOW:
                items.clear()
            else:
                for key, entry in items.items():
                    if not entry[2] or entry[2] > at:
                        items[key] = entry[:2] + (at,) + entry[3:]
        elif kind in (b"next_cas", b"sync"):
            pass
        else:
            kind, key, binary = record_key(kind, record[1])
            if kind == b"set":
                _, _, value, flags, exptime, cas = record
                items.pop(key, None)
                items[key] = (bytes(value), flags, exptime, cas, False, binary)
            elif kind == b"delete":
                items.pop(key, None)
            elif kind == b"touch":
                if key in items:
                    entry = items[key]
                    items[key] = entry[:2] + (record[2],) + entry[3:]
            elif kind == b"invalidate":
                if key in items:
                    value, flags, exptime, _, _, binary = items[key]
                    items[key] = (value, flags, exptime, record[2], True, binary)
            else:
                raise AssertionError(f"the model does not know record {record[0]!r}")

    def live(self) -> dict[bytes, tuple]:
        return {key: entry for key, entry in self.items.items() if not 0 < entry[2] <= NOW}


class KnownIssue(Exception):
    """The input meets a known limit (see :func:`well_formed`): fuzzing it
    further would only find that limit again."""


def well_formed(key: bytes, blob: bytes, item_format: int) -> Item:
    """The item a snapshot or ``sets`` record holds, if it is in the item
    layout exactly as the store writes it (format 1: as it wrote it then).

    An item not framed as an item (too short, no line end at its end) is
    damage: the record parser refuses it (``items.bulk_expiring``). KNOWN
    LIMIT (docs/fuzzing.md): the numbers of a framed item's text line
    (flags, length) are trusted as the checksum vouches for them, since
    checking them would cost as much as the bulk load; a crafted record
    that lies there is skipped.
    """
    try:
        if item_format == 1:
            blob = upgrade(key, blob, 1)
        item = decode(blob)
        value, flags, exptime, cas, atime, state, cls, size = item
        if make_item(value, flags, exptime, cas, atime, state, cls, size) == blob:
            return item
    except (ValueError, struct.error):
        pass
    raise KnownIssue("an item of a bulk record whose text line does not match its header and length")


class Unreadable(Exception):
    """A record the store cannot take even though it parses (an unknown item format)."""


def replay_model(buf: bytes) -> tuple[dict, int | None, list[int]]:
    """The items the longest readable prefix of the file ``buf`` produces,
    the offset of the first record that cannot be read (None: none), and
    where each record starts."""
    head = read_head(buf)
    if head is None:
        return {}, 0, [0]
    model = Model()
    pos = head.start
    starts = [0]
    while pos < len(buf):
        starts.append(pos)
        try:
            record, after = parse_one(buf, pos)
            model.apply(record)
        except BadRecord as bad:
            return model.live(), bad.offset, starts
        except Unreadable:
            return model.live(), pos, starts
        pos = after
    if len(buf) < head.synced:  # shorter than its head mark says it was: cut short
        return model.live(), len(buf), [*starts, len(buf)]
    return model.live(), None, starts


def _load(path: str):
    store = Store(path, fsync="no", clock=clock)
    try:
        check_invariants(store)
        return durable_state(store)
    finally:
        store.close()


def one_input(data: bytes) -> None:
    buf = reseal(data) if zlib.crc32(data) & 7 else data
    clear_dir(_dir)
    try:
        check_load(buf)
        check_repair(buf)
    except KnownIssue:
        pass
    finally:
        _errors.errors.clear()


def check_load(buf: bytes) -> None:
    expected, bad_at, starts = replay_model(buf)
    with open(_loaded_path, "wb") as f:
        f.write(buf)
    try:
        loaded = _load(_loaded_path)
    except CorruptLogError as exc:
        _errors.check()
        if not isinstance(exc.offset, int) or bad_at is None or exc.offset not in starts:
            raise PropertyViolation(
                f"refused with offset {exc.offset!r}; the first unreadable record starts at {bad_at}: {exc}"
            ) from None
        return
    _errors.check()
    if loaded != expected:
        lost = {k: v for k, v in expected.items() if loaded.get(k) != v}
        extra = {k: v for k, v in loaded.items() if expected.get(k) != v}
        raise PropertyViolation(
            f"loaded a state that no prefix of the records gives (first unreadable record at {bad_at}): "
            f"expected {lost}, loaded {extra}"
        )


def check_repair(buf: bytes) -> None:
    kept, _ = salvage(buf)
    model = Model()
    try:
        for record in kept:
            model.apply(record)
    except Unreadable:
        return  # kept as it was: the repaired file is refused as the original was
    with open(_repaired_path, "wb") as f:
        f.write(buf)
    try:
        repair(_repaired_path)
    except CorruptLogError as exc:
        if read_head(buf) is None and not kept and not begins_as_data_file(buf):
            return  # no data file: nothing to salvage, left as it was
        raise PropertyViolation(f"repair refused a file it could salvage: {exc}") from None
    _errors.check()
    try:
        repaired = _load(_repaired_path)
    except CorruptLogError as exc:
        raise PropertyViolation(f"the repaired file is refused: {exc}") from None
    _errors.check()
    expected = model.live()
    if repaired != expected:
        raise PropertyViolation(f"the repaired file loads to {repaired}, not to the records kept: {expected}")
