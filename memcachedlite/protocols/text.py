"""Wire-level pieces of memcached's text protocol: limits, number and key
parsing, and the reply lines. The framing loop itself is in
:mod:`memcachedlite.protocols.session`.

Reference: memcached's ``doc/protocol.txt``. Everything here is bytes.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import mypyc_attr

from ..errors import BadCommandLine
from ..storage.keys import CONTROL as _CONTROL
from ..storage.keys import MAX_KEY, is_plain_key
from ..storage.numbers import U32, U64

#: A command line longer than this with no newline closes the connection.
MAX_LINE: Final = 2048
#: ``get``-like lines may name many keys; they are still bounded.
MAX_LONG_LINE: Final = 1024 * 1024
DEFAULT_MAX_ITEM_SIZE: Final = 1024 * 1024

CRLF: Final = b"\r\n"
STORED: Final = b"STORED\r\n"
#: ``mn``'s reply: a quiet pipeline's end, sent even when the batch before it failed
MN: Final = b"MN\r\n"
NOT_STORED: Final = b"NOT_STORED\r\n"
NOT_STORED_LITE: Final = b"NOT-STORED\r\n"
EXISTS: Final = b"EXISTS\r\n"
NOT_FOUND: Final = b"NOT_FOUND\r\n"
DELETED: Final = b"DELETED\r\n"
TOUCHED: Final = b"TOUCHED\r\n"
END: Final = b"END\r\n"
OK: Final = b"OK\r\n"
RESET: Final = b"RESET\r\n"
ERROR: Final = b"ERROR\r\n"


def check_key(key: bytes) -> bytes:
    """Reject keys over 250 bytes, and keys holding control characters.

    memcached itself only refuses the long ones; control characters are
    refused here too because a key with a newline or a tab in it cannot be
    written back on a command line by most clients, nor read back safely.
    """
    if not is_plain_key(key):
        raise BadCommandLine()
    return key


def check_keys(keys: list[bytes]) -> None:
    """:func:`check_key` for many keys at once (one pass in C over the lot for
    the control characters)."""
    joined = b"".join(keys)
    if len(joined.translate(None, _CONTROL)) != len(joined):
        raise BadCommandLine()
    # a plain loop, not max(map(len, keys)): compiled, it is C, where max and
    # map are generic calls; interpreted, it costs the same (callgrind)
    for key in keys:
        if len(key) > MAX_KEY:
            raise BadCommandLine()


def parse_uint(token: bytes, limit: int = U64) -> int:
    """A decimal unsigned integer below ``limit``; anything else is a bad line.

    Like memcached's ``strtoul``, a leading ``+`` is allowed; unlike a bare
    ``int()``, underscores and whitespace are not.
    """
    if token.isdigit() and len(token) <= 20:  # the usual case: plain ASCII digits
        value = int(token)
    else:
        digits = token[1:] if token[:1] == b"+" else token
        if not digits.isdigit() or len(digits) > 20:
            raise BadCommandLine()
        value = int(digits)
    if value >= limit:
        raise BadCommandLine()
    return value


_I64: Final = 1 << 63


def parse_exptime(token: bytes) -> int:
    """An exptime as memcached reads it: ``strtol`` into a 64-bit ``long``,
    then kept as the low 32 bits taken as a signed number.

    libmemcached (and so pylibmc, PHP's memcached, the libmemcached tools)
    sends a negative exptime as its unsigned 32-bit form: ``4294967295`` is
    -1, already expired, not a date in 2106. A number outside the 64-bit
    range is a bad line, as ``strtol``'s ERANGE is for memcached.
    """
    if token.isdigit() and len(token) < 10:  # the usual case: a small positive number
        return int(token)
    digits = token[1:] if token[:1] in (b"+", b"-") else token
    if not digits.isdigit():
        raise BadCommandLine()
    value = int(token)
    if not -_I64 <= value < _I64:
        raise BadCommandLine()
    value &= U32 - 1
    return value - U32 if value >= 1 << 31 else value


#: memcached refuses lengths past INT_MAX - 2 outright, before reading any data.
MAX_LENGTH: Final = (1 << 31) - 3


def parse_length(token: bytes) -> int:
    """A data block length: unsigned, at most ``MAX_LENGTH`` as in memcached."""
    return parse_uint(token, MAX_LENGTH + 1)


def value_line(key: bytes, flags: int, value: bytes, cas: int | None = None) -> bytes:
    """The ``VALUE`` line and data block of one item in a retrieval reply."""
    if cas is None:
        return b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, len(value), value)
    return b"VALUE %s %d %d %d\r\n%s\r\n" % (key, flags, len(value), cas, value)


def value_line_lite(key: bytes, value: bytes) -> bytes:
    """The seed assignment's shape: ``VALUE <key> <bytes>`` without flags."""
    return b"VALUE %s %d\r\n%s\r\n" % (key, len(value), value)


@mypyc_attr(native_class=False)  # a subclass of bytes stays a Python class when compiled
class Silent(bytes):
    """The reply a quiet meta command (``q``) kept to itself: empty on the
    wire, but a reply all the same. Silence acknowledges a quiet change, so
    if its batch cannot be made durable, it must become the error (see
    :meth:`Session.failed_reply <memcachedlite.protocols.session.Session.failed_reply>`),
    where a ``noreply`` command's nothing stays nothing."""


#: the one Silent reply
SILENT: Final = Silent()
