"""Repair of a damaged data file: salvage every intact record, keep the
original beside it, and rewrite the file atomically, holding the file's
lock as a server does (a file in use is refused)."""

from __future__ import annotations

import binascii
import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

from ..errors import CorruptLogError
from .datafile import open_locked
from .fileio import fsync_directory, write_all
from .records import (
    HEAD_MARK_AT,
    HEAD_MARK_SIZE,
    BadRecord,
    Record,
    begins_as_data_file,
    encode,
    encode_sync,
    guess_file_id,
    highest_sync_mark,
    looks_like_head_mark,
    make_header,
    new_file_id,
    next_valid_record,
    parse_records,
    read_head,
)
from .replay import replay_bytes

#: A record line naming a key, or a bulk record counting items, in damaged
#: bytes (a line end before it may be gone; the checksum field after it is
#: asked for, so that text inside a value is seldom taken for one).
_NAMED = re.compile(
    rb"(?:(b?)(?:set|delete|touch|invalidate) ([^ \r\n]{1,400})|(?:snapshot|sets) \d+ (\d+))"
    rb" [^\r\n]{0,100}[0-9a-f]{8}\r\n"
)


@dataclass
class RepairReport:
    """What ``repair`` kept and dropped.

    ``damaged_offsets`` lists where unreadable stretches began. Damage at or
    past ``synced`` (the highest offset a sync mark vouches for) is what a
    crash leaves: the file is cut there (``cut_offset``), so the result is a
    state that existed. Damage before it is corruption of data that had
    reached the disk: the records after it are kept (``kept_across_damage``),
    which may combine changes that never coexisted, and the user is told. A
    file shorter than its head mark says it was is corruption too: it was
    cut short (``cut_short``: the length it had at least).
    """

    records: int = 0
    #: the live items the file loads to once repaired (or as it is, when intact)
    items: int = 0
    dropped_bytes: int = 0
    damaged_offsets: list = field(default_factory=list)
    #: keys that records in the dropped bytes named, as far as they can be read
    lost_keys: list = field(default_factory=list)
    #: items of snapshot sections and ``sets`` records in the dropped bytes
    lost_bulk_items: int = 0
    backup: str = ""
    synced: int = 0
    cut_offset: Optional[int] = None
    cut_short: Optional[int] = None
    kept_across_damage: bool = False

    @property
    def damaged(self) -> bool:
        return bool(self.damaged_offsets)

    def describe(self, path: str) -> list[str]:
        """The result, in the lines ``mcl repair`` prints (and ``mcl serve
        --repair`` logs): once, with what was kept and what could not be."""
        kept = f"{_count(self.items, 'item')} ({_count(self.records, 'record')})"
        if not self.damaged:
            return [f"{path}: nothing to repair: no damage; {kept}, unchanged"]
        lines = [f"{path}: kept {kept}; could not keep {self._lost()}. The original is saved as {self.backup}"]
        if self.cut_offset is not None:
            lines.append(
                f"{path}: cut at offset {self.cut_offset}, past the last sync: what a crash leaves;"
                " the file is a prefix of what was written"
            )
        if self.cut_short is not None:
            lines.append(
                f"{path}: the file was cut short: it ends at byte {self.damaged_offsets[-1]}, but its first"
                f" {self.cut_short} bytes had reached the disk; what followed is lost"
            )
        if self.kept_across_damage:
            lines.append(
                f"{path}: WARNING: damage lay in data that had reached the disk (synced up to {self.synced});"
                " the records after it were kept, so the result may combine changes that never existed together."
                f" Compare with {self.backup} before you rely on it."
            )
        return lines

    def _lost(self) -> str:
        parts = []
        stretches = self.damaged_offsets[:-1] if self.cut_short is not None else self.damaged_offsets
        if stretches:
            where = ", ".join(map(str, stretches))
            parts.append(f"{self.dropped_bytes} damaged bytes at offset{'s' if len(stretches) > 1 else ''} {where}")
        if self.cut_short is not None:
            end = self.damaged_offsets[-1]
            parts.append(f"the {self.cut_short - end} bytes or more that followed byte {end}, cut off")
        if self.lost_keys:
            # a key may hold any byte (meta base64, binary protocol): shown escaped, on one line
            shown = ", ".join(
                key.decode("latin-1").encode("unicode_escape").decode("ascii") for key in self.lost_keys[:10]
            )
            more = f" and {len(self.lost_keys) - 10} more" if len(self.lost_keys) > 10 else ""
            parts.append(f"changes to {_count(len(self.lost_keys), 'key')} named there ({shown}{more})")
        if self.lost_bulk_items:
            parts.append(f"{self.lost_bulk_items} items of bulk records there")
        return "; ".join(parts)

    def _note_dropped(self, buf: bytes, start: int, end: int) -> None:
        self.dropped_bytes += end - start
        for match in _NAMED.finditer(buf[start:end]):
            if match.group(3) is not None:
                self.lost_bulk_items += int(match.group(3))
                continue
            key = bytes(match.group(2))
            if match.group(1):  # a b record: its key in base64
                with contextlib.suppress(binascii.Error):
                    key = binascii.a2b_base64(key)
            if key not in self.lost_keys:
                self.lost_keys.append(key)


def _count(number: int, what: str) -> str:
    return f"{number} {what}{'' if number == 1 else 's'}"


def salvage(buf: bytes) -> tuple[list[Record], RepairReport]:
    """The records of a data file's contents that repair keeps (see :class:`RepairReport`).

    Sync marks are not kept: they speak of offsets of the old file.
    """
    report = RepairReport()
    records: list[Record] = []
    head = read_head(buf)
    if head is None:  # a header is on disk before anything follows it: its damage is corruption
        pos, file_id, floor = 0, guess_file_id(buf), 1
    else:
        pos, file_id, floor = head.start, head.file_id, head.synced
    report.synced = max(floor, highest_sync_mark(buf, file_id))
    before_damage: Optional[int] = None  # records kept before the first damage skipped over
    while pos < len(buf):
        try:
            for record in parse_records(buf, pos):
                if record[0] != b"sync":
                    records.append(record)
            break
        except BadRecord as bad:
            report.damaged_offsets.append(bad.offset)
            head_mark = head is not None and bad.offset == head.line_end and looks_like_head_mark(buf, bad.offset)
            if bad.offset >= report.synced and not head_mark:  # a crash's damage: keep the prefix only
                report.cut_offset = bad.offset
                report._note_dropped(buf, bad.offset, len(buf))
                break
            nxt = next_valid_record(buf, bad.offset + 1)
            end = len(buf) if nxt is None else nxt
            report._note_dropped(buf, bad.offset, end)
            before_damage = len(records) if before_damage is None else before_damage
            pos = end
    report.kept_across_damage = before_damage is not None and len(records) > before_damage
    if head is not None and len(buf) < head.synced:
        report.damaged_offsets.append(len(buf))
        report.cut_short = head.synced
    report.records = len(records)
    return records, report


def repair(path: Union[str, os.PathLike]) -> RepairReport:
    """Rewrite a damaged data file with every record that can be salvaged.

    Takes the file's lock first, as a server does, and refuses a file in use
    (:class:`~memcachedlite.errors.DataFileInUse`): a server appending to
    it would lose what it appends. An intact file is left as it is (the
    report says so); one that is no data file at all is refused
    (:class:`CorruptLogError`). Otherwise the original is kept beside it as
    ``<path>.broken-<unix time>``, and the rewrite goes through a temporary
    file and an atomic rename, so a crash during repair leaves either the
    old file or the new one.
    """
    path = os.fspath(path)
    fd = open_locked(path, os.O_RDONLY)
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            buf = f.read()
        records, report = salvage(buf)
        if not report.damaged:
            report.items = len(replay_bytes(buf, path, int(time.time())).items) if buf else 0
            return report
        if read_head(buf) is None and not records and not begins_as_data_file(buf):
            raise CorruptLogError(path, 0, "not a memcachedlite data file; nothing to salvage")
        rewritten = _rewritten(records)
        report.items = len(replay_bytes(rewritten, path, int(time.time())).items)  # refuses what start-up would
        report.backup = f"{path}.broken-{int(time.time())}"
        write_atomically(report.backup, [buf])  # on disk before the original is replaced
        write_atomically(path, [rewritten])
        return report
    finally:
        os.close(fd)


def _rewritten(records: list[Record]) -> bytes:
    """A new data file holding ``records``, synced whole before it takes the
    name: its head mark vouches for all of it, and a sync mark at its end
    for the head mark."""
    file_id = new_file_id()
    body = b"".join(map(encode, records))
    end = HEAD_MARK_AT + HEAD_MARK_SIZE + len(body)
    mark = encode_sync(end, file_id)
    return make_header(file_id, end + len(mark)) + body + mark


def write_atomically(path: str, chunks: Iterable[bytes]) -> None:
    """Write ``path`` through a temporary file, synced, and a rename, made durable."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            write_all(fd, b"".join(chunks))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(path)
