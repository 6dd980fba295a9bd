"""The load generator (memcachedlite.loadgen) and ``mcl bench`` (the runner,
benchmarks/run.py, is tested in test_bench_harness.py). Runs are a fraction of
a second; nothing here asserts a timing, only counts, orderings and that
wrong replies are caught."""

from __future__ import annotations

import json
import os
import selectors
import socket
import threading
from typing import Callable, Iterator

import pytest
from click.testing import CliRunner

from memcachedlite import loadgen
from memcachedlite.cli import main
from memcachedlite.loadgen import LatencyHistogram, LoadConfig, latency, runner, wire

QUICK = dict(duration=0.3, warmup=0.0, reply_timeout=2.0, connect_timeout=2.0)


def check_percentiles(result: loadgen.BenchResult) -> None:
    lat = result.latency_us()
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]


# -- the histogram -----------------------------------------------------------------


def test_histogram_buckets_are_contiguous_and_tight() -> None:
    expected_low = 0
    for index in range(latency.BUCKETS - 1):
        low, width = latency.bucket_range(index)
        assert low == expected_low
        assert latency.bucket_index(low) == index
        assert latency.bucket_index(low + width - 1) == index
        assert width == 1 or width / low <= 1 / 64
        expected_low = low + width


def test_histogram_percentiles_merge_and_round_trip() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    for us in range(1, 50_001):
        a.record(us * 1000)
    for us in range(50_001, 100_001):
        b.record(us * 1000)
    a.merge(b)
    assert a.total == 100_000
    assert abs(a.percentile(50) - 50_000_000) / 50_000_000 < 0.02
    assert abs(a.percentile(99) - 99_000_000) / 99_000_000 < 0.02
    assert a.percentile(100) == a.max_ns == 100_000_000
    assert a.min_ns == 1000
    copy = LatencyHistogram.from_state(a.to_state())
    assert copy.summary_us() == a.summary_us()
    summary = a.summary_us()
    assert summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["p99.9"] <= summary["max"]
    assert LatencyHistogram().summary_us()["p99"] == 0
    a.merge(LatencyHistogram())
    assert a.total == 100_000


def test_histogram_counts_a_batch_at_once() -> None:
    h = LatencyHistogram()
    h.record(5000, times=10)
    h.record(-3)  # a clock that went backwards counts as 0, not as an error
    assert h.total == 11 and h.min_ns == 0 and h.max_ns == 5000
    assert h.percentile(50) == pytest.approx(5000, rel=0.02)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="get_ratio"):
        LoadConfig(get_ratio=1.5)
    with pytest.raises(ValueError, match="key_prefix"):
        LoadConfig(key_prefix="with space")
    with pytest.raises(ValueError, match="connections"):
        LoadConfig(connections=0)
    assert LoadConfig(connections=1).worker_processes() == 1
    assert LoadConfig(connections=8, processes=0).worker_processes() == 0
    with pytest.raises(ValueError, match="cpus"):
        LoadConfig(cpus=())


# -- against real servers ------------------------------------------------------------


def test_load_in_process_counts_ops_with_no_errors(server) -> None:
    config = LoadConfig(port=server.port, connections=3, processes=0, get_ratio=0.5, keys=200, **QUICK)
    seen: list[tuple[float, int, int]] = []
    result = loadgen.run(config, progress=lambda *a: seen.append(a), progress_interval=0.1)
    assert result.errors == 0, result.error_samples
    assert result.ops > 0 and result.gets > 0 and result.sets > 0
    assert result.ops == result.gets + result.sets
    assert result.prefill_items == 200
    assert result.hits == result.keys == result.gets  # every key was prefilled
    assert result.histogram.total == result.ops
    assert result.elapsed >= config.duration
    check_percentiles(result)
    assert seen, "progress was never reported"
    data = result.to_dict()
    assert data["ops_per_sec"] > 0 and data["errors"] == 0 and data["config"]["connections"] == 3
    assert server.store.get(b"mclbench:100:0").value == b"mclbench:100:0" + b"." * 86


def test_pipelined_multiget_in_a_worker_process(server) -> None:
    cpus = tuple(sorted(os.sched_getaffinity(0)))[:1]  # the workers keep to the CPU they are given
    config = LoadConfig(
        port=server.port, connections=2, processes=1, pipeline=5, multiget=4, keys=100, cpus=cpus, **QUICK
    )
    result = loadgen.run(config)
    assert result.processes == 1
    assert result.errors == 0, result.error_samples
    assert result.gets > 0 and result.keys == 4 * result.gets
    assert result.hits == result.keys
    check_percentiles(result)


def test_misses_are_counted_and_are_not_errors(server) -> None:
    config = LoadConfig(
        port=server.port,
        connections=2,
        processes=0,
        get_ratio=1.0,
        multiget=3,
        prefill=False,
        key_prefix="never-set:",
        **QUICK,
    )
    result = loadgen.run(config)
    assert result.errors == 0, result.error_samples
    assert result.keys > 0 and result.hits == 0 and result.misses == result.keys


def test_replies_of_the_real_memcached_pass_every_check(memcached) -> None:
    config = LoadConfig(port=memcached, connections=4, processes=0, pipeline=3, multiget=2, keys=100, **QUICK)
    result = loadgen.run(config)
    assert result.errors == 0, result.error_samples
    assert result.ops > 0 and result.hits == result.keys


def test_pinning_keeps_to_the_cpus_given_and_ignores_impossible_ones() -> None:
    allowed = os.sched_getaffinity(0)
    try:
        runner.pin_to((min(allowed),))
        assert os.sched_getaffinity(0) == {min(allowed)}
        runner.pin_to((10_000,))  # no such CPU: the process stays where it is
        assert os.sched_getaffinity(0) == {min(allowed)}
    finally:
        os.sched_setaffinity(0, allowed)


def test_an_unreachable_server_raises() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(loadgen.ConnectFailed, match="cannot connect"):
            loadgen.run(LoadConfig(port=port, processes=0, **QUICK))


# -- servers that answer wrongly ------------------------------------------------------


class FakeServer:
    """A tiny threaded TCP server on 127.0.0.1 that answers each command line with
    ``answer(line)`` (None: say nothing); set's data block is skipped."""

    def __init__(self, answer: Callable[[bytes], bytes | None], close_at_once: bool = False) -> None:
        self.answer = answer
        self.close_at_once = close_at_once
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            if self.close_at_once:
                return
            conn.settimeout(0.05)
            buf = b""
            while not self.stopping.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                out = b""
                while b"\r\n" in buf:
                    line, rest = buf.split(b"\r\n", 1)
                    if line.startswith(b"set "):
                        size = int(line.split()[4])
                        if len(rest) < size + 2:
                            break
                        rest = rest[size + 2 :]
                    buf = rest
                    out += self.answer(line) or b""
                if out:
                    try:
                        conn.sendall(out)
                    except OSError:
                        return

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.accepter.join(5)
        for t in self.threads:
            t.join(5)


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(answer: Callable[[bytes], bytes | None], **kw: bool) -> FakeServer:
        s = FakeServer(answer, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def test_garbage_replies_are_errors(fake) -> None:
    server = fake(lambda line: b"GARBAGE\r\n")
    result = loadgen.run(LoadConfig(port=server.port, connections=2, processes=0, keys=10, **QUICK))
    assert result.errors > 0
    assert result.ops == 0
    assert any("wrong reply" in kind for kind in result.error_kinds), result.error_kinds
    assert result.error_samples and "GARBAGE" in result.error_samples[0]


def test_wrong_values_are_errors(fake) -> None:
    def answer(line: bytes) -> bytes:
        if line.startswith(b"get "):
            return b"".join(b"VALUE %s 0 3\r\nabc\r\n" % key for key in line.split()[1:]) + b"END\r\n"
        return b"STORED\r\n"

    server = fake(answer)
    config = LoadConfig(port=server.port, connections=2, processes=0, keys=10, get_ratio=1.0, **QUICK)
    result = loadgen.run(config)
    assert result.errors > 0 and result.gets == 0
    assert "wrong value" in result.error_kinds


def test_silence_and_closed_connections_are_errors(fake) -> None:
    silent = fake(lambda line: None)
    config = LoadConfig(
        port=silent.port, connections=2, processes=0, prefill=False, duration=0.2, warmup=0.0, reply_timeout=0.3
    )
    result = loadgen.run(config)
    assert result.errors == 2 and result.ops == 0  # the two requests in flight, never answered
    assert list(result.error_kinds) == ["no reply within 0.3 s"]

    closing = fake(lambda line: b"", close_at_once=True)
    result = loadgen.run(LoadConfig(port=closing.port, connections=1, processes=0, prefill=False, **QUICK))
    assert result.errors > 0 and result.ops == 0
    assert "connection closed by the server" in result.error_kinds


# -- reply parsing, byte by byte --------------------------------------------------


@pytest.fixture
def wired() -> Iterator[tuple[runner.Worker, runner.Conn, socket.socket]]:
    """A worker whose one connection is half of a socketpair; the test plays the server."""
    ours, theirs = socket.socketpair()
    worker = runner.Worker(LoadConfig(keys=10), 0, 1, lambda message: None)
    conn = worker.conns[0]
    ours.setblocking(False)
    conn.sock = ours
    worker.selector.register(ours, selectors.EVENT_READ, conn)
    worker.exhausted = True  # nothing more to send after a reply
    conn.record = True
    yield worker, conn, theirs
    worker.close()
    theirs.close()


def expect(worker: runner.Worker, conn: runner.Conn, *exps: object) -> None:
    conn.pending.extend(exps)
    worker.inflight += len(exps)
    conn.full = b"".join(e if isinstance(e, bytes) else e[2] for e in exps)  # type: ignore[index]
    gets = [e for e in exps if not isinstance(e, bytes)]
    conn.tally = (len(gets), len(exps) - len(gets), sum(len(e[0]) for e in gets))  # type: ignore[index]


def feed(worker: runner.Worker, conn: runner.Conn, peer: socket.socket, data: bytes, step: int = 1) -> None:
    for i in range(0, len(data), step):
        if conn.sock is None:  # dropped after an error
            return
        peer.sendall(data[i : i + step])
        worker.receive(conn)


def test_replies_split_anywhere_are_read_whole(wired) -> None:
    worker, conn, peer = wired
    ks = worker.keyspace
    _, mget = ks.get_many(0, 3)
    _, single = ks.get_one(5)
    expect(worker, conn, mget, wire.STORED, single)
    blocks = mget[1]
    # key 1 missing (a miss), then a set's reply, then a miss of the single get
    feed(worker, conn, peer, blocks[0] + blocks[2] + b"END\r\n" + b"STORED\r\n" + b"END\r\n")
    assert worker.errors == 0, worker.error_samples
    assert not conn.pending and worker.inflight == 0
    assert (worker.ops, worker.gets, worker.sets, worker.keys, worker.hits) == (3, 2, 1, 4, 2)


def test_a_whole_batch_in_one_piece_takes_the_fast_path(wired) -> None:
    worker, conn, peer = wired
    _, mget = worker.keyspace.get_many(7, 5)  # wraps around the 10 keys
    expect(worker, conn, mget, wire.STORED)
    feed(worker, conn, peer, mget[2] + b"STORED\r\n", step=len(mget[2]) // 2 + 1)
    assert worker.errors == 0 and worker.hits == worker.keys == 5 and worker.ops == 2


@pytest.mark.parametrize(
    "reply, kind",
    [
        (lambda b: b[1] + b[0] + b"END\r\n", "get reply for a key not asked for (or out of order)"),
        (lambda b: b[0].replace(b"....", b"!!!!") + b"END\r\n", "wrong value"),
        (lambda b: b"SERVER_ERROR out of memory\r\n", "wrong reply to a get"),
        (lambda b: b"END\r\nEXTRA\r\n", "data with no request outstanding"),
        (lambda b: b"VALUE " + b"x" * 600, "VALUE line too long"),
    ],
)
def test_wrong_replies_are_caught(wired, reply, kind) -> None:
    worker, conn, peer = wired
    _, mget = worker.keyspace.get_many(0, 2)
    expect(worker, conn, mget)
    feed(worker, conn, peer, reply(mget[1]), step=7)
    assert worker.error_kinds == {kind: 1}, worker.error_samples
    assert worker.ops == (1 if kind.startswith("data with no request") else 0)  # that get itself was right
    assert worker.inflight == 0
    assert conn.sock is None  # dropped; it is opened again later


def test_a_wrong_set_reply_takes_the_rest_of_its_batch_with_it(wired) -> None:
    worker, conn, peer = wired
    expect(worker, conn, wire.STORED, wire.STORED, wire.STORED)
    feed(worker, conn, peer, b"STORED\r\nNOT_STORED\r\n", step=100)
    assert worker.error_kinds == {"wrong reply to a set": 1, "unanswered: connection dropped after an error": 1}
    assert worker.errors == 2 and worker.inflight == 0


# -- mcl bench ----------------------------------------------------------------------


def bench_args(port: int, *more: str) -> list[str]:
    return [
        "--server",
        f"127.0.0.1:{port}",
        "--timeout",
        "2",
        "bench",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "--connections",
        "2",
        "--processes",
        "0",
        "--keys",
        "50",
        *more,
    ]


def test_mcl_bench_json(server) -> None:
    result = CliRunner().invoke(main, bench_args(server.port, "--json", "--pipeline", "2", "--get-ratio", "0.8"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["server"] == f"127.0.0.1:{server.port}"
    assert data["errors"] == 0 and data["ops"] > 0 and data["ops_per_sec"] > 0
    lat = data["latency_us"]
    assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert data["config"]["pipeline"] == 2 and data["config"]["get_ratio"] == 0.8


def test_mcl_bench_text(server) -> None:
    result = CliRunner().invoke(main, bench_args(server.port, "--multiget", "3"))
    assert result.exit_code == 0, result.output
    for word in ("throughput", "ops/s", "p50", "p99", "errors       0", "100.0% hits", "3 keys per get"):
        assert word in result.output


def test_mcl_bench_progress_line(capsys) -> None:
    from memcachedlite.cli.bench import BenchProgress

    progress = BenchProgress(warmup=1.0, duration=2.0)
    progress.enabled = True  # as on a terminal
    progress(0.5, 0, 0)
    progress(1.5, 1000, 0)
    progress(2.5, 3000, 1)
    progress.done()
    err = capsys.readouterr().err
    assert "0/3 s  warming up  0 errors" in err
    assert "3,000 ops  2,000 ops/s  1 errors" in err


def test_mcl_bench_errors_exit_4(fake) -> None:
    server = fake(lambda line: b"ERROR\r\n")
    result = CliRunner().invoke(main, bench_args(server.port))
    assert result.exit_code == 4, result.output
    assert "wrong reply" in result.output and "got a wrong reply or none" in result.output


def test_mcl_bench_unreachable_and_bad_usage() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        result = CliRunner().invoke(main, bench_args(s.getsockname()[1]))
    assert result.exit_code == 3, result.output
    result = CliRunner().invoke(main, ["--server", "127.0.0.1:1,127.0.0.1:2", "bench"])
    assert result.exit_code == 2 and "one server" in result.output
    result = CliRunner().invoke(main, ["--server", "127.0.0.1:1", "bench", "--key-prefix", "a b"])
    assert result.exit_code == 2 and "key_prefix" in result.output
