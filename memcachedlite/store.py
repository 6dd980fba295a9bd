"""The shared store: items in memory, expiry, LRU eviction, counters, and the
data file every change is written to first.

Every mutation takes the store's lock, works out its effect, appends that
effect to the data file and only then changes memory (write-ahead): a change
that cannot be logged is refused with :class:`~memcachedlite.errors.LogWriteError`
and memory is left as it was.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from operator import itemgetter
from typing import Callable, Iterable, NamedTuple, Optional, Union

from . import log as datalog
from .errors import ClientError, LogWriteError, OutOfMemory
from .protocol import RELATIVE_EXPTIME_LIMIT, U64, parse_counter

logger = logging.getLogger(__name__)

#: Bytes counted per item on top of key and value, close to memcached's item header.
ITEM_OVERHEAD = 56
DEFAULT_MEMORY_LIMIT = 64 * 1024 * 1024
#: The data file is compacted once it is past this size and twice the live data.
DEFAULT_COMPACT_MIN_SIZE = 64 * 1024 * 1024

_COUNTERS = (
    "cmd_get cmd_set cmd_touch cmd_flush get_hits get_misses get_expired get_flushed "
    "delete_hits delete_misses incr_hits incr_misses decr_hits decr_misses "
    "cas_hits cas_misses cas_badval touch_hits touch_misses total_items evictions "
    "expired_unfetched reclaimed store_too_large store_no_memory "
    "crawler_reclaimed crawler_items_checked lru_crawler_starts"
).split()


class Item(NamedTuple):
    """One stored value. ``exptime`` is an absolute unix time, 0 for never."""

    value: bytes
    flags: int
    exptime: int
    cas: int


def _size(key: bytes, item: Item) -> int:
    return len(key) + len(item.value) + ITEM_OVERHEAD


class Store:
    """The key-value data shared by every connection of a server.

    ``path=None`` keeps everything in memory only (for tests and embedding);
    otherwise the data file at ``path`` is replayed first and then appended to.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike, None] = None,
        *,
        fsync: str = "everysec",
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        evict: bool = True,
        compact_min_size: int = DEFAULT_COMPACT_MIN_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._items: OrderedDict[bytes, Item] = OrderedDict()
        self._lock = threading.RLock()
        self._clock = clock
        self.memory_limit = memory_limit
        self.evict = evict
        self.bytes = 0
        self.flush_at = 0  # pending delayed flush_all, absolute time
        self._next_cas = 1
        self.counters = dict.fromkeys(_COUNTERS, 0)
        self.compact_min_size = compact_min_size
        self.compactions = 0
        self._compact_lock = threading.Lock()
        self._compactor: Optional[threading.Thread] = None
        self._sweeper: Optional[threading.Thread] = None
        self._sweep_keys: list[bytes] = []
        self._sweep_at = 0
        self._closing = threading.Event()
        self.log: Optional[datalog.DataLog] = None
        if path is not None:
            self.log = datalog.DataLog(path, fsync=fsync)
            try:
                self._replay()
            except BaseException:
                self.log.close()
                raise
            self.log.start_background_sync()

    # -- time ---------------------------------------------------------------

    def now(self) -> int:
        return int(self._clock())

    def absolute(self, exptime: int, now: Optional[int] = None) -> int:
        """memcached's exptime rule: 0 never expires, up to 30 days is
        relative, larger is a unix time, negative is already expired."""
        if exptime == 0:
            return 0
        if now is None:
            now = self.now()
        if exptime < 0:
            return -1
        if exptime > RELATIVE_EXPTIME_LIMIT:
            return exptime
        return now + exptime

    # -- reading ------------------------------------------------------------

    def _live(self, key: bytes, now: int) -> Optional[Item]:
        """The item under ``key`` unless it has expired (then it is dropped)."""
        item = self._items.get(key)
        if item is None:
            return None
        exp = item.exptime
        if exp and exp <= now:
            self._drop(key, item)
            self.counters["reclaimed"] += 1
            return None
        return item

    def _drop(self, key: bytes, item: Item) -> None:
        del self._items[key]
        self.bytes -= _size(key, item)

    def get(self, key: bytes) -> Optional[Item]:
        """The live item under ``key``, counted as a get."""
        with self._lock:
            return self._get(key, self.now())

    def _get(self, key: bytes, now: int) -> Optional[Item]:
        counters = self.counters
        counters["cmd_get"] += 1
        item = self._items.get(key)
        if item is not None:
            exp = item.exptime
            if exp and exp <= now:
                self._drop(key, item)
                counters["get_expired"] += 1
                counters["reclaimed"] += 1
            else:
                self._items.move_to_end(key)
                counters["get_hits"] += 1
                return item
        counters["get_misses"] += 1
        return None

    def get_many(self, keys: Iterable[bytes]) -> list[tuple[bytes, Item]]:
        """The live items among ``keys``, in order, each counted as a get."""
        with self._lock:
            now = self.now()
            found = []
            for key in keys:
                item = self._get(key, now)
                if item is not None:
                    found.append((key, item))
            return found

    def peek(self, key: bytes) -> Optional[Item]:
        """The live item without counting it or refreshing its LRU place."""
        with self._lock:
            return self._live(key, self.now())

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[bytes]:
        with self._lock:
            now = self.now()
            return [k for k, it in self._items.items() if not (it.exptime and it.exptime <= now)]

    # -- writing ------------------------------------------------------------

    def _new_cas(self) -> int:
        cas = self._next_cas
        self._next_cas = cas + 1
        return cas

    def _write(self, key: bytes, value: bytes, flags: int, exptime: int, extra: bytes = b"") -> int:
        """Log and apply a set of ``key``; the one path every store takes.

        ``exptime`` is already absolute. ``extra`` is logged in the same write
        (the victims of eviction, for instance). Caller holds the lock.
        """
        now = self.now()
        if self.flush_at and self.flush_at > now and (not exptime or exptime > self.flush_at):
            exptime = self.flush_at  # a pending flush_all covers items written before it
        old = self._items.get(key)
        if exptime and exptime <= now:  # stored already expired: the effect is a delete
            if old is not None:
                self._append(datalog.encode_delete(key) + extra)
                self._drop(key, old)
            elif extra:
                self._append(extra)
            self.counters["total_items"] += 1
            return 0
        cas = self._new_cas()
        item = Item(value, flags, exptime, cas)
        grow = _size(key, item) - (_size(key, old) if old is not None else 0)
        victims = self._victims(key, grow) if self.bytes + grow > self.memory_limit else ()
        record = datalog.encode_set(key, value, flags, exptime, cas)
        if victims:
            record += b"".join(datalog.encode_delete(v) for v in victims)
        self._append(record + extra)
        for victim in victims:
            self._drop(victim, self._items[victim])
        self.counters["evictions"] += len(victims)
        self._items[key] = item
        self._items.move_to_end(key)
        self.bytes += grow
        self.counters["total_items"] += 1
        return cas

    def _victims(self, key: bytes, grow: int) -> list[bytes]:
        """Least recently used keys to evict so that ``grow`` more bytes fit."""
        need = self.bytes + grow - self.memory_limit
        if not self.evict:
            self.counters["store_no_memory"] += 1
            raise OutOfMemory()
        victims = []
        for other, item in self._items.items():
            if need <= 0:
                break
            if other != key:
                victims.append(other)
                need -= _size(other, item)
        if need > 0:
            self.counters["store_no_memory"] += 1
            raise OutOfMemory()
        return victims

    def _append(self, record: bytes) -> None:
        log = self.log
        if log is not None:
            size = log.append(record)
            if size > self.compact_min_size and size > 2 * self.bytes and self._compactor is None:
                self._compactor = threading.Thread(target=self._compact_in_background, name="mcl-compact", daemon=True)
                self._compactor.start()

    def set(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> int:
        """Store unconditionally; returns the new cas value (0 if stored already expired)."""
        with self._lock:
            self.counters["cmd_set"] += 1
            return self._write(key, value, flags, self.absolute(exptime))

    def add(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> bool:
        """Store only if ``key`` holds no live item."""
        with self._lock:
            self.counters["cmd_set"] += 1
            if self._live(key, self.now()) is not None:
                self._items.move_to_end(key)  # memcached bumps the item it refused to replace
                return False
            self._write(key, value, flags, self.absolute(exptime))
            return True

    def replace(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> bool:
        """Store only if ``key`` already holds a live item."""
        with self._lock:
            self.counters["cmd_set"] += 1
            if self._live(key, self.now()) is None:
                return False
            self._write(key, value, flags, self.absolute(exptime))
            return True

    def append(self, key: bytes, value: bytes, limit: Optional[int] = None) -> bool:
        """Add ``value`` after the existing data; flags and expiry are kept.

        Refused (False) when the key is missing or the result would be larger
        than ``limit``, as memcached refuses to grow an item past its limit.
        """
        return self._concat(key, value, True, limit)

    def prepend(self, key: bytes, value: bytes, limit: Optional[int] = None) -> bool:
        """Add ``value`` before the existing data; see :meth:`append`."""
        return self._concat(key, value, False, limit)

    def _concat(self, key: bytes, value: bytes, after: bool, limit: Optional[int]) -> bool:
        with self._lock:
            self.counters["cmd_set"] += 1
            old = self._live(key, self.now())
            if old is None or (limit is not None and len(old.value) + len(value) > limit):
                return False
            joined = old.value + value if after else value + old.value
            self._write(key, joined, old.flags, old.exptime)
            return True

    def cas(self, key: bytes, value: bytes, flags: int, exptime: int, unique: int) -> Optional[bool]:
        """Store if the item's cas is still ``unique``.

        Returns True (stored), False (someone changed it: EXISTS) or None
        (no such item: NOT_FOUND).
        """
        with self._lock:
            counters = self.counters
            counters["cmd_set"] += 1
            old = self._live(key, self.now())
            if old is None:
                counters["cas_misses"] += 1
                return None
            if old.cas != unique:
                counters["cas_badval"] += 1
                return False
            self._write(key, value, flags, self.absolute(exptime))
            counters["cas_hits"] += 1
            return True

    def update(self, key: bytes, change: Callable[[Item], Optional[bytes]]) -> Optional[Item]:
        """Atomically replace the value of ``key`` with ``change(item)``.

        For verbs of one's own that read and write an item in one step. The
        new value keeps the flags and expiry; ``change`` returning None leaves
        the item alone. Returns the resulting item, or None if ``key`` is
        missing. Logged as a plain ``set``, so replay needs no user code.
        """
        with self._lock:
            old = self._live(key, self.now())
            if old is None:
                return None
            value = change(old)
            if value is None:
                return old
            self._write(key, value, old.flags, old.exptime)
            return self._items[key]

    def delete(self, key: bytes) -> bool:
        with self._lock:
            old = self._live(key, self.now())
            if old is None:
                self.counters["delete_misses"] += 1
                return False
            self._append(datalog.encode_delete(key))
            self._drop(key, old)
            self.counters["delete_hits"] += 1
            return True

    def incr(self, key: bytes, delta: int) -> Optional[int]:
        """Add ``delta`` modulo 2**64; None if missing. Non-numbers are a ClientError."""
        return self._arith(key, delta, "incr")

    def decr(self, key: bytes, delta: int) -> Optional[int]:
        """Subtract ``delta``, stopping at 0; None if missing."""
        return self._arith(key, delta, "decr")

    def _arith(self, key: bytes, delta: int, kind: str) -> Optional[int]:
        with self._lock:
            old = self._live(key, self.now())
            if old is None:
                self.counters[kind + "_misses"] += 1
                return None
            number = parse_counter(old.value)
            if number is None:
                raise ClientError("cannot increment or decrement non-numeric value")
            number = (number + delta) % U64 if kind == "incr" else max(number - delta, 0)
            self._write(key, b"%d" % number, old.flags, old.exptime)
            self.counters[kind + "_hits"] += 1
            return number

    def touch(self, key: bytes, exptime: int) -> bool:
        """Give ``key`` a new expiry without changing its value."""
        with self._lock:
            self.counters["cmd_touch"] += 1
            return self._touch(key, exptime, self.now()) is not None

    def gat(self, keys: Iterable[bytes], exptime: int) -> list[tuple[bytes, Item]]:
        """Get and touch: the live items among ``keys``, each given a new expiry."""
        with self._lock:
            now = self.now()
            found = []
            for key in keys:
                self.counters["cmd_touch"] += 1
                item = self._touch(key, exptime, now)
                if item is not None:
                    found.append((key, item))
            return found

    def _touch(self, key: bytes, exptime: int, now: int) -> Optional[Item]:
        old = self._live(key, now)
        if old is None:
            self.counters["touch_misses"] += 1
            return None
        self.counters["touch_hits"] += 1
        absolute = self.absolute(exptime, now)
        if self.flush_at and self.flush_at > now and (not absolute or absolute > self.flush_at):
            absolute = self.flush_at
        if absolute and absolute <= now:
            self._append(datalog.encode_delete(key))
            self._drop(key, old)
            return old
        self._append(datalog.encode_touch(key, absolute))
        item = old._replace(exptime=absolute)
        self._items[key] = item
        self._items.move_to_end(key)
        return item

    def flush_all(self, delay: int = 0) -> None:
        """Invalidate every item now, or everything written before ``delay`` seconds pass."""
        with self._lock:
            self.counters["cmd_flush"] += 1
            now = self.now()
            at = self.absolute(delay, now) if delay > 0 else 0
            self._append(datalog.encode_flush(at))
            self._flush(at, now)

    def _flush(self, at: int, now: int) -> None:
        if at <= now:
            self._items.clear()
            self.bytes = 0
            self.flush_at = 0
            return
        self.flush_at = at
        for key, item in self._items.items():
            if not item.exptime or item.exptime > at:
                self._items[key] = item._replace(exptime=at)

    # -- durability ---------------------------------------------------------

    def sync(self) -> None:
        """Make every change so far durable on disk (group commit)."""
        if self.log is not None:
            self.log.sync()

    def close(self) -> None:
        self._closing.set()
        for thread in (self._compactor, self._sweeper):
            if thread is not None:
                thread.join()
        if self.log is not None:
            self.log.close()

    # -- reclaiming expired items -------------------------------------------

    def reclaim_expired(self, limit: int = 5000) -> int:
        """Drop expired items among the next ``limit`` keys of a walk over
        the table; returns how many were dropped.

        Expired items are otherwise only noticed when touched, so memory held
        by keys nobody asks for again would never come back. The walk works on
        a copy of the key list, refreshed each round, and holds the lock for
        one slice at a time. Nothing is logged: the records already carry the
        absolute expiry, so a replay drops these items too.
        """
        with self._lock:
            if self._sweep_at >= len(self._sweep_keys):
                self._sweep_keys = list(dict.keys(self._items))
                self._sweep_at = 0
                self.counters["lru_crawler_starts"] += 1
            keys = self._sweep_keys[self._sweep_at : self._sweep_at + limit]
            self._sweep_at += len(keys)
            now = self.now()
            items = self._items
            dropped = 0
            for key in keys:
                item = items.get(key)
                if item is not None and 0 < item[2] <= now:
                    self._drop(key, item)
                    dropped += 1
            counters = self.counters
            counters["crawler_items_checked"] += len(keys)
            counters["crawler_reclaimed"] += dropped
            counters["reclaimed"] += dropped
            return dropped

    def start_sweeper(self, interval: float = 0.1, per_round: int = 5000) -> None:
        """Reclaim expired items in the background, ``per_round`` keys every ``interval`` s."""
        if self._sweeper is not None:
            return

        def sweep() -> None:
            while not self._closing.wait(interval):
                self.reclaim_expired(per_round)

        self._sweeper = threading.Thread(target=sweep, name="mcl-sweeper", daemon=True)
        self._sweeper.start()

    # -- compaction ---------------------------------------------------------

    def compact(self) -> int:
        """Rewrite the data file to just the live items; returns the bytes saved.

        Clients keep being served: the lock is held only to take a snapshot of
        the item table and, at the end, to copy the changes made meanwhile and
        rename the new file into place. A crash at any point leaves either the
        complete old file or the complete new one.
        """
        if self.log is None:
            return 0
        with self._compact_lock:
            with self._lock:
                rewrite = self.log.start_rewrite()
                snapshot = list(dict.items(self._items))  # dict's view: fast, order is not needed
                next_cas, flush_at = self._next_cas, self.flush_at
            try:
                now = self.now()
                rewrite.write(datalog.HEADER + datalog.encode_next_cas(next_cas))
                encode = datalog.encode_set
                chunk: list[bytes] = []
                for key, (value, flags, exptime, cas) in snapshot:
                    if exptime and exptime <= now:
                        continue
                    chunk.append(encode(key, value, flags, exptime, cas))
                    if len(chunk) >= 2048:
                        rewrite.write(b"".join(chunk))
                        chunk.clear()
                rewrite.write(b"".join(chunk))
                if flush_at > now:
                    rewrite.write(datalog.encode_flush(flush_at))
                os.fsync(rewrite.fd)  # the bulk reaches the disk outside the lock
                with self._lock:
                    saved = self.log.finish_rewrite()
            except OSError as exc:
                with self._lock:
                    self.log.abort_rewrite()
                logger.error("compaction of %s failed: %s", self.log.path, exc)
                raise LogWriteError(f"compaction failed: {exc.strerror}") from exc
            except BaseException:
                with self._lock:
                    self.log.abort_rewrite()
                raise
            self.compactions += 1
            logger.info("compacted %s: %d live items, %d bytes saved", self.log.path, len(snapshot), saved)
            return saved

    def _compact_in_background(self) -> None:
        try:
            self.compact()
        except Exception:
            logger.exception("background compaction failed; the data file is unchanged")
        finally:
            self._compactor = None

    def _replay(self) -> None:
        assert self.log is not None
        items = self._items
        now = self.now()
        next_cas = [0]

        def apply(record: tuple) -> None:
            kind = record[0]
            if kind == b"delete":
                items.pop(record[1], None)
            elif kind == b"touch":
                old = items.get(record[1])
                if old is not None:
                    items[record[1]] = old._replace(exptime=record[2])
            elif kind == b"flush_all":
                self._flush(record[1], now)
            else:  # next_cas, written by compaction
                next_cas[0] = max(next_cas[0], record[1])

        count, max_cas = self.log.load(items, Item, apply)
        # dict's own views: walking the OrderedDict's linked list is ten times slower
        for key in [k for k, it in dict.items(items) if 0 < it[2] <= now]:
            del items[key]
        values = dict.values(items)
        self.bytes = sum(map(len, dict.keys(items))) + sum(map(len, map(itemgetter(0), values)))
        self.bytes += ITEM_OVERHEAD * len(items)
        if self.flush_at <= now:
            self.flush_at = 0
        self._next_cas = max(max_cas + 1, next_cas[0], 1)
        logger.info("loaded %d items from %s (%d records)", len(items), self.log.path, count)

    # -- reporting ----------------------------------------------------------

    def count(self, counter: str, n: int = 1) -> None:
        """Add to one of the store's counters (for events seen outside the store)."""
        with self._lock:
            self.counters[counter] += n

    def stats(self) -> dict[str, int]:
        with self._lock:
            out = dict(self.counters)
            out["curr_items"] = len(self._items)
            out["bytes"] = self.bytes
            out["limit_maxbytes"] = self.memory_limit
            return out

    def reset_stats(self) -> None:
        with self._lock:
            keep_total = self.counters["total_items"]
            self.counters = dict.fromkeys(_COUNTERS, 0)
            self.counters["total_items"] = keep_total
