"""Reclaiming expired items in the background (memcached's LRU crawler).

An expired item is otherwise only noticed when someone asks for it, so the
memory of keys nobody asks for again would never come back. :class:`Expiry`
is a base class of :class:`~memcachedlite.storage.store.Store`: it walks the table a
slice at a time under the store's lock and drops what has expired, and first
the items an immediate ``flush_all`` ended. The store's writes say when an
item with an expiry was stored (``_may_expire``), so the walk idles while
nothing can expire. What it drops is counted in the item's class as
memcached counts it: an expired item as its crawler's find
(``crawler_reclaimed``, ``crawler_items_checked``, and ``expired_unfetched``
when never read), a flushed one as its LRU maintainer's, which takes them
from the tails of its LRUs first (``reclaimed``, ``expired_unfetched``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from .items import CLASS_OFFSET, EXPTIME_AT, EXPTIME_END, NEVER_PACKED, unpack_meta

if TYPE_CHECKING:  # pragma: no cover
    from .slabs import Slabs


class Expiry:
    """The sweeper's side of the store (see the module docstring)."""

    _lock: Any
    _closing: threading.Event
    _items: dict[bytes, bytes]
    _flushed: dict[bytes, bytes]
    counters: dict[str, int]
    slabs: Slabs
    # the store's: the time, dropping one item from the table, reclaiming flushed ones
    now: Callable[[], int]
    _drop: Callable[[bytes, bytes], None]
    _reclaim_flushed: Callable[..., int]

    def _init_expiry(self) -> None:
        self._sweeper: Optional[threading.Thread] = None
        self._sweep_keys: list[bytes] = []
        self._sweep_at = 0
        # Whether some item may carry an expiry: the sweeper idles when none does.
        # The store sets both whenever it stores an item with an expiry.
        self._may_expire = True
        self._expiring_seen = False

    def reclaim_expired(self, limit: int = 5000) -> int:
        """Drop expired items among the next ``limit`` keys of a walk over
        the table; returns how many were dropped.

        The walk works on a copy of the key list, refreshed each round, and
        holds the lock for one slice at a time. Nothing is logged: the records
        already carry the absolute expiry, so a replay drops these items too.
        """
        with self._lock:
            if self._flushed:
                return self._reclaim_flushed(1 << 62, most=limit)
            if self._sweep_at >= len(self._sweep_keys):
                if not self._may_expire:  # the last round found nothing with an expiry
                    return 0
                self._sweep_keys = list(self._items)
                self._sweep_at = 0
                self._may_expire = self._expiring_seen = False
                self.counters["lru_crawler_starts"] += 1
            keys = self._sweep_keys[self._sweep_at : self._sweep_at + limit]
            self._sweep_at += len(keys)
            now = self.now()
            items = self._items
            counts = self.slabs.counts
            checked, reclaimed, unfetched = (
                counts["crawler_items_checked"],
                counts["crawler_reclaimed"],
                counts["expired_unfetched"],
            )
            dropped = 0
            expiring = False
            for key in keys:
                blob = items.get(key)
                if blob is None:
                    continue
                cls = blob[CLASS_OFFSET]
                checked[cls] += 1
                if blob[EXPTIME_AT:EXPTIME_END] != NEVER_PACKED:
                    if unpack_meta(blob)[4] <= now:
                        self._drop(key, blob)
                        dropped += 1
                        reclaimed[cls] += 1
                        if not blob[0]:  # never fetched
                            unfetched[cls] += 1
                    else:
                        expiring = True
            if expiring:
                self._expiring_seen = True
            if self._sweep_at >= len(self._sweep_keys) and self._expiring_seen:
                self._may_expire = True  # items left that will expire: go round again
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

    def _stop_sweeper(self) -> None:
        """Wait for the sweeper to end (the store has set ``_closing``)."""
        if self._sweeper is not None:
            self._sweeper.join()
