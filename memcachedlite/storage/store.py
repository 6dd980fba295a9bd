"""The shared store: the item table in memory, expiry, LRU order and
counters, every change written to the data file first (how it reaches the
file is :mod:`memcachedlite.storage.durability`'s business; what the memory
limit drops or refuses, :mod:`memcachedlite.storage.memory`'s; pipelined
sets and atomic sequences, :mod:`memcachedlite.storage.batches`'; reclaiming
expired items in the background, :mod:`memcachedlite.storage.expiry`'s).

Every mutation takes the store's lock, works out its effect, appends that
effect to the data file and only then changes memory (write-ahead): a change
that cannot be logged is refused with :class:`~memcachedlite.errors.LogWriteError`
and memory is left as it was.

Items are kept in the stored form of :mod:`memcachedlite.storage.items`, one bytes
object each. As in memcached, a read refreshes an item's last access time,
and moves the item to the young end of the LRU order, at most once a minute.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from enum import IntEnum
from itertools import islice
from typing import Callable, Final, Iterable, NamedTuple, Optional, Union

from ..buildinfo import refuse_python_subclass
from ..errors import LogWriteError, NonNumeric
from . import datafile, records
from .batches import Batches
from .durability import DEFAULT_COMPACT_MIN_SIZE
from .evictions import EvictionNotice
from .expiry import Expiry
from .items import (
    ATIME_INTERVAL,
    BINARY_KEY,
    CLASS_OFFSET,
    EXPTIME_AT,
    EXPTIME_END,
    FETCHED,
    ITEM_OVERHEAD,
    NEVER_PACKED,
    SIZE_BASE,
    STALE,
    STATE_OFFSET,
    WIN_SENT,
    Item,
    classes_and_sizes,
    decode,
    expire_by,
    item_cas,
    item_class_size,
    item_exptime,
    item_size,
    item_state,
    memcached_size,
    pack_meta,
    pack_recent,
    unpack_meta,
    unpack_replaced,
    with_class,
    with_exptime,
    with_state,
)
from .numbers import absolute_exptime, apply_delta, parse_counter
from .prefixes import PrefixStats
from .replay import Loaded, replay
from .slabs import DEFAULT_ITEM_SIZE_MAX, Slabs
from .statistics import COUNTERS

logger = logging.getLogger(__name__)

DEFAULT_MEMORY_LIMIT: Final = 64 * 1024 * 1024
#: The expiry an item already expired is stored with (a negative exptime):
#: a second long past, as memcached makes it the second after it started.
PAST: Final = 1


class Mode(IntEnum):
    """What a storage command does with what its key holds (memcached's store modes)."""

    SET = 0
    ADD = 1
    REPLACE = 2
    APPEND = 3
    PREPEND = 4
    CAS = 5


class Outcome(IntEnum):
    """What a change did; only ``NOT_FOUND`` is false."""

    NOT_FOUND = 0
    STORED = 1
    DELETED = 2
    NOT_STORED = 3
    EXISTS = 4


#: What a storage command writes: (value, flags, absolute exptime, state bits).
Write = tuple[bytes, int, int, int]
#: What a storage command writes, or why it does not.
Plan = Union[Write, Outcome]


class Arith(NamedTuple):
    """What :meth:`Store.arith` did: its outcome, and when ``STORED`` the
    number, the item's new cas and absolute exptime, and whether the counter
    was created."""

    outcome: Outcome
    number: int = 0
    cas: int = 0
    exptime: int = 0
    created: bool = False


class Store(Expiry, Batches):
    """The key-value data shared by every connection of a server.

    ``path=None`` keeps everything in memory only (for tests and embedding);
    otherwise the data file at ``path`` is replayed first and then appended to.
    How a change reaches the file, and when it may be shown, is the business
    of its base class Durability (:mod:`memcachedlite.storage.durability`).
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        refuse_python_subclass(cls, Store)  # on the compiled build, with a clear message
        super().__init_subclass__(**kwargs)

    def __init__(
        self,
        path: Union[str, os.PathLike, None] = None,
        *,
        fsync: str = "everysec",
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        evict: bool = True,
        compact_min_size: int = DEFAULT_COMPACT_MIN_SIZE,
        clock: Callable[[], float] = time.time,
        item_size_max: int = DEFAULT_ITEM_SIZE_MAX,
    ) -> None:
        # The attributes a base class declares (_items, _flushed, log, sizes_from)
        # are not annotated again here: mypyc would count them twice in the
        # garbage collector's walk of a compiled store, which then takes the
        # data file (whose failure callback points back at the store) for
        # referenced from outside, and never frees a closed store.
        # Insertion order is the LRU order: a write or a bump re-inserts at the end.
        self._items = {}
        #: the items an immediate flush_all ended, until they are read (get_flushed),
        #: replaced or reclaimed, as memcached keeps them (never a key of _items)
        self._flushed = {}
        #: memcached's slab classes for -I and -C, and what each holds (see memcachedlite.storage.slabs)
        self.slabs = Slabs(item_size_max)
        self._lock = threading.RLock()
        self._below_at = -1  # the second _below was worked out for; see _bump_below
        self._below = b""
        self._clock = clock
        self.memory_limit = memory_limit
        self.evict = evict
        #: warns when the memory limit evicts items (never silently)
        self.evictions = EvictionNotice(clock)
        #: False as memcached's -C: every item's cas is 0 (see disable_cas).
        self.cas_enabled = True
        #: ``stats detail``: counted by the protocol commands while enabled.
        self.prefixes = PrefixStats()
        #: ``stats sizes``: None while off, else the first cas it counts (see enable_sizes)
        self.sizes_from = None
        self.bytes = 0
        self.flush_at = 0  # pending delayed flush_all, absolute time
        self._next_cas = 1
        self._in_atomic = False
        #: the highest cas a client chose (meta E): a snapshot's next cas is past it too
        self._max_given_cas = 0
        self.counters = dict.fromkeys(COUNTERS, 0)
        #: why every change is refused (see refuse_writes), or None
        self._refusal = None
        self.compact_min_size = compact_min_size
        self._closing = threading.Event()
        self._init_expiry()
        self._init_durability()
        self.log = None
        if path is not None:
            self.log = datafile.DataLog(path, fsync=fsync)
            try:
                self._install(replay(self.log, self.now(), self.slabs))
            except BaseException:
                self.log.close()
                raise
            self._start_durability()

    def _install(self, loaded: Loaded) -> None:
        """Take over the item table that replaying the data file gave."""
        items = self._items = loaded.items
        self.bytes = sum(map(len, items)) + sum(map(len, items.values())) + ITEM_OVERHEAD * len(items)
        self.flush_at = loaded.flush_at
        self._next_cas = loaded.next_cas
        self._classify(items)

    def _classify(self, items: dict[bytes, bytes]) -> None:
        """Give each item of ``items`` its class under this store's slab
        classes (an item's class is worked out from its size, which does not
        depend on them) and count it in its class. For a table just
        loaded, or one whose classes changed (-C).

        Start-up time matters: when every item already carries the class its
        size gives and none is chunked (a file this server wrote, with the
        same -I and -C), they are counted by C loops, a slice at a time;
        otherwise one by one."""
        slabs = self.slabs
        values = iter(items.values())
        counted: list[tuple[bytes, list[int]]] = []
        while True:
            classes, sizes = classes_and_sizes(islice(values, 65536))
            if not sizes:
                break
            if slabs.classes_of(sizes) != classes:
                return self._classify_each(items)
            counted.append((classes, sizes))
        for classes, sizes in counted:
            slabs.link_many(classes, sizes)

    def _classify_each(self, items: dict[bytes, bytes]) -> None:
        """:meth:`_classify`, an item at a time."""
        slabs = self.slabs
        of = slabs.of
        link = slabs.link
        limit = slabs.chunk_limit
        for key, blob in items.items():
            cls, size = item_class_size(blob)
            right = of(size)
            if right != cls:
                items[key] = blob = with_class(blob, right, size)  # a value, not a key: the walk goes on
            link(right, size, len(key), unpack_meta(blob)[5] if size > limit else 0)

    def _recount(self) -> None:
        """Count every item in its class anew (a batch put whole tables back)."""
        self.slabs.clear_items()
        self._classify(self._items)
        self._classify(self._flushed)

    def _count_in_class(self, key: bytes, blob: bytes, sign: int) -> None:
        """Count ``blob`` in (1) or out of (-1) its slab class (the slow
        paths; the hot ones spell this out)."""
        cls, size = item_class_size(blob)
        flags = unpack_meta(blob)[5] if size > self.slabs.chunk_limit else 0
        if sign > 0:
            self.slabs.link(cls, size, len(key), flags)
        else:
            self.slabs.unlink(cls, size, len(key), flags)

    def _account(self, key: bytes, blob: bytes, sign: int) -> None:
        """Count ``blob`` in or out of its class and of the memory used."""
        self._count_in_class(key, blob, sign)
        self.bytes += sign * item_size(key, blob)

    # -- time ---------------------------------------------------------------

    def now(self) -> int:
        return int(self._clock())

    def absolute(self, exptime: int, now: Optional[int] = None) -> int:
        """memcached's exptime rule: 0 never expires, up to 30 days is
        relative, larger is a unix time, negative is already expired."""
        return absolute_exptime(exptime, self.now() if now is None else now) if exptime else 0

    # -- reading ------------------------------------------------------------

    def _live(self, key: bytes, now: int, count: bool = True) -> Optional[bytes]:
        """The stored item under ``key`` unless it has expired or a
        ``flush_all`` ended it: then it is dropped, and counted as memcached
        counts such a find (``get_expired``, ``get_flushed``), unless not ``count``."""
        if self._dirty:  # fsync=always, with changes not durable yet
            self._note_read(key)
        blob = self._items.get(key)
        if blob is None:
            if self._flushed and key in self._flushed:
                self._drop_flushed(key, count)
            return None
        if blob[EXPTIME_AT:EXPTIME_END] != NEVER_PACKED and 0 < unpack_meta(blob)[4] <= now:
            self._drop_gone(key, blob, now, count)
            return None
        return blob

    def _drop_gone(self, key: bytes, blob: bytes, now: int, count: bool) -> None:
        """Drop an item found past its time. A lookup that finds one is
        counted as memcached's item lookup counts it, whatever the command:
        ``get_flushed`` when a delayed ``flush_all`` ended the item,
        ``get_expired`` when its own expiry did."""
        self._drop(key, blob)
        if count:
            at = self.flush_at
            self.counters["get_flushed" if 0 < at <= now and unpack_meta(blob)[4] <= at else "get_expired"] += 1

    def _drop_flushed(self, key: bytes, count: bool) -> None:
        """Drop the item an immediate ``flush_all`` ended, found by a lookup of ``key``."""
        blob = self._flushed.pop(key)  # not undone with a batch: it was gone for every reader already
        self._account(key, blob, -1)
        if count:
            self.counters["get_flushed"] += 1

    def _drop(self, key: bytes, blob: bytes) -> None:
        del self._items[key]
        self._account(key, blob, -1)

    def _bump(self, key: bytes, blob: bytes, now: int) -> None:
        """Record a read of ``key``: mark it fetched, make ``now`` its last
        access and move it to the young end of the LRU order.

        Readers call this only when the item was never fetched or its last
        access is over ``ATIME_INTERVAL`` old (see :meth:`_bump_below`), as
        memcached bumps an item at most once a minute. That keeps reads of hot
        keys from rebuilding and re-inserting them over and over.
        """
        items = self._items
        del items[key]
        items[key] = pack_recent(1, now) + blob[5:]  # the fetched byte and the access time lead

    def _bump_below(self, now: int) -> bytes:
        """Items that compare below this need a :meth:`_bump` when read:
        never fetched, or last read too long ago. (Five bytes, one past the
        last stale pair of fetched byte and access time: a stored item is
        longer, so ``blob < below`` tests its first five bytes with no slice.)
        Worked out once a second, not once a read."""
        if now != self._below_at:
            self._below_at = now
            self._below = pack_recent(1, max(now - ATIME_INTERVAL, 0) + 1)
        return self._below

    def get(self, key: bytes) -> Optional[Item]:
        """The live item under ``key``, counted as a get and refreshed in the
        LRU order, as :meth:`get_many` does for each key."""
        with self._lock:
            now = self.now()
            blob = self._live(key, now)
            counters = self.counters
            counters["cmd_get"] += 1
            if self.prefixes.enabled:
                self.prefixes.record_gets((key,), (blob,))
            if blob is None:
                counters["get_misses"] += 1
                return None
            self.slabs.get_hits[blob[CLASS_OFFSET]] += 1
            if blob < self._bump_below(now):
                self._bump(key, blob, now)
            return decode(blob)

    def get_many(self, keys: list[bytes]) -> list[Optional[bytes]]:
        """A retrieval of ``keys``, counted as memcached counts a multi-key
        ``get`` (``cmd_get``, hits, misses, ``get_expired``, ``get_flushed``,
        and each key in ``stats detail``), each hit marked fetched and
        refreshed in the LRU order: for each key, its item in the stored form
        of :mod:`memcachedlite.storage.items`, or None.

        The hot path of the classic and binary protocols' reads: items are
        handed out as stored, so the text protocol renders a hit with one slice.
        """
        with self._lock:
            now = int(self._clock())
            counters = self.counters
            # the dict's and the list's methods called directly, not through local
            # aliases: compiled, they are C primitives; interpreted, no slower (callgrind)
            items = self._items
            below = self._bump_below(now)
            found: list[Optional[bytes]] = []
            dirty = self._dirty
            flushed = self._flushed
            hits = self.slabs.get_hits
            misses = 0  # counted where they happen: found.count(None) compares every hit with None
            for key in keys:
                if dirty:  # fsync=always, with changes not durable yet
                    self._note_read(key)
                blob = items.get(key)
                if blob is not None:  # _live, spelled out for speed
                    if blob[EXPTIME_AT:EXPTIME_END] != NEVER_PACKED and 0 < unpack_meta(blob)[4] <= now:
                        self._drop_gone(key, blob, now, True)
                        blob = None
                        misses += 1
                    else:
                        if blob < below:
                            self._bump(key, blob, now)
                        # each hit counted in its class here: a C loop once
                        # compiled, where map and filter over ``found`` are generic calls
                        hits[blob[CLASS_OFFSET]] += 1
                else:
                    misses += 1
                    if flushed and key in flushed:
                        self._drop_flushed(key, True)
                found.append(blob)
            counters["cmd_get"] += len(keys)
            counters["get_misses"] += misses
            if self.prefixes.enabled:
                self.prefixes.record_gets(keys, found)
            return found

    def peek(self, key: bytes, count: bool = False) -> Optional[Item]:
        """The live item without counting the read or refreshing its LRU
        place; with ``count``, an expired or flushed item found is counted as
        memcached's lookups count it (``md``, ``me``)."""
        with self._lock:
            blob = self._live(key, self.now(), count)
            return None if blob is None else decode(blob)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[bytes]:
        with self._lock:
            now = self.now()
            return [k for k, b in self._items.items() if not 0 < item_exptime(b) <= now]

    # -- writing ------------------------------------------------------------

    def refuse_writes(self, reason: Optional[str]) -> None:
        """Refuse every change from now on, as when the data file cannot be
        written (a full disk), also for a store kept in memory only: each
        operation that may change data raises :class:`LogWriteError` with
        ``reason`` before it counts or touches anything; reads go on. None
        takes changes again. For tests of how clients cope
        (:meth:`memcachedlite.testing.Faults.fail_writes`)."""
        with self._lock:
            self._refusal = reason

    def _refuse(self) -> None:
        """Raise the refusal :meth:`refuse_writes` asked for (callers test ``_refusal`` first)."""
        raise LogWriteError(self._refusal or "")

    def _write(
        self,
        key: bytes,
        value: bytes,
        flags: int,
        exptime: int,
        cas: Optional[int] = None,
        state: int = 0,
        unlink: bool = False,
        in_place: bool = False,
        size: int = 0,
        cls: int = 0,
    ) -> int:
        """Log and apply a set of ``key``; the one path every store takes.

        ``exptime`` is already absolute: an item stored already expired is
        kept until a lookup finds it (``get_expired``) or the sweeper
        reclaims it, as memcached keeps it. ``cas`` overrides the next cas
        value (the meta protocol's ``E`` flag) and ``state`` gives the new
        item's state bits (a stale item is logged as its set and an
        invalidate). Items evicted to make room are logged as deletes in the
        same write; refused for lack of memory, ``unlink`` removes the old
        value too (see :meth:`_out_of_memory`). ``in_place``: memcached
        would change the item where it lies (an ``incr`` whose number still
        fits), so it keeps its class and size and counts in no
        ``total_items``. ``size`` and ``cls`` are memcached's size and class
        for the item if the caller worked them out (0: not yet). Returns the
        item's cas. Caller holds the lock.
        """
        now = int(self._clock())
        if self.flush_at:
            exptime = self._before_flush(exptime, now)
        old = self._items.get(key)
        old_cls = old_size = 0
        if old is not None:
            old_exptime, old_cls, old_size = unpack_replaced(old)
            if 0 < old_exptime <= now:  # memcached's store looks the key up first: counted
                self._drop_gone(key, old, now, True)
                old = None
        elif self._flushed and key in self._flushed:
            self._drop_flushed(key, True)
        expired = False
        if exptime:
            if exptime < 0:
                exptime = PAST  # "already expired": kept, as memcached keeps it, until found
            expired = exptime <= now
            self._may_expire = self._expiring_seen = True
        given = cas is not None
        if cas is None:
            cas = self._next_cas if self.cas_enabled else 0
        slabs = self.slabs
        if in_place and old is not None:
            cls, size = old_cls, old_size
        elif not cls:
            if not size:
                size = SIZE_BASE + len(key) + len(value) + (4 if flags else 0)  # memcached_size, spelled out
            cls = slabs.table[size] if size <= slabs.chunk_limit else slabs.largest
        # make_item, spelled out: this is the path of every set
        blob = b"%b %d %d\r\n%b\r\n" % (
            pack_meta(state & FETCHED, now, state & ~FETCHED, cas, exptime, flags, cls, size),
            flags,
            len(value),
            value,
        )
        grow = len(blob) - len(old) if old is not None else len(key) + len(blob) + ITEM_OVERHEAD
        victims: Iterable[bytes] = ()
        if self.bytes + grow > self.memory_limit:
            slabs.counts["direct_reclaims"][cls] += 1  # the writer makes room itself, as memcached's workers can
            victims = self._victims(key, grow, unlink, cls)
        if expired:
            record = self._expired_record(key, old, state, victims)
        elif state or victims:
            record = self._set_record(key, value, flags, exptime, cas, state, victims)
        else:
            record = records.set_record(key, value, flags, exptime, cas)
        if record:  # none for an expired item where there was none
            pending = self._pending
            if pending is not None and self._writable:
                pending.append(record)  # _append, spelled out: this is the path of every set
            else:
                self._append(record)
        self._apply(key, old, blob, grow, victims, cas, given, cls, size, old_cls, old_size)
        if not in_place:
            self.counters["total_items"] += 1  # memcached links a new item
        return cas

    def _expired_record(self, key: bytes, old: Optional[bytes], state: int, victims: Iterable[bytes]) -> bytes:
        """The record of a set of an item already expired: no restart may
        bring it back, so its effect on the file is a delete of what ``key``
        held (nothing if it held nothing), and of the items evicted for it."""
        items = self._items
        deletes = [records.encode_delete(key, bool(state & BINARY_KEY))] if old is not None else []
        deletes += [records.encode_delete(v, bool(items[v][STATE_OFFSET] & BINARY_KEY)) for v in victims]
        return records.regroup(deletes) if len(deletes) > 1 else deletes[0] if deletes else b""

    def _set_record(
        self, key: bytes, value: bytes, flags: int, exptime: int, cas: int, state: int, victims: Iterable[bytes]
    ) -> bytes:
        """The record of a set: a ``set`` (``bset`` for a key given in
        base64; with an ``invalidate`` in one group for a stale item), and
        the deletes of the items evicted to make room for it."""
        if state:
            binary = bool(state & BINARY_KEY)
            record = records.encode_set(key, value, flags, exptime, cas, binary)
            if state & STALE:  # one change in two records: all or nothing on replay
                record = records.encode_group([record, records.encode_invalidate(key, cas, binary)])
        else:
            record = records.set_record(key, value, flags, exptime, cas)
        if victims:
            items = self._items
            deletes = [records.encode_delete(v, bool(items[v][STATE_OFFSET] & BINARY_KEY)) for v in victims]
            record = records.regroup([record, *deletes])
        return record

    def _apply(
        self,
        key: bytes,
        old: Optional[bytes],
        blob: bytes,
        grow: int,
        victims: Iterable[bytes],
        cas: int,
        given: bool,
        cls: int,
        size: int,
        old_cls: int,
        old_size: int,
    ) -> None:
        """Change memory for a set whose record is written: the cas handed
        out, the undo of a batch, the evicted items out, the item (of class
        ``cls`` and memcached's size ``size``) in at the young end of the LRU
        order, counted in its class (and ``old``, if any, of ``old_cls`` and
        ``old_size``, out of its)."""
        if not given:
            self._next_cas = cas + 1
        elif cas > self._max_given_cas:
            self._max_given_cas = cas
        undo = self._undo
        if undo is not None:
            undo.append((key, old))
        if victims:
            self._evict(victims)
        items = self._items
        slabs = self.slabs
        if old is not None:
            del items[key]  # re-inserted below, at the young end
            if old_cls == cls and size <= slabs.chunk_limit:  # the common case: the same class
                if size != old_size:
                    slabs.requested[cls] += size - old_size
                items[key] = blob
                self.bytes += grow
                return
            if old_size > slabs.chunk_limit:
                self._count_in_class(key, old, -1)
            else:
                slabs.items[old_cls] -= 1
                slabs.requested[old_cls] -= old_size
        if size <= slabs.chunk_limit:  # Slabs.link, spelled out
            counted = slabs.items[cls] + 1
            slabs.items[cls] = counted
            slabs.requested[cls] += size
            if counted > slabs.room[cls]:
                slabs.grow(cls)
        else:
            self._count_in_class(key, blob, 1)
        items[key] = blob
        self.bytes += grow

    def _before_flush(self, exptime: int, now: int) -> int:
        """An expiry no later than a pending delayed flush_all, which covers
        every item written or touched before it falls due."""
        at = self.flush_at
        if at > now and (not exptime or exptime > at):
            return at
        return exptime

    def set(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> int:
        """Store unconditionally; returns the new cas value.

        Counted as memcached counts a ``set`` (``cmd_set`` in the new item's
        class, and ``stats detail``). Refused for lack of memory, the old
        value is removed too, as memcached does. :meth:`store` is the general form.
        """
        with self._lock:
            if self._refusal is not None:
                self._refuse()
            if self.prefixes.enabled:
                self.prefixes.record_set(key)
            slabs = self.slabs
            size = SIZE_BASE + len(key) + len(value) + (4 if flags else 0)  # memcached_size, spelled out
            cls = slabs.table[size] if size <= slabs.chunk_limit else slabs.largest
            slabs.cmd_set[cls] += 1
            absolute = self.absolute(exptime) if exptime else 0
            return self._write(key, value, flags, absolute, None, 0, True, False, size, cls)  # unlink

    def store(
        self,
        mode: Mode,
        key: bytes,
        value: bytes,
        flags: int = 0,
        exptime: int = 0,
        cas: int = 0,
        *,
        limit: Optional[int] = None,
        invalidate: bool = False,
        new_cas: Optional[int] = None,
        key_state: int = 0,
        unlink: bool = False,
        detail: bool = True,
    ) -> tuple[Outcome, int]:
        """memcached's ``do_store_item``: every protocol's storage commands
        (``set add replace append prepend cas``, binary ``SET``... and meta
        ``ms``) store through here. Returns the :class:`Outcome` and the cas
        of the item stored (0 unless ``STORED``).

        ``exptime`` is as the client sent it (memcached's rule makes it
        absolute). ``cas`` (0: none) is tested against the item first, as in
        memcached: ``CAS`` stores only on a match (counted in ``cas_hits``,
        ``cas_badval``, or ``cas_misses`` when the key holds nothing), and
        with ``invalidate`` (meta ``I``) a lower cas stores the value marked
        stale; ``APPEND``/``PREPEND`` refuse a mismatch (``EXISTS``, not
        counted) and a result longer than ``limit`` (``NOT_STORED``), and keep
        the item's flags, expiry and key form; ``ADD`` of a present key moves
        that item up the LRU order. Under ``-C`` (:meth:`disable_cas`) a cas
        given is dropped, as memcached drops it, so a ``CAS`` never matches.

        ``new_cas`` gives the item that cas (meta ``E``); ``key_state`` is
        ``BINARY_KEY`` for a key that goes to the data file in base64.
        ``unlink``: a refusal for lack of memory removes the old value too
        (memcached does that for a ``set`` and an ``ms``). Counted in
        ``cmd_set`` (in the class of an item of the data sent, as memcached
        counts it when it allocates that item, stored or not), and in
        ``stats detail`` when ``detail`` (memcached's classic and binary
        commands; not its meta ones).
        """
        with self._lock:
            if self._refusal is not None:
                self._refuse()
            if detail and self.prefixes.enabled:
                self.prefixes.record_set(key)
            self.slabs.cmd_set[self.item_class(key, value, flags)] += 1
            now = self.now()
            if not self.cas_enabled:
                cas = 0
            asked: Write = (value, flags, self.absolute(exptime, now), key_state)
            blob = self._live(key, now)
            plan = (
                self._store_over_nothing(mode, asked)
                if blob is None
                else self._store_over(mode, key, blob, asked, cas, invalidate, limit)
            )
            if isinstance(plan, Outcome):
                return plan, 0
            value, flags, exptime, state = plan
            if mode == Mode.CAS and blob is not None:  # (a cas stores only over an item)
                self.slabs.counts["cas_hits"][blob[CLASS_OFFSET]] += 1  # the old item's class
            stored = self._write(key, value, flags, exptime, new_cas, state, unlink)
            return Outcome.STORED, stored

    def item_class(self, key: bytes, value: bytes, flags: int) -> int:
        """The slab class memcached would store this item in."""
        return self.slabs.of(memcached_size(len(key), len(value), flags))

    def _store_over_nothing(self, mode: Mode, plan: Write) -> Plan:
        """What a storage command does when its key holds no live item: ``plan`` or a refusal."""
        if mode == Mode.SET or mode == Mode.ADD:
            return plan
        if mode == Mode.CAS:
            self.counters["cas_misses"] += 1
            return Outcome.NOT_FOUND
        return Outcome.NOT_STORED  # replace, append and prepend need an item

    def _store_over(
        self, mode: Mode, key: bytes, blob: bytes, plan: Write, cas: int, invalidate: bool, limit: Optional[int]
    ) -> Plan:
        """What a storage command does to the live item ``blob``: the
        :class:`Outcome` of a refusal, or the (value, flags, exptime, state)
        to write, ``plan`` or what an append, a prepend or a stale store makes of it."""
        if mode == Mode.SET or mode == Mode.REPLACE:
            return plan
        if mode == Mode.ADD:
            # memcached moves the item it refused to replace up the LRU order
            del self._items[key]
            self._items[key] = blob
            return Outcome.NOT_STORED
        value, flags, _, state = plan
        old_cas = item_cas(blob)
        if mode == Mode.CAS:
            if cas and cas == old_cas:
                return plan
            if invalidate and 0 < cas < old_cas:  # an older value may still be stored, marked stale
                return value, flags, item_exptime(blob), state | STALE | (item_state(blob) & WIN_SENT)
            self.slabs.counts["cas_badval"][blob[CLASS_OFFSET]] += 1
            return Outcome.EXISTS
        if cas and cas != old_cas:  # append and prepend: only a cas given has to match
            return Outcome.EXISTS
        old = decode(blob)
        if limit is not None and len(old.value) + len(value) > limit:
            return Outcome.NOT_STORED
        joined = old.value + value if mode == Mode.APPEND else value + old.value
        return joined, old.flags, old.exptime, old.state & BINARY_KEY  # the item keeps its key form

    def add(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> bool:
        """Store only if ``key`` holds no live item (see :meth:`store`)."""
        return self.store(Mode.ADD, key, value, flags, exptime)[0] == Outcome.STORED

    def replace(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> bool:
        """Store only if ``key`` already holds a live item (see :meth:`store`)."""
        return self.store(Mode.REPLACE, key, value, flags, exptime)[0] == Outcome.STORED

    def append(self, key: bytes, value: bytes, limit: Optional[int] = None) -> bool:
        """Add ``value`` after the existing data; flags and expiry are kept.

        Refused (False) when the key is missing or the result would be larger
        than ``limit``, as memcached refuses to grow an item past its limit.
        """
        return self.store(Mode.APPEND, key, value, limit=limit)[0] == Outcome.STORED

    def prepend(self, key: bytes, value: bytes, limit: Optional[int] = None) -> bool:
        """Add ``value`` before the existing data; see :meth:`append`."""
        return self.store(Mode.PREPEND, key, value, limit=limit)[0] == Outcome.STORED

    def cas(self, key: bytes, value: bytes, flags: int, exptime: int, unique: int) -> Optional[bool]:
        """Store if the item's cas is still ``unique``.

        Returns True (stored), False (someone changed it: EXISTS) or None
        (no such item: NOT_FOUND).
        """
        outcome = self.store(Mode.CAS, key, value, flags, exptime, unique)[0]
        return None if outcome == Outcome.NOT_FOUND else outcome == Outcome.STORED

    def refused_set(self, key: Optional[bytes], *, too_large: bool, unlink: bool = False, detail: bool = False) -> None:
        """A storage command refused before its value reached the store: too
        large (counted in ``store_too_large``), or a data block the text
        protocol could not frame. ``key`` is None when the command line did
        not parse as memcached parses it before it counts. As memcached: with
        ``detail`` it counts in ``stats detail`` as the set it parsed, and
        with ``unlink`` (a ``set`` or an ``ms`` refused as too large) the old
        value of ``key`` goes too, so that no reader gets the value an update
        failed to replace.
        """
        with self._lock:
            if unlink and key is not None and self._refusal is not None:
                self._refuse()
            if too_large:
                self.counters["store_too_large"] += 1
            if key is None:
                return
            if detail and self.prefixes.enabled:
                self.prefixes.record_set(key)
            if unlink:
                self._unlink(key)

    def update(self, key: bytes, change: Callable[[Item], Optional[bytes]]) -> Optional[Item]:
        """Atomically replace the value of ``key`` with ``change(item)``.

        For verbs of one's own that read and write an item in one step. The
        new value keeps the flags and expiry; ``change`` returning None leaves
        the item alone. Returns the resulting item, or None if ``key`` is
        missing. Logged as a plain ``set``, so replay needs no user code.
        """
        with self._lock:
            if self._refusal is not None:
                self._refuse()
            blob = self._live(key, self.now())
            if blob is None:
                return None
            old = decode(blob)
            value = change(old)
            if value is None:
                return old
            self._write(key, value, old.flags, old.exptime, state=old.state & BINARY_KEY)
            return decode(self._items[key])

    # -- primitives for the meta protocol -----------------------------------

    def fetch_uncounted(self, key: bytes, bump: bool = True) -> Optional[Item]:
        """The live item under ``key`` as it was before this read, for a
        caller that counts the read itself (meta ``mg`` counts a read that
        touches as a touch): only a gone item found is counted
        (``get_expired``, ``get_flushed``). The read marks the item fetched
        and refreshes its place in the LRU order, unless ``bump`` is False
        (meta ``u``)."""
        with self._lock:
            now = self.now()
            blob = self._live(key, now)
            if blob is None:
                return None
            if bump and blob < self._bump_below(now):
                self._bump(key, blob, now)
            return decode(blob)

    def put(
        self,
        key: bytes,
        value: bytes,
        flags: int = 0,
        exptime: int = 0,
        *,
        cas: Optional[int] = None,
        stale: bool = False,
        state: int = 0,
    ) -> int:
        """Store unconditionally with an *absolute* ``exptime``; returns the cas.

        ``cas`` gives the item that cas instead of the next one; ``stale``
        stores it already marked stale; ``state`` sets further state bits
        (``BINARY_KEY``, or ``FETCHED`` for an item created by a read). The
        meta commands decide the conditions, and count what memcached counts,
        themselves under :meth:`atomic`: this counts nothing.
        """
        with self._lock:
            if self._refusal is not None:
                self._refuse()
            return self._write(key, value, flags, exptime, cas, state | (STALE if stale else 0))

    def mark(self, key: bytes, *, stale: bool = False, win: Optional[bool] = None, cas: Optional[int] = None) -> bool:
        """Change the meta state of the live item under ``key``; False if none.

        ``stale`` marks it stale and gives it a new cas (``cas``, or the next
        one): a logged change, so a restart keeps it. ``win`` sets or clears
        the mark that a client was told to recache the item; that mark is not
        logged and lasts while the server runs, as in memcached.
        """
        with self._lock:
            if stale and self._refusal is not None:
                self._refuse()
            blob = self._live(key, self.now())
            if blob is None:
                return False
            state = item_state(blob)
            if win is not None:
                state = state | WIN_SENT if win else state & ~WIN_SENT
            if not stale:
                self._items[key] = with_state(blob, state)
                return True
            given = cas is not None
            if cas is None:
                cas = self._next_cas
            self._append(records.encode_invalidate(key, cas, bool(state & BINARY_KEY)))
            if not given:
                self._next_cas = cas + 1
            elif cas > self._max_given_cas:
                self._max_given_cas = cas
            self._remember(key, blob)
            self._items[key] = with_state(blob, state | STALE, cas=cas)
            return True

    def delete(self, key: bytes, cas: int = 0, *, detail: bool = True) -> Outcome:
        """Remove ``key``: ``DELETED``, or ``NOT_FOUND`` (false) when it held
        no live item, or ``EXISTS`` when ``cas`` (0: none) is not the item's
        (the binary protocol's delete; counted neither way, as in memcached).
        Counted in ``delete_hits``/``delete_misses``, and in ``stats detail``
        when ``detail`` (memcached's classic and binary deletes, not ``md``).
        """
        with self._lock:
            if self._refusal is not None:
                self._refuse()
            if detail and self.prefixes.enabled:
                self.prefixes.record_delete(key)
            blob = self._live(key, self.now())
            if blob is None:
                self.counters["delete_misses"] += 1
                return Outcome.NOT_FOUND
            if cas and cas != item_cas(blob):
                return Outcome.EXISTS
            self._remove(key, blob)
            self.slabs.counts["delete_hits"][blob[CLASS_OFFSET]] += 1
            return Outcome.DELETED

    def _unlink(self, key: bytes) -> None:
        """Remove ``key`` without counting a delete (a refused update's old value). Caller holds the lock."""
        blob = self._live(key, self.now())
        if blob is not None:
            self._remove(key, blob)

    def _remove(self, key: bytes, blob: bytes) -> None:
        self._append(records.encode_delete(key, bool(blob[STATE_OFFSET] & BINARY_KEY)))
        self._remember(key, blob)
        self._drop(key, blob)

    def incr(self, key: bytes, delta: int) -> Optional[int]:
        """Add ``delta`` modulo 2**64; None if missing. A non-number is :class:`NonNumeric`."""
        counted = self.arith(key, delta, True)
        return counted.number if counted.outcome else None

    def decr(self, key: bytes, delta: int) -> Optional[int]:
        """Subtract ``delta``, stopping at 0; None if missing."""
        counted = self.arith(key, delta, False)
        return counted.number if counted.outcome else None

    def arith(
        self,
        key: bytes,
        delta: int,
        incr: bool,
        cas: int = 0,
        *,
        exptime: Optional[int] = None,
        create: Optional[tuple[int, int]] = None,
        new_cas: Optional[int] = None,
        key_state: int = 0,
    ) -> Arith:
        """memcached's ``incr``/``decr`` for every protocol: add ``delta``
        (wrapping at 2**64) or subtract it (stopping at 0) from the number
        the item holds, changed in place (still fetched, same key form).

        ``cas`` (0: none) must be the item's, else ``EXISTS``. ``exptime``
        (as the client sent it) gives the item a new expiry (meta ``T``).
        ``create`` = (initial value, exptime) creates a missing counter
        (binary protocol, meta ``N``) with ``new_cas`` (meta ``E``) and
        ``key_state`` (``BINARY_KEY``: its key goes to the data file in
        base64). Counted as memcached counts: a miss it does not create in
        ``incr_misses``/``decr_misses``, a change in ``incr_hits``/
        ``decr_hits``, a creation or a cas mismatch not at all. A value
        that is not a number raises :class:`NonNumeric`.
        """
        with self._lock:
            if self._refusal is not None:
                self._refuse()
            now = self.now()
            blob = self._live(key, now)
            if blob is None:
                if create is None:
                    self.counters["incr_misses" if incr else "decr_misses"] += 1
                    return Arith(Outcome.NOT_FOUND)
                number, ttl = create
                absolute = self.absolute(ttl, now)
                made = self._write(key, b"%d" % number, 0, absolute, new_cas, key_state)
                return Arith(Outcome.STORED, number, made, absolute, created=True)
            old = decode(blob)
            if cas and cas != old.cas:
                return Arith(Outcome.EXISTS)
            counter = parse_counter(old.value)
            if counter is None:
                raise NonNumeric()
            number = apply_delta(counter, delta, incr)
            absolute = old.exptime if exptime is None else self.absolute(exptime, now)
            digits = b"%d" % number
            # memcached writes the number into the item it has when it fits there (padded
            # with spaces), else links a new one: the item's class, its size and total_items
            # follow that; the value here is never padded
            in_place = len(digits) + 2 <= old.size - SIZE_BASE + 2 - len(key) - (4 if old.flags else 0)
            state = old.state & (FETCHED | BINARY_KEY)
            made = self._write(key, digits, old.flags, absolute, new_cas, state, in_place=in_place)
            self.slabs.counts["incr_hits" if incr else "decr_hits"][old.cls] += 1
            return Arith(Outcome.STORED, number, made, absolute)

    def touch(self, key: bytes, exptime: int, count: bool = True) -> bool:
        """Give ``key`` a new expiry without changing its value; ``count``
        False leaves the touch counters alone (meta ``md I T``)."""
        with self._lock:
            if self._refusal is not None:
                self._refuse()
            if count:
                self.counters["cmd_touch"] += 1
            return self._touch(key, exptime, self.now(), count) is not None

    def gat(self, keys: Iterable[bytes], exptime: int) -> list[tuple[bytes, Item]]:
        """Get and touch: the live items among ``keys``, each given a new
        expiry. Counted as touches, and each key as a get in ``stats detail``
        (memcached's ``gat`` and binary ``TOUCH``/``GAT``)."""
        with self._lock:
            if self._refusal is not None:
                self._refuse()
            now = self.now()
            found = []
            detail = self.prefixes.enabled
            for key in keys:
                self.counters["cmd_touch"] += 1
                item = self._touch(key, exptime, now)
                if item is not None:
                    found.append((key, item))
                if detail:
                    self.prefixes.record_gets((key,), (item,))
            return found

    def _touch(self, key: bytes, exptime: int, now: int, count: bool = True) -> Optional[Item]:
        """Give the live item under ``key`` a new expiry; a counted touch is
        a read too (memcached's touch fetches the item: marked fetched, its
        access time refreshed), ``md I T``'s is not. A time already past
        leaves the item in place, expired, as memcached leaves it: the next
        lookup counts it in ``get_expired``."""
        blob = self._live(key, now)
        if blob is None:
            if count:
                self.counters["touch_misses"] += 1
            return None
        self._remember(key, blob)
        if count:
            self.slabs.counts["touch_hits"][blob[CLASS_OFFSET]] += 1
            if blob < self._bump_below(now):
                blob = pack_recent(1, now) + blob[5:]  # the fetched byte and the access time lead
        absolute = self.absolute(exptime, now)
        absolute = self._before_flush(absolute, now)
        if absolute < 0:
            absolute = PAST
        binary = bool(blob[STATE_OFFSET] & BINARY_KEY)
        self._append(records.encode_touch(key, absolute, binary))
        blob = with_exptime(blob, absolute)
        if absolute:
            self._may_expire = self._expiring_seen = True
        items = self._items
        del items[key]
        items[key] = blob
        return decode(blob)

    def flush_all(self, delay: int = 0) -> None:
        """Invalidate every item now, or everything written before ``delay`` seconds pass."""
        with self._lock:
            if self._refusal is not None:
                self._refuse()
            self.counters["cmd_flush"] += 1
            now = self.now()
            at = self.absolute(delay, now) if delay > 0 else 0
            self._append(records.encode_flush(at))
            if self._undo is not None:
                self._undo.append((None, dict(self._items), dict(self._flushed), self.bytes, self.flush_at))
            self._flush(at, now)

    def _flush(self, at: int, now: int) -> None:
        """Apply a ``flush_all`` due at ``at``. Due now, the items go out of
        sight at once but stay, as memcached keeps them, until a lookup
        finds them (``get_flushed``) or they are reclaimed: by the sweeper,
        or for room. They still take memory, and count in ``curr_items``
        and ``bytes``, as memcached's do."""
        if at <= now:
            if self._flushed:  # no key is in both: a key stored again left the flushed ones
                self._flushed.update(self._items)
            else:
                self._flushed = self._items
            self._items = {}
            self.flush_at = 0
            return
        self.flush_at = at
        self._may_expire = self._expiring_seen = True
        expire_by(self._items, at)

    def close(self) -> None:
        self._closing.set()
        self._stop_sweeper()
        self.evictions.wait()
        self._close_durability()
        if self.log is not None:
            self.log.close()

    # -- run-time settings (memcached's cache_memlimit, -C) --------------------

    def disable_cas(self) -> None:
        """memcached's -C: items stored from now on get cas 0, and ``cas``
        cannot succeed. memcached's items are then 8 bytes smaller, so some
        fall in smaller classes: every item is counted anew."""
        with self._lock:
            self.cas_enabled = False
            old = self.slabs
            if old.cas_bytes:
                self.slabs = Slabs(old.item_size_max, cas=False)
                self.slabs.counts = old.counts
                self.slabs.get_hits, self.slabs.cmd_set = old.get_hits, old.cmd_set
                self._recount()

    def walk_lru(self, accept: Callable[[bytes, Item], bool], limit: int = 0) -> list[tuple[bytes, Item]]:
        """Live items from the most to the least recently used, those ``accept`` takes,
        at most ``limit`` of them (0: all). For ``stats cachedump``: it holds the
        lock for the whole walk, so it is a tool for debugging, not for serving."""
        with self._lock:
            now = self.now()
            found: list[tuple[bytes, Item]] = []
            for key in reversed(self._items):
                blob = self._items[key]
                if 0 < item_exptime(blob) <= now:
                    continue
                item = decode(blob)
                if accept(key, item):
                    found.append((key, item))
                    if len(found) == limit:
                        break
            return found

    def held_items(self) -> list[tuple[bytes, Item]]:
        """Every item the store holds, oldest first: the live ones and those
        past their time or ended by a ``flush_all`` that no lookup or sweep
        has reclaimed yet (they take memory and count in ``curr_items``, as
        memcached's do). For checks and tools, not for serving: it holds the
        lock for the whole walk."""
        with self._lock:
            return [(key, decode(blob)) for table in (self._flushed, self._items) for key, blob in table.items()]

    # -- reporting ----------------------------------------------------------
