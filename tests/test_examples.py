"""Each example in examples/ is run for real."""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymemcache.client.base import Client

from memcachedlite import Store
from tests.conftest import ROOT, Raw, free_port, wait_for_port


def test_upper_verb_served_by_mcl_serve_load(spawn, tmp_path: Path) -> None:
    proc = spawn("--load", str(ROOT / "examples" / "upper.py"))
    client = Raw(proc.port)
    try:
        assert client.ask(b"set greeting 7 0 5\r\nhello\r\n") == b"STORED\r\n"
        assert client.ask(b"upper greeting\r\n") == b"VALUE greeting 7 5\r\nHELLO\r\nEND\r\n"
        assert client.ask(b"upper missing\r\n") == b"NOT_FOUND\r\n"
        assert client.ask(b"upper\r\n") == b"ERROR\r\n"  # a wrong token count: memcached's reply, for every verb
        assert client.ask(b"get greeting\r\n") == b"VALUE greeting 7 5\r\nHELLO\r\nEND\r\n"
    finally:
        client.close()
    assert proc.terminate() == 0
    # The data file replays without the module: the effect was logged as a set.
    store = Store(proc.data_file)
    try:
        item = store.get(b"greeting")
        assert item is not None and item.value == b"HELLO" and item.flags == 7
    finally:
        store.close()


def test_the_readme_calls_the_verb_as_it_shows(spawn) -> None:
    """The README's "Adding a verb" session, run as written: its ``mcl
    serve`` line starts the server, the next line's output is the block's rest;
    then the pymemcache call the README names."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- call-example -->\n```console\n", 1)[1].split("```", 1)[0]
    serve, call, *shown = block.splitlines()
    assert serve.startswith("$ mcl serve --load examples/upper.py ")
    proc = spawn("--load", str(ROOT / "examples" / "upper.py"))
    mcl = f"{shlex.quote(sys.executable)} -m memcachedlite -s 127.0.0.1:{proc.port}"
    command = call.removeprefix("$ ").split("#", 1)[0].replace("mcl ", mcl + " ")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(["bash", "-c", command], capture_output=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.replace(b"\r\n", b"\n").decode() == "\n".join(shown) + "\n"
    assert b"\r\n" in done.stdout  # the reply as it came
    client = Client(("127.0.0.1", proc.port))
    try:
        client.set("greeting", b"hello")
        assert client.raw_command(b"upper greeting\r\nmn", end_tokens=b"MN\r\n") == (
            b"VALUE greeting 0 5\r\nHELLO\r\nEND\r\n"
        )
    finally:
        client.close()
    assert 'raw_command(b"upper greeting\\r\\nmn", end_tokens=b"MN\\r\\n")' in readme


def test_upper_module_registers_into_a_fresh_registry(fresh_registry, start_server, monkeypatch) -> None:
    # Importing the module with the default registry swapped for a copy keeps
    # the global table clean for other tests.
    import memcachedlite.protocols.registry as registry_module

    monkeypatch.setattr(registry_module, "default_registry", fresh_registry)
    spec = importlib.util.spec_from_file_location("upper_example", ROOT / "examples" / "upper.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert b"upper" in fresh_registry
    running = start_server(registry=fresh_registry)
    client = Raw(running.port)
    try:
        assert client.ask(b"set k 0 0 3\r\nabc\r\nupper k\r\n", replies=2) == (
            b"STORED\r\nVALUE k 0 3\r\nABC\r\nEND\r\n"
        )
    finally:
        client.close()


# -- examples/pymemcache_client.py ------------------------------------------------

EXAMPLE_OUTPUT = """\
greeting: hello
profile: {'name': 'Ada', 'languages': ['en', 'fr']}
visits: 7
tags: ['fast', 'durable']
users: 5 user number 3
blob intact: True
touched: True
add over an existing key: False
deleted: True now: None
"""


def _run_example(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MCL_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pymemcache_client.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **(env or {})},
    )


def test_pymemcache_example_against_one_server(spawn) -> None:
    proc = spawn()
    done = _run_example(f"127.0.0.1:{proc.port}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"servers: 127.0.0.1:{proc.port}\n" + EXAMPLE_OUTPUT
    assert _run_example(f"127.0.0.1:{proc.port}").stdout.endswith(EXAMPLE_OUTPUT)  # runs again the same
    client = Raw(proc.port)
    try:
        assert client.ask(b"get example:blob\r\n").startswith(b"VALUE example:blob ")
        assert client.ask(b"get example:visits\r\n") == b"VALUE example:visits 2 1\r\n7\r\nEND\r\n"
    finally:
        client.close()


def test_pymemcache_example_spreads_over_servers_from_mcl_server(start_server) -> None:
    servers = [start_server() for _ in range(3)]
    spec = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    done = _run_example(env={"MCL_SERVER": spec})
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(EXAMPLE_OUTPUT)
    # Nine keys over three servers hashed by their random ports: one of them
    # stays empty in about 8% of runs, two of them almost never (0.015%).
    assert sum(1 for s in servers if len(s.store)) >= 2
    assert sum(len(s.store) for s in servers) == 9  # profile visits tags blob user:0-4 (greeting deleted)


def test_pymemcache_example_reports_an_unreachable_server() -> None:
    done = _run_example(f"127.0.0.1:{free_port()}")
    assert done.returncode != 0
    assert "ConnectionRefusedError" in done.stderr


# -- examples/memcachedlite.service ------------------------------------------------

UNIT = ROOT / "examples" / "memcachedlite.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_runs_mcl_serve_with_sane_options() -> None:
    unit = _unit()
    assert unit.sections() == ["Unit", "Service", "Install"]
    assert unit["Unit"]["Description"]
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].startswith("/") and os.path.basename(argv[0]) == "mcl"
    assert argv[1] == "serve"
    options = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert options["--host"] == "127.0.0.1"  # never exposed beyond the machine by default
    assert options["--port"] == "9889"
    state = "/var/lib/" + service["StateDirectory"]
    assert options["--data-file"] == state + "/data.txt"  # a directory systemd creates and the service owns
    assert options["--fsync"] in ("always", "everysec", "no")
    assert service["WorkingDirectory"] == state
    assert service["KillSignal"] == "SIGTERM"  # mcl serve's clean shutdown
    assert service["Restart"] == "on-failure"
    assert int(service["LimitNOFILE"]) > 1024  # the default connection limit fits
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_command_line_starts_a_server(tmp_path: Path) -> None:
    """ExecStart's own arguments, with the port overridden and the data file in tmp_path."""
    argv = shlex.split(_unit()["Service"]["ExecStart"])
    args = argv[2:]
    args[args.index("--data-file") + 1] = str(tmp_path / "data.txt")
    command = [sys.executable, "-m", "memcachedlite", "serve", *args, "--port", "0"]  # the last --port wins
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCL_")}
    env["PYTHONPATH"] = str(ROOT)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 20
        while not (match := re.search(rb"listening on 127\.0\.0\.1:(\d+)", log_path.read_bytes())):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        client = Raw(int(match[1]))
        try:
            assert client.ask(b"set k 0 0 2\r\nok\r\n") == b"STORED\r\n"
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)  # what systemctl stop sends (KillSignal)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert b"fsync everysec" in log_path.read_bytes()
    store = Store(tmp_path / "data.txt")
    try:
        assert store.get(b"k").value == b"ok"
    finally:
        store.close()


@pytest.mark.external
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    assert os.path.exists(analyze), "systemd-analyze is not installed (apt-get install systemd)"
    # verify checks that ExecStart's program exists: point it at this Python
    text = UNIT.read_text()
    text, count = re.subn(r"^ExecStart=\S+", f"ExecStart={sys.executable} -m memcachedlite", text, flags=re.M)
    assert count == 1
    unit = tmp_path / "memcachedlite.service"
    unit.write_text(text)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if "memcachedlite.service" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


# -- examples/cluster ----------------------------------------------------------------


@pytest.mark.parametrize("servers", [3, 2])
@pytest.mark.external
def test_cluster_example_runs_and_stops_on_ctrl_c(tmp_path: Path, servers: int) -> None:
    """run.sh with the example's configuration on free ports (its three
    servers, or two of them); Ctrl-C stops every process. Each server is
    pinned to a CPU of its own where there are enough, else none is."""
    from tests.test_cluster import cluster_config, nutcracker_binary

    nutcracker_binary()
    listen, ports = free_port(), [free_port() for _ in range(3)]
    config = tmp_path / "nutcracker.yml"
    text = cluster_config((ROOT / "examples" / "cluster" / "nutcracker.yml").read_text(), listen, ports)
    names = ["mcl1", "mcl2", "mcl3"][:servers]
    if servers == 2:
        text, removed = re.subn(r"^.*:\d+:1 mcl3\n", "", text, flags=re.M)
        assert removed == 1
    config.write_text(text)
    data = tmp_path / "cluster-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCL_")}
    env.update(
        PYTHONPATH=str(ROOT),
        MCL=f"{sys.executable} -m memcachedlite",
        CLUSTER_DATA=str(data),
        CLUSTER_STATS_PORT=str(free_port()),
    )
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["bash", str(ROOT / "examples" / "cluster" / "run.sh"), str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    try:
        wait_for_port(listen, timeout=30)
        client = Client(("127.0.0.1", listen), default_noreply=False, timeout=5, connect_timeout=5)
        try:
            for i in range(100):
                assert client.set(f"k{i}", b"v%d" % i)
            assert client.get_many([f"k{i}" for i in range(100)]) == {f"k{i}": b"v%d" % i for i in range(100)}
        finally:
            client.close()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        assert proc.wait(30) == 0, log_path.read_text()
        deadline = time.monotonic() + 10
        while True:  # every process of the group is gone
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "processes of the cluster are still running"
            time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
    allowed = sorted(os.sched_getaffinity(0))
    pinned = [re.findall(r"pinned to CPU (\d+)", (data / f"{name}.log").read_text()) for name in names]
    if len(allowed) >= servers:
        assert f"each server on a CPU of its own: {' '.join(map(str, allowed[:servers]))}" in log_path.read_text()
        assert pinned == [[str(cpu)] for cpu in allowed[:servers]]
    else:
        assert f"{servers} servers, {len(allowed)} CPUs: none pinned" in log_path.read_text()
        assert pinned == [[]] * servers
    # each server flushed its own data file, and together they hold every key
    counts = []
    for name in names:
        assert (data / f"{name}.txt").exists(), name
        store = Store(data / f"{name}.txt")
        try:
            counts.append(len(store))
        finally:
            store.close()
    assert sum(counts) == 100 and all(counts), counts
