"""A server's listening sockets (:class:`Listener`): TCP on an IPv4 or IPv6
address, or a Unix socket file (memcached's ``-s``) with its access mask
(``-a``), taken over from a dead predecessor but never from a live one, and
removed when the server stops cleanly; and how logs name a client of either.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import struct
from typing import Any, Optional

from .addresses import Address, describe

log = logging.getLogger(__name__)

#: memcached's default ``-a``: only the server's own user may connect.
DEFAULT_UNIX_MASK = 0o700


class ListenError(OSError):
    """A listener cannot be set up; the message is one line naming the address."""

    def __init__(self, address: Address, reason: object) -> None:
        super().__init__(f"cannot listen on {describe(address)}: {reason}")
        self.address = address
        self.reason = str(reason)


def family_of(address: Address) -> socket.AddressFamily:
    """The socket family an address needs: a path is a Unix socket, a host with a colon IPv6."""
    if isinstance(address, (str, bytes)):
        return socket.AF_UNIX
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


class Listener:
    """One listening socket of a server, and what binding and closing it mean.

    ``sock`` is an unbound socket of the address's family (a new one by
    default). A Unix socket's file gets the mode ``unix_mask`` (memcached's
    ``-a``: the permission bits, 0700 by default), set between ``bind`` and
    ``listen``, so no client ever connects through a wider mode.
    """

    def __init__(self, address: Address, sock: Optional[socket.socket] = None, unix_mask: int = DEFAULT_UNIX_MASK):
        self.address = address
        self.family = family_of(address)
        self.socket = sock if sock is not None else socket.socket(self.family, socket.SOCK_STREAM)
        self.unix_mask = unix_mask
        #: (device, inode) of the socket file this listener made, to remove it and nothing else
        self._made: Optional[tuple[int, int]] = None

    @property
    def unix(self) -> bool:
        return self.family == socket.AF_UNIX

    def bind(self, port: Optional[int] = None) -> None:
        """Bind to the address (to ``port`` instead of its port 0, when given);
        raises :class:`ListenError` naming the address."""
        try:
            if self.unix:
                self._bind_unix()
            else:
                self._bind_tcp(port)
        except OSError as exc:
            raise ListenError(self.address, exc.strerror or exc) from None

    def _bind_tcp(self, port: Optional[int]) -> None:
        sock = self.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.family == socket.AF_INET6:  # [::] leaves 0.0.0.0 to a listener of its own, as in memcached
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        address = self.address
        if port is not None and not address[1]:
            address = (address[0], port, *address[2:])
            self.address = address  # named so in an error
        sock.bind(address)
        self.address = sock.getsockname()

    def _bind_unix(self) -> None:
        path = self.address
        _clear_stale_socket(path)
        self.socket.bind(path)
        made = os.stat(path)
        self._made = (made.st_dev, made.st_ino)
        os.chmod(path, self.unix_mask & 0o777)

    def listen(self, backlog: int) -> None:
        """Start accepting; raises :class:`ListenError` naming the address
        (two sockets bound to one port with SO_REUSEADDR: the second to listen fails)."""
        try:
            self.socket.listen(backlog)
        except OSError as exc:
            raise ListenError(self.address, exc.strerror or exc) from None

    def close(self) -> None:
        """Close the socket and remove the socket file it made, if that file is still its own."""
        self.socket.close()
        made, self._made = self._made, None
        if made is None:
            return
        path = self.address
        try:
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == made:
                os.unlink(path)
        except OSError:  # gone already, or no longer ours to remove
            pass


def _clear_stale_socket(path: Any) -> None:
    """Make room for a socket file at ``path``: remove one no server answers
    on (left by a server that was killed); refuse one a server answers on,
    and any other kind of file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, "a file that is not a socket is in the way")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)  # a Unix socket's connect never waits then: it is taken, refused or full
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        log.info("removed the stale socket file %s (no server answered on it)", os.fsdecode(path))
        return
    except BlockingIOError:
        pass  # a server is there, its queue of connections full
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another server is listening on it")


_UCRED = struct.Struct("3i")  # Linux's struct ucred: pid, uid, gid


def peer_name(sock: socket.socket, address: Any) -> str:
    """How logs name a client: ``HOST:PORT``; over a Unix socket (whose
    clients have no address of their own) the socket's path and, where the
    system tells, the client's process id."""
    if sock.family != socket.AF_UNIX:
        return describe(address)
    try:
        name = describe(sock.getsockname())
        credentials = getattr(socket, "SO_PEERCRED", None)
        if credentials is None:  # pragma: no cover - not Linux
            return name
        pid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, credentials, _UCRED.size))[0]
    except OSError:
        return describe(address)
    return f"{name} (pid {pid})"
