"""Replay is exact: random command sequences against a live server, then a
restart from the data file must give back the very same state."""

from __future__ import annotations

import base64
import itertools
import threading
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memcachedlite import MemcacheServer, Store
from memcachedlite.storage.items import BINARY_KEY
from tests.conftest import Raw

KEYS = [b"a", b"b", b"c", b"n"]
START = 1_800_000_000
_runs = itertools.count()

keys = st.sampled_from(KEYS)
values = st.binary(max_size=12) | st.sampled_from([b"0", b"7", b"18446744073709551615", b"\r\n"])
flags = st.sampled_from([0, 1, 2**32 - 1])
# relative, absolute (beyond 30 days), negative, none
exptimes = st.sampled_from([0, 0, 5, 100, -1, START + 50, 60 * 60 * 24 * 31])


def meta_flags(choices: list[str]):
    """A few distinct meta flags, as the tail of a command line."""
    return st.lists(st.sampled_from(choices), unique=True, max_size=4).map(
        lambda chosen: "".join(" " + flag for flag in chosen).encode()
    )


def _meta_key(key: bytes, flags: bytes) -> bytes:
    return base64.b64encode(key) if b" b" in flags else key


def storage(verb: str):
    return st.tuples(st.just(verb), keys, flags, exptimes, values).map(
        lambda t: b"%s %s %d %d %d\r\n%s\r\n" % (t[0].encode(), t[1], t[2], t[3], len(t[4]), t[4])
    )


commands = st.one_of(
    storage("set"),
    storage("add"),
    storage("replace"),
    storage("append"),
    storage("prepend"),
    st.tuples(keys, values, st.integers(0, 40)).map(
        lambda t: b"cas %s 0 0 %d %d\r\n%s\r\n" % (t[0], len(t[1]), t[2], t[1])
    ),
    keys.map(lambda k: b"delete %s\r\n" % k),
    st.tuples(st.sampled_from([b"incr", b"decr"]), keys, st.sampled_from([1, 5, 2**64 - 1])).map(
        lambda t: b"%s %s %d\r\n" % t
    ),
    st.tuples(keys, exptimes).map(lambda t: b"touch %s %d\r\n" % t),
    st.tuples(exptimes, keys).map(lambda t: b"gat %d %s\r\n" % t),
    st.sampled_from([b"flush_all\r\n", b"flush_all 10\r\n"]),
    st.integers(1, 20).map(lambda s: ("tick", s)),
    # the meta commands, with the flags that change what is stored
    st.tuples(keys, values, meta_flags(["T5", "T-1", "F3", "MA", "MP", "ME", "MR", "I", "C2", "E99", "b"])).map(
        lambda t: b"ms %s %d%s\r\n%s\r\n" % (_meta_key(t[0], t[2]), len(t[1]), t[2], t[1])
    ),
    st.tuples(keys, meta_flags(["I", "T30", "x", "C1", "E77", "b"])).map(
        lambda t: b"md %s%s\r\n" % (_meta_key(t[0], t[1]), t[1])
    ),
    st.tuples(keys, meta_flags(["N0", "N50", "J9", "D3", "MD", "T7", "E55", "b"])).map(
        lambda t: b"ma %s%s\r\n" % (_meta_key(t[0], t[1]), t[1])
    ),
    st.tuples(keys, meta_flags(["N20", "T9", "v", "b"])).map(lambda t: b"mg %s%s\r\n" % (_meta_key(t[0], t[1]), t[1])),
)


def snapshot(store: Store) -> dict:
    """What the data file keeps of each item: not the last access time nor
    whether it was fetched, which last only while the server runs."""
    out = {}
    for key in store.keys():
        item = store.peek(key)
        out[key] = (item.value, item.flags, item.exptime, item.cas, item.stale, item.state & BINARY_KEY)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(commands, max_size=30))
def test_state_after_restart_equals_state_before(tmp_path: Path, script: list) -> None:
    now = [float(START)]
    clock = lambda: now[0]  # noqa: E731
    path = tmp_path / f"data-{next(_runs)}.txt"
    store = Store(path, clock=clock)
    server = MemcacheServer(("127.0.0.1", 0), store)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    client = Raw(server.port)
    try:
        for step in script:
            if isinstance(step, tuple):
                now[0] += step[1]
                continue
            reply = client.ask(step)
            assert not reply.startswith((b"ERROR", b"SERVER_ERROR")), (step, reply)
        before = snapshot(store)
    finally:
        client.close()
        server.stop()
        thread.join(10)
        store.close()
    again = Store(path, clock=clock)
    try:
        assert snapshot(again) == before
        assert again.flush_at == (store.flush_at if store.flush_at > now[0] else 0)
    finally:
        again.close()
