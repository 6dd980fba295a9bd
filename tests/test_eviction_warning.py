"""Eviction is never silent (issue 22, item 3).

Under its memory limit the server evicts the least recently used items, as
memcached does; an evicted item is gone, after a restart too. What these
tests hold it to:

- the first eviction logs a WARNING that names the memory limit, how many
  items were evicted, and the two ways out (``-m`` to raise the limit,
  ``-M`` to refuse writes instead), in the real ``mcl serve`` log;
- later evictions are reported at most once a minute, with the count since
  the last warning (the store's clock is the test's, so nobody waits a minute);
- lowering the limit at run time (``cache_memlimit``) warns the same way;
- with ``-M`` nothing is evicted and a write that does not fit is answered
  as memcached answers it, on every protocol: ``SERVER_ERROR out of memory
  storing object`` on text and meta, status ``ENOMEM`` (0x82) with
  ``Out of memory allocating item`` on binary (checked against memcached ``-M``).
"""

from __future__ import annotations

import logging
import re
import struct
import threading
from pathlib import Path
from typing import Iterator

import pytest
from pymemcache.client.base import Client

from memcachedlite import MemcacheServer, Store
from memcachedlite.protocols.binary import ENOMEM, SET, request
from memcachedlite.storage.evictions import EvictionNotice, size_text
from tests.conftest import Raw, Running, running_memcached

WARNING_LOGGER = "memcachedlite.storage.evictions"
FIRST = re.compile(r"memory limit of (.+?) reached: evicted (\d+) least recently used item\(s\) to make room")
LATER = re.compile(r"memory limit of (.+?): evicted (\d+) more item\(s\) since the last warning (\d+) s ago")
NO_MEMORY = b"SERVER_ERROR out of memory storing object\r\n"
VALUE = b"v" * 1000
#: room for 20 items of VALUE (each takes about 1,160 bytes of the limit)
LIMIT = 24_000


def stat(raw: Raw, name: bytes) -> int:
    for line in raw.ask(b"stats\r\n").split(b"\r\n"):
        if line.startswith(b"STAT %s " % name):
            return int(line.split()[2])
    raise AssertionError(f"stats has no {name!r}")


def eviction_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == WARNING_LOGGER and r.levelno == logging.WARNING]


# -- the real mcl serve, and its log -------------------------------------------------


def test_the_first_eviction_warns_naming_the_limit_the_count_and_the_ways_out(spawn) -> None:
    server = spawn("-m", "2", "--fsync", "no")
    client = Client(("127.0.0.1", server.port))
    try:
        for start in range(0, 4000, 100):  # 4 MB of values into 2 MiB
            assert client.set_many({f"k{i}": VALUE for i in range(start, start + 100)}) == []
        evictions = int(client.stats()[b"evictions"])
    finally:
        client.close()
    assert evictions > 0
    assert server.terminate() == 0  # a clean stop waits for the warning to be written
    warnings = [line for line in server.output().splitlines() if f"WARNING {WARNING_LOGGER}:" in line]
    assert warnings, server.output()
    first = FIRST.search(warnings[0])
    assert first is not None, warnings[0]
    assert first.group(1) == "2 MiB"
    assert 0 < int(first.group(2)) <= evictions
    assert "-m/--memory-limit" in warnings[0] and "-M/--no-evict" in warnings[0]
    assert "a restart does not bring it back" in warnings[0]


# -- the rate limit, on the test's clock -------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[Running, Clock]]:
    """An in-process server with a memory limit of about 20 items, on a clock of the test's."""
    clock = Clock()
    store = Store(tmp_path / "data.txt", memory_limit=LIMIT, clock=clock)
    server = MemcacheServer(("127.0.0.1", 0), store)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    running = Running(server, thread)
    try:
        yield running, clock
    finally:
        running.stop()
        store.close()


def set_new_keys(raw: Raw, names: range) -> None:
    """Set one new key per name, each bigger than 1% of the limit: once full,
    every one of them evicts."""
    replies = raw.ask(b"".join(b"set n%d 0 0 %d\r\n%s\r\n" % (i, len(VALUE), VALUE) for i in names), len(names))
    assert replies == b"STORED\r\n" * len(names)


def test_later_evictions_are_reported_at_most_once_a_minute_with_the_count_since(clocked, caplog) -> None:
    caplog.set_level(logging.WARNING, logger=WARNING_LOGGER)
    running, clock = clocked
    notice = running.store.evictions
    raw = Raw(running.port)
    try:
        set_new_keys(raw, range(20))
        assert stat(raw, b"evictions") == 0 and eviction_warnings(caplog) == []
        set_new_keys(raw, range(20, 21))  # the first eviction
        notice.wait()
        first = stat(raw, b"evictions")
        [warning] = eviction_warnings(caplog)
        assert FIRST.search(warning).groups() == (size_text(LIMIT), str(first))  # type: ignore[union-attr]

        set_new_keys(raw, range(21, 40))  # more, within the same minute: counted, not logged
        clock.now += 59
        set_new_keys(raw, range(40, 45))
        notice.wait()
        assert len(eviction_warnings(caplog)) == 1
        clock.now += 1  # a minute after the first warning
        set_new_keys(raw, range(45, 46))
        notice.wait()
        since = stat(raw, b"evictions") - first
        assert since >= 25
        assert len(eviction_warnings(caplog)) == 2
        later = LATER.search(eviction_warnings(caplog)[1])
        assert later is not None and later.groups() == (size_text(LIMIT), str(since), "60")

        clock.now += 30  # the next minute starts at the second warning
        set_new_keys(raw, range(46, 50))
        notice.wait()
        assert len(eviction_warnings(caplog)) == 2 and notice.warnings == 2
    finally:
        raw.close()


def test_lowering_the_limit_at_run_time_warns_too(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger=WARNING_LOGGER)
    store = Store(tmp_path / "data.txt")
    try:
        for i in range(20):
            store.set(b"k%d" % i, VALUE)
        evicted = store.set_memory_limit(5000)  # what cache_memlimit does
        store.evictions.wait()
        assert evicted > 0 and store.stats()["evictions"] == evicted
        [warning] = eviction_warnings(caplog)
        assert FIRST.search(warning).groups() == ("5000 bytes", str(evicted))  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_clock_set_back_does_not_silence_the_warnings(caplog) -> None:
    caplog.set_level(logging.WARNING, logger=WARNING_LOGGER)
    clock = Clock()
    notice = EvictionNotice(clock)
    notice.wait()  # nothing to wait for yet
    notice.evicted(3, 64 * 1024 * 1024)
    clock.now -= 3600  # an NTP step back: the next eviction is reported, not held back for an hour
    notice.evicted(2, 64 * 1024 * 1024)
    notice.wait()
    assert notice.warnings == 2
    first, later = eviction_warnings(caplog)
    assert FIRST.search(first).groups() == ("64 MiB", "3")  # type: ignore[union-attr]
    assert LATER.search(later).groups()[:2] == ("64 MiB", "2")  # type: ignore[union-attr]


# -- -M: refuse instead of evicting, as memcached does ---------------------------------


def fill(port: int) -> None:
    """Store 1000-byte values over the text protocol until one is refused."""
    raw = Raw(port)
    try:
        for start in range(0, 100_000, 100):
            batch = b"".join(b"set f%d 0 0 %d\r\n%s\r\n" % (i, len(VALUE), VALUE) for i in range(start, start + 100))
            replies = [r for r in raw.ask(batch, 100).split(b"\r\n") if r]
            if replies != [b"STORED"] * 100:
                assert set(replies) == {b"STORED", NO_MEMORY.strip()}, set(replies)
                return
        raise AssertionError("the memory limit was never reached")
    finally:
        raw.close()


def refusals(port: int) -> tuple[bytes, bytes, tuple[int, bytes]]:
    """What a full server answers to a new item's set over text, meta and binary
    (the binary reply as its status and body)."""
    raw = Raw(port)
    binary = Raw(port)
    try:
        text = raw.ask(b"set newtext 0 0 %d\r\n%s\r\n" % (len(VALUE), VALUE))
        meta = raw.ask(b"ms newmeta %d\r\n%s\r\n" % (len(VALUE), VALUE))
        binary.send(request(SET, b"newbinary", VALUE, struct.pack(">II", 0, 0)))
        header = binary.read_exactly(24)
        status, body = struct.unpack_from(">H", header, 6)[0], struct.unpack_from(">I", header, 8)[0]
        return text, meta, (status, binary.read_exactly(body))
    finally:
        raw.close()
        binary.close()


def test_no_evict_answers_out_of_memory_on_every_protocol_as_memcached_does(spawn) -> None:
    server = spawn("-m", "2", "-M", "--fsync", "no")
    fill(server.port)
    raw = Raw(server.port)
    refused = stat(raw, b"store_no_memory")
    ours = refusals(server.port)
    with running_memcached("-M", "-m", "2") as port:
        fill(port)
        theirs = refusals(port)
    assert ours == theirs == (NO_MEMORY, NO_MEMORY, (ENOMEM, b"Out of memory allocating item"))
    try:
        assert stat(raw, b"evictions") == 0 and stat(raw, b"store_no_memory") == refused + 3
        assert raw.ask(b"get f0\r\n").startswith(b"VALUE f0 ")  # nothing was evicted to make room
    finally:
        raw.close()
    assert server.terminate() == 0
    assert WARNING_LOGGER not in server.output()
