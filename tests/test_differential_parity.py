"""Differential tests of issue 14's corners: the same bytes to the real
memcached 1.6.18 and to memcachedlite, the replies compared byte for byte.

The harness (scenarios, sync markers, cas normalisation) is
:mod:`tests.test_differential`'s; this file adds the scenarios for unsigned
32-bit exptimes, token counts, the removal of a value whose update was
refused, the HTTP hang-up, ``stats detail``, ``stats cachedump``,
``cache_memlimit``, ``slabs`` and ``shutdown``, and compares the servers
started with memcached's switches (``-A``, ``-F``, ``-C``) against
``mcl serve`` with the matching ones.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from memcachedlite import Settings
from tests.conftest import Raw, running_memcached
from tests.test_cli import run_serve
from tests.test_differential import (
    BIG,
    READ_TIMEOUT,
    Conversation,
    S,
    Scenario,
    converse,
    shared_memcached,  # noqa: F401 - a fixture, used by name
    show,
)

pytestmark = pytest.mark.external  # each test compares with the real memcached


def _set(key: bytes, value: bytes, exptime: bytes = b"0", verb: bytes = b"set") -> bytes:
    return b"%s %s 0 %s %d\r\n%s\r\n" % (verb, key, exptime, len(value), value)


#: What libmemcached sends for a negative exptime, and the numbers around the
#: edges of memcached's reading (low 32 bits of a 64-bit strtol, signed).
EXPIRED_NOW = [b"4294967295", b"4294967196", b"2147483648", b"9223372036854775807", b"-9223372036854775808"]
KEPT = [b"4294967296", b"4294967396", b"8589934592", b"+100", b"-4294967196"]

EXPTIME = [
    *[S(f"set-exptime-{e.decode()}", _set(b"k", b"x", e), b"get k\r\n") for e in EXPIRED_NOW + KEPT],
    # past 64 bits: a bad line (a set would differ only in its data block, swallowed here)
    S("gat-exptime-past-64-bits", _set(b"k", b"x"), b"gat 9223372036854775808 k\r\n"),
    S("gat-exptime-below-64-bits", _set(b"k", b"x"), b"gat -9223372036854775809 k\r\n"),
    *[
        S(f"{verb.decode()}-exptime-u32", _set(b"k", b"old"), _set(b"k", b"x", b"4294967295", verb), b"get k\r\n")
        for verb in (b"add", b"replace", b"append", b"prepend")
    ],
    S("set-exptime-u32-removes-old", _set(b"k", b"old"), _set(b"k", b"new", b"4294967295"), b"get k\r\n"),
    S("cas-exptime-4294967295", _set(b"k", b"x"), b"gets k\r\n", b"cas k 0 4294967295 1 {cas1}\r\ny\r\n", b"get k\r\n"),
    S("touch-4294967295", _set(b"k", b"x"), b"touch k 4294967295\r\n", b"get k\r\n"),
    S("touch-4294967396", _set(b"k", b"x"), b"touch k 4294967396\r\n", b"get k\r\n"),
    S("touch-past-64-bits", _set(b"k", b"x"), b"touch k 9223372036854775808\r\n", b"get k\r\n"),
    S("gat-4294967295", _set(b"k", b"x"), b"gat 4294967295 k\r\n", b"get k\r\n"),
    S("gats-4294967295", _set(b"k", b"x"), b"gats 4294967295 k\r\n", b"get k\r\n"),
    S("gat-4294967396", _set(b"k", b"x"), b"gat 4294967396 k\r\n", b"get k\r\n"),
    S("flush-all-4294967295", _set(b"k", b"x"), b"flush_all 4294967295\r\n", b"get k\r\n"),
    S("meta-set-T4294967295", b"ms k 1 T4294967295\r\nx\r\n", b"mg k v\r\n"),
    S("meta-set-T4294967396", b"ms k 1 T4294967396\r\nx\r\n", b"mg k v\r\n"),
    S("meta-get-T4294967295", _set(b"k", b"x"), b"mg k T4294967295\r\n", b"mg k v\r\n"),
    S("meta-get-N4294967295", b"mg n N4294967295 v\r\n", b"mg n v\r\n"),
    S("meta-arithmetic-N4294967295", b"ma n N4294967295 J5\r\n", b"mg n v\r\n"),
]

#: Wrong numbers of tokens: memcached's bare ERROR, even with noreply, and
#: an optional last token that is ignored unless it is noreply.
TOKENS = [
    S("arity-get-no-key", b"get\r\n"),
    S("arity-gets-no-key", b"gets\r\n"),
    S("arity-gat-nothing", b"gat\r\ngats\r\n"),
    S("arity-gat-no-key", b"gat 0\r\ngats 0\r\n"),
    S("arity-gat-bad-exptime-no-key", b"gat abc\r\n"),
    S("arity-incr-no-delta", b"incr k\r\ndecr k\r\n"),
    S("arity-touch-no-exptime", b"touch k\r\n"),
    S("arity-delete-no-key", b"delete\r\n"),
    S("arity-delete-five", b"delete a b c d e\r\n"),
    S("arity-delete-four", b"delete a b c d\r\n"),
    S("arity-delete-hold-junk", _set(b"k", b"x"), b"delete k 0 junk\r\n", b"get k\r\n"),
    S("arity-delete-junk-noreply", b"delete k x noreply\r\n"),
    S("arity-verbosity", b"verbosity\r\n"),
    S("arity-cas-no-unique", b"cas k 0 0 1\r\n"),
    S("arity-cas-too-many", b"cas k 0 0 1 1 noreply x\r\n"),
    S("arity-set-too-many", b"set k 0 0 1 2 3\r\n"),
    S("arity-set-three-arguments", b"set k 0 0\r\n"),
    S("arity-set-one-argument", b"set k\r\nadd k\r\nreplace k\r\nappend k\r\nprepend k\r\n"),
    S("arity-set-junk-last-token", b"set k 0 0 1 junk\r\nx\r\n", b"get k\r\n"),
    S("arity-set-two-noreply", b"set k 0 0 1 noreply noreply\r\n"),
    S("arity-incr-extra-token", b"incr k 1 junk\r\n"),
    S("arity-incr-two-noreply", b"incr k 1 noreply noreply\r\n"),
    S("arity-touch-extra-token", b"touch k 0 junk\r\n"),
    S("arity-flush-all-extra-token", _set(b"k", b"x"), b"flush_all 0 junk\r\n", b"get k\r\n"),
    S("arity-flush-all-three", b"flush_all 0 0 0\r\n"),
    S("arity-errors-ignore-noreply", b"get noreply\r\nincr noreply\r\ncas k 0 0 noreply\r\n"),
    S("arity-quit-with-words", _set(b"k", b"x"), b"quit now\r\nget k\r\n"),
    S("arity-stats-two-words", b"stats nothing here\r\n"),
    S("one-letter-verb", b"g\r\n"),
]

#: A set (or ms) refused as too large removes the old value; other verbs keep it.
TOO_LARGE = [
    S("too-large-set-removes-old", _set(b"k", b"old"), b"set k 0 0 %d\r\n%s\r\n" % (BIG, b"x" * BIG), b"get k\r\n"),
    S(
        "too-large-set-noreply-removes-old",
        _set(b"k", b"old"),
        b"set k 0 0 %d noreply\r\n%s\r\n" % (BIG, b"x" * BIG),
        b"get k\r\n",
    ),
    S("too-large-ms-removes-old", _set(b"k", b"old"), b"ms k %d T0\r\n%s\r\n" % (BIG, b"x" * BIG), b"mg k v\r\n"),
    S("too-large-ms-append-removes", _set(b"k", b"old"), b"ms k %d MA\r\n%s\r\n" % (BIG, b"x" * BIG), b"mg k v\r\n"),
    S("too-large-ms-quiet-removes-old", _set(b"k", b"old"), b"ms k %d q\r\n%s\r\n" % (BIG, b"x" * BIG), b"mg k v\r\n"),
    S("too-large-ms-base64-key", _set(b"k", b"old"), b"ms aw== %d b\r\n%s\r\n" % (BIG, b"x" * BIG), b"mg k v\r\n"),
    S("too-large-add-keeps-old", _set(b"k", b"old"), b"add k 0 0 %d\r\n%s\r\n" % (BIG, b"x" * BIG), b"get k\r\n"),
]

HTTP = [
    S("http-get", _set(b"k", b"x"), b"GET / HTTP/1.0\r\nget k\r\n"),
    S("http-put", b"PUT /x HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    S("http-post", b"POST /cache HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
    S("http-delete-no-path", b"DELETE HTTP/1.1\r\n"),
    S("http-head", b"HEAD / HTTP/1.0\r\n"),
    S("http-any-verb", b"bogus HTTP/1.1\r\n"),
    S("http-after-commands", _set(b"k", b"x"), b"get k\r\n", b"OPTIONS * HTTP/1.1\r\n"),
    S("http-lowercase-get-is-a-get", b"get / HTTP/1.0\r\n"),
    S("http-lowercase-delete-is-a-delete", b"delete / HTTP/1.1\r\n"),
    S("http-word-not-last", b"bogus HTTP/1.1 x\r\n"),
]

#: ``stats detail``: each scenario starts from ``stats reset`` (which forgets the
#: prefixes) and ends with counting off, as the memcached is shared. One prefix
#: per dump: memcached lists prefixes in its hash table's order.
DETAIL = [
    S(
        "detail-counts-get-set-delete",
        b"stats reset\r\n",
        b"stats detail on\r\n",
        _set(b"a:b", b"x"),
        b"get a:b a:c\r\ngets a:b\r\ngat 0 a:b a:d\r\ngats 0 a:b\r\n",
        b"delete a:c\r\ndelete a:b\r\n",
        b"get nocolon\r\n" + _set(b"nocolon", b"x"),
        b"stats detail dump\r\n",
        b"stats detail off\r\n",
        b"get a:b\r\n" + _set(b"a:b", b"x"),
        b"stats detail dump\r\n",
    ),
    S(
        "detail-counts-every-storage-verb",
        b"stats reset\r\nstats detail on\r\n",
        _set(b"p:k", b"x") + _set(b"p:k", b"y", verb=b"add") + _set(b"p:k", b"z", verb=b"replace"),
        _set(b"p:k", b"1", verb=b"append") + _set(b"p:k", b"2", verb=b"prepend"),
        b"cas p:k 0 0 1 1\r\nx\r\nincr p:k 1\r\ntouch p:k 0\r\n",
        b"stats detail dump\r\nstats detail off\r\n",
    ),
    S(
        "detail-empty-prefix-and-later-colons",
        b"stats reset\r\nstats detail on\r\n",
        _set(b":x", b"1") + _set(b"::y", b"2") + b"get :x\r\n",
        b"stats detail dump\r\nstats detail off\r\n",
    ),
    S(
        "detail-counts-refused-sets",
        b"stats reset\r\nstats detail on\r\n",
        b"set a:1 0 0 %d\r\n%s\r\n" % (BIG, b"x" * BIG),
        b"set a:2 0 0 1\r\nxy\r\nset a:3 0 0 1 noreply\r\nxy\r\n",
        b"cas a:4 0 0 %d 1\r\n%s\r\n" % (BIG, b"x" * BIG),
        b"ms a:5 %d\r\n%s\r\n" % (BIG, b"x" * BIG),
        b"stats detail dump\r\nstats detail off\r\n",
    ),
    S(
        "detail-skips-keys-too-long",
        b"stats reset\r\nstats detail on\r\n",
        b"delete b:%s\r\n" % (b"k" * 249),
        b"get b:%s\r\n" % (b"k" * 249),  # its own step: memcached drops replies queued before a bad get
        _set(b"b:ok", b"x") + b"delete b:ok\r\n",
        b"stats detail dump\r\nstats detail off\r\n",
    ),
    S("detail-reset-forgets", b"stats detail on\r\n" + _set(b"r:k", b"x"), b"stats reset\r\nstats detail dump\r\n"),
    S("detail-usage", b"stats detail\r\nstats detail foo\r\nstats detail ON\r\n", b"stats detail off extra\r\n"),
    S("detail-dump-when-never-on", b"stats reset\r\nstats detail off\r\nstats detail dump\r\n"),
]

CACHEDUMP_FORMS = [
    S("cachedump-no-arguments", b"stats cachedump\r\n"),
    S("cachedump-one-argument", b"stats cachedump 1\r\n"),
    S("cachedump-letters", b"stats cachedump x 1\r\nstats cachedump 1 x\r\n"),
    S("cachedump-negative", b"stats cachedump -1 0\r\nstats cachedump 1 -1\r\n"),
    S("cachedump-illegal-class", b"stats cachedump 64 0\r\nstats cachedump 200 1\r\n"),
    S("cachedump-empty-classes", b"stats cachedump 63 0\r\nstats cachedump 62 5 extra\r\n"),
]

#: The shared memcached's limit is put back to 64 MiB at the end of each.
MEMLIMIT = [
    S("memlimit-ok", b"cache_memlimit 100\r\n", b"cache_memlimit 64\r\n"),
    S("memlimit-too-small", b"cache_memlimit 7\r\ncache_memlimit 0\r\n"),
    S("memlimit-bytes-not-megabytes", b"cache_memlimit 2000000000\r\ncache_memlimit 1000000001\r\n"),
    S("memlimit-not-a-number", b"cache_memlimit x\r\ncache_memlimit -1\r\ncache_memlimit 1.5\r\n"),
    S("memlimit-arity", b"cache_memlimit\r\ncache_memlimit 64 noreply x\r\n"),
    S("memlimit-noreply", b"cache_memlimit 64 noreply\r\ncache_memlimit 7 noreply\r\ncache_memlimit x noreply\r\n"),
    S("memlimit-junk-last-token", b"cache_memlimit 64 junk\r\n"),
]

#: The shared memcached's automove is put back to 1 (its default) at the end of each.
SLABS = [
    S("slabs-automove", b"slabs automove 0\r\nslabs automove 2\r\nslabs automove 1\r\n"),
    S("slabs-automove-bad-level", b"slabs automove 3\r\nslabs automove x\r\nslabs automove -1\r\n"),
    S("slabs-automove-noreply", b"slabs automove 1 noreply\r\nslabs automove x noreply\r\nslabs automove\r\n"),
    S(
        "slabs-automove-ratio",
        b"slabs automove ratio 0.5\r\nslabs automove ratio\r\nslabs automove ratio x\r\nslabs automove ratio 0.8\r\n",
    ),
    S(
        "slabs-reassign",
        b"slabs reassign 1 2\r\nslabs reassign 1 1\r\nslabs reassign 1 100\r\nslabs reassign -1 2\r\n",
        b"slabs reassign 0 2\r\nslabs reassign 39 2\r\nslabs reassign 40 2\r\nslabs reassign 2 39\r\n",
        b"slabs reassign 2 40\r\nslabs reassign -1 -1\r\nslabs reassign 4294967297 1\r\n",
    ),
    S("slabs-reassign-bad", b"slabs reassign x 2\r\nslabs reassign 1\r\nslabs reassign 1 2 3\r\n"),
    S("slabs-other", b"slabs\r\nslabs bogus\r\nslabs bogus 1\r\n"),
]

STATS_GROUPS = [
    S("stats-sizes", b"stats sizes\r\n"),
    S("stats-unknown-group", b"stats bogus\r\nstats bogus more words\r\n"),
]

SHUTDOWN_DISABLED = [
    S("shutdown-not-enabled", b"shutdown\r\nshutdown graceful\r\nshutdown x\r\nshutdown graceful x\r\n"),
]

SCENARIOS = (
    EXPTIME + TOKENS + TOO_LARGE + HTTP + DETAIL + CACHEDUMP_FORMS + MEMLIMIT + SLABS + STATS_GROUPS + SHUTDOWN_DISABLED
)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_same_replies_as_memcached(scenario: Scenario, shared_memcached: int, server) -> None:  # noqa: F811
    theirs = converse(shared_memcached, scenario)
    ours = converse(server.port, scenario)
    assert ours == theirs, show(scenario, theirs, ours)


# -- stats ------------------------------------------------------------------------------


def _stat_names(port: int, group: bytes = b"") -> list[bytes]:
    raw = Raw(port, timeout=READ_TIMEOUT)
    try:
        reply = raw.ask(b"stats%s\r\n" % (b" " + group if group else b""))
    finally:
        raw.close()
    assert reply.endswith(b"END\r\n")
    return [line.split(b" ")[1] for line in reply.split(b"\r\n")[:-2]]


def test_general_stats_keys_in_memcacheds_order(shared_memcached: int, server) -> None:  # noqa: F811
    theirs = _stat_names(shared_memcached)
    ours = _stat_names(server.port)
    assert len(theirs) >= 85 and len(set(theirs)) == len(theirs)
    assert ours[: len(theirs)] == theirs
    assert b"bytes_in_memory" in ours[len(theirs) :]  # the project's own keys come after memcached's


def test_settings_stats_keys_in_memcacheds_order(shared_memcached: int, server) -> None:  # noqa: F811
    theirs = _stat_names(shared_memcached, b"settings")
    ours = _stat_names(server.port, b"settings")
    assert ours[: len(theirs)] == theirs
    assert ours[len(theirs) :] == [b"dialect", b"data_file", b"fsync", b"memory_only", b"build"]


def test_idle_kicks_shown_as_memcached_shows_it(start_server) -> None:
    """memcached lists idle_kicks only when connections can idle out."""
    with running_memcached("-o", "idle_timeout=5") as port:
        theirs = _stat_names(port)
    ours = _stat_names(start_server(server_options={"idle_timeout": 5}).port)
    assert b"idle_kicks" in theirs
    assert ours[: len(theirs)] == theirs


# -- memcached's switches: -F, -C, -A ---------------------------------------------------------


def _without_flush(port: int, scenario: Scenario) -> list[bytes]:
    """:func:`converse` without its opening flush_all: under -C, memcached
    hides items stored in the second of a flush_all (it has no cas to tell
    them apart), so a fresh server is used instead."""
    talk = Conversation(port)
    try:
        return [talk.step(step) for step in scenario.steps]
    finally:
        talk.close()


def _compare_with(memcached_options: tuple[str, ...], ours: int, scenario: Scenario) -> None:
    with running_memcached(*memcached_options) as theirs_port:
        theirs = _without_flush(theirs_port, scenario)
    mine = _without_flush(ours, scenario)
    assert mine == theirs, show(scenario, theirs, mine)


FLUSH_DISABLED = Scenario(
    "flush-all-disabled",
    (
        _set(b"k", b"x"),
        b"flush_all\r\nflush_all 0\r\nflush_all noreply\r\nflush_all x\r\nflush_all 10 noreply\r\n",
        b"flush_all 1 2 3\r\nget k\r\n",
    ),
)


def test_disable_flush_all_as_memcached_dash_f(start_server) -> None:
    """The scenario's own first step is a flush_all too: refused by both."""
    ours = start_server(settings=Settings(flush_enabled=False))
    _compare_with(("-F",), ours.port, FLUSH_DISABLED)


CAS_DISABLED = Scenario(
    "cas-disabled",
    (
        _set(b"k", b"x"),
        b"cas k 0 0 1 0\r\ny\r\ncas k 0 0 1 1\r\ny\r\ncas nope 0 0 1 0\r\ny\r\n",
        b"get k\r\n",
        b"mg k c v\r\nms k 1 c\r\nz\r\nms k 1 C0\r\nz\r\nms k 1 C5\r\nz\r\n",
        b"incr k 1\r\nmg k c\r\n",
    ),
)


def test_disable_cas_as_memcached_dash_c(start_server) -> None:
    running = start_server()
    running.store.disable_cas()
    _compare_with(("-C",), running.port, CAS_DISABLED)


def _gets_cas(port: int) -> bytes:
    raw = Raw(port, timeout=READ_TIMEOUT)
    try:
        return raw.ask(b"set k 0 0 1\r\nx\r\ngets k\r\n", replies=2)
    finally:
        raw.close()


def test_disable_cas_gives_cas_zero_as_memcached(start_server) -> None:
    """The harness numbers cas values; here the raw 0 itself is compared."""
    running = start_server()
    running.store.disable_cas()
    with running_memcached("-C") as port:
        theirs = _gets_cas(port)
    assert theirs == b"STORED\r\nVALUE k 0 1 0\r\nx\r\nEND\r\n"
    assert _gets_cas(running.port) == theirs


SHUTDOWN_MODES = Scenario("shutdown-modes", (b"shutdown x\r\nshutdown graceful x\r\nshutdown now please\r\n",))


@pytest.mark.parametrize("words", [b"shutdown", b"shutdown graceful"])
def test_shutdown_enabled_as_memcached_dash_a(words: bytes, spawn) -> None:
    """Both hang up without a reply and stop; the malformed forms answer alike."""
    ours = spawn("--enable-shutdown")
    _compare_with(("-A",), ours.port, SHUTDOWN_MODES)
    with running_memcached("-A") as port:
        theirs = converse(port, Scenario("shutdown", (words + b"\r\n",)))
    assert theirs == [b"<connection closed by the server>"]
    assert converse(ours.port, Scenario("shutdown", (words + b"\r\n",))) == theirs
    assert ours.wait(20) == 0
    assert "shutdown command, shutting down" in ours.output()


# -- stats cachedump: a fresh memcached, whose LRU holds only this test's items ------------------

#: Items for classes 1 (small; p is 96 bytes, the most class 1 holds), 2 (q one byte
#: more, r with flags), 4 (a 100-byte value with flags) and 13 (1200 bytes).
CACHEDUMP_ITEMS = (
    _set(b"a", b"x")
    + _set(b"b", b"y", b"2000000000")
    + b"set c 5 0 100\r\n%s\r\n" % (b"v" * 100)
    + _set(b"d", b"12")
    + _set(b"e", b"z" * 1200)
    + _set(b"p", b"p" * 36)
    + _set(b"q", b"q" * 37)
    + b"set r 1 0 33\r\n%s\r\n" % (b"r" * 33)
)
CACHEDUMP_ASKS = b"".join(
    b"stats cachedump %d %d\r\n" % (class_id, limit) for class_id in (1, 2, 4, 13) for limit in (0, 1, 2)
)


def _dump(raw: Raw, asks: bytes) -> bytes:
    """Send ``stats cachedump`` lines and read their replies (ITEM lines, each up to END)."""
    raw.send(asks)
    while raw.buf.count(b"END\r\n") < asks.count(b"\n"):
        raw._fill()
    reply, raw.buf = raw.buf, b""
    return reply


def _cachedump(port: int, settle: bool) -> bytes:
    raw = Raw(port, timeout=READ_TIMEOUT)
    try:
        assert raw.ask(CACHEDUMP_ITEMS, replies=8) == b"STORED\r\n" * 8
        if settle:  # memcached's LRU maintainer moves new items to the dumped (cold) LRU shortly after
            settled = b"".join(b"stats cachedump %d 0\r\n" % class_id for class_id in (1, 2, 4, 13))
            for _ in range(100):
                if _dump(raw, settled).count(b"ITEM ") == 8:
                    break
                time.sleep(0.05)
        return _dump(raw, CACHEDUMP_ASKS)
    finally:
        raw.close()


def test_cachedump_as_memcached(server) -> None:
    with running_memcached() as port:
        theirs = _cachedump(port, settle=True)
    # limits 0, 1, 2 over classes 1, 2, 4 and 13
    assert theirs.count(b"ITEM ") == (4 + 1 + 2) + (2 + 1 + 2) + (1 + 1 + 1) + (1 + 1 + 1)
    assert (
        b"ITEM p [36 b; 0 s]\r\nITEM d [2 b; 0 s]\r\nITEM b [1 b; 2000000000 s]\r\nITEM a [1 b; 0 s]\r\nEND\r\n"
        in theirs
    )
    assert _cachedump(server.port, settle=False) == theirs


# -- start-up checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("theirs_args", "our_args"),
    [
        (("-I", "1000"), ("--max-item-size", "1000")),
        (("-I", "1m", "-m", "1"), ("--max-item-size", "1m", "-m", "1")),
        (("-I", "33m"), ("--max-item-size", "33m")),
    ],
)
def test_item_size_start_up_checks_as_memcached(tmp_path: Path, theirs_args: tuple, our_args: tuple) -> None:
    """The same sentence; the exit code is click's for a bad option (2), not sysexits' 64."""
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    theirs = subprocess.run(
        [binary, "-l", "127.0.0.1", "-p", "0", "-U", "0", "-u", "nobody", *theirs_args],
        capture_output=True,
        timeout=30,
    )
    assert theirs.returncode == 64
    message = theirs.stderr.decode().strip()
    assert message.startswith(("Item max size", "Cannot set item size"))
    ours = run_serve(tmp_path, "--port", "0", "--data-file", str(tmp_path / "d.txt"), *our_args)
    assert ours.returncode == 2
    assert f"Error: {message}" in ours.stderr.decode()


# -- a burst of connections past the limit ----------------------------------------------------------


def _refusals(port: int, count: int) -> list[bytes]:
    """Open ``count`` connections that each send a command at once, read each
    (the served ones stay open, holding their places, until all are read), and
    return what the refused ones read before the server closed them."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) for _ in range(count)]
    got = []
    try:
        for sock in socks:
            data = b""
            try:
                sock.sendall(b"version\r\n")
                while chunk := sock.recv(4096):
                    data += chunk
                    if data.startswith(b"VERSION ") and data.endswith(b"\r\n"):
                        break  # served, not refused
            except ConnectionResetError:
                data += b"<reset>"
            got.append(data)
    finally:
        for sock in socks:
            sock.close()
    return [data for data in got if not data.startswith(b"VERSION ")]


def test_refusal_under_a_burst_as_memcached(start_server) -> None:
    """memcached (with room for about 40 connections here) refuses the rest with
    its line and closes; so does memcachedlite, for every refused client."""
    with running_memcached("-c", "40") as port:
        theirs = _refusals(port, 80)
    refusal = b"ERROR Too many open connections\r\n"
    assert refusal in theirs
    ours = _refusals(start_server(server_options={"max_connections": 30}).port, 80)
    assert len(ours) == 50 and set(ours) == {refusal}
