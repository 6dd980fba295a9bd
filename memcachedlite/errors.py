"""Error types, each knowing the protocol line it is shown as on the wire."""

from __future__ import annotations

import sys


class ProtocolError(Exception):
    """Base of the errors a client is told about.

    ``prefix`` is the wire keyword; ``close`` says whether the connection can
    no longer be kept in step and must be closed after the reply.
    """

    prefix: bytes = b"SERVER_ERROR"
    close: bool = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def to_bytes(self) -> bytes:
        if self.message:
            return self.prefix + b" " + self.message.encode("ascii", "replace") + b"\r\n"
        return self.prefix + b"\r\n"


class UnknownCommand(ProtocolError):
    """The verb is not in the registry: memcached answers a bare ``ERROR``."""

    prefix = b"ERROR"

    def __init__(self, message: str = "") -> None:
        # memcached sends no reason with ERROR; the reason is kept for logs only.
        super().__init__("")
        self.reason = message


class ClientError(ProtocolError):
    """The client sent something malformed; the connection stays usable."""

    prefix = b"CLIENT_ERROR"


class BadCommandLine(ClientError):
    """memcached's catch-all for wrong arity, bad numbers and bad keys."""

    def __init__(self, message: str = "bad command line format") -> None:
        super().__init__(message)


class BadDataChunk(ClientError):
    """A data block not followed by CRLF; its announced bytes are consumed all the same."""

    def __init__(self, message: str = "bad data chunk") -> None:
        super().__init__(message)


class NonNumeric(ClientError):
    """``incr``/``decr`` of a value that is not a number."""

    def __init__(self, message: str = "cannot increment or decrement non-numeric value") -> None:
        super().__init__(message)


class LineTooLong(ClientError):
    """A command line ran past the limit with no newline; framing is lost."""

    close = True

    def __init__(self, message: str = "line too long") -> None:
        super().__init__(message)


class ServerError(ProtocolError):
    """The server could not do what was asked (disk full, out of memory...)."""

    prefix = b"SERVER_ERROR"


class TooLarge(ServerError):
    """The item is bigger than the item size limit; its data block is swallowed."""

    def __init__(self, message: str = "object too large for cache") -> None:
        super().__init__(message)


class OutOfMemory(ServerError):
    """The memory limit is reached and eviction is turned off (``-M``)."""

    def __init__(self, message: str = "out of memory storing object") -> None:
        super().__init__(message)


class LogWriteError(ServerError):
    """The data file could not be written, so the change was not applied."""


class CorruptLogError(Exception):
    """The data file is damaged before its end and cannot be trusted as is.

    Not a protocol error: it stops the server from starting, and the CLI shows
    it with the offset so the user can run ``mcl repair``.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: damaged record at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class UnsupportedPlatform(ImportError):
    """The server's storage or statistics need a POSIX module this Python
    lacks (Windows has no ``fcntl`` nor ``resource``).

    Raised when such a module is imported, so that importing the server
    says what to do instead of naming a module; an :class:`ImportError`, as
    the missing module's own error is. ``memcachedlite``, ``mcl``'s client
    commands and the pytest plugin import nothing of the server until it is
    used, so they work without it.
    """

    def __init__(self, module: str) -> None:
        super().__init__(
            f"memcachedlite's server needs a POSIX system such as Linux: this Python ({sys.platform}) has no"
            f" {module} module; run the server on Linux, in WSL or in a container (mcl's client commands work here)",
            name=module,
        )


class DataFileInUse(RuntimeError):
    """Another process holds the data file's lock: a running server, or a
    command rewriting the file (``mcl repair``). Whatever refuses the file,
    a second server or a repair, says it in these words."""

    def __init__(self, path: str) -> None:
        super().__init__(f"cannot open data file: {path} is in use by another running server")
        self.path = path
