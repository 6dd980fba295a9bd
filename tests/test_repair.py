"""Repair takes the server's lock (issue 22, item 2): ``mcl repair`` and
``mcl serve --repair`` refuse a file in use in the words a second server
gets; a repair of an intact file changes nothing; the result is printed
once, with the items kept and those that could not be."""

from __future__ import annotations

import binascii
import os
from pathlib import Path

import pytest

from memcachedlite import CorruptLogError, Session, Store
from memcachedlite.errors import DataFileInUse
from memcachedlite.storage import records
from memcachedlite.storage.datafile import open_locked
from memcachedlite.storage.repair import repair

from .conftest import mark_synced
from .test_cli import _error_lines, run_mcl, run_serve

pytestmark = pytest.mark.usefixtures("no_mcl_environment")

ODD_KEY = b"odd \x00\r\n\xff key"  # a key only meta (base64) and binary writes can give


def test_repair_refuses_a_file_a_running_server_holds(spawn, tmp_path: Path) -> None:
    """Issue 22's scenario: with a server on data.txt, ``mcl set before 1``,
    ``mcl repair data.txt``, ``mcl set after 2``, restart. Repair used to
    rewrite the file under the server, and ``after`` was lost."""
    proc = spawn()
    assert run_mcl(proc.port, "set", "before", "1").stdout == b"STORED\n"
    second = run_serve(tmp_path, "--port", "0", "--data-file", str(proc.data_file))
    [refusal] = _error_lines(second)
    assert "in use by another running server" in refusal

    repaired = run_mcl(None, "repair", str(proc.data_file), cwd=tmp_path)
    assert repaired.returncode == second.returncode != 0
    assert _error_lines(repaired) == [refusal]  # the words a second server gets
    with_repair = run_serve(tmp_path, "--repair", "--port", "0", "--data-file", str(proc.data_file))
    assert _error_lines(with_repair) == [refusal]
    assert not list(tmp_path.glob("*.broken-*"))

    assert run_mcl(proc.port, "set", "after", "2").stdout == b"STORED\n"
    assert proc.terminate() == 0
    restarted = spawn(data_file=proc.data_file)
    assert run_mcl(restarted.port, "get", "before").stdout == b"1"
    assert run_mcl(restarted.port, "get", "after").stdout == b"2"
    assert restarted.terminate() == 0


def test_a_server_cannot_start_on_a_file_being_repaired(tmp_path: Path) -> None:
    """The same lock, the other way round: what a repair holds, no server takes."""
    path = tmp_path / "data.txt"
    Store(path).close()
    fd = open_locked(str(path), os.O_RDONLY)  # as repair() holds it
    try:
        with pytest.raises(DataFileInUse, match=f"cannot open data file: {path} is in use by another running server"):
            Store(path)
        with pytest.raises(DataFileInUse):
            repair(path)
    finally:
        os.close(fd)


def written(path: Path) -> None:
    """Text, meta (base64 key) and binary-protocol-like writes (a key of any bytes)."""
    store = Store(path)
    session = Session(store)
    assert session.feed(b"set a 0 0 1\r\n1\r\nset b 5 0 2\r\n22\r\ndelete a\r\n") == b"STORED\r\nSTORED\r\nDELETED\r\n"
    key = binascii.b2a_base64(ODD_KEY, newline=False)
    assert session.feed(b"ms %s 3 b\r\nodd\r\nmd b I T30\r\n" % key) == b"HD\r\nHD\r\n"
    store.close()


def test_repair_of_an_intact_file_says_so_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    written(path)
    before = path.read_bytes()
    done = run_mcl(None, "repair", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().splitlines() == [
        f"{path}: nothing to repair: no damage; 2 items (5 records), unchanged"
    ]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]  # no backup, no temporary file


def test_serve_repair_of_an_intact_file_writes_no_backup(spawn, tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    written(path)
    proc = spawn("--repair", data_file=path)
    assert run_mcl(proc.port, "get", "b").stdout == b"22"
    assert proc.terminate() == 0
    assert not list(tmp_path.glob("*.broken-*")) and "repaired" not in proc.output()


def test_repair_prints_its_result_once_with_what_it_kept_and_what_it_could_not(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    written(path)
    store = Store(path)
    store.set(b"c", b"3")
    store.close()
    buf = bytearray(path.read_bytes())
    # damage the record of the base64 key (any bytes) and the set of c
    for verb in (b"bset ", b"set c "):
        buf[buf.index(verb) + len(verb) + 1] ^= 0x01
    path.write_bytes(bytes(buf))
    done = run_mcl(None, "repair", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.decode().splitlines()
    assert [line.count("kept") for line in lines] == [1, 1]  # the result, then the warning: once each
    assert lines[0].startswith(f"{path}: kept 1 item (4 records); could not keep ")
    assert "changes to 2 keys named there (" in lines[0] and ", c)" in lines[0]
    assert "original is saved as" in lines[0] and "WARNING: damage lay in data that had reached the disk" in lines[1]
    store = Store(path)
    try:
        assert store.keys() == [b"b"]
    finally:
        store.close()


def test_repair_names_the_keys_a_crash_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    written(path)
    with open(path, "ab") as f:  # written after the last fsync; a power cut left a hole in them
        f.write(bytes(30) + records.encode_set(b"late", b"x", 0, 0, 9))
        f.write(records.encode_delete(ODD_KEY, binary=True))
    report = repair(path)
    assert report.cut_offset is not None and not report.kept_across_damage
    assert report.lost_keys == [b"late", ODD_KEY]
    [result, cut] = report.describe(str(path))
    assert "changes to 2 keys named there (late, odd \\x00\\r\\n\\xff key)" in result and "what a crash leaves" in cut


def test_repair_refuses_a_file_that_is_no_data_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"key value\nother thing\n")
    with pytest.raises(CorruptLogError, match="nothing to salvage"):
        repair(path)
    assert path.read_bytes() == b"key value\nother thing\n"
    done = run_mcl(None, "repair", str(path), cwd=tmp_path)
    assert done.returncode == 1 and "nothing to salvage" in _error_lines(done)[0]


def test_repair_counts_items_across_a_snapshot(tmp_path: Path) -> None:
    """Items kept are counted as start-up counts them: a compacted file too."""
    path = tmp_path / "data.txt"
    store = Store(path)
    for i in range(20):
        store.set(b"k%d" % i, b"v")
    store.compact()
    store.set(b"after", b"1")
    store.delete(b"k0")
    store.close()
    buf = bytearray(path.read_bytes())
    buf[buf.index(b"set after") + 5] ^= 0x01
    path.write_bytes(bytes(buf))
    mark_synced(path)
    report = repair(path)
    assert report.items == 19 and report.lost_keys == [b"agter"] and report.kept_across_damage
