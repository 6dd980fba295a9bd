"""Shared fixtures: stores in tmp_path, real servers on port 0 (in-process and
as subprocesses), the real memcached, and a small raw-socket client; and the
``external`` marker's rules (tests/external.py), for every test."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from memcachedlite import MemcacheServer, Registry, Settings, Store, default_registry
from tests.external import (  # noqa: F401 - hooks and an autouse fixture, found by name
    external_programs_need_the_marker,
    pytest_collection_modifyitems,
    pytest_configure,
)

ROOT = Path(__file__).resolve().parent.parent


class Raw:
    """A raw socket speaking bytes, with just enough parsing to read one reply."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def readline(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def reply(self) -> bytes:
        """One whole reply: a single line, VALUE/STAT lines up to END, or a
        meta ``VA`` line with its data block."""
        line = self.readline()
        out = line
        if line.startswith(b"VA "):
            return out + self.read_exactly(int(line.split()[1]) + 2)
        while line.startswith((b"VALUE ", b"STAT ")):
            if line.startswith(b"VALUE "):
                size = int(line.split()[3])
                out += self.read_exactly(size + 2)
            line = self.readline()
            out += line
        return out

    def ask(self, data: bytes, replies: int = 1) -> bytes:
        """Send ``data`` and return the next ``replies`` replies, concatenated."""
        self.send(data)
        return b"".join(self.reply() for _ in range(replies))

    def closed_by_peer(self, wait: float = 5.0) -> bool:
        """True once the server has closed its side (reads return EOF)."""
        self.sock.settimeout(wait)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def quiet(self, wait: float = 0.2) -> bool:
        """True if nothing more arrives within ``wait`` seconds."""
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return not self.buf
        finally:
            self.sock.settimeout(10.0)
        self.buf += chunk
        return False

    def close(self) -> None:
        self.sock.close()


class Running:
    """An in-process server on its own thread."""

    def __init__(self, server: MemcacheServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread
        self.port = server.port
        self.store = server.store

    def stop(self) -> None:
        self.server.stopping.set()
        self.server.shutdown()
        self.thread.join(10)
        self.server.stop()


def not_an_xdist_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a throwaway project's pytest (pytester): it is no xdist worker,
    even when this suite runs under xdist (-n), and plugins that read these
    (pytest-benchmark, where installed, refuses to run "under xdist") must
    not see this run's."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def same_cpus_after_each_test() -> Iterator[None]:
    """Put the test process back on the CPUs it had: code run in-process
    (``mcl serve --cpu``, ``mcl bench``'s pinning) may pin it, and every
    server a later test spawns would inherit that (test_cpu saw {0})."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    yield
    if allowed is not None and os.sched_getaffinity(0) != allowed:
        os.sched_setaffinity(0, allowed)


@pytest.fixture
def no_mcl_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's own MCL_* settings must not leak into tests of mcl."""
    for name in list(os.environ):
        if name.startswith("MCL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """Factory: start_server(store=None, settings=None, registry=None, server_options=None, **store_options)."""
    running: list[Running] = []
    stores: list[Store] = []

    def start(
        store: Optional[Store] = None,
        settings: Optional[Settings] = None,
        registry: Optional[Registry] = None,
        server_options: Optional[dict] = None,
        **store_options: object,
    ) -> Running:
        if store is None:
            store = Store(tmp_path / f"data-{len(stores)}.txt", **store_options)  # type: ignore[arg-type]
            stores.append(store)
        server = MemcacheServer(("127.0.0.1", 0), store, settings=settings, registry=registry, **(server_options or {}))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        r = Running(server, thread)
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop()
    for s in stores:
        s.close()


@pytest.fixture
def server(start_server) -> Running:
    return start_server()


@pytest.fixture
def raw(server) -> Iterator[Raw]:
    client = Raw(server.port)
    yield client
    client.close()


@pytest.fixture
def connect() -> Iterator:
    """Factory for extra raw connections, all closed at the end."""
    opened: list[Raw] = []

    def open_(port: int) -> Raw:
        c = Raw(port)
        opened.append(c)
        return c

    yield open_
    for c in opened:
        c.close()


@pytest.fixture
def fresh_registry() -> Registry:
    """A copy of the default registry, to add verbs to without leaking them."""
    return default_registry.copy()


_handed_out: set[int] = set()


def mark_synced(path: Path) -> None:
    """Append the sync mark that a later fsync of the whole file would leave:
    damage before it is then corruption of synced data, not a crash's tail."""
    from memcachedlite.storage import records

    data = path.read_bytes()
    file_id = records.read_header(data)[1]
    with open(path, "ab") as f:
        f.write(records.encode_sync(len(data), file_id))


def stop_as_killed(store: Store) -> None:
    """Stop ``store`` as kill -9 would: its data file keeps what was written,
    without the marks that a clean stop adds, so what no fsync covered is a
    crash's tail at the next start."""
    assert store.log is not None
    path = Path(store.log.path)
    written = path.read_bytes()
    store.close()
    path.write_bytes(written)


def free_port() -> int:
    """A port nothing listens on now, and never one already handed out in this
    run: bind(0) may give back the port it just gave, and a test that asks
    for several (a cluster) would then start two listeners on one port."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextlib.contextmanager
def running_memcached(*extra: str, env: Optional[dict] = None) -> Iterator[int]:
    """The real memcached on a free port of 127.0.0.1, with ``extra`` options
    and ``env`` added to the environment. Missing binary fails, not skips."""
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    assert os.path.exists(binary), "memcached is not installed (apt-get install memcached)"
    port = free_port()
    cmd = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", "-t", "2", "-u", "nobody", *extra]
    with running_program(cmd, env=env):
        wait_for_port(port)
        yield port


@contextlib.contextmanager
def running_program(cmd: list[str], env: Optional[dict] = None) -> Iterator[subprocess.Popen]:
    """A server program (output discarded, ``env`` added to the environment),
    terminated and waited for on the way out."""
    proc = subprocess.Popen(
        cmd, env=dict(os.environ, **(env or {})), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def script_module(path: Path, name: str) -> Iterator[Any]:
    """A script of benchmarks/ (not a package) imported as module ``name``, for its tests."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


@pytest.fixture
def memcached() -> Iterator[int]:
    """The real memcached, one per test (see :func:`running_memcached`)."""
    with running_memcached() as port:
        yield port


class ServerProcess:
    """``mcl serve`` as a real subprocess on port 0; its log goes to a file."""

    def __init__(self, data_file: Path, *args: str, env: Optional[dict] = None) -> None:
        self.data_file = data_file
        self.log_path = data_file.with_name(data_file.name + f".{time.monotonic_ns()}.log")
        self.args = args
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "memcachedlite", "serve", "--port", "0", "--data-file", str(data_file), *args]
        environ = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=environ, cwd=data_file.parent)
        self.port = self._wait_for_port()

    def _wait_for_port(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(rb"listening on [\d.]+:(\d+)", self.log_path.read_bytes())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"server exited early:\n{self.output()}")
            time.sleep(0.02)
        self.proc.kill()
        raise RuntimeError(f"server did not start:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20.0) -> int:
        self.proc.terminate()
        return self.wait(timeout)

    def kill(self) -> int:
        self.proc.kill()
        return self.wait(10)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    """Factory: spawn(*serve_args, data_file=None) -> ServerProcess, killed at the end."""
    procs: list[ServerProcess] = []

    def start(*args: str, data_file: Optional[Path] = None, env: Optional[dict] = None) -> ServerProcess:
        p = ServerProcess(data_file or tmp_path / "data.txt", *args, env=env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.close()
