"""The wire formats of the load: the memcached text replies it expects, memcached binary
and Redis RESP request builders and reply checkers, and the binary probe."""

from __future__ import annotations

import socket
import struct

#: The memcached text protocol's replies the load checks for.
STORED = b"STORED\r\n"
END = b"END\r\n"
VALUE = b"VALUE "

#: Wire protocols the load generator speaks.
PROTOCOLS = ("text", "binary", "resp")


#: memcached's binary protocol: a 24-byte header (magic, opcode, key length,
#: extras length, data type, vbucket or status, total body length, opaque, cas).
BIN_HEADER = struct.Struct(">BBHBBHIIQ")
_BIN_REQUEST = 0x80
_BIN_RESPONSE = 0x81
BIN_GET = 0x00
BIN_SET = 0x01
BIN_VERSION = 0x0B
_BIN_NOT_FOUND = 0x0001
#: A reply body longer than this is not one the load asked for (1 MiB items and some room).
_BIN_MAX_BODY = 2 * 1024 * 1024

#: Outcomes of a reply check: wait for more bytes, a wrong reply, the expected
#: reply (a hit, or a stored set), a miss.
MORE = 0
DONE = 1
WRONG = -1
MISS = 2


def binary_request(opcode: int, key: bytes = b"", value: bytes = b"", extras: bytes = b"", opaque: int = 0) -> bytes:
    """One request of memcached's binary protocol (data type 0, vbucket 0, cas 0)."""
    body = len(extras) + len(key) + len(value)
    return BIN_HEADER.pack(_BIN_REQUEST, opcode, len(key), len(extras), 0, 0, body, opaque, 0) + extras + key + value


def binary_set(key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> bytes:
    """A binary SET: 8 bytes of extras (flags, exptime) before the key and value."""
    return binary_request(BIN_SET, key, value, struct.pack(">II", flags, exptime))


def resp_command(*args: bytes) -> bytes:
    """A Redis command as a RESP array of bulk strings, as redis-cli sends it."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def check_binary_reply(buf: bytes, pos: int, expectation: tuple) -> tuple[int, int]:
    """Check the binary reply at ``buf[pos:]`` against ``(is_get, opcode, body)``.

    The header is checked field by field rather than compared whole because it
    carries the item's cas, which only the server knows; the body (a get's
    flags and value; nothing for a set) must be exactly ``body``. A get may
    also be a miss (status 1). Returns the position after the reply and
    ``DONE``, ``MISS``, ``MORE`` (incomplete) or ``WRONG``.
    """
    is_get, opcode, body = expectation
    if len(buf) - pos < 24:
        return pos, (MORE if len(buf) == pos or buf[pos] == _BIN_RESPONSE else WRONG)
    magic, op, _key, _extras, _type, status, total, _opaque, _cas = BIN_HEADER.unpack_from(buf, pos)
    if magic != _BIN_RESPONSE or op != opcode or total > _BIN_MAX_BODY:
        return pos, WRONG
    end = pos + 24 + total
    if end > len(buf):
        return pos, MORE
    if status == 0:
        if total == len(body) and buf.startswith(body, pos + 24):
            return end, DONE
        return pos, WRONG
    if status == _BIN_NOT_FOUND and is_get:
        return end, MISS
    return pos, WRONG


def check_resp_reply(buf: bytes, pos: int, expectation: tuple) -> tuple[int, int]:
    """Check the RESP reply at ``buf[pos:]`` against ``(is_get, reply, miss_reply)``.

    Redis's replies to GET and SET hold nothing the server chooses, so both
    outcomes are exact bytes. Returns like :func:`check_binary_reply`.
    """
    _is_get, reply, miss = expectation
    if buf.startswith(reply, pos):
        return pos + len(reply), DONE
    if miss is not None and buf.startswith(miss, pos):
        return pos + len(miss), MISS
    rest = buf[pos:]
    if reply.startswith(rest) or (miss is not None and miss.startswith(rest)):
        return pos, MORE
    return pos, WRONG


def binary_probe(host: str, port: int, timeout: float = 2.0) -> str | None:
    """The server's version if it answers a binary VERSION request, else None.

    A server that does not speak the binary protocol may answer with a text
    error, close the connection or wait for a line end that never comes: all
    of them are "no" within ``timeout``.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(binary_request(BIN_VERSION))
            buf = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                buf += chunk
                if buf[0] != _BIN_RESPONSE:
                    return None
                if len(buf) < 24:
                    continue
                _m, op, _k, _e, _t, status, total, _o, _c = BIN_HEADER.unpack_from(buf)
                if op != BIN_VERSION or status != 0 or total > 4096:
                    return None
                if len(buf) >= 24 + total:
                    return buf[24 : 24 + total].decode(errors="replace")
    except OSError:
        return None
