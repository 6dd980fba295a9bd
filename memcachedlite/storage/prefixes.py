"""Per-prefix statistics, as memcached's ``stats detail`` keeps them.

A key's prefix is what comes before its first delimiter (``:``, memcached's
``-D`` default); keys without one are not counted. Counting is switched on
and off at run time (``stats detail on|off``); what was counted stays until
``stats reset``. While it is off the commands pay one attribute test.
"""

from __future__ import annotations

import threading
from typing import Iterable

#: memcached's default prefix delimiter (its ``-D`` option).
DEFAULT_DELIMITER = b":"


class PrefixStats:
    """gets, hits, sets and deletes per key prefix; safe to share between threads."""

    def __init__(self, delimiter: bytes = DEFAULT_DELIMITER) -> None:
        self.delimiter = delimiter
        #: Read without the lock by the commands: a stale read only miscounts
        #: a command racing with ``stats detail on``, as in memcached.
        self.enabled = False
        self._lock = threading.Lock()
        self._counts: dict[bytes, list[int]] = {}  # prefix -> [get, hit, set, del]

    def _add(self, key: bytes, field: int, hit: bool = False) -> None:
        cut = key.find(self.delimiter)
        if cut < 0:
            return
        prefix = key[:cut]
        with self._lock:
            counts = self._counts.get(prefix)
            if counts is None:
                counts = self._counts[prefix] = [0, 0, 0, 0]
            counts[field] += 1
            if hit:
                counts[1] += 1

    def record_gets(self, keys: Iterable[bytes], found: Iterable[object]) -> None:
        """Count a get of each key; ``found`` holds, key by key, what the read
        found (None for a miss)."""
        for key, item in zip(keys, found, strict=True):
            self._add(key, 0, item is not None)

    def record_set(self, key: bytes) -> None:
        self._add(key, 2)

    def record_delete(self, key: bytes) -> None:
        self._add(key, 3)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()

    def dump(self) -> bytes:
        """memcached's ``stats detail dump`` reply, ``END`` included.

        memcached lists prefixes in the order of its hash table; here they
        come in the order they were first seen.
        """
        with self._lock:
            lines = [
                b"PREFIX %s get %d hit %d set %d del %d\r\n" % (prefix, counts[0], counts[1], counts[2], counts[3])
                for prefix, counts in self._counts.items()
            ]
        return b"".join(lines) + b"END\r\n"
