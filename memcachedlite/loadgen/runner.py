"""Load for any memcached-protocol server: worker processes driving many
connections at once, checking every reply and timing every request. The engine
of ``mcl bench`` and ``benchmarks/run.py``; usable on its own::

    from memcachedlite.loadgen import LoadConfig, run

    result = run(LoadConfig(port=9889, connections=50, duration=10, get_ratio=0.9))
    print(result.ops_per_sec, result.latency_us()["p99"], result.errors)

How a run goes:

- ``processes`` worker processes (``spawn``ed: no fork of a threaded parent)
  each open their share of the ``connections`` as non-blocking sockets driven
  by one ``selectors`` loop, so 50 connections cost two processes, not 50
  threads fighting over a GIL.
  With ``cpus`` they keep to those CPUs (``benchmarks/run.py`` gives them
  every CPU but the server's).
- With ``prefill`` every key of the key space is stored first (pipelined, 100
  sets a send; each reply checked), split between the workers.
- Every worker then says it is ready, and the parent hands all of them the
  same start time on the system-wide monotonic clock: process start-up,
  imports, connecting and prefilling are never inside the measured time.
- Each connection keeps one batch of ``pipeline`` commands in flight (a closed
  loop): a command is a ``get`` of ``multiget`` keys (with probability
  ``get_ratio``) or a ``set``. A command's latency runs from the send of its
  batch to the parse of its reply; latencies go into a log-linear histogram
  (HDR-like, under 1.6 % error) instead of a list of samples.
- For ``warmup`` seconds the load runs unrecorded, then ``duration`` seconds
  are measured; commands sent before the end are waited for (up to
  ``reply_timeout``), and the elapsed time runs to the last reply.

Every reply is checked. A key's value is derived from the key (the key, then
filler, cut to ``value_size``), so a ``get`` is verified byte for byte: a
malformed reply, a wrong value, a key that was not asked for, a reply that
does not come within ``reply_timeout``, a closed connection are all errors;
they are counted by kind (with the first few samples) in every phase, warm-up
and prefill included, and never hidden. After an error the connection is
closed and opened again, since its stream can no longer be trusted. A miss is
not an error (keys may be evicted or not prefilled) but is counted.

Keys are ``<key_prefix><value_size>:<n>``, so runs with different value sizes
on one server do not read each other's values.

This module is the runner (workers, the measured window, merging the results);
the parts it runs on live beside it: ``loadconfig`` (LoadConfig), ``loadwire``
(requests and reply checks of each protocol, the binary probe), ``loadkeys``
(the key space), ``loadlatency`` (the histogram) and ``loadresult``
(BenchResult). Their names are importable from here as before.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import random
import selectors
import signal
import socket
import threading
import time
from collections import deque
from typing import Any, Callable

from ..server.addresses import connect, format_server
from .config import LoadConfig
from .keys import Keyspace
from .latency import LatencyHistogram
from .result import BenchResult
from .wire import (
    DONE,
    END,
    MORE,
    VALUE,
    WRONG,
    check_binary_reply,
    check_resp_reply,
)

_RECV_SIZE = 256 * 1024
#: Sets per send while prefilling.
_PREFILL_BATCH = 100
#: Error samples kept per worker (and in the merged result).
_MAX_SAMPLES = 5
#: Pause before a broken connection is opened again.
_RECONNECT_DELAY = 0.05
#: How often a worker checks for timeouts and reports progress, in seconds.
_TICK = 0.1


class LoadError(RuntimeError):
    """The load could not run at all (a worker died or did not answer in time)."""


class ConnectFailed(LoadError):
    """The server could not be reached when the run began."""


# -- one worker -------------------------------------------------------------------


class Conn:
    __slots__ = (
        "sock",
        "pending",
        "buf",
        "sent_at",
        "sent_at_s",
        "record",
        "out",
        "j",
        "hits",
        "retry_at",
        "events",
        "full",
        "tally",
    )

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.pending: deque = deque()
        self.buf = b""
        self.sent_at = 0  # ns, perf_counter
        self.sent_at_s = 0.0  # s, monotonic
        self.record = False
        self.out = b""
        self.j = 0  # next key of the head get that may still come
        self.hits = 0  # hits of the head get so far
        self.retry_at = 0.0
        self.events = 0
        self.full: bytes | None = None  # the batch's whole reply if every key hits
        self.tally = (0, 0, 0)  # the batch's gets, sets and keys


class Worker:
    """One process's connections and the loop that drives them."""

    def __init__(
        self,
        config: LoadConfig,
        index: int,
        connections: int,
        report: Callable[[tuple], None],
        abort: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.abort = abort
        self.index = index
        self.report = report
        self.keyspace = Keyspace(config)
        self.random = random.Random(config.seed * 1000 + index).random
        self.selector = selectors.DefaultSelector()
        self.conns = [Conn() for _ in range(connections)]
        self.histogram = LatencyHistogram()
        self.ops = self.gets = self.sets = self.keys = self.hits = 0
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.error_samples: list[str] = []
        self.measure_from = 0  # ns (perf_counter): batches sent before are not recorded
        self.last_reply = 0  # ns of the last recorded completion
        self.inflight = 0
        self.exhausted = False
        self.make_batch: Callable[[], tuple | None] = lambda: None
        self.prefilled = 0
        self.cpu = 0.0  # CPU seconds the measure phase took (warm-up included)
        #: The reply check of a protocol read reply by reply (None: the text protocol's own loop).
        self.check: Callable[[bytes, int, tuple], tuple[int, int]] | None = {
            "text": None,
            "binary": check_binary_reply,
            "resp": check_resp_reply,
        }[config.protocol]

    # -- connections --

    def open(self, c: Conn) -> None:
        cfg = self.config
        sock = connect((cfg.host, cfg.port), cfg.connect_timeout)
        sock.setblocking(False)
        c.sock = sock
        c.buf = c.out = b""
        c.j = c.hits = 0
        c.events = selectors.EVENT_READ
        self.selector.register(sock, selectors.EVENT_READ, c)

    def open_all(self) -> None:
        for c in self.conns:
            self.open(c)

    def drop(self, c: Conn) -> None:
        if c.sock is not None:
            self.selector.unregister(c.sock)
            c.sock.close()
            c.sock = None
        self.inflight -= len(c.pending)
        c.pending.clear()
        c.buf = c.out = b""

    def close(self) -> None:
        for c in self.conns:
            self.drop(c)
        self.selector.close()

    def error(self, kind: str, detail: str = "", count: int = 1) -> None:
        self.errors += count
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + count
        if len(self.error_samples) < _MAX_SAMPLES:
            self.error_samples.append(f"{kind}: {detail}" if detail else kind)

    def broken(self, c: Conn, kind: str, detail: str = "") -> None:
        """Count the failure and what it takes down with it; reconnect later."""
        self.error(kind, detail)
        lost = len(c.pending) - 1
        if lost > 0:
            self.error("unanswered: connection dropped after an error", count=lost)
        self.drop(c)
        c.retry_at = time.monotonic() + _RECONNECT_DELAY

    # -- sending --

    def send(self, c: Conn) -> None:
        batch = self.make_batch()
        if batch is None:
            self.exhausted = True
            return
        data, expectations, c.full, c.tally = batch
        c.pending.extend(expectations)
        self.inflight += len(expectations)
        c.sent_at = now = time.perf_counter_ns()
        c.sent_at_s = time.monotonic()
        c.record = now >= self.measure_from
        self.write(c, data)

    def write(self, c: Conn, data: bytes) -> None:
        assert c.sock is not None
        try:
            sent = c.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.broken(c, "send failed", str(exc))
            return
        c.out = data[sent:]
        want = selectors.EVENT_READ | selectors.EVENT_WRITE if c.out else selectors.EVENT_READ
        if want != c.events:
            c.events = want
            self.selector.modify(c.sock, want, c)

    # -- receiving --

    def receive(self, c: Conn) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.broken(c, "receive failed", str(exc))
            return
        if not data:
            self.broken(c, "connection closed by the server")
            return
        now = time.perf_counter_ns()
        buf = c.buf + data if c.buf else data
        full = c.full
        if full is not None:  # fast path: the whole batch as expected, every key a hit
            if buf == full:
                self.batch_done(c, now)
                return
            if len(buf) < len(full) and full.startswith(buf):
                c.buf = buf
                return
            c.full = None  # a miss, or an error: read it reply by reply
        if self.check is not None:
            self.receive_framed(c, buf, now)
            return
        pending = c.pending
        pos = 0
        n = len(buf)
        done = sets = gets = keys = hits = 0
        while pending:
            exp = pending[0]
            if exp.__class__ is bytes:  # an exact one-line reply
                if buf.startswith(exp, pos):
                    pos += len(exp)
                    pending.popleft()
                    done += 1
                    sets += 1
                    continue
                if n - pos < len(exp) and exp.startswith(buf[pos:]):
                    break
                self.inflight -= done
                self.broken(c, "wrong reply to a set", repr(buf[pos : pos + 60]))
                return
            if c.j == 0 and buf.startswith(exp[2], pos):  # every key hit, all arrived
                pos += len(exp[2])
                state = DONE
                c.hits = len(exp[0])
            else:
                pos, state = self.get_reply(c, exp, buf, pos, n)
                if state == MORE:
                    break
                if state == WRONG:
                    self.inflight -= done
                    return
            pending.popleft()
            done += 1
            gets += 1
            keys += len(exp[0])
            hits += c.hits
            c.j = c.hits = 0
        self.settle(c, buf, pos, now, (done, sets, gets, keys, hits))

    def receive_framed(self, c: Conn, buf: bytes, now: int) -> None:
        """Read replies of the binary protocol or RESP, one ``self.check`` each."""
        check = self.check
        assert check is not None
        pending = c.pending
        pos = 0
        done = gets = hits = 0
        while pending:
            exp = pending[0]
            end, outcome = check(buf, pos, exp)
            if outcome == MORE:
                break
            if outcome == WRONG:
                self.inflight -= done
                self.broken(
                    c,
                    f"wrong {self.config.protocol} reply to a {'get' if exp[0] else 'set'}",
                    repr(buf[pos : pos + 60]),
                )
                return
            pos = end
            pending.popleft()
            done += 1
            if exp[0]:
                gets += 1
                hits += outcome == DONE
        self.settle(c, buf, pos, now, (done, done - gets, gets, gets, hits))

    def settle(self, c: Conn, buf: bytes, pos: int, now: int, counts: tuple[int, int, int, int, int]) -> None:
        """Count the replies read, keep what is left of ``buf``, and send the next batch once all came."""
        done, sets, gets, keys, hits = counts
        n = len(buf)
        pending = c.pending
        self.inflight -= done
        if done and c.record:
            self.histogram.record(now - c.sent_at, done)
            self.last_reply = now
            self.ops += done
            self.sets += sets
            self.gets += gets
            self.keys += keys
            self.hits += hits
        c.buf = buf[pos:] if pos < n else b""
        if pending:
            return
        if c.buf:
            self.broken(c, "data with no request outstanding", repr(c.buf[:60]))
            return
        if not self.exhausted:
            self.send(c)

    def batch_done(self, c: Conn, now: int) -> None:
        pending = c.pending
        done = len(pending)
        pending.clear()
        c.buf = b""
        self.inflight -= done
        if c.record:
            self.histogram.record(now - c.sent_at, done)
            self.last_reply = now
            gets, sets, keys = c.tally
            self.ops += done
            self.gets += gets
            self.sets += sets
            self.keys += keys
            self.hits += keys
        if not self.exhausted:
            self.send(c)

    def get_reply(self, c: Conn, exp: tuple, buf: bytes, pos: int, n: int) -> tuple[int, int]:
        """Read on through a get's reply, block by block; a partial one waits for more."""
        keys, blocks, _ = exp
        while True:
            if buf.startswith(END, pos):
                return pos + len(END), DONE
            j = c.j
            if j < len(blocks) and buf.startswith(blocks[j], pos):
                pos += len(blocks[j])
                c.j = j + 1
                c.hits += 1
                continue
            if not buf.startswith(VALUE, pos):
                rest = buf[pos:]
                if len(rest) < len(VALUE) and (VALUE.startswith(rest) or END.startswith(rest)):
                    return pos, MORE
                self.broken(c, "wrong reply to a get", repr(buf[pos : pos + 60]))
                return pos, WRONG
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if n - pos > 512:
                    self.broken(c, "VALUE line too long", repr(buf[pos : pos + 60]))
                    return pos, WRONG
                return pos, MORE
            parts = buf[pos:eol].split(b" ")
            try:
                index = keys.index(parts[1], j) if len(parts) >= 4 else -1
            except ValueError:
                index = -1
            if index < 0:
                self.broken(c, "get reply for a key not asked for (or out of order)", repr(buf[pos:eol]))
                return pos, WRONG
            block = blocks[index]
            if buf.startswith(block, pos):
                pos += len(block)
                c.j = index + 1
                c.hits += 1
                continue
            if n - pos < len(block) and block.startswith(buf[pos:]):
                return pos, MORE
            self.broken(c, "wrong value", repr(buf[pos : pos + 60]))
            return pos, WRONG

    # -- the loop --

    def drive(self, stop_at: float, progress_every: float = 0.0) -> None:
        """Keep every connection busy with ``make_batch()`` until it returns None
        or ``stop_at`` (monotonic) passes; then wait for the replies outstanding."""
        self.exhausted = False
        timeout = self.config.reply_timeout
        for c in self.conns:
            if c.sock is not None and not c.pending and not self.exhausted:
                self.send(c)
        select = self.selector.select
        next_tick = time.monotonic() + _TICK
        next_report = time.monotonic() + progress_every if progress_every else float("inf")
        while True:
            for key, mask in select(_TICK):
                c = key.data
                if c.sock is None:
                    continue
                if mask & selectors.EVENT_WRITE and c.out:
                    self.write(c, c.out)
                    if c.sock is None:
                        continue
                if mask & selectors.EVENT_READ:
                    self.receive(c)
            now = time.monotonic()
            if now < next_tick:
                continue
            next_tick = now + _TICK
            if now >= stop_at or (self.abort is not None and self.abort.is_set()):
                self.exhausted = True
            if now >= stop_at + timeout + 1.0:  # a bound even if the bookkeeping were wrong
                self.inflight = 0
                for c in self.conns:
                    if c.pending:
                        self.error(f"no reply within {timeout:g} s", count=len(c.pending))
                        self.drop(c)
                return
            if now >= next_report:
                next_report = now + progress_every
                self.report(("progress", self.index, self.ops, self.errors))
            for c in self.conns:
                if c.pending and now - c.sent_at_s > timeout:
                    self.error(f"no reply within {timeout:g} s", repr(c.buf[:60]), count=len(c.pending))
                    self.drop(c)
                    c.retry_at = now + _RECONNECT_DELAY
                if c.sock is None and not self.exhausted and now >= c.retry_at:
                    try:
                        self.open(c)
                    except OSError as exc:
                        self.error("connect failed", str(exc))
                        c.retry_at = now + _RECONNECT_DELAY
                        continue
                    self.send(c)
            if self.exhausted and not self.inflight:
                return

    # -- phases --

    def prefill(self, first: int, end: int) -> None:
        """Store keys ``first`` to ``end - 1``, 100 sets a send, every reply checked."""
        if first >= end:
            return
        ks = self.keyspace
        state = {"next": first}

        def batch() -> tuple | None:
            i = state["next"]
            if i >= end:
                return None
            last = min(end, i + _PREFILL_BATCH)
            state["next"] = last
            count = last - i
            entries = [ks.set_entry(k) for k in range(i, last)]
            reply = entries[0][2]
            commands = b"".join([e[0] for e in entries])
            return commands, [e[1] for e in entries], None if reply is None else reply * count, (0, count, 0)

        self.make_batch = batch
        self.measure_from = 1 << 62  # nothing recorded
        self.drive(time.monotonic() + self.config.prefill_timeout)
        if state["next"] < end:
            self.error("prefill did not finish in time", count=end - state["next"])
        self.prefilled = state["next"] - first

    def measure(self, start_at: float) -> None:
        """Run the configured mix from ``start_at`` (monotonic) for warm-up + duration."""
        cfg = self.config
        ks = self.keyspace
        rnd = self.random
        n = ks.count
        get_ratio = cfg.get_ratio
        multiget = cfg.multiget
        pipeline = cfg.pipeline
        get_entry = ks.get_entry
        get_many = ks.get_many
        set_entry = ks.set_entry
        end_at = start_at + cfg.warmup + cfg.duration
        monotonic = time.monotonic
        fixed = ks.protocol != "binary"  # a batch's whole reply is known in advance
        get_tally = (1, 0, 1)
        set_tally = (0, 1, 0)

        def one() -> tuple | None:
            # request/response, one key: the commonest case, in the fewest Python steps
            if monotonic() >= end_at:
                return None
            if rnd() < get_ratio:
                command, exp, reply = get_entry(int(rnd() * n))
                return command, (exp,), reply, get_tally
            command, exp, reply = set_entry(int(rnd() * n))
            return command, (exp,), reply, set_tally

        def batch() -> tuple | None:
            if monotonic() >= end_at:
                return None
            commands = []
            expectations = []
            replies = []
            gets = 0
            for _ in range(pipeline):
                i = int(rnd() * n)
                if rnd() < get_ratio:
                    if multiget == 1:
                        command, exp, reply = get_entry(i)
                    else:
                        command, exp = get_many(i, multiget)
                        reply = exp[2]
                    gets += 1
                else:
                    command, exp, reply = set_entry(i)
                commands.append(command)
                expectations.append(exp)
                replies.append(reply)
            tally = (gets, pipeline - gets, gets * multiget)
            return b"".join(commands), expectations, b"".join(replies) if fixed else None, tally

        self.make_batch = one if pipeline == 1 and multiget == 1 else batch
        while monotonic() < start_at:
            time.sleep(min(0.01, max(0.0, start_at - monotonic())))
        # perf_counter and monotonic are the same clock on Linux; convert anyway.
        self.measure_from = time.perf_counter_ns() + int((start_at + cfg.warmup - monotonic()) * 1e9)
        cpu = time.thread_time()
        self.drive(end_at, progress_every=0.2)
        self.cpu = time.thread_time() - cpu

    def result(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "gets": self.gets,
            "sets": self.sets,
            "keys": self.keys,
            "hits": self.hits,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "error_samples": self.error_samples,
            "histogram": self.histogram.to_state(),
            # as seconds after the start of measurement
            "last_reply": (self.last_reply - self.measure_from) / 1e9 if self.ops else 0.0,
            "prefilled": self.prefilled,
            "cpu": self.cpu,
        }


def _worker_main(
    pipe: Any,
    config: LoadConfig,
    index: int,
    connections: int,
    prefill_range: tuple[int, int],
    abort: threading.Event | None,
) -> None:
    """A worker's life: connect, prefill, say ready, wait for the start, run, report.

    ``abort`` is given to a worker running as a thread of the parent (which
    cannot be terminated); a worker process is terminated instead.
    """
    if abort is None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
        pin_to(config.cpus)
    worker = None
    try:
        worker = Worker(config, index, connections, pipe.send, abort)
        try:
            worker.open_all()
        except OSError as exc:
            where = format_server((config.host, config.port))
            pipe.send(("unreachable", f"cannot connect to {where}: {exc.strerror or exc}"))
            return
        started = time.monotonic()
        if config.prefill:
            worker.prefill(*prefill_range)
        pipe.send(("ready", index, worker.prefilled, time.monotonic() - started))
        message = pipe.recv()
        if message[0] != "go":
            return
        worker.measure(message[1])
        pipe.send(("done", index, worker.result()))
    except (EOFError, BrokenPipeError):  # the parent went away
        pass
    except Exception as exc:  # reported to the parent, which raises LoadError
        try:
            pipe.send(("failed", f"worker {index}: {type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        if worker is not None:
            worker.close()
        pipe.close()


def pin_to(cpus: tuple[int, ...] | None) -> None:
    """Keep this (worker) process on ``cpus``, when asked and possible.

    A CPU that is not allowed here (or a platform without affinity) leaves the
    process where it is: the load still runs, only less predictably placed.
    """
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return
    try:
        os.sched_setaffinity(0, cpus)
    except (OSError, ValueError):
        pass


# -- the parent ---------------------------------------------------------------------


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class _Workers:
    """Worker processes (or one thread), each with a pipe; all stopped on close."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        count = config.worker_processes()
        self.in_process = count == 0
        count = max(1, count)
        self.pipes: list[Any] = []
        self.handles: list[Any] = []
        shares = _split(config.connections, count)
        key_shares = _split(config.keys, count)
        first = 0
        ctx = multiprocessing.get_context("spawn")
        self.abort = threading.Event() if self.in_process else None
        self.count = count
        self.finished: set[int] = set()  # workers that have sent their last message
        try:
            for index in range(count):
                prefill_range = (first, first + key_shares[index])
                first += key_shares[index]
                ours, theirs = (multiprocessing.Pipe if self.in_process else ctx.Pipe)()
                self.pipes.append(ours)
                args = (theirs, config, index, shares[index], prefill_range, self.abort)
                if self.in_process:
                    handle: Any = threading.Thread(target=_worker_main, args=args, name="mcl-load", daemon=True)
                else:
                    handle = ctx.Process(target=_worker_main, args=args, name=f"mcl-load-{index}", daemon=True)
                try:
                    handle.start()
                finally:
                    if not self.in_process:
                        theirs.close()  # the child has its own copy (or never started)
                self.handles.append(handle)
        except BaseException:  # the ones already started must not outlive us
            self.close(hurry=True)
            raise

    def wait(self, deadline: float) -> list[tuple[int, Any]]:
        """Messages that arrive before ``deadline`` (monotonic), as (worker, message)."""
        left = max(0.0, deadline - time.monotonic())
        live = [pipe for i, pipe in enumerate(self.pipes) if i not in self.finished]
        ready = multiprocessing.connection.wait(live, timeout=left)
        out = []
        for pipe in ready:
            index = self.pipes.index(pipe)
            try:
                message = pipe.recv()
            except (EOFError, OSError):
                message = ("failed", f"worker {index} exited without a result")
            if message[0] in ("done", "failed", "unreachable"):
                self.finished.add(index)
            out.append((index, message))
        return out

    def send_all(self, message: tuple) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(message)
            except OSError:
                pass

    def close(self, hurry: bool = False) -> None:
        """Stop every worker: let them finish (``hurry``: after an error or Ctrl-C, don't wait)."""
        self.send_all(("stop",))
        if self.abort is not None:
            self.abort.set()
        for handle in self.handles:
            handle.join(0.2 if hurry else 5)
            if self.in_process:
                continue
            if handle.is_alive():
                handle.terminate()
                handle.join(5)
            if handle.is_alive():  # pragma: no cover - a worker stuck in the kernel
                handle.kill()
                handle.join(5)
        for pipe in self.pipes:
            pipe.close()
        if not self.in_process:
            for handle in self.handles:
                if not handle.is_alive():
                    handle.close()


#: Seconds a worker process may take to start, connect and prefill before the run fails.
STARTUP_TIMEOUT = 60.0

Progress = Callable[[float, int, int], None]
Window = Callable[[str], None]


def run(
    config: LoadConfig,
    progress: Progress | None = None,
    progress_interval: float = 1.0,
    window: Window | None = None,
) -> BenchResult:
    """Run the load; ``progress(seconds_into_the_run, ops, errors)`` is called
    about every ``progress_interval`` seconds while it runs (ops count from the
    end of the warm-up). ``window("start")`` is called as the measured time
    begins and ``window("end")`` once every reply of it has come, so that a
    caller can read the server's CPU time around exactly the operations counted.
    Raises :class:`LoadError` when it cannot run at all."""
    workers = _Workers(config)
    result = BenchResult(config=config, processes=0 if workers.in_process else workers.count)
    try:
        _run(workers, config, result, progress, progress_interval, window)
    except BaseException:
        workers.close(hurry=True)
        raise
    workers.close()
    return result


def _run(
    workers: _Workers,
    config: LoadConfig,
    result: BenchResult,
    progress: Progress | None,
    interval: float,
    window: Window | None,
) -> None:
    count = workers.count
    deadline = time.monotonic() + STARTUP_TIMEOUT + (config.prefill_timeout if config.prefill else 0)
    ready: set[int] = set()
    prefill_seconds = 0.0
    while len(ready) < count:
        if time.monotonic() >= deadline:
            raise LoadError("the load workers did not get ready in time")
        for index, message in workers.wait(deadline):
            if message[0] == "unreachable":
                raise ConnectFailed(message[1])
            if message[0] == "failed":
                raise LoadError(message[1])
            if message[0] == "ready":
                ready.add(index)
                result.prefill_items += message[2]
                prefill_seconds = max(prefill_seconds, message[3])
    result.prefill_seconds = prefill_seconds
    start_at = time.monotonic() + 0.05
    workers.send_all(("go", start_at))
    total = config.warmup + config.duration
    deadline = start_at + total + config.reply_timeout + 30.0
    ops = [0] * count
    errors = [0] * count
    finals: dict[int, dict] = {}
    next_progress = start_at + interval
    window_at = start_at + config.warmup if window else float("inf")
    while len(finals) < count:
        now = time.monotonic()
        if now >= deadline:
            raise LoadError("the load workers did not finish in time")
        if now >= window_at:
            window_at = float("inf")
            window("start")  # type: ignore[misc]
        wait_until = min(deadline, next_progress, window_at) if progress else min(deadline, window_at)
        for index, message in workers.wait(wait_until):
            if message[0] == "failed":
                raise LoadError(message[1])
            if message[0] == "progress":
                ops[message[1]], errors[message[1]] = message[2], message[3]
            elif message[0] == "done":
                finals[index] = message[2]
                ops[index], errors[index] = message[2]["ops"], message[2]["errors"]
        if progress and time.monotonic() >= next_progress:
            next_progress += interval
            progress(min(total, time.monotonic() - start_at), sum(ops), sum(errors))
    if window:
        if window_at != float("inf"):  # every worker ended before the window was due
            window("start")
        window("end")
    last = 0.0
    for part in finals.values():
        result.ops += part["ops"]
        result.gets += part["gets"]
        result.sets += part["sets"]
        result.keys += part["keys"]
        result.hits += part["hits"]
        result.errors += part["errors"]
        for kind, n in part["error_kinds"].items():
            result.error_kinds[kind] = result.error_kinds.get(kind, 0) + n
        room = _MAX_SAMPLES - len(result.error_samples)
        result.error_samples.extend(part["error_samples"][:room])
        result.histogram.merge(LatencyHistogram.from_state(part["histogram"]))
        result.client_cpu += part["cpu"]
        last = max(last, part["last_reply"])
    # Rates run to the last reply (commands sent before the end are waited for).
    result.elapsed = max(last, config.duration) if result.ops else config.duration
