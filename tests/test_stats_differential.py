"""What monitoring reads, compared with the real memcached 1.6: the same
traffic goes to memcached (a subprocess on a free port of 127.0.0.1) and to
memcachedlite, and then every key of ``stats``, ``stats items``, ``stats
slabs``, ``stats sizes`` and ``stats settings`` must be memcached's, in
memcached's order, with memcached's value.

Left out of the value comparison: each key listed in :data:`DIFFERENT`, with
its reason (a clock, a process id, a version, an address, or a difference of
machinery kept on purpose, as docs/prometheus.md says). Every other key,
memcachedlite's own keys after memcached's aside, is compared.

The traffic stores items of many sizes (so that many slab classes are used,
one item chunked past the largest chunk), hits and misses them, lets items
expire (stored with an absolute time already past, or touched into the
past), flushes, counts with ``incr``/``decr`` (across number lengths), uses
``cas``, ``touch``, ``gat``, appends, deletes and evicts under a small
``-m``. Items a ``flush_all`` or an expiry ended are looked up in the same
pipelined write that ended them: memcached reclaims those it still holds
later, in the background, at a moment no test can pin.
"""

from __future__ import annotations

import fnmatch
from typing import Iterator

import pytest

from tests.conftest import Raw, running_memcached

pytestmark = pytest.mark.external  # the real memcached
READ_TIMEOUT = 10.0
MARK = b"__stats_differential_mark__"
SYNC = b"__stats_differential_sync__"  # never stored

#: Keys whose values differ on purpose, with the reason (fnmatch patterns).
DIFFERENT: dict[str, str] = {
    # stats
    "pid": "a process id",
    "uptime": "a clock",
    "time": "a clock",
    "version": "a version (memcachedlite: 1.6.0-memcachedlite-<its version>)",
    "libevent": "a version (memcachedlite has no libevent: 'none')",
    "rusage_user": "a clock (CPU time)",
    "rusage_system": "a clock (CPU time)",
    "total_connections": "memcached counts its listening sockets as connections too",
    "connection_structures": "memcached allocates one per listening socket too",
    "response_obj_count": "memcached's response object pool; memcachedlite has none (0)",
    "response_obj_bytes": "memcached's response object pool; memcachedlite has none (0)",
    "read_buf_count": "memcached's read buffer pool (memcachedlite: one buffer per connection)",
    "read_buf_bytes": "memcached's read buffer pool (memcachedlite: one buffer per connection)",
    "read_buf_bytes_free": "memcached's read buffer pool (memcachedlite: one buffer per connection)",
    "reserved_fds": "file descriptors memcached keeps for itself; memcachedlite reserves none",
    "lru_crawler_starts": "the background crawler's schedule (memcachedlite: its sweeper's rounds)",
    "crawler_items_checked": "the background crawler's schedule",
    "lru_maintainer_juggles": "memcached's LRU maintainer thread; memcachedlite has one LRU and no maintainer (0)",
    "moves_to_cold": "memcached's LRU segments (hot, warm, cold); memcachedlite has one LRU (0)",
    "moves_to_warm": "memcached's LRU segments; memcachedlite has one LRU (0)",
    "moves_within_lru": "memcached's LRU segments; memcachedlite has one LRU (0)",
    "lrutail_reflocked": "memcached's LRU maintainer met an item in use at a tail; memcachedlite locks no item (0)",
    "threads": "memcachedlite's worker pool grows with the load, up to its limit; memcached runs -t threads",
    "conn_yields": "memcached yields a pipelining connection every 20 requests (-R); memcachedlite runs a batch whole",
    # stats items (per class)
    "items:*:number_hot": "memcached's LRU segments: memcachedlite counts every item as cold",
    "items:*:number_warm": "memcached's LRU segments: memcachedlite counts every item as cold",
    "items:*:number_cold": "memcached's LRU segments: memcachedlite counts every item as cold",
    "items:*:age_hot": "memcached's LRU segments (and a clock)",
    "items:*:age_warm": "memcached's LRU segments (and a clock)",
    "items:*:age": "a clock (seconds since the oldest item of the class was last read)",
    "items:*:evicted_time": "a clock (seconds between the last evicted item's last read and its eviction)",
    "items:*:moves_to_cold": "memcached's LRU segments; memcachedlite has one LRU (0)",
    "items:*:moves_to_warm": "memcached's LRU segments; memcachedlite has one LRU (0)",
    "items:*:moves_within_lru": "memcached's LRU segments; memcachedlite has one LRU (0)",
    "items:*:hits_to_hot": "memcached's LRU segments: memcachedlite counts every hit as a hit in cold",
    "items:*:hits_to_warm": "memcached's LRU segments: memcachedlite counts every hit as a hit in cold",
    "items:*:hits_to_cold": "memcached's LRU segments: memcachedlite counts every hit as a hit in cold",
    "items:*:crawler_items_checked": "the background crawler's schedule",
    "items:*:lrutail_reflocked": "memcached's LRU maintainer met an item in use at a tail; memcachedlite: 0",
    # stats settings
    "tcpport": "an address (each server's own free port)",
    "oldest": "a clock (memcached: when the last flush_all took effect, in its own time; memcachedlite: 0)",
    "num_threads": "memcachedlite's worker pool is not memcached's thread per event loop",
    "num_threads_per_udp": "memcachedlite's worker pool is not memcached's thread per event loop",
    "lru_crawler_sleep": "memcachedlite's sweeper: microseconds between its rounds, not between items",
    "lru_crawler_tocrawl": "memcachedlite's sweeper: the keys it looks at per round (memcached: 0, no limit)",
    "hash_algorithm": "memcachedlite's table hashes with Python's hash (siphash13), not murmur3",
    "lru_maintainer_thread": "memcachedlite has no LRU maintainer thread",
    "lru_segmented": "memcachedlite has one LRU, not memcached's segments",
    "hot_lru_pct": "memcached's LRU segments: memcachedlite has none (0)",
    "warm_lru_pct": "memcached's LRU segments: memcachedlite has none (0)",
    "hot_max_factor": "memcached's LRU segments: memcachedlite has none (0)",
    "warm_max_factor": "memcached's LRU segments: memcachedlite has none (0)",
    "temporary_ttl": "memcached's temporary LRU: memcachedlite has none (0)",
    "watcher_logbuf_size": "memcached's log watchers: memcachedlite has none (0)",
    "worker_logbuf_size": "memcached's log watchers: memcachedlite has none (0)",
}

#: Under a memory limit, what fits differs on purpose: memcached evicts in the
#: class that needs a chunk once no page is left for it, memcachedlite across
#: classes by what its items really take (``bytes_in_memory``, against -m).
WHAT_FITS = "what fits under -m: memcached counts its slab pages, memcachedlite what its items really take"
DIFFERENT_UNDER_EVICTION: dict[str, str] = {
    name: WHAT_FITS
    for name in (
        "curr_items",
        "bytes",
        "evictions",
        "evicted_unfetched",
        "get_hits",
        "get_misses",
        "items:*:number",
        "items:*:mem_requested",
        "items:*:evicted",
        "items:*:evicted_nonzero",
        "items:*:evicted_unfetched",
        "items:*:outofmemory",
        "items:*:direct_reclaims",
        "direct_reclaims",
        "*:get_hits",
        "*:total_pages",
        "*:total_chunks",
        "*:used_chunks",
        "*:free_chunks",
        "total_malloced",
    )
}

GROUPS = ("", "items", "slabs", "sizes", "settings")

Stats = dict[str, dict[str, str]]


def stat_group(raw: Raw, group: str) -> dict[str, str]:
    """One ``stats`` group as an ordered dict of its keys."""
    reply = raw.ask(b"stats %s\r\n" % group.encode() if group else b"stats\r\n")
    assert reply.endswith(b"END\r\n"), reply[-200:]
    lines = reply.decode().split("\r\n")[:-2]
    assert all(line.startswith("STAT ") for line in lines), lines
    return dict(line[5:].split(" ", 1) for line in lines)  # type: ignore[misc]


def run(port: int, steps: list[tuple[bytes, int]]) -> tuple[list[bytes], Stats]:
    """Send each step (a pipelined write) and read its replies, then every
    ``stats`` group, on one connection (so that connection counts do not
    depend on when the server sees a connection close). ``{cas}`` in a step
    is the cas value of the last ``gets`` hit this server answered."""
    raw = Raw(port, timeout=READ_TIMEOUT)
    replies: list[bytes] = []
    cas = b"0"
    try:
        for data, count in steps:
            if data.startswith(b"stats sizes_"):  # memcached ends these with no END (see below)
                # a stored marker, read back, tells where the answer ends on either server
                raw.send(data + b"set %s 0 0 1 noreply\r\nx\r\nget %s\r\n" % (MARK, MARK))
                replies.append(raw.readline())
                while not raw.readline().startswith(b"VALUE %s " % MARK):
                    pass
                assert raw.readline() == b"x\r\n" and raw.readline() == b"END\r\n"
                continue
            replies.append(raw.ask(data.replace(b"{cas}", cas), count))
            for line in replies[-1].split(b"\r\n"):
                if line.startswith(b"VALUE ") and line.count(b" ") == 4:
                    cas = line.rsplit(b" ", 1)[1]
        # one more request first: memcached frees what its last answer still held only then
        assert raw.ask(b"get %s\r\n" % SYNC) == b"END\r\n"
        return replies, {group: stat_group(raw, group) for group in GROUPS}
    finally:
        raw.close()


def set_line(key: bytes, size: int, flags: int = 0, exptime: int = 0, verb: bytes = b"set") -> bytes:
    """A storage command with a value of ``size`` bytes (the key, repeated)."""
    return b"%s %s %d %d %d\r\n%s\r\n" % (verb, key, flags, exptime, size, (key * size)[:size])


def set_number(key: bytes, number: int) -> bytes:
    return b"set %s 0 0 %d\r\n%d\r\n" % (key, len(b"%d" % number), number)


def differences(theirs: Stats, ours: Stats, different: dict[str, str]) -> list[str]:
    """Every key that is missing, out of memcached's order or of another
    value, less those ``different`` names."""
    found = []
    for group in GROUPS:
        mine, reference = ours[group], theirs[group]
        names = list(reference)
        extra = group in ("", "settings")  # this server's own keys follow memcached's
        if (list(mine)[: len(names)] if extra else list(mine)) != names:
            found.append(f"stats {group}: keys {list(mine)} are not memcached's {names}")
            continue
        for name in names:
            if mine[name] != reference[name] and not any(fnmatch.fnmatchcase(name, p) for p in different):
                found.append(f"stats {group}: {name} is {mine[name]}, memcached's {reference[name]}")
    return found


def both(memcached_port: int, our_port: int, steps: list[tuple[bytes, int]]) -> tuple[Stats, Stats]:
    """The traffic to both servers (the same replies, or the test fails), then their stats."""
    theirs_replies, theirs = run(memcached_port, steps)
    ours_replies, ours = run(our_port, steps)
    for (data, _), mine, reference in zip(steps, ours_replies, theirs_replies, strict=True):
        assert mine == reference, f"sent {data[:120]!r}: memcached {reference[:200]!r}, ours {mine[:200]!r}"
    return theirs, ours


# -- the traffic -----------------------------------------------------------------

#: value sizes that land in many classes (1 to 39 of memcached's defaults)
SIZES = (1, 10, 50, 100, 300, 600, 1000, 3000, 10000, 50000, 100000, 300000)
#: past the largest chunk (512 KiB): memcached chunks it, header in a small class
CHUNKED = 600000


def key(size: int, i: int) -> bytes:
    return b"k%d_%d" % (size, i)


def stored_keys() -> list[bytes]:
    return [key(size, i) for size in SIZES for i in range(3)] + [b"big"]


def traffic() -> list[tuple[bytes, int]]:
    """Everything but eviction; see the module docstring."""
    steps: list[tuple[bytes, int]] = []
    add = steps.append
    for size in SIZES:
        add((b"".join(set_line(key(size, i), size, flags=i * 7) for i in range(3)), 3))  # flags 0 take no room
    add((set_line(b"big", CHUNKED), 1))
    add((b"get k1_0 k10_1 k300_2 nope big k100000_0\r\n", 1))
    add((b"gets k100_0\r\nget nope\r\nget k1_0\r\n", 3))
    # expiry: stored already expired, read at once (get_expired), or stored over (also get_expired)
    add((set_line(b"past", 5, exptime=1_000_000_000) + b"get past\r\n", 2))
    add((set_line(b"neg", 5, exptime=-1) + set_line(b"neg", 2), 2))
    add((set_line(b"t", 3) + b"touch t -1\r\nget t\r\n", 3))
    add((b"touch k10_0 100\r\ntouch nope 10\r\ngat 100 k50_0 nope\r\ngats 100 k600_1\r\n", 4))
    # counters: a number that grows out of its item links a new one, one that fits stays
    add((set_number(b"n", 1) + b"incr n 1\r\n" * 12, 13))
    add((b"decr n 5\r\ndecr n 1\r\nincr n 100\r\nincr n 18446744073709551615\r\n", 4))
    add((b"incr nope 1\r\ndecr nope 1\r\nincr k1_0 1\r\n", 3))
    add((b"gets k300_0\r\n", 1))
    add((b"cas k300_0 0 0 3 {cas}\r\nabc\r\ncas k300_0 0 0 3 {cas}\r\nabc\r\ncas nope 0 0 1 1\r\nx\r\n", 3))
    add((b"cas k3000_0 0 0 1 0\r\nx\r\n", 1))
    add((b"delete k1_1\r\ndelete nope\r\n", 2))
    add((set_line(b"k10_0", 5, verb=b"append") + set_line(b"k10_0", 2, verb=b"prepend"), 2))
    add((set_line(b"k10_0", 1, verb=b"add") + set_line(b"nope", 1, verb=b"replace"), 2))
    add((set_line(b"k50_1", 3000, verb=b"replace"), 1))  # to another class
    # flush: every item stored before is looked up in the same write (get_flushed)
    lookups = [k for k in stored_keys() if k not in (b"k1_1",)] + [b"n", b"neg"]
    add(
        (
            b"flush_all\r\nget %s\r\n" % b" ".join(lookups[:-6])
            + set_line(lookups[-6], 4)  # a set finds the flushed item first
            + b"delete %s\r\nincr %s 1\r\ntouch %s 0\r\n" % tuple(lookups[-5:-2])
            + b"get %s\r\n" % b" ".join(lookups[-2:]),
            7,
        )
    )
    add((set_line(b"after", 20) + b"get after\r\n", 2))
    return steps


# -- the servers -------------------------------------------------------------------------


@pytest.fixture
def memcached_port() -> Iterator[int]:
    with running_memcached() as port:
        yield port


def undisturbed(start_server, steps: list[tuple[bytes, int]], tries: int = 5) -> tuple[Stats, Stats]:
    """:func:`both`, on new servers, until memcached's background threads did
    not get in the way. Its LRU maintainer and crawler run when they like: on
    a loaded machine they sometimes reclaim a flushed or expired item between
    the command that ended it and the lookup that follows in the same write
    (the lookup then counts no ``get_flushed``, and ``reclaimed`` one more),
    or hold an item they look at while the stats are read (its chunk then
    counts as used though no item is linked in it)."""
    for _ in range(tries):
        with running_memcached() as port:
            theirs, ours = both(port, start_server().port, steps)
        general, items, slabs = theirs[""], theirs["items"], theirs["slabs"]
        linked = sum(int(v) for k, v in items.items() if k.endswith(":number"))
        used = sum(int(v) for k, v in slabs.items() if k.endswith(":used_chunks"))
        if general["reclaimed"] == general["crawler_reclaimed"] == "0" and used == linked:
            return theirs, ours
    raise AssertionError(f"memcached's background threads got in the way {tries} times in a row")


def test_every_stats_key_as_memcached_after_the_same_traffic(start_server) -> None:
    theirs, ours = undisturbed(start_server, traffic())
    assert differences(theirs, ours, DIFFERENT) == []
    # the traffic did reach every kind of counter, on both
    general = ours[""]
    for name in ("get_expired", "get_flushed", "cas_hits", "cas_badval", "touch_hits", "incr_hits", "decr_hits"):
        assert int(general[name]) > 0, name
    assert int(ours["slabs"]["active_slabs"]) >= 12 and ours["sizes"] == {"sizes_status": "disabled"}
    assert_segments_add_up(theirs)
    assert_segments_add_up(ours)


def assert_segments_add_up(stats: Stats) -> None:
    """What differs by LRU segment adds up to what does not."""
    items = stats["items"]
    for name, number in items.items():
        if name.endswith(":number"):
            prefix = name[: -len("number")]
            parts = sum(int(items[prefix + part]) for part in ("number_hot", "number_warm", "number_cold"))
            assert parts == int(number), name
            hits = sum(int(items[prefix + f"hits_to_{part}"]) for part in ("hot", "warm", "cold", "temp"))
            assert hits == int(stats["slabs"][prefix[len("items:") :] + "get_hits"]), name


def test_stats_reset_resets_what_memcached_resets(start_server) -> None:
    steps = traffic() + [(b"stats reset\r\n", 1), (set_line(b"later", 40) + b"get later k10_0\r\n", 2)]
    theirs, ours = undisturbed(start_server, steps)
    assert differences(theirs, ours, DIFFERENT) == []
    assert ours[""]["total_items"] == "1" and ours[""]["get_flushed"] == "0"  # counters start over...
    assert int(ours[""]["curr_items"]) > 1  # ...what is held does not


def test_stats_sizes_as_memcached(memcached_port: int, server) -> None:
    steps = [
        (set_line(b"before", 100), 1),
        (b"stats sizes_enable\r\n", 1),
        (b"".join(set_line(b"s%d" % size, size) for size in (1, 30, 31, 200, 5000)), 5),
        (set_line(b"s30", 31), 1),
    ]
    different = {**DIFFERENT, "bytes_written": "memcachedlite ends stats sizes_enable with END (see below)"}
    theirs, ours = both(memcached_port, server.port, steps)
    assert differences(theirs, ours, different) == []
    assert ours["sizes"] == theirs["sizes"] and len(ours["sizes"]) >= 3  # items stored after sizes_enable only
    assert ours["settings"]["track_sizes"] == "yes"
    steps = [(b"stats sizes_disable\r\n", 1), (set_line(b"s31", 100), 1)]
    theirs, ours = both(memcached_port, server.port, steps)
    assert differences(theirs, ours, different) == []
    assert ours["sizes"] == {"sizes_status": "disabled"} and ours["settings"]["track_sizes"] == "no"


def test_sizes_enable_ends_its_answer_unlike_memcached(memcached_port: int, server) -> None:
    """A deliberate difference: memcached 1.6.18 answers ``stats sizes_enable``
    and ``stats sizes_disable`` without the ``END`` that ends every other
    ``stats`` answer (a client waiting for it hangs); memcachedlite sends it."""
    for port, ended in ((memcached_port, False), (server.port, True)):
        raw = Raw(port, timeout=READ_TIMEOUT)
        try:
            for word in (b"enable", b"disable"):
                raw.send(b"stats sizes_%s\r\nversion\r\n" % word)
                assert raw.readline() == b"STAT sizes_status %sd\r\n" % word
                after = raw.readline()
                assert (after == b"END\r\n") == ended
                assert (raw.readline() if ended else after).startswith(b"VERSION ")
        finally:
            raw.close()


def test_classes_without_cas_as_memcached_with_minus_capital_c(start_server) -> None:
    """Under -C items are 8 bytes smaller: some fall in smaller classes."""
    running = start_server()
    running.store.disable_cas()
    steps = [(b"".join(set_line(key(size, 0), size) for size in (29, 30, 37, 38, 500, 521)), 6)]
    steps.append((b"get k29_0 k521_0\r\n", 1))
    with running_memcached("-C") as port:
        theirs, ours = both(port, running.port, steps)
    assert differences(theirs, ours, DIFFERENT) == []
    assert ours["settings"]["cas_enabled"] == "no"


def test_evictions_under_a_small_memory_limit(start_server) -> None:
    running = start_server(memory_limit=2 * 1024 * 1024)

    def five_hundred(first: int, exptime: int) -> tuple[bytes, int]:
        return b"".join(set_line(b"e%05d" % i, 100, exptime=exptime) for i in range(first, first + 500)), 500

    # the first thousand never expire, the rest in an hour: evicted_nonzero counts the latter
    steps = [five_hundred(first, 3600 if first >= 1000 else 0) for first in range(0, 15000, 500)]
    steps += [(b"get e00000 e14999\r\n", 1), (set_line(b"small", 1), 1)]
    with running_memcached("-m", "2") as port:
        theirs, ours = both(port, running.port, steps)
    assert differences(theirs, ours, {**DIFFERENT, **DIFFERENT_UNDER_EVICTION}) == []
    for stats in (theirs, ours):  # both evicted, and count it the same way
        general, items = stats[""], stats["items"]
        assert int(general["evictions"]) > 0 and general["evictions"] == general["evicted_unfetched"]
        assert int(general["curr_items"]) + int(general["evictions"]) == 15001
        evicted = sum(int(v) for k, v in items.items() if k.endswith(":evicted"))
        nonzero = sum(int(v) for k, v in items.items() if k.endswith(":evicted_nonzero"))
        assert evicted == int(general["evictions"]) and 0 < nonzero < evicted
    assert int(ours[""]["bytes_in_memory"]) <= 2 * 1024 * 1024  # the limit holds what the items really take


def test_chunked_items_as_memcached_lays_them_out(memcached_port: int, server) -> None:
    """Items past the largest chunk (512 KiB): a header in a small class,
    chunks of the largest class and a last, smaller one, in ``stats slabs``."""
    steps = [(set_line(b"c1", 600_000) + set_line(b"c2", 900_000, flags=9) + set_line(b"c3", 524_200), 3)]
    steps.append((b"get c1\r\n", 1))
    theirs, ours = both(memcached_port, server.port, steps)
    assert differences(theirs, ours, DIFFERENT) == []
    assert int(ours["slabs"]["active_slabs"]) >= 4


def test_metadump_names_memcacheds_class_and_size(memcached_port: int, server) -> None:
    """``lru_crawler metadump`` (what ``mcl dump`` and memcached-tool read)
    gives each item memcached's class and size, as ``stats items`` counts it."""
    steps = [(b"".join(set_line(key(size, 0), size, flags=size % 3) for size in SIZES[:8]), 8)]
    steps.append((b"get k10_0\r\n", 1))
    both(memcached_port, server.port, steps)

    def dumped(port: int) -> set[tuple[bytes, ...]]:
        raw = Raw(port, timeout=READ_TIMEOUT)
        try:
            raw.send(b"lru_crawler metadump all\r\n")
            reply = raw.readline()  # item lines end with a bare LF, END with CRLF
            while not reply.endswith(b"END\r\n"):
                reply += raw.readline()
            lines = reply[: -len(b"END\r\n")].rstrip(b"\n").split(b"\n")
        finally:
            raw.close()
        fields = [dict(field.split(b"=", 1) for field in line.split(b" ")) for line in lines]
        return {(f[b"key"], f[b"cls"], f[b"size"], f[b"fetch"]) for f in fields}

    theirs = dumped(memcached_port)
    assert dumped(server.port) == theirs and len(theirs) == 8


# -- one counter at a time (issue 23, item 2) ------------------------------------------------


COUNTERS = {
    "total_items": [
        # memcached links a new item for a number that outgrows its item, not for one that fits
        set_number(b"n", 1) + b"incr n 1\r\n" * 9 + b"incr n 1\r\n" * 5,
        b"decr n 3\r\ndecr n 1\r\ndecr n 1\r\nincr n 1\r\n",
        set_number(b"m", 10) + b"incr m 99999\r\n" + set_line(b"m", 3, verb=b"append") + set_line(b"x", 1, verb=b"add"),
    ],
    "get_expired": [
        set_line(b"a", 1, exptime=1_000_000_000) + b"get a\r\n",
        set_line(b"b", 1, exptime=-1) + set_line(b"b", 1),
        set_line(b"c", 1) + b"touch c -1\r\nget c\r\ndelete c\r\n",
        set_number(b"d", 5).replace(b" 0 0 ", b" 0 1000000000 ") + b"incr d 1\r\ntouch d 0\r\n",
    ],
    "get_flushed": [
        set_line(b"a", 1) + set_line(b"b", 1) + set_line(b"c", 1) + set_line(b"d", 1) + set_line(b"e", 1),
        b"flush_all\r\nget a\r\n" + set_line(b"b", 1) + b"delete c\r\nincr d 1\r\ntouch e 0\r\nget nope\r\n",
    ],
    "bytes": [
        b"".join(set_line(b"k%d" % size, size, flags=size % 2) for size in (0, 1, 9, 10, 99, 1000, 100000)),
        set_number(b"n", 10) + b"incr n 99\r\ndecr n 95\r\n" + set_line(b"k0", 4, verb=b"append") + b"delete k1\r\n",
    ],
}


@pytest.mark.parametrize("counter", sorted(COUNTERS))
def test_counter_counts_as_memcached(counter: str, start_server) -> None:
    steps = []
    for data in COUNTERS[counter]:
        # one reply per command line (a data block is not one)
        replies = sum(1 for line in data.split(b"\r\n") if line.split(b" ")[0] in _VERBS)
        steps.append((data, replies))
    theirs, ours = undisturbed(start_server, steps)
    assert ours[""][counter] == theirs[""][counter]
    assert ours[""][counter] != "0"
    assert differences(theirs, ours, DIFFERENT) == []


_VERBS = {b"set", b"add", b"append", b"get", b"incr", b"decr", b"touch", b"delete", b"flush_all"}
