"""Wire-level pieces of memcached's text protocol: limits, number and key
parsing, and the reply lines. The framing loop itself is in
:mod:`memcachedlite.session`.

Reference: memcached's ``doc/protocol.txt``. Everything here is bytes.
"""

from __future__ import annotations

from .errors import BadCommandLine

#: A command line longer than this with no newline closes the connection.
MAX_LINE = 2048
#: ``get``-like lines may name many keys; they are still bounded.
MAX_LONG_LINE = 1024 * 1024
MAX_KEY = 250
DEFAULT_MAX_ITEM_SIZE = 1024 * 1024
#: Exptimes above this many seconds are absolute unix times (30 days).
RELATIVE_EXPTIME_LIMIT = 60 * 60 * 24 * 30

U32 = 1 << 32
U64 = 1 << 64
_DIGITS = b"0123456789"
_CONTROL = bytes(range(33)) + b"\x7f"

CRLF = b"\r\n"
STORED = b"STORED\r\n"
NOT_STORED = b"NOT_STORED\r\n"
NOT_STORED_LITE = b"NOT-STORED\r\n"
EXISTS = b"EXISTS\r\n"
NOT_FOUND = b"NOT_FOUND\r\n"
DELETED = b"DELETED\r\n"
TOUCHED = b"TOUCHED\r\n"
END = b"END\r\n"
OK = b"OK\r\n"
RESET = b"RESET\r\n"
ERROR = b"ERROR\r\n"


def check_key(key: bytes) -> bytes:
    """Reject keys memcached would not accept: too long, or holding spaces or
    control characters (which would break the line-based framing)."""
    if len(key) > MAX_KEY or not key or len(key.translate(None, _CONTROL)) != len(key):
        raise BadCommandLine()
    return key


def parse_uint(token: bytes, limit: int = U64) -> int:
    """A decimal unsigned integer below ``limit``; anything else is a bad line.

    Only ASCII digits are accepted: ``int()`` alone would also take ``+1``,
    ``1_000`` and surrounding whitespace, which memcached refuses.
    """
    if not token or len(token) > 20 or token.strip(_DIGITS):
        raise BadCommandLine()
    value = int(token)
    if value >= limit:
        raise BadCommandLine()
    return value


def parse_int(token: bytes) -> int:
    """A signed decimal integer (exptimes may be negative)."""
    if token[:1] == b"-":
        return -parse_uint(token[1:], 1 << 63)
    return parse_uint(token, 1 << 63)


def parse_length(token: bytes) -> int:
    """A data block length: unsigned, and below 2 GiB as in memcached."""
    return parse_uint(token, 1 << 31)


def value_line(key: bytes, flags: int, value: bytes, cas: int | None = None) -> bytes:
    """The ``VALUE`` line and data block of one item in a retrieval reply."""
    if cas is None:
        return b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, len(value), value)
    return b"VALUE %s %d %d %d\r\n%s\r\n" % (key, flags, len(value), cas, value)


def value_line_lite(key: bytes, value: bytes) -> bytes:
    """The seed assignment's shape: ``VALUE <key> <bytes>`` without flags."""
    return b"VALUE %s %d\r\n%s\r\n" % (key, len(value), value)
