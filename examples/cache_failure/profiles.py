"""An application's cache-aside lookup that keeps answering when memcached
fails: the code under test in ``test_profiles.py``, which shows how
memcachedlite's fault switches test that promise against a real server."""

from __future__ import annotations

from typing import Any, Callable

from pymemcache.exceptions import MemcacheError

#: What a failing cache raises through pymemcache: protocol errors, refused
#: or dropped connections, timeouts (socket.timeout is an OSError).
CACHE_FAILURES = (MemcacheError, OSError)


class Profiles:
    """Profiles from ``load`` (the slow database), kept in ``cache`` for ``ttl`` seconds.

    A cache that fails never fails a lookup: the profile comes from ``load``
    and the failure is counted in ``cache_errors`` (an application would log
    it or raise an alert).
    """

    def __init__(self, cache: Any, load: Callable[[int], bytes], ttl: int = 300) -> None:
        self.cache = cache
        self.load = load
        self.ttl = ttl
        self.cache_errors = 0

    def get(self, user_id: int) -> bytes:
        key = f"profile:{user_id}"
        try:
            cached = self.cache.get(key)
        except CACHE_FAILURES:
            self.cache_errors += 1
            return self.load(user_id)
        if cached is not None:
            return cached
        profile = self.load(user_id)
        try:
            self.cache.set(key, profile, expire=self.ttl)
        except CACHE_FAILURES:
            self.cache_errors += 1
        return profile
