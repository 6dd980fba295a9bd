"""The ``mcl`` command: the client commands through click's CliRunner against
an in-process server, then ``mcl serve`` and ``python -m memcachedlite`` as
real subprocesses (signals, restarts, start-up failures, server options)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from memcachedlite import Store, __version__
from memcachedlite.cli import main
from memcachedlite.protocols.stats import PROTOCOL_VERSION
from tests.conftest import ROOT, Raw, free_port, mark_synced

BINARY = b"line one\r\nline two\r\n\x00\x01\xff END\r\n\r\nVALUE x 0 1\r\n"
RUN_TIMEOUT = 60


pytestmark = pytest.mark.usefixtures("no_mcl_environment")


def mcl(*args: str, input: bytes | None = None, env: dict | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, env=env, prog_name="mcl")


def addr(running) -> str:
    return f"127.0.0.1:{running.port}"


def assert_clean(result: Result, code: int) -> None:
    """Exit ``code`` with no Python exception escaping (click's own exits are fine)."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def one_line_error(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


# -- client commands through CliRunner ------------------------------------------


def test_set_then_get_prints_the_raw_value(server) -> None:
    result = mcl("--server", addr(server), "set", "greeting", "hello")
    assert_clean(result, 0)
    assert result.stdout == "STORED\n"
    result = mcl("--server", addr(server), "get", "greeting")
    assert_clean(result, 0)
    assert result.stdout_bytes == b"hello"  # raw: no newline added
    assert server.store.get(b"greeting").value == b"hello"


def test_set_dash_reads_stdin_binary_safe(server) -> None:
    result = mcl("-s", addr(server), "set", "bin", "-", input=BINARY)
    assert_clean(result, 0)
    assert server.store.get(b"bin").value == BINARY
    result = mcl("-s", addr(server), "get", "bin")
    assert_clean(result, 0)
    assert result.stdout_bytes == BINARY
    every_byte = bytes(range(256)) * 100
    assert_clean(mcl("-s", addr(server), "set", "all", "-", input=every_byte), 0)
    assert mcl("-s", addr(server), "get", "all").stdout_bytes == every_byte


def test_get_of_a_missing_key_exits_1_with_a_message_on_stderr(server) -> None:
    result = mcl("-s", addr(server), "get", "nope")
    assert_clean(result, 1)
    assert "nope" in one_line_error(result)
    assert "not found" in result.stderr
    assert result.stdout_bytes == b""


def test_set_with_ttl_and_flags(server) -> None:
    result = mcl("-s", addr(server), "set", "--ttl", "100", "--flags", "4294967295", "k", "v")
    assert_clean(result, 0)
    item = server.store.peek(b"k")
    assert item is not None
    assert item.flags == 2**32 - 1
    assert server.store.now() + 98 <= item.exptime <= server.store.now() + 100
    raw = Raw(server.port)
    try:
        assert raw.ask(b"get k\r\n") == b"VALUE k 4294967295 1\r\nv\r\nEND\r\n"
    finally:
        raw.close()
    assert_clean(mcl("-s", addr(server), "set", "--flags", "-1", "k", "v"), 2)
    assert_clean(mcl("-s", addr(server), "set", "--flags", str(2**32), "k", "v"), 2)
    assert_clean(mcl("-s", addr(server), "set", "--ttl", "-5", "k", "v"), 2)


@pytest.mark.parametrize("ttl", [2592000, 2592001, 400 * 86400])
def test_ttl_means_seconds_from_now_however_long(server, ttl: int) -> None:
    """memcached reads an exptime over 30 days as a unix time; --ttl stays
    'seconds from now' past it (a TTL of 30 days and a second was an instant expiry)."""
    now = server.store.now()
    assert_clean(mcl("-s", addr(server), "set", "--ttl", str(ttl), "k", "v"), 0)
    item = server.store.peek(b"k")
    assert item is not None, "stored already expired"
    assert now + ttl - 2 <= item.exptime <= now + ttl + 2
    assert_clean(mcl("-s", addr(server), "touch", "k", str(ttl + 60)), 0)
    assert now + ttl + 58 <= server.store.peek(b"k").exptime <= now + ttl + 62
    assert_clean(mcl("-s", addr(server), "touch", "k", "-1"), 2)  # a usage error, not an instant expiry


def test_a_value_over_the_item_limit_is_a_one_line_server_error(server) -> None:
    result = mcl("-s", addr(server), "set", "big", "-", input=b"x" * (1024 * 1024 + 1))
    assert_clean(result, 4)
    assert "too large" in one_line_error(result)
    assert server.store.get(b"big") is None
    result = mcl("-s", addr(server), "set", "big", "-", input=b"x" * (1024 * 1024 - 512))
    assert_clean(result, 0)


def test_add_refuses_an_existing_key(server) -> None:
    assert_clean(mcl("-s", addr(server), "add", "a", "first"), 0)
    result = mcl("-s", addr(server), "add", "a", "second")
    assert_clean(result, 1)
    assert "not stored" in one_line_error(result)
    assert server.store.get(b"a").value == b"first"


def test_delete(server) -> None:
    server.store.set(b"k", b"v")
    result = mcl("-s", addr(server), "delete", "k")
    assert_clean(result, 0)
    assert result.stdout == "DELETED\n"
    assert server.store.get(b"k") is None
    result = mcl("-s", addr(server), "delete", "k")
    assert_clean(result, 1)
    assert "not found" in one_line_error(result)


def test_incr_and_decr(server) -> None:
    server.store.set(b"n", b"10")
    result = mcl("-s", addr(server), "incr", "n")
    assert_clean(result, 0)
    assert result.stdout == "11\n"
    assert mcl("-s", addr(server), "incr", "n", "5").stdout == "16\n"
    assert mcl("-s", addr(server), "decr", "n").stdout == "15\n"
    assert mcl("-s", addr(server), "decr", "n", "100").stdout == "0\n"
    assert server.store.get(b"n").value == b"0"
    assert_clean(mcl("-s", addr(server), "incr", "missing"), 1)
    assert_clean(mcl("-s", addr(server), "decr", "missing"), 1)
    assert_clean(mcl("-s", addr(server), "incr", "n", "-1"), 2)


def test_incr_of_a_non_number_is_a_server_refusal(server) -> None:
    server.store.set(b"text", b"abc")
    result = mcl("-s", addr(server), "incr", "text")
    assert_clean(result, 4)
    assert "non-numeric" in one_line_error(result)


def test_touch(server) -> None:
    server.store.set(b"k", b"v")
    result = mcl("-s", addr(server), "touch", "k", "100")
    assert_clean(result, 0)
    assert result.stdout == "TOUCHED\n"
    item = server.store.peek(b"k")
    assert item is not None and item.exptime >= server.store.now() + 98
    assert_clean(mcl("-s", addr(server), "touch", "k", "0"), 0)
    assert server.store.peek(b"k").exptime == 0
    assert_clean(mcl("-s", addr(server), "touch", "missing", "10"), 1)


def test_flush_all(server) -> None:
    server.store.set(b"a", b"1")
    server.store.set(b"b", b"2")
    result = mcl("-s", addr(server), "flush-all")
    assert_clean(result, 0)
    assert result.stdout == "OK\n"
    assert server.store.get(b"a") is None and server.store.get(b"b") is None


def test_stats_table(server) -> None:
    server.store.set(b"a", b"1")
    result = mcl("-s", addr(server), "stats")
    assert_clean(result, 0)
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert rows["version"] == PROTOCOL_VERSION
    assert rows["curr_items"] == "1"
    assert rows["pid"] == str(os.getpid())
    result = mcl("-s", addr(server), "stats", "settings")
    assert_clean(result, 0)
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert rows["dialect"] == "memcached"


def test_stats_json(server) -> None:
    server.store.set(b"a", b"1")
    result = mcl("-s", addr(server), "stats", "--json")
    assert_clean(result, 0)
    data = json.loads(result.stdout)
    assert list(data) == [addr(server)]
    assert int(data[addr(server)]["curr_items"]) == 1
    assert data[addr(server)]["version"] == PROTOCOL_VERSION


def test_server_from_the_mcl_server_environment_variable(server) -> None:
    env = {"MCL_SERVER": addr(server)}
    assert_clean(mcl("set", "k", "from env", env=env), 0)
    result = mcl("get", "k", env=env)
    assert_clean(result, 0)
    assert result.stdout_bytes == b"from env"
    # --server on the command line wins over the environment
    result = mcl("--server", addr(server), "get", "k", env={"MCL_SERVER": f"127.0.0.1:{free_port()}"})
    assert_clean(result, 0)


def _spread_keys(servers, *server_args: str, env: dict | None = None) -> dict[str, bytes]:
    values = {f"key-{i}": f"value-{i}".encode() for i in range(40)}
    for key, value in values.items():
        assert_clean(mcl(*server_args, "set", key, value.decode(), env=env), 0)
    holders = {key: [i for i, s in enumerate(servers) if s.store.peek(key.encode())] for key in values}
    assert all(len(h) == 1 for h in holders.values()), holders
    assert {h[0] for h in holders.values()} == set(range(len(servers)))
    return values


def test_several_servers_by_repeated_option_and_comma_list(start_server) -> None:
    servers = [start_server() for _ in range(3)]
    repeated = [arg for s in servers for arg in ("-s", addr(s))]
    comma = ["--server", ",".join(addr(s) for s in servers)]
    values = _spread_keys(servers, *repeated)
    for key, value in values.items():  # the comma list finds each key where the repeated option put it
        result = mcl(*comma, "get", key)
        assert_clean(result, 0)
        assert result.stdout_bytes == value
    result = mcl(*comma, "stats", "--json")
    assert_clean(result, 0)
    data = json.loads(result.stdout)
    assert sorted(data) == sorted(addr(s) for s in servers)
    assert sum(int(v["curr_items"]) for v in data.values()) == len(values)
    result = mcl(*repeated, "stats")
    assert_clean(result, 0)
    for s in servers:
        assert f"[{addr(s)}]" in result.stdout
    assert_clean(mcl(*comma, "flush-all"), 0)
    assert all(len(s.store.keys()) == 0 for s in servers)


def test_several_servers_from_the_environment(start_server) -> None:
    servers = [start_server() for _ in range(3)]
    env = {"MCL_SERVER": ",".join(addr(s) for s in servers)}
    values = _spread_keys(servers, env=env)
    env_spaces = {"MCL_SERVER": " ".join(addr(s) for s in servers)}
    for key, value in values.items():
        assert mcl("get", key, env=env_spaces).stdout_bytes == value


@pytest.mark.parametrize(
    "command",
    [["get", "k"], ["set", "k", "v"], ["delete", "k"], ["incr", "k"], ["touch", "k", "1"], ["flush-all"], ["stats"]],
)
def test_unreachable_server_is_one_line_and_exit_3(command: list[str]) -> None:
    port = free_port()
    result = mcl("--server", f"127.0.0.1:{port}", *command)
    assert_clean(result, 3)
    line = one_line_error(result)
    assert f"127.0.0.1:{port}" in line
    assert "cannot reach" in line


def test_a_server_that_never_answers_times_out_with_exit_3() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = mcl("--timeout", "0.5", "-s", f"127.0.0.1:{port}", "get", "k")
        elapsed = time.monotonic() - started
    assert_clean(result, 3)
    line = one_line_error(result)
    assert f"127.0.0.1:{port}" in line and "timed out" in line
    assert elapsed < 30


def test_unreachable_servers_in_a_list(start_server) -> None:
    ports = [free_port(), free_port()]
    result = mcl("-s", ",".join(f"127.0.0.1:{p}" for p in ports), "get", "k")
    assert_clean(result, 3)
    assert "cannot reach" in one_line_error(result)


def test_bad_server_spec_and_bad_key_are_usage_errors(server) -> None:
    result = mcl("--server", "nonsense", "get", "k")
    assert_clean(result, 2)
    assert "HOST:PORT" in result.stderr
    result = mcl("-s", addr(server), "get", "a b")
    assert_clean(result, 2)
    result = mcl("-s", addr(server), "set", "k" * 251, "v")
    assert_clean(result, 2)


def _all_commands() -> list[tuple[str, ...]]:
    return [()] + [(name,) for name in sorted(main.commands)]


@pytest.mark.parametrize("path", _all_commands(), ids=lambda p: " ".join(p) or "mcl")
def test_help_of_every_command_shows_defaults(path: tuple[str, ...]) -> None:
    for flag in ("--help", "-h"):
        result = mcl(*path, flag)
        assert_clean(result, 0)
        assert result.stdout.startswith(f"Usage: mcl {' '.join(path)}".rstrip() + " ")
    command = main if not path else main.commands[path[0]]
    assert command.help, f"{path} has no help text"
    with click.Context(command, info_name="mcl") as ctx:
        for param in command.params:
            if not isinstance(param, click.Option) or param.is_flag or param.count or param.name == "help":
                continue
            if param.default is None or param.multiple:
                continue
            record = param.get_help_record(ctx)
            assert record is not None and "default:" in record[1], (path, param.name, record)


def test_help_shows_the_documented_defaults() -> None:
    top = mcl("--help").stdout
    assert "127.0.0.1:9889" in top and "MCL_SERVER" in top
    serve = " ".join(mcl("serve", "--help").stdout.split())
    for default in ("default: 127.0.0.1]", "default: 9889", "default: data.txt]", "default: everysec]"):
        assert default in serve
    assert "default 1" in mcl("incr", "--help").stdout


def test_version_option() -> None:
    result = mcl("--version")
    assert_clean(result, 0)
    build = "mypyc build" if os.environ.get("MEMCACHEDLITE_EXPECT_BUILD") == "mypyc" else "pure Python build"
    assert result.stdout == f"memcachedlite, version {__version__} ({build})\n"


# -- real subprocesses ------------------------------------------------------------


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCL_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_mcl(port: int | None, *args: str, input: bytes | None = None, cwd: Path | None = None):
    server = ["--server", f"127.0.0.1:{port}"] if port is not None else []
    return subprocess.run(
        [sys.executable, "-m", "memcachedlite", *server, *args],
        input=input,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        env=_env(),
        cwd=cwd,
    )


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_serve_used_by_python_m_memcachedlite_clients(spawn, tmp_path: Path) -> None:
    proc = spawn()
    done = run_mcl(proc.port, "set", "bin", "-", input=BINARY)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"STORED\n", b"")
    done = run_mcl(proc.port, "get", "bin")
    assert (done.returncode, done.stdout) == (0, BINARY)
    done = run_mcl(proc.port, "set", "--flags", "7", "--ttl", "1000", "n", "41")
    assert done.returncode == 0
    done = run_mcl(proc.port, "incr", "n")
    assert (done.returncode, done.stdout) == (0, b"42\n")
    done = run_mcl(proc.port, "get", "missing")
    assert done.returncode == 1 and done.stdout == b""
    assert b"missing" in done.stderr and b"Traceback" not in done.stderr
    done = run_mcl(proc.port, "delete", "n")
    assert (done.returncode, done.stdout) == (0, b"DELETED\n")
    assert proc.terminate() == 0


def test_python_m_memcachedlite_unreachable_exits_3_without_traceback(tmp_path: Path) -> None:
    port = free_port()
    done = run_mcl(port, "get", "k")
    assert done.returncode == 3
    assert done.stdout == b""
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], done.stderr


def _store_some(port: int) -> None:
    client = Raw(port)
    try:
        assert client.ask(b"set bin 7 0 %d\r\n%s\r\n" % (len(BINARY), BINARY)) == b"STORED\r\n"
        assert client.ask(b"set plain 0 0 5\r\nhello\r\n") == b"STORED\r\n"
    finally:
        client.close()


def _assert_some_stored(data_file: Path) -> None:
    store = Store(data_file)
    try:
        item = store.get(b"bin")
        assert item is not None and item.value == BINARY and item.flags == 7
        assert store.get(b"plain").value == b"hello"
    finally:
        store.close()


def test_sigterm_exits_0_and_leaves_the_data_file_complete(spawn) -> None:
    proc = spawn()
    _store_some(proc.port)
    idle = Raw(proc.port)  # an idle client must not hold the shutdown up
    try:
        assert idle.ask(b"version\r\n") == b"VERSION %s\r\n" % PROTOCOL_VERSION.encode()
        assert proc.terminate(timeout=20) == 0
        assert idle.closed_by_peer(wait=5)
    finally:
        idle.close()
    output = proc.output()
    assert "SIGTERM" in output and "stopped" in output
    assert "Traceback" not in output
    _assert_some_stored(proc.data_file)


def test_sigint_exits_0_and_leaves_the_data_file_complete(spawn) -> None:
    proc = spawn()
    _store_some(proc.port)
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    output = proc.output()
    assert "SIGINT" in output and "Traceback" not in output and "KeyboardInterrupt" not in output
    _assert_some_stored(proc.data_file)


def parse_values(reply: bytes) -> dict[bytes, tuple[bytes, ...]]:
    """A get/gets reply as {key: (*header fields after the key, value)}, framed by length."""
    items = {}
    rest = reply
    while rest.startswith(b"VALUE "):
        line, rest = rest.split(b"\r\n", 1)
        fields = line.split()[1:]
        size = int(fields[-2] if len(fields) == 4 else fields[-1])
        items[fields[0]] = (*fields[1:], rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]
    assert rest == b"END\r\n", rest
    return items


def read_lite_reply(client: Raw) -> bytes:
    """A retrieval reply in the lite shape, ``VALUE <key> <bytes>``, which Raw.reply cannot frame."""
    out = b""
    while True:
        line = client.readline()
        out += line
        if not line.startswith(b"VALUE "):
            return out
        out += client.read_exactly(int(line.split()[2]) + 2)


def test_restart_keeps_everything(spawn, tmp_path: Path) -> None:
    data_file = tmp_path / "keep.txt"
    proc = spawn(data_file=data_file)
    client = Raw(proc.port)
    try:
        assert client.ask(b"set bin 4294967295 0 %d\r\n%s\r\n" % (len(BINARY), BINARY)) == b"STORED\r\n"
        assert client.ask(b"set crlf 3 0 2\r\n\r\n\r\n") == b"STORED\r\n"
        assert client.ask(b"set nul 0 0 1\r\n\x00\r\n") == b"STORED\r\n"
        assert client.ask(b"set ttl 9 1000 1\r\nt\r\n") == b"STORED\r\n"
        assert client.ask(b"set n 0 0 1\r\n5\r\n") == b"STORED\r\n"
        assert client.ask(b"incr n 37\r\n") == b"42\r\n"
        assert client.ask(b"set gone 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert client.ask(b"delete gone\r\n") == b"DELETED\r\n"
        assert client.ask(b"set app 0 0 1\r\na\r\n") == b"STORED\r\n"
        assert client.ask(b"append app 0 0 3\r\n\r\nb\r\n") == b"STORED\r\n"
        before = client.ask(b"gets bin crlf nul ttl n app gone\r\n")
        items = parse_values(before)
        assert sorted(items) == [b"app", b"bin", b"crlf", b"n", b"nul", b"ttl"]
        max_cas_before = max(int(fields[2]) for fields in items.values())
    finally:
        client.close()
    assert proc.terminate() == 0

    again = spawn(data_file=data_file)
    client = Raw(again.port)
    try:
        assert client.ask(b"gets bin crlf nul ttl n app gone\r\n") == before
        assert client.ask(b"set fresh 0 0 1\r\nf\r\n") == b"STORED\r\n"
        fresh = client.ask(b"gets fresh\r\n")
        # cas uniques keep growing across a restart: an old token never matches a new item
        assert int(parse_values(fresh)[b"fresh"][2]) > max_cas_before
    finally:
        client.close()
    assert "(6 items" in again.output()
    assert again.terminate() == 0
    store = Store(data_file)
    try:
        ttl = store.peek(b"ttl")
        assert ttl is not None and ttl.exptime > time.time() + 900
    finally:
        store.close()


def test_sigterm_during_a_delayed_set_still_answers_it(spawn) -> None:
    proc = spawn("--simulate-delay")
    client = Raw(proc.port)
    try:
        client.send(b"set late 0 0 4\r\nlate\r\n")
        time.sleep(0.2)
        proc.proc.terminate()
        assert client.reply() == b"STORED\r\n"
    finally:
        client.close()
    assert proc.wait(timeout=20) == 0
    store = Store(proc.data_file)
    try:
        assert store.get(b"late").value == b"late"
    finally:
        store.close()


@pytest.mark.slow
def test_simulate_delay_does_not_hold_back_other_clients(spawn) -> None:
    # Each slow client's sets sleep 0-2 s each on the server. version and delete
    # are not delayed, so a fast client must get all its answers while every
    # slow client is still in its sleeps. (Four sleeps of 0-2 s add up to less
    # than the fast client's few milliseconds with negligible probability.)
    proc = spawn("--simulate-delay")
    slow_count, sets_each = 4, 4
    started = threading.Barrier(slow_count + 1, timeout=30)
    finished: dict[int, float] = {}
    errors: list[BaseException] = []

    def slow(i: int) -> None:
        client = Raw(proc.port)
        try:
            client.send(b"set slow%d-0 0 0 1\r\nx\r\n" % i)
            started.wait()
            replies = [client.reply()]
            for j in range(1, sets_each):
                replies.append(client.ask(b"set slow%d-%d 0 0 1\r\nx\r\n" % (i, j)))
            assert replies == [b"STORED\r\n"] * sets_each
            finished[i] = time.monotonic()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=slow, args=(i,), daemon=True) for i in range(slow_count)]
    for t in threads:
        t.start()
    started.wait()
    begin = time.monotonic()
    fast = Raw(proc.port)
    try:
        for i in range(20):
            assert fast.ask(b"version\r\n") == b"VERSION %s\r\n" % PROTOCOL_VERSION.encode()
            assert fast.ask(b"delete nothing%d\r\n" % i) == b"NOT_FOUND\r\n"
    finally:
        fast.close()
    fast_done = time.monotonic()
    done_before_fast = len(finished)
    for t in threads:
        t.join(timeout=40)
    assert not errors, errors
    assert len(finished) == slow_count
    # The fast client was answered in full while every slow client was still asleep ...
    assert done_before_fast == 0
    assert fast_done < min(finished.values())
    # ... and the delays were real: the slow clients took far longer than it did.
    assert max(finished.values()) - begin > 0.5
    assert max(finished.values()) - begin > 5 * (fast_done - begin)
    assert proc.terminate() == 0


def test_dialect_lite_reply_shapes(spawn) -> None:
    proc = spawn("--dialect", "lite")
    client = Raw(proc.port)

    def get(key: bytes) -> bytes:
        client.send(b"get %s\r\n" % key)
        return read_lite_reply(client)

    try:
        assert client.ask(b"set k 5\r\nhello\r\n") == b"STORED\r\n"
        assert get(b"k") == b"VALUE k 5\r\nhello\r\nEND\r\n"
        assert client.ask(b"set full 3 0 2\r\nhi\r\n") == b"STORED\r\n"  # memcached's form still accepted
        assert get(b"full") == b"VALUE full 2\r\nhi\r\nEND\r\n"
        assert client.ask(b"set crlf 4\r\na\r\nb\r\n") == b"STORED\r\n"
        assert get(b"crlf") == b"VALUE crlf 4\r\na\r\nb\r\nEND\r\n"
        assert client.ask(b"add k 1\r\nx\r\n") == b"NOT-STORED\r\n"
        assert get(b"missing") == b"END\r\n"
    finally:
        client.close()
    assert proc.terminate() == 0


def test_dialect_memcached_is_the_default(spawn) -> None:
    proc = spawn()
    client = Raw(proc.port)
    try:
        assert client.ask(b"set k 5\r\nhello\r\n") == b"STORED\r\n"
        assert client.ask(b"get k\r\n") == b"VALUE k 0 5\r\nhello\r\nEND\r\n"
        assert client.ask(b"add k 0 0 1\r\nx\r\n") == b"NOT_STORED\r\n"
    finally:
        client.close()
    assert proc.terminate() == 0


def test_verbose_logs_each_connection(spawn, tmp_path: Path) -> None:
    proc = spawn("-v")
    client = Raw(proc.port)
    try:
        assert client.ask(b"version\r\n").startswith(b"VERSION ")
        local_port = client.sock.getsockname()[1]
    finally:
        client.close()
    wait_until(lambda: f"127.0.0.1:{local_port} closed" in proc.output(), what="connection log lines")
    assert f"connection from 127.0.0.1:{local_port}" in proc.output()
    assert proc.terminate() == 0

    quiet = spawn(data_file=tmp_path / "quiet.txt")
    client = Raw(quiet.port)
    try:
        assert client.ask(b"version\r\n").startswith(b"VERSION ")
    finally:
        client.close()
    assert quiet.terminate() == 0
    assert "connection from" not in quiet.output()


def run_serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``mcl serve`` that is expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "memcachedlite", "serve", *args],
        capture_output=True,
        timeout=RUN_TIMEOUT,
        env=_env(),
        cwd=tmp_path,
    )


def _error_lines(done: subprocess.CompletedProcess) -> list[str]:
    text = done.stderr.decode(errors="replace")
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.startswith("Error:")]


def test_a_data_file_held_by_a_running_server_refuses_to_start(spawn, tmp_path: Path) -> None:
    first = spawn()
    _store_some(first.port)
    done = run_serve(tmp_path, "--port", "0", "--data-file", str(first.data_file))
    assert done.returncode not in (0, None)
    errors = _error_lines(done)
    assert len(errors) == 1, done.stderr
    assert str(first.data_file) in errors[0] and "in use" in errors[0]
    # the first server and its file are untouched
    client = Raw(first.port)
    try:
        assert client.ask(b"get plain\r\n") == b"VALUE plain 0 5\r\nhello\r\nEND\r\n"
    finally:
        client.close()
    assert first.terminate() == 0
    _assert_some_stored(first.data_file)


def test_a_port_in_use_is_a_one_line_error(spawn, tmp_path: Path) -> None:
    first = spawn()
    done = run_serve(tmp_path, "--port", str(first.port), "--data-file", str(tmp_path / "other.txt"))
    assert done.returncode not in (0, None)
    errors = _error_lines(done)
    assert len(errors) == 1, done.stderr
    assert str(first.port) in errors[0] and "in use" in errors[0].lower()
    assert first.terminate() == 0


def test_a_data_file_that_cannot_be_opened_is_a_one_line_error(tmp_path: Path) -> None:
    missing_dir = tmp_path / "no" / "such" / "dir" / "data.txt"
    done = run_serve(tmp_path, "--port", "0", "--data-file", str(missing_dir))
    assert done.returncode not in (0, None)
    errors = _error_lines(done)
    assert len(errors) == 1 and str(missing_dir) in errors[0], done.stderr


def test_a_damaged_data_file_names_the_file_and_the_repair_command(tmp_path: Path) -> None:
    data_file = tmp_path / "broken.txt"
    store = Store(data_file)
    store.set(b"a", b"1")
    store.set(b"b", b"2")
    store.close()
    raw = bytearray(data_file.read_bytes())
    raw[raw.index(b"set a") + 4] = ord("X")  # damage the first record, not the last
    data_file.write_bytes(bytes(raw))
    mark_synced(data_file)  # in data a later fsync covered: corruption, not a crash
    done = run_serve(tmp_path, "--port", "0", "--data-file", str(data_file))
    assert done.returncode not in (0, None)
    errors = _error_lines(done)
    assert len(errors) == 1 and str(data_file) in errors[0], done.stderr
    assert "mcl repair" in errors[0]
    # the command the message suggests exists and salvages the intact record
    repaired = run_mcl(None, "repair", str(data_file), cwd=tmp_path)
    assert repaired.returncode == 0, repaired.stderr
    store = Store(data_file)
    try:
        assert store.get(b"b").value == b"2"
    finally:
        store.close()
