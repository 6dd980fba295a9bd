"""The body of both session targets: one fresh store and session per input.

The input is what a client sends. How it is sent, and to what kind of
store, is chosen from a checksum of the input itself (so each input always
runs the same way): all at once or in small pieces, on a store in memory or
on a data file, with a small memory limit (evicting, or refusing as with
``-M``), a small item size limit, the ``lite`` dialect, or an auth file.

Properties: ``feed`` never raises, and no handler fails (a caught failure is
logged and answered ``SERVER_ERROR internal error``: see
:class:`common.ErrorLog`); the replies are well framed; the store's
invariants hold afterwards (:func:`common.check_invariants`); and a store
on a data file reopens from that file to the same items.
"""

from __future__ import annotations

import os
import zlib
from typing import Callable

from common import NOW, ErrorLog, PropertyViolation, check_invariants, clock, durable_state, workdir

from memcachedlite import Settings, Store
from memcachedlite.protocols.auth import AuthFile

#: The users of the auth file, as the tests spell them, so that the seeds'
#: logins succeed.
USERS = b"alice:secret\nbob:hunter2\n"

_errors = ErrorLog()
_dir = workdir()
_auth_path = os.path.join(_dir, "auth")
with open(os.open(_auth_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
    f.write(USERS)
_auth = AuthFile(_auth_path)
_data_path = os.path.join(_dir, "session.data")


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def run(data: bytes, make_session: Callable, check_replies: Callable[[bytes], None], lite_allowed: bool) -> None:
    choice = zlib.crc32(data)
    on_file = choice & 0xC0 == 0
    memory_limit = 16 * 1024 if choice & 4 else 64 * 1024 * 1024
    evict = not choice & 8
    settings = Settings(
        dialect="lite" if lite_allowed and choice & 0x20 else "memcached",
        max_item_size=128 if choice & 0x10 else 1024 * 1024,
    )
    auth = _auth if choice & 0xC000 == 0 else None
    if on_file:
        _remove(_data_path)
        store = Store(_data_path, fsync="no", memory_limit=memory_limit, evict=evict, clock=clock)
    else:
        store = Store(None, memory_limit=memory_limit, evict=evict, clock=clock)
    try:
        session = make_session(store, settings, auth=auth)
        if choice & 3 == 3:  # in pieces of 1 to 64 bytes
            step = (choice >> 8 & 63) + 1
            replies = b"".join(session.feed(data[i : i + step]) for i in range(0, len(data), step))
        else:
            replies = session.feed(data)
        _errors.check()
        check_replies(replies)
        check_invariants(store)
        if on_file:
            before = durable_state(store)
            store.close()
            store = Store(_data_path, fsync="no", clock=clock)
            _errors.check()
            check_invariants(store)
            after = durable_state(store)
            if after != before:
                lost = {k: v for k, v in before.items() if after.get(k) != v}
                extra = {k: v for k, v in after.items() if before.get(k) != v}
                raise PropertyViolation(f"reopened from its data file, the store differs: had {lost}, now {extra}")
    finally:
        store.close()
        _errors.errors.clear()


__all__ = ["NOW", "run"]
