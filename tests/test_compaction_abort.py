"""A compaction abandoned because the data file failed meanwhile writes
nothing more (found by benchmarks/soak.py, issue 22 item 6).

The compaction writes its new file outside the store's lock. When an fsync
of the live file fails, the failure path abandons the compaction under the
lock; it used to close the new file's descriptor at once, while the
compaction thread went on writing to that number. The next socket or file
the process opened took the number, and got the rest of the snapshot: the
soak saw a pymemcache client receive ``snapshot 1 3751 ...``, other
clients' items, in place of its reply.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from memcachedlite import Store
from memcachedlite.errors import LogWriteError
from memcachedlite.storage import datafile, durability
from tests.crashsim import PATIENCE, FsRecorder, modules_with_os


def test_an_abandoned_compaction_writes_nothing_to_its_old_descriptor(tmp_path: Path, monkeypatch) -> None:
    recorder = FsRecorder(tmp_path).install(monkeypatch, *modules_with_os())
    store = Store(tmp_path / "data.txt", fsync="no", compact_min_size=1 << 40)
    paused, resume = threading.Event(), threading.Event()
    section = durability.snapshot_section

    def held_section(*args: Any) -> list[bytes]:
        """The snapshot, once the failure path has abandoned the compaction
        (a list, as the function it replaces returns: the compiled build
        checks that)."""
        paused.set()
        assert resume.wait(PATIENCE)
        return section(*args)

    monkeypatch.setattr(durability, "snapshot_section", held_section)
    pair: list[socket.socket] = []
    try:
        for i in range(50):
            store.set(b"k%d" % i, b"v" * 100)
        store.sync()
        assert store.start_compaction()
        compactor = store._compactor
        assert compactor is not None and paused.wait(PATIENCE)
        descriptor = store.log.rewriting.fd  # type: ignore[union-attr]
        store.set(b"late", b"x")
        recorder.fail("fsync", 1, errno.EIO)
        with pytest.raises(LogWriteError):
            store.sync()  # the failure path abandons the compaction
        assert store.log.rewriting is None  # type: ignore[union-attr]
        pair = list(socket.socketpair())
        assert descriptor in [s.fileno() for s in pair], "the test needs the number taken again"
        resume.set()
        compactor.join(PATIENCE)
        for end in pair:
            end.setblocking(False)
            with pytest.raises(BlockingIOError):  # nothing of the snapshot arrived
                end.recv(65536)
        deadline = time.monotonic() + PATIENCE
        while not store.writable:  # the file is rewritten from memory, by the recovery's own compaction
            assert time.monotonic() < deadline, "no recovery"
            time.sleep(0.01)
        assert store.compaction_failures == 1
    finally:
        resume.set()
        for end in pair:
            end.close()
        recorder.heal()
        store.close()
    reloaded = Store(tmp_path / "data.txt")
    try:
        assert sorted(reloaded.keys()) == sorted([b"k%d" % i for i in range(50)] + [b"late"])
    finally:
        reloaded.close()


def test_an_abort_during_an_fsync_closes_the_descriptor_once_the_fsync_is_done(tmp_path: Path, monkeypatch) -> None:
    recorder = FsRecorder(tmp_path).install(monkeypatch, *modules_with_os())
    rewrite = datafile.Rewrite(str(tmp_path / "data.txt"))
    rewrite.write(b"items")
    recorder.hooks["fsync"] = lambda name: rewrite.abort()  # from the failure path, while the fsync runs
    rewrite.sync()
    with pytest.raises(OSError) as closed:
        os.fstat(rewrite.fd)
    assert closed.value.errno == errno.EBADF
    assert not (tmp_path / "data.txt.compact").exists()
    with pytest.raises(OSError, match="compaction abandoned"):
        rewrite.write(b"more")
