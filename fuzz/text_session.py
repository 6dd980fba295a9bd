"""Fuzz target: the text and meta protocols (``Session.feed``).

The input is the byte stream a client sends; see :mod:`sessions` for how it
is run and what is checked.
"""

from __future__ import annotations

from common import PropertyViolation
from sessions import run

from memcachedlite import Session

#: Longest input tried: a few dozen commands.
MAX_LEN = 4096


def check_replies(replies: bytes) -> None:
    """Every text and meta reply is a whole line (a data block included)."""
    if replies and not replies.endswith(b"\r\n"):
        raise PropertyViolation(f"replies do not end with CRLF: {replies[-80:]!r}")


def one_input(data: bytes) -> None:
    run(data, Session, check_replies, lite_allowed=True)
