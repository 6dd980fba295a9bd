"""memcached's rule for keys, which every protocol shares and ``mcl`` checks
before it sends one: 1 to 250 bytes, none of them a space or a control
character. The text protocol refuses any other key as a bad command line
(:func:`memcachedlite.protocols.text.check_key`); the binary and meta
protocols take any bytes, stored in base64 form (``BINARY_KEY``)."""

from __future__ import annotations

from typing import Final

MAX_KEY: Final = 250
#: Bytes a text-protocol key may not hold: the space and the control characters.
CONTROL: Final = bytes(range(33)) + b"\x7f"


def is_plain_key(key: bytes) -> bool:
    """Whether ``key`` is a text-protocol key: a key another protocol takes
    that is not one is stored as a key given in base64 (``BINARY_KEY``), so
    that its data file records carry it."""
    return 0 < len(key) <= MAX_KEY and len(key.translate(None, CONTROL)) == len(key)
