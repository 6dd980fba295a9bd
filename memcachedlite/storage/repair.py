"""Repair of a damaged data file: salvage every intact record, keep the
original beside it, and rewrite the file atomically."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

from .fileio import fsync_directory, write_all
from .records import (
    LEGACY_ID,
    BadRecord,
    Record,
    encode,
    encode_sync,
    highest_sync_mark,
    make_header,
    new_file_id,
    next_valid_record,
    parse_records,
    read_header,
)

log = logging.getLogger(__name__)


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
        except BadRecord as bad:
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
    write_atomically(path, chunks)
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


def write_atomically(path: str, chunks: Iterable[bytes]) -> None:
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
