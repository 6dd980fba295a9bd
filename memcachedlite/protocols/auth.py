"""Authentication: the auth file of memcached's text-protocol login (``-Y``),
which the binary protocol's SASL ``PLAIN`` checks against too.

The auth file is memcached's ``-Y`` format: one ``user:password`` line per
user (the password is everything after the first colon). Blank lines and
lines starting with ``#`` are skipped. A client authenticates with a ``set``
of any key whose data is ``user password`` (see :mod:`memcachedlite.protocols.session`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import threading
from typing import Union

log = logging.getLogger(__name__)

#: An authentication token (``user password``) longer than this is refused
#: without being buffered.
MAX_AUTH_TOKEN = 1024

PathLike = Union[str, "os.PathLike[str]"]


class AuthFileError(Exception):
    """The auth file cannot be read or has a malformed line."""


def _digest(value: bytes) -> bytes:
    # Comparing digests keeps the time independent of the lengths too.
    return hashlib.sha256(value).digest()


class AuthFile:
    """The users allowed in, read from ``path``; ``reload()`` rereads it.

    ``check()`` compares in constant time against every entry, and counts
    attempts and failures for ``stats`` (memcached's ``auth_cmds`` and
    ``auth_errors``).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self.auth_cmds = 0
        self.auth_errors = 0
        self._lock = threading.Lock()
        self._entries = self._read()

    def __len__(self) -> int:
        return len(self._entries)

    def reload(self) -> int:
        """Reread the file; on any error the users already loaded stay in force.

        Returns how many users the file now holds.
        """
        entries = self._read()
        self._entries = entries  # one reference swap: checks in flight see old or new
        return len(entries)

    def _read(self) -> tuple[tuple[bytes, bytes], ...]:
        return tuple((_digest(user), _digest(password)) for user, password in read_auth_file(self.path))

    def check(self, user: bytes, password: bytes) -> bool:
        """Whether ``user`` and ``password`` match an entry, in constant time."""
        user_digest, password_digest = _digest(user), _digest(password)
        ok = False
        for entry_user, entry_password in self._entries:  # no early exit: every entry costs the same
            ok |= hmac.compare_digest(user_digest, entry_user) & hmac.compare_digest(password_digest, entry_password)
        with self._lock:
            self.auth_cmds += 1
            if not ok:
                self.auth_errors += 1
        return ok


def read_auth_file(path: PathLike) -> list[tuple[bytes, bytes]]:
    """The ``(user, password)`` pairs of an auth file; AuthFileError if it is unusable."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read()
    except OSError as exc:
        raise AuthFileError(f"cannot read auth file {path}: {exc.strerror}") from None
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip(b"\r")
        if not line.strip() or line.startswith(b"#"):
            continue
        user, colon, password = line.partition(b":")
        if not colon or not user or not password:
            raise AuthFileError(f"{path}:{number}: not a user:password line")
        if b" " in user or b" " in password:
            # the protocol sends "user password": a space could never match
            raise AuthFileError(f"{path}:{number}: user names and passwords cannot hold spaces")
        entries.append((user, password))
    if not entries:
        raise AuthFileError(f"auth file {path} has no user:password lines")
    if stat.S_IMODE(mode) & 0o077:
        log.warning("auth file %s can be read by other users of this machine (chmod 600 it)", path)
    return entries
