"""memcached's rules for the numbers an item carries, which every protocol
shares: when an expiry time is relative and when absolute, and how ``incr``
and ``decr`` read and change a stored number."""

from __future__ import annotations

from typing import Final

#: Exptimes above this many seconds are absolute unix times (30 days).
RELATIVE_EXPTIME_LIMIT: Final = 60 * 60 * 24 * 30
U32: Final = 1 << 32
U64: Final = 1 << 64

_DIGITS: Final = b"0123456789"
_C_SPACE: Final = b" \t\n\v\f\r"


def absolute_exptime(exptime: int, now: int) -> int:
    """memcached's exptime rule: 0 never expires, up to 30 days is relative,
    larger is a unix time, negative is already expired (-1)."""
    if exptime == 0:
        return 0
    if exptime < 0:
        return -1
    if exptime > RELATIVE_EXPTIME_LIMIT:
        return exptime
    return now + exptime


def parse_counter(value: bytes) -> int | None:
    """The number an ``incr``/``decr`` finds in a stored value, or None.

    memcached reads it with ``strtoull``: leading whitespace and a sign are
    skipped, the digits must be followed by whitespace or the end, and a
    value past 64 bits is not a number.
    """
    text = value.lstrip(_C_SPACE)
    sign = text[:1]
    if sign in (b"+", b"-"):
        text = text[1:]
    end = len(text) - len(text.lstrip(_DIGITS))
    if end == 0 or (end < len(text) and text[end] not in _C_SPACE):
        return None
    number = int(text[:end])
    if number >= U64:
        return None
    if sign == b"-":
        number = -number % U64
        if number >= 1 << 63:  # a negative number, as memcached sees it
            return None
    return number


def apply_delta(number: int, delta: int, incr: bool) -> int:
    """``incr`` wraps around at 2**64; ``decr`` stops at 0."""
    return (number + delta) % U64 if incr else max(number - delta, 0)
