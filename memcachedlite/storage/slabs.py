"""memcached's slab classes, worked out as memcached does, for the commands
that name them (``stats cachedump <class>``, ``slabs reassign``).

Memory here is Python's, not slabs; but a tool that asks for the items of
class 1 expects the small items memcached would have put there, so each item
is given the class its size would have in memcached (default growth factor
1.25, 48-byte chunks, 512 KiB largest chunk).
"""

from __future__ import annotations

import functools
from bisect import bisect_left

#: memcached's ``MAX_NUMBER_OF_SLAB_CLASSES``: class ids at or past it are illegal.
MAX_CLASSES = 64
_ITEM_HEADER = 48  # sizeof(item) on a 64-bit build
_CHUNK_SIZE = 48  # -n
_FACTOR = 1.25  # -f
_ALIGN = 8
_PAGE_SIZE = 1024 * 1024


@functools.lru_cache(maxsize=8)
def class_sizes(item_size_max: int) -> tuple[int, ...]:
    """Chunk size of each class, index = class id (index 0 is the page pool, 0)."""
    chunk_max = min(_PAGE_SIZE // 2, item_size_max)
    sizes = [0]
    size = _ITEM_HEADER + _CHUNK_SIZE
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


def item_class(key: bytes, value_length: int, flags: int, cas: bool, item_size_max: int) -> int:
    """The class memcached would store this item in.

    The item's size is memcached's: header, key and its NUL, value and its
    CRLF, 4 bytes of client flags when not 0, 8 of cas when cas is on. An
    item too big for the largest chunk is stored chunked, and its header
    (with one chunk header of 48 bytes) decides the class.
    """
    extra = (4 if flags else 0) + (8 if cas else 0)
    total = _ITEM_HEADER + len(key) + 1 + value_length + 2 + extra
    sizes = class_sizes(item_size_max)
    if total > sizes[-1]:
        total = _ITEM_HEADER + len(key) + 1 + extra + 48
    return min(bisect_left(sizes, total, 1), len(sizes) - 1)
