"""A bounded pool of reused threads for the server's connections.

socketserver's ThreadingMixIn starts a new thread for every connection, with
no upper bound. This pool keeps finished threads waiting for the next
connection and refuses work once ``max_workers`` are busy, which is how the
server enforces ``--max-connections``.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

_STOP = object()
#: Workers only parse and dispatch: a small stack lets a thousand of them fit.
WORKER_STACK_SIZE = 512 * 1024
#: ``threading.stack_size`` is the whole process's: held while it is changed
#: for a worker's start and put back, so no other thread of ours sees it.
_stack_size_lock = threading.Lock()


class WorkerPool:
    """Runs tasks on at most ``max_workers`` threads, reusing idle ones."""

    def __init__(self, max_workers: int, name: str = "mcl-worker") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.name = name
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._idle = 0
        self._closed = False

    @property
    def busy(self) -> int:
        """Workers running a task now (the server's open connections)."""
        return self._busy

    @property
    def size(self) -> int:
        """Threads alive, busy or idle."""
        return len(self._threads)

    def submit(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on a worker; False (and nothing run) if all are busy."""
        with self._lock:
            if self._closed or self._busy >= self.max_workers:
                return False
            self._busy += 1
            if self._idle:
                self._idle -= 1
            else:
                thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads) + 1}", daemon=True)
                self._threads.append(thread)
                _start_small(thread)
            self._tasks.put((fn, args))
            return True

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is _STOP:
                return
            fn, args = task
            try:
                fn(*args)
            except Exception:  # pragma: no cover - the server's handler logs its own errors
                log.exception("worker task failed")
            finally:
                with self._lock:
                    self._busy -= 1
                    self._idle += 1

    def close(self, timeout: float = 5.0) -> None:
        """Let idle workers exit; busy ones exit when their task ends."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._tasks.put(_STOP)
        for thread in threads:
            thread.join(timeout)


def _start_small(thread: threading.Thread) -> None:
    """Start ``thread`` with a stack of :data:`WORKER_STACK_SIZE`, leaving the
    process's default for every other thread as it was (the size applies
    when a thread is created, so it is put back as soon as this one runs)."""
    with _stack_size_lock:
        try:
            before = threading.stack_size(WORKER_STACK_SIZE)
        except (ValueError, RuntimeError):  # pragma: no cover - platform without the knob
            thread.start()
            return
        try:
            thread.start()
        finally:
            threading.stack_size(before)
