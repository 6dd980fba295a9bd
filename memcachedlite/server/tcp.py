"""The server (a ``socketserver.ThreadingTCPServer``, and its Unix socket
twin) and its per-connection handler (a ``StreamRequestHandler``) that moves
bytes between the socket and a :class:`~memcachedlite.protocols.session.Session`.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import socketserver
import ssl
import threading
import time
from typing import Any, Optional, Sequence, cast

from ..buildinfo import refuse_python_subclass
from ..protocols.auth import AuthFile, PathLike
from ..protocols.binary import REQUEST, BinarySession
from ..protocols.registry import Registry, default_registry
from ..protocols.session import Session
from ..protocols.settings import Settings
from ..storage.store import Store
from .addresses import Address, interface
from .delivery import Courier
from .listeners import DEFAULT_UNIX_MASK, Listener, family_of, peer_name
from .reaper import Reaper
from .tls import exposure_warning
from .workers import WorkerPool

log = logging.getLogger(__name__)

#: One receive takes at most this much; a pipelined batch is what one receive
#: brings. Received into one reused buffer: a fresh 256 KiB object per receive
#: (above glibc's mmap threshold) cost 15-20 us a request.
RECV_SIZE = 64 * 1024
TOO_MANY_CONNECTIONS = b"ERROR Too many open connections\r\n"  # memcached's words
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_READ_TIMEOUT = 10.0
#: ``protocol=``: memcached's -B choices
PROTOCOLS = ("auto", "ascii", "binary")


class MemcacheHandler(socketserver.StreamRequestHandler):
    """Serves one client: read what has arrived, answer the complete commands
    in it with one write, repeat until the client leaves or the server stops.

    The socket itself is read and written, not ``rfile``/``wfile``: their
    Python-level layers cost about a microsecond a request, and the session
    does its own buffering (one receive in, one send out per batch).
    """

    server: "MemcacheServer"
    disable_nagle_algorithm = True  # replies are small; never wait for a delayed ACK

    def __init_subclass__(cls, **kwargs: object) -> None:
        refuse_python_subclass(cls, MemcacheHandler)  # on the compiled build, with a clear message
        super().__init_subclass__(**kwargs)

    def setup(self) -> None:
        # TCP_NODELAY means nothing on a Unix socket (setsockopt would fail there)
        self.disable_nagle_algorithm = self.request.family != socket.AF_UNIX
        super().setup()
        server = self.server
        #: the client as logs name it (HOST:PORT, or the Unix socket and the client's pid)
        self.peer = peer_name(self.connection, self.client_address)
        #: over TLS (a TCP listener of a server with a certificate; a Unix socket is plain)
        self.tls = isinstance(self.connection, ssl.SSLSocket)
        self.session = self._new_session(BinarySession if server.protocol == "binary" else Session)
        self.bytes_read = self.bytes_written = 0  # this thread's own, summed by the server
        #: whether the first bytes have chosen the protocol yet (memcached's -B auto)
        self.negotiated = server.protocol == "binary"
        committer = server.store.committer
        #: fsync=always: replies that wait for the disk leave from the group commit
        #: thread (not over TLS: one TLS object must not be used by two threads)
        self.courier = Courier(self.connection, committer) if committer and not self.tls else None
        self.timeout = self.connection.gettimeout()
        server.register(self)
        log.debug("connection from %s", self.peer)

    def handle(self) -> None:
        if self.tls and not self._handshake():
            return
        buffer = memoryview(bytearray(RECV_SIZE))
        while self._keep_reading():
            count = self._receive(buffer)
            if not count:
                break
            self._answer(buffer[:count])
            if self.session.closing:
                break

    def _keep_reading(self) -> bool:
        """Whether to read again, with the timeout for where the client is:
        between requests, the idle timeout (none by default, as memcached); in
        the middle of one, the read timeout, so a stalled client cannot hold a
        worker forever. A stopping server stops reading between requests."""
        server = self.server
        midway = self.session.pending()
        if not midway and server.stopping.is_set():
            return False
        wanted = (server.read_timeout if midway else server.idle_timeout) or None
        if wanted != self.timeout:
            self.connection.settimeout(wanted)
            self.timeout = wanted
        return True

    def _receive(self, buffer: memoryview) -> int:
        """One receive into ``buffer``; 0 once the connection is over."""
        try:
            count = self.connection.recv_into(buffer)
        except TimeoutError:
            midway = self.session.pending()
            what = "in the middle of a request" if midway else "while idle"
            log.info("closing %s: no data for %s s %s", self.peer, self.timeout, what)
            if not midway:
                self.server.count_idle_kick()
            return 0
        except OSError:
            return 0
        self.bytes_read += count
        return count

    def _answer(self, data: memoryview) -> None:
        """Feed ``data`` to the session and send the replies, now or, when they
        show changes not yet on disk, once the disk has them."""
        if not self.negotiated and not self._choose_protocol(data):
            return
        session = self.session
        courier = self.courier
        if courier is None:
            self._send(session.feed(data))
            return
        replies, need = session.receive(data)
        if not replies:
            return
        if need or courier.unsent:  # (later replies queue behind earlier ones)
            courier.hand_off(need, replies, session.failed_reply)
        else:
            self._send(b"".join(replies))

    def _send(self, reply: bytes) -> None:
        if not reply:
            return
        try:
            self.connection.sendall(reply)
        except OSError:
            self.session.close()  # the client is gone
            return
        self.bytes_written += len(reply)

    def _new_session(self, kind: type[Session]) -> Session:
        server = self.server
        return kind(
            server.store, server.settings, server.registry, server=server, stop=server.stopping, auth=server.auth
        )

    def _choose_protocol(self, data: memoryview) -> bool:
        """memcached's negotiation: a first byte of 0x80 means the binary
        protocol for the connection's whole life, anything else the text one.
        Under ``protocol="ascii"`` a binary client is closed at once rather
        than left waiting for a reply (returns False)."""
        self.negotiated = True
        if data[0] != REQUEST:
            return True
        if self.server.protocol == "ascii":
            log.info("closing %s: binary protocol request, but only ascii is served", self.peer)
            self.session.close()
            return False
        self.session = self._new_session(BinarySession)
        return True

    def _handshake(self) -> bool:
        """The TLS handshake, on this worker thread and bounded by the read
        timeout, so a slow or plain-text client never holds up the accept loop."""
        connection = self.connection
        connection.settimeout(self.server.read_timeout or DEFAULT_READ_TIMEOUT)
        try:
            connection.do_handshake()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.info("TLS handshake with %s failed: %s", self.peer, exc)
            self.server.count_handshake_error()
            return False
        self.timeout = connection.gettimeout()
        return True

    def finish(self) -> None:
        if self.courier is not None and self.courier.unsent:
            self.courier.drain()  # its last replies are still to leave
        try:
            super().finish()
        except OSError:  # the client already went away
            pass
        self.server.unregister(self)
        log.debug("connection from %s closed", self.peer)


class MemcacheServer(socketserver.ThreadingTCPServer):
    """A memcached-protocol server over one shared :class:`Store`.

    ``store`` may be None while the server is built unbound, but must be set
    before it serves.

    It listens on ``address`` (``(host, port)``; IPv6 too) and on every one of
    ``extra_addresses`` (more TCP addresses, or the path of a Unix socket,
    whose file gets the mode ``unix_mask``), as memcached does with several
    ``-l`` and ``-s``: one server, so one store, one connection limit, one
    worker pool and one set of counters for all of them. The extra sockets
    are not servers of their own: with several listeners, the accept loop
    (socketserver's own ``serve_forever``, unchanged) waits on a selector
    over all of them (see :meth:`fileno`), and :meth:`get_request` accepts
    from whichever is ready. Sibling server objects sharing state would
    need every counter, the pool and the stop shared by hand; a selector is
    one object and a few lines. A port 0 among the extra TCP addresses is
    the port the first one got, so one port serves every address.

    Each connection is served by a thread from a bounded pool of reused
    workers; past ``max_connections`` a new connection is told
    ``ERROR Too many open connections`` and closed, as memcached does.
    ``stop()`` ends the server gracefully: no new connections, every command
    already received is answered, then the connections are closed.
    """

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 1024  # memcached's listen backlog

    def __init_subclass__(cls, **kwargs: object) -> None:
        refuse_python_subclass(cls, MemcacheServer)  # on the compiled build, with a clear message
        super().__init_subclass__(**kwargs)

    def __init__(
        self,
        address: Address,
        store: Optional[Store],
        *,
        settings: Optional[Settings] = None,
        registry: Optional[Registry] = None,
        backlog: int = 1024,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = 0,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        bind_and_activate: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        auth_file: PathLike | None = None,
        protocol: str = "auto",
        extra_addresses: Sequence[Address] = (),
        unix_mask: int = DEFAULT_UNIX_MASK,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        #: "auto" (a first byte of 0x80 means binary), "ascii" or "binary" (memcached's -B)
        self.protocol = protocol
        self.store = store
        self.settings = settings or Settings()
        self.registry = registry or default_registry
        self.request_queue_size = backlog
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.started = time.time()
        self.stopping = threading.Event()
        self.total_connections = 0
        self.rejected_connections = 0
        self.idle_kicks = 0
        self.ssl_handshake_errors = 0
        #: memcached's listen_disabled_num: times accepting stopped for want of
        #: file descriptors, and the time spent so (refusals past
        #: --max-connections count as rejected_connections, as in memcached).
        self.listen_disabled_num = 0
        self.time_in_listen_disabled_us = 0
        self._listen_disabled_at: Optional[float] = None
        #: ``slabs automove`` settings: kept and shown, with no slabs to move.
        self.slab_automove = 1
        self.slab_automove_ratio = 0.8
        self.reaper = Reaper()
        self.bytes_read = 0
        self.bytes_written = 0
        self._handlers: set[MemcacheHandler] = set()
        self._handlers_changed = threading.Condition()
        self._serving = False
        self._state_lock = threading.Lock()
        #: With a context, every connection speaks TLS (see ``get_request``).
        self.ssl_context = ssl_context
        #: With an auth file, a connection must authenticate before anything else.
        self.auth = AuthFile(auth_file) if auth_file is not None else None
        self.pool = WorkerPool(max_connections)
        #: the listening sockets, the first on socketserver's ``self.socket`` (made by :meth:`server_bind`)
        self.listeners: list[Listener] = []
        self._extra_addresses = list(extra_addresses)
        self.unix_mask = unix_mask
        self._selector: Optional[selectors.BaseSelector] = None
        self.address_family = family_of(address)  # socketserver makes self.socket of this family
        super().__init__(address, MemcacheHandler, bind_and_activate)

    # -- listening ----------------------------------------------------------------

    def server_bind(self) -> None:
        """Bind every listener, the first on ``self.socket``; raises
        :class:`~memcachedlite.server.listeners.ListenError` naming the
        address that cannot be had (what is bound already is closed by
        ``server_close``)."""
        # (read untyped: typeshed says a tuple, a Unix server's is a path, and the
        # compiled build checks what it reads against what the type says)
        first: Address = cast(Any, self).server_address
        addresses = [first, *self._extra_addresses]
        self.listeners = [Listener(addresses[0], self.socket, self.unix_mask)]
        self.listeners += [Listener(address, unix_mask=self.unix_mask) for address in addresses[1:]]
        port: Optional[int] = None
        for listener in self.listeners:
            listener.bind(port)
            if port is None and not listener.unix:
                port = listener.address[1]
        self.server_address = self.listeners[0].address
        # bound ports, so that listening again (listen_again) takes the same ones
        self._extra_addresses = [listener.address for listener in self.listeners[1:]]

    def server_activate(self) -> None:
        for listener in self.listeners:
            listener.listen(self.request_queue_size)
        if len(self.listeners) > 1:
            self._selector = selectors.DefaultSelector()  # epoll on Linux: a descriptor of its own
            for listener in self.listeners:
                self._selector.register(listener.socket, selectors.EVENT_READ)
        ctx = self.ssl_context
        for address in self.tcp_addresses:
            warning = exposure_warning(
                address[0],
                tls=ctx is not None,
                client_certs=ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED,
                auth=self.auth is not None,
            )
            if warning:
                log.warning("%s", warning)

    def fileno(self) -> int:
        """What the accept loop waits on: the listening socket, or with
        several, the selector over them all (an epoll descriptor is readable
        when one of its sockets is)."""
        selector = self._selector
        return selector.fileno() if selector is not None else self.socket.fileno()  # type: ignore[attr-defined]

    def _accept(self) -> tuple[Any, Any]:
        selector = self._selector
        if selector is None:
            return self.socket.accept()
        ready = selector.select(0)
        if not ready:  # socketserver's loop takes an OSError here as "nothing to accept"
            raise BlockingIOError(errno.EAGAIN, "no listener has a connection waiting")
        return ready[0][0].fileobj.accept()  # type: ignore[union-attr]

    def close_listeners(self) -> None:
        """Close every listening socket (removing a Unix socket's file); open connections go on."""
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for listener in self.listeners:
            listener.close()
        self.socket.close()  # never bound: socketserver's own

    def listen_again(self) -> None:
        """Listen again, on the same addresses and ports, after :meth:`close_listeners`."""
        self.socket = socket.socket(self.address_family, self.socket_type)
        try:
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.close_listeners()
            raise

    @property
    def addresses(self) -> list[Address]:
        """Every address listened on: ``(host, port, ...)`` tuples, and a Unix socket's path."""
        return [listener.address for listener in self.listeners]

    @property
    def tcp_addresses(self) -> list[tuple]:
        return [listener.address for listener in self.listeners if not listener.unix]

    @property
    def unix_socket(self) -> Optional[str]:
        """The path of the Unix socket listened on, or None."""
        return next((listener.address for listener in self.listeners if listener.unix), None)

    def get_request(self) -> tuple[Any, Any]:
        try:
            request, client_address = self._accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._listen_disabled()
            raise
        if self._listen_disabled_at is not None:
            with self._handlers_changed:
                self.time_in_listen_disabled_us += int((time.monotonic() - self._listen_disabled_at) * 1e6)
                self._listen_disabled_at = None
        if self.ssl_context is not None and request.family != socket.AF_UNIX:
            # No I/O here: the handshake runs on the connection's worker.
            # (A Unix socket stays plain, as in memcached: it never leaves the machine.)
            try:
                request = self.ssl_context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError):
                request.close()
                raise OSError("cannot set up TLS on an accepted connection") from None
        return request, client_address

    def server_close(self) -> None:
        self.close_listeners()
        self.reaper.close()

    def reload_auth(self) -> int:
        """Reread the auth file (the CLI does on SIGHUP); return how many users it holds.

        A file that cannot be read or is malformed raises
        :class:`~memcachedlite.protocols.auth.AuthFileError` and the users already
        loaded stay in force. Connections already authenticated stay so.
        """
        if self.auth is None:
            raise RuntimeError("this server has no auth file")
        return self.auth.reload()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to a pooled worker, or turn it away when all are busy."""
        if self.stopping.is_set() or not self.pool.submit(self.process_request_thread, request, client_address):
            self._reject(request, client_address)

    def _reject(self, request: Any, client_address: Any) -> None:
        with self._handlers_changed:
            self.rejected_connections += 1
        log.warning("rejected a connection from %s: too many open connections", peer_name(request, client_address))
        if isinstance(request, ssl.SSLSocket):  # over TLS, a reply would need a handshake here
            self.shutdown_request(request)
            return
        try:
            request.sendall(TOO_MANY_CONNECTIONS)
        except OSError:
            request.close()
            return
        self.reaper.add(request)  # closed once the client has read it, off this thread

    def _listen_disabled(self) -> None:
        """No file descriptor for a new connection: count it as memcached's
        listen_disabled_num, and give connections a moment to close (the
        wait ends at once when the server stops)."""
        with self._handlers_changed:
            if self._listen_disabled_at is None:
                self.listen_disabled_num += 1
                self._listen_disabled_at = time.monotonic()
        log.error("cannot accept connections: out of file descriptors")
        self.stopping.wait(0.1)

    def count_idle_kick(self) -> None:
        with self._handlers_changed:
            self.idle_kicks += 1

    def count_handshake_error(self) -> None:
        with self._handlers_changed:
            self.ssl_handshake_errors += 1

    def request_stop(self, reason: str) -> None:
        """Begin the clean stop SIGTERM gives (the ``shutdown`` command, a
        signal handler); returns at once, ``serve_forever`` then returns."""
        if self.stopping.is_set():
            return
        log.info("%s, shutting down", reason)
        self.stopping.set()
        threading.Thread(target=self.shutdown, name="mcl-shutdown", daemon=True).start()

    @property
    def port(self) -> int:
        """The port of the first TCP listener; 0 with none (a Unix socket only)."""
        tcp = self.tcp_addresses
        return tcp[0][1] if tcp else 0

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        assert self.store is not None, "a server needs its store before it serves"
        with self._state_lock:
            if self.stopping.is_set():  # stopped before it started
                return
            self._serving = True
        self.store.start_sweeper()
        try:
            super().serve_forever(poll_interval)
        finally:
            self._serving = False

    def shutdown(self) -> None:
        """Stop the ``serve_forever`` loop; harmless if it never started.

        (socketserver's own would wait forever for a loop that never ran.)
        """
        with self._state_lock:
            self.stopping.set()
            if not self._serving:
                return
        super().shutdown()

    def register(self, handler: MemcacheHandler) -> None:
        with self._handlers_changed:
            self._handlers.add(handler)
            self.total_connections += 1

    def unregister(self, handler: MemcacheHandler) -> None:
        with self._handlers_changed:
            self._handlers.discard(handler)
            self.bytes_read += handler.bytes_read
            self.bytes_written += handler.bytes_written
            self._handlers_changed.notify_all()

    def connection_stats(self) -> dict[str, Any]:
        with self._handlers_changed:
            current = len(self._handlers)
            bytes_read = self.bytes_read + sum(h.bytes_read for h in self._handlers)
            bytes_written = self.bytes_written + sum(h.bytes_written for h in self._handlers)
        return {
            "curr_connections": current,
            "total_connections": self.total_connections,
            "rejected_connections": self.rejected_connections,
            "max_connections": self.max_connections,
            "bytes_read": bytes_read,
            "bytes_written": bytes_written,
            "accepting_conns": 0 if self.stopping.is_set() or self._listen_disabled_at is not None else 1,
            "threads": self.pool.size + 1,
            # stats settings: memcached's inter (its -l), tcpport, domain_socket (-s) and umask (-a)
            "host": interface(self.addresses),
            "port": self.port,
            "domain_socket": self.unix_socket or "NULL",
            "umask": int(format(self.unix_mask, "o")),
            "backlog": self.request_queue_size,
            "idle_timeout": self.idle_timeout,
            "idle_kicks": self.idle_kicks,
            "read_buf_size": RECV_SIZE,
            "listen_disabled_num": self.listen_disabled_num,
            "time_in_listen_disabled_us": self.time_in_listen_disabled_us,
            "ssl_handshake_errors": self.ssl_handshake_errors,
        }

    def reset_stats(self) -> None:
        with self._handlers_changed:
            self.total_connections = len(self._handlers)
            self.rejected_connections = 0
            self.idle_kicks = self.ssl_handshake_errors = 0
            self.listen_disabled_num = self.time_in_listen_disabled_us = 0
            self.bytes_read = self.bytes_written = 0
            for handler in self._handlers:
                handler.bytes_read = handler.bytes_written = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("error serving %s", peer_name(request, client_address))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let connections finish what they received, close them.

        Safe to call from any thread but the one running ``serve_forever``.
        """
        self.shutdown()
        self.server_close()
        with self._handlers_changed:
            for handler in list(self._handlers):
                try:  # wakes a handler blocked in recv; its replies still go out
                    # socket.socket's own shutdown: SSLSocket's would drop TLS and
                    # let the last replies leave in clear text.
                    socket.socket.shutdown(handler.connection, socket.SHUT_RD)
                except OSError:
                    pass
            deadline = time.monotonic() + timeout
            while self._handlers:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("%d connections still busy at shutdown", len(self._handlers))
                    break
                self._handlers_changed.wait(left)
        self.pool.close(timeout=1.0)


class MemcacheUnixServer(MemcacheServer, socketserver.ThreadingUnixStreamServer):
    """The same server over a Unix socket only (memcached's ``-s`` alone):
    ``address`` is the socket file's path, and everything else (handler,
    limits, stop, ``extra_addresses``) is :class:`MemcacheServer`'s.

    A socket file a live server answers on is refused; one left by a server
    that was killed is replaced; the file is removed on a clean stop.
    """
