"""Batch forms of verbs: a run of pipelined commands of one verb handled in
one call must answer and store exactly what the plain handler, one command
at a time, answers and stores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memcachedlite import Registry, Session, Store, default_registry
from memcachedlite.errors import LogWriteError
from memcachedlite.protocols.settings import Settings
from memcachedlite.storage import batches, datafile
from memcachedlite.storage.items import decode
from memcachedlite.storage.records import parse_records, read_header


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def plain_registry() -> Registry:
    """The default verbs with every batch form taken away: the reference."""
    registry = default_registry.copy()
    for row in list(registry):
        if row.batch is not None:
            registry._commands[row.name] = dataclasses.replace(row, batch=None, batch_line=None)
    return registry


def records(path: Path) -> list:
    """The changes a data file holds, one set record each: the batch form
    logs a run of sets as one ``sets`` record of the items it stored."""
    data = path.read_bytes()
    flat = []
    for record in parse_records(data, read_header(data)[0]):
        if record[0] == b"sets":
            for key, blob in record[4]:
                item = decode(blob)
                flat.append((b"set", key, item.value, item.flags, item.exptime, item.cas))
        else:
            flat.extend(record[1] if record[0] == b"group" else [record])
    return [r for r in flat if r[0] != b"sync"]


keys = st.sampled_from([b"a", b"b", b"k:1", b"x" * 250, b"x" * 251, b"bad\x01key", b"\xc3\xa9t\xc3\xa9"])
values = st.binary(max_size=40).map(lambda v: v.replace(b"\r\n", b"\n"))
flags = st.sampled_from([b"0", b"1", b"4294967295", b"4294967296", b"+5", b"x"])
exptimes = st.sampled_from([b"0", b"100", b"-1", b"2592001", b"abc"])


@st.composite
def command(draw) -> bytes:
    kind = draw(st.sampled_from(["set", "set", "set", "noreply", "get", "too-large", "lite", "bad-chunk", "delete"]))
    key, value = draw(keys), draw(values)
    if kind == "get":
        return b"get %s\r\n" % key
    if kind == "delete":
        return b"delete %s\r\n" % key
    if kind == "lite":
        return b"set %s %d\r\n%s\r\n" % (key, len(value), value)
    if kind == "too-large":
        return b"set %s 0 0 70\r\n%s\r\n" % (key, b"v" * 70)
    if kind == "bad-chunk":
        return b"set %s 0 0 %d\r\n%sXX" % (key, len(value), value)
    tail = b" noreply" if kind == "noreply" else b""
    return b"set %s %s %s %d%s\r\n%s\r\n" % (key, draw(flags), draw(exptimes), len(value), tail, value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(command(), min_size=1, max_size=25), st.integers(1, 3))
def test_a_batch_answers_and_stores_what_one_at_a_time_does(tmp_path_factory, monkeypatch, commands, chunks) -> None:
    monkeypatch.setattr(batches, "SETS_RECORD_MIN", 2)  # short runs as sets records too
    tmp = tmp_path_factory.mktemp("batch")
    stream = b"".join(commands)
    results = []
    for name, registry in (("batched", default_registry), ("plain", plain_registry())):
        clock = Clock()
        store = Store(tmp / f"{name}.txt", clock=clock)
        session = Session(store, Settings(max_item_size=64), registry)
        step = max(1, len(stream) // chunks)
        replies = b"".join(session.feed(stream[i : i + step]) for i in range(0, len(stream), step))
        state = {k: store.peek(k) for k in store.keys()}
        stats = store.stats()
        del stats["data_file_bytes"]  # a run logged as one sets record takes fewer bytes
        store.close()
        results.append((replies, state, stats, records(tmp / f"{name}.txt")))
    assert results[0] == results[1]


def test_the_batch_form_is_used_for_a_pipelined_run(tmp_path: Path, monkeypatch) -> None:
    calls = []
    row = default_registry.get(b"set")
    real = row.batch
    registry = default_registry.copy()
    registry.add_batch(
        "set", lambda ctx, requests: (calls.append(len(requests)), real(ctx, requests))[1], row.batch_line
    )
    store = Store(tmp_path / "data.txt")
    try:
        session = Session(store, registry=registry)
        stream = b"".join(b"set k%d 0 0 1\r\n%d\r\n" % (i, i % 10) for i in range(50))
        assert session.feed(stream + b"get k7\r\n") == b"STORED\r\n" * 50 + b"VALUE k7 0 1\r\n7\r\nEND\r\n"
        assert calls == [50]
        assert session.feed(b"set one 0 0 1\r\n1\r\n") == b"STORED\r\n"  # a lone command: the plain handler
        assert calls == [50]
    finally:
        store.close()


def test_a_users_verb_can_offer_a_batch_form(tmp_path: Path) -> None:
    registry = Registry()

    @registry.command("shout", min_args=1, max_args=1)
    def shout(ctx, args, data):
        return args[0].upper() + b"\r\n"

    def shout_many(ctx, requests):
        return [found.group(1).upper() + b"\r\n" for found, _ in requests]

    registry.add_batch("shout", shout_many, rb"shout ([a-z]+)\r\n")
    store = Store(tmp_path / "data.txt")
    try:
        session = Session(store, registry=registry)
        assert session.feed(b"shout a\r\nshout bc\r\nshout D1\r\nshout e\r\n") == b"A\r\nBC\r\nD1\r\nE\r\n"
    finally:
        store.close()


def test_add_batch_needs_a_registered_verb() -> None:
    with pytest.raises(ValueError, match="not registered"):
        Registry().add_batch("nope", lambda ctx, requests: [], rb"nope\r\n")


def test_memory_full_mid_batch_answers_per_command(tmp_path: Path) -> None:
    stream = b"".join(b"set k%d 0 0 100\r\n%s\r\n" % (i, b"v" * 100) for i in range(40))
    replies = []
    for registry in (default_registry, plain_registry()):
        store = Store(tmp_path / f"{len(replies)}.txt", memory_limit=3000, evict=False)
        try:
            replies.append(Session(store, registry=registry).feed(stream))
        finally:
            store.close()
    assert replies[0] == replies[1]
    assert b"SERVER_ERROR out of memory storing object" in replies[0] and replies[0].startswith(b"STORED\r\n")


def test_a_store_whose_data_file_is_in_doubt_refuses_each_command(tmp_path: Path, monkeypatch) -> None:
    """After a failed fsync the store takes no writes until it has rewritten
    the file from memory; while that rewrite keeps failing too, a run of
    sets (the batch form) is refused command by command, and memory stays
    as it was."""
    import errno

    from tests.crashsim import FsRecorder, modules_with_os

    recorder = FsRecorder(tmp_path).install(monkeypatch, *modules_with_os())
    store = Store(tmp_path / "data.txt")
    try:
        store.set(b"old", b"kept")
        recorder.fail("fsync", 1, errno.EIO, persistent=True)
        with pytest.raises(LogWriteError):
            store.sync()
        assert not store.writable
        stream = b"".join(b"set k%d 0 0 1\r\n%d\r\n" % (i, i % 10) for i in range(20))
        lines = Session(store).feed(stream).splitlines()
        assert len(lines) == 20
        assert all(line.startswith(b"SERVER_ERROR data file not writable: cannot sync data file:") for line in lines)
        assert store.keys() == [b"old"]
    finally:
        recorder.heal()
        store.close()


def test_a_store_refusing_writes_refuses_each_command_of_a_batch(tmp_path: Path) -> None:
    store = Store(tmp_path / "data.txt")
    try:
        store.refuse_writes("cannot write data file: out of disk space")
        reply = Session(store).feed(b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\n")
        assert reply == b"SERVER_ERROR cannot write data file: out of disk space\r\n" * 2
        assert store.keys() == []
    finally:
        store.close()


def test_a_failed_batch_write_fails_every_command(tmp_path: Path, monkeypatch) -> None:
    import errno

    store = Store(tmp_path / "data.txt")
    try:

        def full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(datafile.os, "write", full)
        reply = Session(store).feed(b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\n")
        assert reply == LogWriteError("cannot write data file: out of disk space").to_bytes() * 2
        assert store.keys() == []
    finally:
        monkeypatch.undo()
        store.close()
