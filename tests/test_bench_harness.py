"""The benchmark's harness: the binary-protocol and RESP request encoders and
reply checks of memcachedlite.loadgen (against the real memcached and Redis),
and the pieces of benchmarks/run.py (the /proc CPU reader, CPU per operation,
the client-bound rule, the table, the cross-checks, a tiny end-to-end run).
Nothing here asserts a timing: only counts, bytes and verdicts."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from memcachedlite import buildinfo, loadgen
from memcachedlite.loadgen import LoadConfig, runner, wire

from .conftest import ROOT, free_port, running_program, script_module, wait_for_port

QUICK = dict(duration=0.3, warmup=0.0, reply_timeout=2.0, connect_timeout=2.0)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[int]:
    """redis-server on a free port of 127.0.0.1, no persistence. Missing binary fails, not skips."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (apt-get install redis-server)"
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(tmp_path)]
    with running_program(cmd):
        wait_for_port(port)
        yield port


def exchange(port: int, request: bytes, size: int) -> bytes:
    """Send ``request``; read until ``size`` bytes came (or the server closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        got = b""
        while len(got) < size:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


# -- encoders and reply checks, on bytes --------------------------------------------


def test_binary_requests_follow_the_24_byte_header() -> None:
    get = wire.binary_request(wire.BIN_GET, b"k1")
    assert get == bytes([0x80, 0x00, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2]) + bytes(12) + b"k1"
    put = wire.binary_set(b"k1", b"abc", flags=5, exptime=7)
    assert put[:2] == bytes([0x80, 0x01]) and put[2:4] == b"\x00\x02" and put[4] == 8
    assert int.from_bytes(put[8:12], "big") == 8 + 2 + 3  # extras + key + value
    assert put[24:32] == (5).to_bytes(4, "big") + (7).to_bytes(4, "big") and put[32:] == b"k1abc"
    assert wire.resp_command(b"SET", b"k", b"v\r\n") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n"


def _reply(opcode: int, status: int, body: bytes, extras: int = 0, magic: int = 0x81) -> bytes:
    return wire.BIN_HEADER.pack(magic, opcode, 0, extras, 0, status, len(body), 0, 12345) + body


def test_binary_reply_check() -> None:
    check = wire.check_binary_reply
    body = b"\0\0\0\0" + b"value"
    get = (True, wire.BIN_GET, body)
    hit = _reply(0, 0, body, extras=4)
    assert check(b"xx" + hit, 2, get) == (2 + len(hit), wire.DONE)  # the cas (12345) is not compared
    for cut in (0, 1, 23, 24, len(hit) - 1):
        assert check(hit[:cut], 0, get) == (0, wire.MORE)
    miss = _reply(0, 1, b"Not found")
    assert check(miss, 0, get) == (len(miss), wire.MISS)
    assert check(_reply(0, 0, b"\0\0\0\0" + b"VALUE", extras=4), 0, get)[1] == wire.WRONG
    assert check(_reply(1, 0, body), 0, get)[1] == wire.WRONG  # another opcode
    assert check(_reply(0, 0, body, magic=0x80), 0, get)[1] == wire.WRONG
    assert check(b"ERROR\r\n", 0, get)[1] == wire.WRONG
    stored = (False, wire.BIN_SET, b"")
    assert check(_reply(1, 0, b""), 0, stored) == (24, wire.DONE)
    assert check(_reply(1, 1, b"Not found"), 0, stored)[1] == wire.WRONG  # only a get may miss


def test_resp_reply_check() -> None:
    check = wire.check_resp_reply
    get = (True, b"$5\r\nvalue\r\n", b"$-1\r\n")
    assert check(b"$5\r\nvalue\r\n", 0, get) == (11, wire.DONE)
    assert check(b"+OK\r\n$-1\r\n", 5, get) == (10, wire.MISS)
    assert check(b"$5\r\nva", 0, get) == (0, wire.MORE) and check(b"$-", 0, get) == (0, wire.MORE)
    assert check(b"$5\r\nvalXe\r\n", 0, get)[1] == wire.WRONG
    assert check(b"-LOADING Redis is loading the dataset in memory\r\n", 0, get)[1] == wire.WRONG
    assert check(b"$-1\r\n", 0, (False, b"+OK\r\n", None))[1] == wire.WRONG


def test_framed_replies_split_anywhere_and_a_wrong_one_is_caught() -> None:
    ours, theirs = socket.socketpair()
    worker = runner.Worker(LoadConfig(keys=10, protocol="binary"), 0, 1, lambda message: None)
    conn = worker.conns[0]
    try:
        ours.setblocking(False)
        conn.sock = ours
        worker.selector.register(ours, selectors.EVENT_READ, conn)
        worker.exhausted = True
        conn.record = True
        _, get_exp, _ = worker.keyspace.get_entry(3)
        _, set_exp, _ = worker.keyspace.set_entry(4)
        conn.pending.extend([get_exp, set_exp, get_exp])
        worker.inflight = 3
        replies = _reply(0, 0, get_exp[2], extras=4) + _reply(1, 0, b"") + _reply(0, 1, b"Not found")
        for i in range(len(replies)):
            theirs.sendall(replies[i : i + 1])
            worker.receive(conn)
        assert worker.errors == 0, worker.error_samples
        assert (worker.ops, worker.gets, worker.sets, worker.hits, worker.inflight) == (3, 2, 1, 1, 0)
        conn.pending.append(get_exp)
        worker.inflight = 1
        theirs.sendall(b"ERROR\r\n" + bytes(30))
        worker.receive(conn)
        assert worker.error_kinds == {"wrong binary reply to a get": 1} and conn.sock is None
    finally:
        worker.close()
        theirs.close()


# -- against the real servers -------------------------------------------------------


def test_binary_requests_and_checks_against_memcached(memcached) -> None:
    assert (wire.binary_probe("127.0.0.1", memcached) or "").startswith("1.")
    value = b"v" * 50
    reply = exchange(memcached, wire.binary_set(b"bkey", value), 24)
    assert wire.check_binary_reply(reply, 0, (False, wire.BIN_SET, b"")) == (24, wire.DONE)
    size = 24 + 4 + len(value)
    reply = exchange(memcached, wire.binary_request(wire.BIN_GET, b"bkey"), size)
    assert wire.check_binary_reply(reply, 0, (True, wire.BIN_GET, b"\0\0\0\0" + value)) == (
        size,
        wire.DONE,
    )
    reply = exchange(memcached, wire.binary_request(wire.BIN_GET, b"nokey"), 24 + 9)
    assert wire.check_binary_reply(reply, 0, (True, wire.BIN_GET, b""))[1] == wire.MISS
    config = LoadConfig(port=memcached, protocol="binary", connections=3, processes=0, pipeline=4, keys=50, **QUICK)
    result = loadgen.run(config)
    assert result.errors == 0, result.error_samples
    assert result.gets > 0 and result.sets > 0 and result.hits == result.gets


def test_binary_probe_of_this_build(server) -> None:
    """memcachedlite answers the binary protocol only once that branch is in: either way the probe is right."""
    version = wire.binary_probe("127.0.0.1", server.port, timeout=1.0)
    if version is None:  # not spoken: the server is still fine for text clients
        assert exchange(server.port, b"version\r\n", 9).startswith(b"VERSION ")
    else:
        result = loadgen.run(LoadConfig(port=server.port, protocol="binary", processes=0, keys=50, **QUICK))
        assert result.errors == 0 and result.ops > 0, result.error_samples


def test_resp_requests_and_checks_against_redis(redis) -> None:
    assert exchange(redis, wire.resp_command(b"SET", b"rk", b"abc"), 5) == b"+OK\r\n"
    reply = exchange(redis, wire.resp_command(b"GET", b"rk"), 9)
    assert wire.check_resp_reply(reply, 0, (True, b"$3\r\nabc\r\n", b"$-1\r\n")) == (9, wire.DONE)
    assert wire.binary_probe("127.0.0.1", redis, timeout=0.5) is None
    config = LoadConfig(port=redis, protocol="resp", connections=3, processes=0, pipeline=3, keys=50, **QUICK)
    result = loadgen.run(config)
    assert result.errors == 0, result.error_samples
    assert result.gets > 0 and result.sets > 0 and result.hits == result.gets
    with pytest.raises(ValueError, match="multiget"):
        LoadConfig(protocol="resp", multiget=2)
    with pytest.raises(ValueError, match="protocol"):
        LoadConfig(protocol="udp")


def test_the_measured_window_is_marked_once_each_way(server) -> None:
    events: list[str] = []
    config = LoadConfig(port=server.port, connections=2, processes=0, keys=20, **dict(QUICK, warmup=0.1))
    result = loadgen.run(config, window=events.append)
    assert events == ["start", "end"] and result.errors == 0


# -- benchmarks/run.py ---------------------------------------------------------------


@pytest.fixture(scope="module")
def runner_module():
    with script_module(ROOT / "benchmarks" / "run.py", "bench_run") as module:
        yield module


def test_the_proc_cpu_reader_counts_every_thread(runner_module) -> None:
    before = runner_module.cpu_seconds(os.getpid())
    spent: list[float] = []

    def burn() -> None:
        start = time.thread_time()
        while time.thread_time() - start < 0.3:
            pass
        spent.append(time.thread_time() - start)

    worker = threading.Thread(target=burn)
    worker.start()
    worker.join()
    after = runner_module.cpu_seconds(os.getpid())
    assert after - before >= spent[0] - 2 / os.sysconf("SC_CLK_TCK")  # one clock tick of rounding each way


def test_cpu_per_op_client_share_and_the_client_bound_rule(runner_module) -> None:
    run = runner_module
    assert run.cpu_per_op_us(1.0, 1.5, 100_000) == 5.0
    assert run.cpu_per_op_us(1.0, 1.5, 0) is None and run.cpu_per_op_us(2.0, 1.0, 10) is None
    assert run.client_share(0.9, 1.0, 1) == pytest.approx(0.9)
    assert run.client_share(1.0, 1.0, 2) == 0.5 and run.client_share(1.0, 0.0, 1) == 0.0
    assert run.is_client_bound(0.9) and not run.is_client_bound(0.89)
    m = run.Measure("W7", run.REDIS, 1)
    run.note_client(m, " (50 writers)", 0.95)
    run.note_client(m, " (1 writer)", 0.2)
    assert m.client_bound == [" (50 writers)"] and m.metrics["client CPU % (1 writer)"] == 20.0
    assert m.warnings == ["client-bound (50 writers) (95% of its CPUs)"]
    other = run.Measure("W2", run.MEMCACHED, 1)
    run.note_client(other, "", 0.7, busy=0.97)  # other programs filled the rest of the client's CPU
    run.note_client(other, " (set)", 0.5, busy=0.6)
    assert other.client_bound == [""] and other.metrics["client CPUs busy %"] == 97.0
    assert "its CPUs 97% busy, 70% of them the load generator" in other.warnings[0]


def test_w2_mix_from_memcslaps_two_runs(runner_module) -> None:
    get_run = {"gets": 1000, "sets": 1000, "server_cpu_seconds": 0.03}
    set_run = {"gets": 0, "sets": 1000, "server_cpu_seconds": 0.02}
    # a set costs 20 us; the get run's other 10 ms were its 1000 gets: 10 us each
    assert runner_module.w2_mix_cpu(get_run, set_run) == pytest.approx(0.9 * 10 + 0.1 * 20)
    assert runner_module.w2_mix_cpu(None, set_run) is None


def test_summary_ratio_and_table(runner_module) -> None:
    run = runner_module
    assert run.summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "values": [3.0, 1.0, 2.0]}
    assert run.summarize([])["median"] is None
    assert run.ratio(50.0, 100.0) == 0.5
    assert run.ratio(None, 100.0) is None and run.ratio(1.0, 0.0) is None
    measures = []
    for n, (lite, mc) in enumerate([(40.0, 100.0), (60.0, 100.0), (50.0, 100.0)]):
        measures.append(run.Measure("W2", run.LITE, n + 1, {"ops/s": lite * 1000, "server CPU us/op": 20.0}))
        measures.append(run.Measure("W2", run.MEMCACHED, n + 1, {"ops/s": mc * 1000, "server CPU us/op": 10.0}))
        measures.append(run.Measure("W1", run.LITE, n + 1, {"p50 us": 30.0, "ops/s": 1.0}))
        measures.append(run.Measure("W1", run.MEMCACHED, n + 1, {"p50 us": 20.0, "ops/s": 1.0}, errors=1))
        measures.append(run.Measure("W7", run.LITE, n + 1, {"gain 50w/1w": 25.0, "50 writers ops/s": 9e3}))
        measures.append(run.Measure("W7", run.REDIS, n + 1, {"gain 50w/1w": 15.0, "50 writers ops/s": 3e4}))
    rows = {(r["workload"], r["metric"]): r for r in run.build_rows(measures)}
    w2 = rows["W2", "ops/s"]
    assert w2["ratio"] == pytest.approx(0.5) and w2["met"] is True and w2["efficiency"] == 0.5
    assert w2[run.LITE]["min"] == 40_000 and w2[run.LITE]["max"] == 60_000
    w1 = rows["W1", "p50 us"]
    assert w1["ratio"] == pytest.approx(1.5) and w1["met"] is False
    assert w1["errors"] == {run.LITE: 0, run.MEMCACHED: 3, run.REDIS: 0}
    gain = rows["W7", "gain 50w/1w"]
    assert gain["ratio"] is None and gain["met"] is True  # judged on memcachedlite's own gain
    w7 = rows["W7", "50 writers ops/s"]
    assert w7["ratio_redis"] == pytest.approx(0.3) and w7["met"] is False  # target 0.5x Redis
    assert ("W3", "keys/s") not in rows  # not run: no row
    table = run.format_table(list(rows.values()))
    assert "| W2       | ops/s ↑" in table and "50.0k [40.0k-60.0k]" in table and "0.50" in table
    assert ">=0.5 met" in table and "<=1.15 MISSED" in table and ">=12 (own) met" in table and "0/3/0" in table
    assert ">=0.5 Redis MISSED" in table
    assert run._num(1_234_567) == "1.23M" and run._num(45_678) == "45.7k" and run._num(12.34) == "12.3"


def test_a_client_bound_run_has_no_throughput_ratio(runner_module) -> None:
    run = runner_module
    measures = []
    for n in (1, 2, 3):
        measures.append(run.Measure("W2", run.LITE, n, {"ops/s": 3e4, "server CPU us/op": 20.0, "client CPU %": 50.0}))
        theirs = run.Measure("W2", run.MEMCACHED, n, {"ops/s": 6e4, "server CPU us/op": 8.0, "client CPU %": 95.0})
        if n == 2:
            theirs.client_bound.append("")
        measures.append(theirs)
    rows = {(r["workload"], r["metric"]): r for r in run.build_rows(measures)}
    w2 = rows["W2", "ops/s"]
    assert w2["client_bound"] and w2["ratio"] is None and w2["ratio_client_bound"] == pytest.approx(0.5)
    assert w2["efficiency"] == pytest.approx(0.4)
    assert w2["target_on"] == "efficiency" and w2["met"] is False  # 0.4 < 0.5: the ratio would have passed
    assert w2["client_cpu_percent"][run.MEMCACHED] == 95.0
    assert rows["W2", "server CPU us/op"]["ratio"] == pytest.approx(2.5)  # not a throughput: kept
    table = run.format_table(list(rows.values()))
    assert "client-bound" in table and "50/95/-" in table and ">=0.5 (efficiency) MISSED" in table
    # W7 against Redis: memcached's reference run being client-bound takes no ratio against Redis away
    bound = run.Measure("W7", run.MEMCACHED, 1, {"50 writers ops/s": 9e4, "server CPU us/op (50 writers)": 5.0})
    bound.client_bound.append(" (50 writers)")
    w7 = [
        bound,
        run.Measure("W7", run.LITE, 1, {"50 writers ops/s": 9e3, "server CPU us/op (50 writers)": 40.0}),
        run.Measure("W7", run.REDIS, 1, {"50 writers ops/s": 1.5e4, "server CPU us/op (50 writers)": 10.0}),
    ]
    row = {r["metric"]: r for r in run.build_rows(w7)}["50 writers ops/s"]
    assert row["ratio"] is None and row["ratio_client_bound"] == pytest.approx(0.1)
    assert row["ratio_redis"] == pytest.approx(0.6) and row["target_on"] == "ratio" and row["met"] is True


def test_cross_checks_agree_within_the_spread_or_say_not(runner_module) -> None:
    run = runner_module
    measures = []
    for n, spread in enumerate((0.9, 1.0, 1.1), start=1):
        for workload, lite_cpu in (("W2", 20.0 * spread), ("W6", 6.0)):
            measures.append(run.Measure(workload, run.LITE, n, {"server CPU us/op": lite_cpu, "ops/s": 1e4}))
            measures.append(run.Measure(workload, run.MEMCACHED, n, {"server CPU us/op": 8.0, "ops/s": 2e4}))
        measures.append(run.Measure("M2", run.LITE, n, {"W2 mix CPU us/op": 21.0, "get ops/s": 1e4}))
        measures.append(run.Measure("M2", run.MEMCACHED, n, {"W2 mix CPU us/op": 8.0, "get ops/s": 2e4}))
        measures.append(run.Measure("X6", run.LITE, n, {"server CPU us/op": 30.0, "sets/s": 1e4}))
        measures.append(run.Measure("X6", run.MEMCACHED, n, {"server CPU us/op": 15.0, "sets/s": 2e4}))
    checks = {c["ours"]: c for c in run.cross_checks(run.build_rows(measures), measures)}
    assert checks["W2"]["efficiency"]["agree"] is True and checks["W2"]["ratio"]["agree"] is True
    assert checks["W6"]["efficiency"]["agree"] is False  # 1.33 against 0.5
    text = run.format_cross_checks(list(checks.values()))
    assert "W2 vs M2: efficiency" in text and "DISAGREE" in text


@pytest.mark.external
def test_runner_end_to_end_on_a_tiny_configuration(runner_module, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    code = runner_module.main(
        [
            *("--only", "W1,W5,B2,X6,W7,W8"),
            *("--rounds", "1", "--duration", "0.2", "--warmup", "0"),
            *("--w5-items", "300", "--w8-items", "300", "--memcslap-ops", "4"),
            *("--json", str(out)),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    data = json.loads(out.read_text())
    rows = {(r["workload"], r["metric"]): r for r in data["rows"]}
    assert {("W1", "ops/s"), ("W1", "p50 us"), ("W5", "RSS growth MiB"), ("W8", "restart items/s")} <= set(rows)
    runs = {(m["workload"], m["server"]): m for m in data["runs"]}
    assert set(runs) == {
        *((w, s) for w in ("W1", "B2", "X6") for s in ("memcachedlite", "memcached")),
        *((w, s) for w in ("W5", "W7") for s in ("memcachedlite", "memcached", "redis")),
        ("W8", "memcachedlite"),
        ("W8", "redis"),
    }
    assert all(m["errors"] == 0 for m in data["runs"]), [m["error_kinds"] for m in data["runs"]]
    assert all(m["notes"]["curr_items"] == 300 for m in data["runs"] if m["workload"] == "W5")
    assert runs["W8", "memcachedlite"]["notes"]["items_after_restart"] == 300
    assert runs["W8", "redis"]["notes"]["items_after_restart"] == 300
    assert runs["W8", "redis"]["metrics"]["restart items/s (RDB)"] > 0
    assert runs["W1", "memcached"]["metrics"]["server CPU us/op"] > 0
    assert runs["B2", "memcached"]["metrics"]["ops/s"] > 0
    b2_lite = runs["B2", "memcachedlite"]
    assert b2_lite["notes"].get("unsupported") == runner_module.UNSUPPORTED or b2_lite["metrics"]["ops/s"] > 0
    assert runs["X6", "memcached"]["notes"]["memcslap"]["sets"] == 4 * 4 * 50
    assert rows["W7", "50 writers ops/s"]["ratio_redis"] is not None or rows["W7", "50 writers ops/s"]["client_bound"]
    assert "| W1" in printed and "efficiency" in printed and "client CPU %" in printed


def test_hot_spots_from_py_spy_raw_output(runner_module, tmp_path: Path) -> None:
    raw = tmp_path / "W2.txt"
    raw.write_text(
        "handle (memcachedlite/server.py:60);feed (memcachedlite/session.py:100);"
        "_run (memcachedlite/session.py:120) 30\n"
        "handle (memcachedlite/server.py:60);feed (memcachedlite/session.py:100) 10\n"
        "handle (memcachedlite/server.py:60) 60\n"
        "garbage line\n"
    )
    own, total = runner_module.hot_spots(raw)
    assert own[0] == ("handle (server.py)", 60.0)
    assert dict(own)["_run (session.py)"] == 30.0
    assert dict(total)["feed (session.py)"] == 40.0 and dict(total)["handle (server.py)"] == 100.0


# -- builds: benchmarks/builds.py and run.py --builds ---------------------------------


@pytest.fixture(scope="module")
def builds_module():
    with script_module(ROOT / "benchmarks" / "builds.py", "bench_builds") as module:
        yield module


def test_builds_are_parsed_and_checked(runner_module, builds_module, tmp_path: Path) -> None:
    run = runner_module
    assert builds_module.parse_builds(" Pure, compiled ") == ("pure", "compiled")
    assert builds_module.parse_builds("compiled,pure") == ("compiled", "pure")
    for wrong, message in (("pure,mypyc", "unknown builds: mypyc"), ("pure,pure", "named twice"), (",", "no build")):
        with pytest.raises(ValueError, match=message):
            builds_module.parse_builds(wrong)
    _, settings = run.parse_args([])
    here = "compiled" if buildinfo.build() == "mypyc" else "pure"
    assert settings.builds == (here,) and settings.source == run.ROOT  # as before: this checkout as it is
    _, settings = run.parse_args(["--builds", "pure,compiled", "--quick", "--tree", str(run.ROOT)])
    assert settings.builds == ("pure", "compiled") and settings.rounds == 1
    for wrong in (["--builds", "cython"], ["--tree", str(tmp_path)]):
        with pytest.raises(SystemExit):
            run.parse_args(wrong)
    w1 = next(w for w in run.WORKLOADS if w.id == "W1")
    w7 = next(w for w in run.WORKLOADS if w.id == "W7")
    assert run.servers_of(w1, ("pure",)) == ("memcachedlite", "memcached")
    assert run.servers_of(w7, ("pure", "compiled")) == ("memcachedlite", "memcachedlite-compiled", "memcached", "redis")
    assert run.servers_of(w1, ("compiled",)) == ("memcachedlite", "memcached")  # alone, it keeps the name


def test_a_checkout_is_copied_without_history_build_output_or_compiled_modules(builds_module, tmp_path: Path) -> None:
    source = tmp_path / "checkout"
    package = source / "memcachedlite" / "storage"
    package.mkdir(parents=True)
    (package / "store.py").write_text("X = 1\n")
    (package / "store.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    for leftover in (".git/HEAD", "build/lib/x.py", "memcachedlite/__pycache__/a.pyc", "data.txt", "abc__mypyc.so"):
        (source / leftover).parent.mkdir(parents=True, exist_ok=True)
        (source / leftover).write_text("x")
    (source / "setup.py").write_text("print('setup')\n")
    copy = builds_module.copy_checkout(source, tmp_path / "copy")
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == [
        "memcachedlite/storage/store.py",
        "setup.py",
    ]
    assert builds_module.extension_files(source) == [package / "store.cpython-311-x86_64-linux-gnu.so"]
    builds_module.check_build(copy, "pure")
    with pytest.raises(RuntimeError, match="pure build but has compiled modules beside its sources"):
        builds_module.check_build(source, "pure")
    # a tree compiled already is its own compiled build, checked as such (this one is no checkout at all)
    compiled_already = builds_module.prepared(("compiled",), source, print)
    with pytest.raises(RuntimeError, match="cannot import memcachedlite.buildinfo"), compiled_already:
        pass


def test_a_build_that_does_not_compile_or_import_compiled_modules_is_refused(builds_module, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "setup.py").write_text("import sys\nprint('building')\nsys.exit('error: no C compiler')\n")
    with pytest.raises(RuntimeError, match="(?s)mypyc build of .* failed.*error: no C compiler"):
        builds_module.compile_in_place(broken, tmp_path / "compile.log")
    assert "building" in (tmp_path / "compile.log").read_text()
    said: list[str] = []
    with pytest.raises(RuntimeError, match="failed"), builds_module.prepared(("compiled",), broken, said.append):
        pass
    assert said and "in a scratch copy" in said[0] and (broken / "setup.py").exists()  # the source is left alone
    # an uncompiled copy of this checkout imports every module of COMPILED from its .py file
    copy = builds_module.copy_checkout(ROOT, tmp_path / "copy")
    seen = builds_module.imported_build(copy)
    assert seen["listed"] and seen["compiled"] == []
    with pytest.raises(RuntimeError, match="compiled build but imports memcachedlite"):
        builds_module.check_build(copy, "compiled")
    with builds_module.prepared(("pure",), source=copy) as trees:
        assert trees == {"pure": copy}


def test_each_build_runs_from_its_tree_and_must_say_so(runner_module, tmp_path: Path) -> None:
    run = runner_module
    settings = run.Settings(pin=False, builds=("pure", "compiled"), trees={"pure": run.ROOT, "compiled": run.ROOT})
    assert run.make_server(run.MEMCACHED, tmp_path, "everysec", settings).tree == run.ROOT
    # both "builds" run this checkout, whichever build it is (the suite runs on both): the
    # server named for the other build says the wrong one, and the check at the end of a run catches it
    here = buildinfo.build()
    wrong = run.LITE if here == "mypyc" else run.LITE_COMPILED
    with run.make_server(wrong, tmp_path, "everysec", settings) as server:
        assert isinstance(server, run.Lite) and server.name == wrong and server.tree == run.ROOT
        m = run.Measure("W1", server.name, 1)
        run.check_served_build(server, m)
        meant = "pure" if here == "mypyc" else "mypyc"
        assert m.notes["build"] == here and m.error_kinds == {f"stats settings says build {here}, not {meant}": 1}
        server.build = "compiled" if here == "mypyc" else "pure"
        ok = run.Measure("W1", server.name, 1)
        run.check_served_build(server, ok)
        assert ok.errors == 0 and ok.notes["build"] == here


def test_the_builds_compared_side_by_side(runner_module) -> None:
    run = runner_module
    measures = []
    for n, (pure, compiled) in enumerate([(20.0, 10.0), (24.0, 12.0), (22.0, 8.0)], start=1):
        for server, w3_cpu, w6_cpu in (
            (run.LITE, pure, 6.0),
            (run.LITE_COMPILED, compiled, 4.0),
            (run.MEMCACHED, 10.0, 1.5),
        ):
            measures.append(run.Measure("W3", server, n, {"keys/s": 1e6, "server CPU us/op": w3_cpu}))
            measures.append(run.Measure("W6", server, n, {"sets/s": 1e5, "server CPU us/op": w6_cpu}))
        measures.append(run.Measure("W5", run.LITE, n, {"RSS growth MiB": 30.0}))
    only_pure = run.as_build(measures, run.LITE)
    assert {m.server for m in only_pure} == {run.LITE, run.MEMCACHED} and len(only_pure) == 15
    only_compiled = run.as_build(measures, run.LITE_COMPILED)
    assert {m.server for m in only_compiled} == {run.LITE, run.MEMCACHED}  # renamed, for the table
    assert measures[1].server == run.LITE  # the runs themselves keep their names
    assert sum(m.server == run.LITE_COMPILED for m in measures) == 6
    pure_rows = run.build_rows(only_pure)
    compiled_rows = run.build_rows(only_compiled)
    assert {(r["workload"], r["metric"]): r["efficiency"] for r in compiled_rows}["W3", "server CPU us/op"] == 1.0
    compared = {e["workload"]: e for e in run.compare_builds(pure_rows, compiled_rows)}
    assert set(compared) == {"W3", "W6"}  # W5 has no CPU per operation, and no compiled run
    w3, w6 = compared["W3"], compared["W6"]
    assert w3["cpu_us_per_op"] == {"pure": 22.0, "compiled": 10.0, run.MEMCACHED: 10.0, run.REDIS: None}
    assert w3["efficiency"] == {"pure": pytest.approx(10 / 22), "compiled": 1.0}
    assert w3["gain"] == pytest.approx(2.2) and w3["target"] == 0.95 and w3["met"] is True
    assert w6["gain"] == pytest.approx(1.5) and w6["efficiency"]["compiled"] == pytest.approx(0.375)
    assert w6["met"] is True
    table = run.format_comparison(list(compared.values()))
    assert "| W3       | server CPU us/op | 22.0 | 10.0     | 10.0      | -     | 0.45" in table
    assert "2.20x" in table and ">=0.95 met" in table and ">=0.35 met" in table


# -- benchmarks/server_instructions.py ------------------------------------------------------


@pytest.fixture(scope="module")
def counter_module():
    with script_module(ROOT / "benchmarks" / "server_instructions.py", "bench_server_instructions") as module:
        yield module


def test_the_counted_workloads_send_exact_requests_and_expect_exact_replies(counter_module) -> None:
    si = counter_module
    spaces = si.key_spaces()
    workloads = {w.id: w for w in si.WORKLOADS}
    value = (b"mclbench:100:5" + b"." * 100)[:100]
    assert si.request(workloads["W1"], spaces, 5) == (
        b"get mclbench:100:5\r\n",
        b"VALUE mclbench:100:5 0 100\r\n" + value + b"\r\nEND\r\n",
    )
    assert si.request(workloads["W2"], spaces, 5) == (
        b"set mclbench:100:5 0 0 100\r\n" + value + b"\r\n",
        b"STORED\r\n",
    )
    big, stored = si.request(workloads["W4"], spaces, 10_003)  # the key space wraps
    assert big.startswith(b"set mclbench:1024:3 0 0 1024\r\n") and len(big) == 30 + 1024 + 2 and stored == b"STORED\r\n"
    multi, hits = si.request(workloads["W3"], spaces, 1)
    assert multi.startswith(b"get mclbench:100:100 mclbench:100:101 ") and multi.count(b" ") == 100
    assert hits.count(b"VALUE ") == 100 and hits.endswith(b"END\r\n")
    sets, replies = si.request(workloads["W6"], spaces, 2)
    assert sets.count(b"set ") == 100 and sets.startswith(b"set mclbench:100:200 ") and replies == b"STORED\r\n" * 100


def test_the_counts_table_and_its_targets(counter_module, tmp_path: Path) -> None:
    si = counter_module
    counts = [
        si.Count("pure", "W1", 100, [5_000_000, 5_010_000, 4_990_000], 1.0),
        si.Count("compiled", "W1", 100, [2_500_000, 2_500_000, 2_600_000], 1.0),
        si.Count("pure", "W6", 1000, [30_000_000], 1.0),
        si.Count("compiled", "W6", 1000, [25_000_000], 1.0),
    ]
    assert counts[0].per_op == 50_000 and counts[0].spread == pytest.approx(0.004)
    rows = {r["workload"]: r for r in si.compare(counts, ("pure", "compiled"))}
    assert rows["W1"]["fewer"] == 2.0 and rows["W1"]["met"] is True and rows["W1"]["target"] == 1.8
    assert rows["W6"]["fewer"] == pytest.approx(1.2) and rows["W6"]["met"] is False
    table = si.format_table(list(rows.values()), ("pure", "compiled"))
    assert "| W1 get, 100 B, request/response | 50,000" in table and "25,000" in table
    assert "2.00x" in table and ">=1.8x met" in table and "1.20x" in table and ">=1.4x MISSED" in table
    alone = si.compare(counts[:1], ("pure",))
    assert alone[0]["fewer"] is None and "| -" in si.format_table(alone, ("pure",))
    args = si.parse_args([])
    assert args.builds == ("pure", "compiled") and args.only == {"W1", "W2", "W3", "W4", "W6"} and args.windows == 3
    for wrong in (["--only", "W5"], ["--scale", "0"], ["--windows", "0"], ["--builds", "cpython"]):
        with pytest.raises(SystemExit):
            si.parse_args(wrong)
    tree = tmp_path / "compiled"
    assert si.kind_of(f"{tree}/memcachedlite/storage/store.cpython-311-x86_64-linux-gnu.so", tree) == "compiled modules"
    assert si.kind_of(f"{tree}/0d4e__mypyc.cpython-311-x86_64-linux-gnu.so", tree) == "compiled modules"
    assert si.kind_of("/usr/lib/libpython3.11.so.1.0", tree) == "interpreter"
    assert si.kind_of("/usr/lib/python3.11/lib-dynload/_socket.cpython-311-x86_64-linux-gnu.so", tree) == (
        "stdlib C modules"
    )
    assert si.kind_of("/lib/x86_64-linux-gnu/libc.so.6", tree) == "libc"
    # a virtual environment beside the checkout (<tree>-venv) is not the checkout: CI failed on it
    beside = f"{tree}-venv/lib/python3.11/site-packages/md__mypyc.cpython-311-x86_64-linux-gnu.so"
    assert si.kind_of(beside, tree) != "compiled modules"


@pytest.mark.external
def test_instructions_of_the_real_server_counted_under_callgrind(counter_module, tmp_path: Path) -> None:
    """This checkout's build under valgrind (the pure one, or the compiled one when the suite runs on
    a compiled copy): a few windows of W1 and W6, their dumps kept and read."""
    si = counter_module
    build = "compiled" if buildinfo.build() == "mypyc" else "pure"
    out = tmp_path / "counts.json"
    keep = tmp_path / "dumps"
    code = si.main(
        ["--builds", build, "--only", "W1,W6", "--scale", "0.05", "--windows", "2", "--profile"]
        + ["--keep", str(keep), "--json", str(out)]
    )
    assert code == 0
    data = json.loads(out.read_text())
    rows = {r["workload"]: r for r in data["rows"]}
    assert set(rows) == {"W1", "W6"} and rows["W1"]["fewer"] is None
    w1, w6 = rows["W1"]["per_op"][build], rows["W6"]["per_op"][build]
    assert 5_000 < w1 < 1_000_000 and 5_000 < w6 < 1_000_000
    counts = {c["workload"]: c for c in data["counts"]}
    assert len(counts["W1"]["windows"]) == 2 and counts["W1"]["operations"] == 50
    dump = keep / f"{build}-W1.callgrind"
    own, calls = si.read_costs(dump)
    assert sum(own.values()) == si.total_instructions(dump, "totals")  # every cost line read, none twice
    profile = counts["W1"]["profile"]
    assert max(profile["by_kind"], key=profile["by_kind"].get) == "interpreter"
    assert profile["eval_loop_self"] > 0 and profile["functions"]
    assert ("compiled modules" in profile["by_kind"]) == (build == "compiled") == bool(profile["compiled"])
