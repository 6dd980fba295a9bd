"""What a load run is asked to do: LoadConfig, its defaults and its checks."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .wire import PROTOCOLS


@dataclass(frozen=True)
class LoadConfig:
    """What to send, to whom, for how long."""

    #: a host, or a Unix socket's path (with port 0)
    host: str = "127.0.0.1"
    port: int = 11211
    connections: int = 4
    #: Measured seconds (after ``warmup``); 0 with ``prefill`` just stores the key space.
    duration: float = 10.0
    #: Share of commands that are gets; the rest are sets.
    get_ratio: float = 0.9
    value_size: int = 100
    #: Size of the key space, chosen from uniformly.
    keys: int = 10_000
    #: Commands per send (1: request/response).
    pipeline: int = 1
    #: Keys per get.
    multiget: int = 1
    #: Worker processes; None: one per core, at most one per connection; 0: a thread of this process.
    processes: int | None = None
    #: Store every key of the key space before the run, so gets hit.
    prefill: bool = True
    #: Seconds of unrecorded load before the measured ``duration``.
    warmup: float = 0.0
    key_prefix: str = "mclbench:"
    #: A reply later than this (seconds) is an error; also bounds the wait at the end.
    reply_timeout: float = 5.0
    connect_timeout: float = 5.0
    seed: int = 0
    #: Bound on the prefill, in seconds (it is an error not to finish in time).
    prefill_timeout: float = 300.0
    #: CPUs the worker processes may run on (``os.sched_setaffinity``), e.g. all
    #: but the server's, so that the load never competes with the server for
    #: its core; None: wherever the OS puts them. Ignored for ``processes=0``
    #: and where the platform cannot pin.
    cpus: tuple[int, ...] | None = None
    #: The wire protocol: memcached's ``text`` or ``binary`` protocol, or Redis's ``resp``
    #: (GET and SET), so one generator drives memcached, memcachedlite and Redis alike.
    protocol: str = "text"

    def __post_init__(self) -> None:
        checks = [
            (self.connections >= 1, "connections must be at least 1"),
            (self.duration >= 0, "duration must not be negative"),
            (0.0 <= self.get_ratio <= 1.0, "get_ratio must be between 0 and 1"),
            (self.value_size >= 1, "value_size must be at least 1"),
            (self.keys >= 1, "keys must be at least 1"),
            (self.pipeline >= 1, "pipeline must be at least 1"),
            (self.multiget >= 1, "multiget must be at least 1"),
            (self.processes is None or self.processes >= 0, "processes must not be negative"),
            (self.warmup >= 0, "warmup must not be negative"),
            (self.reply_timeout > 0, "reply_timeout must be positive"),
            (self.connect_timeout > 0, "connect_timeout must be positive"),
            (0 < self.port < 65536 or self.host.startswith("/"), "port must be between 1 and 65535"),
            (self.cpus is None or len(self.cpus) > 0, "cpus must name at least one CPU"),
            (self.protocol in PROTOCOLS, f"protocol must be one of {', '.join(PROTOCOLS)}"),
            (self.multiget == 1 or self.protocol == "text", "multiget needs the text protocol"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        key = f"{self.key_prefix}{self.value_size}:{self.keys - 1}"
        if len(key.encode()) > 250 or any(c.isspace() or ord(c) < 32 for c in key):
            raise ValueError(f"key_prefix gives invalid keys such as {key!r}")

    def worker_processes(self) -> int:
        """How many processes (0: a thread of this one) the load will use."""
        if self.processes is not None:
            return min(self.processes, self.connections)
        return max(1, min(os.cpu_count() or 1, self.connections))
