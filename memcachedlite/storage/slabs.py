"""memcached's slab classes, and what each class holds, worked out as
memcached 1.6 would lay out the items this store holds.

Memory here is Python's, not slabs: the memory limit is enforced on what the
items really take (see :func:`memcachedlite.storage.items.item_size`). But
the tools that watch a memcached (``stats slabs``, ``stats items``, a
Prometheus exporter, ``stats cachedump <class>``) read per-class figures, so
each item carries the class memcached would have stored it in and
memcached's size for it (``ITEM_ntotal``, see
:func:`memcachedlite.storage.items.memcached_size`), and :class:`Slabs`
keeps per class:

- what describes behaviour, counted as memcached counts it: items linked,
  the bytes they request, hits, sets, deletes, incr/decr, cas, touches,
  evictions, reclaims, out-of-memory refusals;
- what describes memcached's allocator, computed as memcached would lay
  those items out (default growth factor 1.25, 48-byte chunks, 1 MiB pages,
  512 KiB largest chunk; an item past the largest chunk is chunked, its
  header in a small class and its data in chunks of the largest and a last,
  smaller one): chunks used, and pages as the most chunks the class ever
  held needed (memcached never hands a page back without slab rebalancing).
  The memory limit does not cap them: they are what memcached would have
  needed for these items.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from itertools import compress

#: memcached's ``MAX_NUMBER_OF_SLAB_CLASSES``: class ids at or past it are illegal.
MAX_CLASSES = 64
ITEM_HEADER = 48  # sizeof(item) on a 64-bit build
CHUNK_HEADER = 48  # sizeof(item_chunk), padded to 8
_CHUNK_SIZE = 48  # -n
_FACTOR = 1.25  # -f
_ALIGN = 8
PAGE_SIZE = 1024 * 1024  # memcached's slab_page_size
DEFAULT_ITEM_SIZE_MAX = 1024 * 1024
CAS_BYTES = 8  # the cas field memcached adds to each item unless started with -C

#: memcached's per-class command counters (``stats slabs``), in its order.
SLAB_COUNTERS = ("get_hits", "cmd_set", "delete_hits", "incr_hits", "decr_hits", "cas_hits", "cas_badval", "touch_hits")
#: memcached's per-class item counters (``stats items``) that this server counts.
ITEM_COUNTERS = (
    "evicted",
    "evicted_nonzero",
    "outofmemory",
    "reclaimed",
    "expired_unfetched",
    "evicted_unfetched",
    "crawler_reclaimed",
    "crawler_items_checked",
    "direct_reclaims",
)


@functools.lru_cache(maxsize=8)
def class_sizes(item_size_max: int) -> tuple[int, ...]:
    """Chunk size of each class, index = class id (index 0 is the page pool, 0)."""
    chunk_max = min(PAGE_SIZE // 2, item_size_max)
    sizes = [0]
    size = ITEM_HEADER + _CHUNK_SIZE
    while len(sizes) < MAX_CLASSES - 1 and size < chunk_max / _FACTOR:
        if size % _ALIGN:
            size += _ALIGN - size % _ALIGN
        sizes.append(size)
        size = int(size * _FACTOR)
    sizes.append(chunk_max)
    return tuple(sizes)


def largest_class(item_size_max: int) -> int:
    """memcached's ``power_largest``: the highest valid class id."""
    return len(class_sizes(item_size_max)) - 1


@functools.lru_cache(maxsize=8)
def _classes_by_size(item_size_max: int) -> bytes:
    """memcached's ``slabs_clsid`` as a table: the class of every total size up
    to the largest chunk (one byte each, so that a lookup is one subscript)."""
    sizes = class_sizes(item_size_max)
    table = bytearray(1)  # size 0: no class
    for cls in range(1, len(sizes)):
        table += bytes([cls]) * (sizes[cls] - sizes[cls - 1])
    return bytes(table)


def item_class(key: bytes, value_length: int, flags: int, cas: bool, item_size_max: int) -> int:
    """The class memcached would link this item in (see :class:`Slabs`)."""
    size = ITEM_HEADER + len(key) + 1 + value_length + 2 + (4 if flags else 0) + (CAS_BYTES if cas else 0)
    sizes = class_sizes(item_size_max)
    return min(bisect_left(sizes, size, 1), len(sizes) - 1)


class Slabs:
    """memcached's slab classes for one item size limit and cas setting, and
    what each class holds (see the module docstring).

    Sizes given to it are :func:`~memcachedlite.storage.items.memcached_size`,
    memcached's ``ITEM_ntotal`` less the cas field, so that an item's stored
    size does not depend on ``-C``; :attr:`cas_bytes` adds it back. The
    store keeps these lists up to date as it links and unlinks items, on its
    hot paths inline (a list subscript each), elsewhere through
    :meth:`link` and :meth:`unlink`. Its lock guards them.
    """

    def __init__(self, item_size_max: int = DEFAULT_ITEM_SIZE_MAX, cas: bool = True) -> None:
        self.item_size_max = item_size_max
        self.sizes = class_sizes(item_size_max)
        self.largest = len(self.sizes) - 1
        self.chunk_max = self.sizes[-1]
        #: chunks per page of each class (0 past the largest)
        self.per_page = tuple(PAGE_SIZE // size if size else 0 for size in self.sizes) + (0,) * (
            MAX_CLASSES - len(self.sizes)
        )
        self.cas_bytes = CAS_BYTES if cas else 0
        #: the class of each size (less the cas field) up to :attr:`chunk_limit`
        self.table = _classes_by_size(item_size_max)[self.cas_bytes :]
        #: items of a larger size are chunked
        self.chunk_limit = len(self.table) - 1
        n = MAX_CLASSES
        #: items linked in each class (memcached's ``number``)
        self.items = [0] * n
        #: the sizes of those items, less their cas fields (``mem_requested``)
        self.requested = [0] * n
        #: chunks of chunked items in each class, less their entries in the
        #: largest class's LRU, which take no chunk there: used = items + this
        self.extra_chunks = [0] * n
        #: pages each class needed at most
        self.pages = [0] * n
        #: the chunks a class's pages hold, less its extra chunks: an item past it needs a page
        self.room = [0] * n
        #: memcached's per-class counters, by name (:data:`SLAB_COUNTERS`, :data:`ITEM_COUNTERS`)
        self.counts = {name: [0] * n for name in SLAB_COUNTERS + ITEM_COUNTERS}
        self.get_hits = self.counts["get_hits"]
        self.cmd_set = self.counts["cmd_set"]
        #: seconds between its last access and its eviction, for the last item evicted from each class
        self.evicted_time = [0] * n

    def of(self, size: int) -> int:
        """The class memcached links an item of this size in."""
        return self.table[size] if size <= self.chunk_limit else self.largest

    def chunk_classes(self, size: int, key_length: int, flags: int) -> list[int]:
        """The classes of the chunks a chunked item takes: its header's, then
        its data's (memcached's ``do_item_alloc`` and ``do_item_alloc_chunk``)."""
        suffix = 4 if flags else 0
        header = key_length + 1 + suffix + ITEM_HEADER + CHUNK_HEADER + self.cas_bytes
        classes = [self.of(header - self.cas_bytes)]
        remain = size - ITEM_HEADER - 1 - key_length - suffix  # the value and its CRLF
        full = self.chunk_max - CHUNK_HEADER
        whole, last = divmod(remain, full)
        classes += [self.largest] * whole
        if last:
            classes.append(self.of(last + CHUNK_HEADER - self.cas_bytes))
        return classes

    def classes_of(self, sizes: list[int]) -> bytes | None:
        """The classes of many sizes at once (C loops), or None if one of
        them is chunked (then each needs :meth:`link`)."""
        if sizes and max(sizes) > self.chunk_limit:
            return None
        return bytes(map(self.table.__getitem__, sizes))

    def link_many(self, classes: bytes, sizes: list[int]) -> None:
        """:meth:`link` for items of these classes and sizes (none chunked), by C loops."""
        for cls in set(classes):
            self.items[cls] += classes.count(cls)
            self.requested[cls] += sum(compress(sizes, map(cls.__eq__, classes)))
            if self.items[cls] > self.room[cls]:
                self.grow(cls)

    def link(self, cls: int, size: int, key_length: int, flags: int) -> None:
        """Count an item linked in ``cls`` (the store's slow paths; its hot ones inline this)."""
        items = self.items[cls] + 1
        self.items[cls] = items
        self.requested[cls] += size
        if size > self.chunk_limit:
            self._chunked(size, key_length, flags, 1)
        elif items > self.room[cls]:
            self.grow(cls)

    def unlink(self, cls: int, size: int, key_length: int, flags: int) -> None:
        """Count an item unlinked from ``cls``."""
        self.items[cls] -= 1
        self.requested[cls] -= size
        if size > self.chunk_limit:
            self._chunked(size, key_length, flags, -1)

    def _chunked(self, size: int, key_length: int, flags: int, sign: int) -> None:
        extra = self.extra_chunks
        extra[self.largest] -= sign  # its LRU entry takes no chunk of the largest class
        classes = self.chunk_classes(size, key_length, flags)
        for cls in classes:
            extra[cls] += sign
        for cls in {*classes, self.largest}:
            self.room[cls] = self.pages[cls] * self.per_page[cls] - extra[cls]
            if self.items[cls] > self.room[cls]:
                self.grow(cls)

    def grow(self, cls: int) -> None:
        """Give ``cls`` the pages its chunks now need (memcached allocates a
        page when a class's free list is empty, and keeps it)."""
        used = self.items[cls] + self.extra_chunks[cls]
        per_page = self.per_page[cls]
        self.pages[cls] = max(self.pages[cls], -(-used // per_page))
        self.room[cls] = self.pages[cls] * per_page - self.extra_chunks[cls]

    def clear_items(self) -> None:
        """Every item is gone at once (an immediate ``flush_all`` took the
        table): the classes keep their pages, as memcached's do."""
        n = MAX_CLASSES
        self.items[:] = [0] * n
        self.requested[:] = [0] * n
        self.extra_chunks[:] = [0] * n
        self.room[:] = [pages * per for pages, per in zip(self.pages, self.per_page, strict=True)]

    def reset_counts(self) -> None:
        """``stats reset``: memcached zeroes its per-class counters, not what the classes hold."""
        for counts in self.counts.values():
            counts[:] = [0] * MAX_CLASSES
        self.evicted_time[:] = [0] * MAX_CLASSES

    def used_chunks(self, cls: int) -> int:
        return self.items[cls] + self.extra_chunks[cls]

    def mem_requested(self, cls: int) -> int:
        """memcached's ``mem_requested``: the ``ITEM_ntotal`` of the items linked in ``cls``."""
        return self.requested[cls] + self.cas_bytes * self.items[cls]

    def active(self) -> list[int]:
        """The classes that have a page (those ``stats slabs`` lists), in order."""
        return [cls for cls in range(1, self.largest + 1) if self.pages[cls]]


#: memcached 1.6's ``stats items`` keys for each class, in its order (with its
#: LRU maintainer, as it runs by default).
ITEMS_KEYS = (
    "number",
    "number_hot",
    "number_warm",
    "number_cold",
    "age_hot",
    "age_warm",
    "age",
    "mem_requested",
    "evicted",
    "evicted_nonzero",
    "evicted_time",
    "outofmemory",
    "tailrepairs",
    "reclaimed",
    "expired_unfetched",
    "evicted_unfetched",
    "evicted_active",
    "crawler_reclaimed",
    "crawler_items_checked",
    "lrutail_reflocked",
    "moves_to_cold",
    "moves_to_warm",
    "moves_within_lru",
    "direct_reclaims",
    "hits_to_hot",
    "hits_to_warm",
    "hits_to_cold",
    "hits_to_temp",
)
#: memcached 1.6's ``stats slabs`` keys for each class, in its order.
SLABS_KEYS = (
    "chunk_size",
    "chunks_per_page",
    "total_pages",
    "total_chunks",
    "used_chunks",
    "free_chunks",
    "free_chunks_end",
) + SLAB_COUNTERS


def items_report(slabs: Slabs, ages: dict[int, int]) -> list[tuple[str, int]]:
    """``stats items``: memcached's keys for every class holding items, with
    the seconds since the oldest item of each was last accessed (``ages``).

    There is one LRU order here, not memcached's hot, warm and cold
    segments: every item counts as cold, and every hit as a hit in cold.
    What only memcached's LRU maintainer does (moving items between
    segments, repairing tails) stays 0.
    """
    lines: list[tuple[str, int]] = []
    counts = slabs.counts
    for cls in range(1, slabs.largest + 1):
        number = slabs.items[cls]
        if not number:
            continue
        figures = dict.fromkeys(ITEMS_KEYS, 0)
        figures.update({name: counts[name][cls] for name in ITEM_COUNTERS})
        figures["number"] = figures["number_cold"] = number
        figures["age"] = ages.get(cls, 0)
        figures["mem_requested"] = slabs.mem_requested(cls)
        figures["evicted_time"] = slabs.evicted_time[cls]
        figures["hits_to_cold"] = counts["get_hits"][cls]
        lines += [(f"items:{cls}:{name}", figures[name]) for name in ITEMS_KEYS]
    return lines


def slabs_report(slabs: Slabs) -> list[tuple[str, int]]:
    """``stats slabs``: memcached's keys for every class that has a page,
    then ``active_slabs`` and ``total_malloced`` (its pages' bytes)."""
    lines: list[tuple[str, int]] = []
    active = slabs.active()
    for cls in active:
        per_page = slabs.per_page[cls]
        total = slabs.pages[cls] * per_page
        used = slabs.used_chunks(cls)
        figures = {
            "chunk_size": slabs.sizes[cls],
            "chunks_per_page": per_page,
            "total_pages": slabs.pages[cls],
            "total_chunks": total,
            "used_chunks": used,
            "free_chunks": total - used,
            "free_chunks_end": 0,  # memcached: "Stat is dead, but displaying zero instead of removing it"
        }
        figures.update({name: slabs.counts[name][cls] for name in SLAB_COUNTERS})
        lines += [(f"{cls}:{name}", figures[name]) for name in SLABS_KEYS]
    lines.append(("active_slabs", len(active)))
    lines.append(("total_malloced", sum(slabs.pages) * PAGE_SIZE))
    return lines
