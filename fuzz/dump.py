"""Fuzz target: the loader of dump files (``mcl load``'s ``Source``).

The input is a file to load: a dump (JSON lines) or the seed server's
``<key> <value>`` lines.

Properties:

- ``Source(stream)`` either accepts the file or raises ``BulkError``;
  iterating it raises nothing: a line that is not an item is skipped and
  listed in ``skipped`` (line numbers rising), and every byte is counted in
  ``bytes_read``;
- every item it yields can be stored: a key of 1 to 250 bytes, flags below
  2**32, a ttl that is not negative;
- the command ``mcl load`` sends for it (``set_command``), fed to a session,
  is answered ``STORED`` (or ``HD``), and the store then holds that item
  with its value, flags and expiry (the last item of a key wins; an expiry
  past January 2038, the latest an exptime can say, is cut to that).
"""

from __future__ import annotations

import io

from common import NOW, ErrorLog, PropertyViolation, check_invariants, clock

from memcachedlite import Session, Store
from memcachedlite.cli.transfer import MAX_EXPTIME, BulkError, Source, set_command

#: Longest file tried.
MAX_LEN = 8192

_errors = ErrorLog()


def one_input(data: bytes) -> None:
    try:
        source = Source(io.BytesIO(data))
    except BulkError:
        return
    items = list(source)
    if source.bytes_read != len(data):
        raise PropertyViolation(f"bytes_read is {source.bytes_read}, the file has {len(data)}")
    numbers = [number for number, _ in source.skipped]
    if numbers != sorted(set(numbers)):
        raise PropertyViolation(f"skipped line numbers out of order: {numbers}")
    store = Store(None, clock=clock)
    try:
        session = Session(store)
        expected = {}
        for item in items:
            if not 0 < len(item.key) <= 250 or not 0 <= item.flags < 1 << 32 or item.ttl < 0:
                raise PropertyViolation(f"an item no server can store: {item}")
            reply = session.feed(set_command(item, NOW))
            if reply not in (b"STORED\r\n", b"HD\r\n"):
                raise PropertyViolation(f"{set_command(item, NOW)[:200]!r} is answered {reply[:200]!r}")
            expected[item.key] = (item.value, item.flags, min(NOW + item.ttl, MAX_EXPTIME) if item.ttl else 0)
        _errors.check()
        check_invariants(store)
        for key, want in expected.items():
            item = store.peek(key)
            got = None if item is None else (item.value, item.flags, item.exptime)
            if got != want:
                raise PropertyViolation(f"{key!r} loaded as {got}, the file gives {want}")
    finally:
        store.close()
        _errors.errors.clear()
