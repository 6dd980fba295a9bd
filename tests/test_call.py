"""``mcl call``: any command line, a verb of one's own included, sent to a
real server, its reply printed byte for byte. The reply ends where the
answer to the ``mn`` sent after it begins, so replies of shapes mcl cannot
know (several plain lines, none at all, a value holding ``MN``) come whole."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from memcachedlite import Registry
from memcachedlite.cli.call import block_length
from tests.test_cli import addr, assert_clean, mcl, one_line_error

pytestmark = pytest.mark.usefixtures("no_mcl_environment")


@pytest.fixture
def verbs(fresh_registry: Registry) -> Registry:
    """The built-in verbs and three of a user's own."""

    @fresh_registry.command("upper", min_args=1, max_args=1, mutates=True)
    def upper(ctx, args, data):
        item = ctx.store.update(args[0], lambda item: item.value.upper())
        return b"NOT_FOUND\r\n" if item is None else b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (args[0], 5, item.value)

    @fresh_registry.command("lines", min_args=1, max_args=1)
    def lines(ctx, args, data):
        return b"".join(b"line %d\r\n" % n for n in range(int(args[0])))

    @fresh_registry.command("tricky", max_args=0)
    def tricky(ctx, args, data):
        return b"VALUE t 0 4\r\nMN\r\n\r\nEND\r\n"  # a value that looks like the end mark

    return fresh_registry


@pytest.fixture
def own(start_server, verbs: Registry):
    return start_server(registry=verbs)


def test_a_verb_of_ones_own(own) -> None:
    assert_clean(mcl("-s", addr(own), "set", "greeting", "hello"), 0)
    result = mcl("-s", addr(own), "call", "upper", "greeting")
    assert_clean(result, 0)
    assert result.stdout_bytes == b"VALUE greeting 0 5\r\nHELLO\r\nEND\r\n"
    assert own.store.get(b"greeting").value == b"HELLO"


def test_replies_of_any_shape_come_whole(own) -> None:
    assert mcl("-s", addr(own), "call", "lines", "3").stdout_bytes == b"line 0\r\nline 1\r\nline 2\r\n"
    assert mcl("-s", addr(own), "call", "lines", "0").stdout_bytes == b""
    assert mcl("-s", addr(own), "call", "tricky").stdout_bytes == b"VALUE t 0 4\r\nMN\r\n\r\nEND\r\n"
    assert mcl("-s", addr(own), "call", "upper", "nokey").stdout_bytes == b"NOT_FOUND\r\n"


def test_built_in_verbs_with_a_data_block_and_noreply(own) -> None:
    result = mcl("-s", addr(own), "call", "set", "k", "3", "0", "5", "--data", "hello")
    assert_clean(result, 0)
    assert result.stdout_bytes == b"STORED\r\n"
    result = mcl("-s", addr(own), "call", "set", "n", "0", "0", "4", "noreply", "--data", "-", input=b"a\r\nb")
    assert_clean(result, 0)
    assert result.stdout_bytes == b""  # noreply: nothing before MN
    assert own.store.get(b"n").value == b"a\r\nb"
    result = mcl("-s", addr(own), "call", "get", "k", "n")
    assert result.stdout_bytes == b"VALUE k 3 5\r\nhello\r\nVALUE n 0 4\r\na\r\nb\r\nEND\r\n"
    assert mcl("-s", addr(own), "call", "mg", "k", "v", "f").stdout_bytes == b"VA 5 f3\r\nhello\r\n"


def test_negative_numbers_are_arguments_not_options(own) -> None:
    result = mcl("-s", addr(own), "call", "touch", "k", "-1")
    assert_clean(result, 0)
    assert result.stdout_bytes == b"NOT_FOUND\r\n"


def test_error_replies_are_printed_and_exit_4(own) -> None:
    result = mcl("-s", addr(own), "call", "frobnicate", "x")
    assert_clean(result, 4)
    assert result.stdout_bytes == b"ERROR\r\n"
    assert "it has no verb 'frobnicate' taking 1 arguments" in result.stderr
    assert "mcl serve --load MODULE" in result.stderr
    result = mcl("-s", addr(own), "call", "incr", "k", "x")
    assert_clean(result, 4)
    assert result.stdout_bytes == b"CLIENT_ERROR invalid numeric delta argument\r\n"
    assert "Error: the server answered CLIENT_ERROR invalid numeric delta argument" in result.stderr


def test_quit_ends_the_reply_with_the_connection(own) -> None:
    result = mcl("-s", addr(own), "call", "quit")
    assert_clean(result, 0)
    assert result.stdout_bytes == b""


def test_one_server_only_and_unreachable_servers(own) -> None:
    result = mcl("-s", f"{addr(own)},127.0.0.1:1", "call", "version")
    assert_clean(result, 2)
    assert "mcl call talks to one server" in result.stderr
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = mcl("-s", f"127.0.0.1:{port}", "call", "version")
    assert_clean(result, 3)
    assert one_line_error(result).startswith(f"Error: cannot reach server 127.0.0.1:{port}:")


def test_credentials_refused_and_a_server_that_closes(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer(replies: list[bytes]) -> None:
            for reply in replies:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(4096)
                    conn.sendall(reply)

        thread = threading.Thread(target=answer, args=([b"CLIENT_ERROR unauthenticated\r\n", b"VERSION 1\r\n"],))
        thread.start()
        credentials = tmp_path / "credentials"
        credentials.write_text("alice:secret\n")
        result = mcl("-s", f"127.0.0.1:{port}", "--credentials", str(credentials), "call", "version")
        assert_clean(result, 4)
        assert "answered authentication with 'CLIENT_ERROR unauthenticated'" in result.stderr
        result = mcl("-s", f"127.0.0.1:{port}", "call", "version")  # answers, then closes before MN
        thread.join(10)
    assert_clean(result, 3)
    assert f"server 127.0.0.1:{port} closed the connection (if it serves TLS, add --tls)" in result.stderr


def test_a_server_that_does_not_know_mn_runs_into_the_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        done = threading.Event()

        def old_memcached() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"VERSION 1.4.25\r\nERROR\r\n")
                done.wait(10)

        thread = threading.Thread(target=old_memcached)
        thread.start()
        try:
            result = mcl("-s", f"127.0.0.1:{port}", "--timeout", "0.5", "call", "version")
        finally:
            done.set()
            thread.join(10)
    assert_clean(result, 3)
    assert "no complete reply from" in result.stderr and "which memcached before 1.6 does not know" in result.stderr


def test_block_lengths_of_reply_lines() -> None:
    assert block_length(b"VALUE k 0 5\r\n") == 5
    assert block_length(b"VALUE k 0 5 99\r\n") == 5
    assert block_length(b"VALUE k 7\r\n") == 7  # the seed's dialect: no flags
    assert block_length(b"VA 12 f0\r\n") == 12
    assert block_length(b"VALUE k x y\r\n") is None
    assert block_length(b"VA\r\n") is None and block_length(b"VALUE\r\n") is None
