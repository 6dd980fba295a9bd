"""The store's statistics: its own counters, the sums of the per-class
ones, ``stats items``/``stats slabs``/``stats sizes``, and ``stats reset``.

A base class of :class:`~memcachedlite.storage.store.Store` (through
:class:`~memcachedlite.storage.memory.Memory`), over
:class:`~memcachedlite.storage.durability.Durability` (whose state of the
data file it shows): it reads the item table and the slab classes the store
keeps, under the store's lock, and changes nothing but counters. One chain
of bases, not a third base beside Durability: a class mypyc compiles has a
single chain of compiled bases.
"""

from __future__ import annotations

from typing import Optional

from .durability import Durability
from .items import CLASS_OFFSET, META, unpack_meta
from .slabs import Slabs, items_report, slabs_report

#: The store's counters that are not counted per slab class (those are in
#: :class:`~memcachedlite.storage.slabs.Slabs`, and ``stats`` shows their sums).
COUNTERS = [
    "cmd_get",
    "cmd_touch",
    "cmd_flush",
    "cmd_meta",
    "get_misses",
    "get_expired",
    "get_flushed",
    "delete_misses",
    "incr_misses",
    "decr_misses",
    "cas_misses",
    "touch_misses",
    "total_items",
    "store_too_large",
    "store_no_memory",
    "lru_crawler_starts",
]
#: What ``stats`` calls the sums of per-class counters, when not their own names.
_SUMS = {"evicted": "evictions"}


class Statistics(Durability):
    """What ``stats`` and its groups read of the store (see the module docstring)."""

    # the store's (see memcachedlite.storage.store); the data file's state is Durability's
    counters: dict[str, int]
    slabs: Slabs
    memory_limit: int
    sizes_from: Optional[int]

    def now(self) -> int:  # pragma: no cover  (the store's clock)
        raise NotImplementedError

    def count(self, counter: str, n: int = 1) -> None:
        """Add to one of the store's counters (for events seen outside the store)."""
        with self._lock:
            self.counters[counter] += n

    def count_in_class(self, counter: str, cls: int) -> None:
        """Add one to a per-class counter (``get_hits``...) of slab class ``cls``."""
        with self._lock:
            self.slabs.counts[counter][cls] += 1

    def stats(self) -> dict[str, int]:
        """The counters ``stats`` shows: the store's own, the sums of the
        per-class ones (``get_hits``, ``cmd_set``, ``evictions``...), and
        ``bytes`` as memcached defines it (the ``ITEM_ntotal`` of the items
        it holds) beside ``bytes_in_memory``, what they really take here."""
        with self._lock:
            out = dict(self.counters)
            slabs = self.slabs
            for name, counts in slabs.counts.items():
                out[_SUMS.get(name, name)] = sum(counts)
            out["curr_items"] = len(self._items) + len(self._flushed)
            out["bytes"] = sum(slabs.requested) + slabs.cas_bytes * sum(slabs.items)
            out["bytes_in_memory"] = self.bytes
            out["limit_maxbytes"] = self.memory_limit
            out["compactions"] = self.compactions
            out["compaction_failures"] = self.compaction_failures
            out["compacting"] = int(self.compacting)
            out["data_file_bytes"] = self.log.size if self.log is not None else 0
            out["data_file_writable"] = int(self._writable)
            out["data_file_errors"] = self.data_file_errors
            return out

    def class_stats(self, group: str) -> list[tuple[str, int]]:
        """``stats items`` (``group`` "items") or ``stats slabs``: memcached's
        per-class lines (see :mod:`memcachedlite.storage.slabs`)."""
        with self._lock:
            if group == "items":
                return items_report(self.slabs, self._ages())
            return slabs_report(self.slabs)

    def _ages(self) -> dict[int, int]:
        """Seconds since the oldest item of each class was last accessed
        (memcached's ``age``: the tail of the class's LRU). The walk from the
        old end stops once every class holding items has been seen."""
        now = self.now()
        ages: dict[int, int] = {}
        wanted = sum(1 for number in self.slabs.items if number)
        for table in (self._flushed, self._items):  # flushed items are the oldest
            for blob in table.values():
                cls = blob[CLASS_OFFSET]
                if cls not in ages:
                    ages[cls] = max(now - int.from_bytes(blob[1:5], "big"), 0)
                    if len(ages) == wanted:
                        return ages
        return ages

    def enable_sizes(self) -> None:
        """``stats sizes_enable``: from now on ``stats sizes`` counts the items
        stored after this (memcached takes a cas value to tell them apart)."""
        with self._lock:
            if self.sizes_from is None:
                self.sizes_from = self._next_cas
                self._next_cas += 1

    def size_histogram(self) -> dict[int, int]:
        """``stats sizes``: how many items stored since ``stats sizes_enable``
        have each memcached size, rounded up to 32 bytes (memcached's histogram)."""
        with self._lock:
            first = self.sizes_from or 0
            extra = self.slabs.cas_bytes
            buckets: dict[int, int] = {}
            for table in (self._flushed, self._items):
                for blob in table.values():
                    if unpack_meta(blob)[3] >= first:
                        size = int.from_bytes(blob[CLASS_OFFSET + 1 : META], "big") + extra
                        bucket = -(-size // 32) * 32
                        buckets[bucket] = buckets.get(bucket, 0) + 1
            return dict(sorted(buckets.items()))

    def reset_stats(self) -> None:
        """``stats reset``: zero what memcached zeroes (its counters,
        ``total_items`` included, and its per-class ones), not what the
        store holds."""
        with self._lock:
            self.counters = dict.fromkeys(COUNTERS, 0)
            self.slabs.reset_counts()
