"""The item table's life in the data file: replaying the file into a store's
table at start-up, and the snapshot section a compaction writes for the next
start-up to load in bulk.
"""

from __future__ import annotations

import collections
import functools
import logging
import struct
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Iterable

from ..errors import CorruptLogError
from . import records
from .items import (
    BINARY_KEY,
    EXPTIME_FIELD,
    ITEM_FORMAT,
    NEVER_PACKED,
    STALE,
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

if TYPE_CHECKING:  # pragma: no cover
    from .datafile import DataLog
    from .slabs import Slabs

logger = logging.getLogger(__name__)


def snapshot_section(snapshot: dict, next_cas: int, now: int) -> list[bytes]:
    """The snapshot section that recreates the live items of ``snapshot``:
    the items are written in their stored form, so start-up loads them
    in bulk (see :func:`memcachedlite.storage.datafile.encode_snapshot`)."""
    timed = [k for k, b in snapshot.items() if b[EXPTIME_FIELD] != NEVER_PACKED]
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


def _bulk_items(log: DataLog, kind: str, item_format: int, pairs: Iterable[tuple[bytes, bytes]]) -> Iterable:
    """The items of a snapshot or ``sets`` record in today's layout: as they
    are, or upgraded from an older one (:func:`~memcachedlite.storage.items.upgrade`)."""
    if item_format == ITEM_FORMAT:
        return pairs
    if item_format == 1:
        try:
            return [(key, upgrade(key, blob, 1)) for key, blob in pairs]
        except (ValueError, struct.error):
            raise CorruptLogError(log.path, 0, f"{kind} holding an item not in item format 1") from None
    raise CorruptLogError(log.path, 0, f"{kind} of unknown item format {item_format}")


def replay(log: DataLog, now: int, slabs: Slabs) -> Loaded:
    """Read ``log``'s data file into a new item table as of ``now``, each
    item in the class ``slabs`` gives it.

    Items already expired at ``now`` are left out; what a record cannot
    express by itself (a delayed flush, the next cas) comes back in the
    result for the store to take over. Items of an older layout are
    upgraded with class 0: the store classifies every item it takes over.
    """
    items: dict[bytes, bytes] = {}
    next_cas = [0]
    expiring = [0]
    flush_at = [0]

    def apply(record: tuple) -> None:
        kind = record[0]
        if kind == b"snapshot":  # written by compaction, at the head of the file
            _, item_format, cas, expiring[0], pairs = record
            items.update(_bulk_items(log, "snapshot", item_format, pairs))
            next_cas[0] = max(next_cas[0], cas)
            return
        if kind == b"sets":  # a run of pipelined sets, in the snapshot's form
            _, item_format, cas, timed, pairs = record
            pairs = _bulk_items(log, "sets record", item_format, pairs)
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

    count, max_cas, timed = log.load(items, functools.partial(pack_meta, 0, now, 0), apply, slabs)
    if timed or expiring[0]:  # otherwise nothing loaded can have expired
        for key in [k for k, b in items.items() if 0 < item_exptime(b) <= now]:
            del items[key]
    logger.info("loaded %d items from %s (%d records)", len(items), log.path, count)
    return Loaded(items, max(max_cas + 1, next_cas[0], 1), flush_at[0] if flush_at[0] > now else 0)
