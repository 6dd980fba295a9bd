"""Batches of changes seen from the store's side: pipelined sets stored
under one lock and logged as one ``sets`` record (the batch form of ``set``),
and a sequence of calls made one step (``atomic``: one lock, one group
record inside a batch). How a batch reaches the data file, its undo and the
group commit are :mod:`memcachedlite.storage.durability`'s.

A base class of :class:`~memcachedlite.storage.store.Store`, over
:class:`~memcachedlite.storage.memory.Memory`: one more link of the single
chain of bases a class mypyc compiles may have. It calls back into the
store for a write of the general kind (declared below as methods: see
:mod:`memcachedlite.storage.durability` for why not ``Callable`` attributes).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

from ..errors import LogWriteError, ServerError
from . import records
from .items import ITEM_FORMAT, ITEM_OVERHEAD, SIZE_BASE, pack_meta, unpack_replaced
from .memory import Memory
from .prefixes import PrefixStats

#: The fewest entries a run of pipelined sets needs to be logged as one
#: ``sets`` record: below it, a record per set costs less than the bulk
#: form's fixed part (measured with benchmarks/micro_session.py).
SETS_RECORD_MIN = 16


class Batches(Memory):
    """Pipelined sets and atomic sequences (see the module docstring)."""

    # the store's (see memcachedlite.storage.store)
    cas_enabled: bool
    prefixes: PrefixStats
    _refusal: Optional[str]
    _in_atomic: bool

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
    ) -> int:  # pragma: no cover
        """Store one item the general way, logged (the store's)."""
        raise NotImplementedError

    def absolute(self, exptime: int, now: Optional[int] = None) -> int:  # pragma: no cover
        """memcached's exptime rule (the store's)."""
        raise NotImplementedError

    def set_many(self, entries: list[tuple[bytes, bytes, int, int]]) -> list[Optional[ServerError]]:
        """:meth:`set` for each ``(key, value, flags, exptime)``, under one lock
        (the batch form of ``set``); the same effects, counted the same way.
        Returns, per entry, None or the error that :meth:`set` would have
        raised for it (memory full with ``-M``, data file not writable).

        Inside a batch, the common case (no expiry, no pending flush, no
        eviction, no chunked item, no flushed item to find first) is
        :meth:`_write` with what it looks up once per item looked up once
        per call; anything else goes through :meth:`_write`. When every
        entry is the common case, the items are logged as one ``sets``
        record (:func:`memcachedlite.storage.records.encode_sets`) rather
        than a record each.
        """
        with self._lock:
            if self._refusal is not None:
                return [LogWriteError(self._refusal)] * len(entries)
            counters = self.counters
            slabs = self.slabs
            table, chunk_limit, largest, sets = slabs.table, slabs.chunk_limit, slabs.largest, slabs.cmd_set
            if self.prefixes.enabled:
                for entry in entries:
                    self.prefixes.record_set(entry[0])
            pending, undo = self._pending, self._undo
            errors: list[Optional[ServerError]] = [None] * len(entries)
            if pending is None or undo is None or self.flush_at or not self._writable or not self.cas_enabled:
                for i, (key, value, flags, exptime) in enumerate(entries):
                    size = SIZE_BASE + len(key) + len(value) + (4 if flags else 0)
                    sets[table[size] if size <= chunk_limit else largest] += 1
                    errors[i] = self._try_write(key, value, flags, exptime)
                return errors
            now = int(self._clock())
            items = self._items
            flushed = self._flushed
            linked, requested, room = slabs.items, slabs.requested, slabs.room
            limit = self.memory_limit
            first_cas = cas = self._next_cas
            used = self.bytes
            bulk = len(entries) >= SETS_RECORD_MIN  # one sets record, while every entry is a common case
            blobs: list[bytes] = []
            slow = 0  # entries that went through _try_write, which counts them itself
            base = SIZE_BASE
            old_exptime: int  # typed: the compiled build compares them as machine integers
            old_cls: int
            old_size: int
            for i, (key, value, flags, exptime) in enumerate(entries):
                length = len(value)
                size = base + len(key) + length + (4 if flags else 0)  # memcached_size, spelled out
                cls = table[size] if size <= chunk_limit else largest
                sets[cls] += 1
                old = items.get(key)
                meta = pack_meta(0, now, 0, cas, 0, flags, cls, size)
                blob = b"%b %d %d\r\n%b\r\n" % (meta, flags, length, value)
                if old is not None:
                    grow = len(blob) - len(old)
                    old_exptime, old_cls, old_size = unpack_replaced(old)
                    special = old_size > chunk_limit
                else:
                    grow = len(key) + len(blob) + ITEM_OVERHEAD
                    special = key in flushed if flushed else False  # memcached's store would find the flushed one
                if exptime or special or used + grow > limit or size > chunk_limit:
                    if bulk:  # not all common cases: log the ones so far a record each
                        pending.extend(
                            records.set_record(k, v, f, 0, first_cas + j) for j, (k, v, f, _) in enumerate(entries[:i])
                        )
                        bulk = False
                    self._next_cas, self.bytes = cas, used
                    slow += 1
                    errors[i] = self._try_write(key, value, flags, exptime)
                    cas, used = self._next_cas, self.bytes
                    continue
                if bulk:
                    blobs.append(blob)
                else:
                    pending.append(records.set_record(key, value, flags, 0, cas))
                undo.append((key, old))
                if old is not None:
                    del items[key]  # re-inserted at the young end
                    if 0 < old_exptime <= now:
                        counters["get_expired"] += 1  # memcached's store finds it expired first
                    if old_cls == cls:
                        if size != old_size:
                            requested[cls] += size - old_size
                    else:  # into another class
                        linked[old_cls] -= 1
                        requested[old_cls] -= old_size
                        counted = linked[cls] + 1
                        linked[cls] = counted
                        requested[cls] += size
                        if counted > room[cls]:
                            slabs.grow(cls)
                else:
                    counted = linked[cls] + 1
                    linked[cls] = counted
                    requested[cls] += size
                    if counted > room[cls]:
                        slabs.grow(cls)
                items[key] = blob
                cas += 1
                used += grow
            if bulk:
                pending.extend(records.encode_sets([entry[0] for entry in entries], blobs, ITEM_FORMAT, cas))
            counters["total_items"] += len(entries) - slow
            self._next_cas, self.bytes = cas, used
            return errors

    def _try_write(self, key: bytes, value: bytes, flags: int, exptime: int) -> Optional[ServerError]:
        """One entry of :meth:`set_many` the way :meth:`set` stores it."""
        try:
            self._write(key, value, flags, self.absolute(exptime) if exptime else 0, unlink=True)
        except ServerError as exc:
            return exc
        return None

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Hold the store's lock, so that a sequence of calls (a meta command
        reads, decides, then writes) is one step to every other connection;
        and, inside a batch, log what the sequence wrote as one group, so that
        a crash cannot keep half of it."""
        with self._lock:
            pending = self._pending
            if pending is None or not self._writable or self._in_atomic:
                yield
                return
            start = len(pending)
            self._in_atomic = True
            try:
                yield
            finally:
                self._in_atomic = False
                if len(pending) - start > 1 and pending is self._pending:
                    pending[start:] = [records.regroup(pending[start:])]
