"""A verb of one's own: ``upper <key>`` upper-cases a stored value in place.

Run it with::

    mcl serve --load examples/upper.py

then, from another shell, ``mcl set greeting hello && mcl call upper greeting``
(or from Python, pymemcache's
``client.raw_command(b"upper greeting\\r\\nmn", end_tokens=b"MN\\r\\n")``).
The change is logged as a plain ``set``, so the data file replays without
this module loaded.
"""

from __future__ import annotations

from typing import Optional

from memcachedlite import command
from memcachedlite.protocols.session import Session
from memcachedlite.protocols.text import END, NOT_FOUND, check_key, value_line


@command("upper", min_args=1, max_args=1, mutates=True)
def upper(ctx: Session, args: list[bytes], data: Optional[bytes]) -> bytes:
    """upper <key>: upper-case the value in place and return it."""
    key = check_key(args[0])
    item = ctx.store.update(key, lambda item: item.value.upper())
    if item is None:
        return NOT_FOUND
    return value_line(key, item.flags, item.value) + END
