"""What a verb's handler works with: ``ctx``, the connection's session
(:class:`Context`), and ``ctx.server``, the server the connection came
through (:class:`Host`).

Both are structural types: the session and the TCP server fit them without
naming them, so this layer never imports the server. A session used on its
own (tests, embedding) has a :class:`Standalone` host, with nothing to count
and nothing to stop.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import ssl

    from ..storage.store import Store
    from .auth import AuthFile
    from .settings import Settings


class Host(Protocol):
    """The server a session runs in, as ``stats`` and the operators' verbs see it."""

    #: unix time the server started (``stats uptime``)
    started: float
    #: the users allowed in, when authentication is required
    auth: Optional[AuthFile]
    #: the TLS context, when connections speak TLS
    ssl_context: Optional[ssl.SSLContext]
    #: "auto", "ascii" or "binary" (memcached's -B)
    protocol: str
    #: ``slabs automove`` settings: kept and shown, with no slabs to move
    slab_automove: int
    slab_automove_ratio: float

    def connection_stats(self) -> dict[str, Any]:
        """memcached's connection counters and listening settings, by ``stats`` name."""
        ...

    def reset_stats(self) -> None:
        """``stats reset``: zero the connection counters."""
        ...

    def request_stop(self, reason: str) -> None:
        """Begin a clean stop (the ``shutdown`` verb)."""
        ...


class Standalone:
    """The host of a session that runs without a server."""

    auth: Optional[AuthFile] = None
    ssl_context: Optional[ssl.SSLContext] = None
    protocol = "auto"

    def __init__(self) -> None:
        self.started = time.time()
        self.slab_automove = 1
        self.slab_automove_ratio = 0.8

    def connection_stats(self) -> dict[str, Any]:
        return {}

    def reset_stats(self) -> None:
        pass

    def request_stop(self, reason: str) -> None:
        pass


class Context(Protocol):
    """What a handler receives as ``ctx`` (a :class:`~memcachedlite.protocols.session.Session`)."""

    #: the shared store every change goes through
    store: Store
    settings: Settings
    server: Host
    #: whether replies take the seed's "lite" shapes
    lite: bool
    #: the dialect's spelling of NOT_STORED
    not_stored: bytes

    def close(self) -> None:
        """End the connection once the pending replies are sent."""
        ...
