"""A soak of the durable path: mixed clients against one ``mcl serve --fsync
always`` with a small memory limit, killed with SIGKILL and restarted every
few minutes, compacting, with fsync failures injected, and a check at every
restart that every acknowledged write that was not evicted is there.

    python benchmarks/soak.py [--minutes 30] [--restart-every 180] [--memory 4] [--seed 1]

Exit status 0 when nothing was lost, 1 on any loss (or a value the clients
never wrote), 2 when the soak could not run (the server would not start).

The server
----------
One ``mcl serve --port 0 --fsync always -m 4 --compact-min-size 8m`` at a
time, a subprocess with its data file in a temporary folder (``--dir`` keeps
it). The fsync failures come from the test suite's injector,
:class:`tests.crashsim.FsRecorder` (the one tests/test_fsync_failure.py
uses), which stands in for ``os`` in the storage modules and so works only
inside the server's process. So the subprocess is this script
(``soak.py --serve-with-faults DIR -- <mcl serve options>``): it installs
the injector in its own process, then runs ``mcl serve`` there. Signal
SIGRTMIN+i arms fault i of :data:`FAULTS` on the next call of its kind; the
soak sends them in turn: an fsync failing with EIO whose unsynced pages the
kernel drops (the file is zeroed past what the last good fsync covered), an
fsync failing with EIO, a write failing with ENOSPC (a full disk), an fsync
failing with ENOSPC. The injector keeps no trace of the writes, unlike the
tests' (it would fill memory in half an hour).

Every few minutes the server is stopped: SIGKILL under load, SIGKILL just
after asking for a compaction, SIGKILL just after arming a fault, or a clean
SIGTERM (which must exit 0), in turn. Compactions also run when the server
starts them itself (``--compact-min-size``) and when the soak asks (the
``compact`` verb).

The clients
-----------
Threads of this process, each owning its keys and writing values that name
the key and a version: pymemcache one request at a time (set, get, delete,
incr), pymemcache pipelined (``set_many``, ``get_many``, ``delete_many``),
text over a raw socket pipelined, meta one at a time (``ms mg md``), meta
pipelined in quiet mode (``ms ... q``, ``mg ... q``, then ``mn``), binary one at a time
(SET GET DELETE) and binary pipelined quiet (SETQ then NOOP, GETKQ then
NOOP). Memory is filled first, so evictions go on from the start.

How a restart is judged
-----------------------
For each key, each client keeps the last acknowledged state (a version
stored, or deleted) and the states it sent since without an acknowledgement
(cut off by a kill, or refused with ``SERVER_ERROR``: the disk may have them
or not). After each restart every key is read back:

- the acknowledged state, or one of those sent since: as it should be;
- a value older than the acknowledged one, or a deleted key back: a loss;
- a value no client wrote (or a damaged one): a loss;
- missing although acknowledged: evicted if the server evicted anything
  after that acknowledgement (``stats evictions``, summed over the server's
  lives, read just before each stop), a loss otherwise.

Reads while the server runs are checked the same way, except that a miss is
not judged. The summary gives operations by kind, restarts and how they
happened, compactions, evictions, faults injected and how many the server
saw (``data_file_errors``), and the losses.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import itertools
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(ROOT))  # the test suite's helpers, and this checkout's memcachedlite

from memcachedlite.protocols import binary  # noqa: E402
from tests.conftest import Raw  # noqa: E402

#: The faults the soak injects, in turn: (call, errno, options of tests.crashsim.Fault, name).
FAULTS = [
    ("fsync", errno.EIO, {"lose_unsynced": True}, "fsync EIO, unsynced pages lost"),
    ("fsync", errno.EIO, {}, "fsync EIO"),
    ("write", errno.ENOSPC, {}, "write ENOSPC"),
    ("fsync", errno.ENOSPC, {}, "fsync ENOSPC"),
]
#: How the server is stopped, in turn.
STOPS = ["kill under load", "kill during a compaction", "kill after a fault", "clean stop"]

# -- the server's side: mcl serve with the test suite's fault injector ---------------------


def serve_with_faults(directory: str, serve_args: list[str]) -> None:
    """Run ``mcl serve`` in this process with an injector in place of ``os``
    in the storage modules; signal SIGRTMIN+i arms ``FAULTS[i]``."""
    import pytest

    from memcachedlite.cli import main
    from tests.crashsim import PAGE, FsRecorder, modules_with_os

    class Injector(FsRecorder):
        """FsRecorder's faults without its trace: only the size each file's
        last good fsync covered, which a fault that loses unsynced pages needs."""

        def __init__(self, directory: str) -> None:
            super().__init__(directory)
            self.synced = {inode: len(data) for inode, data in self.initial_data.items()}
            self.initial_data.clear()

        def _record(self, op: Any) -> None:
            pass

        def _sync(self, fd: int, call: Callable[[int], None]) -> None:
            super()._sync(fd, call)
            known = self._fds.get(fd)
            if known is not None and known.inode >= 0:
                self.synced[known.inode] = self._os.fstat(fd).st_size

        def _lose_unsynced(self, fd: int, known: Any) -> None:
            """Zero the file from the page its last good fsync ended in (what
            was synced in that page is written back), as the kernel does with
            dirty pages after a failed writeback."""
            durable = self.synced.get(known.inode, 0)
            size = self._os.fstat(fd).st_size
            start = durable // PAGE * PAGE
            if size <= durable:
                return
            plain = self._os.open(f"/proc/self/fd/{fd}", self._os.O_RDWR)  # no O_APPEND: pwrite honours the offset
            try:
                kept = self._os.pread(plain, durable - start, start)
                self._os.pwrite(plain, kept + bytes(size - durable), start)
            finally:
                self._os.close(plain)

    injector = Injector(directory)
    injector.install(pytest.MonkeyPatch(), *modules_with_os())

    def arm(signum: int, frame: object) -> None:
        kind, err, options, _ = FAULTS[signum - signal.SIGRTMIN]
        injector.heal()  # a fault the last signal armed and nothing hit is dropped
        injector.fail(kind, 1, err, **options)

    for i in range(len(FAULTS)):
        signal.signal(signal.SIGRTMIN + i, arm)
    main(["serve", *serve_args], prog_name="mcl")


# -- talking to the server ---------------------------------------------------------------


class Wire(Raw):
    """The test suite's raw socket client, with what the soak reads besides
    lines: binary packets, the VALUE blocks of a get, stats."""

    def __init__(self, port: int) -> None:
        super().__init__(port, timeout=60.0)

    def line(self) -> bytes:
        return self.readline()[:-2]

    def packet(self) -> tuple[int, int, int, bytes, bytes]:
        """One binary reply: opcode, status, opaque, key, value."""
        header = self.read_exactly(24)
        _, op, keylen, extlen, _, status, body, opaque, _ = struct.unpack(">BBHBBHIIQ", header)
        data = self.read_exactly(body)
        return op, status, opaque, data[extlen : extlen + keylen], data[extlen + keylen :]

    def values(self) -> dict[bytes, bytes]:
        """The VALUE blocks of a text get, up to END."""
        found = {}
        while True:
            line = self.line()
            if line == b"END":
                return found
            if not line.startswith(b"VALUE "):
                raise ReplyError(line)
            _, key, _, size = line.split()[:4]
            found[key] = self.read_exactly(int(size) + 2)[:-2]

    def stats(self) -> dict[str, int]:
        self.send(b"stats\r\n")
        out = {}
        while True:
            line = self.line()
            if line == b"END":
                return out
            _, name, value = line.split(b" ", 2)
            if value.isdigit():
                out[name.decode()] = int(value)


class ReplyError(Exception):
    """A reply the client did not expect: counted, and the connection is opened again."""


class ServerError(Exception):
    """``SERVER_ERROR`` (or a binary failure status): the change may or may not be on disk."""


#: What ends a connection: the server went away, or answered out of step.
BROKEN = (OSError, ConnectionError, ReplyError)


def done(line: bytes, good: bytes) -> bool:
    """Whether a text or meta reply acknowledges a change: ``good``; False
    for ``SERVER_ERROR``; anything else is out of step."""
    if line == good:
        return True
    if line.startswith(b"SERVER_ERROR"):
        return False
    raise ReplyError(line)


# -- what each client wrote: per key, acknowledged and in-flight states --------------------


def make_value(key: bytes, version: int, size: int) -> bytes:
    """A value that names its key and version, ``size`` bytes long."""
    head = b"%s|%d|" % (key, version)
    return (head * (size // len(head) + 1))[: max(size, len(head))]


def version_of(key: bytes, value: bytes, counter: bool) -> Optional[int]:
    """The version a value carries, or None if no client wrote it."""
    if counter:
        return int(value) if value.isdigit() else None
    parts = value.split(b"|", 2)
    if len(parts) < 3 or parts[0] != key or not parts[1].isdigit():
        return None
    version = int(parts[1])
    return version if value == make_value(key, version, len(value)) else None


@dataclass
class KeyState:
    counter: bool = False
    acked: Optional[tuple[int, bool]] = None  # (version, present) last acknowledged
    pending: list[tuple[int, bool]] = field(default_factory=list)  # sent since, not acknowledged
    next: int = 1
    evictions_at_ack: int = 0


@dataclass
class Verdicts:
    ok: int = 0  # found with the value last acknowledged
    absent: int = 0  # missing, as acknowledged (deleted, or never stored)
    evicted: int = 0  # missing, and the server evicted items since it was acknowledged
    missed: int = 0  # missing on a read while serving (not judged)
    unconfirmed: int = 0  # a change sent but never acknowledged, found applied
    losses: list[str] = field(default_factory=list)


class Ledger:
    """One client's keys and what it did to them."""

    def __init__(self, soak: Soak, prefix: str, keys: int, counters: int) -> None:
        self.soak = soak
        self.keys = [b"%s:k%d" % (prefix.encode(), i) for i in range(keys)]
        self.counters = [b"%s:n%d" % (prefix.encode(), i) for i in range(counters)]
        self.state = {k: KeyState() for k in self.keys}
        self.state.update({k: KeyState(counter=True) for k in self.counters})

    def begin_set(self, key: bytes, rng: random.Random) -> bytes:
        """A new version of ``key``, recorded as in flight; returns its value."""
        st = self.state[key]
        version, st.next = st.next, st.next + 1
        st.pending.append((version, True))
        if st.counter:
            return b"%d" % version
        return make_value(key, version, rng.randint(100, 1500))

    def begin_delete(self, key: bytes) -> None:
        st = self.state[key]
        st.pending.append((st.next - 1, False))

    def ack(self, key: bytes, present: Optional[bool] = None, version: Optional[int] = None) -> None:
        """The server acknowledged the last change sent for ``key`` (or, for
        a counter's incr, reported ``version``)."""
        st = self.state[key]
        if version is not None:
            state = (version, True)
            st.next = max(st.next, version + 1)
        else:
            state = st.pending[-1]
        st.acked = state
        st.pending.clear()
        st.evictions_at_ack = self.soak.evictions_seen()

    def begin_incr(self, key: bytes) -> None:
        st = self.state[key]
        if st.acked is not None and st.acked[1]:
            st.pending.append((st.acked[0] + 1, True))
            st.next = max(st.next, st.acked[0] + 2)

    def judge(self, key: bytes, value: Optional[bytes], evictions: Optional[int], verdicts: Verdicts) -> None:
        """Judge what a read found (see the module docstring); ``evictions``
        None for a read while the server runs (a miss is not judged then)."""
        st = self.state[key]
        allowed = set(st.pending)
        if st.acked is not None:
            allowed.add(st.acked)
        if value is None:
            if st.acked is None or not st.acked[1] or any(not p for _, p in st.pending):
                verdicts.absent += 1
            elif evictions is None:
                verdicts.missed += 1
            elif evictions > st.evictions_at_ack:
                verdicts.evicted += 1
            else:
                verdicts.losses.append(
                    f"{key.decode()}: acknowledged version {st.acked[0]} is missing, nothing evicted"
                )
            return
        version = version_of(key, value, st.counter)
        if version is None:
            verdicts.losses.append(f"{key.decode()}: a value no client wrote: {value[:60]!r}")
        elif (version, True) == st.acked:
            verdicts.ok += 1
        elif (version, True) in allowed:
            verdicts.unconfirmed += 1
        elif st.acked is not None and version <= st.acked[0]:
            what = "an older value" if st.acked[1] else "a value deleted since"
            verdicts.losses.append(f"{key.decode()}: {what} (version {version}; acknowledged {st.acked})")
        else:
            verdicts.losses.append(f"{key.decode()}: version {version} was never sent (acknowledged {st.acked})")

    def settle(self, key: bytes, value: Optional[bytes]) -> None:
        """After a restart's check: what the server holds now is the state to
        hold it to (a missing key counts as deleted at its last version)."""
        st = self.state[key]
        known = max([v for v, _ in st.pending] + ([st.acked[0]] if st.acked else []), default=0)
        if value is None:
            if st.acked is not None or st.pending:
                st.acked = (known, False)
        else:
            version = version_of(key, value, st.counter)
            if version is not None:
                st.acked = (version, True)
                st.next = max(st.next, version + 1)
        st.pending.clear()
        st.evictions_at_ack = self.soak.evictions_seen()


# -- the clients -----------------------------------------------------------------------------


class Client(threading.Thread):
    """A thread that connects to the server of the moment, runs steps until
    the server goes away, then waits for the next one."""

    kind = ""

    def __init__(self, soak: Soak, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.soak = soak
        self.unexpected: list[str] = []

    def run(self) -> None:
        generation = 0
        while True:
            port, generation = self.soak.wait_for_server(generation)
            if port is None:
                return
            while not self.soak.down:
                try:
                    self.connect(port)
                    while not self.soak.down:
                        self.step()
                except ServerError:
                    pass  # pymemcache, after SERVER_ERROR: a new connection
                except Exception as exc:
                    # expected once the server is stopped; otherwise a connection it closed, a reply
                    # out of step (or a bug of the soak's own): said, and the client connects again
                    if not (self.soak.down and isinstance(exc, BROKEN)):
                        self.unexpected.append(f"{time.strftime('%H:%M:%S')} {self.kind}: {type(exc).__name__}: {exc}")
                        time.sleep(0.05)
                finally:
                    self.close()
            self.soak.park()

    def connect(self, port: int) -> None:
        self.wire = Wire(port)

    def close(self) -> None:
        wire = getattr(self, "wire", None)
        if wire is not None:
            wire.close()

    def step(self) -> None:
        raise NotImplementedError


class Worker(Client):
    """A client that owns keys and writes and reads them (over a raw socket, unless it says otherwise)."""

    batch = 20

    def __init__(self, soak: Soak, index: int) -> None:
        super().__init__(soak, f"soak-{self.kind}-{index}")
        self.rng = random.Random(soak.seed * 1000 + index)
        self.ledger = Ledger(soak, f"w{index}", soak.keys_per_client, 4)
        self.ops: collections.Counter[str] = collections.Counter()
        self.verdicts = Verdicts()

    def keys(self, n: int) -> list[bytes]:
        return self.rng.sample(self.ledger.keys, n)

    def read(self, found: dict[bytes, bytes], keys: Iterable[bytes]) -> None:
        for key in keys:
            self.ledger.judge(key, found.get(key), None, self.verdicts)

    def refused(self, what: str) -> None:
        """A change answered with an error: it stays in flight (the disk may have it)."""
        self.ops[f"{what} refused"] += 1

    def answer(self, key: bytes, done: bool, what: str) -> None:
        """The reply to one change of ``key``: done (acknowledged), or refused."""
        if done:
            self.ledger.ack(key)
        else:
            self.refused(what)
        self.ops[what] += 1


class PymemcacheOne(Worker):
    """pymemcache, one request at a time."""

    kind = "pymemcache"

    def connect(self, port: int) -> None:
        from pymemcache.client.base import Client

        self.client = Client(("127.0.0.1", port), default_noreply=False, connect_timeout=10, timeout=30, no_delay=True)

    def close(self) -> None:
        self.client.close()

    def step(self) -> None:
        roll = self.rng.random()
        ledger = self.ledger
        with self.errors_told_apart():
            if roll < 0.45:
                key = self.keys(1)[0]
                value = ledger.begin_set(key, self.rng)
                if not self.client.set(key, value):
                    raise ReplyError("set not stored")
                ledger.ack(key)
                self.ops["pymemcache set"] += 1
            elif roll < 0.75:
                key = self.keys(1)[0]
                value = self.client.get(key)
                self.read({key: value} if value is not None else {}, [key])
                self.ops["pymemcache get"] += 1
            elif roll < 0.85:
                key = self.keys(1)[0]
                ledger.begin_delete(key)
                self.client.delete(key)  # DELETED or NOT_FOUND: gone either way
                ledger.ack(key)
                self.ops["pymemcache delete"] += 1
            else:
                self.incr(self.rng.choice(ledger.counters))

    @contextlib.contextmanager
    def errors_told_apart(self) -> Iterator[None]:
        """pymemcache's exceptions as the soak's: the connection closed, a
        ``SERVER_ERROR`` (after which pymemcache's connection is out of step),
        or a reply it could not make sense of."""
        from pymemcache.exceptions import MemcacheError, MemcacheServerError, MemcacheUnexpectedCloseError

        try:
            yield
        except MemcacheUnexpectedCloseError as exc:
            raise ConnectionError(str(exc)) from None
        except MemcacheServerError:
            self.refused(self.kind)
            raise ServerError(self.kind) from None
        except MemcacheError as exc:
            raise ReplyError(f"{type(exc).__name__}: {exc}") from None

    def incr(self, key: bytes) -> None:
        ledger = self.ledger
        ledger.begin_incr(key)
        number = self.client.incr(key, 1)
        if number is None:  # evicted, or never set: start again past every version used
            value = ledger.begin_set(key, self.rng)
            if not self.client.set(key, value):
                raise ReplyError("set not stored")
            ledger.ack(key)
        else:
            ledger.ack(key, version=number)
        self.ops["pymemcache incr"] += 1


class PymemcacheMany(PymemcacheOne):
    """pymemcache's pipelined forms: set_many, get_many, delete_many."""

    kind = "pymemcache many"

    def step(self) -> None:
        roll = self.rng.random()
        keys = self.keys(self.batch)
        ledger = self.ledger
        with self.errors_told_apart():
            if roll < 0.5:
                values = {key: ledger.begin_set(key, self.rng) for key in keys}
                failed = self.client.set_many(values)
                if failed:
                    raise ReplyError(f"set_many failed for {failed}")
                for key in keys:
                    ledger.ack(key)
                self.ops["pymemcache set_many"] += len(keys)
            elif roll < 0.9:
                self.read(self.client.get_many(keys), keys)
                self.ops["pymemcache get_many"] += len(keys)
            else:
                for key in keys[:5]:
                    ledger.begin_delete(key)
                self.client.delete_many(keys[:5])
                for key in keys[:5]:
                    ledger.ack(key)
                self.ops["pymemcache delete_many"] += 5


class Pipelined(Worker):
    """A batch of requests in one send, each protocol its own way: half the
    batches sets of distinct keys, half gets."""

    def step(self) -> None:
        keys = self.keys(self.batch)
        if self.rng.random() < 0.5:
            values = [self.ledger.begin_set(k, self.rng) for k in keys]
            for key, ok in zip(keys, self.set_batch(keys, values), strict=True):
                self.answer(key, ok, f"{self.kind} set")
        else:
            self.read(self.get_batch(keys), keys)
            self.ops[f"{self.kind} get"] += len(keys)

    def set_batch(self, keys: list[bytes], values: list[bytes]) -> list[bool]:
        """Send the sets at once; for each, whether it was acknowledged."""
        raise NotImplementedError

    def get_batch(self, keys: list[bytes]) -> dict[bytes, bytes]:
        raise NotImplementedError


class TextPipelined(Pipelined):
    """Text sets pipelined, and a multi-key get."""

    kind = "text pipelined"

    def set_batch(self, keys: list[bytes], values: list[bytes]) -> list[bool]:
        pairs = zip(keys, values, strict=True)
        self.wire.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in pairs))
        return [done(self.wire.line(), b"STORED") for _ in keys]

    def get_batch(self, keys: list[bytes]) -> dict[bytes, bytes]:
        self.wire.send(b"get " + b" ".join(keys) + b"\r\n")
        return self.wire.values()


class OneAtATime(Worker):
    """One request at a time, each protocol its own way: half sets, a third gets, the rest deletes."""

    def step(self) -> None:
        key = self.keys(1)[0]
        roll = self.rng.random()
        if roll < 0.5:
            value = self.ledger.begin_set(key, self.rng)
            self.answer(key, self.set_one(key, value), f"{self.kind} set")
        elif roll < 0.85:
            value = self.get_one(key)
            self.read({key: value} if value is not None else {}, [key])
            self.ops[f"{self.kind} get"] += 1
        else:
            self.ledger.begin_delete(key)
            self.answer(key, self.delete_one(key), f"{self.kind} delete")

    def set_one(self, key: bytes, value: bytes) -> bool:
        raise NotImplementedError

    def get_one(self, key: bytes) -> Optional[bytes]:
        raise NotImplementedError

    def delete_one(self, key: bytes) -> bool:
        raise NotImplementedError


class MetaOne(OneAtATime):
    """Meta commands: ms, mg, md."""

    kind = "meta"

    def set_one(self, key: bytes, value: bytes) -> bool:
        self.wire.send(b"ms %s %d T0\r\n%s\r\n" % (key, len(value), value))
        return done(self.wire.line(), b"HD")

    def get_one(self, key: bytes) -> Optional[bytes]:
        self.wire.send(b"mg %s v\r\n" % key)
        line = self.wire.line()
        if line.startswith(b"VA "):
            return self.wire.read_exactly(int(line.split()[1]) + 2)[:-2]
        if line != b"EN":
            raise ReplyError(line)
        return None

    def delete_one(self, key: bytes) -> bool:
        self.wire.send(b"md %s\r\n" % key)
        line = self.wire.line()
        return done(b"HD" if line == b"NF" else line, b"HD")  # NF: gone all the same


class MetaQuiet(Pipelined):
    """Meta commands pipelined in quiet mode (``q``: only failures and hits answer), ended by ``mn``."""

    kind = "meta quiet"

    def set_batch(self, keys: list[bytes], values: list[bytes]) -> list[bool]:
        pairs = zip(keys, values, strict=True)
        self.wire.send(b"".join(b"ms %s %d q\r\n%s\r\n" % (k, len(v), v) for k, v in pairs) + b"mn\r\n")
        failures = 0
        while (line := self.wire.line()) != b"MN":
            if not line.startswith(b"SERVER_ERROR"):
                raise ReplyError(line)
            failures += 1
        return [not failures] * len(keys)  # a quiet failure does not say which set it was: none is acknowledged

    def get_batch(self, keys: list[bytes]) -> dict[bytes, bytes]:
        self.wire.send(b"".join(b"mg %s k v q\r\n" % k for k in keys) + b"mn\r\n")
        found = {}
        while (line := self.wire.line()) != b"MN":
            words = line.split()
            if words[0] != b"VA":
                raise ReplyError(line)
            found[words[2][1:]] = self.wire.read_exactly(int(words[1]) + 2)[:-2]
        return found


class BinaryOne(OneAtATime):
    """The binary protocol: SET, GET, DELETE."""

    kind = "binary"

    def set_one(self, key: bytes, value: bytes) -> bool:
        self.wire.send(binary.request(binary.SET, key, value, struct.pack(">II", 0, 0)))
        return self.wire.packet()[1] == binary.SUCCESS

    def get_one(self, key: bytes) -> Optional[bytes]:
        self.wire.send(binary.request(binary.GET, key))
        _, status, _, _, value = self.wire.packet()
        if status not in (binary.SUCCESS, binary.KEY_ENOENT):
            raise ReplyError(f"binary get status {status:#x}")
        return value if status == binary.SUCCESS else None

    def delete_one(self, key: bytes) -> bool:
        self.wire.send(binary.request(binary.DELETE, key))
        return self.wire.packet()[1] in (binary.SUCCESS, binary.KEY_ENOENT)  # not found: gone all the same


class BinaryQuiet(Pipelined):
    """Binary quiet opcodes pipelined: SETQ x N then NOOP; GETKQ x N then NOOP."""

    kind = "binary quiet"

    def set_batch(self, keys: list[bytes], values: list[bytes]) -> list[bool]:
        extras = struct.pack(">II", 0, 0)
        pairs = enumerate(zip(keys, values, strict=True))
        batch = b"".join(binary.request(binary.SETQ, k, v, extras, opaque=i) for i, (k, v) in pairs)
        self.wire.send(batch + binary.request(binary.NOOP, opaque=len(keys)))
        failed = {opaque for _, _, opaque, _, _ in self.until_noop()}
        return [i not in failed for i in range(len(keys))]

    def get_batch(self, keys: list[bytes]) -> dict[bytes, bytes]:
        self.wire.send(b"".join(binary.request(binary.GETKQ, k) for k in keys) + binary.request(binary.NOOP))
        return {key: value for _, status, _, key, value in self.until_noop() if status == binary.SUCCESS}

    def until_noop(self) -> Iterable[tuple[int, int, int, bytes, bytes]]:
        """The replies before the NOOP's."""
        while (reply := self.wire.packet())[0] != binary.NOOP:
            yield reply


WORKERS = [PymemcacheOne, PymemcacheMany, TextPipelined, MetaOne, MetaQuiet, BinaryOne, BinaryQuiet]


class Monitor(Client):
    """Reads ``stats`` a few times a second, for the counters of the server's
    current life (evictions above all: a miss is judged by them)."""

    kind = "monitor"

    def __init__(self, soak: Soak) -> None:
        super().__init__(soak, "soak-monitor")
        self.polls = 0
        self.unwritable_polls = 0

    def step(self) -> None:
        stats = self.wire.stats()
        self.soak.note_stats(stats)
        self.polls += 1
        self.unwritable_polls += stats.get("data_file_writable", 1) == 0
        time.sleep(0.25)


# -- the server process, and the soak that drives it ---------------------------------------


class StartFailed(Exception):
    """The server did not start listening."""


class Server:
    """The ``mcl serve`` subprocess of the moment (see :func:`serve_with_faults`)."""

    def __init__(self, work: Path, memory: int, compact_min_size: str) -> None:
        self.data_dir = work / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = work / "server.log"
        self.options = ["--fsync", "always", "-m", str(memory), "--compact-min-size", compact_min_size]
        self.proc: Optional[subprocess.Popen] = None
        self.start_seconds: list[float] = []

    def start(self, timeout: float = 300.0) -> int:
        """Start a server on the data file; returns its port once it listens."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        cmd = [sys.executable, str(SCRIPT), "--serve-with-faults", str(self.data_dir), "--", "--port", "0"]
        cmd += ["--data-file", str(self.data_dir / "data.txt"), "--cpu", "none", *self.options]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while time.monotonic() < started + timeout:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                match = re.search(rb"listening on [\d.]+:(\d+)", log.read())
            if match:
                self.start_seconds.append(time.monotonic() - started)
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise StartFailed(self.tail(offset))
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        raise StartFailed(f"no 'listening' line in {timeout:.0f} s\n" + self.tail(offset))

    def tail(self, offset: int) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read()[-4000:].decode(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 120.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_lines(self, level: str) -> collections.Counter[str]:
        """How many lines of ``level`` each logger wrote, over every life."""
        found: collections.Counter[str] = collections.Counter()
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = re.match(r"\S+ \S+ (\w+) ([\w.]+):", line)
            if match and match.group(1) == level:
                found[match.group(2)] += 1
        return found


class Soak:
    """Runs the whole thing (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.seed = args.seed
        self.rng = random.Random(args.seed)
        self.keys_per_client = args.keys
        self.server = Server(work, args.memory, args.compact_min_size)
        self.cond = threading.Condition()
        self.generation = 0
        self.port: Optional[int] = None
        self.down = True
        self.finished = False
        self.parked = 0
        self.life: dict[str, int] = {}
        self.past: collections.Counter[str] = collections.Counter()  # counters of the lives before this one
        self.workers = [kind(self, i) for i, kind in enumerate(WORKERS * args.clients_per_kind)]
        self.monitor = Monitor(self)
        self.stops: collections.Counter[str] = collections.Counter()
        self.faults: collections.Counter[str] = collections.Counter()
        self.compacts_asked = 0
        self.checks: list[Verdicts] = []
        self.errors: list[str] = []
        self._fault_turn = itertools.cycle(range(len(FAULTS)))

    # -- what clients and the monitor share ----------------------------------------------

    def wait_for_server(self, seen: int) -> tuple[Optional[int], int]:
        """The next server's port and generation once there is one past ``seen`` (None: the soak is over)."""
        with self.cond:
            while not self.finished and self.generation == seen:
                self.cond.wait()
            return (None if self.finished else self.port), self.generation

    def park(self) -> None:
        with self.cond:
            self.parked += 1
            self.cond.notify_all()

    def note_stats(self, stats: dict[str, int]) -> None:
        with self.cond:
            self.life = stats

    def evictions_seen(self) -> int:
        with self.cond:
            return self.past["evictions"] + self.life.get("evictions", 0)

    def total(self, name: str) -> int:
        with self.cond:
            return self.past[name] + self.life.get(name, 0)

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> int:
        args = self.args
        deadline = time.monotonic() + args.minutes * 60
        port = self.server.start()
        self.prefill(port)
        self.checks.append(self.check(port))
        for thread in [*self.workers, self.monitor]:
            thread.start()
        stops = itertools.cycle(STOPS)
        try:
            while True:
                self.go(port)
                life_end = min(deadline, time.monotonic() + args.restart_every * self.rng.uniform(0.7, 1.3))
                self.serve_until(life_end, port)
                last = time.monotonic() >= deadline
                how = "clean stop" if last else next(stops)
                self.stop(port, how)
                port = self.server.start()
                self.checks.append(self.check(port))
                self.progress(how)
                if last:
                    break
        finally:
            with self.cond:
                self.finished = True
                self.cond.notify_all()
            if self.server.alive():
                self.server.signal(signal.SIGTERM)
                if self.server.wait() != 0:
                    self.errors.append("the last clean stop did not exit 0")
        return self.report()

    def progress(self, how: str) -> None:
        """One line on standard error per restart, for a long run."""
        check = self.checks[-1]
        print(
            f"soak: {time.strftime('%H:%M:%S')} restart {len(self.checks) - 1} after a {how}: started in "
            f"{self.server.start_seconds[-1]:.2f} s; {check.ok} as acknowledged, {check.evicted} evicted, "
            f"{check.unconfirmed} unacknowledged changes found, {len(check.losses)} losses",
            file=sys.stderr,
            flush=True,
        )

    def go(self, port: int) -> None:
        with self.cond:
            self.port = port
            self.generation += 1
            self.down = False
            self.parked = 0
            self.life = {}
            self.cond.notify_all()

    def prefill(self, port: int) -> None:
        """Fill memory with keys of no client, so that evictions go on from the start."""
        wire = Wire(port)
        try:
            value = b"f" * 1000
            for start in itertools.count(0, 100):
                batch = b"".join(b"set fill:%d 0 0 1000\r\n%s\r\n" % (i, value) for i in range(start, start + 100))
                wire.send(batch)
                replies = [wire.line() for _ in range(100)]
                if set(replies) != {b"STORED"}:
                    raise StartFailed(f"prefill answered {set(replies)}")
                if wire.stats().get("evictions", 0):
                    return
        finally:
            wire.close()

    def serve_until(self, end: float, port: int) -> None:
        """Let the clients run; meanwhile ask for compactions and inject faults."""
        args = self.args
        control = Wire(port)
        next_compact = time.monotonic() + args.compact_every * self.rng.uniform(0.5, 1.5)
        next_fault = time.monotonic() + args.fault_every * self.rng.uniform(0.5, 1.5)
        try:
            while time.monotonic() < end:
                time.sleep(0.1)
                if not self.server.alive():
                    self.errors.append(f"the server exited by itself ({self.server.proc.returncode})")  # type: ignore[union-attr]
                    return
                now = time.monotonic()
                if now >= next_compact:
                    self.compact(control)
                    next_compact = now + args.compact_every * self.rng.uniform(0.5, 1.5)
                if now >= next_fault:
                    self.inject_fault()
                    next_fault = now + args.fault_every * self.rng.uniform(0.5, 1.5)
        finally:
            control.close()

    def compact(self, control: Wire) -> None:
        control.send(b"compact\r\n")
        reply = control.line()
        if reply != b"OK":
            self.errors.append(f"compact answered {reply!r}")
        self.compacts_asked += 1

    def inject_fault(self) -> None:
        turn = next(self._fault_turn)
        self.server.signal(signal.SIGRTMIN + turn)
        self.faults[FAULTS[turn][3]] += 1

    def stop(self, port: int, how: str) -> None:
        """Stop the server as ``how`` says, the clients still running; wait
        until every client has noticed."""
        self.stops[how] += 1
        if self.server.alive():
            control = Wire(port)
            try:
                if how == "kill during a compaction":
                    self.compact(control)
                    time.sleep(self.rng.uniform(0, 0.3))
                elif how == "kill after a fault":
                    self.inject_fault()
                    time.sleep(self.rng.uniform(0, 1.0))
                self.note_stats(control.stats())  # the evictions up to this moment
            finally:
                control.close()
            with self.cond:
                self.down = True
            self.server.signal(signal.SIGTERM if how == "clean stop" else signal.SIGKILL)
        else:
            with self.cond:
                self.down = True
        code = self.server.wait()
        if how == "clean stop" and code != 0:
            self.errors.append(f"a clean stop exited {code}")
        with self.cond:
            deadline = time.monotonic() + 120
            while self.parked < len(self.workers) + 1:
                if not self.cond.wait(max(deadline - time.monotonic(), 0)):
                    raise RuntimeError(f"clients did not stop: {self.parked} of {len(self.workers) + 1}")
            self.past.update(self.life)
            self.life = {}

    def check(self, port: int) -> Verdicts:
        """Read every key back from a restarted server and judge it."""
        verdicts = Verdicts()
        evictions = self.evictions_seen()
        wire = Wire(port)
        try:
            for worker in self.workers:
                ledger = worker.ledger
                keys = list(ledger.state)
                for start in range(0, len(keys), 100):
                    chunk = keys[start : start + 100]
                    wire.send(b"get " + b" ".join(chunk) + b"\r\n")
                    found = wire.values()
                    for key in chunk:
                        ledger.judge(key, found.get(key), evictions, verdicts)
                        ledger.settle(key, found.get(key))
        finally:
            wire.close()
        return verdicts

    # -- the summary -------------------------------------------------------------------------

    def report(self) -> int:
        args = self.args
        ops: collections.Counter[str] = collections.Counter()
        online = Verdicts()
        unexpected: list[str] = []
        for worker in self.workers:
            ops.update(worker.ops)
            online.ok += worker.verdicts.ok
            online.missed += worker.verdicts.missed + worker.verdicts.absent
            online.unconfirmed += worker.verdicts.unconfirmed
            online.losses += worker.verdicts.losses
            unexpected += worker.unexpected
        unexpected += self.monitor.unexpected
        losses = [loss for check in self.checks for loss in check.losses] + online.losses
        kills = sum(n for how, n in self.stops.items() if how != "clean stop")
        starts = self.server.start_seconds
        warnings = self.server.log_lines("WARNING")
        errors = self.server.log_lines("ERROR")
        total = sum(n for kind, n in ops.items() if not kind.endswith("refused"))
        refused = sum(n for kind, n in ops.items() if kind.endswith("refused"))
        out = [
            f"soak: {args.minutes:g} minutes, mcl serve {' '.join(self.server.options)}, "
            f"{len(self.workers)} clients, seed {args.seed}",
            f"operations          {total:,} ({total / max(args.minutes * 60, 1):,.0f}/s); "
            f"answered with an error: {refused:,}",
        ]
        out += [f"  {kind:32} {n:>12,}" for kind, n in sorted(ops.items())]
        out += [
            f"restarts            {len(starts) - 1} (kills {kills}; "
            + ", ".join(f"{how} {n}" for how, n in sorted(self.stops.items()))
            + f"); start-up {min(starts):.2f}-{max(starts):.2f} s",
            f"compactions         {self.total('compactions')} done ({self.compacts_asked} asked with the compact "
            f"verb, the rest started by the server), {self.total('compaction_failures')} failed",
            f"evictions           {self.total('evictions'):,} (stats evictions over every life); "
            f"eviction warnings logged {warnings['memcachedlite.storage.evictions']}",
            f"faults injected     {sum(self.faults.values())} ("
            + ", ".join(f"{name} {n}" for name, n in sorted(self.faults.items()))
            + f"); data_file_errors seen {self.total('data_file_errors')}; "
            f"writes refused while recovering in {self.monitor.unwritable_polls} of {self.monitor.polls} polls",
            f"server log          warnings {dict(warnings)}, errors {dict(errors)}",
            f"checks              {len(self.checks)} starts x "
            f"{sum(len(w.ledger.state) for w in self.workers):,} keys: "
            f"{sum(c.ok for c in self.checks):,} present as acknowledged, {sum(c.absent for c in self.checks):,} "
            f"absent as acknowledged, {sum(c.unconfirmed for c in self.checks):,} with an unacknowledged change, "
            f"{sum(c.evicted for c in self.checks):,} evicted",
            f"reads while serving {online.ok + online.unconfirmed + len(online.losses):,} values judged, "
            f"{online.missed:,} misses",
            f"connections lost    {len(unexpected)} while the server ran",
        ]
        out += [f"  {lost}" for lost in sorted(unexpected)[:10]]
        out += [f"losses              {len(losses)}"]
        out += [f"  LOSS {loss}" for loss in losses[:20]]
        out += [f"  ERROR {error}" for error in self.errors]
        print("\n".join(out), flush=True)
        return 1 if losses or self.errors else 0


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-with-faults":
        rest = sys.argv[3:]
        serve_with_faults(sys.argv[2], rest[1:] if rest[:1] == ["--"] else rest)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    parser.add_argument("--restart-every", type=float, default=180.0, help="seconds between stops, +-30%% (180)")
    parser.add_argument("--compact-every", type=float, default=40.0, help="seconds between compact verbs, +-50%% (40)")
    parser.add_argument("--fault-every", type=float, default=60.0, help="seconds between injected faults, +-50%% (60)")
    parser.add_argument("--memory", type=int, default=4, help="the server's -m, MiB (4)")
    parser.add_argument("--compact-min-size", default="8m", help="the server's --compact-min-size (8m)")
    parser.add_argument("--keys", type=int, default=1000, help="keys per client (1000)")
    parser.add_argument("--clients-per-kind", type=int, default=1, help="clients of each of the 7 kinds (1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, help="keep the data file and server log here (default: a temporary folder)")
    args = parser.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        work = args.dir
        code = _run(args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="mcl-soak-") as tmp:
            code = _run(args, Path(tmp))
    sys.exit(code)


def _run(args: argparse.Namespace, work: Path) -> int:
    soak = Soak(args, work)
    try:
        return soak.run()
    except StartFailed as exc:
        print(f"soak: the server did not start:\n{exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    main()
