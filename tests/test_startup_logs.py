"""What start-up says (issue 24, item 4): while it replays, a line at most
every 2 seconds with the bytes read of the total, the items and the rate;
at the end one line with the items, records, time and rate; every path
absolute; nothing about a data file in memory-only mode; and a file at the
data file's path that is not one is named as such, with the hint to import
it with ``mcl load`` when it is a dump or the seed's ``key value`` lines,
rather than the advice to run ``mcl repair``, which refuses it in the same
words."""

from __future__ import annotations

import base64
import itertools
import logging
import re
import signal
from pathlib import Path

import pytest

from memcachedlite import CorruptLogError, Store
from memcachedlite.cli import transfer
from memcachedlite.errors import NotADataFile
from memcachedlite.storage import datafile, foreign, records
from memcachedlite.storage.datafile import DataLog
from memcachedlite.storage.repair import repair
from memcachedlite.storage.replay import ReplayProgress, replay
from memcachedlite.storage.slabs import Slabs

from .test_cli import _error_lines, run_mcl, run_serve

pytestmark = pytest.mark.usefixtures("no_mcl_environment")

#: ``mcl serve``'s exit code when the server cannot start, and a failed command's (docs/cli.md)
CANNOT_START, FAILED = 5, 1

VALUE = b"v" * 100


def _written(path: Path, count: int) -> None:
    """A data file of ``count`` sets of ``key:<i>``, each record 141 bytes
    after a header of 90 (keys and cas values of one length)."""
    header = records.make_header(records.new_file_id())
    body = b"".join(records.encode_set(b"key:%05d" % i, VALUE, 0, 0, 100_000 + i) for i in range(count))
    path.write_bytes(header + body)
    assert (len(header), len(body)) == (90, 141 * count)


def _replay_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "memcachedlite.storage.replay"]


# -- progress while replaying --------------------------------------------------------


def test_progress_lines_while_replaying_then_one_line_with_the_figures(tmp_path: Path, caplog) -> None:
    """A file of three progress steps and a clock that moves one second per
    look: a line when the replay begins, one when two seconds have passed
    (after the first step: its offset, items and rate), and the last one."""
    path = tmp_path / "data.txt"
    _written(path, 20_000)
    assert path.stat().st_size == 2_820_090 and 2 * datafile.PROGRESS_STEP < 2_820_090 < 3 * datafile.PROGRESS_STEP
    clock = itertools.count().__next__  # 0, 1, 2, ...: one second per look
    caplog.set_level(logging.INFO, logger="memcachedlite.storage.replay")
    log = DataLog(str(path))
    try:
        loaded = replay(log, 0, Slabs(), ReplayProgress(log.path, log.size, interval=2.0, clock=clock))
    finally:
        log.close()
    assert len(loaded.items) == 20_000
    # Looks at the clock: 0 as it begins, 1 before the first step, 2 before
    # the second (logged), 3 before the third, 4 at the end. The first step
    # ends with the first record that ends past 1 MiB: 90 + 7,437 * 141 bytes.
    assert 90 + 7_436 * 141 < 90 + datafile.PROGRESS_STEP <= 90 + 7_437 * 141 == 1_048_707
    assert _replay_messages(caplog) == [
        f"replaying {path} (2.8 MB); the port opens once it is loaded",
        f"replaying {path}: 1.0 MB of 2.8 MB (37%), 7,437 items, 524 kB/s",  # 1,048,707 bytes in 2 s
        f"loaded 20,000 items from {path} (20,000 records, 2.8 MB) in 4.0 s (5k items/s)",
    ]


def test_a_tiny_interval_gives_a_line_per_step_and_the_rate_is_the_clocks(tmp_path: Path, caplog) -> None:
    path = tmp_path / "data.txt"
    _written(path, 20_000)
    ticks = iter([100.0, 100.0, 100.5, 101.0, 102.5])
    caplog.set_level(logging.INFO, logger="memcachedlite.storage.replay")
    log = DataLog(path)
    try:
        replay(log, 0, Slabs(), ReplayProgress(log.path, log.size, interval=0.0, clock=ticks.__next__))
    finally:
        log.close()
    [begun, *steps, done] = _replay_messages(caplog)
    assert begun.startswith(f"replaying {path} (")
    # the first look, before any record, finds no time passed: no rate yet;
    # then 1,048,707 bytes in 0.5 s and 2,097,414 in 1 s
    assert steps == [
        f"replaying {path}: 90 B of 2.8 MB (0%), 0 items",
        f"replaying {path}: 1.0 MB of 2.8 MB (37%), 7,437 items, 2.1 MB/s",
        f"replaying {path}: 2.1 MB of 2.8 MB (74%), 14,874 items, 2.1 MB/s",
    ]
    assert done == f"loaded 20,000 items from {path} (20,000 records, 2.8 MB) in 2.5 s (8k items/s)"


def test_the_lines_of_a_large_file(caplog) -> None:
    """The figures as a 1.2 GB file of nine million items gives them (the
    issue's example), from the progress object alone."""
    ticks = iter([100.0, 102.0, 106.1])
    caplog.set_level(logging.INFO, logger="memcachedlite.storage.replay")
    progress = ReplayProgress("/srv/mcl/data.txt", 1_200_000_000, clock=ticks.__next__)
    progress(412_000_000, 3_100_000)
    progress.done(9_000_000, 9_000_012)
    assert _replay_messages(caplog) == [
        "replaying /srv/mcl/data.txt (1.2 GB); the port opens once it is loaded",
        "replaying /srv/mcl/data.txt: 412 MB of 1.2 GB (34%), 3,100,000 items, 206 MB/s",
        "loaded 9,000,000 items from /srv/mcl/data.txt (9,000,012 records, 1.2 GB) in 6.1 s (1.5M items/s)",
    ]


def test_a_store_logs_the_start_and_the_end_of_its_replay_with_the_path_absolute(
    tmp_path: Path, caplog, monkeypatch
) -> None:
    """Through ``Store``, with the default interval and a relative path: a
    small file gives no progress line, only the first and the last."""
    monkeypatch.chdir(tmp_path)
    store = Store("data.txt")
    store.set(b"a", b"1")
    store.set(b"b", b"2")
    store.delete(b"a")
    store.close()
    caplog.set_level(logging.INFO, logger="memcachedlite.storage.replay")
    Store("data.txt").close()
    [begun, done] = _replay_messages(caplog)
    assert begun == f"replaying {tmp_path}/data.txt (234 B); the port opens once it is loaded"
    # the records: 2 sets, a delete, and the sync marks of the first start-up and of its stop
    figures = r"\(5 records, 234 B\) in [\d.]+ m?s \([\d.]+[kM]? items/s\)"  # the time is the real clock's
    assert re.fullmatch(f"loaded 1 item from {re.escape(str(tmp_path))}/data.txt {figures}", done), done


def test_a_new_data_file_is_said_created_not_replayed(tmp_path: Path, caplog) -> None:
    """A store that makes its data file has nothing to replay: one line says
    the file was created; the next start replays it as any other."""
    caplog.set_level(logging.INFO, logger="memcachedlite.storage.replay")
    Store(tmp_path / "data.txt").close()
    assert _replay_messages(caplog) == [f"created {tmp_path}/data.txt, a new data file"]
    caplog.clear()
    (tmp_path / "empty.txt").write_bytes(b"")  # an empty file is made into a data file the same way
    Store(tmp_path / "empty.txt").close()
    assert _replay_messages(caplog) == [f"created {tmp_path}/empty.txt, a new data file"]
    caplog.clear()
    Store(tmp_path / "data.txt").close()
    begun, done = _replay_messages(caplog)
    assert begun.startswith(f"replaying {tmp_path}/data.txt (") and done.startswith("loaded 0 items from ")


# -- the log of mcl serve ------------------------------------------------------------------


def test_paths_in_the_log_are_absolute_when_the_data_file_is_given_relative(spawn, tmp_path: Path) -> None:
    proc = spawn("--data-file", "data.txt")  # the last --data-file wins, relative to the server's directory
    assert run_mcl(proc.port, "set", "k", "v").stdout == b"STORED\n"
    assert proc.terminate() == 0
    output = proc.output()
    absolute = f"{tmp_path}/data.txt"
    assert f"created {absolute}, a new data file" in output  # not a replay of the file it just made
    assert "replaying" not in output and "loaded" not in output
    assert f"data in {absolute} (0 items, fsync everysec)" in output
    assert output.count("data.txt") == output.count(absolute) == 2, output  # never relative
    assert "stopped; data file flushed" in output


def test_memory_only_mode_never_mentions_a_data_file(spawn, tmp_path: Path) -> None:
    proc = spawn("--no-data-file")
    assert run_mcl(proc.port, "set", "k", "v").stdout == b"STORED\n"
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0
    output = proc.output()
    assert "data in memory only" in output and "SIGTERM received" in output
    assert output.rstrip().endswith(": stopped"), output
    for word in ("data file", "fsync", "data.txt", "replaying", "loaded"):
        assert word not in output.lower(), (word, output)
    assert not (tmp_path / "data.txt").exists()


# -- a file that is not a data file ---------------------------------------------------


SEED = b"greeting hello\r\nname Ada Lovelace\n\nempty \n"  # the value is the rest of the line
DUMP = b"".join(
    [
        b'{"format": "memcachedlite-dump", "version": 1, "created": 1767225600, "servers": ["127.0.0.1:9889"]}\n',
        b'{"key": "%s", "value": "%s", "flags": 3, "ttl": 0}\n'
        % (base64.b64encode(b"greeting"), base64.b64encode(b"hello")),
        b'{"key": "%s", "value": "%s", "flags": 0, "ttl": 0}\n'
        % (base64.b64encode(b"name"), base64.b64encode(b"Ada Lovelace")),
    ]
)


@pytest.mark.parametrize(
    "content, looks_like, loaded",
    [
        (SEED, foreign.KEY_VALUE_LINES, "3 of 3 items from data.txt (seed format)"),
        (DUMP, foreign.DUMP, "2 of 2 items from data.txt (dump format)"),
    ],
    ids=["key-value-lines", "dump"],
)
def test_a_file_mcl_load_imports_gets_that_hint_from_serve_and_repair_and_then_loads(
    spawn, tmp_path: Path, content: bytes, looks_like: str, loaded: str
) -> None:
    """A seed server's ``data.txt`` (or a dump put there) where ``mcl serve``
    looks first: no advice to run ``mcl repair``, which refuses it in the
    same words; the ``mcl load`` it suggests then imports it."""
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    hint = (
        f"{path}: not a memcachedlite data file; it looks like {looks_like}: import it with 'mcl load {path}'"
        " into a server started on another data file (mcl serve --data-file OTHER)"
    )
    served = run_serve(tmp_path, "--port", "0")  # data.txt, relative to where it runs
    assert served.returncode == CANNOT_START
    assert _error_lines(served) == [f"Error: {hint}"]
    assert b"mcl repair" not in served.stderr
    repaired = run_mcl(None, "repair", "data.txt", cwd=tmp_path)
    assert repaired.returncode == FAILED
    assert _error_lines(repaired) == [f"Error: cannot repair {hint}"]
    with_repair = run_serve(tmp_path, "--port", "0", "--repair")
    assert with_repair.returncode == CANNOT_START and _error_lines(with_repair) == [f"Error: cannot repair {hint}"]
    assert path.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]

    # what the hint says to do
    proc = spawn(data_file=tmp_path / "other.txt")
    imported = run_mcl(proc.port, "load", "data.txt", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.decode().startswith(f"loaded {loaded} into 127.0.0.1:{proc.port}")
    assert run_mcl(proc.port, "get", "greeting").stdout == b"hello"
    assert run_mcl(proc.port, "get", "name").stdout == b"Ada Lovelace"
    assert proc.terminate() == 0


def test_a_file_nothing_reads_is_named_as_such_without_a_hint_that_cannot_work(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    content = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    path.write_bytes(content)
    with pytest.raises(NotADataFile) as refused:
        Store(path)
    assert refused.value.looks_like is None and isinstance(refused.value, CorruptLogError)
    message = (
        f"{path}: not a memcachedlite data file: it has no MEMCACHEDLITE-LOG header nor any intact record, and"
        " is no dump or '<key> <value>' lines that 'mcl load' imports either; start the server with another --data-file"
    )
    assert str(refused.value) == message
    served = run_serve(tmp_path, "--port", "0")
    assert served.returncode == CANNOT_START and _error_lines(served) == [f"Error: {message}"]
    with pytest.raises(NotADataFile):
        repair(path)
    assert path.read_bytes() == content


def test_a_data_file_whose_header_is_damaged_still_gets_the_advice_to_repair(tmp_path: Path) -> None:
    """Ours, with its records intact after a header a flipped bit spoiled: damage, not another format."""
    path = tmp_path / "data.txt"
    _written(path, 3)
    raw = bytearray(path.read_bytes())
    raw[0] = ord("X")  # XEMCACHEDLITE-LOG...
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptLogError) as refused:
        Store(path)
    assert not isinstance(refused.value, NotADataFile)
    served = run_serve(tmp_path, "--port", "0")
    [error] = _error_lines(served)
    assert served.returncode == CANNOT_START and f"run 'mcl repair {path}'" in error and "mcl load" not in error
    assert repair(path).records == 3  # and repair salvages it
    assert len(Store(path)) == 3


# -- telling the formats ------------------------------------------------------------


@pytest.mark.parametrize(
    "content, looks_like",
    [
        (b"k v\n", foreign.KEY_VALUE_LINES),
        (b"k v", foreign.KEY_VALUE_LINES),  # no newline at the end
        (b"k \r\n\r\nother value with spaces\n", foreign.KEY_VALUE_LINES),
        (b"a 1\n" * (foreign.SAMPLE // 4) + b"b 2", foreign.KEY_VALUE_LINES),  # the sample cuts a line off
        (b'{"key": "YQ==", "value": "Yg=="}\n', foreign.DUMP),  # a dump without its header line
        (b'{"format": "memcachedlite-dump", "version": 1}\n', foreign.DUMP),
        (b'{"format": "another-dump"}\n', None),
        (b'{"key": broken\n', None),
        (b'{"a": 1}\n', None),  # JSON, but no dump
        (b"novalue\n", None),
        (b"k v\nbad\x01key v\n", None),
        (b"k v\n" + b"x" * 300 + b" v\n", None),  # a key over 250 bytes
        (b"\n\n  \n", None),
        (b"x" * (foreign.SAMPLE + 10), None),  # one line longer than the sample
    ],
    ids=lambda value: repr(value[:24]) + ("..." if len(value) > 24 else "") if isinstance(value, bytes) else None,
)
def test_what_a_file_looks_like(content: bytes, looks_like: str | None) -> None:
    assert foreign.importable_format(content) == looks_like


def test_the_dump_format_is_named_alike_in_storage_and_in_mcl() -> None:
    assert foreign.DUMP_FORMAT == transfer.DUMP_FORMAT
