"""Byte-exact conversations with a live in-process server, one command at a time.

Every verb of memcached's text protocol (``doc/protocol.txt``), the seed's lite
form and dialect, expiry on a fake clock, every error line, pipelining, and
what a restart keeps. Where the protocol document is silent, the expected
bytes are those memcached 1.6 sends, except where the project chose otherwise
(wrong argument counts answer ``CLIENT_ERROR bad command line format``, errors
are sent even under ``noreply``, and a data block whose length could be read is
swallowed before the command is judged).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from memcachedlite import MemcacheServer, Settings, Store
from memcachedlite.protocols.stats import PROTOCOL_VERSION
from tests.conftest import Raw, Running

VERSION = b"VERSION %s\r\n" % PROTOCOL_VERSION.encode("ascii")
STORED = b"STORED\r\n"
NOT_STORED = b"NOT_STORED\r\n"
EXISTS = b"EXISTS\r\n"
NOT_FOUND = b"NOT_FOUND\r\n"
DELETED = b"DELETED\r\n"
TOUCHED = b"TOUCHED\r\n"
END = b"END\r\n"
OK = b"OK\r\n"
ERROR = b"ERROR\r\n"
BAD = b"CLIENT_ERROR bad command line format\r\n"
BAD_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
BAD_DELTA = b"CLIENT_ERROR invalid numeric delta argument\r\n"
NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
BAD_EXPTIME = b"CLIENT_ERROR invalid exptime argument\r\n"
DELETE_USAGE = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"

U32 = 2**32
U64 = 2**64
MIB = 1024 * 1024
THIRTY_DAYS = 60 * 60 * 24 * 30
KEY_250 = b"k" * 250
KEY_251 = b"k" * 251
START = 1_700_000_000  # the fake clock's epoch: well past 30 days, so absolute times work


# -- helpers -------------------------------------------------------------------


def value(key: bytes, data: bytes, flags: int = 0, cas: int | None = None) -> bytes:
    """One item as a retrieval reply shows it."""
    if cas is None:
        return b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, len(data), data)
    return b"VALUE %s %d %d %d\r\n%s\r\n" % (key, flags, len(data), cas, data)


def set_line(key: bytes, data: bytes, flags: int = 0, exptime: int = 0, verb: bytes = b"set") -> bytes:
    return b"%s %s %d %d %d\r\n%s\r\n" % (verb, key, flags, exptime, len(data), data)


def receive(c: Raw, wait: float = 1.0) -> None:
    """Add whatever arrives within ``wait`` seconds to ``c.buf``; fail on silence or EOF."""
    c.sock.settimeout(wait)
    try:
        chunk = c.sock.recv(65536)
    except TimeoutError:
        pytest.fail(f"no reply within {wait}s; received so far: {c.buf!r}")
    finally:
        c.sock.settimeout(10.0)
    if not chunk:
        pytest.fail(f"the server closed the connection; received so far: {c.buf!r}")
    c.buf += chunk


def talk(c: Raw, request: bytes, wait: float = 1.0) -> bytes:
    """Send ``request`` then ``version``; return every byte answered before VERSION.

    The trailing ``version`` proves the connection is still in step, catches
    any extra or missing reply, and keeps a wrong answer from hanging the test.
    """
    c.send(request + b"version\r\n")
    while not c.buf.endswith(VERSION):
        receive(c, wait)
    out, c.buf = c.buf[: -len(VERSION)], b""
    return out


def gets_cas(c: Raw, key: bytes) -> int:
    reply = c.ask(b"gets %s\r\n" % key)
    header = reply.split(b"\r\n", 1)[0].split()
    assert header[0] == b"VALUE" and header[1] == key, reply
    return int(header[4])


def stats(c: Raw, arg: bytes = b"") -> dict[str, str]:
    reply = c.ask(b"stats" + (b" " + arg if arg else b"") + b"\r\n")
    assert reply.endswith(b"END\r\n"), reply
    out = {}
    for line in reply.split(b"\r\n")[:-2]:
        stat, name, val = line.split(b" ", 2)
        assert stat == b"STAT"
        out[name.decode()] = val.decode()
    return out


class Clock:
    """A settable stand-in for time.time."""

    def __init__(self, now: float = START) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Clocked:
    """A server whose store runs on a fake clock; ``restart()`` reopens the same file."""

    def __init__(self, start_server, path: Path, settings: Settings | None = None) -> None:
        self.clock = Clock()
        self.path = path
        self.settings = settings
        self._start = start_server
        self.store = Store(path, clock=self.clock)
        self.running: Running = start_server(store=self.store, settings=settings)

    @property
    def port(self) -> int:
        return self.running.port

    def stop(self) -> None:
        self.running.stop()
        self.store.close()

    def restart(self) -> None:
        self.stop()
        self.store = Store(self.path, clock=self.clock)
        self.running = self._start(store=self.store, settings=self.settings)


@pytest.fixture
def clocked(start_server, tmp_path: Path) -> Iterator[Clocked]:
    server = Clocked(start_server, tmp_path / "clocked.txt")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory) -> Iterator[Running]:
    """One server for the many small parametrized cases (starting one per case is slow);
    each case stores the keys it looks at afresh."""
    store = Store(tmp_path_factory.mktemp("shared") / "data.txt")
    server = MemcacheServer(("127.0.0.1", 0), store)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    running = Running(server, thread)
    yield running
    running.stop()
    store.close()


@pytest.fixture
def shared(shared_server: Running, connect) -> Raw:
    """A connection to the shared server, with keys k, old and num reset."""
    c = connect(shared_server.port)
    assert c.ask(b"delete k\r\n") in (DELETED, NOT_FOUND)
    assert c.ask(b"set old 1 0 1\r\nv\r\nset num 0 0 2\r\n41\r\n", replies=2) == STORED * 2
    return c


@pytest.fixture
def tc(clocked: Clocked, connect) -> Raw:
    """A raw connection to the fake-clock server."""
    return connect(clocked.port)


# -- storage commands ----------------------------------------------------------


def test_set_then_get(raw):
    assert raw.ask(b"set greeting 0 0 5\r\nhello\r\n") == STORED
    assert raw.ask(b"get greeting\r\n") == value(b"greeting", b"hello") + END
    assert raw.ask(b"set greeting 3 0 3\r\nbye\r\n") == STORED
    assert raw.ask(b"get greeting\r\n") == value(b"greeting", b"bye", 3) + END


def test_get_missing_key_is_just_end(raw):
    assert raw.ask(b"get nothing\r\n") == END
    assert raw.ask(b"gets nothing\r\n") == END


def test_empty_value(raw):
    assert raw.ask(b"set e 0 0 0\r\n\r\n") == STORED
    assert raw.ask(b"get e\r\n") == b"VALUE e 0 0\r\n\r\nEND\r\n"


def test_add_only_when_absent(raw):
    assert raw.ask(b"add k 1 0 1\r\na\r\n") == STORED
    assert raw.ask(b"add k 2 0 1\r\nb\r\n") == NOT_STORED
    assert raw.ask(b"get k\r\n") == value(b"k", b"a", 1) + END


def test_replace_only_when_present(raw):
    assert raw.ask(b"replace k 1 0 1\r\na\r\n") == NOT_STORED
    assert raw.ask(b"get k\r\n") == END
    assert raw.ask(b"set k 1 0 1\r\na\r\n") == STORED
    assert raw.ask(b"replace k 2 0 2\r\nbb\r\n") == STORED
    assert raw.ask(b"get k\r\n") == value(b"k", b"bb", 2) + END


def test_append_and_prepend_keep_flags(raw):
    assert raw.ask(b"append k 0 0 1\r\nx\r\n") == NOT_STORED
    assert raw.ask(b"prepend k 0 0 1\r\nx\r\n") == NOT_STORED
    assert raw.ask(b"get k\r\n") == END
    assert raw.ask(b"set k 9 0 3\r\nmid\r\n") == STORED
    # the flags and exptime given to append/prepend are ignored
    assert raw.ask(b"append k 1 0 4\r\n-end\r\n") == STORED
    assert raw.ask(b"prepend k 2 0 6\r\nstart-\r\n") == STORED
    assert raw.ask(b"get k\r\n") == value(b"k", b"start-mid-end", 9) + END


def test_cas_stored_exists_not_found(raw):
    assert raw.ask(b"cas k 0 0 1 1\r\nx\r\n") == NOT_FOUND
    assert raw.ask(b"get k\r\n") == END
    assert raw.ask(b"set k 1 0 1\r\na\r\n") == STORED
    first = gets_cas(raw, b"k")
    assert raw.ask(b"cas k 2 0 1 %d\r\nb\r\n" % first) == STORED
    assert raw.ask(b"get k\r\n") == value(b"k", b"b", 2) + END
    # the old unique is now stale
    assert raw.ask(b"cas k 3 0 1 %d\r\nc\r\n" % first) == EXISTS
    second = gets_cas(raw, b"k")
    assert second != first
    assert raw.ask(b"gets k\r\n") == value(b"k", b"b", 2, second) + END


def test_cas_unique_is_64_bit(raw):
    assert raw.ask(b"set k 0 0 1\r\na\r\n") == STORED
    assert raw.ask(b"cas k 0 0 1 %d\r\nb\r\n" % (U64 - 1)) == EXISTS
    assert raw.ask(b"cas k 0 0 1 %d\r\nb\r\n" % U64) == BAD
    assert raw.ask(b"get k\r\n") == value(b"k", b"a") + END


def test_cas_values_are_unique_and_change_on_every_write(raw):
    for key in (b"a", b"b", b"c"):
        assert raw.ask(b"set %s 0 0 1\r\n1\r\n" % key) == STORED
    uniques = [gets_cas(raw, key) for key in (b"a", b"b", b"c")]
    assert len(set(uniques)) == 3
    assert all(0 < u < U64 for u in uniques)
    seen = set(uniques)
    for command, reply in (
        (b"set a 0 0 1\r\n2\r\n", STORED),
        (b"append a 0 0 1\r\n0\r\n", STORED),
        (b"prepend a 0 0 1\r\n1\r\n", STORED),
        (b"incr a 1\r\n", b"121\r\n"),
        (b"decr a 1\r\n", b"120\r\n"),
        (b"replace a 0 0 1\r\n7\r\n", STORED),
    ):
        assert raw.ask(command) == reply
        unique = gets_cas(raw, b"a")
        assert unique not in seen, command
        seen.add(unique)
    # touch and gat change the expiry, not the item: the unique stays
    before = gets_cas(raw, b"b")
    assert raw.ask(b"touch b 1000\r\n") == TOUCHED
    assert raw.ask(b"gats 1000 b\r\n") == value(b"b", b"1", 0, before) + END
    assert gets_cas(raw, b"b") == before


def test_gets_shows_flags_and_cas_for_many_keys(raw):
    assert raw.ask(b"set a 1 0 1\r\nA\r\nset b 2 0 2\r\nBB\r\n", replies=2) == STORED * 2
    ca, cb = gets_cas(raw, b"a"), gets_cas(raw, b"b")
    assert raw.ask(b"gets a nope b\r\n") == value(b"a", b"A", 1, ca) + value(b"b", b"BB", 2, cb) + END


@pytest.mark.parametrize("flags", [0, 1, 2**16, U32 - 1], ids=["zero", "one", "2**16", "2**32-1"])
def test_flags_are_kept_and_returned(raw, flags):
    assert raw.ask(b"set f %d 0 2\r\nhi\r\n" % flags) == STORED
    assert raw.ask(b"get f\r\n") == value(b"f", b"hi", flags) + END
    unique = gets_cas(raw, b"f")
    assert raw.ask(b"gets f\r\n") == value(b"f", b"hi", flags, unique) + END


def test_flags_of_2_to_the_32_are_refused(raw):
    assert raw.ask(b"set f 5 0 2\r\nhi\r\n") == STORED
    assert talk(raw, b"set f %d 0 2\r\nno\r\n" % U32) == BAD
    assert raw.ask(b"get f\r\n") == value(b"f", b"hi", 5) + END


# -- the seed's lite form ------------------------------------------------------


def test_lite_form_of_storage_commands(raw):
    assert raw.ask(b"set greeting 5\r\nhello\r\n") == STORED
    assert raw.ask(b"get greeting\r\n") == value(b"greeting", b"hello") + END
    assert raw.ask(b"add greeting 1\r\nx\r\n") == NOT_STORED
    assert raw.ask(b"add other 2\r\nab\r\n") == STORED
    assert raw.ask(b"replace other 2\r\ncd\r\n") == STORED
    assert raw.ask(b"append other 1\r\n!\r\n") == STORED
    assert raw.ask(b"prepend other 1\r\n<\r\n") == STORED
    assert raw.ask(b"get other\r\n") == value(b"other", b"<cd!") + END
    assert talk(raw, b"set quiet 2 noreply\r\nok\r\n") == b""
    assert raw.ask(b"get quiet\r\n") == value(b"quiet", b"ok") + END


def test_lite_form_resets_flags_to_zero(raw):
    assert raw.ask(b"set k 7 0 1\r\na\r\n") == STORED
    assert raw.ask(b"set k 1\r\nb\r\n") == STORED
    assert raw.ask(b"get k\r\n") == value(b"k", b"b") + END


# -- retrieval -----------------------------------------------------------------


def test_get_many_keys_in_request_order_skipping_missing(raw):
    for key in (b"a", b"b", b"c"):
        assert raw.ask(set_line(key, key.upper() * 2)) == STORED
    assert raw.ask(b"get c missing a nope b\r\n") == (
        value(b"c", b"CC") + value(b"a", b"AA") + value(b"b", b"BB") + END
    )
    assert raw.ask(b"get missing nope\r\n") == END


def test_get_names_the_same_key_twice(raw):
    assert raw.ask(b"set a 0 0 1\r\n1\r\n") == STORED
    assert raw.ask(b"get a a\r\n") == value(b"a", b"1") * 2 + END


def test_runs_of_spaces_between_tokens_are_ignored(raw):
    assert raw.ask(b"set  a  0 0  1 \r\n1\r\n") == STORED
    assert raw.ask(b"get  a   a \r\n") == value(b"a", b"1") * 2 + END


def test_bare_newline_ends_a_command_line(raw):
    assert raw.ask(b"set a 0 0 1\n1\r\n") == STORED
    assert raw.ask(b"get a\n") == value(b"a", b"1") + END


def test_key_of_250_bytes_is_accepted(raw):
    assert raw.ask(set_line(KEY_250, b"v")) == STORED
    assert raw.ask(b"get %s\r\n" % KEY_250) == value(KEY_250, b"v") + END
    assert raw.ask(b"delete %s\r\n" % KEY_250) == DELETED


def test_key_with_utf8_bytes_is_accepted(raw):
    key = "café-ключ".encode()
    assert raw.ask(set_line(key, b"v")) == STORED
    assert raw.ask(b"get %s\r\n" % key) == value(key, b"v") + END


def test_get_line_longer_than_2048_bytes_works(raw):
    keys = [b"key-%03d-" % i + b"x" * 60 for i in range(200)]
    line = b"get " + b" ".join(keys) + b"\r\n"
    assert len(line) > 6 * 2048
    stored = keys[::3]
    raw.send(b"".join(set_line(k, k[:7]) for k in stored))
    assert b"".join(raw.reply() for _ in stored) == STORED * len(stored)
    expected = b"".join(value(k, k[:7]) for k in stored) + END
    assert raw.ask(line) == expected
    # the same line arriving in pieces, the first already past 2048 bytes
    raw.send(line[:3000])
    assert raw.quiet(0.2)
    assert raw.ask(line[3000:]) == expected


def test_gets_line_of_250_byte_keys_longer_than_2048_bytes(raw):
    keys = [b"%03d" % i + b"g" * 247 for i in range(20)]
    assert raw.ask(set_line(keys[7], b"seven")) == STORED
    unique = gets_cas(raw, keys[7])
    assert raw.ask(b"gets " + b" ".join(keys) + b"\r\n") == value(keys[7], b"seven", 0, unique) + END


# -- delete --------------------------------------------------------------------


def test_delete(raw):
    assert raw.ask(b"delete k\r\n") == NOT_FOUND
    assert raw.ask(b"set k 0 0 1\r\nx\r\n") == STORED
    assert raw.ask(b"delete k\r\n") == DELETED
    assert raw.ask(b"get k\r\n") == END
    assert raw.ask(b"delete k\r\n") == NOT_FOUND


def test_delete_with_hold_time_zero(raw):
    assert raw.ask(b"set k 0 0 1\r\nx\r\n") == STORED
    assert raw.ask(b"delete k 0\r\n") == DELETED
    assert raw.ask(b"delete k 0\r\n") == NOT_FOUND
    assert raw.ask(b"set k 0 0 1\r\nx\r\n") == STORED
    assert talk(raw, b"delete k 0 noreply\r\n") == b""
    assert raw.ask(b"get k\r\n") == END


def test_delete_with_nonzero_hold_time_is_refused(raw):
    assert raw.ask(b"set k 0 0 1\r\nx\r\n") == STORED
    assert talk(raw, b"delete k 5\r\n") == DELETE_USAGE
    assert raw.ask(b"get k\r\n") == value(b"k", b"x") + END


# -- incr / decr ---------------------------------------------------------------


def test_incr_and_decr(raw):
    assert raw.ask(b"set n 5 0 2\r\n10\r\n") == STORED
    assert raw.ask(b"incr n 5\r\n") == b"15\r\n"
    assert raw.ask(b"decr n 3\r\n") == b"12\r\n"
    assert raw.ask(b"incr n 88\r\n") == b"100\r\n"
    # incr keeps the flags; the value is the decimal text
    assert raw.ask(b"get n\r\n") == value(b"n", b"100", 5) + END
    assert raw.ask(b"incr n 0\r\n") == b"100\r\n"


def test_incr_on_leading_zeros(raw):
    assert raw.ask(b"set n 0 0 3\r\n007\r\n") == STORED
    assert raw.ask(b"incr n 1\r\n") == b"8\r\n"


def test_incr_wraps_at_2_to_the_64(raw):
    assert raw.ask(set_line(b"n", b"%d" % (U64 - 2))) == STORED
    assert raw.ask(b"incr n 1\r\n") == b"%d\r\n" % (U64 - 1)
    assert raw.ask(b"incr n 1\r\n") == b"0\r\n"
    assert raw.ask(b"get n\r\n") == value(b"n", b"0") + END
    assert raw.ask(b"incr n %d\r\n" % (U64 - 1)) == b"%d\r\n" % (U64 - 1)
    assert raw.ask(b"incr n 2\r\n") == b"1\r\n"


def test_decr_stops_at_zero(raw):
    assert raw.ask(b"set n 0 0 1\r\n5\r\n") == STORED
    assert raw.ask(b"decr n 10\r\n") == b"0\r\n"
    assert raw.ask(b"decr n 1\r\n") == b"0\r\n"
    assert raw.ask(b"set n 0 0 20\r\n%d\r\n" % (U64 - 1)) == STORED
    assert raw.ask(b"decr n %d\r\n" % (U64 - 1)) == b"0\r\n"


def test_incr_decr_missing_key(raw):
    assert raw.ask(b"incr nope 1\r\n") == NOT_FOUND
    assert raw.ask(b"decr nope 1\r\n") == NOT_FOUND
    assert raw.ask(b"get nope\r\n") == END


@pytest.mark.parametrize(
    "stored",
    [b"abc", b"12abc", b"", b"-1", b"1.5", b"%d" % U64, b"1" * 21],
    ids=["letters", "digits-then-letters", "empty", "negative", "decimal-point", "2**64", "21-digits"],
)
def test_incr_decr_non_numeric_value(raw, stored):
    assert raw.ask(set_line(b"n", stored, 3)) == STORED
    assert talk(raw, b"incr n 1\r\n") == NON_NUMERIC
    assert talk(raw, b"decr n 1\r\n") == NON_NUMERIC
    assert raw.ask(b"get n\r\n") == value(b"n", stored, 3) + END


def test_incr_decr_plus_sign_is_a_number_as_in_memcached(raw):
    assert (
        raw.ask(b"set n 0 0 2\r\n10\r\nincr n +5\r\nset f +1 +0 +1\r\nx\r\n", replies=3)
        == b"STORED\r\n15\r\nSTORED\r\n"
    )
    assert raw.ask(b"get f\r\n") == value(b"f", b"x", 1) + END


@pytest.mark.parametrize(
    "stored, result",
    [(b" 5", b"6"), (b"5\r\n", b"6"), (b"0" * 22 + b"1", b"2"), (b"+5", b"6"), (b"5 apples", b"6"), (b"-0", b"1")],
    ids=["leading-space", "trailing-crlf", "23-digits", "plus", "number-then-words", "minus-zero"],
)
def test_incr_reads_stored_numbers_like_strtoull(raw, stored, result):
    assert raw.ask(b"set n 0 0 %d\r\n%s\r\n" % (len(stored), stored)) == STORED
    assert raw.ask(b"incr n 1\r\n") == result + b"\r\n"


@pytest.mark.parametrize(
    "delta",
    [b"abc", b"-1", b"%d" % U64, b"1.0", b"0x10", b"1" * 21],
    ids=["letters", "negative", "2**64", "decimal-point", "hex", "21-digits"],
)
def test_incr_decr_bad_delta(raw, delta):
    assert raw.ask(b"set n 0 0 2\r\n10\r\n") == STORED
    assert talk(raw, b"incr n %s\r\n" % delta) == BAD_DELTA
    assert talk(raw, b"decr n %s\r\n" % delta) == BAD_DELTA
    assert talk(raw, b"incr nope %s\r\n" % delta) == BAD_DELTA
    assert raw.ask(b"get n\r\n") == value(b"n", b"10") + END


# -- touch, gat, gats ----------------------------------------------------------


def test_touch(raw):
    assert raw.ask(b"touch k 10\r\n") == NOT_FOUND
    assert raw.ask(b"set k 0 0 1\r\nx\r\n") == STORED
    assert raw.ask(b"touch k 10\r\n") == TOUCHED
    assert raw.ask(b"get k\r\n") == value(b"k", b"x") + END


def test_gat_and_gats(raw):
    assert raw.ask(b"set a 4 0 1\r\nA\r\nset b 5 0 2\r\nBB\r\n", replies=2) == STORED * 2
    assert raw.ask(b"gat 100 a nope b\r\n") == value(b"a", b"A", 4) + value(b"b", b"BB", 5) + END
    ca, cb = gets_cas(raw, b"a"), gets_cas(raw, b"b")
    assert raw.ask(b"gats 100 b a\r\n") == value(b"b", b"BB", 5, cb) + value(b"a", b"A", 4, ca) + END
    assert raw.ask(b"gat 0 nope\r\n") == END
    assert raw.ask(b"gats 0 nope\r\n") == END


def test_touch_and_gat_move_the_expiry(clocked, tc):
    assert tc.ask(b"set t 0 10 1\r\nt\r\nset g 0 10 1\r\ng\r\nset s 0 10 1\r\ns\r\n", replies=3) == STORED * 3
    assert tc.ask(b"touch t 100\r\n") == TOUCHED
    assert tc.ask(b"gat 100 g\r\n") == value(b"g", b"g") + END
    unique = gets_cas(tc, b"s")
    assert tc.ask(b"gats 100 s\r\n") == value(b"s", b"s", 0, unique) + END
    clocked.clock.advance(50)
    assert tc.ask(b"get t g s\r\n") == value(b"t", b"t") + value(b"g", b"g") + value(b"s", b"s") + END
    clocked.clock.advance(50)
    assert tc.ask(b"get t g s\r\n") == END


def test_touch_to_zero_means_never_expire(clocked, tc):
    assert tc.ask(b"set k 0 10 1\r\nx\r\n") == STORED
    assert tc.ask(b"touch k 0\r\n") == TOUCHED
    clocked.clock.advance(THIRTY_DAYS * 12)
    assert tc.ask(b"get k\r\n") == value(b"k", b"x") + END


def test_touch_with_negative_exptime_expires_now(clocked, tc):
    assert tc.ask(b"set k 0 0 1\r\nx\r\n") == STORED
    assert tc.ask(b"touch k -1\r\n") == TOUCHED
    assert tc.ask(b"get k\r\n") == END


# -- flush_all -----------------------------------------------------------------


def test_flush_all(raw):
    assert raw.ask(b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\n", replies=2) == STORED * 2
    assert raw.ask(b"flush_all\r\n") == OK
    assert raw.ask(b"get a b\r\n") == END
    assert raw.ask(b"add a 0 0 1\r\n3\r\n") == STORED
    assert raw.ask(b"get a\r\n") == value(b"a", b"3") + END
    assert raw.ask(b"flush_all 0\r\n") == OK
    assert raw.ask(b"get a\r\n") == END


def test_flush_all_noreply(raw):
    assert raw.ask(b"set a 0 0 1\r\n1\r\n") == STORED
    assert talk(raw, b"flush_all noreply\r\n") == b""
    assert raw.ask(b"get a\r\n") == END
    assert raw.ask(b"set a 0 0 1\r\n1\r\n") == STORED
    assert talk(raw, b"flush_all 0 noreply\r\n") == b""
    assert raw.ask(b"get a\r\n") == END


def test_flush_all_with_delay(clocked, tc):
    clock = clocked.clock
    assert tc.ask(b"set a 0 0 1\r\na\r\n") == STORED
    assert tc.ask(b"set b 0 1000 1\r\nb\r\n") == STORED
    assert tc.ask(b"set c 0 5 1\r\nc\r\n") == STORED
    assert tc.ask(b"flush_all 10\r\n") == OK
    clock.advance(5)
    assert tc.ask(b"get a b c\r\n") == value(b"a", b"a") + value(b"b", b"b") + END
    # written before the flush time comes: flushed too
    assert tc.ask(b"set d 0 0 1\r\nd\r\n") == STORED
    assert tc.ask(b"get d\r\n") == value(b"d", b"d") + END
    clock.advance(5)
    assert tc.ask(b"get a b c d\r\n") == END
    # written after the flush time: kept
    assert tc.ask(b"set e 0 0 1\r\ne\r\n") == STORED
    clock.advance(100)
    assert tc.ask(b"get e\r\n") == value(b"e", b"e") + END


def test_flush_all_with_delay_noreply(clocked, tc):
    assert tc.ask(b"set a 0 0 1\r\na\r\n") == STORED
    assert talk(tc, b"flush_all 10 noreply\r\n") == b""
    assert tc.ask(b"get a\r\n") == value(b"a", b"a") + END
    clocked.clock.advance(10)
    assert tc.ask(b"get a\r\n") == END


# -- version, verbosity, quit --------------------------------------------------


def test_version(raw):
    assert raw.ask(b"version\r\n") == VERSION


def test_verbosity(raw):
    assert raw.ask(b"verbosity 1\r\n") == OK
    assert raw.ask(b"verbosity 0\r\n") == OK
    assert talk(raw, b"verbosity 1 noreply\r\n") == b""


def test_quit_closes_without_reply(raw):
    raw.send(b"quit\r\n")
    assert raw.closed_by_peer()
    assert raw.buf == b""


def test_quit_after_pipelined_commands(server, raw, connect):
    raw.send(b"set a 0 0 1\r\n1\r\nget a\r\nquit\r\nset a 0 0 1\r\n2\r\nget a\r\n")
    assert raw.closed_by_peer()
    assert raw.buf == STORED + value(b"a", b"1") + END
    other = connect(server.port)
    assert other.ask(b"get a\r\n") == value(b"a", b"1") + END


# -- noreply -------------------------------------------------------------------

OLD = value(b"old", b"v", 1)
NUM = value(b"num", b"41")
K = value(b"k", b"x")

# (request, then the reply to "get k old num" without its END)
NOREPLY = [
    pytest.param(b"set k 0 0 1 noreply\r\nx\r\n", K + OLD + NUM, id="set"),
    pytest.param(b"set k 1 noreply\r\nx\r\n", K + OLD + NUM, id="set-lite-form"),
    pytest.param(b"set old 0 -1 1 noreply\r\nx\r\n", NUM, id="set-already-expired"),
    pytest.param(b"add k 0 0 1 noreply\r\nx\r\n", K + OLD + NUM, id="add"),
    pytest.param(b"add old 0 0 1 noreply\r\nx\r\n", OLD + NUM, id="add-not-stored"),
    pytest.param(b"replace old 0 0 1 noreply\r\nx\r\n", value(b"old", b"x") + NUM, id="replace"),
    pytest.param(b"replace k 0 0 1 noreply\r\nx\r\n", OLD + NUM, id="replace-not-stored"),
    pytest.param(b"append old 0 0 1 noreply\r\nx\r\n", value(b"old", b"vx", 1) + NUM, id="append"),
    pytest.param(b"append k 0 0 1 noreply\r\nx\r\n", OLD + NUM, id="append-not-stored"),
    pytest.param(b"prepend old 0 0 1 noreply\r\nx\r\n", value(b"old", b"xv", 1) + NUM, id="prepend"),
    pytest.param(b"prepend k 0 0 1 noreply\r\nx\r\n", OLD + NUM, id="prepend-not-stored"),
    pytest.param(b"cas old 0 0 1 %d noreply\r\nx\r\n" % (U64 - 1), OLD + NUM, id="cas-exists"),
    pytest.param(b"cas k 0 0 1 1 noreply\r\nx\r\n", OLD + NUM, id="cas-not-found"),
    pytest.param(b"delete old noreply\r\n", NUM, id="delete"),
    pytest.param(b"delete k noreply\r\n", OLD + NUM, id="delete-not-found"),
    pytest.param(b"incr num 1 noreply\r\n", OLD + value(b"num", b"42"), id="incr"),
    pytest.param(b"decr num 1 noreply\r\n", OLD + value(b"num", b"40"), id="decr"),
    pytest.param(b"incr k 1 noreply\r\n", OLD + NUM, id="incr-not-found"),
    pytest.param(b"decr k 1 noreply\r\n", OLD + NUM, id="decr-not-found"),
    pytest.param(b"touch old 10 noreply\r\n", OLD + NUM, id="touch"),
    pytest.param(b"touch k 10 noreply\r\n", OLD + NUM, id="touch-not-found"),
    pytest.param(b"verbosity 1 noreply\r\n", OLD + NUM, id="verbosity"),
    pytest.param(b"flush_all noreply\r\n", b"", id="flush_all"),
]


@pytest.mark.parametrize("request_, then", NOREPLY)
def test_noreply_sends_nothing(shared, request_, then):
    assert talk(shared, request_) == b""
    assert shared.quiet(0.02)
    assert shared.ask(b"get k old num\r\n") == then + END


def test_noreply_cas_stored(raw):
    assert raw.ask(b"set k 0 0 1\r\na\r\n") == STORED
    unique = gets_cas(raw, b"k")
    assert talk(raw, b"cas k 6 0 1 %d noreply\r\nb\r\n" % unique) == b""
    assert raw.ask(b"get k\r\n") == value(b"k", b"b", 6) + END


def test_key_named_noreply_is_a_key(raw):
    assert raw.ask(b"set noreply 1\r\nx\r\n") == STORED
    assert raw.ask(b"get noreply\r\n") == value(b"noreply", b"x") + END
    assert raw.ask(b"delete noreply\r\n") == DELETED


# -- expiry on a fake clock ----------------------------------------------------


def test_relative_exptime(clocked, tc):
    assert tc.ask(b"set k 0 100 1\r\nx\r\n") == STORED
    clocked.clock.advance(99)
    assert tc.ask(b"get k\r\n") == value(b"k", b"x") + END
    clocked.clock.advance(1)
    assert tc.ask(b"get k\r\n") == END


def test_exptime_of_exactly_30_days_is_relative(clocked, tc):
    assert tc.ask(b"set k 0 %d 1\r\nx\r\n" % THIRTY_DAYS) == STORED
    clocked.clock.advance(THIRTY_DAYS - 1)
    assert tc.ask(b"get k\r\n") == value(b"k", b"x") + END
    clocked.clock.advance(1)
    assert tc.ask(b"get k\r\n") == END


def test_absolute_exptime_beyond_30_days(clocked, tc):
    at = START + THIRTY_DAYS * 2
    assert tc.ask(b"set k 0 %d 1\r\nx\r\n" % at) == STORED
    clocked.clock.advance(THIRTY_DAYS * 2 - 1)
    assert tc.ask(b"get k\r\n") == value(b"k", b"x") + END
    clocked.clock.advance(1)
    assert tc.ask(b"get k\r\n") == END


@pytest.mark.parametrize(
    "exptime",
    [-1, -1000, THIRTY_DAYS + 1, START - 1, START],
    ids=["minus-one", "minus-1000", "unix-time-in-1970", "unix-time-a-second-ago", "unix-time-now"],
)
def test_exptime_already_past_stores_nothing(clocked, tc, exptime):
    assert tc.ask(b"set k 0 0 3\r\nold\r\n") == STORED
    assert tc.ask(b"set k 0 %d 3\r\nnew\r\n" % exptime) == STORED
    assert tc.ask(b"get k\r\n") == END
    assert tc.ask(b"add a 0 %d 1\r\nx\r\n" % exptime) == STORED
    assert tc.ask(b"get a\r\n") == END


def test_expired_items_are_invisible_to_every_command(clocked, tc):
    keys = [b"e%d" % i for i in range(10)]
    for key in keys:
        assert tc.ask(b"set %s 0 10 1\r\n5\r\n" % key) == STORED
    uniques = {key: gets_cas(tc, key) for key in keys}
    clocked.clock.advance(10)
    assert tc.ask(b"get e0\r\n") == END
    assert tc.ask(b"gets e1\r\n") == END
    assert tc.ask(b"gat 100 e2\r\n") == END
    assert tc.ask(b"gats 100 e2\r\n") == END
    assert tc.ask(b"replace e3 0 0 1\r\nx\r\n") == NOT_STORED
    assert tc.ask(b"append e4 0 0 1\r\nx\r\n") == NOT_STORED
    assert tc.ask(b"prepend e4 0 0 1\r\nx\r\n") == NOT_STORED
    assert tc.ask(b"incr e5 1\r\n") == NOT_FOUND
    assert tc.ask(b"decr e5 1\r\n") == NOT_FOUND
    assert tc.ask(b"touch e6 100\r\n") == NOT_FOUND
    assert tc.ask(b"cas e7 0 0 1 %d\r\nx\r\n" % uniques[b"e7"]) == NOT_FOUND
    assert tc.ask(b"delete e8\r\n") == NOT_FOUND
    assert tc.ask(b"add e9 0 0 1\r\nx\r\n") == STORED
    assert tc.ask(b"get " + b" ".join(keys) + b"\r\n") == value(b"e9", b"x") + END


def test_append_and_incr_keep_the_expiry(clocked, tc):
    assert tc.ask(b"set a 0 10 1\r\na\r\nset n 0 10 1\r\n1\r\n", replies=2) == STORED * 2
    assert tc.ask(b"append a 0 0 1\r\nb\r\n") == STORED
    assert tc.ask(b"incr n 1\r\n") == b"2\r\n"
    clocked.clock.advance(9)
    assert tc.ask(b"get a n\r\n") == value(b"a", b"ab") + value(b"n", b"2") + END
    clocked.clock.advance(1)
    assert tc.ask(b"get a n\r\n") == END


# -- the lite dialect ----------------------------------------------------------


def test_lite_dialect_reply_shapes(start_server, connect):
    running = start_server(settings=Settings(dialect="lite"))
    c = connect(running.port)
    assert talk(c, b"set a 0 0 5\r\nhello\r\n") == STORED
    assert talk(c, b"set b 5\r\nworld\r\n") == STORED
    assert talk(c, b"get a\r\n") == b"VALUE a 5\r\nhello\r\nEND\r\n"
    assert talk(c, b"get b nope a\r\n") == b"VALUE b 5\r\nworld\r\nVALUE a 5\r\nhello\r\nEND\r\n"
    assert talk(c, b"get nope\r\n") == END
    assert talk(c, b"add a 0 0 1\r\nx\r\n") == b"NOT-STORED\r\n"
    assert talk(c, b"replace nope 0 0 1\r\nx\r\n") == b"NOT-STORED\r\n"
    assert talk(c, b"append nope 1\r\nx\r\n") == b"NOT-STORED\r\n"
    assert talk(c, b"prepend nope 1\r\nx\r\n") == b"NOT-STORED\r\n"
    assert talk(c, b"set r\x00n 0 0 1\r\nx\r\n") == BAD
    assert talk(c, b"delete a\r\n") == DELETED
    assert talk(c, b"get a\r\n") == END


def test_lite_dialect_keeps_values_binary(start_server, connect):
    running = start_server(settings=Settings(dialect="lite"))
    c = connect(running.port)
    data = b"line\r\nEND\r\n\x00"
    assert talk(c, b"set k %d\r\n%s\r\n" % (len(data), data)) == STORED
    assert talk(c, b"get k\r\n") == b"VALUE k %d\r\n%s\r\nEND\r\n" % (len(data), data)


# -- error lines, each followed by proof the server is undisturbed -------------


def _errors() -> list:
    cases = [
        # unknown verbs and empty lines
        ("unknown-verb", b"bogus\r\n", ERROR),
        ("unknown-verb-with-args", b"bogus k 0 0 1\r\n", ERROR),
        ("verb-is-case-sensitive", b"GET sentinel\r\n", ERROR),
        ("verb-joined-by-tab", b"get\tsentinel\r\n", ERROR),
        ("empty-line", b"\r\n", ERROR),
        ("empty-line-bare-newline", b"\n", ERROR),
        ("spaces-only", b"   \r\n", ERROR),
        # wrong argument counts: memcached's bare ERROR (its optional last token is ignored)
        ("get-no-key", b"get\r\n", ERROR),
        ("gets-no-key", b"gets\r\n", ERROR),
        ("gat-nothing", b"gat\r\n", ERROR),
        ("gat-no-key", b"gat 10\r\n", END),
        ("gats-no-key", b"gats 10\r\n", END),
        ("cas-no-unique", b"cas k 0 0 1\r\n", ERROR),
        ("cas-lite-form", b"cas k 1\r\n", ERROR),
        ("cas-too-many-args", b"cas k 0 0 1 1 2 3\r\n", ERROR),
        ("delete-no-key", b"delete\r\n", ERROR),
        ("incr-no-args", b"incr\r\n", ERROR),
        ("incr-no-delta", b"incr num\r\n", ERROR),
        ("incr-four-args", b"incr num 1 2 3\r\n", ERROR),
        ("decr-no-delta", b"decr num\r\n", ERROR),
        ("touch-no-exptime", b"touch sentinel\r\n", ERROR),
        ("touch-four-args", b"touch sentinel 1 2 3\r\n", ERROR),
        ("verbosity-no-level", b"verbosity\r\n", ERROR),
        ("flush_all-three-args", b"flush_all 1 2 3\r\n", ERROR),
        ("stats-unknown-group", b"stats bogus\r\n", ERROR),
        # with three arguments no form says which is the length: the next command must not be eaten as data
        ("set-three-args-then-get", b"set k 0 14\r\nget sentinel\r\n", ERROR + value(b"sentinel", b"old", 5) + END),
        # non-numeric, negative or out-of-range numbers
        ("set-flags-letters", b"set k abc 0 1\r\nx\r\n", BAD),
        ("set-flags-negative", b"set k -1 0 1\r\nx\r\n", BAD),
        ("set-flags-2**32", b"set k %d 0 1\r\nx\r\n" % U32, BAD),
        ("set-flags-hex", b"set k 0x1 0 1\r\nx\r\n", BAD),
        ("set-exptime-letters", b"set k 0 abc 1\r\nx\r\n", BAD),
        ("set-exptime-decimal-point", b"set k 0 1.5 1\r\nx\r\n", BAD),
        ("set-length-letters", b"set k 0 0 abc\r\n", BAD),
        ("set-length-negative", b"set k 0 0 -1\r\n", BAD),
        ("set-length-decimal-point", b"set k 0 0 1.0\r\n", BAD),
        ("set-lite-length-letters", b"set k abc\r\n", BAD),
        ("set-lite-length-negative", b"set k -1\r\n", BAD),
        ("cas-unique-letters", b"cas sentinel 0 0 1 abc\r\nx\r\n", BAD),
        ("cas-unique-negative", b"cas sentinel 0 0 1 -1\r\nx\r\n", BAD),
        ("cas-unique-2**64", b"cas sentinel 0 0 1 %d\r\nx\r\n" % U64, BAD),
        ("incr-delta-letters", b"incr num abc\r\n", BAD_DELTA),
        ("incr-delta-negative", b"incr num -1\r\n", BAD_DELTA),
        ("incr-delta-2**64", b"incr num %d\r\n" % U64, BAD_DELTA),
        ("decr-delta-letters", b"decr num abc\r\n", BAD_DELTA),
        ("incr-non-numeric-value", b"incr sentinel 1\r\n", NON_NUMERIC),
        ("decr-non-numeric-value", b"decr sentinel 1\r\n", NON_NUMERIC),
        ("touch-exptime-letters", b"touch sentinel abc\r\n", BAD_EXPTIME),
        ("gat-exptime-letters", b"gat abc sentinel\r\n", BAD_EXPTIME),
        ("gats-exptime-letters", b"gats abc sentinel\r\n", BAD_EXPTIME),
        ("verbosity-letters", b"verbosity abc\r\n", BAD),
        ("flush_all-letters", b"flush_all abc\r\n", BAD_EXPTIME),
        ("delete-hold-time-5", b"delete sentinel 5\r\n", DELETE_USAGE),
        # bad keys
        ("get-key-251-bytes", b"get %s\r\n" % KEY_251, BAD),
        ("get-second-key-251-bytes", b"get sentinel %s\r\n" % KEY_251, BAD),
        ("get-key-control-char", b"get sen\x01tinel\r\n", BAD),
        ("get-key-tab", b"get sentinel\tnum\r\n", BAD),
        ("get-key-nul", b"get sentinel\x00\r\n", BAD),
        ("get-key-del", b"get sentinel\x7f\r\n", BAD),
        ("gets-key-251-bytes", b"gets %s\r\n" % KEY_251, BAD),
        ("gat-key-251-bytes", b"gat 10 %s\r\n" % KEY_251, BAD),
        ("gats-key-control-char", b"gats 10 sen\x02tinel\r\n", BAD),
        ("delete-key-251-bytes", b"delete %s\r\n" % KEY_251, BAD),
        ("delete-key-control-char", b"delete sentinel\x1b\r\n", BAD),
        ("incr-key-251-bytes", b"incr %s 1\r\n" % KEY_251, BAD),
        ("decr-key-control-char", b"decr num\x01 1\r\n", BAD),
        ("touch-key-251-bytes", b"touch %s 10\r\n" % KEY_251, BAD),
        ("set-lite-key-251-bytes", b"set %s 1\r\nx\r\n" % KEY_251, BAD),
        ("cas-key-251-bytes", b"cas %s 0 0 1 1\r\nx\r\n" % KEY_251, BAD),
        ("set-key-tab", b"set k\tx 0 0 1\r\nx\r\n", BAD),
        ("set-key-nul", b"set k\x00 0 0 1\r\nx\r\n", BAD),
        ("set-key-del", b"set k\x7f 0 0 1\r\nx\r\n", BAD),
        ("set-key-bell", b"set \x07 0 0 1\r\nx\r\n", BAD),
        # data blocks not ended by CRLF
        ("bad-data-chunk", b"set k 0 0 3\r\nabcXY", BAD_CHUNK),
        ("bad-data-chunk-cr-only", b"set k 0 0 3\r\nabc\rX", BAD_CHUNK),
        ("bad-data-chunk-lf-only", b"set k 0 0 3\r\nabc\nX", BAD_CHUNK),
        ("bad-data-chunk-longer-data", b"set k 0 0 3\r\nabcde\r\n", BAD_CHUNK + ERROR),
        ("bad-data-chunk-lite-form", b"set k 3\r\nabcXY", BAD_CHUNK),
        ("bad-data-chunk-over-existing", b"set sentinel 0 0 3\r\nnewXY", BAD_CHUNK),
        ("bad-data-chunk-append", b"append sentinel 0 0 3\r\nnewXY", BAD_CHUNK),
        ("bad-data-chunk-cas", b"cas sentinel 0 0 3 1\r\nnewXY", BAD_CHUNK),
        ("bad-data-chunk-empty-value", b"set k 0 0 0\r\nXY", BAD_CHUNK),
        # as in memcached 1.6, noreply silences errors too (the client is not reading)
        ("noreply-set-flags-letters", b"set k abc 0 1 noreply\r\nx\r\n", b""),
        ("noreply-set-key-251-bytes", b"set %s 0 0 1 noreply\r\nx\r\n" % KEY_251, b""),
        ("noreply-bad-data-chunk", b"set k 0 0 3 noreply\r\nabcXY", b""),
        ("noreply-bad-data-chunk-lite-form", b"set k 3 noreply\r\nabcXY", b""),
        ("noreply-cas-unique-letters", b"cas sentinel 0 0 1 abc noreply\r\nx\r\n", b""),
        ("noreply-incr-delta-letters", b"incr num abc noreply\r\n", b""),
        ("noreply-incr-non-numeric-value", b"incr sentinel 1 noreply\r\n", b""),
        ("noreply-decr-non-numeric-value", b"decr sentinel 1 noreply\r\n", b""),
        ("noreply-delete-hold-time-5", b"delete sentinel 5 noreply\r\n", b""),
        ("noreply-delete-key-251-bytes", b"delete %s noreply\r\n" % KEY_251, b""),
        ("noreply-touch-exptime-letters", b"touch sentinel abc noreply\r\n", b""),
        ("noreply-flush_all-letters", b"flush_all abc noreply\r\n", b""),
        ("noreply-verbosity-letters", b"verbosity abc noreply\r\n", b""),
    ]
    # every storage verb, with too few arguments and with the ambiguous three
    for verb in (b"set", b"add", b"replace", b"append", b"prepend"):
        name = verb.decode()
        cases += [
            (f"{name}-no-args", verb + b"\r\n", ERROR),
            (f"{name}-key-only", verb + b" k\r\n", ERROR),
            (f"{name}-three-args", verb + b" k 0 0\r\n", ERROR),
            (f"{name}-six-args", verb + b" k 0 0 1 2 3\r\n", ERROR),
            (f"{name}-key-251-bytes", verb + b" %s 0 0 1\r\nx\r\n" % KEY_251, BAD),
            (f"{name}-key-control-char", verb + b" k\x01 0 0 1\r\nx\r\n", BAD),
        ]
    return [pytest.param(request_, expected, id=name) for name, request_, expected in cases]


ERROR_CASES = _errors()
SENTINELS = value(b"sentinel", b"old", 5) + value(b"num", b"41", 7)


@pytest.fixture
def two(shared_server, connect) -> tuple[Raw, Raw]:
    """Two connections to the shared server, which holds a sentinel and a number and no k."""
    a, b = connect(shared_server.port), connect(shared_server.port)
    assert a.ask(b"delete k\r\n") in (DELETED, NOT_FOUND)
    assert a.ask(b"set sentinel 5 0 3\r\nold\r\nset num 7 0 2\r\n41\r\n", replies=2) == STORED * 2
    assert b.ask(b"version\r\n") == VERSION
    return a, b


@pytest.mark.parametrize("request_, expected", ERROR_CASES)
def test_error_reply_and_nothing_disturbed(two, request_, expected):
    a, other = two
    assert talk(a, request_) == expected  # talk() also proves this connection still answers
    assert a.ask(b"get sentinel num k\r\n") == SENTINELS + END
    assert other.ask(b"get sentinel num k\r\n") == SENTINELS + END


@pytest.mark.parametrize(
    "prefix", [b"", b"bogus ", b"set ", b"delete "], ids=["no-spaces", "unknown-verb", "set", "delete"]
)
def test_line_over_2048_bytes_without_newline_closes(two, prefix):
    a, other = two
    a.send(prefix + b"x" * 3000)
    line = a.readline()
    assert line.startswith((b"CLIENT_ERROR ", b"SERVER_ERROR ", b"ERROR")), line
    assert a.closed_by_peer()
    assert a.buf == b""
    assert other.ask(b"get sentinel num\r\n") == SENTINELS + END


def test_line_under_2048_bytes_waits_for_its_newline(two):
    a, other = two
    a.send(b"bogus " + b"x" * 2000)
    assert a.quiet(0.2)
    assert other.ask(b"version\r\n") == VERSION
    assert talk(a, b"\r\n") == ERROR


def test_control_characters_in_a_value_are_fine(raw):
    data = bytes(range(256))
    assert raw.ask(set_line(b"k", data)) == STORED
    assert raw.ask(b"get k\r\n") == value(b"k", data) + END


# -- items over the size limit -------------------------------------------------


def test_item_of_exactly_one_mib_is_stored(raw):
    data = bytes(range(256)) * (MIB // 256)
    assert raw.ask(set_line(b"big", data)) == STORED
    assert raw.ask(b"get big\r\n") == value(b"big", data) + END


def test_item_over_one_mib_is_refused_and_swallowed(two):
    a, other = two
    data = b"z" * (MIB + 1)
    assert talk(a, set_line(b"k", data) + b"get sentinel\r\n") == TOO_LARGE + value(b"sentinel", b"old", 5) + END
    assert a.ask(b"get sentinel num k\r\n") == SENTINELS + END
    assert other.ask(b"get sentinel num k\r\n") == SENTINELS + END


@pytest.fixture
def small(start_server, connect) -> tuple[Running, Raw, Raw]:
    """A server that takes items of at most 10 bytes, with a sentinel stored."""
    running = start_server(settings=Settings(max_item_size=10))
    a, b = connect(running.port), connect(running.port)
    assert a.ask(b"set sentinel 5 0 3\r\nold\r\nset num 7 0 2\r\n41\r\n", replies=2) == STORED * 2
    return running, a, b


@pytest.mark.parametrize(
    "request_",
    [
        set_line(b"k", b"x" * 11),
        set_line(b"k", b"x" * 11, verb=b"add"),
        set_line(b"sentinel", b"x" * 11, verb=b"replace"),
        set_line(b"sentinel", b"x" * 11, verb=b"append"),
        set_line(b"sentinel", b"x" * 11, verb=b"prepend"),
        b"cas sentinel 0 0 11 1\r\n" + b"x" * 11 + b"\r\n",
        b"set k 11\r\n" + b"x" * 11 + b"\r\n",
        b"set k 0 0 700\r\n" + b"get k\r\n" * 100 + b"\r\n",
        b"set k 0 0 12\r\nabc\r\nget k\r\n\r\n",
    ],
    ids=[
        "set",
        "add",
        "replace",
        "append",
        "prepend",
        "cas",
        "lite-form",
        "data-looks-like-commands",
        "data-holds-crlf",
    ],
)
def test_item_over_small_limit_is_refused_and_swallowed(small, request_):
    _, a, other = small
    assert talk(a, request_) == TOO_LARGE
    assert a.ask(b"get sentinel num k\r\n") == SENTINELS + END
    assert other.ask(b"get sentinel num k\r\n") == SENTINELS + END


def test_item_over_small_limit_with_noreply_is_silently_swallowed(small):
    _, a, _ = small
    assert talk(a, b"set k 0 0 11 noreply\r\n" + b"x" * 11 + b"\r\n") == b""
    assert a.ask(b"get sentinel num k\r\n") == SENTINELS + END


def test_item_at_small_limit_is_stored(small):
    _, a, _ = small
    assert a.ask(set_line(b"k", b"0123456789")) == STORED
    assert a.ask(b"get k\r\n") == value(b"k", b"0123456789") + END


@pytest.mark.parametrize("verb", [b"append", b"prepend"])
def test_append_past_the_limit_is_not_stored(small, verb):
    # memcached answers NOT_STORED when the joined item would be too large
    _, a, _ = small
    assert a.ask(set_line(b"k", b"0123456789", 4)) == STORED
    assert talk(a, b"%s k 0 0 1\r\nx\r\n" % verb) == NOT_STORED
    assert a.ask(b"get k\r\n") == value(b"k", b"0123456789", 4) + END


def test_small_limit_shows_in_stats_settings(small):
    _, a, _ = small
    assert stats(a, b"settings")["item_size_max"] == "10"


def test_oversized_data_arriving_in_packets_after_the_reply(small):
    _, a, other = small
    a.send(b"set k 0 0 100\r\n")
    assert a.readline() == TOO_LARGE  # answered before the data is sent
    for _ in range(4):
        a.send(b"y" * 20)
        assert a.quiet(0.02)
    a.send(b"y" * 20)
    assert a.quiet(0.02)
    a.send(b"\r")
    assert a.quiet(0.02)
    a.send(b"\n")
    assert talk(a, b"get sentinel num k\r\n") == SENTINELS + END
    assert other.ask(b"get sentinel num k\r\n") == SENTINELS + END


def test_oversized_data_tail_shares_a_packet_with_the_next_command(small):
    _, a, _ = small
    a.send(b"set k 0 0 50\r\n" + b"y" * 30)
    assert a.readline() == TOO_LARGE
    a.send(b"y" * 20)
    assert talk(a, b"\r\nget sentinel\r\n") == value(b"sentinel", b"old", 5) + END


def test_oversized_default_limit_in_packets(two):
    a, _ = two
    a.send(b"set k 0 0 %d\r\n" % (2 * MIB))
    assert a.readline() == TOO_LARGE
    chunk = b"get sentinel\r\n" * (MIB // 14 // 4)
    sent = 0
    while sent + len(chunk) <= 2 * MIB:
        a.send(chunk)
        sent += len(chunk)
    a.send(b"y" * (2 * MIB - sent) + b"\r\n")
    assert talk(a, b"get num\r\n") == value(b"num", b"41", 7) + END


# -- pipelining and binary values ----------------------------------------------


def test_pipelined_batch_is_answered_in_order(raw):
    batch = (
        b"set a 1 0 1\r\nA\r\n"
        b"get a\r\n"
        b"add a 0 0 1\r\nX\r\n"
        b"bogus\r\n"
        b"set n 0 0 1\r\n9\r\n"
        b"incr n 1\r\n"
        b"get a n nope\r\n"
        b"delete a\r\n"
        b"get a\r\n"
        b"set k abc 0 1\r\nx\r\n"
        b"touch n 0\r\n"
        b"decr n 20\r\n"
    )
    expected = (
        STORED
        + value(b"a", b"A", 1)
        + END
        + NOT_STORED
        + ERROR
        + STORED
        + b"10\r\n"
        + value(b"a", b"A", 1)
        + value(b"n", b"10")
        + END
        + DELETED
        + END
        + BAD
        + TOUCHED
        + b"0\r\n"
    )
    assert talk(raw, batch) == expected


def test_many_commands_in_one_send(raw):
    keys = [b"key%d" % i for i in range(500)]
    batch = b"".join(set_line(k, k * 3, i) for i, k in enumerate(keys))
    batch += b"".join(b"get %s\r\n" % k for k in keys)
    batch += b"get " + b" ".join(keys) + b"\r\n"
    every = b"".join(value(k, k * 3, i) for i, k in enumerate(keys))
    expected = STORED * 500 + b"".join(value(k, k * 3, i) + END for i, k in enumerate(keys)) + every + END
    assert talk(raw, batch) == expected


def test_one_byte_per_send(raw):
    data = b"a\r\nb\x00c\r\n"
    batch = set_line(b"k", data, 3) + b"get k\r\n"
    for i in range(len(batch)):
        raw.send(batch[i : i + 1])
    assert talk(raw, b"") == STORED + value(b"k", data, 3) + END


@pytest.mark.parametrize(
    "data",
    [b"\r\n", b"\x00", b"a\r\nb", b"\r\nEND\r\n", b"VALUE k 0 1\r\nx\r\nEND\r\n", b"\x00\r\n\x00" * 100, b"\n\r"],
    ids=["crlf", "nul", "crlf-inside", "fake-end", "fake-value", "nul-crlf-repeated", "lf-cr"],
)
def test_values_holding_crlf_and_nul(raw, data):
    assert raw.ask(set_line(b"k", data, 1)) == STORED
    assert talk(raw, b"get k\r\n") == value(b"k", data, 1) + END
    assert raw.ask(b"append k 0 0 %d\r\n%s\r\n" % (len(data), data)) == STORED
    assert talk(raw, b"get k\r\n") == value(b"k", data * 2, 1) + END


# -- stats -----------------------------------------------------------------------

ISSUE_STATS = [
    "pid",
    "uptime",
    "time",
    "version",
    "curr_connections",
    "total_connections",
    "cmd_get",
    "cmd_set",
    "cmd_touch",
    "cmd_flush",
    "get_hits",
    "get_misses",
    "get_expired",
    "delete_hits",
    "delete_misses",
    "incr_hits",
    "incr_misses",
    "decr_hits",
    "decr_misses",
    "cas_hits",
    "cas_misses",
    "cas_badval",
    "touch_hits",
    "touch_misses",
    "curr_items",
    "total_items",
    "bytes",
    "evictions",
    "limit_maxbytes",
    "threads",
]


def test_stats_lists_every_counter(server, raw):
    s = stats(raw)
    for name in ISSUE_STATS:
        assert name in s, name
    for name in ISSUE_STATS:
        if name != "version":
            assert s[name].isdigit(), (name, s[name])
    assert int(s["pid"]) == os.getpid()
    assert s["version"] == PROTOCOL_VERSION
    assert abs(int(s["time"]) - time.time()) <= 5
    assert 0 <= int(s["uptime"]) <= 60
    assert int(s["limit_maxbytes"]) == 64 * MIB
    assert int(s["threads"]) >= 1
    assert int(s["curr_connections"]) >= 1
    assert s["curr_items"] == s["total_items"] == s["bytes"] == s["evictions"] == "0"


def deltas(before: dict[str, str], after: dict[str, str]) -> dict[str, int]:
    names = [n for n in ISSUE_STATS if n not in ("pid", "uptime", "time", "version", "threads")]
    return {n: int(after[n]) - int(before[n]) for n in names if int(after[n]) != int(before[n])}


def test_stats_counters_move(server, raw):
    before = stats(raw)
    replies = talk(
        raw,
        b"set a 0 0 1\r\n1\r\n"  # cmd_set
        b"get a\r\n"  # cmd_get get_hits
        b"get nope a\r\n"  # cmd_get x2 get_misses get_hits
        b"add a 0 0 1\r\n2\r\n"  # cmd_set (not stored)
        b"incr a 1\r\n"  # incr_hits
        b"incr nope 1\r\n"  # incr_misses
        b"decr a 1\r\n"  # decr_hits
        b"decr nope 1\r\n"
        b"decr nope 1\r\n"  # decr_misses x2
        b"touch a 10\r\n"  # cmd_touch touch_hits
        b"touch nope 10\r\n"  # cmd_touch touch_misses
        b"cas nope 0 0 1 1\r\nx\r\n"  # cmd_set cas_misses
        b"cas a 0 0 1 18446744073709551615\r\nx\r\n"  # cmd_set cas_badval
        b"set b 0 0 2\r\nbb\r\n"  # cmd_set
        b"delete b\r\n"  # delete_hits
        b"delete b\r\n",  # delete_misses
    )
    assert replies == (
        STORED + value(b"a", b"1") + END + value(b"a", b"1") + END + NOT_STORED + b"2\r\n" + NOT_FOUND
        + b"1\r\n" + NOT_FOUND * 2 + TOUCHED + NOT_FOUND + NOT_FOUND + EXISTS + STORED + DELETED + NOT_FOUND
    )  # fmt: skip
    unique = gets_cas(raw, b"a")  # cmd_get get_hits
    assert raw.ask(b"cas a 0 0 1 %d\r\n5\r\n" % unique) == STORED  # cmd_set cas_hits
    after = stats(raw)
    moved = deltas(before, after)
    bytes_ = moved.pop("bytes")
    assert bytes_ > 0
    total = moved.pop("total_items")
    assert total >= 3  # set a, set b, cas a (incr and decr may count as well)
    assert moved == {
        "cmd_get": 4,
        "cmd_set": 6,
        "cmd_touch": 2,
        "get_hits": 3,
        "get_misses": 1,
        "incr_hits": 1,
        "incr_misses": 1,
        "decr_hits": 1,
        "decr_misses": 2,
        "touch_hits": 1,
        "touch_misses": 1,
        "cas_hits": 1,
        "cas_misses": 1,
        "cas_badval": 1,
        "delete_hits": 1,
        "delete_misses": 1,
        "curr_items": 1,
    }
    assert raw.ask(b"flush_all\r\n") == OK
    flushed = stats(raw)
    assert int(flushed["cmd_flush"]) == int(after["cmd_flush"]) + 1
    # as in memcached, the flushed item stays (out of sight) until a lookup finds it
    assert flushed["curr_items"] == "1" and flushed["bytes"] == after["bytes"]
    assert raw.ask(b"get a\r\n") == END
    found = stats(raw)
    assert int(found["get_flushed"]) == int(after["get_flushed"]) + 1
    assert found["curr_items"] == "0" and found["bytes"] == "0"


def test_stats_gat_counts_touches(raw):
    assert raw.ask(b"set a 0 0 1\r\n1\r\n") == STORED
    before = stats(raw)
    assert raw.ask(b"gat 10 a nope\r\n") == value(b"a", b"1") + END
    assert raw.ask(b"gats 10 nope\r\n") == END
    moved = deltas(before, stats(raw))
    assert moved == {"cmd_touch": 3, "touch_hits": 1, "touch_misses": 2}


def test_stats_get_expired(clocked, tc):
    assert tc.ask(b"set a 0 10 1\r\n1\r\n") == STORED
    before = stats(tc)
    clocked.clock.advance(10)
    assert tc.ask(b"get a\r\n") == END
    after = stats(tc)
    assert int(after["get_expired"]) == int(before["get_expired"]) + 1
    assert int(after["get_misses"]) == int(before["get_misses"]) + 1
    assert int(after["get_hits"]) == int(before["get_hits"])
    assert after["curr_items"] == "0"


def test_stats_connections(server, raw, connect):
    assert raw.ask(b"version\r\n") == VERSION
    first = stats(raw)
    assert int(first["curr_connections"]) >= 1
    other = connect(server.port)
    assert other.ask(b"version\r\n") == VERSION
    second = stats(raw)
    assert int(second["total_connections"]) == int(first["total_connections"]) + 1
    assert int(second["curr_connections"]) == int(first["curr_connections"]) + 1
    other.close()
    deadline = time.monotonic() + 5
    while int(stats(raw)["curr_connections"]) != int(first["curr_connections"]):
        assert time.monotonic() < deadline, "curr_connections did not go back down"
        time.sleep(0.01)


def test_stats_evictions(start_server, connect):
    running = start_server(memory_limit=2000)
    c = connect(running.port)
    assert stats(c)["limit_maxbytes"] == "2000"
    for i in range(40):
        assert c.ask(set_line(b"k%d" % i, b"v" * 100)) == STORED
    s = stats(c)
    assert int(s["evictions"]) > 0
    assert int(s["curr_items"]) + int(s["evictions"]) == 40
    assert int(s["bytes_in_memory"]) <= 2000 and int(s["bytes"]) < int(s["bytes_in_memory"])
    assert int(s["total_items"]) == 40
    # the most recent item survives, the oldest was evicted
    assert c.ask(b"get k39 k0\r\n") == value(b"k39", b"v" * 100) + END


def test_stats_settings(server, raw):
    s = stats(raw, b"settings")
    assert s["item_size_max"] == str(MIB)
    assert s["maxbytes"] == str(64 * MIB)
    assert s["tcpport"] == str(server.port)
    assert s["evictions"] == "on"
    assert s["cas_enabled"] == "yes"


def test_stats_reset(raw):
    assert raw.ask(b"set a 0 0 1\r\n1\r\nget a\r\nget nope\r\n", replies=3) == STORED + value(b"a", b"1") + END + END
    assert raw.ask(b"stats reset\r\n") == b"RESET\r\n"
    s = stats(raw)
    for name in ("cmd_get", "cmd_set", "get_hits", "get_misses", "delete_hits", "incr_misses"):
        assert s[name] == "0", name
    assert s["curr_items"] == "1"  # items are not counters
    assert raw.ask(b"get a\r\n") == value(b"a", b"1") + END


# -- restart -------------------------------------------------------------------


def test_restart_keeps_everything(clocked, connect):
    c = connect(clocked.port)
    binary = b"line one\r\nline two\r\n\x00\x00END\r\n"
    batch = (
        set_line(b"binary", binary, U32 - 1)
        + set_line(b"plain", b"hello", 1)
        + set_line(b"soon", b"expiring", 2, 100)
        + set_line(b"later", b"absolute", 3, START + THIRTY_DAYS * 3)
        + set_line(b"gone", b"deleted", 4)
        + set_line(b"dead", b"expired", 5, 10)
        + set_line(b"counter", b"41", 6)
        + set_line(b"joined", b"mid", 7)
        + set_line(b"touched", b"t", 8, 10)
        + set_line(b"lite", b"x")
        + b"set lite2 5\r\nhello\r\n"
        + set_line(b"empty", b"")
    )
    assert talk(c, batch) == STORED * 12
    assert talk(c, b"delete gone\r\nincr counter 1\r\nappend joined 0 0 4\r\n-end\r\n"
                   b"prepend joined 0 0 6\r\nstart-\r\ntouch touched 1000\r\n") == (
        DELETED + b"42\r\n" + STORED * 2 + TOUCHED
    )  # fmt: skip
    keys = b"binary plain soon later gone dead counter joined touched lite lite2 empty"
    listing = c.ask(b"gets %s\r\n" % keys).split(b"\r\n")
    uniques = [int(line.split()[4]) for line in listing if line.startswith(b"VALUE ")]
    assert len(uniques) == 11
    # the highest unique ever issued belongs to an item deleted since
    assert c.ask(b"set last 0 0 1\r\nx\r\n") == STORED
    uniques.append(gets_cas(c, b"last"))
    plain_unique = gets_cas(c, b"plain")
    assert c.ask(b"delete last\r\n") == DELETED
    clocked.clock.advance(10)  # "dead" expires; "touched" was moved to 1000 s
    expected = (
        value(b"binary", binary, U32 - 1)
        + value(b"plain", b"hello", 1)
        + value(b"soon", b"expiring", 2)
        + value(b"later", b"absolute", 3)
        + value(b"counter", b"42", 6)
        + value(b"joined", b"start-mid-end", 7)
        + value(b"touched", b"t", 8)
        + value(b"lite", b"x")
        + value(b"lite2", b"hello")
        + value(b"empty", b"")
        + END
    )
    assert c.ask(b"get %s last\r\n" % keys) == expected

    clocked.restart()
    d = connect(clocked.port)
    assert d.ask(b"get %s last\r\n" % keys) == expected
    after = d.ask(b"gets %s\r\n" % keys)
    assert b"VALUE binary %d %d " % (U32 - 1, len(binary)) in after
    assert d.ask(b"set fresh 0 0 1\r\nx\r\n") == STORED
    fresh = gets_cas(d, b"fresh")
    assert fresh > max(uniques)
    # an item's unique survives the restart, so a client's cas still succeeds
    assert gets_cas(d, b"plain") == plain_unique
    assert d.ask(b"cas plain 1 0 5 %d\r\nhello\r\n" % plain_unique) == STORED
    assert d.ask(b"incr counter 1\r\n") == b"43\r\n"
    assert gets_cas(d, b"counter") > fresh

    # the expiry times survived as absolute times
    clocked.clock.advance(89)  # 99 s after "soon" was set
    assert d.ask(b"get soon touched\r\n") == value(b"soon", b"expiring", 2) + value(b"touched", b"t", 8) + END
    clocked.clock.advance(1)
    assert d.ask(b"get soon touched\r\n") == value(b"touched", b"t", 8) + END
    clocked.restart()
    e = connect(clocked.port)
    assert e.ask(b"get soon counter\r\n") == value(b"counter", b"43", 6) + END
    clocked.clock.advance(THIRTY_DAYS * 3)
    assert e.ask(b"get later touched plain\r\n") == value(b"plain", b"hello", 1) + END
    assert e.ask(b"set last 0 0 1\r\nx\r\n") == STORED
    assert gets_cas(e, b"last") > fresh


def test_restart_after_flush_all(clocked, connect):
    c = connect(clocked.port)
    assert (
        talk(c, b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\nflush_all\r\nset c 0 0 1\r\n3\r\n")
        == STORED * 2 + OK + STORED
    )
    assert talk(c, b"set d 0 0 1\r\n4\r\nflush_all 10\r\n") == STORED + OK
    clocked.restart()
    d = connect(clocked.port)
    assert d.ask(b"get a b c d\r\n") == value(b"c", b"3") + value(b"d", b"4") + END
    # the pending flush survived the restart: it also covers what is written now
    assert d.ask(b"set e 0 0 1\r\n5\r\n") == STORED
    clocked.clock.advance(10)
    assert d.ask(b"get a b c d e\r\n") == END
    assert d.ask(b"set f 0 0 1\r\n6\r\n") == STORED
    clocked.restart()
    f = connect(clocked.port)
    assert f.ask(b"get a b c d e f\r\n") == value(b"f", b"6") + END
