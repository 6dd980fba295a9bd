"""Addresses as memcached and its clients write them: the server's listen
list (memcached's ``-l``: ``127.0.0.1,[::1]:11212,localhost``), a client's
server (``HOST:PORT``, ``[V6]:PORT``, a Unix socket ``/path`` or
``unix:/path``), how logs name either, and a client's connection to one.

A client's server is the pair ``(host, port)``; a Unix socket is the pair
``(path, 0)``, as libmemcached and pylibmc hold it: a host starting with
``/`` is a socket file, never a host name, and port 0 is never a TCP port a
client connects to. A server's own listening address is what ``bind``
takes: a tuple for TCP, the path (a ``str``) for a Unix socket.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Optional, Union

#: A client's server: ``(host, port)``, or ``(path, 0)`` for a Unix socket.
Server = tuple[str, int]
#: A listening (or peer) address as ``socket`` has it: a tuple for TCP, a path for a Unix socket.
Address = Union[tuple, str]

#: The prefix pymemcache and Django's ``LOCATION`` take for a Unix socket.
UNIX_PREFIX = "unix:"


def is_unix(host: str) -> bool:
    """Whether a server's host names a Unix socket file (it starts with ``/``)."""
    return host.startswith("/")


def parse_server(text: str) -> Server:
    """A client's server from ``HOST:PORT``, ``[V6]:PORT``, ``/path`` or
    ``unix:path`` (the rule of pymemcache and Django: a Unix socket starts
    with ``/`` or ``unix:``); raises ValueError for anything else."""
    text = text.strip()
    if text.startswith(UNIX_PREFIX):
        path = text[len(UNIX_PREFIX) :]
        if not path:
            raise ValueError(f"{text!r} names no socket file")
        return os.path.abspath(path), 0
    if is_unix(text):
        return text, 0
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT or a Unix socket path")
    return host.strip("[]"), int(port)


def format_server(server: Server) -> str:
    """``HOST:PORT`` (an IPv6 host in brackets), or a Unix socket's path: the
    inverse of :func:`parse_server`, and a form every client takes."""
    host, port = server[0], server[1]
    if is_unix(host):
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe(address: Address) -> str:
    """How logs and messages name a listening address: ``HOST:PORT``, or ``unix:PATH``."""
    if isinstance(address, (str, bytes)):
        return UNIX_PREFIX + os.fsdecode(address)
    return format_server(address)


def connect(server: Server, timeout: Optional[float]) -> socket.socket:
    """A socket connected to a client's server: TCP with Nagle's algorithm
    off (requests are small and answered at once), or a Unix socket. A
    socket file that is not there is a refused connection, as a closed port is."""
    host, port = server
    if not is_unix(host):
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(host)
    except FileNotFoundError as exc:
        sock.close()
        raise ConnectionRefusedError(exc.errno, f"{exc.strerror}: {host}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def parse_listen(spec: str, port: int) -> list[tuple[str, int]]:
    """memcached's ``-l`` list as ``(host, port)`` pairs, not yet resolved.

    Items are separated by commas (or semicolons, as memcached allows); each
    is a host name or address with ``port``, or with its own ``:PORT``; an
    IPv6 address is written in brackets (``[::1]``, ``[::1]:11212``) or bare
    (``::1``: with several colons, as memcached reads it, there is no port);
    ``*`` is every address of the machine (host ``""``). ValueError names a
    malformed item.
    """
    pairs = []
    for item in (part.strip() for part in re.split("[,;]", spec)):
        if not item:
            continue
        host, own = item, port
        if item.startswith("["):
            end = item.find("]")
            host, rest = item[1:end], item[end + 1 :]
            if end < 0 or not host or (rest and not rest.startswith(":")):
                raise ValueError(f"{item!r} is not an IPv6 address in brackets, like [::1] or [::1]:11211")
            if rest:
                own = _port(rest[1:], item)
        elif item.count(":") == 1:
            host, text = item.split(":")
            own = _port(text, item)
        pairs.append(("" if host == "*" else host, own))
    if not pairs:
        raise ValueError(f"{spec!r} names no address to listen on")
    return pairs


def _port(text: str, item: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"{item!r}: {text!r} is not a port number")
    return int(text)


def resolve(host: str, port: int) -> list[tuple]:
    """Every address ``host`` names, as ``bind`` takes them (memcached listens
    on each one ``getaddrinfo`` lists: ``localhost`` may be 127.0.0.1 and ::1);
    ``""`` is every address of the machine. Raises ``socket.gaierror``."""
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    return [info[4] for info in infos]


def interface(addresses: list[Address]) -> str:
    """The TCP listeners as memcached's ``stats settings`` shows its ``-l``
    (``inter``): the hosts, each with ``:PORT`` when its port is not the
    first one's; ``NULL`` when there is no TCP listener."""
    tcp = [a for a in addresses if isinstance(a, tuple)]
    if not tcp:
        return "NULL"
    port = tcp[0][1]
    hosts = [format_server(a) if a[1] != port else (f"[{a[0]}]" if ":" in a[0] else a[0]) for a in tcp]
    return ",".join(hosts)
