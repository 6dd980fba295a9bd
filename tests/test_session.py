"""The protocol engine on in-memory bytes: framing, dispatch and the registry."""

from __future__ import annotations

import pytest

from memcachedlite import ClientError, Registry, ServerError, Session, Settings, Store
from memcachedlite.protocols.text import MAX_LINE, MAX_LONG_LINE


@pytest.fixture
def store():
    s = Store()
    yield s
    s.close()


@pytest.fixture
def session(store):
    return Session(store)


def test_batch_answered_in_order_as_one_reply(session):
    reply = session.feed(b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\nget a b c\r\n")
    assert reply == b"STORED\r\nSTORED\r\nVALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n"


def test_command_split_at_every_byte(session):
    stream = b"set k 5 0 9\r\nab\r\n\0cd\r\n\r\nget k\r\n"
    replies = b"".join(session.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert replies == b"STORED\r\nVALUE k 5 9\r\nab\r\n\0cd\r\n\r\nEND\r\n"


def test_bare_newline_line_endings_accepted(session):
    assert session.feed(b"set a 0 0 1\n1\r\nget a\n") == b"STORED\r\nVALUE a 0 1\r\n1\r\nEND\r\n"


def test_runs_of_spaces_are_one_separator(session):
    assert session.feed(b"set  a   0 0  1 \r\nx\r\n") == b"STORED\r\n"


def test_blank_line_is_error(session):
    assert session.feed(b"\r\n   \r\n") == b"ERROR\r\nERROR\r\n"


def test_too_large_block_swallowed_across_feeds(store):
    session = Session(store, Settings(max_item_size=10))
    assert session.feed(b"set big 0 0 25\r\n0123456789") == b"SERVER_ERROR object too large for cache\r\n"
    assert session.feed(b"0123456789") == b""
    assert session.feed(b"01234\r\nget big\r\n") == b"END\r\n"
    assert store.stats()["store_too_large"] == 1


def test_too_large_block_already_buffered(store):
    session = Session(store, Settings(max_item_size=3))
    assert session.feed(b"set big 0 0 4\r\nabcd\r\nset ok 0 0 3\r\nabc\r\n") == (
        b"SERVER_ERROR object too large for cache\r\nSTORED\r\n"
    )


def test_line_without_newline_past_limit_closes(session):
    assert session.feed(b"x" * (MAX_LINE + 1)) == b"CLIENT_ERROR line too long\r\n"
    assert session.closing


def test_long_get_line_allowed_until_its_own_bound(session):
    keys = b" ".join(b"k%d" % i for i in range(1000))
    assert len(keys) > MAX_LINE
    assert session.feed(b"get " + keys[: len(keys) // 2]) == b""
    assert not session.closing
    assert session.feed(keys[len(keys) // 2 :] + b"\r\n") == b"END\r\n"
    assert session.feed(b"get " + b"k" * MAX_LONG_LINE) == b"CLIENT_ERROR line too long\r\n"
    assert session.closing


def test_nothing_runs_after_close(session):
    assert session.feed(b"quit\r\nset a 0 0 1\r\n1\r\n") == b""
    assert session.closing
    assert session.store.peek(b"a") is None


def test_noreply_hides_replies_and_errors_as_memcached_does(session):
    assert session.feed(b"set a 0 0 1 noreply\r\n1\r\nincr a x noreply\r\nincr a x\r\n") == (
        b"CLIENT_ERROR invalid numeric delta argument\r\n"
    )
    assert session.store.peek(b"a").value == b"1"


def test_noreply_is_only_a_flag_past_the_required_arguments(session):
    # "delete noreply" deletes the key named noreply.
    session.feed(b"set noreply 0 0 1\r\nx\r\n")
    assert session.feed(b"delete noreply\r\n") == b"DELETED\r\n"


def test_bad_data_chunk_consumes_the_announced_bytes(session):
    # as memcached: the block and the two bytes after it are eaten, the rest is a new line
    assert session.feed(b"set a 0 0 3\r\nabcde\r\n") == b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"
    assert session.store.peek(b"a") is None


def _registry_with(handler, **options) -> Registry:
    registry = Registry()
    registry.add("boom", handler, **options)
    return registry


def test_handler_crash_is_an_internal_error_and_the_session_goes_on(store, caplog):
    def boom(ctx, args, data):
        raise RuntimeError("kaboom")

    session = Session(store, registry=_registry_with(boom))
    assert session.feed(b"boom\r\nboom\r\n") == b"SERVER_ERROR internal error\r\n" * 2
    assert "kaboom" in caplog.text  # logged with its traceback, never sent
    assert not session.closing


def test_handler_protocol_error_is_sent(store):
    def picky(ctx, args, data):
        raise ClientError("no thanks")

    session = Session(store, registry=_registry_with(picky))
    assert session.feed(b"boom\r\n") == b"CLIENT_ERROR no thanks\r\n"


def test_custom_storage_verb_gets_its_data_block(store):
    seen = []

    def stash(ctx, args, data):
        seen.append((args, data))
        return b"OK\r\n"

    session = Session(store, registry=_registry_with(stash, min_args=2, max_args=2, data=1, noreply=True))
    assert session.feed(b"boom x 3\r\na\r\n\r\nboom y 0 noreply\r\n\r\n") == b"OK\r\n"
    assert seen == [([b"x", b"3"], b"a\r\n"), ([b"y", b"0"], b"")]


def test_arity_is_checked_before_the_handler(store):
    called = []
    session = Session(store, registry=_registry_with(lambda c, a, d: called.append(a), min_args=1, max_args=1))
    assert session.feed(b"boom\r\nboom a b\r\n") == b"ERROR\r\n" * 2  # memcached's reply to a wrong token count
    assert called == []


def test_handler_returning_none_sends_nothing(store):
    session = Session(store, registry=_registry_with(lambda c, a, d: None))
    assert session.feed(b"boom\r\n") == b""


# -- the registry -----------------------------------------------------------------


def test_decorator_returns_the_function_and_names_the_verb_after_it():
    registry = Registry()

    @registry.command(min_args=1)
    def shout(ctx, args, data):
        return b"OK\r\n"

    row = registry.get(b"shout")
    assert row is not None and row.handler is shout and row.min_args == 1
    assert "shout" in registry and b"shout" in registry and len(registry) == 1
    assert [r.name for r in registry] == [b"shout"]


def test_taken_name_is_an_error():
    registry = Registry()
    registry.add("x", lambda c, a, d: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.add(b"x", lambda c, a, d: None)


@pytest.mark.parametrize("name", ["", "two words", "tab\there", "nl\n"])
def test_verb_names_must_be_one_token(name):
    with pytest.raises(ValueError, match="invalid verb"):
        Registry().add(name, lambda c, a, d: None)


def test_inconsistent_arity_is_an_error():
    with pytest.raises(ValueError, match="max_args"):
        Registry().add("x", lambda c, a, d: None, min_args=2, max_args=1)


def test_copy_and_remove_leave_the_original_alone():
    registry = Registry()
    registry.add("x", lambda c, a, d: None)
    other = registry.copy()
    other.remove("x")
    other.add("y", lambda c, a, d: None)
    assert "x" in registry and "y" not in registry
    assert "x" not in other and "y" in other


def test_builtins_are_registered_in_the_default_registry():
    from memcachedlite import default_registry

    for verb in [
        "set",
        "add",
        "replace",
        "append",
        "prepend",
        "cas",
        "get",
        "gets",
        "gat",
        "gats",
        "delete",
        "incr",
        "decr",
        "touch",
        "flush_all",
        "version",
        "verbosity",
        "quit",
        "stats",
    ]:
        assert verb in default_registry


def test_settings_refuse_unknown_dialect():
    with pytest.raises(ValueError):
        Settings(dialect="klingon")


def test_a_verb_of_ones_own_refused_as_too_large_is_counted(store):
    """Without a ``refused`` hook of its own, a verb's block past the limit
    is counted in store_too_large and nothing else happens; with one, the
    hook is told (too large, or not ended by CRLF) and decides."""
    registry = Registry()
    told = []
    registry.add("plain", lambda ctx, args, data: b"OK\r\n", min_args=1, max_args=1, data=0)
    registry.add(
        "hooked",
        lambda ctx, args, data: b"OK\r\n",
        min_args=1,
        max_args=1,
        data=0,
        refused=lambda ctx, args, too_large: told.append((args, too_large)),
    )
    session = Session(store, Settings(max_item_size=1024), registry=registry)
    big = b"x" * 2000
    assert session.feed(b"plain 2000\r\n" + big + b"\r\n") == b"SERVER_ERROR object too large for cache\r\n"
    assert store.stats()["store_too_large"] == 1
    assert session.feed(b"hooked 2000\r\n" + big + b"\r\nhooked 1\r\nxyz") == (
        b"SERVER_ERROR object too large for cache\r\nCLIENT_ERROR bad data chunk\r\n"
    )
    assert told == [([b"2000"], True), ([b"1"], False)] and store.stats()["store_too_large"] == 1


def test_the_simulated_delay_runs_pipelined_sets_one_by_one(store):
    """The batch form would skip the per-command delay: not with --simulate-delay."""
    import threading

    stop = threading.Event()
    stop.set()  # the delays end at once
    session = Session(store, Settings(simulate_delay=True), stop=stop)
    assert session.feed(b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\n") == b"STORED\r\nSTORED\r\n"
    assert store.peek(b"b").value == b"2"


def test_a_refused_hook_that_fails_leaves_the_stream_in_step(store, caplog):
    """A hook's ProtocolError is the reply (the store could not unlink: a
    full disk); any other failure is logged and the refusal answered."""

    def full_disk(ctx, args, too_large):
        raise ServerError("cannot write data file")

    def broken(ctx, args, too_large):
        raise RuntimeError("bug")

    registry = Registry()
    registry.add("full", lambda ctx, args, data: b"OK\r\n", min_args=1, max_args=1, data=0, refused=full_disk)
    registry.add("broken", lambda ctx, args, data: b"OK\r\n", min_args=1, max_args=1, data=0, refused=broken)
    session = Session(store, Settings(max_item_size=1024), registry=registry)
    big = b"x" * 2000
    assert session.feed(b"full 2000\r\n" + big + b"\r\nbroken 2000\r\n" + big + b"\r\nbroken 1\r\nxyz") == (
        b"SERVER_ERROR cannot write data file\r\nSERVER_ERROR object too large for cache\r\n"
        b"CLIENT_ERROR bad data chunk\r\n"
    )
    assert "refused hook of b'broken' failed" in caplog.text


def test_a_session_without_a_server_answers_as_a_server_with_nothing_to_count() -> None:
    """Its host is a Standalone: no connections to count or reset, nothing to
    stop, memcached's defaults for what a server would set."""
    store = Store()
    try:
        s = Session(store, Settings(enable_shutdown=True))
        stats = dict(line.split(b" ")[1:] for line in s.feed(b"stats\r\n").splitlines()[:-1])
        assert stats[b"curr_connections"] == b"0" and stats[b"uptime"] == b"0"
        settings = dict(line.split(b" ")[1:] for line in s.feed(b"stats settings\r\n").splitlines()[:-1])
        assert settings[b"slab_automove"] == b"1" and settings[b"binding_protocol"] == b"auto-negotiate"
        assert s.feed(b"slabs automove 2\r\n") == b"OK\r\n" and s.server.slab_automove == 2
        assert s.feed(b"stats reset\r\n") == b"RESET\r\n"
        assert s.feed(b"shutdown\r\n") == b"" and s.closing  # nothing to stop but the connection
    finally:
        store.close()
