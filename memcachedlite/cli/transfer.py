"""Bulk export and import behind ``mcl dump`` and ``mcl load``: the dump file
format, the seed server's data file, and pipelined transfers to and from any
memcached-protocol server.

The dump format (JSON lines: UTF-8 text, one JSON object per line)::

    {"format": "memcachedlite-dump", "version": 1, "created": 1767225600, "servers": ["127.0.0.1:9889"]}
    {"key": "Z3JlZXRpbmc=", "value": "aGVsbG8=", "flags": 0, "ttl": 0}
    {"key": "c2Vzc2lvbg==", "value": "AAEC/w0K", "flags": 3, "ttl": 59}

The first line is a header; every other line is one item: ``key`` and
``value`` are the raw bytes in standard base64 (so any byte, ``\\r\\n`` and NUL
included, survives), ``flags`` the 32-bit client flags and ``ttl`` the seconds
the item had left to live when it was dumped (0: never expires). A load gives
each item that ttl again, counted from the moment it is loaded.

A dump lists a server's items with ``lru_crawler metadump all`` (memcached's
verb, which memcachedlite implements too) and reads them with ``get`` in
batches; the remaining ttl comes from the ``exp`` the metadump reports and the
server's own clock (``stats`` ``time``). A dump of a server that is being
written to is not a snapshot: an item changed during the dump is written as it
was when its batch was read.

The seed's data file has one ``<key> <value>`` line per item (the value is
the rest of the line, and a later line for a key wins). ``mcl load`` takes a
file whose first line starts with ``{"`` for a dump, anything else for the
seed's format.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Callable, Iterable, Iterator
from urllib.parse import unquote_to_bytes

from ..server.addresses import connect, format_server
from ..storage.keys import MAX_KEY, is_plain_key
from ..storage.numbers import RELATIVE_EXPTIME_LIMIT, U32

DUMP_FORMAT = "memcachedlite-dump"
DUMP_VERSION = 1
#: Keys per ``get`` while dumping.
GET_BATCH = 500
#: Commands, and bytes of values, per pipelined batch while loading.
SET_BATCH = 1000
SET_BATCH_BYTES = 4 * 1024 * 1024

#: ``(host, port)``, or ``(path, 0)`` for a Unix socket (see :mod:`memcachedlite.server.addresses`)
Server = tuple[str, int]


class BulkError(Exception):
    """A dump or load cannot go on (unsupported server, unreadable file...)."""


class ServerReplyError(BulkError):
    """The server answered a dump request with an error line."""


class Closed(ConnectionError):
    """The server closed the connection before its reply was complete."""


@dataclass(frozen=True)
class DumpItem:
    """One item as it travels between a server and a dump file."""

    key: bytes
    value: bytes
    flags: int = 0
    ttl: int = 0


_describe = format_server


class Connection:
    """A plain memcached text-protocol connection with a buffered reader."""

    def __init__(
        self,
        server: Server,
        timeout: float,
        tls_context: ssl.SSLContext | None = None,
        credentials: bytes | None = None,
    ) -> None:
        self.server = server
        sock = connect(server, timeout)
        if tls_context is not None:
            try:
                sock = tls_context.wrap_socket(sock, server_hostname=server[0])
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self._buf = b""
        self._pos = 0
        if credentials is not None:  # memcached's text-protocol authentication
            self.send(b"set auth 0 0 %d\r\n%s\r\n" % (len(credentials), credentials))
            line = self.readline()
            if line != b"STORED\r\n":
                self.close()
                raise _error(server, "authentication", line)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(1024 * 1024)
        if not chunk:
            raise Closed(f"{_describe(self.server)} closed the connection")
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0

    def readline(self) -> bytes:
        """The next line, with its line ending (``\\n`` or ``\\r\\n``)."""
        while True:
            end = self._buf.find(b"\n", self._pos)
            if end >= 0:
                line = self._buf[self._pos : end + 1]
                self._pos = end + 1
                return line
            self._fill()

    def read_exactly(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n:
            self._fill()
        data = self._buf[self._pos : self._pos + n]
        self._pos += n
        return data


def _error(server: Server, what: str, line: bytes) -> ServerReplyError:
    text = line.strip().decode("utf-8", "replace")
    return ServerReplyError(f"{_describe(server)} answered {what} with {text!r}")


# -- dumping ---------------------------------------------------------------------


@dataclass(frozen=True)
class MetaEntry:
    """One line of ``lru_crawler metadump``: the key and its absolute expiry (-1: never)."""

    key: bytes
    exp: int


def server_time(conn: Connection) -> int:
    """The server's clock (``stats`` ``time``), which metadump's ``exp`` is relative to."""
    conn.send(b"stats\r\n")
    now = None
    while True:
        line = conn.readline()
        if line.startswith(b"STAT "):
            parts = line.split()
            if len(parts) >= 3 and parts[1] == b"time":
                now = int(parts[2])
        elif line.rstrip() == b"END":
            break
        else:
            raise _error(conn.server, "stats", line)
    if now is None:
        raise BulkError(f"{_describe(conn.server)} does not report its time in stats")
    return now


def metadump(conn: Connection) -> list[MetaEntry]:
    """Every live item's key and expiry, from ``lru_crawler metadump all``."""
    conn.send(b"lru_crawler metadump all\r\n")
    entries = []
    while True:
        line = conn.readline()
        if line.startswith(b"key="):
            fields = dict(part.split(b"=", 1) for part in line.split() if b"=" in part)
            try:
                entries.append(MetaEntry(unquote_to_bytes(fields[b"key"]), int(fields.get(b"exp", b"-1"))))
            except (KeyError, ValueError):
                raise _error(conn.server, "lru_crawler metadump", line) from None
        elif line.rstrip() == b"END":
            return entries
        else:
            raise _error(conn.server, "lru_crawler metadump", line)


def fetch(conn: Connection, keys: list[bytes]) -> dict[bytes, tuple[bytes, int]]:
    """``get`` of ``keys`` in one request: key -> (value, flags) for those still there.

    Keys only the meta protocol's base64 form can carry (a space, CRLF or
    another control byte, stored with ``ms ... b``) are read with ``mg``
    instead: on a ``get`` line they would split into other keys or commands.
    """
    text = [key for key in keys if is_plain_key(key)]
    found = _fetch_binary(conn, [key for key in keys if not is_plain_key(key)])
    if not text:
        return found
    conn.send(b"get " + b" ".join(text) + b"\r\n")
    while True:
        line = conn.readline()
        if line.startswith(b"VALUE "):
            parts = line.split()
            if len(parts) < 4:
                raise _error(conn.server, "get", line)
            value = conn.read_exactly(int(parts[3]) + 2)[:-2]
            found[parts[1]] = (value, int(parts[2]))
        elif line.rstrip() == b"END":
            return found
        else:
            raise _error(conn.server, "get", line)


def _fetch_binary(conn: Connection, keys: list[bytes]) -> dict[bytes, tuple[bytes, int]]:
    """``mg <base64 key> b v f`` for each of ``keys``, pipelined."""
    found: dict[bytes, tuple[bytes, int]] = {}
    if not keys:
        return found
    conn.send(b"".join(b"mg %s b v f\r\n" % base64.b64encode(key) for key in keys))
    for key in keys:
        line = conn.readline()
        parts = line.split()
        if parts[:1] == [b"EN"]:
            continue
        if parts[:1] != [b"VA"] or len(parts) < 3 or not parts[2].startswith(b"f"):
            raise _error(conn.server, "mg", line)
        value = conn.read_exactly(int(parts[1]) + 2)[:-2]
        found[key] = (value, int(parts[2][1:]))
    return found


def dump_server(
    conn: Connection, entries: list[MetaEntry], now: int, progress: Callable[[int], None] = lambda n: None
) -> Iterator[DumpItem]:
    """The items listed in ``entries``, read in batches; ``now`` is the server's time."""
    for start in range(0, len(entries), GET_BATCH):
        batch = entries[start : start + GET_BATCH]
        found = fetch(conn, [entry.key for entry in batch])
        for entry in batch:
            hit = found.get(entry.key)
            if hit is None:
                continue  # deleted or expired since the metadump
            if entry.exp < 0:
                ttl = 0
            else:
                ttl = entry.exp - now
                if ttl <= 0:
                    continue
            yield DumpItem(entry.key, hit[0], hit[1], ttl)
        progress(len(batch))


@contextmanager
def atomic_output(path: str) -> Iterator[IO[bytes]]:
    """A file that appears at ``path`` complete or not at all: written beside
    it, renamed into place on success and removed on failure. A path that
    is not a regular file (a pipe, ``/dev/stdout``, a device) is written
    as it is: renaming over it would replace the device with a file."""
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, "wb") as out:
            yield out
        return
    directory, name = os.path.split(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def header(servers: Iterable[Server]) -> bytes:
    line = {
        "format": DUMP_FORMAT,
        "version": DUMP_VERSION,
        "created": int(time.time()),
        "servers": [_describe(s) for s in servers],
    }
    return json.dumps(line).encode("ascii") + b"\n"


def encode_item(item: DumpItem) -> bytes:
    key = base64.b64encode(item.key).decode("ascii")
    value = base64.b64encode(item.value).decode("ascii")
    return b'{"key": "%s", "value": "%s", "flags": %d, "ttl": %d}\n' % (
        key.encode("ascii"),
        value.encode("ascii"),
        item.flags,
        item.ttl,
    )


# -- reading a file to load --------------------------------------------------------


class BadLine(Exception):
    """One line of the input cannot be loaded; the load skips it and goes on."""


@dataclass
class Source:
    """The items of a file to load, whichever format it is in.

    ``format`` is ``"dump"`` or ``"seed"``; ``skipped`` lists (line number,
    reason) for the lines that could not be loaded.
    """

    stream: IO[bytes]
    format: str = ""
    skipped: list[tuple[int, str]] = field(default_factory=list)
    bytes_read: int = 0
    _first: bytes = b""

    def __post_init__(self) -> None:
        self._first = self.stream.readline()
        self.bytes_read = len(self._first)
        stripped = self._first.strip()
        if self._first.startswith(b"MEMCACHEDLITE-LOG "):
            raise BulkError(
                "this is a memcachedlite data file, not a dump: start a server on it with "
                "'mcl serve --data-file FILE' (or dump that server)"
            )
        if stripped.startswith(b'{"'):  # a seed key may start with '{', never with '{"' then a space
            self.format = "dump"
            try:
                first = json.loads(stripped)
            except (ValueError, RecursionError):  # RecursionError: arrays nested too deep
                raise BulkError("line 1: not valid JSON, so not a dump file") from None
            if not isinstance(first, dict):
                raise BulkError("line 1: not a JSON object, so not a dump file")
            if "format" in first:
                if first.get("format") != DUMP_FORMAT:
                    raise BulkError(f"unknown dump format {first.get('format')!r}")
                if first.get("version") != DUMP_VERSION:
                    raise BulkError(f"dump format version {first.get('version')!r} is not supported (only 1)")
                self._first = b""  # the header is not an item
        else:
            self.format = "seed"

    def __iter__(self) -> Iterator[DumpItem]:
        parse = self._parse_dump if self.format == "dump" else self._parse_seed
        number = 1
        line = self._first
        while True:
            if line.strip():
                try:
                    yield parse(line)
                except BadLine as exc:
                    self.skipped.append((number, str(exc)))
            line = self.stream.readline()
            if not line:
                return
            self.bytes_read += len(line)
            number += 1

    @staticmethod
    def _parse_dump(line: bytes) -> DumpItem:
        try:
            record = json.loads(line)
            key = base64.b64decode(record["key"], validate=True)
            value = base64.b64decode(record["value"], validate=True)
            flags = int(record.get("flags", 0))
            ttl = int(record.get("ttl", 0))
        # OverflowError: a flags or ttl of Infinity; RecursionError: arrays nested too deep
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
            raise BadLine("not an item of the dump format") from None
        if not 0 <= flags < U32:
            raise BadLine(f"flags {flags} out of range")
        if ttl < 0:
            raise BadLine(f"negative ttl {ttl}")
        return DumpItem(_valid_key(key, binary=True), value, flags, ttl)

    @staticmethod
    def _parse_seed(line: bytes) -> DumpItem:
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        key, sep, value = line.partition(b" ")
        if not sep:
            raise BadLine("no space between key and value")
        return DumpItem(_valid_key(key), value)


def _valid_key(key: bytes, binary: bool = False) -> bytes:
    """``key`` if a server can store it: any non-empty bytes up to 250 with
    ``binary`` (dumps carry keys stored in base64 form), else a text key."""
    if len(key) > MAX_KEY:
        raise BadLine(f"key of {len(key)} bytes (at most {MAX_KEY})")
    if binary and key:
        return key
    if not is_plain_key(key):
        raise BadLine(f"key {key[:40]!r} is empty or holds spaces or control characters")
    return key


# -- loading -------------------------------------------------------------------


@dataclass
class LoadReport:
    stored: int = 0
    not_stored: int = 0
    failed: int = 0
    first_error: str = ""

    def add(self, other: LoadReport) -> None:
        self.stored += other.stored
        self.not_stored += other.not_stored
        self.failed += other.failed
        self.first_error = self.first_error or other.first_error


#: The latest expiry an exptime can say: memcached reads it as a signed
#: 32-bit unix time (January 2038); a later one wraps into the past.
MAX_EXPTIME = (1 << 31) - 1


def exptime(ttl: int, now: int | None = None) -> int:
    """The exptime to send for ``ttl`` seconds from now: memcached reads more
    than 30 days as a unix time, so a longer one is sent as the time it
    ends, and none past :data:`MAX_EXPTIME`: a longer ttl is cut to that
    rather than sent to expire the item at once."""
    if ttl <= RELATIVE_EXPTIME_LIMIT:
        return ttl
    return min(int(time.time() if now is None else now) + ttl, MAX_EXPTIME)


def set_command(item: DumpItem, now: int) -> bytes:
    """A ``set``, or for a key only the base64 form can carry, the meta ``ms ... b``."""
    if not is_plain_key(item.key):
        head = b"ms %s %d b F%d T%d" % (base64.b64encode(item.key), len(item.value), item.flags, exptime(item.ttl, now))
        return head + b"\r\n" + item.value + b"\r\n"
    return b"set %s %d %d %d\r\n%s\r\n" % (item.key, item.flags, exptime(item.ttl, now), len(item.value), item.value)


def send_batch(conn: Connection, commands: list[bytes]) -> LoadReport:
    """Send storage commands as one pipelined write and count the replies."""
    conn.send(b"".join(commands))
    report = LoadReport()
    for _ in commands:
        line = conn.readline().rstrip()
        if line in (b"STORED", b"HD"):
            report.stored += 1
        elif line in (b"NOT_STORED", b"NOT-STORED", b"NS"):
            report.not_stored += 1
        else:
            report.failed += 1
            if not report.first_error:
                report.first_error = f"{_describe(conn.server)}: {line.decode('utf-8', 'replace')}"
    return report


class Loader:
    """Sends items to one server, or spreads them over several with ``route``.

    ``route(key)`` names the server a key belongs to, so a load spreads keys
    exactly as the client that will read them does.
    """

    def __init__(
        self,
        servers: list[Server],
        timeout: float,
        route: Callable[[bytes], Server] | None = None,
        tls_context: ssl.SSLContext | None = None,
        credentials: bytes | None = None,
    ) -> None:
        self.servers = servers
        self.timeout = timeout
        self.tls_context = tls_context
        self.credentials = credentials
        self.route = route or (lambda key: servers[0])
        self.report = LoadReport()
        self._conns: dict[Server, Connection] = {}

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _conn(self, server: Server) -> Connection:
        conn = self._conns.get(server)
        if conn is None:
            conn = self._conns[server] = Connection(server, self.timeout, self.tls_context, self.credentials)
        return conn

    def load(self, items: Iterable[DumpItem], progress: Callable[[], None] = lambda: None) -> LoadReport:
        pending: dict[Server, list[bytes]] = {}
        count = size = 0
        for item in items:
            now = int(time.time())
            pending.setdefault(self.route(item.key), []).append(set_command(item, now))
            count += 1
            size += len(item.value)
            if count >= SET_BATCH or size >= SET_BATCH_BYTES:
                self._flush(pending)
                progress()
                count = size = 0
        self._flush(pending)
        progress()
        return self.report

    def _flush(self, pending: dict[Server, list[bytes]]) -> None:
        for server, commands in pending.items():
            self.report.add(send_batch(self._conn(server), commands))
        pending.clear()
