"""``lru_crawler metadump`` (memcachedlite/admin.py), and ``mcl dump`` / ``mcl load``
(memcachedlite/bulk.py): byte-exact metadump replies, exact round trips
between servers, the seed's data file, and the real memcached and its
``memcached-tool`` on either side."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from memcachedlite import Session, Store
from memcachedlite.cli import main
from memcachedlite.cli import transfer as bulk
from tests.conftest import ROOT, Raw

MEMCACHED_TOOL = "/usr/share/memcached/scripts/memcached-tool"
NASTY = b"line\r\nEND\r\n\x00NUL\x00 VALUE x 0 1\r\n\xff"


pytestmark = pytest.mark.usefixtures("no_mcl_environment")


def mcl(*args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, prog_name="mcl")


def addr(running) -> str:
    return f"127.0.0.1:{running.port}"


def assert_exit(result: Result, code: int) -> None:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


# -- lru_crawler metadump -----------------------------------------------------------


def test_metadump_lists_live_items_like_memcached(server, raw) -> None:
    store = server.store
    store.set(b"plain", b"abc", 5, 0)
    store.set(b"a/b%c~d", b"xy", 0, 100)
    store.set(b"gone", b"x", 0, -1)  # stored already expired: not listed
    now = store.now()
    reply = raw.ask(b"lru_crawler metadump all\r\n")
    lines = reply.split(b"\n")
    assert reply.endswith(b"\nEND\r\n") and lines[-1] == b""
    assert lines[-2] == b"END\r"
    items = lines[:-2]
    assert len(items) == 2
    plain, odd = items
    assert plain.startswith(b"key=plain exp=-1 la=")
    # memcached's class and size: header 48, key and NUL 6, flags 4, value and CRLF 5, cas 8
    assert plain.endswith(b" fetch=no cls=1 size=71")
    fields = dict(field.split(b"=", 1) for field in odd.split(b" "))
    assert fields[b"key"] == b"a%2Fb%25c~d"  # memcached's uri encoding: A-Z a-z 0-9 - . _ ~ kept
    assert now + 100 <= int(fields[b"exp"]) <= store.now() + 100
    assert int(fields[b"cas"]) == store.peek(b"a/b%c~d").cas
    # hash and slab class 1 (theirs) list the same; another class lists nothing
    assert raw.ask(b"lru_crawler metadump hash\r\n").count(b"key=") == 2
    assert raw.ask(b"lru_crawler metadump 1,2\r\n").count(b"key=") == 2
    assert raw.ask(b"lru_crawler metadump 2\r\n") == b"END\r\n"
    store.set(b"larger", b"x" * 500)
    assert raw.ask(b"lru_crawler metadump 9\r\n").startswith(b"key=larger ")
    assert raw.ask(b"lru_crawler metadump all\r\n").count(b"key=") == 3


def test_metadump_of_an_empty_store_and_its_errors(raw) -> None:
    assert raw.ask(b"lru_crawler metadump all\r\n") == b"END\r\n"
    assert raw.ask(b"lru_crawler metadump bogus\r\n") == b"BADCLASS invalid class id\r\n"
    assert raw.ask(b"lru_crawler metadump 64\r\n") == b"BADCLASS invalid class id\r\n"
    assert raw.ask(b"lru_crawler bogus all\r\n") == b"ERROR\r\n"  # as memcached answers
    assert raw.ask(b"lru_crawler metadump\r\n") == b"ERROR\r\n"  # a wrong token count, as memcached answers
    assert raw.ask(b"version\r\n").startswith(b"VERSION ")  # still in step


@pytest.mark.external
def test_memcached_tool_dumps_memcachedlite(server, tmp_path: Path) -> None:
    assert os.path.exists(MEMCACHED_TOOL), "memcached-tool is missing (apt-get install memcached)"
    server.store.set(b"one", b"1", 3, 0)
    server.store.set(b"two", b"22", 0, 3600)
    out = subprocess.run(
        ["perl", MEMCACHED_TOOL, addr(server), "dump"], capture_output=True, timeout=30, check=True
    ).stdout
    # memcached-tool writes 'add' commands a memcached can replay
    assert b"add one 3 0 1\r\n1\r\n" in out
    assert b"add two 0 " in out and b" 2\r\n22\r\n" in out


# -- mcl dump and mcl load ----------------------------------------------------------


@pytest.mark.slow
def test_round_trip_of_100000_items_is_exact(start_server, tmp_path: Path) -> None:
    source, target = start_server(), start_server()
    store = source.store
    count = 100_000
    expect = {}
    for i in range(count):
        key = b"key:%06d" % i
        value = (b"%d" % i) + NASTY[: i % len(NASTY)]
        flags = (i * 2654435761) % 2**32
        ttl = 0 if i % 4 else 1000 + i % 5000
        store.set(key, value, flags, ttl)
        expect[key] = store.peek(key)
    store.set(b"empty", b"", 0, 0)
    expect[b"empty"] = store.peek(b"empty")
    path = tmp_path / "dump.jsonl"
    started = time.time()
    result = mcl("-s", addr(source), "dump", str(path))
    assert_exit(result, 0)
    assert f"dumped {count + 1} items" in result.stderr
    result = mcl("-s", addr(target), "load", str(path))
    assert_exit(result, 0)
    elapsed = time.time() - started
    assert f"loaded {count + 1} of {count + 1} items" in result.stdout and "(dump format)" in result.stdout
    assert len(target.store) == count + 1
    for key, want in expect.items():
        got = target.store.peek(key)
        assert got is not None, key
        assert (got.value, got.flags) == (want.value, want.flags), key
        if want.exptime == 0:
            assert got.exptime == 0, key
        else:
            # the remaining ttl is carried over; it restarts when the item is loaded
            assert want.exptime - 1 <= got.exptime <= want.exptime + elapsed + 1, key


def test_a_quick_round_trip_keeps_ttl_within_a_second(start_server, tmp_path: Path) -> None:
    source, target = start_server(), start_server()
    now = source.store.now()
    source.store.set(b"short", NASTY, 7, 30)
    source.store.set(b"hour", b"h", 1, 3600)
    source.store.set(b"long", b"l", 2, 60 * 86400 + now)  # 60 days: beyond the relative limit
    source.store.set(b"forever", b"f", 2**32 - 1, 0)
    path = tmp_path / "d.jsonl"
    assert_exit(mcl("-s", addr(source), "dump", str(path)), 0)
    assert path.stat().st_mode & 0o777 == 0o600  # cache contents: private, like the data file
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
    assert_exit(mcl("-s", addr(target), "load", str(path)), 0)
    for key in (b"short", b"hour", b"long", b"forever"):
        want, got = source.store.peek(key), target.store.peek(key)
        assert (got.value, got.flags) == (want.value, want.flags)
        assert abs(got.exptime - want.exptime) <= 1, (key, want, got)
    assert target.store.peek(b"forever").exptime == 0


def test_keys_stored_in_base64_form_round_trip_and_cannot_inject(start_server, tmp_path: Path) -> None:
    """A key stored with ``ms ... b`` may hold CRLF: the dump reads it with
    ``mg``, never on a ``get`` line where it would run as a command."""
    source, target = start_server(), start_server()
    keys = [b"x\r\nflush_all", b"with space", b"nul\x00", b"\xff"]
    c = Raw(source.port)
    try:
        for i, key in enumerate(keys):
            assert c.ask(b"ms %s 2 b F%d T3600\r\nv%d\r\n" % (base64.b64encode(key), i, i)) == b"HD\r\n"
        assert c.ask(b"set plain 0 0 1\r\np\r\n") == b"STORED\r\n"
    finally:
        c.close()
    path = tmp_path / "d.jsonl"
    assert_exit(mcl("-s", addr(source), "dump", str(path)), 0)
    assert len(source.store) == 5  # nothing was flushed on the way
    result = mcl("-s", addr(target), "load", str(path))
    assert_exit(result, 0)
    assert "loaded 5 of 5 items" in result.stdout
    for i, key in enumerate(keys):
        item = target.store.peek(key)
        assert (item.value, item.flags) == (b"v%d" % i, i)
        assert abs(item.exptime - source.store.peek(key).exptime) <= 1
    assert target.store.peek(b"plain").value == b"p"
    c = Raw(target.port)
    try:  # stored in base64 form again, so a meta client gets the key back that way
        assert c.ask(b"mg %s b k\r\n" % base64.b64encode(keys[1])) == b"HD k%s b\r\n" % base64.b64encode(keys[1])
    finally:
        c.close()


def test_dump_format_is_documented_json_lines(server) -> None:
    server.store.set(b"k", NASTY, 9, 0)
    result = mcl("-s", addr(server), "dump")  # standard output by default
    assert_exit(result, 0)
    lines = result.stdout_bytes.splitlines()
    head = json.loads(lines[0])
    assert head["format"] == "memcachedlite-dump" and head["version"] == 1
    assert head["servers"] == [addr(server)]
    item = json.loads(lines[1])
    assert item == {"key": "aw==", "value": base64.b64encode(NASTY).decode(), "flags": 9, "ttl": 0}
    assert len(lines) == 2
    assert "dumped 1 items" in result.stderr


def test_dump_to_stdout_and_load_from_stdin(start_server) -> None:
    source, target = start_server(), start_server()
    for i in range(50):
        source.store.set(b"k%d" % i, b"v\r\n%d" % i, i, 0)
    dumped = mcl("-s", addr(source), "dump", "-")
    assert_exit(dumped, 0)
    loaded = mcl("-s", addr(target), "load", "-", input=dumped.stdout_bytes)
    assert_exit(loaded, 0)
    assert "loaded 50 of 50 items from standard input" in loaded.stdout
    for i in range(50):
        assert target.store.peek(b"k%d" % i)[:2] == (b"v\r\n%d" % i, i)


def test_a_dump_into_a_pipe_writes_through_it_and_leaves_it_a_pipe(start_server, tmp_path: Path) -> None:
    """A path that is no regular file (a FIFO here; /dev/full or /dev/stdout
    alike) is written as it is, never renamed over."""
    source = start_server()
    source.store.set(b"k", b"v", 0, 0)
    fifo = tmp_path / "out" / "dump.fifo"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = mcl("-s", addr(source), "dump", str(fifo))
    reader.join(10)
    assert_exit(result, 0)
    assert fifo.is_fifo()
    assert os.listdir(fifo.parent) == ["dump.fifo"]  # no partial file left beside it
    lines = received[0].splitlines()
    assert json.loads(lines[1])["key"] == base64.b64encode(b"k").decode("ascii")


def test_seed_data_file_loads(server, tmp_path: Path) -> None:
    seed = tmp_path / "data.txt"
    seed.write_bytes(
        b"{braces} are fine in keys\n"  # not taken for a JSON dump
        b"greeting hello\n"
        b"sentence several words, kept as they are\n"
        b"windows line\r\n"
        b"empty \n"
        b"\n"
        b"greeting hello again\n"  # later lines win, as they did in the seed's file
        b"utf8 caf\xc3\xa9\n"
    )
    result = mcl("-s", addr(server), "load", str(seed))
    assert_exit(result, 0)
    assert "loaded 7 of 7 items" in result.stdout and "(seed format)" in result.stdout
    store = server.store
    assert store.peek(b"greeting").value == b"hello again"
    assert store.peek(b"sentence").value == b"several words, kept as they are"
    assert store.peek(b"windows").value == b"line"
    assert store.peek(b"empty").value == b""
    assert store.peek(b"utf8").value == "café".encode()
    assert store.peek(b"{braces}").value == b"are fine in keys"
    assert all(store.peek(k).flags == 0 and store.peek(k).exptime == 0 for k in list(store.keys()))


def test_seed_lines_that_cannot_be_loaded_are_reported_and_exit_1(server, tmp_path: Path) -> None:
    seed = tmp_path / "data.txt"
    seed.write_bytes(b"good value\nnospace\n" + b"k" * 251 + b" toolong\nbad\x01key v\nfine too\n")
    result = mcl("-s", addr(server), "load", str(seed))
    assert_exit(result, 1)
    assert "loaded 2 of 5 items" in result.stdout and "3 lines skipped" in result.stdout
    assert f"{seed}:2: skipped: no space between key and value" in result.stderr
    assert f"{seed}:3: skipped: key of 251 bytes" in result.stderr
    assert f"{seed}:4: skipped: key" in result.stderr
    assert server.store.peek(b"fine").value == b"too"


def test_items_the_server_refuses_are_counted_and_exit_4(start_server, tmp_path: Path) -> None:
    from memcachedlite import Settings

    target = start_server(settings=Settings(max_item_size=100))
    path = tmp_path / "d.jsonl"
    items = [bulk.DumpItem(b"small", b"s"), bulk.DumpItem(b"big", b"x" * 1000), bulk.DumpItem(b"after", b"a")]
    path.write_bytes(bulk.header([]) + b"".join(bulk.encode_item(i) for i in items))
    result = mcl("-s", addr(target), "load", str(path))
    assert_exit(result, 4)
    assert "loaded 2 of 3 items" in result.stdout and "1 refused" in result.stdout
    assert "object too large" in result.stderr
    assert target.store.peek(b"after").value == b"a"  # the stream stayed in step


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"MEMCACHEDLITE-LOG 1\r\n", "memcachedlite data file"),
        (b'{"format": "memcachedlite-dump", "version": 2}\n', "version 2 is not supported"),
        (b'{"format": "something-else", "version": 1}\n', "unknown dump format"),
        (b'{"format": "memcachedlite-dump", "version":\n', "not valid JSON"),
    ],
    ids=["data-file", "future-version", "other-format", "bad-json"],
)
def test_files_that_are_not_loadable_are_one_line_errors(server, tmp_path: Path, content, message) -> None:
    path = tmp_path / "input"
    path.write_bytes(content)
    result = mcl("-s", addr(server), "load", str(path))
    assert_exit(result, 1)
    assert message in result.stderr and "Traceback" not in result.output
    assert len(server.store) == 0


def test_bad_item_lines_of_a_dump_are_skipped(server, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        bulk.header([])
        + bulk.encode_item(bulk.DumpItem(b"ok", b"1"))
        + b'{"key": "!!", "value": ""}\n'
        + b'{"key": "aw==", "value": "", "flags": 4294967296}\n'
        + b'{"key": "aw==", "value": "", "ttl": -5}\n'
    )
    result = mcl("-s", addr(server), "load", str(path))
    assert_exit(result, 1)
    assert "3 lines skipped" in result.stdout
    assert ":3: skipped: not an item" in result.stderr and "out of range" in result.stderr
    assert "negative ttl" in result.stderr


def test_a_dump_line_with_an_infinite_number_is_skipped() -> None:
    """Found by fuzzing (fuzz/dump.py): JSON's ``Infinity`` as flags or ttl
    raised OverflowError out of the loader instead of skipping the line."""
    source = bulk.Source(
        io.BytesIO(
            bulk.header([])
            + b'{"key": "aw==", "value": "", "flags": Infinity}\n'
            + b'{"key": "aw==", "value": "", "ttl": -Infinity}\n'
            + bulk.encode_item(bulk.DumpItem(b"ok", b"1"))
        )
    )
    assert list(source) == [bulk.DumpItem(b"ok", b"1")]
    assert source.skipped == [(2, "not an item of the dump format"), (3, "not an item of the dump format")]


def test_json_nested_too_deep_is_no_dump_or_a_skipped_line() -> None:
    """Found reading the loader while writing fuzz/dump.py, and confirmed by
    its properties: json raises RecursionError for deeply nested arrays,
    which escaped Source instead of a BulkError or a skipped line."""
    with pytest.raises(bulk.BulkError, match="not valid JSON"):
        bulk.Source(io.BytesIO(b'{"a": ' + b"[" * 100_000 + b"\n"))
    source = bulk.Source(io.BytesIO(bulk.header([]) + b'{"key": ' + b"[" * 100_000 + b"\n"))
    assert list(source) == [] and source.skipped == [(2, "not an item of the dump format")]


@pytest.mark.parametrize("ttl", [2**32, 10**30])
def test_a_ttl_past_2038_loads_as_the_latest_expiry_memcached_can_say(ttl: int) -> None:
    """Found by fuzzing (fuzz/dump.py): a ttl that reaches past 2038 was sent
    as an exptime the server refuses (CLIENT_ERROR) or reads, wrapped to 32
    bits, as a time in the past (STORED, and the item gone at once). A server
    holds such expiries when the binary protocol set them."""
    now = 1_767_225_600
    store = Store(None, clock=lambda: now)
    try:
        item = bulk.DumpItem(b"k", b"v", 1, ttl)
        assert Session(store).feed(bulk.set_command(item, now)) == b"STORED\r\n"
        assert store.peek(b"k").exptime == bulk.MAX_EXPTIME
        binary = bulk.DumpItem(b"with space", b"v", 1, ttl)  # sent as a meta set
        assert Session(store).feed(bulk.set_command(binary, now)) == b"HD\r\n"
        assert store.peek(b"with space").exptime == bulk.MAX_EXPTIME
    finally:
        store.close()


def test_dump_and_load_over_several_servers(start_server, tmp_path: Path) -> None:
    sources = [start_server() for _ in range(3)]
    targets = [start_server() for _ in range(3)]
    spread = ",".join(addr(s) for s in sources)
    # keys are placed as 'mcl set' places them, so 'mcl get' finds each one
    path = tmp_path / "seed.txt"
    path.write_bytes(b"".join(b"key%d value%d\n" % (i, i) for i in range(300)))
    assert_exit(mcl("-s", spread, "load", str(path)), 0)
    assert all(len(s.store) > 0 for s in sources)
    assert sum(len(s.store) for s in sources) == 300
    for i in range(0, 300, 37):
        got = mcl("-s", spread, "get", f"key{i}")
        assert_exit(got, 0)
        assert got.stdout_bytes == b"value%d" % i
    dumped = mcl("-s", spread, "dump", str(tmp_path / "all.jsonl"))
    assert_exit(dumped, 0)
    assert "dumped 300 items" in dumped.stderr
    other = ",".join(addr(t) for t in targets)
    assert_exit(mcl("-s", other, "load", str(tmp_path / "all.jsonl")), 0)
    assert sum(len(t.store) for t in targets) == 300
    for i in range(0, 300, 37):  # spread by the new servers' names, as 'mcl get' reads them
        got = mcl("-s", other, "get", f"key{i}")
        assert_exit(got, 0)
        assert got.stdout_bytes == b"value%d" % i


def test_dump_of_the_real_memcached_loads_into_memcachedlite(memcached, server, tmp_path: Path) -> None:
    mc = Raw(memcached)
    try:
        assert mc.ask(b"set a/b 5 0 %d\r\n%s\r\n" % (len(NASTY), NASTY)) == b"STORED\r\n"
        assert mc.ask(b"set ttl 6 3600 1\r\nt\r\n") == b"STORED\r\n"
    finally:
        mc.close()
    path = tmp_path / "from-memcached.jsonl"
    assert_exit(mcl("-s", f"127.0.0.1:{memcached}", "dump", str(path)), 0)
    assert_exit(mcl("-s", addr(server), "load", str(path)), 0)
    assert server.store.peek(b"a/b")[:3] == (NASTY, 5, 0)
    item = server.store.peek(b"ttl")
    assert item.flags == 6 and abs(item.exptime - (server.store.now() + 3600)) <= 2


def test_unreachable_server_is_exit_3(tmp_path: Path) -> None:
    from tests.conftest import free_port

    port = free_port()
    result = mcl("-s", f"127.0.0.1:{port}", "dump", str(tmp_path / "out"))
    assert_exit(result, 3)
    assert "cannot reach server" in result.stderr
    assert not (tmp_path / "out").exists()
    (tmp_path / "in").write_bytes(b"k v\n")
    result = mcl("-s", f"127.0.0.1:{port}", "load", str(tmp_path / "in"))
    assert_exit(result, 3)


def test_a_server_without_metadump_is_a_server_error(start_server, fresh_registry, tmp_path: Path) -> None:
    fresh_registry.remove("lru_crawler")
    running = start_server(registry=fresh_registry)
    result = mcl("-s", addr(running), "dump", str(tmp_path / "out"))
    assert_exit(result, 4)
    assert "lru_crawler metadump" in result.stderr and "'ERROR'" in result.stderr


# -- servers that answer oddly -----------------------------------------------------


class Canned:
    """A fake server: each request line gets the next canned reply. A
    client that closes and connects again (pymemcache does after an error
    reply) goes on with the replies left."""

    def __init__(self, replies: list[bytes]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.replies = replies
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(10)
        left = list(self.replies)
        while left and self._answer(left):
            pass
        self.listener.close()  # out of replies: a client trying again is refused at once, not left waiting

    def _answer(self, left: list[bytes]) -> bool:
        """Serve one connection from ``left``; False once the connections ran out."""
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return False
        with conn:
            conn.settimeout(10)
            reader = conn.makefile("rb")
            try:
                while left and reader.readline():
                    conn.sendall(left.pop(0))
            except OSError:
                return False
            finally:
                reader.close()
        return True

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.mark.parametrize(
    ("replies", "code", "message"),
    [
        ([b"STAT pid 1\r\nEND\r\n"], 1, "does not report its time"),
        ([b"ERROR\r\n"], 4, "answered stats with 'ERROR'"),
        ([b"STAT time 100\r\nEND\r\n", b"CLIENT_ERROR lru crawler disabled\r\n"], 4, "lru crawler disabled"),
        ([b"STAT time 100\r\nEND\r\n", b"key=k exp=soon la=1\nEND\r\n"], 4, "key=k exp=soon"),
        ([b"STAT time 100\r\nEND\r\n", b"key=k exp=-1\nEND\r\n", b"SERVER_ERROR busy\r\n"], 4, "busy"),
        ([b"STAT time 100\r\nEND\r\n", b"key=k exp=-1\nEND\r\n", b"VALUE k\r\n"], 4, "answered get with 'VALUE k'"),
        ([b"STAT time 100\r\nEND\r\n", b"key=k exp=-1\nEND\r\n", b"VALUE k 0 5\r\nab"], 3, "closed the connection"),
    ],
    ids=["no-time", "no-stats", "crawler-off", "bad-metadump", "get-error", "bad-value-line", "cut-short"],
)
def test_dump_from_a_server_that_answers_oddly(tmp_path: Path, replies, code, message) -> None:
    fake = Canned(replies)
    try:
        result = mcl("-s", f"127.0.0.1:{fake.port}", "dump", str(tmp_path / "out"))
    finally:
        fake.close()
    assert_exit(result, code)
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()  # no half-written dump left behind


def test_dump_skips_items_gone_or_expired_since_the_metadump(tmp_path: Path) -> None:
    fake = Canned(
        [
            b"STAT time 1000\r\nEND\r\n",
            b"key=gone exp=-1\nkey=expired exp=1000\nkey=kept exp=1060\nEND\r\n",
            b"VALUE expired 0 1\r\nx\r\nVALUE kept 4 2\r\nok\r\nEND\r\n",
        ]
    )
    try:
        result = mcl("-s", f"127.0.0.1:{fake.port}", "dump")
    finally:
        fake.close()
    assert_exit(result, 0)
    lines = result.stdout_bytes.splitlines()[1:]
    assert [json.loads(line) for line in lines] == [{"key": "a2VwdA==", "value": "b2s=", "flags": 4, "ttl": 60}]


def test_a_load_cut_short_by_the_server_is_exit_3(tmp_path: Path) -> None:
    fake = Canned([b"STORED\r\n"])  # then closes
    (tmp_path / "in").write_bytes(b"a 1\nb 2\n")
    try:
        result = mcl("-s", f"127.0.0.1:{fake.port}", "load", str(tmp_path / "in"))
    finally:
        fake.close()
    assert_exit(result, 3)
    assert f"server 127.0.0.1:{fake.port} closed the connection" in result.stderr


def test_exptime_beyond_30_days_is_sent_as_a_unix_time() -> None:
    assert bulk.exptime(0) == 0
    assert bulk.exptime(30 * 86400) == 30 * 86400
    assert bulk.exptime(30 * 86400 + 1, now=1000) == 1000 + 30 * 86400 + 1


def test_dump_to_a_closed_pipe_ends_quietly(start_server) -> None:
    source = start_server()
    for i in range(2000):
        source.store.set(b"k%d" % i, b"x" * 1000)
    code = (
        "import sys\n"
        "from memcachedlite.cli import main\n"
        f"sys.argv = ['mcl', '-s', '127.0.0.1:{source.port}', 'dump']\n"
        "main()\n"
    )
    pipe = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert pipe.stdout is not None and pipe.stderr is not None
    pipe.stdout.read(100)
    pipe.stdout.close()  # as 'mcl dump | head -c 100' does
    err = pipe.stderr.read().decode()
    pipe.stderr.close()
    assert pipe.wait(30) == 141, err  # as a program SIGPIPE ends, e.g. 'yes | head'
    assert err == ""


def test_dump_into_a_missing_directory_is_a_one_line_error(server, tmp_path: Path) -> None:
    result = mcl("-s", addr(server), "dump", str(tmp_path / "no" / "such" / "dir.jsonl"))
    assert_exit(result, 1)
    assert "cannot write" in result.stderr and "No such file or directory" in result.stderr
