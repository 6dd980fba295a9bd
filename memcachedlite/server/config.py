"""Everything a server can be asked for, in one object: :class:`ServerConfig`,
built once by ``mcl serve`` (from its options), by
:func:`memcachedlite.testing.serve_in_background` (from keywords) or by a
program embedding the server, and handed to
:func:`memcachedlite.server.build.build_server`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..protocols.text import DEFAULT_MAX_ITEM_SIZE
from ..storage.durability import DEFAULT_COMPACT_MIN_SIZE
from .listeners import DEFAULT_UNIX_MASK
from .tcp import DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_TIMEOUT

PathLike = Union[str, "os.PathLike[str]"]
#: A size in bytes, or text with a k or m suffix (``512k``, ``1m``).
Size = Union[int, str]


@dataclass(frozen=True)
class ServerConfig:
    """A server's options. Each field is the ``mcl serve`` option of the same
    name (``--max-item-size`` is ``max_item_size``), with the same meaning,
    so adding an option is a field here and a click decorator in
    :mod:`memcachedlite.cli.serve`.

    The defaults are a library's, not the command's: a free port of
    127.0.0.1 and memory only (``data_file=None``); ``mcl serve`` passes its
    own (port 9889, ``data.txt``).
    """

    #: memcached's ``-l``: a comma list of addresses, each with ``port`` or its
    #: own ``:PORT`` (``127.0.0.1,[::1],10.0.0.5:11212``). None: 127.0.0.1,
    #: unless ``unix_socket`` is given, when None here and in ``port`` means no TCP.
    host: Optional[str] = None
    #: None: 0 (a free port), or no TCP with ``unix_socket`` (see ``host``)
    port: Optional[int] = None
    #: memcached's ``-s``: also (or, alone, only) listen on this Unix socket file
    unix_socket: Optional[PathLike] = None
    #: memcached's ``-a``: the socket file's permission bits
    unix_mask: int = DEFAULT_UNIX_MASK
    #: the append-only data file; None (or ``no_data_file``) keeps data in memory only
    data_file: Optional[PathLike] = None
    no_data_file: bool = False
    fsync: str = "everysec"
    dialect: str = "memcached"
    max_item_size: Size = DEFAULT_MAX_ITEM_SIZE
    #: MiB of memory for items
    memory_limit: int = 64
    no_evict: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = 0.0
    read_timeout: float = DEFAULT_READ_TIMEOUT
    backlog: int = 1024
    compact_min_size: Size = DEFAULT_COMPACT_MIN_SIZE
    repair: bool = False
    #: user modules to import for their verbs (``--load``): dotted names or .py paths
    modules: tuple[str, ...] = ()
    tls_cert: Optional[PathLike] = None
    tls_key: Optional[PathLike] = None
    tls_ca: Optional[PathLike] = None
    auth_file: Optional[PathLike] = None
    simulate_delay: bool = False
    enable_shutdown: bool = False
    disable_flush_all: bool = False
    disable_cas: bool = False
    protocol: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", tuple(self.modules))

    @classmethod
    def of(cls, **options: Any) -> ServerConfig:
        """A config from keyword options, naming an unknown one in the error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown server option(s): {', '.join(unknown)}")
        return cls(**options)

    @property
    def tcp(self) -> bool:
        """Whether the server listens on TCP: always, but with a Unix socket
        only when a host or port is given too (memcached's ``-s`` alone)."""
        return self.unix_socket is None or self.host is not None or self.port is not None

    @property
    def listen_host(self) -> str:
        return self.host if self.host is not None else "127.0.0.1"

    @property
    def listen_port(self) -> int:
        return self.port if self.port is not None else 0

    @property
    def path(self) -> Optional[PathLike]:
        """Where the data lives, or None for memory only."""
        return None if self.no_data_file else self.data_file

    def replace(self, **changes: Any) -> ServerConfig:
        """This config with some options changed."""
        return dataclasses.replace(self, **changes)
