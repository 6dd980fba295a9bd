"""memcachedlite behind twemproxy (nutcracker): three ``mcl serve`` processes
and the real proxy in front of them, configured by examples/cluster/nutcracker.yml
with the ports chosen at run time. A missing nutcracker fails, not skips:
``apt-get install nutcracker``."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from tests.conftest import ROOT, Raw, free_port

pytestmark = pytest.mark.external  # nutcracker, from the package of that name

CONFIG = ROOT / "examples" / "cluster" / "nutcracker.yml"
KEYS = [f"key:{i:04d}" for i in range(1000)]


def nutcracker_binary() -> str:
    binary = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
    assert os.path.exists(binary), "nutcracker (twemproxy) is not installed: apt-get install nutcracker"
    return binary


def cluster_config(template: str, listen: int, ports: list[int]) -> str:
    """The example's configuration with its fixed ports replaced by ``listen`` and ``ports``."""
    text, count = re.subn(r"(listen:\s*127\.0\.0\.1:)\d+", rf"\g<1>{listen}", template)
    assert count == 1
    servers = iter(ports)
    text, count = re.subn(r"(-\s*127\.0\.0\.1:)\d+(:\d+)", lambda m: f"{m[1]}{next(servers)}{m[2]}", text)
    assert count == len(ports) == 3
    return text


class Proxy:
    """nutcracker as a subprocess on a free port of 127.0.0.1."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.proc = subprocess.Popen(
            [
                nutcracker_binary(),
                f"--conf-file={config}",
                "--stats-addr=127.0.0.1",
                f"--stats-port={free_port()}",
                f"--output={log}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, f"nutcracker exited early:\n{self.output()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"nutcracker did not listen within 10 s:\n{self.output()}") from None
                time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client(self) -> Client:
        return Client(("127.0.0.1", self.port), default_noreply=False, timeout=5, connect_timeout=5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Cluster:
    def __init__(self, servers: list, proxy: Proxy) -> None:
        self.servers = servers
        self.proxy = proxy


@pytest.fixture
def cluster(spawn, tmp_path: Path) -> Iterator[Cluster]:
    binary = nutcracker_binary()  # fail first, before anything is started
    servers = [spawn(data_file=tmp_path / f"mcl{i}.txt") for i in (1, 2, 3)]
    listen = free_port()
    config = tmp_path / "nutcracker.yml"
    config.write_text(cluster_config(CONFIG.read_text(), listen, [s.port for s in servers]))
    check = subprocess.run([binary, "--test-conf", f"--conf-file={config}"], capture_output=True, timeout=10)
    assert check.returncode == 0, check.stderr
    proxy = Proxy(config, listen, tmp_path / "nutcracker.log")
    try:
        yield Cluster(servers, proxy)
    finally:
        proxy.stop()  # the servers are stopped by the spawn fixture


def direct(server) -> Client:
    return Client(("127.0.0.1", server.port), default_noreply=False, timeout=5, connect_timeout=5)


def owners(cluster: Cluster) -> dict[str, int]:
    """key -> index of the server that holds it, asking each server directly."""
    found: dict[str, int] = {}
    for index, server in enumerate(cluster.servers):
        client = direct(server)
        try:
            for start in range(0, len(KEYS), 100):
                for key in client.get_many(KEYS[start : start + 100]):
                    assert key not in found, f"{key} is on two servers"
                    found[key] = index
        finally:
            client.close()
    return found


def test_config_example_is_valid_ketama_memcache() -> None:
    text = CONFIG.read_text()
    assert re.search(r"^\s*distribution:\s*ketama\b", text, re.M)
    assert re.search(r"^\s*redis:\s*false\b", text, re.M)
    assert re.search(r"^\s*auto_eject_hosts:\s*true\b", text, re.M)
    assert len(re.findall(r"^\s*-\s*127\.0\.0\.1:\d+:\d+ \w+", text, re.M)) == 3
    check = subprocess.run(
        [nutcracker_binary(), "--test-conf", f"--conf-file={CONFIG}"], capture_output=True, timeout=10
    )
    assert check.returncode == 0, check.stderr


def test_keys_set_through_the_proxy_are_read_back_and_spread(cluster: Cluster) -> None:
    client = cluster.proxy.client()
    try:
        for key in KEYS:
            assert client.set(key, f"value of {key}".encode()) is True
        for start in range(0, len(KEYS), 100):  # multi-key gets, which the proxy splits per server
            batch = KEYS[start : start + 100]
            assert client.get_many(batch) == {key: f"value of {key}".encode() for key in batch}
    finally:
        client.close()
    held = owners(cluster)
    assert sorted(held) == KEYS
    counts = []
    for index, server in enumerate(cluster.servers):
        stats = direct(server)
        try:
            counts.append(stats.stats()[b"curr_items"])
        finally:
            stats.close()
        assert counts[-1] == sum(1 for owner in held.values() if owner == index)
        assert counts[-1] > len(KEYS) // 10, f"server {index} holds {counts[-1]} of {len(KEYS)} keys"
    assert sum(counts) == len(KEYS), counts


def test_with_a_server_stopped_the_proxy_serves_the_others_keys(cluster: Cluster) -> None:
    client = cluster.proxy.client()
    try:
        assert all(client.set(key, key.encode()) for key in KEYS)
        held = owners(cluster)
        stopped = max(range(3), key=lambda i: sum(1 for o in held.values() if o == i))
        assert cluster.servers[stopped].terminate() == 0
        survivors = [key for key in KEYS if held[key] != stopped]
        assert survivors
        # Every key of the running servers answers. Requests that reach the
        # stopped server fail until the proxy ejects it, so retry a little.
        deadline = time.monotonic() + 15
        for key in survivors:
            while True:
                try:
                    value = client.get(key)
                    break
                except (MemcacheError, OSError):
                    client.close()
                    assert time.monotonic() < deadline, f"the proxy did not answer for {key} in time"
                    time.sleep(0.05)
            assert value == key.encode(), key
        # Once ejected, the stopped server's keys land on the others: writes work again.
        lost = next(key for key in KEYS if held[key] == stopped)
        while True:
            try:
                if client.set(lost, b"again") and client.get(lost) == b"again":
                    break
            except (MemcacheError, OSError):
                client.close()
            assert time.monotonic() < deadline, "the proxy never moved the stopped server's keys"
            time.sleep(0.05)
    finally:
        client.close()


def _ask(client: Raw, request: bytes, replies: int = 1) -> bytes:
    return client.ask(request, replies)


def test_every_command_twemproxy_forwards(cluster: Cluster) -> None:
    # twemproxy's notes/memcache.md: set add replace append prepend cas, get gets,
    # delete, incr decr, touch, quit, version (gat, gats, flush_all, verbosity
    # and stats are not forwarded).
    c = Raw(cluster.proxy.port)
    try:
        assert _ask(c, b"set k 5 0 3\r\nabc\r\n") == b"STORED\r\n"
        assert _ask(c, b"get k\r\n") == b"VALUE k 5 3\r\nabc\r\nEND\r\n"
        assert _ask(c, b"add k 0 0 1\r\nx\r\n") == b"NOT_STORED\r\n"
        assert _ask(c, b"add n 0 0 2\r\n10\r\n") == b"STORED\r\n"
        assert _ask(c, b"replace n 0 0 2\r\n20\r\n") == b"STORED\r\n"
        assert _ask(c, b"replace absent 0 0 1\r\nx\r\n") == b"NOT_STORED\r\n"
        assert _ask(c, b"append k 0 0 2\r\nde\r\n") == b"STORED\r\n"
        assert _ask(c, b"prepend k 0 0 2\r\nzz\r\n") == b"STORED\r\n"
        assert _ask(c, b"get k\r\n") == b"VALUE k 5 7\r\nzzabcde\r\nEND\r\n"
        reply = _ask(c, b"gets k\r\n")
        match = re.fullmatch(rb"VALUE k 5 7 (\d+)\r\nzzabcde\r\nEND\r\n", reply)
        assert match, reply
        unique = int(match[1])
        assert _ask(c, b"cas k 1 0 1 %d\r\nC\r\n" % (unique + 1000)) == b"EXISTS\r\n"
        assert _ask(c, b"cas k 1 0 1 %d\r\nC\r\n" % unique) == b"STORED\r\n"
        assert _ask(c, b"cas absent 0 0 1 1\r\nC\r\n") == b"NOT_FOUND\r\n"
        assert _ask(c, b"incr n 5\r\n") == b"25\r\n"
        assert _ask(c, b"decr n 30\r\n") == b"0\r\n"
        assert _ask(c, b"incr absent 1\r\n") == b"NOT_FOUND\r\n"
        assert _ask(c, b"touch k 100\r\n") == b"TOUCHED\r\n"
        assert _ask(c, b"touch absent 100\r\n") == b"NOT_FOUND\r\n"
        assert _ask(c, b"delete n\r\n") == b"DELETED\r\n"
        assert _ask(c, b"delete n\r\n") == b"NOT_FOUND\r\n"
        assert _ask(c, b"version\r\n").startswith(b"VERSION ")
        # noreply, binary values, a large value, and gets of keys on several servers
        assert _ask(c, b"set q 0 0 1 noreply\r\n1\r\nincr q 1 noreply\r\nget q\r\n") == b"VALUE q 0 1\r\n2\r\nEND\r\n"
        nasty = b"a\r\nEND\r\n\x00b"
        assert _ask(c, b"set bin 3 0 %d\r\n%s\r\n" % (len(nasty), nasty)) == b"STORED\r\n"
        big = bytes(range(256)) * 2048  # 512 KiB, several of the proxy's buffers
        assert _ask(c, b"set big 0 0 %d\r\n%s\r\n" % (len(big), big)) == b"STORED\r\n"
        assert _ask(c, b"get big\r\n") == b"VALUE big 0 %d\r\n%s\r\nEND\r\n" % (len(big), big)
        many = [b"m%d" % i for i in range(30)]
        for key in many:
            assert _ask(c, b"set %s 0 0 %d\r\n%s\r\n" % (key, len(key), key)) == b"STORED\r\n"
        reply = _ask(c, b"get bin " + b" ".join(many) + b" absent\r\n")
        expected = b"VALUE bin 3 %d\r\n%s\r\n" % (len(nasty), nasty)
        expected += b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (key, len(key), key) for key in many)
        assert reply == expected + b"END\r\n"
        c.send(b"quit\r\n")
        assert c.closed_by_peer()
    finally:
        c.close()
    direct_counts = []
    for server in cluster.servers:
        client = direct(server)
        try:
            direct_counts.append(client.stats()[b"curr_items"])
        finally:
            client.close()
    assert sum(direct_counts) == 4 + len(many)  # k q bin big and the m keys, spread over the servers
    assert sum(1 for n in direct_counts if n) >= 2


def test_pymemcache_through_the_proxy(cluster: Cluster) -> None:
    client = cluster.proxy.client()
    try:
        assert client.set("p", b"1", expire=100, flags=3) is True
        assert client.add("p", b"x") is False
        assert client.incr("p", 41) == 42
        value, unique = client.gets("p")
        assert value == b"42"
        assert client.cas("p", b"43", unique) is True
        assert client.cas("p", b"44", unique) is False
        assert client.append("p", b"!") and client.prepend("p", b"<")
        assert client.get("p") == b"<43!"
        assert client.touch("p", 10) is True
        assert client.replace("p", b"r") is True
        assert client.decr("absent", 1) is None
        assert client.delete("p") is True
        assert client.get("p") is None
        assert client.set_many({f"s{i}": b"%d" % i for i in range(200)}) == []
        assert client.get_many([f"s{i}" for i in range(200)]) == {f"s{i}": b"%d" % i for i in range(200)}
        assert client.delete_many([f"s{i}" for i in range(200)]) is True
        assert client.get_many([f"s{i}" for i in range(200)]) == {}
    finally:
        client.close()


def test_dump_the_servers_and_load_through_the_proxy(cluster: Cluster, tmp_path: Path) -> None:
    """examples/cluster/README.md's recipe: mcl dump from the three servers, mcl load through the proxy."""
    from click.testing import CliRunner

    from memcachedlite.cli import main

    client = cluster.proxy.client()
    try:
        assert client.set_many({key: b"v" + key.encode() for key in KEYS}) == []
        before = owners(cluster)
        servers = ",".join(f"127.0.0.1:{s.port}" for s in cluster.servers)
        path = tmp_path / "all.jsonl"
        runner = CliRunner()
        dumped = runner.invoke(main, ["--server", servers, "dump", str(path)], env={"MCL_SERVER": None})
        assert dumped.exit_code == 0, dumped.output
        assert f"dumped {len(KEYS)} items" in dumped.stderr
        flushed = runner.invoke(main, ["--server", servers, "flush-all"], env={"MCL_SERVER": None})
        assert flushed.exit_code == 0, flushed.output
        assert client.get_many(KEYS[:100]) == {}
        loaded = runner.invoke(main, ["--server", f"127.0.0.1:{cluster.proxy.port}", "load", str(path)])
        assert loaded.exit_code == 0, loaded.output
        assert f"loaded {len(KEYS)} of {len(KEYS)} items" in loaded.stdout
        for start in range(0, len(KEYS), 100):
            batch = KEYS[start : start + 100]
            assert client.get_many(batch) == {key: b"v" + key.encode() for key in batch}
    finally:
        client.close()
    assert owners(cluster) == before  # every key went back to its own server
