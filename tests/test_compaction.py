"""Compaction (online, crash-safe) and repair of damaged data files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from memcachedlite import CorruptLogError, LogWriteError, Store
from memcachedlite.cli import main
from memcachedlite.storage import datafile
from memcachedlite.storage.records import parse_records, read_header
from tests.conftest import ROOT, Raw, mark_synced


def state(store: Store) -> dict:
    return {k: store.peek(k) for k in store.keys()}


def churn(store: Store, rounds: int = 20, keys: int = 50) -> None:
    for r in range(rounds):
        for i in range(keys):
            store.set(b"k%d" % i, b"v%d-%d" % (i, r), flags=r, exptime=0 if i % 2 else 3600)
    for i in range(0, keys, 5):
        store.delete(b"k%d" % i)


def test_compaction_keeps_the_state_and_shrinks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    s = Store(path)
    churn(s)
    s.set(b"bin", b"\r\n\0")
    before = state(s)
    size = path.stat().st_size
    saved = s.compact()
    assert saved > 0 and path.stat().st_size == size - saved
    assert state(s) == before
    top = max(item.cas for item in before.values())
    s.close()
    data = path.read_bytes()
    records = list(parse_records(data, read_header(data)[0]))
    assert records[0][0] == b"snapshot"  # every live item in one section that loads in bulk
    assert records[0][2] > top  # the next cas
    assert sorted(key for key, _ in records[0][4]) == sorted(before)
    assert [r[0] for r in records[1:]] == [b"sync"]  # and a mark vouching for all of it
    s2 = Store(path)
    try:
        assert state(s2) == before
        assert s2.set(b"new", b"x") > top
    finally:
        s2.close()


def test_writes_during_compaction_are_kept(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "data.txt"
    s = Store(path)
    churn(s, rounds=3)
    real_write = datafile.write_all  # what the rewrite writes with (a class of the compiled build takes no patch)
    calls = []

    def write_and_meddle(fd, data):
        calls.append(len(data))
        if len(calls) == 2:  # in the middle of the rewrite, from another thread
            t = threading.Thread(target=lambda: (s.set(b"during", b"1"), s.delete(b"k1"), s.flush_all(3600)))
            t.start()
            t.join()
        real_write(fd, data)

    monkeypatch.setattr(datafile, "write_all", write_and_meddle)
    s.compact()
    monkeypatch.undo()
    before = state(s)
    assert b"during" in before and b"k1" not in before
    s.close()
    s2 = Store(path)
    try:
        assert state(s2) == before
        assert s2.flush_at == s.flush_at != 0
    finally:
        s2.close()


def test_compaction_starts_by_itself_past_the_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    s = Store(path, compact_min_size=20_000)
    written = 0
    for _ in range(5000):  # until the background compaction has run once
        s.set(b"same", b"x" * 200)
        written += 230
        if s.compactions:
            break
    s.close()  # waits for a running compaction
    assert s.compactions >= 1
    assert path.stat().st_size < written - 15_000
    s2 = Store(path)
    assert s2.peek(b"same").value == b"x" * 200
    s2.close()


def test_failed_compaction_leaves_the_file_alone(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "data.txt"
    s = Store(path)
    churn(s, rounds=2)
    before = path.read_bytes()

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datafile, "write_all", full)
    with pytest.raises(LogWriteError):
        s.compact()
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not (tmp_path / "data.txt.compact").exists()
    s.set(b"after", b"1")  # the log still works
    s.close()
    assert Store(path).close() is None


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from memcachedlite import Store
    from memcachedlite.storage import datafile
    point = sys.argv[2]
    s = Store(sys.argv[1])
    for r in range(5):
        for i in range(100):
            s.set(b"k%d" % i, b"value-%d-%d" % (i, r))
    s.delete(b"k7")
    def crash(*a, **k):
        os._exit(9)
    if point == "writing":
        datafile.write_all = crash
    elif point == "before-rename":
        datafile.os.rename = crash
    elif point == "after-rename":
        datafile.fsync_directory = crash
    s.compact()
    os._exit(0)
    """
)


@pytest.mark.parametrize("point", ["writing", "before-rename", "after-rename", "done"])
def test_crash_at_any_moment_of_a_compaction(tmp_path: Path, point: str) -> None:
    path = tmp_path / "data.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(path), point], env=env, timeout=60, capture_output=True
    )
    assert done.returncode == (0 if point == "done" else 9), done.stderr.decode()
    s = Store(path)
    try:
        got = state(s)
        assert len(got) == 99 and b"k7" not in got
        assert all(got[b"k%d" % i].value == b"value-%d-4" % i for i in range(100) if i != 7)
    finally:
        s.close()
    assert not (tmp_path / "data.txt.compact").exists()


def test_compact_verb_and_cli(server, tmp_path: Path) -> None:
    c = Raw(server.port)
    try:
        c.ask(b"set a 0 0 1\r\n1\r\nset a 0 0 1\r\n2\r\n", replies=2)
        assert c.ask(b"compact\r\n") == b"OK\r\n"  # started in the background
        assert c.ask(b"get a\r\n") == b"VALUE a 0 1\r\n2\r\nEND\r\n"
        deadline = time.monotonic() + 10
        while server.store.compactions < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.store.compactions == 1
    finally:
        c.close()
    result = CliRunner().invoke(main, ["--server", f"127.0.0.1:{server.port}", "compact"])
    assert result.exit_code == 0, result.output
    assert "compacted to" in result.output and result.output.endswith("OK\n")
    assert server.store.compactions == 2


def damaged_file(tmp_path: Path) -> tuple[Path, int]:
    path = tmp_path / "data.txt"
    s = Store(path)
    s.set(b"a", b"1")
    middle = path.stat().st_size
    s.set(b"b", b"2")
    s.set(b"c", b"3")
    s.close()
    data = bytearray(path.read_bytes())
    data[middle + 4] ^= 0x20  # 'b' -> 'B' in the second record's key: checksum fails
    path.write_bytes(bytes(data))
    mark_synced(path)  # a later fsync covered it: this is corruption, not a crash
    return path, middle


def test_repair_salvages_every_intact_record(tmp_path: Path) -> None:
    path, offset = damaged_file(tmp_path)
    original = path.read_bytes()
    with pytest.raises(CorruptLogError, match=f"offset {offset}"):
        Store(path)
    result = CliRunner().invoke(main, ["repair", str(path)])
    assert result.exit_code == 0, result.output
    assert "kept 2 items (2 records)" in result.output and f"at offset {offset}" in result.output
    assert "changes to 1 key named there (B)" in result.output  # as the flipped bit left it
    backups = list(tmp_path.glob("data.txt.broken-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == original
    s = Store(path)
    try:
        assert sorted(s.keys()) == [b"a", b"c"]
    finally:
        s.close()


def test_serve_refuses_damage_and_repairs_on_request(spawn, tmp_path: Path) -> None:
    path, offset = damaged_file(tmp_path)
    with pytest.raises(RuntimeError, match=f"offset {offset}.*mcl repair"):
        spawn(data_file=path)
    proc = spawn("--repair", data_file=path)
    c = Raw(proc.port)
    try:
        assert c.ask(b"get a b c\r\n") == b"VALUE a 0 1\r\n1\r\nVALUE c 0 1\r\n3\r\nEND\r\n"
    finally:
        c.close()
    assert proc.terminate() == 0


def test_damaged_length_field_is_not_mistaken_for_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    s = Store(path)
    s.set(b"a", b"1")
    s.set(b"b", b"2")
    s.close()
    data = path.read_bytes().replace(b"set a 0 0 1 ", b"set a 0 0 9 ", 1)
    path.write_bytes(data)  # the first record now claims to run past the second
    mark_synced(path)
    with pytest.raises(CorruptLogError):
        Store(path)
