"""Low-level writes to files: write a whole buffer (at the end, or at an offset), make a rename durable;
and a file's path as messages give it.

:data:`system` is what the data file's code (:mod:`memcachedlite.storage.datafile`)
makes its system calls through: ``os``, or the tests' crash simulator, which
stands in for it to record the calls and to make them fail. It is looked up
on this module, which stays pure Python in both builds, at every call: a
compiled module binds an ``import os`` of its own once, at import, where no
stand-in can reach it.
"""

from __future__ import annotations

import os
from typing import Any, Union

#: ``os``, as the data file's code calls it (see the module docstring).
system: Any = os


def absolute(path: Union[str, os.PathLike]) -> str:
    """``path`` made absolute, as the log names a file wherever the server was
    started; not normalized, since ``link/..`` is where the kernel says it
    is, not where dropping both parts would point."""
    path = os.fspath(path)
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[system.write(fd, view) :]


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (on a descriptor opened without
    ``O_APPEND``, where Linux honours the offset)."""
    view = memoryview(data)
    while view:
        done = system.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def fsync_directory(path: str) -> None:
    """Make a rename durable: fsync the directory holding ``path``."""
    fd = system.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        system.fsync(fd)
    finally:
        system.close(fd)
