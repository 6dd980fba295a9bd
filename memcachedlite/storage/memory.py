"""The memory limit (memcached's ``-m``, and ``-M`` for refusing rather
than evicting): which items a store over its limit drops, oldest first, or
why it refuses a set; how what it drops is counted in the item's slab class
as memcached counts what it takes from the tail of an LRU; and changing the
limit at run time (``cache_memlimit``).

A base class of :class:`~memcachedlite.storage.store.Store`, over
:class:`~memcachedlite.storage.statistics.Statistics`: one more link of
the single chain of bases a class mypyc compiles may have. It works on the
item table and the counters the store keeps, under the store's lock, and
calls back into the store to drop an item (declared below as methods: see
:mod:`memcachedlite.storage.durability` for why not ``Callable``
attributes).
"""

from __future__ import annotations

from typing import Callable, Iterable, NoReturn

from ..errors import OutOfMemory
from .evictions import EvictionNotice
from .items import CLASS_OFFSET, item_size, unpack_meta
from .statistics import Statistics


class Memory(Statistics):
    """What the store does at its memory limit (see the module docstring)."""

    # the store's (see memcachedlite.storage.store); the item table is Durability's,
    # the counters and the limit Statistics'
    evict: bool
    evictions: EvictionNotice
    _clock: Callable[[], float]

    def _drop(self, key: bytes, blob: bytes) -> None:  # pragma: no cover
        """Take ``key`` out of the table, accounted (the store's)."""
        raise NotImplementedError

    def _remove(self, key: bytes, blob: bytes) -> None:  # pragma: no cover
        """Delete ``key``, logged and undoable (the store's)."""
        raise NotImplementedError

    def _unlink(self, key: bytes) -> None:  # pragma: no cover
        """Delete ``key`` if it is live, without counting a delete (the store's)."""
        raise NotImplementedError

    def _evict(self, victims: Iterable[bytes]) -> None:
        """Drop the items :meth:`_victims` chose (their deletes are logged
        already), counted in their classes as memcached counts what it takes
        from the tail of an LRU: an item already past its time as reclaimed,
        any other as evicted."""
        items = self._items
        now = int(self._clock())
        evicted = 0
        for victim in victims:
            blob = items[victim]
            self._remember(victim, blob)
            self._drop(victim, blob)
            evicted += self._count_evicted(blob, now)
        self.evictions.evicted(evicted, self.memory_limit)

    def _count_evicted(self, blob: bytes, now: int) -> int:
        """Count an item taken from the old end of the LRU order for room;
        returns 1 if that was an eviction (0: it was past its time anyway)."""
        counts = self.slabs.counts
        fetched, atime, _, _, exptime, _, cls, _ = unpack_meta(blob)
        if 0 < exptime <= now:  # past its time anyway
            counts["reclaimed"][cls] += 1
            if not fetched:
                counts["expired_unfetched"][cls] += 1
            return 0
        counts["evicted"][cls] += 1
        self.slabs.evicted_time[cls] = now - atime
        if exptime:
            counts["evicted_nonzero"][cls] += 1
        if not fetched:
            counts["evicted_unfetched"][cls] += 1
        return 1

    def _reclaim_flushed(self, want: int, most: int = -1) -> int:
        """Drop items an immediate ``flush_all`` ended, oldest first, until
        ``want`` bytes are freed or ``most`` items went (-1: no limit);
        returns how many went. Counted as memcached counts them when it
        takes them from the tails of its LRUs (for room, or in the
        background: they are the oldest items): ``reclaimed``, and
        ``expired_unfetched`` for one never read."""
        flushed = self._flushed
        counts = self.slabs.counts
        freed = dropped = 0
        while flushed and freed < want and dropped != most:
            key = next(iter(flushed))
            blob = flushed.pop(key)
            freed += item_size(key, blob)
            self._account(key, blob, -1)
            dropped += 1
            cls = blob[CLASS_OFFSET]
            counts["reclaimed"][cls] += 1
            if not blob[0]:  # never fetched
                counts["expired_unfetched"][cls] += 1
        return dropped

    def _victims(self, key: bytes, grow: int, unlink: bool, cls: int = 0) -> list[bytes]:
        """Least recently used keys to evict so that ``grow`` more bytes fit.

        Items a ``flush_all`` ended go first (they are past their time: not
        evictions), then the oldest live ones. A little more than needed (1%
        of the limit) goes at once, so that one walk from the old end of the
        table serves many stores. ``cls`` is the class of the item to store
        (a refusal counts in its ``outofmemory``).
        """
        if self._flushed:
            self._reclaim_flushed(self.bytes + grow - self.memory_limit + self.memory_limit // 100)
            if self.bytes + grow <= self.memory_limit:
                return []
        if not self.evict:
            self._out_of_memory(key, unlink, cls)
        need = self.bytes + grow - self.memory_limit
        want = need + self.memory_limit // 100
        items = self._items
        victims = []
        freed = 0
        for other in items:
            if freed >= want:
                break
            if other != key:
                victims.append(other)
                freed += item_size(other, items[other])
        if freed < need:
            self._out_of_memory(key, unlink, cls)
        return victims

    def _out_of_memory(self, key: bytes, unlink: bool, cls: int) -> NoReturn:
        """Refuse a set for lack of memory (``-M``), counted in
        ``store_no_memory`` and the ``outofmemory`` of the item's class. With
        ``unlink`` the old value of ``key`` goes too, as memcached does for a
        refused ``set`` (classic or binary) and ``ms``: readers must never
        get the value an update failed to replace."""
        self.counters["store_no_memory"] += 1
        self.slabs.counts["outofmemory"][cls] += 1
        if unlink:
            self._unlink(key)
        raise OutOfMemory()

    def set_memory_limit(self, limit: int) -> int:
        """Change the memory limit; returns how many items were evicted to fit it.

        With eviction on, least recently used items go (logged as deletes)
        until the items fit; with it off (``-M``) they stay and new items are
        refused until enough is deleted, as memcached's slabs do.
        """
        with self._lock:
            self.memory_limit = limit
            if self.bytes <= limit or not self.evict:
                return 0
            victims = self._victims(b"", 0, False)
            items = self._items
            now = self.now()
            evicted = 0
            for victim in victims:
                blob = items[victim]
                self._remove(victim, blob)
                evicted += self._count_evicted(blob, now)
            self.evictions.evicted(evicted, limit)
            return len(victims)
