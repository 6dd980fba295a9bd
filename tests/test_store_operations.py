"""The store operations every protocol's front end calls, on their own:
memcached's storing modes and cas test (``do_store_item``), incr/decr, a set
refused before it reached the store, reads that count ``get_flushed``, and a
store that refuses every change (``refuse_writes``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from memcachedlite import Store
from memcachedlite.errors import LogWriteError, NonNumeric, OutOfMemory
from memcachedlite.storage.items import BINARY_KEY, STALE, WIN_SENT
from memcachedlite.storage.store import Mode, Outcome

NOW = 1_700_000_000


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> Store:
    return Store(None, clock=Clock())


def counters(store: Store, *names: str) -> tuple[int, ...]:
    stats = store.stats()
    return tuple(stats[name] for name in names)


# -- memcached's do_store_item --------------------------------------------------------


@pytest.mark.parametrize(
    "mode, cas, outcome, value",
    [
        (Mode.SET, 0, Outcome.STORED, b"new"),
        (Mode.SET, 999, Outcome.STORED, b"new"),  # a set ignores a cas: the protocols make it a CAS
        (Mode.ADD, 0, Outcome.NOT_STORED, b"old"),
        (Mode.ADD, 999, Outcome.NOT_STORED, b"old"),
        (Mode.REPLACE, 0, Outcome.STORED, b"new"),
        (Mode.APPEND, 0, Outcome.STORED, b"oldnew"),
        (Mode.PREPEND, 0, Outcome.STORED, b"newold"),
        (Mode.APPEND, 999, Outcome.EXISTS, b"old"),  # a cas given must match
        (Mode.CAS, 999, Outcome.EXISTS, b"old"),
        (Mode.CAS, 0, Outcome.EXISTS, b"old"),  # no cas given: no match either
    ],
)
def test_store_over_a_present_item(store: Store, mode: Mode, cas: int, outcome: Outcome, value: bytes) -> None:
    store.set(b"k", b"old", flags=5)
    assert store.store(mode, b"k", b"new", 7, 0, cas)[0] == outcome
    assert store.peek(b"k").value == value


@pytest.mark.parametrize(
    "mode, outcome, counted",
    [
        (Mode.SET, Outcome.STORED, 0),
        (Mode.ADD, Outcome.STORED, 0),
        (Mode.REPLACE, Outcome.NOT_STORED, 0),
        (Mode.APPEND, Outcome.NOT_STORED, 0),
        (Mode.PREPEND, Outcome.NOT_STORED, 0),
        (Mode.CAS, Outcome.NOT_FOUND, 1),
    ],
)
def test_store_over_nothing(store: Store, mode: Mode, outcome: Outcome, counted: int) -> None:
    assert store.store(mode, b"k", b"new", cas=5)[0] == outcome
    assert (store.peek(b"k") is not None) == (outcome == Outcome.STORED)
    assert counters(store, "cmd_set", "cas_misses") == (1, counted)


def test_a_cas_match_counts_a_hit_and_returns_the_new_cas(store: Store) -> None:
    old = store.set(b"k", b"old")
    outcome, new = store.store(Mode.CAS, b"k", b"new", cas=old)
    assert outcome == Outcome.STORED and new == store.peek(b"k").cas > old
    store.store(Mode.CAS, b"k", b"newer", cas=old)
    assert counters(store, "cas_hits", "cas_badval", "cmd_set") == (1, 1, 3)


def test_a_lower_cas_with_invalidate_stores_the_value_stale(store: Store) -> None:
    """Meta ``ms ... I C<older cas>``: stored, marked stale, with the old
    expiry and the old win mark, counted as a cas hit."""
    first = store.set(b"k", b"v1", exptime=100)
    second = store.set(b"k", b"v2", exptime=500)
    store.mark(b"k", win=True)
    outcome, _ = store.store(Mode.CAS, b"k", b"v3", 0, 50, cas=first, invalidate=True)
    item = store.peek(b"k")
    assert outcome == Outcome.STORED and item.value == b"v3" and item.exptime == NOW + 500
    assert item.state & STALE and item.state & WIN_SENT and second < item.cas
    assert counters(store, "cas_hits", "cas_badval") == (1, 0)


def test_append_keeps_flags_expiry_and_key_form_and_its_limit(store: Store) -> None:
    store.store(Mode.SET, b"a b", b"12", 9, 100, key_state=BINARY_KEY)
    assert store.store(Mode.APPEND, b"a b", b"34", limit=4)[0] == Outcome.STORED
    assert store.store(Mode.APPEND, b"a b", b"5", limit=4)[0] == Outcome.NOT_STORED
    item = store.peek(b"a b")
    assert item[:3] == (b"1234", 9, NOW + 100) and item.state & BINARY_KEY


def test_add_of_a_present_key_moves_it_up_the_lru_order(store: Store) -> None:
    store.set(b"first", b"1")
    store.set(b"second", b"2")
    store.add(b"first", b"x")
    assert store.keys() == [b"second", b"first"]


def test_under_disable_cas_a_cas_never_matches(store: Store) -> None:
    store.disable_cas()
    store.set(b"k", b"v")
    assert store.peek(b"k").cas == 0
    assert store.store(Mode.CAS, b"k", b"w", cas=0)[0] == Outcome.EXISTS
    assert store.store(Mode.APPEND, b"k", b"w", cas=5)[0] == Outcome.STORED  # the cas given is dropped


def test_a_set_refused_for_memory_unlinks_only_when_asked(store: Store) -> None:
    store.evict = False
    store.set(b"a", b"old")
    store.set(b"b", b"old")
    store.memory_limit = store.bytes
    with pytest.raises(OutOfMemory):
        store.store(Mode.REPLACE, b"a", b"x" * 100)
    with pytest.raises(OutOfMemory):
        store.store(Mode.REPLACE, b"b", b"x" * 100, unlink=True)
    assert store.peek(b"a").value == b"old" and store.peek(b"b") is None
    assert counters(store, "store_no_memory") == (2,)


def test_eviction_that_cannot_free_enough_refuses(store: Store) -> None:
    store.set(b"small", b"x")
    store.memory_limit = store.bytes + 10
    with pytest.raises(OutOfMemory):
        store.set(b"small", b"x" * 1000)  # only the key being replaced could go
    assert store.peek(b"small") is None  # and a refused set unlinks it


# -- incr and decr ---------------------------------------------------------------------


def test_arith_creates_checks_cas_and_counts(store: Store) -> None:
    missing = store.arith(b"n", 1, True)
    assert missing.outcome == Outcome.NOT_FOUND and counters(store, "incr_misses") == (1,)
    created = store.arith(b"n", 1, True, create=(40, 100), key_state=BINARY_KEY)
    assert created[:2] == (Outcome.STORED, 40) and created.created and created.exptime == NOW + 100
    assert store.arith(b"n", 1, True, cas=created.cas + 1).outcome == Outcome.EXISTS
    changed = store.arith(b"n", 50, False, cas=created.cas, exptime=0)
    assert changed[:2] == (Outcome.STORED, 0) and changed.exptime == 0 and not changed.created
    assert store.peek(b"n").state & BINARY_KEY
    assert counters(store, "incr_misses", "incr_hits", "decr_hits") == (1, 0, 1)
    store.set(b"text", b"abc")
    with pytest.raises(NonNumeric):
        store.arith(b"text", 1, True)


# -- a set refused before it reached the store -----------------------------------------------


def test_refused_set_counts_and_unlinks(store: Store) -> None:
    store.prefixes.enabled = True
    store.set(b"p:k", b"old")
    store.refused_set(b"p:k", too_large=True, detail=True)
    assert store.peek(b"p:k").value == b"old"
    store.refused_set(b"p:k", too_large=True, unlink=True, detail=True)
    store.refused_set(None, too_large=True, unlink=True, detail=True)  # a line that did not parse: counted only
    store.refused_set(b"p:k", too_large=False, detail=True)  # a bad data chunk
    assert store.peek(b"p:k") is None
    assert counters(store, "store_too_large", "delete_hits", "cmd_set") == (3, 0, 1)
    assert store.prefixes.dump() == b"PREFIX p get 0 hit 0 set 4 del 0\r\nEND\r\n"


# -- reads ------------------------------------------------------------------------------------


def test_reads_count_flushed_and_expired_items_apart(store: Store) -> None:
    clock = store._clock
    store.set(b"short", b"v", exptime=10)
    store.set(b"long", b"v")
    store.set(b"early", b"v", exptime=50)
    store.flush_all(100)
    clock.now += 60  # type: ignore[attr-defined]
    assert store.get_many([b"short", b"early"]) == [None, None]  # their own expiry: the flush is not due
    store.set(b"early", b"v", exptime=30)
    clock.now += 50  # type: ignore[attr-defined]
    assert store.get(b"long") is None and store.fetch_uncounted(b"early") is None
    assert counters(store, "get_expired", "get_flushed") == (2, 2)


def test_get_counts_in_stats_detail(store: Store) -> None:
    store.prefixes.enabled = True
    store.set(b"p:a", b"1")
    store.get(b"p:a")
    store.get(b"p:b")
    assert store.prefixes.dump() == b"PREFIX p get 2 hit 1 set 1 del 0\r\nEND\r\n"


# -- refuse_writes: every change refused, nothing counted, reads go on -------------------------

CHANGES = {
    "set": lambda s: s.set(b"k", b"x"),
    "add": lambda s: s.add(b"new", b"x"),
    "append": lambda s: s.append(b"k", b"x"),
    "cas": lambda s: s.cas(b"k", b"x", 0, 0, 1),
    "incr of a missing key": lambda s: s.incr(b"none", 1),
    "delete of a missing key": lambda s: s.delete(b"none"),
    "touch": lambda s: s.touch(b"k", 10),
    "gat": lambda s: s.gat([b"k"], 10),
    "flush_all": lambda s: s.flush_all(),
    "update": lambda s: s.update(b"k", lambda item: b"x"),
    "put": lambda s: s.put(b"k", b"x"),
    "mark stale": lambda s: s.mark(b"k", stale=True),
    "a too-large set's unlink": lambda s: s.refused_set(b"k", too_large=True, unlink=True),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_refuse_writes_refuses_every_change(change: str, tmp_path: Path) -> None:
    for store in (Store(None), Store(tmp_path / "data.txt")):
        try:
            store.set(b"k", b"before")
            before = store.stats()
            size = store.log.size if store.log is not None else 0
            store.refuse_writes("cannot write data file: No space left on device")
            with pytest.raises(LogWriteError, match="No space left"):
                CHANGES[change](store)
            assert store.peek(b"k").value == b"before" and store.get(b"k").value == b"before"
            after = store.stats()
            assert {n: after[n] - before[n] for n in before if after[n] != before[n]} == {"cmd_get": 1, "get_hits": 1}
            assert (store.log.size if store.log is not None else 0) == size
            assert store.mark(b"k", win=True)  # not a logged change: allowed
            store.refuse_writes(None)
            CHANGES[change](store)
        finally:
            store.close()


def test_refuse_writes_fails_every_entry_of_a_batch_of_sets(tmp_path: Path) -> None:
    store = Store(tmp_path / "data.txt")
    try:
        store.refuse_writes("disk full")
        with store.batch():
            errors = store.set_many([(b"a", b"1", 0, 0), (b"b", b"2", 0, 0)])
        assert [str(e) for e in errors] == ["disk full", "disk full"] and len(store) == 0
        assert store.stats()["cmd_set"] == 0
    finally:
        store.close()
