"""Raw-socket tests of the meta protocol for what the byte-for-byte comparison
with memcached 1.6.18 (``tests/test_meta_differential.py``) cannot cover:
flags from newer memcached (``E``, ``md x``), whole stale-while-revalidate
lifecycles, races between connections, anything that depends on time (run
against a store whose clock the test moves), counters, and what an error
leaves behind.
"""

from __future__ import annotations

import base64
import threading
from typing import Optional

import pytest

from tests.conftest import Raw

START = 1_800_000_000  # a unix time well past 30 days, so absolute TTLs are easy to tell


class Clock:
    """A store clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = float(START)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed(start_server, connect, clock: Clock) -> Raw:
    """A connection to a server whose store runs on ``clock``."""
    return connect(start_server(clock=clock).port)


def ms(key: bytes, value: bytes, flags: bytes = b"") -> bytes:
    return b"ms %s %d%s\r\n%s\r\n" % (key, len(value), b" " + flags if flags else b"", value)


def meta(reply: bytes) -> tuple[bytes, dict[str, bytes], Optional[bytes]]:
    """A meta reply as (code, {flag letter: rest}, data or None)."""
    line, _, rest = reply.partition(b"\r\n")
    code, *tokens = line.split(b" ")
    data = None
    if code == b"VA":
        size = int(tokens.pop(0))
        assert rest == rest[:size] + b"\r\n" and len(rest) == size + 2, reply
        data = rest[:size]
    else:
        assert rest == b"", reply
    flags = {t[:1].decode(): t[1:] for t in tokens}
    assert len(flags) == len(tokens), reply  # no letter twice
    return code, flags, data


def cas_of(conn: Raw, key: bytes) -> int:
    code, flags, _ = meta(conn.ask(b"mg %s c\r\n" % key))
    assert code == b"HD", code
    return int(flags["c"])


def me_fields(conn: Raw, key: bytes) -> dict[str, bytes]:
    line = conn.ask(b"me %s\r\n" % key)
    assert line.startswith(b"ME " + key + b" ") and line.endswith(b"\r\n"), line
    return dict(token.split(b"=", 1) for token in line.split()[2:])


def gets_cas(conn: Raw, key: bytes) -> int:
    reply = conn.ask(b"gets %s\r\n" % key)
    header = reply.split(b"\r\n")[0].split()
    assert header[:2] == [b"VALUE", key], reply
    return int(header[4])


# -- E: the client chooses the cas --------------------------------------------------


def test_ms_E_sets_the_cas_everywhere(raw: Raw) -> None:
    assert raw.ask(ms(b"k", b"hi", b"E500 c")) == b"HD c500\r\n"
    assert raw.ask(b"mg k c v\r\n") == b"VA 2 c500\r\nhi\r\n"
    assert gets_cas(raw, b"k") == 500
    # a compare-and-swap with that cas succeeds, and the item moves on to a new cas
    assert raw.ask(ms(b"k", b"yo", b"C500 c")).startswith(b"HD c")
    assert cas_of(raw, b"k") != 500
    assert raw.ask(b"mg k v\r\n") == b"VA 2\r\nyo\r\n"
    # and the classic cas accepts an E-given cas as well
    assert raw.ask(ms(b"j", b"a", b"E9001")) == b"HD\r\n"
    assert raw.ask(b"cas j 0 0 1 9001\r\nb\r\n") == b"STORED\r\n"
    assert raw.ask(b"get j\r\n") == b"VALUE j 0 1\r\nb\r\nEND\r\n"


def test_ms_E_with_a_failed_cas_changes_nothing(raw: Raw) -> None:
    assert raw.ask(ms(b"k", b"hi", b"E500")) == b"HD\r\n"
    assert raw.ask(ms(b"k", b"no", b"C499 E600 c")) == b"EX c0\r\n"
    assert raw.ask(b"mg k c v\r\n") == b"VA 2 c500\r\nhi\r\n"


def test_md_I_E_gives_the_stale_item_that_cas(raw: Raw) -> None:
    assert raw.ask(ms(b"k", b"hi", b"E500")) == b"HD\r\n"
    assert raw.ask(b"md k I E600\r\n") == b"HD\r\n"
    assert raw.ask(b"mg k c v\r\n") == b"VA 2 c600 X W\r\nhi\r\n"
    assert gets_cas(raw, b"k") == 600
    # the recacher's compare-and-swap against the new cas is a normal store
    assert raw.ask(ms(b"k", b"new", b"C600")) == b"HD\r\n"
    code, flags, data = meta(raw.ask(b"mg k c v\r\n"))
    assert (code, data, set(flags)) == (b"VA", b"new", {"c"})


def test_ma_E_sets_the_cas(raw: Raw) -> None:
    assert raw.ask(ms(b"n", b"5")) == b"HD\r\n"
    assert raw.ask(b"ma n E700 c v\r\n") == b"VA 1 c700\r\n6\r\n"
    assert raw.ask(b"mg n c v\r\n") == b"VA 1 c700\r\n6\r\n"
    assert raw.ask(b"ma n C700 v\r\n") == b"VA 1\r\n7\r\n"
    # on a vivified counter too
    assert raw.ask(b"ma m N0 J41 E701 c v\r\n") == b"VA 2 c701\r\n41\r\n"
    assert gets_cas(raw, b"m") == 701


def test_mg_N_E_gives_the_vivified_item_that_cas(raw: Raw) -> None:
    assert raw.ask(b"mg v N30 E800 c v\r\n") == b"VA 0 c800 W\r\n\r\n"
    assert raw.ask(b"mg v c v\r\n") == b"VA 0 c800 Z\r\n\r\n"
    # the winner fills it in with that cas
    assert raw.ask(ms(b"v", b"data", b"C800")) == b"HD\r\n"
    assert raw.ask(b"mg v v\r\n") == b"VA 4\r\ndata\r\n"
    # E on a hit does not change the item's cas
    before = cas_of(raw, b"v")
    raw.ask(b"mg v N30 E900 c\r\n")
    assert cas_of(raw, b"v") == before


# -- md x: empty the value, keep the item ---------------------------------------------


def test_md_x_empties_value_and_flags_keeps_item_and_ttl(timed: Raw, clock: Clock) -> None:
    assert timed.ask(ms(b"k", b"hello", b"F5 T100")) == b"HD\r\n"
    old_cas = cas_of(timed, b"k")
    clock.advance(10)
    assert timed.ask(b"md k x\r\n") == b"HD\r\n"
    code, flags, data = meta(timed.ask(b"mg k v f t s c\r\n"))
    assert (code, data) == (b"VA", b"")
    assert flags["f"] == b"0" and flags["t"] == b"90" and flags["s"] == b"0"
    assert int(flags["c"]) != old_cas
    assert "X" not in flags and "W" not in flags  # emptied, not stale
    assert timed.ask(b"get k\r\n") == b"VALUE k 0 0\r\n\r\nEND\r\n"


def test_md_x_with_F_and_T(timed: Raw) -> None:
    assert timed.ask(ms(b"k", b"hello", b"F5 T100")) == b"HD\r\n"
    assert timed.ask(b"md k x F9 T50\r\n") == b"HD\r\n"
    assert timed.ask(b"mg k v f t\r\n") == b"VA 0 f9 t50\r\n\r\n"
    assert timed.ask(ms(b"j", b"hello")) == b"HD\r\n"
    assert timed.ask(b"md j x\r\n") == b"HD\r\n"
    assert timed.ask(b"mg j t\r\n") == b"HD t-1\r\n"  # no TTL stays no TTL


def test_md_x_I_empties_and_marks_stale(raw: Raw) -> None:
    assert raw.ask(ms(b"k", b"hello", b"F5")) == b"HD\r\n"
    assert raw.ask(b"md k x I\r\n") == b"HD\r\n"
    assert raw.ask(b"mg k v f\r\n") == b"VA 0 f0 X W\r\n\r\n"
    assert raw.ask(b"mg k v\r\n") == b"VA 0 Z X\r\n\r\n"


def test_md_x_on_miss_and_with_wrong_cas(raw: Raw) -> None:
    assert raw.ask(b"md nope x\r\n") == b"NF\r\n"
    assert raw.ask(b"mg nope v\r\n") == b"EN\r\n"
    assert raw.ask(ms(b"k", b"hello", b"E50")) == b"HD\r\n"
    assert raw.ask(b"md k x C51\r\n") == b"EX\r\n"
    assert raw.ask(b"mg k v c\r\n") == b"VA 5 c50\r\nhello\r\n"


# -- stale while revalidate ---------------------------------------------------------


def test_stale_while_revalidate_lifecycle(raw: Raw) -> None:
    assert raw.ask(ms(b"k", b"v1")) == b"HD\r\n"
    first = cas_of(raw, b"k")

    # invalidate: the first reader wins the right to recache, later ones see Z
    assert raw.ask(b"md k I\r\n") == b"HD\r\n"
    code, flags, data = meta(raw.ask(b"mg k v c\r\n"))
    assert (code, data, list(flags)) == (b"VA", b"v1", ["c", "X", "W"])
    stale_cas = int(flags["c"])
    assert stale_cas != first
    assert raw.ask(b"mg k v c\r\n") == b"VA 2 c%d Z X\r\nv1\r\n" % stale_cas

    # a store that was based on the value before the invalidation is kept, but stays stale
    assert raw.ask(ms(b"k", b"v2", b"C%d I" % first)) == b"HD\r\n"
    code, flags, data = meta(raw.ask(b"mg k v c\r\n"))
    assert (code, data) == (b"VA", b"v2")
    assert "X" in flags and "Z" in flags and "W" not in flags
    assert raw.ask(b"get k\r\n") == b"VALUE k 0 2\r\nv2\r\nEND\r\n"

    # a plain store ends it all
    assert raw.ask(ms(b"k", b"v3")) == b"HD\r\n"
    code, flags, data = meta(raw.ask(b"mg k v c\r\n"))
    assert (code, data, list(flags)) == (b"VA", b"v3", ["c"])
    assert raw.ask(b"mg k v\r\n") == b"VA 2\r\nv3\r\n"

    # and a second invalidation hands out a new win
    assert raw.ask(b"md k I\r\n") == b"HD\r\n"
    assert raw.ask(b"mg k v\r\n") == b"VA 2 X W\r\nv3\r\n"
    assert raw.ask(b"mg k v\r\n") == b"VA 2 Z X\r\nv3\r\n"


def test_stale_ms_with_newer_cas_is_refused(raw: Raw) -> None:
    assert raw.ask(ms(b"k", b"v1")) == b"HD\r\n"
    assert raw.ask(b"md k I\r\n") == b"HD\r\n"
    current = cas_of(raw, b"k")
    assert raw.ask(ms(b"k", b"v2", b"C%d I" % (current + 100))) == b"EX\r\n"
    assert raw.ask(b"mg k v\r\n") == b"VA 2 Z X\r\nv1\r\n"


def test_vivifying_read_counts_as_a_fetch(raw: Raw) -> None:
    """memcached 1.6.18 marks the item an ``mg N`` creates fetched (unless ``u``)."""
    assert raw.ask(b"mg a N30 h\r\n") == b"HD h0 W\r\n"
    assert raw.ask(b"me a\r\n").split()[5] == b"fetch=yes"
    assert raw.ask(b"mg a h\r\n") == b"HD h1 Z\r\n"


def test_vivifying_read_with_u_is_no_fetch(raw: Raw) -> None:
    assert raw.ask(b"mg b N30 u h\r\n") == b"HD h0 W\r\n"
    assert raw.ask(b"me b\r\n").split()[5] == b"fetch=no"
    assert raw.ask(b"mg b h\r\n") == b"HD h0 Z\r\n"


def test_invalidate_clears_an_earlier_win(raw: Raw) -> None:
    """A client that won (vivify) and then an invalidation: the next reader wins again."""
    assert raw.ask(b"mg k N30 v\r\n") == b"VA 0 W\r\n\r\n"
    assert raw.ask(b"mg k v\r\n") == b"VA 0 Z\r\n\r\n"
    assert raw.ask(b"md k I\r\n") == b"HD\r\n"
    assert raw.ask(b"mg k v\r\n") == b"VA 0 X W\r\n\r\n"


def test_recache_R_wins_only_below_the_remaining_ttl(timed: Raw, clock: Clock) -> None:
    assert timed.ask(ms(b"k", b"a", b"T100")) == b"HD\r\n"
    assert timed.ask(b"mg k R30 v t\r\n") == b"VA 1 t100\r\na\r\n"
    clock.advance(70)
    assert timed.ask(b"mg k R30 t\r\n") == b"HD t30\r\n"  # not below: no win
    clock.advance(5)
    assert timed.ask(b"mg k R30 v t\r\n") == b"VA 1 t25 W\r\na\r\n"
    assert timed.ask(b"mg k R30 v t\r\n") == b"VA 1 t25 Z\r\na\r\n"
    assert timed.ask(b"mg k v\r\n") == b"VA 1 Z\r\na\r\n"
    # the recache (a new value with a new TTL) clears the token
    assert timed.ask(ms(b"k", b"b", b"T100")) == b"HD\r\n"
    assert timed.ask(b"mg k R30 v t\r\n") == b"VA 1 t100\r\nb\r\n"


def _race(port: int, connect, request: bytes, n: int = 20) -> list[bytes]:
    conns = [connect(port) for _ in range(n)]
    barrier = threading.Barrier(n)
    replies: list[Optional[bytes]] = [None] * n

    def run(i: int) -> None:
        barrier.wait(10)
        replies[i] = conns[i].ask(request)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r is not None for r in replies), replies
    return replies  # type: ignore[return-value]


@pytest.mark.parametrize("round_", range(3))
def test_exactly_one_winner_under_concurrency(server, connect, round_: int) -> None:
    replies = _race(server.port, connect, b"mg hot%d N30 v c\r\n" % round_)
    parsed = [meta(r) for r in replies]
    winners = [flags for _, flags, _ in parsed if "W" in flags]
    waiters = [flags for _, flags, _ in parsed if "Z" in flags]
    assert len(winners) == 1, replies
    assert len(waiters) == len(replies) - 1, replies
    assert "Z" not in winners[0]
    assert len({flags["c"] for _, flags, _ in parsed}) == 1, replies
    assert all(code == b"VA" and data == b"" for code, _, data in parsed), replies


def test_exactly_one_winner_after_invalidation(server, connect) -> None:
    setup = connect(server.port)
    assert setup.ask(ms(b"hot", b"old") + b"md hot I\r\n", 2) == b"HD\r\nHD\r\n"
    replies = _race(server.port, connect, b"mg hot v c\r\n")
    parsed = [meta(r) for r in replies]
    assert sum("W" in flags for _, flags, _ in parsed) == 1, replies
    assert sum("Z" in flags for _, flags, _ in parsed) == len(replies) - 1, replies
    assert all("X" in flags and data == b"old" for _, flags, data in parsed), replies


# -- h, l, u, t and me with a controlled clock -----------------------------------------


def test_h_reports_whether_fetched_before(timed: Raw) -> None:
    assert timed.ask(ms(b"k", b"x")) == b"HD\r\n"
    assert timed.ask(b"mg k h\r\n") == b"HD h0\r\n"
    assert timed.ask(b"mg k h\r\n") == b"HD h1\r\n"
    assert timed.ask(ms(b"k", b"y")) == b"HD\r\n"  # a new value starts unfetched
    assert timed.ask(b"mg k h v\r\n") == b"VA 1 h0\r\ny\r\n"


def test_l_reports_seconds_since_last_access(timed: Raw, clock: Clock) -> None:
    assert timed.ask(ms(b"k", b"x")) == b"HD\r\n"
    clock.advance(100)
    assert timed.ask(b"mg k l h\r\n") == b"HD l100 h0\r\n"
    assert timed.ask(b"mg k l h\r\n") == b"HD l0 h1\r\n"
    clock.advance(7)
    assert timed.ask(b"mg k l\r\n") == b"HD l7\r\n"


def test_u_does_not_bump(timed: Raw, clock: Clock) -> None:
    assert timed.ask(ms(b"k", b"x")) == b"HD\r\n"
    clock.advance(50)
    assert timed.ask(b"mg k u h l v\r\n") == b"VA 1 h0 l50\r\nx\r\n"
    assert timed.ask(b"mg k u h l\r\n") == b"HD h0 l50\r\n"
    fields = me_fields(timed, b"k")
    assert fields[b"fetch"] == b"no" and fields[b"la"] == b"50"
    # a normal read then marks it fetched and refreshes the access time
    assert timed.ask(b"mg k h l\r\n") == b"HD h0 l50\r\n"
    fields = me_fields(timed, b"k")
    assert fields[b"fetch"] == b"yes" and fields[b"la"] == b"0"
    assert timed.ask(b"mg k h\r\n") == b"HD h1\r\n"


def test_t_counts_down(timed: Raw, clock: Clock) -> None:
    assert timed.ask(ms(b"k", b"x", b"T100")) == b"HD\r\n"
    clock.advance(30)
    assert timed.ask(b"mg k t\r\n") == b"HD t70\r\n"
    clock.advance(69)
    assert timed.ask(b"mg k t v\r\n") == b"VA 1 t1\r\nx\r\n"
    clock.advance(1)
    assert timed.ask(b"mg k t v\r\n") == b"EN\r\n"


def test_a_negative_T_shows_no_time_left(timed: Raw) -> None:
    """memcached 1.6.18 prints a wrapped-around number here; 0 says what happened."""
    assert timed.ask(ms(b"n", b"5")) == b"HD\r\n"
    assert timed.ask(b"ma n T-1 t v\r\n") == b"VA 1 t0\r\n6\r\n"
    assert timed.ask(b"mg n v\r\n") == b"EN\r\n"
    assert timed.ask(b"mg g N-1 t\r\n") == b"HD t0 W\r\n"


def test_T0_means_no_expiry(timed: Raw, clock: Clock) -> None:
    assert timed.ask(ms(b"k", b"x", b"T0")) == b"HD\r\n"
    assert timed.ask(b"mg k t\r\n") == b"HD t-1\r\n"
    clock.advance(10_000_000)
    assert timed.ask(b"mg k t v\r\n") == b"VA 1 t-1\r\nx\r\n"
    # T0 on mg clears a TTL
    assert timed.ask(ms(b"j", b"x", b"T100")) == b"HD\r\n"
    assert timed.ask(b"mg j T0 t\r\n") == b"HD t-1\r\n"
    clock.advance(200)
    assert timed.ask(b"mg j v\r\n") == b"VA 1\r\nx\r\n"


def test_absolute_T(timed: Raw, clock: Clock) -> None:
    assert timed.ask(ms(b"k", b"x", b"T%d" % (START + 500))) == b"HD\r\n"
    assert timed.ask(b"mg k t\r\n") == b"HD t500\r\n"
    assert timed.ask(b"mg k T%d t\r\n" % (START + 900)) == b"HD t900\r\n"
    assert (
        timed.ask(b"ma k T%d t\r\n" % (START + 1000))
        == b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    )
    assert timed.ask(ms(b"n", b"1", b"T%d" % (START + 40))) == b"HD\r\n"
    assert timed.ask(b"ma n T%d t v\r\n" % (START + 60)) == b"VA 1 t60\r\n2\r\n"
    clock.advance(900)
    assert timed.ask(b"mg k v\r\n") == b"EN\r\n"
    # an absolute time already past stores nothing
    assert timed.ask(ms(b"p", b"x", b"T%d" % (START - 1))) == b"HD\r\n"
    assert timed.ask(b"mg p v\r\n") == b"EN\r\n"


def test_me_fields(timed: Raw, clock: Clock) -> None:
    assert timed.ask(ms(b"k", b"abc", b"T100 E321")) == b"HD\r\n"
    fields = me_fields(timed, b"k")
    assert fields[b"exp"] == b"100" and fields[b"la"] == b"0"
    assert fields[b"cas"] == b"321" and fields[b"fetch"] == b"no"
    small = int(fields[b"size"])
    clock.advance(30)
    fields = me_fields(timed, b"k")
    assert fields[b"exp"] == b"70" and fields[b"la"] == b"30" and fields[b"fetch"] == b"no"  # me is no fetch
    assert timed.ask(b"mg k\r\n") == b"HD\r\n"
    fields = me_fields(timed, b"k")
    assert fields[b"fetch"] == b"yes" and fields[b"la"] == b"0"
    # size grows with the value, and an item without TTL says exp=-1
    assert timed.ask(ms(b"k", b"abcdefghij")) == b"HD\r\n"
    fields = me_fields(timed, b"k")
    assert fields[b"exp"] == b"-1" and int(fields[b"cas"]) == cas_of(timed, b"k")
    assert int(fields[b"size"]) == small + 7
    assert timed.ask(b"me nope\r\n") == b"EN\r\n"


def test_me_on_a_binary_key(raw: Raw) -> None:
    key = base64.b64encode(b"a b\x00")
    assert raw.ask(ms(key, b"x", b"b")) == b"HD\r\n"
    assert raw.ask(b"me %s b\r\n" % key).startswith(b"ME %s exp=-1 la=" % key)


# -- quiet mode and opaque tokens -------------------------------------------------------


def test_quiet_pipeline_returns_only_hits_then_mn(raw: Raw) -> None:
    stores = b"".join(ms(b"k%d" % i, b"v%d" % i, b"q T0 O%d" % i) for i in range(50))
    # every third key read, and as many missing ones, interleaved
    reads = b"".join(b"mg k%d v q k O%d\r\nmg miss%d v q k\r\n" % (i, i, i) for i in range(0, 50, 3))
    raw.send(stores + reads + b"md miss0 q\r\nmd k1 q\r\nmg k1 v q\r\nmn\r\n")
    replies = []
    while True:
        reply = raw.reply()
        if reply == b"MN\r\n":
            break
        replies.append(reply)
    expected = [b"VA %d k%s O%d\r\nv%d\r\n" % (len(b"v%d" % i), b"k%d" % i, i, i) for i in range(0, 50, 3)]
    assert replies == expected + [b"NF\r\n"]  # a failed quiet delete still speaks
    assert raw.quiet()


def test_opaque_tokens_match_replies(raw: Raw) -> None:
    assert raw.ask(ms(b"a", b"1") + ms(b"b", b"22"), 2) == b"HD\r\nHD\r\n"
    wanted = {b"a": b"1", b"b": b"22", b"c": None}
    order = [b"b", b"c", b"a", b"c", b"b", b"a"]
    raw.send(b"".join(b"mg %s v O%d\r\n" % (key, 1000 + i) for i, key in enumerate(order)) + b"mn\r\n")
    seen = {}
    while (reply := raw.reply()) != b"MN\r\n":
        code, flags, data = meta(reply)
        seen[int(flags["O"])] = data if code == b"VA" else None
    assert seen == {1000 + i: wanted[key] for i, key in enumerate(order)}
    # on the other verbs too
    assert raw.ask(b"md c O77\r\n") == b"NF O77\r\n"
    assert raw.ask(ms(b"c", b"z", b"O78 c")).startswith(b"HD O78 c")
    assert raw.ask(b"ma c O79\r\n") == b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    assert raw.ask(b"ma n N0 O80 v\r\n") == b"VA 1 O80\r\n0\r\n"


# -- base64 keys ---------------------------------------------------------------------------


def test_binary_key_round_trips(raw: Raw) -> None:
    key = b"a b\r\nc\x00d "
    enc = base64.b64encode(key)
    assert raw.ask(ms(enc, b"value", b"b F3")) == b"HD\r\n"
    assert raw.ask(b"mg %s b v f k\r\n" % enc) == b"VA 5 f3 k%s b\r\nvalue\r\n" % enc
    assert raw.ask(b"mg %s b k\r\n" % enc) == b"HD k%s b\r\n" % enc
    # a key that differs in one byte is another item
    other = base64.b64encode(key[:-1] + b"!")
    assert raw.ask(b"mg %s b v\r\n" % other) == b"EN\r\n"
    assert raw.ask(ms(enc, b"more", b"b MA")) == b"HD\r\n"
    assert raw.ask(b"mg %s b v\r\n" % enc) == b"VA 9\r\nvaluemore\r\n"
    assert raw.ask(b"md %s b q\r\nmn\r\n" % enc) == b"MN\r\n"
    assert raw.ask(b"mg %s b v\r\n" % enc) == b"EN\r\n"


def test_binary_key_counter(raw: Raw) -> None:
    enc = base64.b64encode(b"\x00\r\n counter")
    assert raw.ask(b"ma %s b N0 J10 v\r\n" % enc) == b"VA 2\r\n10\r\n"
    assert raw.ask(b"ma %s b v k D5\r\n" % enc) == b"VA 2 k%s b\r\n15\r\n" % enc
    assert raw.ask(b"ma %s b MD D20 v\r\n" % enc) == b"VA 1\r\n0\r\n"
    assert raw.ask(b"mg %s b v k\r\n" % enc) == b"VA 1 k%s b\r\n0\r\n" % enc


def test_binary_and_plain_forms_reach_the_same_item(raw: Raw) -> None:
    enc = base64.b64encode(b"plain:key")
    assert raw.ask(ms(enc, b"one", b"b")) == b"HD\r\n"
    assert raw.ask(b"mg plain:key v\r\n") == b"VA 3\r\none\r\n"
    assert raw.ask(b"get plain:key\r\n") == b"VALUE plain:key 0 3\r\none\r\nEND\r\n"
    assert raw.ask(ms(b"plain:key", b"two")) == b"HD\r\n"
    assert raw.ask(b"mg %s b v\r\n" % enc) == b"VA 3\r\ntwo\r\n"
    assert raw.ask(b"ma %s b N0\r\n" % enc).startswith(b"CLIENT_ERROR")  # "two" is no number
    assert raw.ask(b"md %s b\r\n" % enc) == b"HD\r\n"
    assert raw.ask(b"get plain:key\r\n") == b"END\r\n"


# -- counters --------------------------------------------------------------------------------

COUNTERS = [
    "cmd_get",
    "get_hits",
    "get_misses",
    "cmd_set",
    "delete_hits",
    "delete_misses",
    "incr_hits",
    "incr_misses",
    "decr_hits",
    "decr_misses",
    "cas_hits",
    "cas_misses",
    "cas_badval",
    "cmd_touch",
    "touch_hits",
    "touch_misses",
]


def stats(conn: Raw) -> dict[str, int]:
    out = {}
    for line in conn.ask(b"stats\r\n").split(b"\r\n"):
        parts = line.split()
        if len(parts) == 3 and parts[0] == b"STAT" and parts[1].decode() in COUNTERS:
            out[parts[1].decode()] = int(parts[2])
    assert set(out) == set(COUNTERS)
    return out


_STORAGE = {b"ms", b"set", b"add", b"replace", b"append", b"cas"}


def _replies(command: bytes) -> int:
    """How many replies a pipeline of commands gets (a storage command's data line gets none)."""
    lines = command.split(b"\r\n")[:-1]
    return len(lines) - sum(line.split(b" ")[0] in _STORAGE for line in lines)


def counted(start_server, connect, command: bytes) -> tuple[bytes, dict[str, int]]:
    """On a fresh server with ``k`` = "x" and ``n`` = "5", the reply to
    ``command`` ({cas} is k's cas) and how it changed the counters."""
    conn = connect(start_server().port)
    assert conn.ask(b"set k 0 0 1\r\nx\r\nset n 0 0 1\r\n5\r\n", 2) == b"STORED\r\nSTORED\r\n"
    command = command.replace(b"{cas}", b"%d" % gets_cas(conn, b"k"))
    before = stats(conn)
    reply = conn.ask(command, _replies(command))
    assert b"ERROR" not in reply, reply
    after = stats(conn)
    return reply, {name: after[name] - before[name] for name in COUNTERS if after[name] != before[name]}


#: A meta command and the classic command that does the same: both must
#: count the same (memcached 1.6.18 does, checked for every pair).
SAME_AS_CLASSIC = [
    ("get-hit", b"mg k v\r\n", b"get k\r\n"),
    ("get-hit-no-bump", b"mg k u\r\n", b"get k\r\n"),
    ("get-miss", b"mg nope v\r\n", b"get nope\r\n"),
    ("set", ms(b"k", b"y"), b"set k 0 0 1\r\ny\r\n"),
    ("add-new", ms(b"j", b"y", b"ME"), b"add j 0 0 1\r\ny\r\n"),
    ("add-existing", ms(b"k", b"y", b"ME"), b"add k 0 0 1\r\ny\r\n"),
    ("replace-missing", ms(b"j", b"y", b"MR"), b"replace j 0 0 1\r\ny\r\n"),
    ("append", ms(b"k", b"y", b"MA"), b"append k 0 0 1\r\ny\r\n"),
    ("cas-match", ms(b"k", b"y", b"C{cas}"), b"cas k 0 0 1 {cas}\r\ny\r\n"),
    ("cas-mismatch", ms(b"k", b"y", b"C999"), b"cas k 0 0 1 999\r\ny\r\n"),
    ("cas-missing", ms(b"j", b"y", b"C999"), b"cas j 0 0 1 999\r\ny\r\n"),
    ("delete-hit", b"md k\r\n", b"delete k\r\n"),
    ("delete-miss", b"md j\r\n", b"delete j\r\n"),
    ("incr-hit", b"ma n\r\n", b"incr n 1\r\n"),
    ("decr-hit", b"ma n MD\r\n", b"decr n 1\r\n"),
    ("incr-miss", b"ma j\r\n", b"incr j 1\r\n"),
    ("decr-miss", b"ma j MD\r\n", b"decr j 1\r\n"),
    ("gat-hit", b"mg k T100 v\r\n", b"gat 100 k\r\n"),
]


@pytest.mark.parametrize(
    ("meta_command", "classic_command"), [p[1:] for p in SAME_AS_CLASSIC], ids=[p[0] for p in SAME_AS_CLASSIC]
)
def test_counters_same_as_classic(start_server, connect, meta_command: bytes, classic_command: bytes) -> None:
    _, meta_delta = counted(start_server, connect, meta_command)
    _, classic_delta = counted(start_server, connect, classic_command)
    assert classic_delta  # every pair counts something
    assert meta_delta == classic_delta


#: Meta commands without a classic twin, and what memcached 1.6.18 counts for them.
MEMCACHED_COUNTS = [
    ("mg-T-miss", b"mg j T100 v\r\n", {"cmd_get": 1, "get_misses": 1}),
    ("md-cas-mismatch", b"md k C999\r\n", {"delete_misses": 1}),
    ("md-invalidate", b"md k I\r\n", {}),
    ("ma-cas-mismatch", b"ma n C999\r\n", {}),
    ("ma-vivify", b"ma j N30\r\n", {}),
    ("mg-vivify", b"mg j N30\r\n", {"cmd_get": 1, "get_hits": 1}),
    ("ms-current-cas-I", ms(b"k", b"z", b"C{cas} I"), {"cmd_set": 1, "cas_hits": 1}),
    ("ms-stale-win", b"md k I\r\n" + ms(b"k", b"z", b"C{cas} I"), {"cmd_set": 1, "cas_hits": 1}),
    ("md-invalidate-with-T", b"md k I T30\r\n", {}),
    ("mg-vivify-with-T", b"mg j N30 T30\r\n", {"cmd_touch": 1, "touch_hits": 1}),
    ("ma-C0-is-no-check", b"ma n C0\r\n", {"incr_hits": 1}),
]


@pytest.mark.parametrize(
    ("command", "expected"), [p[1:] for p in MEMCACHED_COUNTS], ids=[p[0] for p in MEMCACHED_COUNTS]
)
def test_counters_as_memcached(start_server, connect, command: bytes, expected: dict) -> None:
    _, delta = counted(start_server, connect, command)
    assert delta == expected


def test_counters_over_a_session(raw: Raw) -> None:
    before = stats(raw)
    raw.ask(ms(b"a", b"1") + ms(b"b", b"2") + ms(b"c", b"3"), 3)
    raw.ask(b"mg a v\r\nmg b\r\nmg nope v\r\nmg a c\r\n", 4)
    raw.ask(b"md c\r\nmd c\r\nmd nope\r\n", 3)
    raw.ask(b"ma a\r\nma a D5\r\nma b MD\r\n", 3)
    after = stats(raw)
    delta = {name: after[name] - before[name] for name in COUNTERS if after[name] != before[name]}
    assert delta == {
        "cmd_set": 3,
        "cmd_get": 4,
        "get_hits": 3,
        "get_misses": 1,
        "delete_hits": 1,
        "delete_misses": 2,
        "incr_hits": 2,
        "decr_hits": 1,
    }


# -- errors leave data intact -------------------------------------------------------------------

BAD_LINES = [
    ("mg-invalid-flag", b"mg k zz v\r\n", b"CLIENT_ERROR invalid flag\r\n"),
    ("mg-bad-T", b"mg k T5x v\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
    ("mg-duplicate-flag", b"mg k T1 Tx v\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
    ("ms-bad-T", ms(b"k", b"new", b"T5x"), b"CLIENT_ERROR bad token in command line format\r\n"),
    ("ms-bad-F", ms(b"k", b"new", b"Fx"), b"CLIENT_ERROR bad command line format\r\n"),
    ("ms-bad-mode", ms(b"k", b"new", b"MX"), b"CLIENT_ERROR invalid mode for ms M token\r\n"),
    ("ms-bad-E", ms(b"k", b"new", b"Ex"), b"CLIENT_ERROR bad token in command line format\r\n"),
    ("md-bad-C", b"md k C1x\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    ("md-x-bad-F", b"md k x Fx\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    ("md-I-bad-T", b"md k I Tx\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    ("ma-bad-D", b"ma k Dx\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    ("ma-bad-mode", b"ma k MX\r\n", b"CLIENT_ERROR invalid mode for ma M token\r\n"),
    ("mg-too-many", b"mg k " + b" ".join([b"v"] * 18) + b"\r\n", b"CLIENT_ERROR options flags are too long\r\n"),
    ("md-too-many", b"md k " + b" ".join([b"v"] * 18) + b"\r\n", b"CLIENT_ERROR options flags too long\r\n"),
    ("mg-bad-base64", b"mg a2!= b v\r\n", b"CLIENT_ERROR error decoding key\r\n"),
    ("ms-bad-base64", ms(b"a2!=", b"new", b"b"), b"CLIENT_ERROR error decoding key\r\n"),
    ("md-bad-base64", b"md aw b\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    ("mg-key-too-long", b"mg " + b"k" * 251 + b" v\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    ("md-key-too-long", b"md " + b"k" * 251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    ("ms-opaque-too-long", ms(b"k", b"new", b"O" + b"o" * 40), b"CLIENT_ERROR opaque token too long\r\n"),
    ("ms-bad-data-chunk", b"ms k 3\r\nnewXY", b"CLIENT_ERROR bad data chunk\r\n"),
]


@pytest.mark.parametrize(("line", "error"), [p[1:] for p in BAD_LINES], ids=[p[0] for p in BAD_LINES])
def test_error_leaves_data_intact(timed: Raw, line: bytes, error: bytes) -> None:
    assert timed.ask(ms(b"k", b"old", b"F5 T100 E42")) == b"HD\r\n"
    assert timed.ask(b"mg k v f c t s\r\n") == b"VA 3 f5 c42 t100 s3\r\nold\r\n"
    assert timed.ask(line) == error
    # the connection still works, nothing was changed, nothing more was said
    assert timed.ask(b"mn\r\n") == b"MN\r\n"
    assert timed.ask(b"mg k v f c t s\r\n") == b"VA 3 f5 c42 t100 s3\r\nold\r\n"
    assert timed.ask(b"me k\r\n").startswith(b"ME k exp=100 la=0 cas=42 fetch=yes")
    assert timed.quiet()


def test_C0_on_ma_is_no_check_and_on_ms_no_stale_win(raw: Raw) -> None:
    """memcached 1.6.18: ma takes C0 as "no cas given"; ms C0 I is refused, not stored stale."""
    assert raw.ask(ms(b"n", b"5")) == b"HD\r\n"
    assert raw.ask(b"ma n C0 v\r\n") == b"VA 1\r\n6\r\n"
    assert raw.ask(ms(b"n", b"9", b"C0 I")) == b"EX\r\n"
    assert raw.ask(b"mg n v\r\n") == b"VA 1\r\n6\r\n"


def test_a_meta_read_of_an_expired_item_counts_as_expired(start_server, connect, clock: Clock) -> None:
    running = start_server(clock=clock)
    conn = connect(running.port)
    assert conn.ask(ms(b"a", b"x", b"T10") + ms(b"b", b"x", b"T10"), 2) == b"HD\r\nHD\r\n"
    clock.advance(11)
    assert conn.ask(b"mg a v\r\nget b\r\n", 2) == b"EN\r\nEND\r\n"
    assert running.store.stats()["get_expired"] == 2
