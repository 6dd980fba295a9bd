"""What ``mcl`` tells a person: every client-side error names the limit or
the option that fixes it, a negative delta points to the other verb, a
closed standard output ends mcl quietly (as ``yes | head`` ends ``yes``),
and a server that speaks only the binary protocol is named as such."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from memcachedlite import Settings
from memcachedlite.cli.common import OUTPUT_CLOSED_STATUS, key_problem, speaks_only_binary
from tests.conftest import ROOT, running_memcached
from tests.test_cli import addr, assert_clean, mcl
from tests.test_dump_load import Canned

pytestmark = pytest.mark.usefixtures("no_mcl_environment")


def error_line(result) -> str:
    return [line for line in result.stderr.splitlines() if line.startswith("Error: ")][0]


# -- keys ------------------------------------------------------------------------


def test_key_problems_in_words() -> None:
    assert key_problem(b"fine:key") is None and key_problem(b"k" * 250) is None
    assert key_problem(b"bad key") == (
        'key "bad key" contains whitespace; memcached keys have no spaces or control characters'
    )
    assert key_problem(b"k" * 300) == "key is 300 bytes; memcached keys are at most 250"
    assert key_problem(b"") == "the key is empty; memcached keys are 1 to 250 bytes"
    assert key_problem(b"a\x01b") == (
        'key "a\\x01b" contains a control character; memcached keys have no spaces or control characters'
    )
    assert key_problem(b"tab\there").startswith('key "tab\\there" contains whitespace')
    assert key_problem(b"x" * 59 + b" " + b"y" * 100).endswith(
        '..." contains whitespace; memcached keys have no spaces or control characters'
    )


@pytest.mark.parametrize("several", [False, True], ids=["one server", "several servers"])
def test_bad_keys_are_usage_errors_that_say_why(server, several: bool) -> None:
    servers = f"{addr(server)},{addr(server)}" if several else addr(server)
    result = mcl("-s", servers, "set", "bad key", "v")
    assert_clean(result, 2)
    assert error_line(result) == (
        'Error: key "bad key" contains whitespace; memcached keys have no spaces or control characters'
    )
    result = mcl("-s", servers, "get", "k" * 300)
    assert_clean(result, 2)
    assert error_line(result) == "Error: key is 300 bytes; memcached keys are at most 250"
    for command in (["delete", "a b"], ["incr", "a b"], ["touch", "a b", "5"], ["add", "a b", "v"]):
        assert_clean(mcl("-s", servers, *command), 2)
    assert len(server.store) == 0


# -- values too large ------------------------------------------------------------


def test_a_value_too_large_names_its_size_the_limit_and_the_option(start_server) -> None:
    small = start_server(settings=Settings(max_item_size=1024))
    result = mcl("-s", addr(small), "set", "big", "-", input=b"x" * 2000)
    assert_clean(result, 4)
    assert error_line(result) == (
        "Error: server error: object too large for cache; the value is 2000 bytes, the server takes at most 1024;"
        " the server's --max-item-size (1m by default; memcached's -I) raises the limit"
    )
    result = mcl("-s", addr(small), "call", "set", "big", "0", "0", "2000", "--data", "x" * 2000)
    assert_clean(result, 4)
    assert result.stdout_bytes == b"SERVER_ERROR object too large for cache\r\n"
    assert "the server's --max-item-size (1m by default" in error_line(result)


def test_a_value_too_large_for_a_server_without_stats_settings() -> None:
    # the set line, its data line, then (pymemcache connects again after an error) stats settings
    fake = Canned([b"SERVER_ERROR object too large for cache\r\n", b"ERROR\r\n", b"ERROR\r\n"])
    try:
        result = mcl("-s", f"127.0.0.1:{fake.port}", "set", "big", "value")
    finally:
        fake.close()
    assert_clean(result, 4)
    assert error_line(result) == (
        "Error: server error: object too large for cache; the value is 5 bytes;"
        " the server's --max-item-size (1m by default; memcached's -I) raises the limit"
    )


def test_loading_values_too_large_gets_the_hint(start_server, tmp_path) -> None:
    small = start_server(settings=Settings(max_item_size=1024))
    (tmp_path / "seed.txt").write_bytes(b"small v\nbig " + b"x" * 2000 + b"\n")
    result = mcl("-s", addr(small), "load", str(tmp_path / "seed.txt"))
    assert_clean(result, 4)
    assert "the first with" in result.stderr and "object too large for cache; the server's --max-item-size" in (
        result.stderr
    )


# -- incr and decr ----------------------------------------------------------------


def test_a_negative_delta_says_which_verb_to_use(server) -> None:
    server.store.set(b"counter", b"10")
    result = mcl("-s", addr(server), "incr", "counter", "-1")
    assert_clean(result, 2)
    assert error_line(result) == "Error: DELTA cannot be negative; to subtract 1, use: mcl decr counter 1"
    result = mcl("-s", addr(server), "decr", "counter", "-3")
    assert_clean(result, 2)
    assert error_line(result) == "Error: DELTA cannot be negative; to add 3, use: mcl incr counter 3"
    assert server.store.get(b"counter").value == b"10"


def test_deltas_out_of_memcacheds_range(server) -> None:
    for delta, said in (
        ("x", "Error: Invalid value for DELTA: 'x' is not a whole number"),
        ("1_000", "Error: Invalid value for DELTA: '1_000' is not a whole number"),
        (
            str(2**64),
            f"Error: Invalid value for DELTA: {2**64} is past memcached's 64-bit counters (at most {2**64 - 1})",
        ),
    ):
        result = mcl("-s", addr(server), "incr", "counter", delta)
        assert_clean(result, 2)
        assert error_line(result) == said


def test_deltas_that_fit_still_count(server) -> None:
    server.store.set(b"counter", b"10")
    assert mcl("-s", addr(server), "incr", "counter").stdout == "11\n"
    assert mcl("-s", addr(server), "incr", "counter", "5").stdout == "16\n"
    assert mcl("-s", addr(server), "decr", "counter", "20").stdout == "0\n"
    assert mcl("-s", addr(server), "incr", "counter", str(2**64 - 1)).stdout == f"{2**64 - 1}\n"


# -- a closed standard output -----------------------------------------------------


def closed_early(port: int, *args: str, read: int = 10) -> tuple[int, str]:
    """``mcl ARGS | head -c READ``: exit status and standard error."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "memcachedlite", "-s", f"127.0.0.1:{port}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(read)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    return proc.wait(60), err


def test_a_closed_standard_output_ends_mcl_quietly_as_head_users_expect(server) -> None:
    for i in range(2000):
        server.store.set(b"k%d" % i, b"x" * 1000)
    server.store.set(b"big", b"y" * 4_000_000)
    for command in (["dump"], ["get", "big"]):  # more than a pipe holds: the close is always met
        status, err = closed_early(server.port, *command)
        assert (status, err) == (OUTPUT_CLOSED_STATUS, ""), command
    # a few kilobytes may all fit in the pipe before the reader closes it: then nothing was cut
    status, err = closed_early(server.port, "stats")
    assert status in (0, OUTPUT_CLOSED_STATUS) and err == ""
    assert OUTPUT_CLOSED_STATUS == 128 + 13  # what a shell shows for a program SIGPIPE ended


# -- servers that speak only the binary protocol -----------------------------------


def test_a_binary_only_memcachedlite_is_named_as_such(start_server) -> None:
    binary = start_server(server_options={"protocol": "binary"})
    said = (
        f"Error: server 127.0.0.1:{binary.port} speaks only memcached's binary protocol (started with -B binary);"
        " mcl speaks the text protocol: start it with -B auto"
    )
    for command in (["get", "k"], ["set", "k", "v"], ["call", "version"], ["dump"]):
        result = mcl("-s", addr(binary), *command)
        assert_clean(result, 3)
        assert error_line(result) == said, command


@pytest.mark.external
def test_a_binary_only_memcached_is_named_as_such() -> None:
    """memcached -B binary does not close a text request: it waits for the
    rest of a 24-byte header, so mcl learns it at its timeout."""
    with running_memcached("-B", "binary") as port:
        for command in (["get", "k"], ["call", "version"]):
            result = mcl("-s", f"127.0.0.1:{port}", "--timeout", "0.5", *command)
            assert_clean(result, 3)
            assert f"server 127.0.0.1:{port} speaks only memcached's binary protocol" in error_line(result)


def test_the_binary_probe_of_a_server_that_is_gone_says_no() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert not speaks_only_binary(("127.0.0.1", port), 1.0)


def test_a_server_that_just_closes_gets_the_tls_hint() -> None:
    fake = Canned([b""])  # reads the request, then closes without a word
    try:
        result = mcl("-s", f"127.0.0.1:{fake.port}", "get", "k")
    finally:
        fake.close()
    assert_clean(result, 3)
    assert (
        error_line(result) == f"Error: server 127.0.0.1:{fake.port} closed the connection (if it serves TLS, add --tls)"
    )
