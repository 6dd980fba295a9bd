"""No reader sees what a crash can take back (issue 13 item 4).

Under ``fsync=always`` a change is acknowledged only once its record is
durable; a reader on another connection must not learn of the change
earlier either, or a power cut a moment later takes back what it was told.
The data file's fsync is held on an event (a hook of
:class:`tests.crashsim.FsRecorder`) while a writer's change waits for it;
each kind of reply that reflects stored data (get, gets, mg, gat, an incr
result, a cas compare, add's NOT_STORED, a miss after a delete) must not
show the change until the fsync has returned, and must never show it if the
fsync fails. A reader of an untouched key is not held up meanwhile.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import Raw
from tests.crashsim import PATIENCE, Disk, is_error

SEED = [
    b"set k 0 0 3\r\nold\r\n",
    b"set n 0 0 1\r\n5\r\n",
    b"set gone 0 0 4\r\nhere\r\n",
    b"set other 0 0 5\r\nquiet\r\n",
]


class Gate:
    """Holds every fsync of the data file until released."""

    def __init__(self, disk: Disk) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        disk.recorder.hooks["fsync"] = self._hook

    def _hook(self, name: str) -> None:
        if name == "data.txt" and not self.release.is_set():
            self.entered.set()
            self.release.wait(PATIENCE)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    made = Disk(tmp_path / "disk", monkeypatch, "always")
    assert made.run(SEED) == [b"STORED\r\n"] * len(SEED)
    yield made
    made.stop()


@pytest.fixture
def clients(disk: Disk) -> Iterator[Callable[[], Raw]]:
    opened: list[Raw] = []

    def connect() -> Raw:
        client = Raw(disk.port)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


def old_cas(disk: Disk) -> int:
    return int(disk.client.ask(b"gets k\r\n").split(b"\r\n")[0].split()[4])


NEW_K = (b"get k\r\n", {b"VALUE k 0 3\r\nnew\r\nEND\r\n"})

# writer's change, its acknowledgement, the reader's request, whether a reply
# to it shows the change, and once all is durable: a request and what it may answer
CASES = {
    "get": (b"set k 0 0 3\r\nnew\r\n", b"STORED\r\n", b"get k\r\n", lambda r: b"new" in r, NEW_K),
    "gets": (b"set k 0 0 3\r\nnew\r\n", b"STORED\r\n", b"gets k\r\n", lambda r: b"new" in r, NEW_K),
    "mg": (b"set k 0 0 3\r\nnew\r\n", b"STORED\r\n", b"mg k v\r\n", lambda r: b"new" in r, NEW_K),
    "gat": (b"set k 0 0 3\r\nnew\r\n", b"STORED\r\n", b"gat 0 k\r\n", lambda r: b"new" in r, NEW_K),
    # the reader's incr lands after the set (51) or before it, and is overwritten (50)
    "incr": (
        b"set n 0 0 2\r\n50\r\n",
        b"STORED\r\n",
        b"incr n 1\r\n",
        lambda r: r == b"51\r\n",
        (b"get n\r\n", {b"VALUE n 0 2\r\n50\r\nEND\r\n", b"VALUE n 0 2\r\n51\r\nEND\r\n"}),
    ),
    "cas": (b"set k 0 0 3\r\nnew\r\n", b"STORED\r\n", b"cas k 0 0 1 %d\r\nz\r\n", lambda r: r == b"EXISTS\r\n", NEW_K),
    "add": (
        b"set fresh 0 0 1\r\nf\r\n",
        b"STORED\r\n",
        b"add fresh 0 0 1\r\nr\r\n",
        lambda r: r == b"NOT_STORED\r\n",
        (b"get fresh\r\n", {b"VALUE fresh 0 1\r\nf\r\nEND\r\n"}),
    ),
    "miss-after-delete": (
        b"delete gone\r\n",
        b"DELETED\r\n",
        b"get gone\r\n",
        lambda r: r == b"END\r\n",
        (b"get gone\r\n", {b"END\r\n"}),
    ),
}


def prepared(disk: Disk, request: bytes) -> bytes:
    """The reader's request, with the cas of ``k`` filled in (asked before any fsync is held)."""
    return request % old_cas(disk) if b"%d" in request else request


@pytest.mark.parametrize("case", list(CASES))
def test_a_reader_is_not_shown_a_change_before_it_is_durable(disk: Disk, clients, case: str) -> None:
    change, acked, request, shows, (check, durable) = CASES[case]
    writer, reader, bystander = clients(), clients(), clients()
    request = prepared(disk, request)
    gate = Gate(disk)
    try:
        writer.send(change)
        assert gate.entered.wait(PATIENCE), "the writer's fsync never started"
        reader.send(request)
        # a reader of a key the writer did not touch is answered meanwhile
        assert bystander.ask(b"get other\r\n") == b"VALUE other 0 5\r\nquiet\r\nEND\r\n"
        early = b"" if reader.quiet(0.3) else reader.reply()
        assert not (early and shows(early)), f"{case}: shown {early!r} before the change was durable"
        assert writer.quiet(0.05), "the writer was acknowledged before its fsync returned"
    finally:
        gate.release.set()
    assert writer.reply() == acked
    if not early:
        reader.reply()  # answered now, either way
    assert reader.ask(check) in durable


@pytest.mark.parametrize("case", list(CASES))
def test_a_reader_never_sees_a_change_whose_fsync_failed(disk: Disk, clients, case: str) -> None:
    change, _, request, shows, _ = CASES[case]
    writer, reader = clients(), clients()
    request = prepared(disk, request)
    gate = Gate(disk)
    # only the writer's fsync fails: a server that fsyncs again for the reader must not be believed
    disk.recorder.fail("fsync", 1, errno.EIO, name="data.txt")
    try:
        writer.send(change)
        assert gate.entered.wait(PATIENCE), "the writer's fsync never started"
        reader.send(request)
        early = b"" if reader.quiet(0.3) else reader.reply()
    finally:
        gate.release.set()
    assert is_error(writer.reply())
    late = early or reader.reply()
    assert not shows(late), f"{case}: shown {late!r} although the change never became durable"
    assert reader.ask(b"get k\r\n") == b"VALUE k 0 3\r\nold\r\nEND\r\n"
    assert reader.ask(b"get gone\r\n") == b"VALUE gone 0 4\r\nhere\r\nEND\r\n"
    assert reader.ask(b"get fresh\r\n") == b"END\r\n"
    assert reader.ask(b"get n\r\n") == b"VALUE n 0 1\r\n5\r\nEND\r\n"
    disk.recover()
    disk.file_matches()
