"""Real binary-protocol clients against memcachedlite: libmemcached's
``memccapable`` with its binary checks, the libmemcached tools with
``--binary`` (and SASL), ``memcslap --binary``, and pylibmc with
``binary=True``, including its SASL login against ``--auth-file``.

A missing client fails these tests, never skips them: the test command in
README.md installs every one (Debian: libmemcached-tools, libsasl2-modules;
PyPI: pylibmc).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

# pylibmc's wheel carries its own libsasl2, which looks for mechanism plugins
# where it was built; Debian's PLAIN plugin (libsasl2-modules) lives here. It
# is read when pylibmc is imported, so it is set first.
SASL_PLUGINS = "/usr/lib/x86_64-linux-gnu/sasl2"
os.environ.setdefault("SASL_PATH", SASL_PLUGINS)

import pylibmc  # noqa: E402

from tests.conftest import Raw, Running, ServerProcess  # noqa: E402
from tests.test_memccapable import RUN_TIMEOUT, run_memccapable  # noqa: E402
from tests.test_security import write_auth  # noqa: E402

TOOLS = "/usr/bin"


def tool(name: str) -> str:
    path = shutil.which(name) or os.path.join(TOOLS, name)
    assert os.path.exists(path), f"{name} is not installed (apt-get install libmemcached-tools)"
    return path


def libmemcached(name: str, port: int, *args: str, text: bool = True) -> subprocess.CompletedProcess:
    """Run one libmemcached tool with ``--binary`` against ``port``."""
    return subprocess.run(
        [tool(name), "--binary", f"--servers=127.0.0.1:{port}", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=text,
        timeout=RUN_TIMEOUT,
    )


# -- memccapable ----------------------------------------------------------------------------


def run_binary_checks(port: int) -> subprocess.CompletedProcess:
    """memccapable's binary checks only (its -b wins over the -a that run_memccapable passes)."""
    return run_memccapable(port, "-b")


@pytest.mark.external
def test_memccapable_binary_checks_pass(server: Running) -> None:
    result = run_binary_checks(server.port)
    report = f"memccapable -b exited {result.returncode}; its output:\n{result.stdout}"
    assert result.returncode == 0, report
    assert "All tests passed" in result.stdout and "[FAIL]" not in result.stdout, report
    assert result.stdout.count("binary ") >= 27 and "ascii " not in result.stdout, report  # every binary check ran


def test_memccapable_binary_checks_pass_against_memcached(memcached: int) -> None:
    """The control: the same checks pass against the real memcached."""
    result = run_binary_checks(memcached)
    assert result.returncode == 0, f"memccapable -b exited {result.returncode}; its output:\n{result.stdout}"


# -- the libmemcached tools -------------------------------------------------------------------


@pytest.mark.external
def test_tools_round_trip_a_file_in_binary(server: Running, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40 + b"\r\nEND\r\n"
    source = tmp_path / "payload.bin"
    source.write_bytes(data)
    assert libmemcached("memccp", server.port, str(source)).returncode == 0
    assert server.store.peek(b"payload.bin").value == data
    got = libmemcached("memccat", server.port, "payload.bin", text=False)
    assert got.returncode == 0 and got.stdout == data + b"\n"  # memccat ends each value with a newline
    assert libmemcached("memcexist", server.port, "payload.bin").returncode == 0
    assert libmemcached("memctouch", server.port, "--expire=1000", "payload.bin").returncode == 0
    assert server.store.peek(b"payload.bin").exptime == pytest.approx(server.store.now() + 1000, abs=5)
    assert libmemcached("memcrm", server.port, "payload.bin").returncode == 0
    assert libmemcached("memcexist", server.port, "payload.bin").returncode != 0
    assert server.store.peek(b"payload.bin") is None


@pytest.mark.external
def test_memcstat_and_memcflush_in_binary(server: Running) -> None:
    server.store.set(b"a", b"1")
    stats = libmemcached("memcstat", server.port)
    assert stats.returncode == 0 and "curr_items: 1" in stats.stdout and "cmd_set: 1" in stats.stdout
    assert libmemcached("memcflush", server.port).returncode == 0
    assert server.store.peek(b"a") is None


@pytest.mark.parametrize("test", ["set", "get", "mget"])
@pytest.mark.external
def test_memcslap_binary(server: Running, test: str) -> None:
    result = libmemcached("memcslap", server.port, f"--test={test}", "--concurrency=2", "--execute-number=300")
    assert result.returncode == 0, result.stdout + result.stderr
    counters = server.store.stats()
    assert counters["cmd_set"] >= 300
    if test != "set":
        assert counters["get_hits"] >= 300 and counters["get_misses"] == 0


@pytest.mark.external
def test_tools_log_in_with_sasl(start_server, tmp_path: Path) -> None:
    auth = write_auth(tmp_path / "auth", "alice:secret\n")
    server = start_server(server_options={"auth_file": auth})
    source = tmp_path / "greeting"
    source.write_bytes(b"hello")
    refused = libmemcached("memccp", server.port, "--username=alice", "--password=wrong", str(source))
    assert refused.returncode != 0 and server.store.peek(b"greeting") is None
    assert libmemcached("memccp", server.port, "--username=alice", "--password=secret", str(source)).returncode == 0
    got = libmemcached("memccat", server.port, "--username=alice", "--password=secret", "greeting")
    assert got.returncode == 0 and got.stdout == "hello\n"
    assert server.server.auth.auth_errors == 1


# -- pylibmc ---------------------------------------------------------------------------------
#
# pylibmc keeps the GIL while libmemcached waits for a reply, so an in-process
# server could not answer it: these run against `mcl serve` in a subprocess.


def pylibmc_client(port: int, **options: object) -> pylibmc.Client:
    return pylibmc.Client([f"127.0.0.1:{port}"], binary=True, behaviors={"cas": True}, **options)


@pytest.fixture
def served(spawn) -> ServerProcess:
    return spawn()


@pytest.fixture
def client(served: ServerProcess) -> Iterator[pylibmc.Client]:
    c = pylibmc_client(served.port)
    yield c
    c.disconnect_all()


@pytest.fixture
def text(served: ServerProcess) -> Iterator[Raw]:
    c = Raw(served.port)
    yield c
    c.close()


def test_pylibmc_binary_round_trips(client: pylibmc.Client, text: Raw) -> None:
    assert client.set("greeting", b"hello \r\n\x00 world")
    assert client.get("greeting") == b"hello \r\n\x00 world"
    assert client.get("missing") is None
    assert client.add("greeting", b"x") is False and client.add("new", b"x") is True
    assert client.replace("greeting", b"hi") is True
    with pytest.raises(pylibmc.NotFound):  # KEY_ENOENT, as from memcached
        client.replace("absent", b"x")
    assert client.append("greeting", b"!") and client.prepend("greeting", b">")
    assert client.get("greeting") == b">hi!"
    assert client.delete("greeting") is True and client.delete("greeting") is False
    assert client.set_multi({"a": b"1", "b": b"2", "c": b"3"}) == []
    assert client.get_multi(["a", "b", "c", "zz"]) == {"a": b"1", "b": b"2", "c": b"3"}
    assert client.delete_multi(["a", "b"]) is True
    # items written over binary read back the same over text, and the other way round
    assert text.ask(b"get c new\r\n") == b"VALUE c 0 1\r\n3\r\nVALUE new 0 1\r\nx\r\nEND\r\n"
    assert text.ask(b"set from-text 0 0 9\r\nfrom text\r\n") == b"STORED\r\n"
    assert client.get("from-text") == b"from text"


def test_pylibmc_counters(client: pylibmc.Client) -> None:
    assert client.set("n", 10)
    assert client.incr("n", 5) == 15 and client.decr("n", 20) == 0
    with pytest.raises(pylibmc.NotFound):
        client.incr("nothing")
    client.set("word", b"abc")
    with pytest.raises(pylibmc.Error):
        client.incr("word")


def test_pylibmc_cas_and_touch(served: ServerProcess, text: Raw) -> None:
    # libmemcached 1.1.4 reads a binary TOUCH reply only when its poll
    # timeout (5 s) runs out, against memcached too: a short one keeps the test short
    client = pylibmc.Client([f"127.0.0.1:{served.port}"], binary=True, behaviors={"cas": True, "_poll_timeout": 200})
    client.set("k", b"v1")
    value, cas = client.gets("k")
    assert value == b"v1" and text.ask(b"gets k\r\n") == b"VALUE k 0 2 %d\r\nv1\r\nEND\r\n" % cas
    assert client.cas("k", b"v2", cas) is True
    assert client.cas("k", b"v3", cas) is False  # the cas moved on
    assert client.get("k") == b"v2"
    assert client.touch("k", 1000) is True and client.touch("gone", 10) is False
    ttl = int(text.ask(b"mg k t\r\n")[4:])
    client.disconnect_all()
    assert 900 < ttl <= 1000


def test_pylibmc_flags_and_pickles(client: pylibmc.Client) -> None:
    client.set("obj", {"a": [1, 2]})
    client.set("int", 42)
    assert client.get("obj") == {"a": [1, 2]} and client.get("int") == 42


def test_pylibmc_too_large_value_and_the_connection_survives(client: pylibmc.Client) -> None:
    with pytest.raises(pylibmc.Error):
        client.set("huge", b"x" * (2 * 1024 * 1024))
    assert client.set("small", b"ok") and client.get("small") == b"ok"


#: pylibmc's SASL logins, run in a process of their own: pylibmc's bundled
#: libsasl2 finds the PLAIN plugin only where SASL_PATH was set before it was
#: first loaded, and in a test process that has imported much else the login
#: failed ("FAILED TO SEND AUTHENTICATION TO SERVER") depending on which test
#: modules were collected with it; an application's process is the fresh one.
SASL_SCRIPT = """
import sys
import pylibmc

def client(**credentials):
    return pylibmc.Client([f"127.0.0.1:{sys.argv[1]}"], binary=True, **credentials)

good = client(username="bob", password="hunter2")
seen = [good.set("k", b"authenticated"), good.get("k")]
for other in (client(username="bob", password="nope"), client()):
    try:
        other.set("k", b"intruder")
        seen.append("stored")
    except pylibmc.Error:
        seen.append("refused")
seen.append(good.get("k"))
print(repr(seen))
"""


@pytest.mark.external
def test_pylibmc_sasl_login(spawn, tmp_path: Path) -> None:
    auth = write_auth(tmp_path / "auth", "alice:secret\nbob:hunter2\n")
    served = spawn("--auth-file", str(auth))
    env = dict(os.environ, SASL_PATH=SASL_PLUGINS)
    run = subprocess.run(
        [sys.executable, "-c", SASL_SCRIPT, str(served.port)], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == repr([True, b"authenticated", "refused", "refused", b"authenticated"])
    text = Raw(served.port)
    try:
        assert text.ask(b"set auth 0 0 11\r\nbob hunter2\r\n") == b"STORED\r\n"  # the text login, same users
        stats = dict(line.split()[1:] for line in text.ask(b"stats\r\n").splitlines()[:-1])
    finally:
        text.close()
    # bob's SASL login and his text login at least; whether the refused
    # clients got as far as a SASL exchange (counted in auth_errors, which
    # tests/test_binary.py checks byte for byte) is libmemcached's choice
    assert int(stats[b"auth_cmds"]) >= 2


# -- the ecosystems that speak binary by default: Dalli (Rails) and PHP's sessions -------------

DALLI_SCRIPT = """
require "dalli"
port, user, password = ARGV
options = {socket_timeout: 5, socket_failure_delay: false}
options.update(username: user, password: password) if user
dc = Dalli::Client.new("127.0.0.1:#{port}", options)
dc.set("greeting", "hello", 0, raw: true)
puts dc.get("greeting")
dc.set("obj", {"a" => [1, 2]})
p dc.get("obj")
p dc.get_multi("greeting", "obj", "missing").keys.sort
p dc.incr("n", 5, 0, 10), dc.incr("n", 5), dc.decr("n", 100), dc.incr("absent", 1)
p dc.add("greeting", "x"), dc.add("fresh", "y") != false, dc.replace("nope", "x")
p dc.append("greeting", "!"), dc.prepend("greeting", ">"), dc.get("greeting")
p dc.cas("greeting") { |v| v + "?" } != false, dc.get("greeting")
p dc.touch("greeting", 100), dc.touch("nope", 100), dc.delete("greeting"), dc.delete("greeting"), dc.get("greeting")
p dc.stats.values.first.values_at("curr_items", "cmd_get", "get_hits", "get_misses", "cmd_set")
"""


def run_dalli(tmp_path: Path, port: int, *credentials: str) -> subprocess.CompletedProcess:
    ruby = shutil.which("ruby")
    assert ruby is not None, "ruby is not installed (apt-get install ruby ruby-dalli)"
    script = tmp_path / "dalli_check.rb"
    script.write_text(DALLI_SCRIPT)
    return subprocess.run(
        [ruby, str(script), str(port), *credentials],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def test_dalli_answers_as_with_memcached(server: Running, memcached: int, tmp_path: Path) -> None:
    """Dalli 3 (Rails' client; Debian's ruby-dalli) speaks binary only: the
    same script prints the same against both servers."""
    theirs = run_dalli(tmp_path, memcached)
    ours = run_dalli(tmp_path, server.port)
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout
    assert ours.stdout.startswith('hello\n{"a"=>[1, 2]}\n["greeting", "obj"]\n10\n15\n0\nnil\n')


@pytest.mark.external
def test_dalli_sasl_login(start_server, tmp_path: Path) -> None:
    auth = write_auth(tmp_path / "auth", "alice:secret\n")
    server = start_server(server_options={"auth_file": auth})
    ok = run_dalli(tmp_path, server.port, "alice", "secret")
    assert ok.returncode == 0 and "\nhello\n" in ok.stdout, ok.stderr
    assert "Dalli/SASL: Authenticated" in ok.stdout + ok.stderr  # Dalli logs to stdout
    refused = run_dalli(tmp_path, server.port, "alice", "wrong")
    assert refused.returncode != 0 and "hello" not in refused.stdout


PHP_SCRIPT = """<?php
session_id("binarysession1");
if (!session_start()) { echo "session_start failed\\n"; exit(1); }
$_SESSION["visits"] = ($_SESSION["visits"] ?? 0) + 1;
session_write_close();
printf("visits=%d binary=%s\\n", $_SESSION["visits"], ini_get("memcached.sess_binary_protocol"));
$m = new Memcached();
$m->setOption(Memcached::OPT_BINARY_PROTOCOL, true);
$m->addServer("127.0.0.1", (int)$argv[1]);
$m->set("php", "value", 100);
printf("%s %s %d\\n", $m->get("php"), $m->getResultMessage(), $m->increment("php-counter", 2, 40));
"""


@pytest.mark.external
def test_php_session_handler_speaks_binary(server: Running, tmp_path: Path) -> None:
    """PHP's memcached session handler has ``memcached.sess_binary_protocol``
    on by default: session_start() must not stall."""
    php = shutil.which("php")
    assert php is not None, "php is not installed (apt-get install php-cli php-memcached)"
    script = tmp_path / "session.php"
    script.write_text(PHP_SCRIPT)
    ini = ["-d", "session.save_handler=memcached", "-d", f"session.save_path=127.0.0.1:{server.port}"]
    runs = [
        subprocess.run(
            [php, *ini, str(script), str(server.port)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stdout + runs[0].stderr
    assert [r.stdout for r in runs] == [
        "visits=1 binary=1\nvalue SUCCESS 40\n",
        "visits=2 binary=1\nvalue SUCCESS 42\n",
    ]
    assert any(key.startswith(b"memc.sess.") for key in server.store.keys())
