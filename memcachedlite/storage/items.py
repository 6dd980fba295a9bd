"""The item layout: how one stored item is packed into a single bytes object,
its state bits, and the decoded :class:`Item` view handed to callers.

Items are kept as one bytes object each, laid out so that a ``get`` reply is
``b"VALUE " + key + item[META:]``::

    pack(fetched, atime, state, cas, exptime, flags, class, size)  b" <flags> <bytes>\r\n"  <value>  b"\r\n"

(``pack`` is the 31-byte big-endian struct ``>BIBQqIBI``: whether the item
was fetched, its last access time, the other state bits, cas, exptime,
client flags, then the slab class memcached would link it in and
memcached's size for it, see :mod:`memcachedlite.storage.slabs`). One
object per item instead of a tuple keeps memory close to memcached's and
makes reads a single concatenation; :class:`Item` is the decoded view handed
to callers. The fetched byte and the access time lead, big-endian, so that
one comparison of the first five bytes tells whether a read must refresh
them (see :meth:`memcachedlite.storage.store.Store._bump`); the class is one
byte at a fixed place, so that a hit is counted in its class with one
subscript.

The state bits are memcached's: whether the item was fetched since it was
stored, whether it was marked stale (meta delete with ``I``), whether a
client was already told it won the right to recache it, and whether its key
was given in base64. As in memcached, a read refreshes the last access time,
and moves the item to the young end of the LRU order, at most once a minute.
"""

from __future__ import annotations

import struct
from itertools import repeat
from operator import countOf, getitem, itemgetter
from typing import Final, Iterable, NamedTuple, Optional

# Module constants on the request path are ``Final`` here and in the other
# compiled modules: mypyc makes them C constants, not a module-dict lookup per use.

#: Bytes counted per item on top of key and value: the two objects' headers,
#: the item's metadata and its slot in the table, as measured on CPython 3.11.
ITEM_OVERHEAD: Final = 120

#: Item state bits (memcached's ITEM_FETCHED, and the meta protocol's stale
#: and win-token-sent marks).
FETCHED: Final = 1
STALE: Final = 2
WIN_SENT: Final = 4
#: The key was given in base64 (meta ``b``): the meta ``k`` flag answers in base64.
BINARY_KEY: Final = 8


class Item(NamedTuple):
    """One stored value. ``exptime`` is an absolute unix time, 0 for never;
    ``atime`` the unix time of the last access; ``state`` the bits above;
    ``cls`` and ``size`` memcached's slab class and size for it (see
    :func:`memcached_size`)."""

    value: bytes
    flags: int
    exptime: int
    cas: int
    atime: int = 0
    state: int = 0
    cls: int = 0
    size: int = 0

    @property
    def fetched(self) -> bool:
        return bool(self.state & FETCHED)

    @property
    def stale(self) -> bool:
        return bool(self.state & STALE)


_META: Final = struct.Struct(">BIBQqIBI")  # fetched, atime, state, cas, exptime, flags, class, size
#: The number of this layout in snapshot sections of the data file; change
#: it (and teach the loader the old one, see :func:`upgrade`) whenever the layout changes.
ITEM_FORMAT: Final = 2
META: Final = _META.size
pack_meta: Final = _META.pack
unpack_meta: Final = _META.unpack_from
STATE_OFFSET: Final = 5  # offset of the state byte (every bit but FETCHED, which has its own)
# where exptime lies, to test it for 0 without unpacking (two numbers, not a
# slice object: mypyc compiles a slice held in a constant into an integer index)
EXPTIME_AT: Final = 14
EXPTIME_END: Final = 22
CLASS_OFFSET: Final = 26  # the slab class: one byte, so that counting a hit in its class is one subscript
_SIZE: Final = struct.Struct(">I")
#: what a write needs of the item it replaces, in one call: its exptime, class and size
unpack_replaced: Final = struct.Struct(">14xq4xBI").unpack_from
#: format 1 had no class and size: its metadata ended with the flags
_META_V1: Final = struct.Struct(">BIBQqI")
NEVER_PACKED: Final = bytes(8)  # exptime 0, as packed
pack_recent: Final = struct.Struct(">BI").pack
#: A read refreshes an item's last access time and LRU place at most this
#: often (memcached's ITEM_UPDATE_INTERVAL), so hot items are not rebuilt.
ATIME_INTERVAL: Final = 60


#: memcached's item header (48 bytes), the key's NUL and the value's CRLF
SIZE_BASE: Final = 51


def memcached_size(key_length: int, value_length: int, flags: int) -> int:
    """memcached's size for an item (``ITEM_ntotal``, what its ``bytes`` and
    ``mem_requested`` add up) less the 8 bytes of its cas field: header, key
    and NUL, 4 bytes of client flags unless 0, value and CRLF. Without the cas
    field it does not depend on ``-C``; :class:`~memcachedlite.storage.slabs.Slabs`
    adds it back."""
    return SIZE_BASE + key_length + value_length + (4 if flags else 0)


def _header(state: int, atime: int, cas: int, exptime: int, flags: int, cls: int, size: int) -> bytes:
    return pack_meta(state & FETCHED, atime, state & ~FETCHED, cas, exptime, flags, cls, size)


#: The shortest item there is: the header, ``" 0 0\r\n"`` and an empty value's CRLF.
SHORTEST_ITEM: Final = META + 8


def bulk_expiring(blobs: list[bytes], shortest: int, claimed: int) -> int:
    """How many of ``blobs`` (the items of a snapshot section or a ``sets``
    record, ``shortest`` the length of the shortest) have an expiry, as far
    as start-up needs to know: ``claimed``, the record's own count, when it
    is not 0 (start-up then looks at every item's expiry anyway); otherwise
    counted, since a 0 would let start-up skip looking.

    Raises ValueError when one of them is not framed as an item: shorter
    than any item, or not ending with a line end. Start-up takes such items
    as they are, in bulk, so this is the check that every item it loads
    decodes. Both are C loops over the items, nothing per item in Python:
    about a tenth of the bulk load's time. The numbers in an item's text
    line (flags, length) are trusted as the checksum vouches for them;
    checking them costs as much as the load.
    """
    if blobs and (shortest < SHORTEST_ITEM or countOf(map(getitem, blobs, repeat(-1)), 10) != len(blobs)):
        raise ValueError("an item not in the item layout")
    if claimed:
        return claimed
    return len(blobs) - countOf(map(getitem, blobs, repeat(slice(EXPTIME_AT, EXPTIME_END))), NEVER_PACKED)


def make_item(
    value: bytes, flags: int, exptime: int, cas: int, atime: int = 0, state: int = 0, cls: int = 0, size: int = 0
) -> bytes:
    """The stored form of an item (see the module docstring)."""
    header = _header(state, atime, cas, exptime, flags, cls, size)
    return b"%b %d %d\r\n%b\r\n" % (header, flags, len(value), value)


def decode(blob: bytes) -> Item:
    fetched, atime, state, cas, exptime, flags, cls, size = unpack_meta(blob)
    return Item(item_value(blob), flags, exptime, cas, atime, state | fetched, cls, size)


def item_value(blob: bytes) -> bytes:
    """The value of a stored item: what lies between its text line and its
    final line end.

    An item the server wrote always has room for both line ends, but a
    crafted bulk record can hold one whose only line end is its last byte
    (the numbers of its text line are trusted, see docs/fuzzing.md): its
    value is then empty, as Python's slice makes it. The length is tested
    before slicing because mypyc 2.4 compiles a bytes slice whose start lies
    past its end into ``SystemError`` ("Negative size passed to
    PyBytes_FromStringAndSize"), not ``b""``.
    """
    start = blob.index(b"\n", META) + 1
    if start > len(blob) - 2:
        return b""
    return blob[start:-2]


def item_class_size(blob: bytes) -> tuple[int, int]:
    """The item's slab class and memcached's size for it."""
    return blob[CLASS_OFFSET], _SIZE.unpack_from(blob, CLASS_OFFSET + 1)[0]


def classes_and_sizes(blobs: Iterable[bytes]) -> tuple[bytes, list[int]]:
    """The classes and sizes of many items at once, by C loops (start-up
    counts every item it loaded in its class)."""
    blobs = list(blobs)
    classes = bytes(map(itemgetter(CLASS_OFFSET), blobs))
    return classes, list(map(itemgetter(0), map(_SIZE.unpack_from, blobs, repeat(CLASS_OFFSET + 1))))


def with_class(blob: bytes, cls: int, size: int) -> bytes:
    """``blob`` with another class and size (the store's classes changed)."""
    return blob[:CLASS_OFFSET] + bytes([cls]) + _SIZE.pack(size) + blob[META:]


def upgrade(key: bytes, blob: bytes, item_format: int) -> bytes:
    """An item of an older layout in this one, with its size worked out and
    class 0 (the store classifies every item it loads)."""
    if item_format != 1:
        raise ValueError(f"unknown item format {item_format}")
    _, _, _, _, _, flags = _META_V1.unpack_from(blob)
    start = blob.index(b"\n", _META_V1.size) + 1
    size = memcached_size(len(key), len(blob) - start - 2, flags)
    return blob[: _META_V1.size] + bytes([0]) + _SIZE.pack(size) + blob[_META_V1.size :]


def item_exptime(blob: bytes) -> int:
    return 0 if blob[EXPTIME_AT:EXPTIME_END] == NEVER_PACKED else unpack_meta(blob)[4]


def item_cas(blob: bytes) -> int:
    return unpack_meta(blob)[3]


def with_exptime(blob: bytes, exptime: int) -> bytes:
    fetched, atime, state, cas, _, flags, cls, size = unpack_meta(blob)
    return pack_meta(fetched, atime, state, cas, exptime, flags, cls, size) + blob[META:]


def with_state(blob: bytes, state: int, cas: Optional[int] = None) -> bytes:
    """``blob`` with new state bits (FETCHED included) and, if given, a new cas."""
    _, atime, _, old_cas, exptime, flags, cls, size = unpack_meta(blob)
    return _header(state, atime, old_cas if cas is None else cas, exptime, flags, cls, size) + blob[META:]


def item_state(blob: bytes) -> int:
    return blob[STATE_OFFSET] | blob[0]


def item_size(key: bytes, blob: bytes) -> int:
    """What an item really takes in this server's memory: the figure the
    memory limit is enforced on (``stats``: ``bytes_in_memory``)."""
    return len(key) + len(blob) + ITEM_OVERHEAD


def expire_by(items: dict[bytes, bytes], at: int) -> None:
    """Give every item of ``items`` that would outlive ``at`` the expiry
    ``at``: what a delayed ``flush_all`` does to the items stored before it
    falls due (in the table, and when a replay meets its record)."""
    for key, blob in list(items.items()):
        exptime = item_exptime(blob)
        if not exptime or exptime > at:
            items[key] = with_exptime(blob, at)
