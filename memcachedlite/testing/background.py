"""memcachedlite inside another program's tests: a real server on a free port of
127.0.0.1, served by a background thread of the test process, and switches
that make it fail the way a production memcached does (slow, refusing
connections, dropping one mid-reply, answering ``SERVER_ERROR`` to writes,
restarting), which a mock client cannot show.

::

    from memcachedlite.testing import serve_in_background

    with serve_in_background(memory_limit=8) as server:
        client = server.client()          # a pymemcache Client, closed with the server
        client.set("k", "v")
        with server.faults.fail_writes():
            ...                           # every write now answers SERVER_ERROR

A failing disk is the store's own refusal (:meth:`Store.refuse_writes
<memcachedlite.storage.store.Store.refuse_writes>`), so every protocol sees
it; the slow replies and dropped connections live in a copy of the verb
registry whose handlers are wrapped, so servers built any other way (``mcl
serve``) run the plain handlers and pay nothing for them. The pytest
fixtures built on this are in :mod:`memcachedlite.testing.plugin`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

from ..protocols.registry import Command, Registry
from ..server.addresses import format_server, is_unix, parse_server
from ..server.build import build_server
from ..server.config import ServerConfig

if TYPE_CHECKING:  # pragma: no cover
    from pymemcache.client.base import Client

    from ..server.tcp import MemcacheServer
    from ..storage.store import Store

#: What memcachedlite answers when its data file cannot be written (a full disk).
DISK_FULL = "cannot write data file: No space left on device"

#: Seconds between the accept loop's checks for a stop request: short, so a
#: server stops within a fraction of a second; idle checks cost nothing that matters.
_POLL_INTERVAL = 0.05


def split_address(address: str) -> tuple[str, int]:
    """``("host", port)`` from ``"HOST:PORT"`` (IPv6 hosts in brackets), or
    ``(path, 0)`` from a Unix socket's ``/path`` or ``unix:path``."""
    return parse_server(address)


def join_address(host: str, port: int) -> str:
    """``"HOST:PORT"``, with an IPv6 host in brackets, or a Unix socket's path
    (the inverse of :func:`split_address`)."""
    return format_server((host, port))


class _Switch:
    """What a fault method returns: the fault is on already; used as a context
    manager, it goes off again when the block ends."""

    def __init__(self, off: Callable[[], None]) -> None:
        self._off = off

    def __enter__(self) -> _Switch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._off()


class Faults:
    """The failures one :class:`BackgroundServer` shows on purpose. All are off
    until asked for; :meth:`reset` turns them all off.

    Each method switches its fault on at once and returns an object that, used
    in a ``with`` block, switches it off at the end of the block.
    """

    def __init__(self, owner: BackgroundServer) -> None:
        self._owner = owner
        self._lock = threading.Lock()
        self._wake = threading.Event()  # set to cut delays short (reset, stop)
        self._delay = 0.0
        self._delay_verbs: Optional[frozenset[bytes]] = None
        self._write_error: Optional[str] = None
        self._drops = 0
        self._drop_verbs: Optional[frozenset[bytes]] = None

    # -- switches -------------------------------------------------------------

    def slow(self, seconds: float, verbs: Optional[Iterable[str]] = None) -> _Switch:
        """Wait ``seconds`` before answering each command (only ``verbs``, if given).

        The wait is per command, on the connection's own thread: other
        connections are not held up, except on a server with a data file,
        where a connection's batch holds the store while it runs.
        """
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        with self._lock:
            self._delay, self._delay_verbs = float(seconds), _verbs(verbs)
        return _Switch(self._not_slow)

    def fail_writes(self, message: str = DISK_FULL) -> _Switch:
        """Answer ``SERVER_ERROR <message>`` to every command that would change
        data (``set``, ``delete``, ``incr``, ``touch``, ``ms``...), changing
        nothing, as memcachedlite does when its disk is full. Reads still work.

        The store refuses the changes (:meth:`Store.refuse_writes
        <memcachedlite.storage.store.Store.refuse_writes>`), so every protocol
        (text, meta and binary) sees the same failure."""
        with self._lock:
            self._write_error = message
        if self._owner._server is not None:
            self.arm(self._owner.store)
        return _Switch(self._writes_work)

    def arm(self, store: Store) -> None:
        """Give ``store`` the write failure switched on now (a server built
        anew, on a restart, starts with a store of its own)."""
        store.refuse_writes(self._write_error)

    def drop_connection(self, times: int = 1, verbs: Optional[Iterable[str]] = None) -> _Switch:
        """For the next ``times`` commands (of ``verbs``, if given): execute the
        command, send the first half of its reply, then close the connection."""
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._drops, self._drop_verbs = times, _verbs(verbs)
        return _Switch(self._no_drops)

    def refuse_connections(self) -> _Switch:
        """Close the listening socket: new connections are refused (ECONNREFUSED),
        the ones already open keep working. :meth:`accept_connections` reopens it
        on the same port."""
        self._owner._stop_listening()
        return _Switch(self.accept_connections)

    def accept_connections(self) -> None:
        """Listen on the same port again after :meth:`refuse_connections`."""
        self._owner._listen_again()

    def reset(self) -> None:
        """Every fault off, connections accepted again."""
        self._not_slow()
        self._writes_work()
        self._no_drops()
        self.accept_connections()

    @property
    def active(self) -> list[str]:
        """The names of the faults switched on now (empty when the server behaves)."""
        names = []
        if self._delay:
            names.append("slow")
        if self._write_error is not None:
            names.append("fail_writes")
        if self._drops:
            names.append("drop_connection")
        if self._owner.refusing:
            names.append("refuse_connections")
        return names

    def _not_slow(self) -> None:
        with self._lock:
            self._delay, self._delay_verbs = 0.0, None
        self._wake_waiting()

    def _wake_waiting(self) -> None:
        """Commands waiting in a delay now go on at once."""
        with self._lock:
            wake, self._wake = self._wake, threading.Event()
        wake.set()

    def _writes_work(self) -> None:
        with self._lock:
            self._write_error = None
        if self._owner._server is not None:
            self.arm(self._owner.store)

    def _no_drops(self) -> None:
        with self._lock:
            self._drops, self._drop_verbs = 0, None

    # -- what the wrapped handlers call -----------------------------------------

    def _before(self, verb: bytes) -> None:
        delay = self._delay
        if delay and (self._delay_verbs is None or verb in self._delay_verbs):
            self._wake.wait(delay)  # an event, not sleep: reset() and stop() cut it short

    def _after(self, verb: bytes, ctx: Any, reply: Optional[bytes]) -> Optional[bytes]:
        if not self._drops or not reply:
            return reply
        with self._lock:
            if not self._drops or (self._drop_verbs is not None and verb not in self._drop_verbs):
                return reply
            self._drops -= 1
        ctx.close()  # the server sends what is returned, then closes
        return reply[: max(1, len(reply) // 2)]

    def _wrap(self, row: Command) -> Command:
        handler = row.handler
        verb = row.name
        before = self._before
        after = self._after

        def faulty(ctx: Any, args: list, data: Optional[bytes]) -> Optional[bytes]:
            before(verb)
            return after(verb, ctx, handler(ctx, args, data))

        faulty.__doc__ = handler.__doc__
        return dataclasses.replace(row, handler=faulty)

    def registry(self, plain: Registry) -> Registry:
        """A copy of ``plain`` whose handlers consult these switches."""
        wrapped = plain.copy()
        table = wrapped.table()
        for verb, row in list(table.items()):
            table[verb] = self._wrap(row)
        return wrapped


def _verbs(verbs: Optional[Iterable[str]]) -> Optional[frozenset[bytes]]:
    if verbs is None:
        return None
    if isinstance(verbs, (str, bytes)):
        verbs = [verbs]  # type: ignore[list-item]
    return frozenset(v.encode("ascii") if isinstance(v, str) else bytes(v) for v in verbs)


def _client(host: str, port: int, options: dict[str, Any]) -> Client:
    from pymemcache.client.base import Client

    # default_noreply=False: a test must see a refused or failed write.
    settings: dict[str, Any] = dict(connect_timeout=5.0, timeout=5.0, no_delay=True, default_noreply=False)
    settings.update(options)
    return Client(host if is_unix(host) else (host, port), **settings)  # pymemcache's socket form: its path


def _flush(host: str, port: int) -> None:
    client = _client(host, port, {})
    try:
        client.flush_all(noreply=False)
    finally:
        client.close()


class BackgroundServer:
    """A memcachedlite server on a thread of this process.

    Built from the keywords of ``mcl serve``'s options (the fields of
    :class:`~memcachedlite.server.config.ServerConfig`); unlike ``mcl serve`` it
    defaults to a free port of 127.0.0.1 and to memory only.
    ``persistent=True`` keeps the data in a file of a temporary directory
    (removed on stop) when no ``data_file`` is given, so that
    :meth:`restart` replays it as a real restart does.

    ``address`` is ``"HOST:PORT"``; ``host``, ``port``, ``store`` (the live
    :class:`~memcachedlite.storage.store.Store`) and ``faults`` (:class:`Faults`) are
    there too. :meth:`stop` joins every thread the server started and frees
    the port. With ``unix_socket`` and no ``host`` or ``port``, the server
    listens on that socket only: ``address`` and ``host`` are its path, and
    ``port`` is 0 (as libmemcached and pylibmc hold a socket server).
    """

    def __init__(self, config: Optional[ServerConfig] = None, *, persistent: bool = False, **options: Any) -> None:
        config = config.replace(**options) if config is not None else ServerConfig.of(**options)
        self._tempdir: Optional[tempfile.TemporaryDirectory] = None
        if persistent and not config.data_file:
            self._tempdir = tempfile.TemporaryDirectory(prefix="memcachedlite-")
            config = config.replace(data_file=os.path.join(self._tempdir.name, "data.txt"))
        #: the options it was built with (:class:`~memcachedlite.server.config.ServerConfig`)
        self.config = config
        self.faults = Faults(self)
        self.refusing = False
        self._server: Optional[MemcacheServer] = None
        self._thread: Optional[threading.Thread] = None
        self._clients: list[Any] = []
        self._following: list[Any] = []  # the clients restart() reconnects
        self._lock = threading.RLock()

    # -- what a test reads ------------------------------------------------------

    @property
    def server(self) -> MemcacheServer:
        """The :class:`~memcachedlite.server.MemcacheServer` running now (a new one after a restart)."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        return self._server

    @property
    def host(self) -> str:
        """The first TCP listener's host, or the Unix socket's path when there is no TCP listener."""
        tcp = self.server.tcp_addresses
        return tcp[0][0] if tcp else self.server.unix_socket or ""

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def unix_socket(self) -> Optional[str]:
        """The Unix socket's path (the ``unix_socket`` option), or None."""
        return self.server.unix_socket

    @property
    def address(self) -> str:
        """``"HOST:PORT"`` (or a Unix socket's path), the form Django's ``LOCATION`` and most clients take."""
        return join_address(self.host, self.port)

    @property
    def store(self) -> Store:
        store = self.server.store
        assert store is not None
        return store

    @property
    def persistent(self) -> bool:
        """Whether the data is in a file (and so survives :meth:`restart`)."""
        return self.config.path is not None

    def client(self, *, follow_restarts: bool = False, **options: Any) -> Client:
        """A pymemcache ``Client`` for this server (``default_noreply=False``, 5 s
        timeouts; ``options`` override), closed when the server stops.

        A restart closes every connection, and a client's next call fails
        once (``MemcacheUnexpectedCloseError``), as with a real server: what
        an application should survive. ``follow_restarts=True`` makes a
        client for the test's own use instead: :meth:`restart` closes its
        connection itself, so its next call connects to the new server.
        """
        client = _client(self.host, self.port, options)
        with self._lock:
            self._clients.append(client)
            if follow_restarts:
                self._following.append(client)
        return client

    def flush(self) -> None:
        """Empty the server as a client would (``flush_all``)."""
        _flush(self.host, self.port)

    def reset(self) -> None:
        """Faults off, connections accepted, no items: the state a fresh test expects."""
        self.faults.reset()
        self.flush()

    # -- life cycle --------------------------------------------------------------

    def start(self) -> BackgroundServer:
        """Bind, open the store and start serving; returns self."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the server is already running")
            self._run(self._build(self.config))
        return self

    def _build(self, config: ServerConfig) -> MemcacheServer:
        server = build_server(config)
        server.registry = self.faults.registry(server.registry)
        assert server.store is not None
        self.faults.arm(server.store)  # a write failure switched on before (a restart, or before start)
        return server

    def _run(self, server: MemcacheServer) -> None:
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"memcachedlite-{server.port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Close the clients it handed out, stop serving, join every thread,
        close the store and free the port. Harmless when already stopped."""
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
            self._following.clear()
            self.faults._not_slow()  # a command waiting in a delay goes on, so its worker can end
            self._halt(close_store=True)
            if self._tempdir is not None:
                self._tempdir.cleanup()
                self._tempdir = None

    def _halt(self, close_store: bool) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        self.refusing = False
        self.faults._wake_waiting()
        server.stop()
        if thread is not None:
            thread.join()
        if close_store and server.store is not None:
            server.store.close()

    def restart(self, keep_data: bool = True) -> None:
        """Stop the server (every connection closes, as in a real restart) and
        start a new one on the same port with the same options.

        ``keep_data=True``: a persistent server replays its data file; a
        memory-only one keeps its items as if they had survived (a warm
        restart). ``keep_data=False``: it comes back empty, its data file
        deleted. Faults stay as they were. A client made with
        ``client(follow_restarts=True)`` (the ``memcached`` fixture's is one)
        connects to the new server on its next call; any other sees its next
        call fail once, as from a real restart.
        """
        with self._lock:
            old = self.server
            port = old.port
            carried = old.store if keep_data and not self.persistent else None
            self._halt(close_store=carried is None)
            data_file = self.config.path
            if not keep_data and data_file is not None and os.path.exists(data_file):
                os.remove(data_file)
            server = self._build(self.config.replace(port=port) if self.config.tcp else self.config)
            if carried is not None:
                fresh, server.store = server.store, carried
                if fresh is not None:
                    fresh.close()
            self._run(server)
            for client in self._following:
                client.close()  # pymemcache connects again on the next call

    def _stop_listening(self) -> None:
        """Stop the accept loop and close the listening sockets; open connections go on."""
        import socketserver

        with self._lock:
            server = self.server
            if self.refusing:
                return
            # socketserver's own shutdown stops only the accept loop;
            # MemcacheServer's would also wind the open connections down.
            socketserver.BaseServer.shutdown(server)
            assert self._thread is not None
            self._thread.join()
            server.close_listeners()
            self.refusing = True

    def _listen_again(self) -> None:
        with self._lock:
            if not self.refusing or self._server is None:
                return
            server = self._server
            try:
                server.listen_again()  # the same addresses and ports
            except OSError as exc:
                reason = getattr(exc, "reason", None) or exc.strerror or exc
                raise RuntimeError(f"cannot listen on {self.address} again: {reason}") from None
            self.refusing = False
            self._run(server)

    def __enter__(self) -> BackgroundServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.address if self._server is not None else "stopped"
        return f"<BackgroundServer {state}>"


@contextmanager
def serve_in_background(config: Optional[ServerConfig] = None, **options: Any) -> Iterator[BackgroundServer]:
    """A started :class:`BackgroundServer`, stopped when the block ends (even on error).

    ``options`` are ``mcl serve``'s options as keywords (``memory_limit=8``,
    ``max_item_size="2k"``, ``tls_cert=...``, ``auth_file=...``,
    ``modules=["myverbs"]``, ``data_file=...``), plus ``persistent=True``;
    or a :class:`~memcachedlite.server.config.ServerConfig` that several
    servers share, with keywords changing some of its options.
    """
    server = BackgroundServer(config, **options).start()
    try:
        yield server
    finally:
        server.stop()


class ExternalServer:
    """A memcached-protocol server this process did not start (``--memcached-external``):
    the same ``address``/``host``/``port``/``client()``/``flush()``/``reset()`` as
    :class:`BackgroundServer`, but no ``store`` and no ``faults``. ``address``
    is ``HOST:PORT`` or a Unix socket (``/path`` or ``unix:path``)."""

    def __init__(self, address: str) -> None:
        self.host, self.port = split_address(address)
        self._clients: list[Any] = []

    @property
    def address(self) -> str:
        return join_address(self.host, self.port)

    @property
    def faults(self) -> Faults:
        raise RuntimeError(
            f"fault injection needs the in-process memcachedlite server, not an external one ({self.address})"
        )

    def client(self, *, follow_restarts: bool = False, **options: Any) -> Client:
        """As :meth:`BackgroundServer.client`; this process never restarts the server."""
        client = _client(self.host, self.port, options)
        self._clients.append(client)
        return client

    def flush(self) -> None:
        _flush(self.host, self.port)

    reset = flush

    def stop(self) -> None:
        """Close the clients it handed out; the server itself is not ours to stop."""
        for client in self._clients:
            client.close()
        self._clients.clear()

    def __repr__(self) -> str:
        return f"<ExternalServer {self.address}>"


def server_factory(*, scope: str = "function", **options: Any) -> Any:
    """A pytest fixture that starts a :class:`BackgroundServer` with ``options``
    (as :func:`serve_in_background` takes them) for each test, or once per
    ``scope``, and stops it after. Assign it to a module-level name::

        small_cache = server_factory(memory_limit=1, max_item_size="64k")

        def test_eviction(small_cache): ...

    These servers always run in-process (they need their options), also
    under ``--memcached-external``.
    """
    import pytest

    def fixture() -> Iterator[BackgroundServer]:
        with serve_in_background(**options) as server:
            yield server

    fixture.__doc__ = f"A memcachedlite server with {options or 'default options'} ({scope} scope)."
    return pytest.fixture(scope=scope)(fixture)  # type: ignore[call-overload]
