"""What every fuzz target shares: the properties checked after each input.

A property that does not hold raises :class:`PropertyViolation`, which
atheris reports like any uncaught exception: it prints the traceback, saves
the input as a crash file and stops.

Everything here uses the store's public face (``stats()``, ``walk_lru()``,
``keys()``, ``held_items()``, ``peek()``, ``slabs``) plus two public names of
``memcachedlite.storage.items`` (``make_item`` and ``item_size``, the
store's own definition of an item's size), so that a refactoring of the
storage internals does not break it.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Callable

from memcachedlite.storage.items import BINARY_KEY, STALE, make_item
from memcachedlite.storage.items import item_size as stored_size

#: Every store in the fuzz targets runs on this clock: time never moves during
#: an input, so nothing expires between an operation and the check after it,
#: and an input replays exactly as it ran.
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z

#: No input may take longer than this (seconds).
TIME_LIMIT = 1.0


def clock() -> float:
    return NOW


class PropertyViolation(AssertionError):
    """A property of the fuzz targets does not hold for this input."""


def workdir() -> str:
    """A scratch directory for data files: the one ``fuzz/run.py`` made for
    this run (it removes it afterwards), in memory when the machine has
    ``/dev/shm``, so that a data file per input costs no disk I/O."""
    path = os.environ.get("MCL_FUZZ_WORKDIR")
    if path:
        return path
    # imported without run.py (to try an input by hand): clean up at exit
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="memcachedlite-fuzz-", dir=base)
    atexit.register(shutil.rmtree, path, True)
    return path


def clear_dir(path: str) -> None:
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))


class ErrorLog(logging.Handler):
    """Collects what the package logs at ERROR or above during an input.

    A session turns any exception a handler raises into ``SERVER_ERROR
    internal error`` and logs it: on the wire that is a documented reply, but
    for a fuzzer it is a crash that the session caught, so it is a violation
    too. Warnings (a line too long, a torn tail cut off) are expected and
    kept quiet.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []
        root = logging.getLogger("memcachedlite")
        root.addHandler(self)
        root.setLevel(logging.WARNING)
        root.propagate = False  # warnings are expected; do not print them for every input

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors.append(self.format(record))

    def check(self) -> None:
        errors, self.errors = self.errors, []
        if errors:
            raise PropertyViolation("logged an error:\n" + "\n".join(errors))


class Timed:
    """Runs one input and checks that it took less than :data:`TIME_LIMIT`.

    A slow run is timed once more before it counts: two fuzzers on a small
    machine, or a garbage collection, can slow one run down, but not two.
    A true hang never returns; ``fuzz/run.py`` passes atheris a ``-timeout``
    for those.
    """

    def __init__(self, one_input: Callable[[bytes], None]) -> None:
        self.one_input = one_input

    def __call__(self, data: bytes) -> None:
        start = time.perf_counter()
        self.one_input(data)
        took = time.perf_counter() - start
        if took > TIME_LIMIT:
            start = time.perf_counter()
            self.one_input(data)
            again = time.perf_counter() - start
            if again > TIME_LIMIT:
                raise PropertyViolation(f"input took {took:.2f} s, then {again:.2f} s (limit {TIME_LIMIT} s)")


def lock_is_free(store) -> bool:
    """Whether another thread can take the store's lock now.

    ``stats()`` takes the lock; run from a second thread, it blocks if the
    fuzzing thread still holds the lock (the lock is reentrant, so asking
    from this thread would prove nothing).
    """
    done = threading.Event()

    def probe() -> None:
        store.stats()
        done.set()

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    return done.wait(TIME_LIMIT)


def check_invariants(store) -> None:
    """The store's invariants, after any input:

    - its lock is free;
    - every counter (and ``curr_items``, ``bytes``) is non-negative;
    - the live items, seen from the oldest end (``keys()``) and from the
      youngest (``walk_lru()``), are one LRU order: the same keys, each once,
      in exactly reverse orders, and those the store holds
      (``held_items()``, with the ones past their time or flushed not
      reclaimed yet) are as many as ``curr_items``;
    - ``bytes_in_memory`` is the sum of the held items' sizes as the store
      defines them (``item_size`` of the item's stored form, ``make_item``),
      and ``bytes`` the sum of memcached's sizes for them;
    - each item is well formed (flags below 2**32, cas and exptime in range)
      and in the slab class its size gives; each class counts its items;
    - with eviction on, ``bytes_in_memory`` is within the memory limit.

    Items are compared with the clock stopped (:data:`NOW`), so no item can
    expire between two of these views.
    """
    if not lock_is_free(store):
        raise PropertyViolation("the store's lock is still held after the input")
    stats = store.stats()
    negative = {name: value for name, value in stats.items() if value < 0}
    if negative:
        raise PropertyViolation(f"negative counters: {negative}")
    oldest_first = store.keys()
    youngest_first = store.walk_lru(lambda key, item: True)
    keys = [key for key, _ in youngest_first]
    if keys[::-1] != oldest_first:
        raise PropertyViolation("keys() and walk_lru() disagree on the LRU order")
    held = store.held_items()
    if len(set(keys)) != len(keys) or len(held) != stats["curr_items"] or not set(keys) <= {k for k, _ in held}:
        raise PropertyViolation(
            f"item counts disagree: {len(keys)} walked, {len(set(keys))} distinct, "
            f"curr_items {stats['curr_items']}, {len(held)} held"
        )
    check_sizes(store, stats, held)


def check_sizes(store, stats: dict, held: list) -> None:
    """The held items add up to ``bytes_in_memory``, ``bytes`` and their classes' counts."""
    slabs = store.slabs
    total = memcached = 0
    per_class: dict[int, int] = {}
    for key, item in held:
        if not 0 <= item.flags < 1 << 32 or not 0 <= item.cas < 1 << 64 or not -(1 << 63) <= item.exptime < 1 << 63:
            raise PropertyViolation(f"item {key!r} out of range: {item}")
        if item.cls != slabs.of(item.size):
            raise PropertyViolation(f"item {key!r} in class {item.cls}, not {slabs.of(item.size)} (size {item.size})")
        stored = make_item(item.value, item.flags, item.exptime, item.cas, item.atime, item.state, item.cls, item.size)
        total += stored_size(key, stored)
        memcached += item.size + slabs.cas_bytes
        per_class[item.cls] = per_class.get(item.cls, 0) + 1
    if total != stats["bytes_in_memory"]:
        raise PropertyViolation(f"bytes_in_memory is {stats['bytes_in_memory']}, the items add up to {total}")
    if memcached != stats["bytes"]:
        raise PropertyViolation(f"bytes is {stats['bytes']}, memcached's sizes of the items add up to {memcached}")
    counted = {cls: number for cls, number in enumerate(slabs.items) if number}
    if counted != per_class:
        raise PropertyViolation(f"the classes count {counted}, the items are {per_class}")
    if store.evict and stats["bytes_in_memory"] > store.memory_limit:
        raise PropertyViolation(f"bytes_in_memory {stats['bytes_in_memory']} over the limit {store.memory_limit}")


def durable_state(store) -> dict[bytes, tuple]:
    """What the data file keeps of each item: value, flags, expiry, cas and
    whether it is stale or its key was given in base64 (not the fetched mark,
    the access time or the recache-token mark, which are not logged)."""
    return {
        key: (item.value, item.flags, item.exptime, item.cas, bool(item.state & STALE), bool(item.state & BINARY_KEY))
        for key, item in store.walk_lru(lambda key, item: True)
    }
