"""The store's per-class bookkeeping (memcachedlite/storage/slabs.py) on the
paths the differential tests do not take: a data file of item format 1,
chunked items, flushed items reclaimed for room or by the sweeper, expired
items taken for room, -C after a load, and a batch undone after a failed
write. After each, what every class counts must add up to the items the
store holds."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from memcachedlite import Session, Store
from memcachedlite.errors import LogWriteError
from memcachedlite.storage import records
from memcachedlite.storage.items import memcached_size, pack_meta
from memcachedlite.storage.slabs import CAS_BYTES, PAGE_SIZE, Slabs

NOW = 1_800_000_000


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def assert_counts_add_up(store: Store) -> None:
    """Each class counts exactly the items held in it, and bytes is memcached's sum."""
    slabs = store.slabs
    held = store.held_items()
    per_class: dict[int, list[int]] = {}
    for key, item in held:
        assert item.cls == slabs.of(item.size), key
        per_class.setdefault(item.cls, []).append(item.size)
    assert {c: n for c, n in enumerate(slabs.items) if n} == {c: len(s) for c, s in per_class.items()}
    assert {c: r for c, r in enumerate(slabs.requested) if r} == {c: sum(s) for c, s in per_class.items()}
    stats = store.stats()
    assert stats["curr_items"] == len(held)
    assert stats["bytes"] == sum(item.size + slabs.cas_bytes for _, item in held)


def v1_item(key: bytes, value: bytes, flags: int = 0, cas: int = 1) -> bytes:
    """An item in layout 1 (before class and size were stored)."""
    return pack_meta(0, NOW, 0, cas, 0, flags, 0, 0)[:26] + b" %d %d\r\n%s\r\n" % (flags, len(value), value)


def test_a_snapshot_of_item_format_1_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    pairs = [(b"a", v1_item(b"a", b"x")), (b"b", v1_item(b"b", b"y" * 500, flags=3, cas=2))]
    with open(path, "wb") as f:
        f.write(records.make_header(records.new_file_id()))
        f.write(b"".join(records.encode_snapshot(pairs, 1, 3, 0)))
    store = Store(path, clock=Clock())
    try:
        assert store.peek(b"b").value == b"y" * 500 and store.peek(b"b").flags == 3
        assert store.peek(b"a").size == memcached_size(1, 1, 0)
        assert store.peek(b"b").cls == Slabs().of(memcached_size(1, 500, 3)) != store.peek(b"a").cls
        assert_counts_add_up(store)
    finally:
        store.close()


def test_a_snapshot_item_not_in_format_1_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    with open(path, "wb") as f:
        f.write(records.make_header(records.new_file_id()))
        f.write(b"".join(records.encode_snapshot([(b"a", b"short")], 1, 3, 0)))
    with pytest.raises(Exception, match="not in item format 1"):
        Store(path)


def test_chunked_items_take_a_header_and_chunks(tmp_path: Path) -> None:
    store = Store()
    slabs = store.slabs
    store.set(b"big", b"b" * 600_000)
    largest = slabs.largest
    header, *chunks = slabs.chunk_classes(memcached_size(3, 600_000, 0), 3, 0)
    assert chunks[0] == largest and chunks[-1] < largest and header < chunks[-1]
    assert slabs.items[largest] == 1 and slabs.used_chunks(largest) == 1  # its LRU entry takes no chunk
    assert slabs.used_chunks(header) == 1 and slabs.used_chunks(chunks[-1]) == 1
    store.set(b"big", b"c" * 700_000)  # another chunked item over it
    assert_counts_add_up(store)
    _, *other = slabs.chunk_classes(memcached_size(3, 700_000, 0), 3, 0)
    store.set(b"big", b"small")
    assert_counts_add_up(store)
    assert slabs.used_chunks(largest) == slabs.used_chunks(header) == 0 and slabs.items[1] == 1
    assert slabs.pages[largest] == 1 and slabs.active() == sorted({1, header, *chunks, *other})
    assert store.stats()["bytes"] == memcached_size(3, 5, 0) + CAS_BYTES


def test_flushed_items_are_reclaimed_for_room_and_by_the_sweeper() -> None:
    clock = Clock()
    store = Store(memory_limit=30_000, clock=clock)
    for i in range(100):
        store.set(b"k%d" % i, b"v" * 100)
    store.flush_all()
    store.set(b"k1", b"again")  # finds the flushed k1 first
    store.flush_all()  # flushes on top of flushed ones
    assert store.stats()["get_flushed"] == 1 and store.stats()["curr_items"] == 100
    for i in range(100, 150):  # room is made from the flushed items: reclaimed, not evicted
        store.set(b"k%d" % i, b"w" * 100)
    stats = store.stats()
    assert stats["evictions"] == 0 and stats["reclaimed"] > 0 and stats["expired_unfetched"] == stats["reclaimed"]
    assert_counts_add_up(store)
    while store.reclaim_expired(30):
        pass
    stats = store.stats()
    assert stats["curr_items"] == 50 and stats["reclaimed"] == 100  # every flushed item, k1 again included
    assert_counts_add_up(store)


def test_expired_items_taken_for_room_count_as_reclaimed() -> None:
    clock = Clock()
    store = Store(memory_limit=20_000, clock=clock)
    for i in range(50):
        store.set(b"old%d" % i, b"v" * 100, exptime=10)
    clock.now += 20
    for i in range(100):
        store.set(b"new%d" % i, b"w" * 100)
    stats = store.stats()
    assert stats["reclaimed"] == stats["expired_unfetched"] == 50 and stats["evictions"] > 0
    assert stats["evicted_unfetched"] == stats["evictions"] and stats["direct_reclaims"] > 0
    items = dict(store.class_stats("items"))
    cls = store.peek(b"new99").cls
    assert items[f"items:{cls}:evicted"] == stats["evictions"] and items[f"items:{cls}:evicted_time"] == 0
    assert_counts_add_up(store)


def test_minus_capital_c_after_a_load_moves_items_to_their_smaller_classes(tmp_path: Path) -> None:
    store = Store(tmp_path / "data.txt")
    store.set(b"k", b"v" * 38)  # 48 + 2 + 40 + 8 = 98 bytes: class 2, 90 without cas: class 1
    store.close()
    store = Store(tmp_path / "data.txt")
    try:
        assert store.peek(b"k").cls == 2
        store.disable_cas()
        assert store.peek(b"k").cls == 1 and store.slabs.items[1] == 1 and store.slabs.items[2] == 0
        assert_counts_add_up(store)
        # classes as a memcached started with -C lays out the items: class 2 never held one
        assert "2:used_chunks" not in dict(store.class_stats("slabs"))
    finally:
        store.close()


def test_a_batch_undone_after_a_failed_write_leaves_the_counts_as_they_were(tmp_path: Path, monkeypatch) -> None:
    from tests.crashsim import FsRecorder, modules_with_os

    recorder = FsRecorder(tmp_path).install(monkeypatch, *modules_with_os())
    store = Store(tmp_path / "data.txt")
    try:
        for i in range(10):
            store.set(b"k%d" % i, b"v" * (10 * i))
        before = (list(store.slabs.items), list(store.slabs.requested), store.stats()["bytes"])
        with pytest.raises(LogWriteError), store.batch():
            Session(store)  # the store alone: the protocols are not the point here
            store.set(b"k1", b"x" * 500)  # into another class
            store.flush_all()
            store.set(b"k2", b"y")  # finds the flushed k2
            store.set(b"new", b"z" * 3000)
            recorder.fail("write", 1, errno.ENOSPC)  # the batch's one write, at its end, fails
        recorder.heal()
        assert (list(store.slabs.items), list(store.slabs.requested), store.stats()["bytes"]) == before
        assert store.peek(b"k1").value == b"v" * 10 and store.peek(b"new") is None
        assert_counts_add_up(store)
    finally:
        store.close()


def test_stats_slabs_total_malloced_counts_pages() -> None:
    store = Store()
    for i in range(11_000):  # more than one page of 96-byte chunks
        store.set(b"%d" % i, b"")
    assert store.slabs.pages[1] == 2
    assert dict(store.class_stats("slabs"))["total_malloced"] == 2 * PAGE_SIZE


def test_a_run_of_pipelined_sets_moves_items_between_classes_and_stays_one_sets_record(tmp_path: Path) -> None:
    """The batch form of set (set_many) counts class changes and expired
    items it replaces inline, so the run is still logged as one ``sets`` record."""
    clock = Clock()
    store = Store(tmp_path / "data.txt", clock=clock)
    try:
        session = Session(store)
        first = b"".join(b"set k%d 0 %d 10\r\n0123456789\r\n" % (i, 5 if i % 2 else 0) for i in range(20))
        assert session.feed(first) == b"STORED\r\n" * 20
        clock.now += 10  # the odd ones have expired
        size = store.log.size  # type: ignore[union-attr]
        second = b"".join(b"set k%d 0 0 %d\r\n%s\r\n" % (i, 100 * i, b"v" * (100 * i)) for i in range(20))
        assert session.feed(second) == b"STORED\r\n" * 20
        written = (tmp_path / "data.txt").read_bytes()[size:]
        assert written.startswith(b"sets ") and b"\r\nset " not in written
        stats = store.stats()
        assert stats["get_expired"] == 10 and stats["total_items"] == 40 and stats["curr_items"] == 20
        assert len({item.cls for _, item in store.held_items()}) > 5
        assert_counts_add_up(store)
    finally:
        store.close()
