"""Low-level writes to files: write a whole buffer (at the end, or at an offset), make a rename durable;
and a file's path as messages give it."""

from __future__ import annotations

import os
from typing import Union


def absolute(path: Union[str, os.PathLike]) -> str:
    """``path`` made absolute, as the log names a file wherever the server was
    started; not normalized, since ``link/..`` is where the kernel says it
    is, not where dropping both parts would point."""
    path = os.fspath(path)
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (on a descriptor opened without
    ``O_APPEND``, where Linux honours the offset)."""
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def fsync_directory(path: str) -> None:
    """Make a rename durable: fsync the directory holding ``path``."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
