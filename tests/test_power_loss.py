"""Power loss at every moment of a recorded workload (issue 13 item 5).

A script of sets, deletes, incr, append, touch, flush_all, meta commands and
compactions runs through :class:`~memcachedlite.protocols.session.Session` objects
over a durable :class:`~memcachedlite.storage.store.Store`, with every call on the
data file recorded by :class:`tests.crashsim.FsRecorder`. The same script
runs one command at a time on an in-memory store, giving the state after
each command. Then, for hundreds of moments and ways a power cut could
leave the files, the server's real start-up runs on what is left, and:

- it starts: crash damage is never taken for corruption;
- what it loads is the state after some prefix of the commands: nothing
  acknowledged earlier is lost while something later survived;
- that prefix holds every command that was durable before the cut (under
  ``always``: every acknowledged one; under any policy: every one covered
  by a completed fsync or compaction);
- what start-up drops is reported in one warning naming the offset and the
  number of bytes.

Real corruption of fsynced data must still refuse to start, with the offset.
"""

from __future__ import annotations

import errno
import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from memcachedlite import CorruptLogError, Store
from memcachedlite.protocols.session import Session
from memcachedlite.storage import records, repair
from memcachedlite.storage.batches import SETS_RECORD_MIN
from memcachedlite.storage.records import parse_one
from tests.conftest import stop_as_killed
from tests.crashsim import (
    PATIENCE,
    CrashState,
    FsRecorder,
    Trace,
    clock,
    is_error,
    modules_with_os,
    new_durable_data_file,
    state_of,
)

POLICIES = ["always", "everysec", "no"]
#: Crash states built per policy; with start-up taking a few milliseconds
#: on the small files of the script, all three policies stay well under a
#: minute on two cores.
STATES_PER_POLICY = 800


def script(seed: int) -> list:
    """Steps: a list of command lines (a pipelined batch), ``"compact"`` or ``"sync"``.

    Values are up to a few KiB so that records cross page boundaries and a
    power cut can tear them.
    """
    rng = random.Random(seed)
    keys = [b"k%d" % i for i in range(10)]

    def value() -> bytes:
        size = rng.choice([1, 10, 100, 700, 3000, 5000])
        return bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(size))

    def command() -> bytes:
        key = rng.choice(keys)
        pick = rng.random()
        if pick < 0.35:
            data = value()
            return b"set %s %d 0 %d\r\n%s\r\n" % (key, rng.randrange(4), len(data), data)
        if pick < 0.45:
            return b"delete %s\r\n" % key
        if pick < 0.52:
            return b"set %s 0 0 2\r\n%d\r\n" % (key, rng.randrange(10, 99))
        if pick < 0.60:
            return b"incr %s %d\r\n" % (key, rng.randrange(1, 1000))
        if pick < 0.66:
            return b"append %s 0 0 3\r\nxyz\r\n" % key
        if pick < 0.70:
            return b"prepend %s 0 0 3\r\n<<<\r\n" % key
        if pick < 0.76:
            return b"touch %s %d\r\n" % (key, rng.choice([100, 3000, 0]))
        if pick < 0.78:
            return b"flush_all\r\n"
        if pick < 0.79:
            return b"flush_all 500\r\n"
        if pick < 0.85:
            data = value()
            return b"ms %s %d T%d F%d\r\n%s\r\n" % (key, len(data), rng.choice([0, 900]), rng.randrange(9), data)
        if pick < 0.88:
            return b"md %s I T30\r\n" % key
        if pick < 0.91:
            return b"ma %s N0 J7 D3\r\n" % key
        if pick < 0.93:
            return b"mg %s N200 v\r\n" % key
        if pick < 0.96:
            return b"add %s 0 0 4\r\nnew!\r\n" % key
        return b"gat 50 %s\r\n" % key

    def run_set() -> bytes:
        data = value()
        return b"set %s %d 0 %d\r\n%s\r\n" % (rng.choice(keys), rng.randrange(4), len(data), data)

    steps: list = []
    for i in range(70):
        if i in (25, 55):
            steps.append("compact")
        elif i % 9 == 4:
            steps.append("sync")
        elif i in (10, 40):  # a run long enough to be logged as one sets record
            steps.append([run_set() for _ in range(SETS_RECORD_MIN)])
        else:
            steps.append([command() for _ in range(rng.choice([1, 1, 1, 2, 3, 5]))])
    return steps


@dataclass
class Run:
    """A recorded run of the script: the trace and what happened at each moment."""

    policy: str
    trace: Trace
    #: the in-memory state after each command; states[0] is the state before any
    states: list[dict]
    #: per command: the trace position before its batch was fed in
    started: list[int] = field(default_factory=list)
    #: (trace position, number of commands) for each moment at which every
    #: command so far was durable: an acknowledgement under ``always``, a
    #: completed fsync or compaction under any policy
    durable: list[tuple[int, int]] = field(default_factory=list)
    #: a state no prefix gives, allowed between two moments: a refused change
    #: that a crash may still keep until the server has rewritten the file
    extra: Optional[tuple[dict, int, int]] = None

    def allows(self, at: int, loaded: dict) -> bool:
        """Whether ``loaded`` may be what a crash at ``at`` leaves."""
        low, high = self.must(at), self.may(at)
        if any(self.states[n] == loaded for n in range(low, high + 1)):
            return True
        return self.extra is not None and self.extra[0] == loaded and self.extra[1] < at <= self.extra[2]

    def may(self, at: int) -> int:
        """How many commands had begun their write before moment ``at`` (or
        were already durable: a command that writes nothing is done at once)."""
        return max(sum(1 for position in self.started if position < at), self.must(at))

    def must(self, at: int) -> int:
        """How many commands were durable before moment ``at``."""
        return max([n for position, n in self.durable if position <= at], default=0)


def record_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str, seed: int, steps: Optional[list] = None
) -> tuple[Run, Path]:
    """Run the script (``steps``, or one made from ``seed``) on a data file
    that already exists (and is durable), recording it."""
    directory = tmp_path / "live"
    directory.mkdir()
    new_durable_data_file(directory / "data.txt")
    shadow = Session(Store(clock=clock))
    states = [state_of(shadow.store)]
    run = Run(policy, Trace({}, {}, []), states)
    fed: list[bytes] = []
    with monkeypatch.context() as patch:
        recorder = FsRecorder(directory).install(patch, *modules_with_os())
        store = Store(directory / "data.txt", fsync=policy, clock=clock, compact_min_size=1 << 40)
        try:
            session = Session(store)
            for step in steps if steps is not None else script(seed):
                if step == "compact":
                    store.compact()
                    run.durable.append((recorder.position, len(run.started)))
                    continue
                if step == "sync":
                    store.sync()
                    run.durable.append((recorder.position, len(run.started)))
                    continue
                if isinstance(step, tuple):  # ("fail-fsync", line): the fsync that covers it fails
                    fail_once(run, recorder, store, session, shadow, fed, step[1])
                    continue
                before = recorder.position
                for line in step:
                    assert shadow.feed(line), line
                    fed.append(line)
                    states.append(state_of(shadow.store))
                    run.started.append(before)
                replies = session.feed(b"".join(step))
                assert b"SERVER_ERROR" not in replies, (step, replies)
                if policy == "always":
                    run.durable.append((recorder.position, len(run.started)))
                assert state_of(store) == states[-1], step  # the in-memory replay is faithful
        finally:
            store.close()
        run.trace = recorder.trace()
    shadow.store.close()
    return run, directory


def fail_once(
    run: Run, recorder: FsRecorder, store: Store, session: Session, shadow: Session, fed: list, line: bytes
) -> None:
    """Feed ``line`` with the next fsync failing (and its pages lost), then
    wait until the server has rewritten the file from memory."""
    fault = recorder.fail("fsync", 1, errno.EIO, lose_unsynced=True)
    errors = store.data_file_errors
    before = recorder.position
    reply = session.feed(line)
    if is_error(reply):  # refused (always): a crash before the rewrite may still keep it
        other = Session(Store(clock=clock))
        for done in [*fed, line]:
            other.feed(done)
        extra = state_of(other.store)
        other.store.close()
    else:  # acknowledged: the fsync fails later, in the background
        shadow.feed(line)
        fed.append(line)
        run.states.append(state_of(shadow.store))
        run.started.append(before)
        extra = None
    deadline = time.monotonic() + PATIENCE
    # fired, seen by the store (which stops writes), and rewritten: writes resume
    while not (fault.fired and store.data_file_errors > errors and store.writable):
        assert time.monotonic() < deadline, "the server never rewrote the file after the failed fsync"
        time.sleep(0.01)
    # the file was rewritten from memory: what memory holds is durable
    run.durable.append((recorder.position, len(run.started)))
    if extra is not None:
        run.extra = (extra, before, recorder.position)
    assert state_of(store) == run.states[-1]


def moments(trace: Trace, rng: random.Random, count: int) -> list[int]:
    """Every moment just before and after an fsync, a rename or a directory
    fsync, plus as many others as ``count`` leaves room for."""
    key = trace.moments("fsync", "dirsync", "rename", "truncate", "create", "unlink")
    others = sorted(set(range(len(trace) + 1)) - set(key))
    extra = rng.sample(others, min(len(others), max(count - len(key), 0)))
    return sorted(set(key) | set(extra))


def start_up(state: CrashState, directory: Path, policy: str, caplog: pytest.LogCaptureFixture) -> dict:
    """Run the server's real start-up on ``state``; return what it loaded,
    after checking the warning for anything it dropped."""
    if directory.exists():
        shutil.rmtree(directory)
    state.write_to(directory)
    path = directory / "data.txt"
    size_before = len(state.files.get("data.txt", b""))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        try:
            store = Store(path, fsync=policy, clock=clock)
        except CorruptLogError as exc:
            raise AssertionError(f"crash damage taken for corruption at {state.at} ({state.how}): {exc}") from None
        try:
            loaded = state_of(store)
        finally:
            store.close()
    kept = kept_by_start_up(state.files.get("data.txt", b""), path.read_bytes())
    if 0 < kept < size_before:
        dropped = size_before - kept
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(str(kept) in w and str(dropped) in w for w in warnings), (
            f"no warning naming offset {kept} and {dropped} bytes dropped at {state.at} ({state.how}): {warnings}"
        )
    return loaded


def kept_by_start_up(before: bytes, after: bytes) -> int:
    """How much of the file ``before`` a start-up that left ``after`` kept:
    all of ``after``, but for the sync mark it appends to what it cut back
    (its head mark, rewritten in place, keeps its length)."""
    header = records.read_header(after)
    at = after.rfind(b"\r\nsync ") + 2
    marked = header is not None and at >= 2 and after[at:] == records.encode_sync(at, header[1])
    if marked and before[at : len(after)] != after[at:]:  # not there before: start-up added it
        return at
    return len(after)


def repaired(state: CrashState, directory: Path, policy: str, caplog: pytest.LogCaptureFixture) -> dict:
    """Run ``mcl repair``'s function on ``state``, then start-up; return what was loaded."""
    if directory.exists():
        shutil.rmtree(directory)
    state.write_to(directory)
    path = directory / "data.txt"
    if path.exists():
        report = repair.repair(path)
        assert not report.kept_across_damage, f"crash damage repaired as corruption at {state.at} ({state.how})"
    store = Store(path, fsync=policy, clock=clock)
    try:
        return state_of(store)
    finally:
        store.close()


def check_states(
    run: Run, scratch: Path, caplog: pytest.LogCaptureFixture, seed: int, count: int = STATES_PER_POLICY, load=start_up
) -> int:  # type: ignore[no-untyped-def]
    """Build about ``count`` crash states of ``run``, load each with ``load``
    and check it is a prefix of the commands that keeps what was durable."""
    rng = random.Random(seed)
    trace = run.trace
    points = moments(trace, rng, count // 3)
    per_point = max(2, -(-count // len(points)))
    checked = 0
    for at in points:
        low, high = run.must(at), run.may(at)
        for state in trace.crash_states(at, rng, per_point):
            loaded = load(state, scratch, run.policy, caplog)
            if run.allows(at, loaded):
                checked += 1
                continue
            matches = [n for n in range(len(run.states)) if run.states[n] == loaded]
            assert matches, f"state at {at} is no prefix of the commands ({state.how}): {sorted(loaded)}"
            raise AssertionError(
                f"at {at} ({state.how}): loaded the state after {matches} commands, "
                f"but {low} were durable and {high} had begun"
            )
    return checked


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_every_power_loss_state_starts_with_a_prefix_that_keeps_what_was_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    run, _ = record_run(tmp_path, monkeypatch, policy, seed=13)
    kinds = {op.kind for op in run.trace.ops}
    assert {"write", "fsync", "rename", "dirsync"} <= kinds  # compaction is in the trace
    writes = [b"\r\n" + op.data for op in run.trace.ops if op.kind == "write"]
    assert any(b"\r\nsets " in data for data in writes)  # runs of sets, logged in bulk
    assert len(run.states) > 100
    checked = check_states(run, tmp_path / "crash", caplog, seed=5)
    assert checked >= STATES_PER_POLICY // 2


@pytest.mark.parametrize("policy", POLICIES)
def test_without_a_power_loss_everything_written_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    """The kill -9 case (every write reached the disk) loads the final state exactly."""
    run, _ = record_run(tmp_path, monkeypatch, policy, seed=29)
    end = len(run.trace)
    assert start_up(run.trace.written_state(end), tmp_path / "crash", policy, caplog) == run.states[-1]


def test_a_new_data_file_keeps_what_was_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Under ``always``, a write acknowledged on a data file the server just
    created survives a power cut: the file's directory entry must be durable
    too (a new file's name is only durable once its directory is fsynced)."""
    directory = tmp_path / "fresh"
    directory.mkdir()
    with monkeypatch.context() as patch:
        recorder = FsRecorder(directory).install(patch, *modules_with_os())
        store = Store(directory / "data.txt", fsync="always", clock=clock)
        try:
            assert Session(store).feed(b"set first 0 0 5\r\nhello\r\n") == b"STORED\r\n"
            acked = recorder.position
        finally:
            store.close()
        trace = recorder.trace()
    rng = random.Random(3)
    for state in trace.crash_states(acked, rng, 40):
        loaded = start_up(state, tmp_path / "crash", "always", caplog)
        assert loaded.get(b"first", (None,))[0] == b"hello", state.how


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_repair_of_a_power_loss_state_keeps_a_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    """``mcl repair`` on what a crash left cuts at the first invalid record:
    never a state that did not exist, never less than was durable."""
    run, _ = record_run(tmp_path, monkeypatch, policy, seed=41)
    checked = check_states(run, tmp_path / "crash", caplog, seed=8, count=STATES_PER_POLICY // 4, load=repaired)
    assert checked >= STATES_PER_POLICY // 8


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["always", "everysec"])
def test_power_loss_around_a_failed_fsync_and_the_rewrite_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    """A failed fsync (its pages lost), the server's rewrite of the file from
    memory, then more work: every crash state on the way is still a prefix
    that keeps what was durable."""
    steps = script(17)
    steps = [*steps[:30], [b"set victim 0 0 4\r\nhere\r\n"], ("fail-fsync", b"delete victim\r\n"), *steps[30:45]]
    run, _ = record_run(tmp_path, monkeypatch, policy, seed=17, steps=steps)
    assert sum(1 for op in run.trace.ops if op.kind == "rename") >= 2  # the compaction and the rewrite
    checked = check_states(run, tmp_path / "crash", caplog, seed=3, count=STATES_PER_POLICY // 2)
    assert checked >= STATES_PER_POLICY // 4


@pytest.mark.parametrize("policy", POLICIES)
def test_power_loss_while_start_up_and_a_clean_stop_mark_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    """A start-up after a crash cuts the torn tail and marks the rest as on
    disk (its head mark rewritten in place, a mark appended, an fsync);
    later a clean stop marks what was written since. A power cut at any
    moment of either still starts, with a prefix that keeps what was durable:
    neither mark ever vouches for bytes not yet on disk."""
    directory = tmp_path / "live"
    directory.mkdir()
    path = directory / "data.txt"
    new_durable_data_file(path)
    shadow = Session(Store(clock=clock))
    before = Store(path, fsync="no", clock=clock)
    for line in [b"set a 0 0 1\r\n1\r\n", b"set big 0 0 6000\r\n%s\r\n" % (b"b" * 6000), b"md a I T30\r\n"]:
        assert Session(before).feed(line) == shadow.feed(line)
    stop_as_killed(before)  # what a kill leaves: not marked...
    with open(path, "ab") as f:
        f.write(b"set torn 0 0 100 7 00000000\r\npartial")  # ...and torn
    run = Run(policy, Trace({}, {}, []), [state_of(shadow.store)])
    with monkeypatch.context() as patch:
        recorder = FsRecorder(directory).install(patch, *modules_with_os())  # the file as it is counts as durable
        store = Store(path, fsync=policy, clock=clock, compact_min_size=1 << 40)
        try:
            assert state_of(store) == run.states[0]
            session = Session(store)
            for line in [b"set c 0 0 3000\r\n%s\r\n" % (b"c" * 3000), b"delete big\r\n", b"set d 0 0 1\r\n4\r\n"]:
                run.started.append(recorder.position)
                assert session.feed(line) == shadow.feed(line)
                run.states.append(state_of(shadow.store))
                if policy == "always":
                    run.durable.append((recorder.position, len(run.started)))
        finally:
            store.close()
        run.durable.append((recorder.position, len(run.started)))
        run.trace = recorder.trace()
    shadow.store.close()
    assert {"truncate", "write", "fsync"} <= {op.kind for op in run.trace.ops}
    assert any(op.kind == "write" and op.offset == records.HEAD_MARK_AT for op in run.trace.ops)  # in place
    assert check_states(run, tmp_path / "crash", caplog, seed=11, count=240) >= 120


@pytest.mark.parametrize("policy", ["always", "no"])
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(b"md k I T30\r\n", id="md-I-T"),  # a touch and an invalidate
        pytest.param(b"ms k 3 I C1\r\nnew\r\n", id="ms-I-older-cas"),  # a set and an invalidate
    ],
)
def test_a_command_of_two_records_survives_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, policy: str, command: bytes
) -> None:
    """A command whose effect takes two records is one change: a power cut
    between them must not leave a state that never existed (half of it)."""
    steps = [[b"ms k 3 T0\r\nold\r\n"], [b"md k I\r\n"], "sync", [command]]
    run, _ = record_run(tmp_path, monkeypatch, policy, seed=0, steps=steps)
    last_write = max(i for i, op in enumerate(run.trace.ops) if op.kind == "write")
    rng = random.Random(2)
    for _ in range(40):
        state = run.trace.crash_state(last_write + 1, rng, "cut")
        loaded = start_up(state, tmp_path / "crash", policy, caplog)
        assert loaded in (run.states[-2], run.states[-1]), f"half of {command!r} survived ({state.how})"


# -- real corruption -------------------------------------------------------


def synced_file(tmp_path: Path, count: int = 40) -> tuple[Path, list[int]]:
    """A data file written under ``always`` (each record fsynced, more
    written and fsynced after it), and the offset of each record."""
    path = tmp_path / "data.txt"
    store = Store(path, fsync="always", clock=clock)
    try:
        session = Session(store)
        for i in range(count):
            value = b"%d" % i * (50 + 37 * i)
            assert session.feed(b"set key%d 0 0 %d\r\n%s\r\n" % (i % 7, len(value), value)) == b"STORED\r\n"
    finally:
        store.close()
    buf = path.read_bytes()
    offsets = []
    header = records.read_header(buf)
    assert header is not None
    pos = header[0]
    while pos < len(buf):
        offsets.append(pos)
        _, pos = parse_one(buf, pos)
    return path, offsets


def record_at(offsets: list[int], damaged: int) -> int:
    """The start of the record holding byte ``damaged``."""
    return max(o for o in offsets if o <= damaged)


def refused_at(path: Path) -> Optional[int]:
    try:
        Store(path, fsync="always", clock=clock).close()
    except CorruptLogError as exc:
        return exc.offset
    return None


@pytest.mark.parametrize("where", [0.2, 0.5, 0.8])
def test_a_flipped_bit_in_synced_data_refuses_to_start_with_its_offset(tmp_path: Path, where: float) -> None:
    path, offsets = synced_file(tmp_path)
    buf = bytearray(path.read_bytes())
    damaged = int(len(buf) * where)
    buf[damaged] ^= 0x04
    path.write_bytes(bytes(buf))
    assert refused_at(path) == record_at(offsets, damaged)


@pytest.mark.parametrize("where", [0.3, 0.6])
def test_a_zeroed_block_in_synced_data_refuses_to_start_with_its_offset(tmp_path: Path, where: float) -> None:
    path, offsets = synced_file(tmp_path)
    buf = bytearray(path.read_bytes())
    start = int(len(buf) * where) // 4096 * 4096
    buf[start : start + 4096] = bytes(4096)
    assert start + 4096 < offsets[-1]  # later records, fsynced after it, follow the hole
    path.write_bytes(bytes(buf))
    assert refused_at(path) == record_at(offsets, start)
