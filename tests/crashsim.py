"""A crash simulator for the data file: record what the server asks of the
file system, then build the files a power loss could leave behind.

:class:`FsRecorder` stands in for ``fileio.system``, through which the data
file's code makes its system calls (:mod:`memcachedlite.storage.fileio`), and
for the ``os`` module of any other module that touches the data file: every
call passes through to the real ``os``, and the writes, fsyncs, truncations,
renames and unlinks made on files of one directory are kept as a list of
:class:`Op`. It can also make a chosen call fail (``EIO``,
``ENOSPC``), or run a hook first (to hold an fsync on an event).

:class:`Trace` replays that list up to any moment and builds a
:class:`CrashState`: each file as of its last fsync, plus any part of the
later writes, at 4 KiB page granularity (each page written, left as it was,
zero-filled, or torn at 512-byte sector granularity, in any combination, so a
later page may be there while an earlier one is not), with the length cut
anywhere between the synced size and the written size. Directory changes
(creation, rename, unlink) are durable once the directory was fsynced; before
that, any prefix of them may have reached the disk, since file systems
journal them in order.

Everything random takes a :class:`random.Random`, so a seed gives the same
states every run.
"""

from __future__ import annotations

import errno as errnos
import fcntl
import importlib
import os as real_os
import random
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from memcachedlite import MemcacheServer, Store
from memcachedlite.protocols.session import Session
from tests.conftest import Raw, Running

PAGE = 4096
SECTOR = 512

#: How each unsynced page may come out of a power cut: as written, as it was
#: on disk, zero-filled, torn (each sector new or old), or stale (the sectors
#: past the synced end hold leftover bytes of some earlier use of the block).
NEW, OLD, ZERO, TORN, STALE = "new", "old", "zero", "torn", "stale"

#: The kinds of call a fault or a hook can be attached to.
KINDS = ("open", "write", "fsync", "dirsync", "truncate", "rename", "unlink")


@dataclass(frozen=True)
class Op:
    """One change the server made to a file or to the directory.

    ``kind`` is one of ``create``, ``write``, ``truncate``, ``fsync``
    (``inode``'s data is durable as of op number ``upto``), ``dirsync`` (the
    directory's entries are durable as of op number ``upto``), ``rename``
    (``name`` to ``dest``) and ``unlink``.
    """

    kind: str
    inode: int = -1
    name: str = ""
    dest: str = ""
    offset: int = 0
    data: bytes = b""
    length: int = 0
    upto: int = 0


@dataclass
class Fault:
    """Make calls of one kind fail: the ``nth`` one counted from now, and
    every later one too when ``persistent`` (until :meth:`FsRecorder.heal`).

    ``short`` makes the first failing write write half its bytes and return
    instead of raising (a short write; the next ones fail if persistent).
    ``lose_unsynced`` makes a failing fsync also zero what was written since
    the last good fsync of that file, in the real file: the kernel dropping
    dirty pages after a failed writeback ("fsyncgate"), so a server that
    retries the fsync and carries on is caught.
    """

    kind: str
    nth: int = 1
    errno: int = errnos.EIO
    persistent: bool = False
    short: bool = False
    lose_unsynced: bool = False
    name: Optional[str] = None  # only calls on the file of this name, as it is named now (None: any file)
    seen: int = 0
    fired: int = 0


@dataclass
class CrashState:
    """The files a power loss left in the directory, and how they were built."""

    files: dict[str, bytes]
    at: int
    how: str = ""

    def write_to(self, directory: Union[str, Path]) -> Path:
        """Create the files in ``directory`` (made if missing); return it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (directory / name).write_bytes(data)
        return directory


@dataclass
class _Fd:
    inode: int  # -1: the directory itself
    append: bool
    name: str


class FsRecorder:
    """An ``os`` module look-alike that records and can fail calls on the
    files of ``directory``; everything else goes straight to the real ``os``.

    Install it with ``recorder.install(monkeypatch, memcachedlite.storage.datafile)``.
    The files already in ``directory`` count as durable.
    """

    def __init__(self, directory: Union[str, Path], real: Any = real_os) -> None:
        self._os = real
        self.directory = real.path.abspath(real.fspath(directory))
        self._lock = threading.RLock()
        self.ops: list[Op] = []
        self.initial_names: dict[str, int] = {}
        self.initial_data: dict[int, bytes] = {}
        self._inodes = 0
        self._by_ino: dict[int, int] = {}
        self._fds: dict[int, _Fd] = {}
        self.faults: list[Fault] = []
        self.hooks: dict[str, Callable[[str], None]] = {}
        self.calls = dict.fromkeys(KINDS, 0)
        for entry in sorted(real.scandir(self.directory), key=lambda e: e.name):
            if entry.is_file(follow_symlinks=False):
                inode = self._new_inode(entry.inode())
                self.initial_names[entry.name] = inode
                with open(entry.path, "rb") as f:
                    self.initial_data[inode] = f.read()

    # -- set-up -------------------------------------------------------------

    def install(self, monkeypatch: Any, *modules: Any) -> "FsRecorder":
        """Put this recorder in place of ``os`` in each of ``modules``, and
        of ``system`` in those that have one (:mod:`memcachedlite.storage.fileio`,
        which the data file's code, compiled or not, calls through)."""
        for module in modules:
            monkeypatch.setattr(module, "os", self)
            if hasattr(module, "system"):
                monkeypatch.setattr(module, "system", self)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._os, name)

    @property
    def position(self) -> int:
        """The number of ops recorded so far: a moment a crash can be placed at."""
        with self._lock:
            return len(self.ops)

    def trace(self) -> "Trace":
        """What was recorded up to now."""
        with self._lock:
            return Trace(dict(self.initial_names), dict(self.initial_data), list(self.ops))

    # -- faults -------------------------------------------------------------

    def fail(self, kind: str, nth: int = 1, err: int = errnos.EIO, **options: Any) -> Fault:
        """Arm a :class:`Fault` on calls of ``kind`` (see :data:`KINDS`)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        fault = Fault(kind, nth, err, **options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def heal(self) -> None:
        """Disarm every fault: the disk works again."""
        with self._lock:
            self.faults.clear()

    def _fault(self, kind: str, name: str) -> Optional[Fault]:
        """Count a call of ``kind``; the fault that fires on it, if any."""
        with self._lock:
            self.calls[kind] += 1
            for fault in self.faults:
                if fault.kind != kind or (fault.name is not None and fault.name != name):
                    continue
                fault.seen += 1
                if fault.seen == fault.nth or (fault.persistent and fault.seen > fault.nth):
                    fault.fired += 1
                    return fault
        return None

    def _hook(self, kind: str, name: str) -> None:
        hook = self.hooks.get(kind)
        if hook is not None:
            hook(name)

    @staticmethod
    def _raise(fault: Fault, what: str) -> None:
        raise OSError(fault.errno, f"{real_os.strerror(fault.errno)} (injected on {what})")

    # -- bookkeeping --------------------------------------------------------

    def _new_inode(self, ino: int) -> int:
        self._inodes += 1
        self._by_ino[ino] = self._inodes
        return self._inodes

    def _name(self, path: Any, dir_fd: Optional[int] = None) -> Optional[str]:
        """The name of ``path`` inside the watched directory, or None."""
        if dir_fd is not None:
            return None
        full = self._os.path.abspath(self._os.fspath(path))
        if full == self.directory:
            return "."
        parent, name = self._os.path.split(full)
        return name if parent == self.directory else None

    def _tracked(self, fd: int) -> Optional[_Fd]:
        known = self._fds.get(fd)
        if known is not None:
            return known
        try:
            st = self._os.fstat(fd)
        except OSError:
            return None
        inode = self._by_ino.get(st.st_ino)
        if inode is None or not stat.S_ISREG(st.st_mode):
            return None
        known = _Fd(inode, bool(fcntl.fcntl(fd, fcntl.F_GETFL) & self._os.O_APPEND), "")
        self._fds[fd] = known
        return known

    def _record(self, op: Op) -> None:
        self.ops.append(op)

    # -- the os functions the server uses -----------------------------------

    def open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: Optional[int] = None) -> int:
        name = self._name(path, dir_fd)
        if name is None:
            return self._os.open(path, flags, mode, dir_fd=dir_fd)
        if name != ".":
            fault = self._fault("open", name)
            if fault is not None:
                self._raise(fault, f"open {name}")
        with self._lock:
            existed = self._os.path.lexists(path)
            fd = self._os.open(path, flags, mode)
            if name == ".":
                self._fds[fd] = _Fd(-1, False, ".")
                return fd
            ino = self._os.fstat(fd).st_ino
            if not existed:
                inode = self._new_inode(ino)
                self._record(Op("create", inode, name))
            else:
                inode = self._by_ino.get(ino) or self._new_inode(ino)
                if flags & self._os.O_TRUNC:
                    self._record(Op("truncate", inode, name, length=0))
            self._fds[fd] = _Fd(inode, bool(flags & self._os.O_APPEND), name)
            return fd

    def write(self, fd: int, data: Any) -> int:
        return self._write(fd, data, None)

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        return self._write(fd, data, offset)

    def _write(self, fd: int, data: Any, offset: Optional[int]) -> int:
        with self._lock:
            known = self._tracked(fd)
            if known is None or known.inode < 0:
                if offset is None:
                    return self._os.write(fd, data)
                return self._os.pwrite(fd, data, offset)
            fault = self._fault("write", known.name)
            data = bytes(data)
            if fault is not None:
                if not (fault.short and fault.fired == 1):
                    self._raise(fault, f"write to {known.name}")
                data = data[: max(len(data) // 2, 1)]
            if offset is not None:
                # on Linux, pwrite to an O_APPEND descriptor appends all the same
                at = self._os.fstat(fd).st_size if known.append else offset
                written = self._os.pwrite(fd, data, offset)
            else:
                at = self._os.fstat(fd).st_size if known.append else self._os.lseek(fd, 0, self._os.SEEK_CUR)
                written = self._os.write(fd, data)
            self._record(Op("write", known.inode, known.name, offset=at, data=data[:written]))
            return written

    def ftruncate(self, fd: int, length: int) -> None:
        with self._lock:
            known = self._tracked(fd)
            if known is None or known.inode < 0:
                return self._os.ftruncate(fd, length)
            fault = self._fault("truncate", known.name)
            if fault is not None:
                self._raise(fault, f"truncate of {known.name}")
            self._os.ftruncate(fd, length)
            self._record(Op("truncate", known.inode, known.name, length=length))

    def fsync(self, fd: int) -> None:
        self._sync(fd, self._os.fsync)

    def fdatasync(self, fd: int) -> None:
        self._sync(fd, self._os.fdatasync)

    def _sync(self, fd: int, call: Callable[[int], None]) -> None:
        with self._lock:
            known = self._fds.get(fd) or self._tracked(fd)
            upto = len(self.ops)
        if known is None:
            return call(fd)
        kind = "dirsync" if known.inode < 0 else "fsync"
        self._hook(kind, known.name)
        fault = self._fault(kind, known.name)
        if fault is not None:
            if fault.lose_unsynced and known.inode >= 0:
                self._lose_unsynced(fd, known)
            self._raise(fault, f"fsync of {known.name}")
        call(fd)
        with self._lock:
            if known.inode < 0:
                self._record(Op("dirsync", upto=upto))
            else:
                self._record(Op("fsync", known.inode, known.name, upto=upto))

    def _lose_unsynced(self, fd: int, known: _Fd) -> None:
        """Zero, in the real file, every page written since the file's last
        good fsync: what a reader sees once the kernel dropped them."""
        with self._lock:
            trace = Trace(dict(self.initial_names), dict(self.initial_data), list(self.ops))
            durable = trace.durable_content(known.inode, len(self.ops))
            size = self._os.fstat(fd).st_size
            start = (len(durable) // PAGE) * PAGE
            if size > start:
                zeros = durable[start:] + bytes(size - len(durable))
                # a second descriptor without O_APPEND, where pwrite honours the offset
                plain = self._os.open(f"/proc/self/fd/{fd}", self._os.O_WRONLY)
                try:
                    self._os.pwrite(plain, zeros[: size - start], start)
                finally:
                    self._os.close(plain)
                self._record(Op("write", known.inode, known.name, offset=start, data=zeros[: size - start]))

    def rename(self, src: Any, dst: Any, **kwargs: Any) -> None:
        self._move(src, dst, self._os.rename, kwargs)

    def replace(self, src: Any, dst: Any, **kwargs: Any) -> None:
        self._move(src, dst, self._os.replace, kwargs)

    def _move(self, src: Any, dst: Any, call: Callable[..., None], kwargs: dict) -> None:
        old, new = self._name(src, kwargs.get("src_dir_fd")), self._name(dst, kwargs.get("dst_dir_fd"))
        if old is None or new is None:
            return call(src, dst, **kwargs)
        fault = self._fault("rename", old)
        if fault is not None:
            self._raise(fault, f"rename of {old}")
        with self._lock:
            call(src, dst, **kwargs)
            self._record(Op("rename", name=old, dest=new))
            for known in self._fds.values():  # faults and hooks go by the name a file has now
                if known.name == old:
                    known.name = new

    def unlink(self, path: Any, *, dir_fd: Optional[int] = None) -> None:
        name = self._name(path, dir_fd)
        if name is None:
            return self._os.unlink(path, dir_fd=dir_fd)
        fault = self._fault("unlink", name)
        if fault is not None:
            self._raise(fault, f"unlink of {name}")
        with self._lock:
            self._os.unlink(path)
            self._record(Op("unlink", name=name))

    remove = unlink

    def close(self, fd: int) -> None:
        with self._lock:
            self._fds.pop(fd, None)
            self._os.close(fd)


class Trace:
    """A recorded list of ops, replayed to build crash states."""

    def __init__(self, names: dict[str, int], data: dict[int, bytes], ops: list[Op]) -> None:
        self.initial_names = names
        self.initial_data = data
        self.ops = ops

    def __len__(self) -> int:
        return len(self.ops)

    def moments(self, *kinds: str) -> list[int]:
        """Crash points just before and just after each op of ``kinds``
        (every op when none is given), in order, without repeats."""
        points: set[int] = set()
        for i, op in enumerate(self.ops):
            if not kinds or op.kind in kinds:
                points.update((i, i + 1))
        return sorted(points)

    # -- contents -----------------------------------------------------------

    def content(self, inode: int, upto: int) -> bytes:
        """What ``inode`` holds (as the page cache shows it) after ops ``[0, upto)``."""
        buf = bytearray(self.initial_data.get(inode, b""))
        for op in self.ops[:upto]:
            if op.inode != inode:
                continue
            if op.kind == "write":
                end = op.offset + len(op.data)
                if end > len(buf):
                    buf.extend(bytes(end - len(buf)))
                buf[op.offset : end] = op.data
            elif op.kind == "truncate":
                del buf[op.length :]
                if op.length > len(buf):
                    buf.extend(bytes(op.length - len(buf)))
        return bytes(buf)

    def synced_upto(self, inode: int, at: int) -> int:
        """The op number up to which ``inode``'s data was durable at moment ``at``."""
        upto = 0
        for op in self.ops[:at]:
            if op.kind == "fsync" and op.inode == inode:
                upto = max(upto, op.upto)
        return upto

    def durable_content(self, inode: int, at: int) -> bytes:
        """What ``inode`` surely holds on disk at moment ``at``."""
        return self.content(inode, self.synced_upto(inode, at))

    def dirty_pages(self, inode: int, at: int) -> set[int]:
        """Pages of ``inode`` changed after its last fsync and before ``at``."""
        pages: set[int] = set()
        start = self.synced_upto(inode, at)
        for op in self.ops[start:at]:
            if op.inode != inode:
                continue
            if op.kind == "write" and op.data:
                pages.update(range(op.offset // PAGE, (op.offset + len(op.data) - 1) // PAGE + 1))
            elif op.kind == "truncate":
                pages.add(op.length // PAGE)
        return pages

    # -- names --------------------------------------------------------------

    def _apply_dir_op(self, names: dict[str, int], op: Op) -> None:
        if op.kind == "create":
            names[op.name] = op.inode
        elif op.kind == "rename":
            inode = names.pop(op.name, None)
            if inode is not None:
                names[op.dest] = inode
        elif op.kind == "unlink":
            names.pop(op.name, None)

    def names(self, at: int) -> dict[str, int]:
        """The directory as the running server saw it at moment ``at``."""
        names = dict(self.initial_names)
        for op in self.ops[:at]:
            self._apply_dir_op(names, op)
        return names

    def dir_ops(self, at: int) -> tuple[dict[str, int], list[Op]]:
        """The directory as durable at ``at``, and the directory ops after it."""
        upto = max([op.upto for op in self.ops[:at] if op.kind == "dirsync"], default=0)
        names = dict(self.initial_names)
        for op in self.ops[:upto]:
            self._apply_dir_op(names, op)
        pending = [op for op in self.ops[upto:at] if op.kind in ("create", "rename", "unlink")]
        return names, pending

    # -- crash states -------------------------------------------------------

    def synced_state(self, at: int) -> CrashState:
        """Only what was fsynced: every later write and directory change lost."""
        names, _ = self.dir_ops(at)
        files = {name: self.durable_content(inode, at) for name, inode in names.items()}
        return CrashState(files, at, "synced only")

    def written_state(self, at: int) -> CrashState:
        """Everything written reached the disk (what kill -9 leaves)."""
        files = {name: self.content(inode, at) for name, inode in self.names(at).items()}
        return CrashState(files, at, "everything written")

    def crash_state(self, at: int, rng: random.Random, style: Optional[str] = None) -> CrashState:
        """One state a power loss at moment ``at`` could leave.

        ``style`` picks the kind of damage (random when None): ``cut`` (the
        unsynced tail written in order and cut anywhere), ``hole`` (every
        unsynced page written but one, left old or zeroed, the length kept),
        ``pages`` (each unsynced page independently new, old, zero or torn,
        the length anywhere), ``synced`` and ``written`` (the two extremes).
        """
        style = style or rng.choice(["cut", "cut", "hole", "hole", "pages", "pages", "pages", "synced", "written"])
        if style == "synced":
            return self.synced_state(at)
        if style == "written":
            return self.written_state(at)
        names, pending = self.dir_ops(at)
        kept = rng.randint(0, len(pending))
        for op in pending[:kept]:
            self._apply_dir_op(names, op)
        files: dict[str, bytes] = {}
        notes: list[str] = [f"{style}, {kept}/{len(pending)} directory ops"]
        for name, inode in sorted(names.items()):
            files[name], note = self._file_after_crash(inode, at, rng, style)
            if note:
                notes.append(f"{name}: {note}")
        return CrashState(files, at, "; ".join(notes))

    def crash_states(self, at: int, rng: random.Random, count: int) -> Iterator[CrashState]:
        """``count`` states for moment ``at``: the two extremes first, then random ones."""
        yield self.synced_state(at)
        if count > 1:
            yield self.written_state(at)
        for _ in range(count - 2):
            yield self.crash_state(at, rng)

    def _file_after_crash(self, inode: int, at: int, rng: random.Random, style: str) -> tuple[bytes, str]:
        durable = self.durable_content(inode, at)
        cached = self.content(inode, at)
        dirty = sorted(self.dirty_pages(inode, at))
        if not dirty and len(durable) == len(cached):
            return durable, ""
        low, high = min(len(durable), len(cached)), max(len(durable), len(cached))
        modes = dict.fromkeys(dirty, NEW)
        if style == "cut":
            length = rng.randint(low, high)
        elif style == "hole":
            length = len(cached)
            if dirty:
                modes[rng.choice(dirty)] = rng.choice([OLD, ZERO])
        else:
            length = rng.randint(low, high) if rng.random() < 0.5 else len(cached)
            for page in dirty:
                modes[page] = rng.choice([NEW, NEW, OLD, ZERO, TORN, STALE])
        out = bytearray(length)
        for page in range((length + PAGE - 1) // PAGE):
            start, end = page * PAGE, min((page + 1) * PAGE, length)
            mode = modes.get(page, OLD)
            stale = self._stale_page(inode, at, rng) if mode == STALE else b""
            for sector in range(start, end, SECTOR):
                stop = min(sector + SECTOR, end)
                how = mode if mode != TORN else rng.choice([NEW, OLD])
                out[sector:stop] = _bytes_of(how, durable, cached, sector, stop, stale)
        changed = [f"{p}:{m}" for p, m in modes.items() if m != NEW and p * PAGE < length]
        note = f"length {length} (synced {len(durable)}, written {len(cached)})"
        if changed:
            note += ", pages " + " ".join(changed)
        return bytes(out), note

    def _stale_page(self, inode: int, at: int, rng: random.Random) -> bytes:
        """What a block reused from elsewhere may hold: a page of another file
        of the directory (an older data file, whose records are valid ones,
        sync marks included), or noise."""
        inodes = set(self.initial_data) | {op.inode for op in self.ops[:at] if op.kind == "create"}
        others = [data for other in sorted(inodes - {inode}) if (data := self.content(other, at))]
        if others and rng.random() < 0.7:
            source = rng.choice(others)
            page = rng.randrange((len(source) + PAGE - 1) // PAGE)
            chunk = source[page * PAGE : (page + 1) * PAGE]
            return chunk + bytes(PAGE - len(chunk))
        return rng.randbytes(PAGE)


def _bytes_of(how: str, durable: bytes, cached: bytes, start: int, stop: int, stale: bytes) -> bytes:
    """Bytes ``[start, stop)`` of a sector as written (NEW) or as the disk had
    them (OLD; ZERO past the synced end, or the ``stale`` page's bytes for
    STALE). Data never fsynced may come back as zeros or leftovers; data
    fsynced always comes back."""
    size = stop - start
    chunk = cached[start:stop] if how == NEW else durable[start:stop]
    if how == STALE and len(chunk) < size:
        return chunk + stale[(start + len(chunk)) % PAGE : (stop - 1) % PAGE + 1]
    return chunk + bytes(size - len(chunk))


# -- memcachedlite glue ------------------------------------------------------


def modules_with_os() -> list:
    """Every memcachedlite module through which the server touches the data
    file: the ones a recorder must be installed in."""
    found = []
    for name in (
        "memcachedlite.storage.datafile",
        "memcachedlite.storage.repair",
        "memcachedlite.storage.fileio",
        "memcachedlite.storage.store",
        "memcachedlite.storage.durability",
    ):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "os", None) is not None:
            found.append(module)
    return found


def state_of(store: Any, cas: bool = True) -> dict[bytes, tuple]:
    """What a client could read back from a store: value, flags, expiry, cas
    (unless ``cas`` is False) and the stale mark of each live key (not what
    only lives in memory, such as the last access time)."""
    out = {}
    for key in store.keys():
        item = store.peek(key)
        if item is not None:
            out[key] = (item.value, item.flags, item.exptime, item.cas if cas else 0, item.stale)
    return out


def differences(one: dict, other: dict) -> dict:
    """The keys two :func:`state_of` results disagree on, with both sides
    (long values cut short, so that a failure message stays readable)."""

    def brief(entry: Optional[tuple]) -> Optional[tuple]:
        if entry is None or len(entry[0]) <= 20:
            return entry
        return (entry[0][:12] + b"...(%d bytes)" % len(entry[0]), *entry[1:])

    keys = set(one) | set(other)
    return {k: (brief(one.get(k)), brief(other.get(k))) for k in sorted(keys) if one.get(k) != other.get(k)}


#: A fixed clock for every store of these tests, so that expiry times
#: compare equal across restarts.
NOW = 1_800_000_000
#: How long the server may take to notice a failure or to recover from one:
#: a bound on waiting for a condition, not a performance threshold.
PATIENCE = 30.0


def clock() -> float:
    return NOW


def new_durable_data_file(path: Path) -> None:
    """Create an empty data file and make it and its name durable, so that
    recording starts from a state a power loss cannot take back."""
    Store(path, fsync="always", clock=clock).close()
    fd = real_os.open(path.parent, real_os.O_RDONLY)
    try:
        real_os.fsync(fd)
    finally:
        real_os.close(fd)


def stats(client: Raw) -> dict[str, str]:
    reply = client.ask(b"stats\r\n")
    assert reply.endswith(b"END\r\n"), f"stats answered {reply!r}"
    lines = reply.decode().split("\r\n")
    return {p[1]: p[2] for p in (line.split(" ", 2) for line in lines) if len(p) == 3 and p[0] == "STAT"}


def is_error(reply: bytes) -> bool:
    """A well-formed ``SERVER_ERROR <reason>`` (and only that kind of failure)."""
    return reply.startswith(b"SERVER_ERROR ") and len(reply.strip()) > len(b"SERVER_ERROR ")


class Disk:
    """A real server (on port 0) over a data file whose calls go through a
    :class:`FsRecorder` that can fail them, with a connection to it, and an
    in-memory shadow that replays what the server acknowledged."""

    def __init__(self, directory: Path, monkeypatch: Any, policy: str) -> None:
        directory.mkdir()
        self.path = directory / "data.txt"
        self.policy = policy
        new_durable_data_file(self.path)
        self.recorder = FsRecorder(directory).install(monkeypatch, *modules_with_os())
        self.store = Store(self.path, fsync=policy, clock=clock, compact_min_size=1 << 40)
        self.shadow = Session(Store(clock=clock))
        server = MemcacheServer(("127.0.0.1", 0), self.store)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self.running: Optional[Running] = Running(server, thread)
        self.port = server.port
        self.client = Raw(self.port)
        self.probes = 0

    def run(self, commands: list[bytes]) -> list[bytes]:
        """Send ``commands`` as one pipelined batch; return the replies, and
        replay on the shadow each one that was not refused."""
        self.client.send(b"".join(commands))
        replies = [self.client.reply() for _ in commands]
        for command, reply in zip(commands, replies, strict=True):
            assert not reply.startswith(b"SERVER_ERROR") or is_error(reply), reply
            if not is_error(reply):
                expected = self.shadow.feed(command)
                assert expected == reply, f"{command[:40]!r} got {reply!r}, not {expected!r}: out of order?"
        return replies

    def probe(self) -> bytes:
        """One write; the shadow follows it if it was taken."""
        self.probes += 1
        return self.run([b"set probe 0 0 %d\r\n%d\r\n" % (len(b"%d" % self.probes), self.probes)])[0]

    def wait_for(self, condition, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + PATIENCE
        while not condition():
            assert time.monotonic() < deadline, f"gave up waiting for {what}"
            time.sleep(0.02)

    def stat(self, name: str) -> str:
        found = stats(self.client)
        assert name in found, f"stats has no {name}"
        return found[name]

    def check_memory(self) -> None:
        """Memory holds exactly the acknowledged changes: nothing half-applied.
        (cas values are left out: a refused change may use up a number.)"""
        assert state_of(self.store, cas=False) == state_of(self.shadow.store, cas=False)

    def check_reads(self) -> None:
        for key in (b"a", b"n", b"big1"):
            reply = self.client.ask(b"get %s\r\n" % key)
            assert reply.startswith((b"VALUE ", b"END")), reply
        assert self.client.ask(b"mn\r\n") == b"MN\r\n"

    def recover(self) -> None:
        """Let the disk work again and wait until the server takes writes."""
        self.recorder.heal()
        self.wait_for(lambda: self.probe() == b"STORED\r\n", "writes to resume after the fault stopped")
        assert self.stat("data_file_writable") == "1"

    def file_matches(self) -> None:
        """While the server runs, a copy of its data file loads what it holds."""
        copy = self.path.with_name("copy")
        copy.mkdir(exist_ok=True)
        (copy / "data.txt").write_bytes(self.path.read_bytes())
        loaded = Store(copy / "data.txt", fsync="no", clock=clock)
        try:
            differ = differences(state_of(loaded), state_of(self.store))
            assert not differ, f"the data file and memory differ (key: (file, memory)): {differ}"
        finally:
            loaded.close()
            (copy / "data.txt").unlink()

    def restart_matches(self) -> None:
        """What a restart from the file loads is what the server held and
        what was acknowledged."""
        self.check_memory()
        held = state_of(self.store)
        self.stop()
        restarted = Store(self.path, fsync=self.policy, clock=clock)
        try:
            differ = differences(state_of(restarted), held)
            assert not differ, f"a restart and the server differ (key: (restart, server)): {differ}"
        finally:
            restarted.close()

    def stop(self) -> None:
        if self.running is not None:
            self.client.close()
            self.running.stop()
            self.running = None
            self.recorder.heal()
            self.store.close()
            self.shadow.store.close()
