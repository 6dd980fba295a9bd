"""The protocol behaviour every connection of a server shares (reply
dialect, item size limit, which operators' commands are allowed)."""

from __future__ import annotations

from dataclasses import dataclass

from .text import DEFAULT_MAX_ITEM_SIZE


@dataclass(frozen=True)
class Settings:
    """Protocol behaviour shared by every connection of a server."""

    #: "memcached", or "lite" for the seed assignment's reply shapes.
    dialect: str = "memcached"
    max_item_size: int = DEFAULT_MAX_ITEM_SIZE
    #: The seed's demo of concurrency: random sleeps before set and get.
    simulate_delay: bool = False
    #: memcached's -A: the ``shutdown`` command stops the server.
    enable_shutdown: bool = False
    #: False as memcached's -F: ``flush_all`` is refused.
    flush_enabled: bool = True

    def __post_init__(self) -> None:
        if self.dialect not in ("memcached", "lite"):
            raise ValueError("dialect must be 'memcached' or 'lite'")
