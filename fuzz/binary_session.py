"""Fuzz target: memcached's binary protocol (``BinarySession.feed``).

The input is the byte stream a client sends (packets start with ``0x80``);
see :mod:`sessions` for how it is run and what is checked.
"""

from __future__ import annotations

import struct

from common import PropertyViolation
from sessions import run

from memcachedlite.protocols.binary import BinarySession

#: Longest input tried: a few dozen packets.
MAX_LEN = 4096
_HEADER = struct.Struct(">BBHBBHIIQ")


def check_replies(replies: bytes) -> None:
    """The replies are whole response packets, each body as long as its header says."""
    pos = 0
    while pos < len(replies):
        if len(replies) - pos < _HEADER.size:
            raise PropertyViolation(f"half a reply header at {pos}: {replies[pos:]!r}")
        magic, _, keylen, extlen, _, _, bodylen, _, _ = _HEADER.unpack_from(replies, pos)
        if magic != 0x81 or keylen + extlen > bodylen:
            raise PropertyViolation(f"malformed reply header at {pos}: {replies[pos : pos + 24].hex()}")
        pos += _HEADER.size + bodylen
    if pos != len(replies):
        raise PropertyViolation("the last reply is shorter than its header says")


def one_input(data: bytes) -> None:
    run(data, BinarySession, check_replies, lite_allowed=False)
