"""What start-up says (issue 24, item 4): while it replays, a line at most
every 2 seconds with the bytes read of the total, the items and the rate;
at the end one line with the items, records, time and rate; every path
absolute; nothing about a data file in memory-only mode; and a file at the
data file's path that is not one is named as such, with the hint to import
it with ``mcl load`` when it is a dump or the seed's ``key value`` lines,
rather than the advice to run ``mcl repair``, which refuses it in the same
words."""

from __future__ import annotations

import itertools
import logging
import re
import signal
from pathlib import Path

import pytest

from memcachedlite import Store
from memcachedlite.storage import datafile, records
from memcachedlite.storage.datafile import DataLog
from memcachedlite.storage.replay import ReplayProgress, replay

from .test_cli import run_mcl

pytestmark = pytest.mark.usefixtures("no_mcl_environment")

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
        loaded = replay(log, 0, ReplayProgress(log.path, log.size, interval=2.0, clock=clock))
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
        replay(log, 0, ReplayProgress(log.path, log.size, interval=0.0, clock=ticks.__next__))
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


# -- the log of mcl serve ------------------------------------------------------------------


def test_paths_in_the_log_are_absolute_when_the_data_file_is_given_relative(spawn, tmp_path: Path) -> None:
    proc = spawn("--data-file", "data.txt")  # the last --data-file wins, relative to the server's directory
    assert run_mcl(proc.port, "set", "k", "v").stdout == b"STORED\n"
    assert proc.terminate() == 0
    output = proc.output()
    absolute = f"{tmp_path}/data.txt"
    assert f"replaying {absolute} (" in output
    assert f"loaded 0 items from {absolute} (" in output
    assert f"data in {absolute} (0 items, fsync everysec)" in output
    assert output.count("data.txt") == output.count(absolute) == 3, output  # never relative
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
