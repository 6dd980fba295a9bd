"""The item table's life in the data file: replaying the file into a store's
table at start-up, and the snapshot section a compaction writes for the next
start-up to load in bulk.
"""

from __future__ import annotations

import collections
import functools
import logging
import struct
import time
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Callable, Iterable, Optional

from ..errors import CorruptLogError
from . import records
from .datafile import DataLog, load_buffer
from .items import (
    BINARY_KEY,
    EXPTIME_AT,
    EXPTIME_END,
    ITEM_FORMAT,
    NEVER_PACKED,
    STALE,
    bulk_expiring,
    expire_by,
    item_exptime,
    item_state,
    make_item,
    memcached_size,
    pack_meta,
    unpack_meta,
    upgrade,
    with_exptime,
    with_state,
)
from .slabs import Slabs

logger = logging.getLogger(__name__)


def snapshot_section(snapshot: dict, next_cas: int, now: int) -> list[bytes]:
    """The snapshot section that recreates the live items of ``snapshot``:
    the items are written in their stored form, so start-up loads them
    in bulk (see :func:`memcachedlite.storage.datafile.encode_snapshot`)."""
    timed = [k for k, b in snapshot.items() if b[EXPTIME_AT:EXPTIME_END] != NEVER_PACKED]
    expired = {k for k in timed if unpack_meta(snapshot[k])[4] <= now}
    if expired:
        snapshot = {k: b for k, b in snapshot.items() if k not in expired}
    return records.encode_snapshot(list(snapshot.items()), ITEM_FORMAT, next_cas, len(timed) - len(expired))


@dataclass
class Loaded:
    """The item table a data file replays to: the items in LRU order (oldest
    first), the next cas to hand out, and a delayed ``flush_all`` still due
    (0: none)."""

    items: dict[bytes, bytes]
    next_cas: int
    flush_at: int


#: Seconds between two log lines of a replay's progress, at most.
PROGRESS_INTERVAL = 2.0


class ReplayProgress:
    """What start-up says while it replays a data file (the port stays closed
    meanwhile): a line as it begins, then a line at most every ``interval``
    seconds with the bytes read of the file's size, the items loaded so far
    and the rate, and a last line with the items, records, time and rate.

    The replay calls it once per :data:`~memcachedlite.storage.datafile.PROGRESS_STEP`
    bytes, never per record, so the cost is one look at ``clock`` per step.
    """

    def __init__(
        self,
        path: str,
        size: int,
        interval: float = PROGRESS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        created: bool = False,
    ) -> None:
        self.path = path
        self.size = size
        self.interval = interval
        self.clock = clock
        self.started = self.last = clock()
        #: a file start-up has just made holds no item: one line says so, instead of a replay's
        self.created = created
        if created:
            logger.info("created %s, a new data file", path)
        else:
            logger.info("replaying %s (%s); the port opens once it is loaded", path, _bytes(size))

    def __call__(self, offset: int, items: int) -> None:
        now = self.clock()
        if now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.started
        logger.info(
            "replaying %s: %s of %s (%d%%), %s items%s",
            self.path,
            _bytes(offset),
            _bytes(self.size),
            100 * offset // max(self.size, 1),
            f"{items:,}",
            f", {_bytes(round(offset / elapsed))}/s" if elapsed > 0 else "",
        )

    def done(self, items: int, records: int) -> None:
        if self.created:
            return
        elapsed = self.clock() - self.started
        logger.info(
            "loaded %s from %s (%s, %s) in %s%s",
            _plural(items, "item"),
            self.path,
            _plural(records, "record"),
            _bytes(self.size),
            f"{elapsed:.1f} s" if elapsed >= 1 else f"{elapsed * 1000:.0f} ms",
            f" ({_count(items / elapsed)} items/s)" if items and elapsed > 0 else "",
        )


def _plural(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def _bytes(n: int) -> str:
    """``n`` bytes as a person reads them: 58 B, 9.5 MB, 412 MB, 1.2 GB (decimal units, as disks are sold)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n / scale:.0f} {unit}"
    return f"{n} B"


def _count(n: float) -> str:
    """A rate of items: 1.5M, 950k, 120."""
    if n >= 10**6:
        return f"{n / 10**6:.1f}M"
    return f"{n / 10**3:.0f}k" if n >= 10**3 else f"{n:.0f}"


def _bulk_items(
    path: str, kind: str, item_format: int, pairs: Iterable[tuple[bytes, bytes]], expiring: int
) -> tuple[Iterable, int]:
    """The items of a snapshot or ``sets`` record in today's layout, and how
    many have an expiry: as they are, or upgraded from an older one
    (:func:`~memcachedlite.storage.items.upgrade`, checked as the record
    parser checks today's)."""
    if item_format == ITEM_FORMAT:
        return pairs, expiring
    if item_format == 1:
        try:
            upgraded = [(key, upgrade(key, blob, 1)) for key, blob in pairs]
            blobs = [blob for _, blob in upgraded]
            return upgraded, bulk_expiring(blobs, min(map(len, blobs), default=0), expiring)
        except (ValueError, struct.error):
            raise CorruptLogError(path, 0, f"{kind} holding an item not in item format 1") from None
    raise CorruptLogError(path, 0, f"{kind} of unknown item format {item_format}")


def replay(log: DataLog, now: int, slabs: Slabs, progress: Optional[ReplayProgress] = None) -> Loaded:
    """Read ``log``'s data file into a new item table as of ``now``, each
    item in the class ``slabs`` gives it, saying how it goes (``progress``:
    a :class:`ReplayProgress` of the file by default).

    Items already expired at ``now`` are left out; what a record cannot
    express by itself (a delayed flush, the next cas) comes back in the
    result for the store to take over. Items of an older layout are
    upgraded with class 0: the store classifies every item it takes over.
    """
    if progress is None:
        progress = ReplayProgress(log.path, log.size, created=log.created)
    loaded, count = _replay(functools.partial(log.load, slabs=slabs, progress=progress), log.path, now, slabs)
    progress.done(len(loaded.items), count)
    return loaded


def replay_bytes(buf: bytes, path: str, now: int, slabs: Slabs | None = None) -> Loaded:
    """The item table the data file contents ``buf`` replay to as of ``now``
    (what a start-up on them would load, with the classes of ``slabs``, by
    default memcached's); the whole of ``buf`` must read
    (:class:`~memcachedlite.storage.records.BadRecord` otherwise)."""
    head = records.read_head(buf)
    if head is None:
        raise CorruptLogError(path, 0, "not a memcachedlite data file (bad header)")
    classes = slabs or Slabs()

    def load(items: dict, pack: Callable[..., bytes], apply: Callable[[tuple], None]) -> tuple[int, int, int]:
        return load_buffer(buf, head.start, items, pack, apply, classes)[0]

    return _replay(load, path, now, classes)[0]


def _replay(load: Callable[..., tuple[int, int, int]], path: str, now: int, slabs: Slabs) -> tuple[Loaded, int]:
    """The item table that ``load(items, pack, apply)`` fills as of ``now``,
    and how many records it read."""
    items: dict[bytes, bytes] = {}
    next_cas = [0]
    expiring = [0]
    flush_at = [0]

    def apply(record: tuple) -> None:
        kind = record[0]
        if kind == b"snapshot":  # written by compaction, at the head of the file
            _, item_format, cas, claimed, pairs = record
            pairs, expiring[0] = _bulk_items(path, "snapshot", item_format, pairs, claimed)
            items.update(pairs)
            next_cas[0] = max(next_cas[0], cas)
            return
        if kind == b"sets":  # a run of pipelined sets, in the snapshot's form
            _, item_format, cas, timed, pairs = record
            pairs, timed = _bulk_items(path, "sets record", item_format, pairs, timed)
            collections.deque(map(items.pop, map(itemgetter(0), pairs), repeat(None)), maxlen=0)  # to the young end
            items.update(pairs)
            next_cas[0] = max(next_cas[0], cas)
            expiring[0] += timed
            return
        expiring[0] += 1  # a record the fast path does not take may set an expiry
        if kind == b"flush_all":
            if record[1] <= now:
                items.clear()  # in place: the loader keeps filling this very dict
                flush_at[0] = 0
            else:
                flush_at[0] = record[1]
                expire_by(items, record[1])
            return
        if kind == b"next_cas":  # written by compaction
            next_cas[0] = max(next_cas[0], record[1])
            return
        kind, key, binary = records.record_key(kind, record[1])
        if kind == b"set":  # bset: the loader takes every plain set
            _, _, value, flags, exptime, cas = record
            items.pop(key, None)  # re-inserted at the young end, as the loader does
            size = memcached_size(len(key), len(value), flags)
            state = BINARY_KEY if binary else 0
            items[key] = make_item(bytes(value), flags, exptime, cas, now, state, slabs.of(size), size)
            next_cas[0] = max(next_cas[0], cas + 1)
        elif kind == b"delete":
            items.pop(key, None)
        elif kind == b"touch":
            old = items.get(key)
            if old is not None:
                items[key] = with_exptime(old, record[2])
        else:  # invalidate
            old = items.get(key)
            if old is not None:
                items[key] = with_state(old, item_state(old) | STALE, cas=record[2])
                next_cas[0] = max(next_cas[0], record[2] + 1)

    count, max_cas, timed = load(items, functools.partial(pack_meta, 0, now, 0), apply)
    if timed or expiring[0]:  # otherwise nothing loaded can have expired
        for key in [k for k, b in items.items() if 0 < item_exptime(b) <= now]:
            del items[key]
    return Loaded(items, max(max_cas + 1, next_cas[0], 1), flush_at[0] if flush_at[0] > now else 0), count
