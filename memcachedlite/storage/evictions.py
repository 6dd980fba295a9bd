"""Saying so when the memory limit evicts items: a cache may evict, but a
server whose README promises that acknowledged writes are kept must not do
it without a word.

:class:`EvictionNotice` is told of each eviction by the store, under the
store's lock. The first one is reported at once with a WARNING that names
the limit, the number of items and the two ways out (a larger ``-m``, or
``-M`` to refuse writes instead); later ones at most once a minute, with the
count since the last warning. ``stats`` counts every one (``evictions``).

The warning is handed to a short-lived thread of its own: the store's lock
is never held while a log handler writes, so a stalled stderr (a full pipe,
a slow terminal) cannot stall every client. Nothing of this runs on a set
that evicts nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

logger = logging.getLogger(__name__)

#: Seconds between two warnings at most: memcached's own log would say nothing,
#: a warning per eviction would flood the log of a cache that is full on purpose.
INTERVAL = 60.0

_FIRST = (
    "memory limit of %s reached: evicted %d least recently used item(s) to make room; "
    "an evicted item is gone for good (a restart does not bring it back). "
    "Raise the limit with -m/--memory-limit, or refuse new items instead of evicting with -M/--no-evict. "
    "Further evictions are reported at most once a minute; stats shows them all (evictions)."
)
_LATER = (
    "memory limit of %s: evicted %d more item(s) since the last warning %d s ago "
    "(-m raises the limit, -M refuses writes instead)"
)


def size_text(limit: int) -> str:
    """A memory limit as an operator gave it: whole MiB as ``64 MiB``, anything else in bytes."""
    mib = 1024 * 1024
    return f"{limit // mib} MiB" if limit % mib == 0 else f"{limit} bytes"


def _warn(*args: object) -> None:
    """The body of the thread that logs one warning, off the store's lock."""
    logger.warning(*args)


class EvictionNotice:
    """Counts evictions and says when a warning is due (see the module docstring).

    ``clock`` gives the time in seconds (the store's clock, so a test can
    move it instead of waiting a minute).
    """

    def __init__(self, clock: Callable[[], float], interval: float = INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._last: Optional[float] = None  # when the last warning went out (None: never)
        self._since = 0  # evictions not reported yet
        self.warnings = 0
        self._thread: Optional[threading.Thread] = None

    def evicted(self, count: int, limit: int) -> None:
        """``count`` items were evicted under the memory limit ``limit`` (bytes).

        The caller holds the store's lock: this only counts and, when a
        warning is due, starts the thread that logs it.
        """
        self._since += count
        now = self._clock()
        last = self._last
        if last is not None and last <= now < last + self._interval:  # a clock set back does not silence it
            return
        if last is None:
            args: tuple = (_FIRST, size_text(limit), self._since)
        else:
            args = (_LATER, size_text(limit), self._since, max(now - last, 0))
        self._last = now
        self._since = 0
        self.warnings += 1
        self._thread = threading.Thread(target=_warn, args=args, name="mcl-eviction-warning", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Return once the last warning is logged (for tests, and for a clean stop)."""
        if self._thread is not None:
            self._thread.join()
