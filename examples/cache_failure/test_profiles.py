"""Testing an application's cache-failure handling against a real server.

Run with memcachedlite installed: ``python -m pytest examples/cache_failure``.
The fixtures (``memcached``, ``memcached_server``, ``memcached_faults``)
come from memcachedlite's pytest plugin; nothing needs configuring.
"""

from __future__ import annotations

from profiles import Profiles

from memcachedlite.testing import server_factory

#: A server of this module's own, one per test: restarting it disturbs no other test.
own_server = server_factory()


class Database:
    """Stands in for the slow source of truth and counts the trips to it."""

    def __init__(self) -> None:
        self.loads = 0

    def __call__(self, user_id: int) -> bytes:
        self.loads += 1
        return b"profile of %d" % user_id


def test_second_lookup_comes_from_the_cache(memcached) -> None:
    db = Database()
    profiles = Profiles(memcached, db)
    assert profiles.get(7) == profiles.get(7) == b"profile of 7"
    assert db.loads == 1 and memcached.get("profile:7") == b"profile of 7"


def test_a_full_disk_on_the_cache_server_is_not_an_error(memcached, memcached_faults) -> None:
    db = Database()
    profiles = Profiles(memcached, db)
    with memcached_faults.fail_writes():  # every write answers SERVER_ERROR
        assert profiles.get(7) == b"profile of 7"
    assert profiles.cache_errors == 1 and memcached.get("profile:7") is None


def test_a_slow_cache_falls_back_to_the_database(memcached_server, memcached_faults) -> None:
    db = Database()
    profiles = Profiles(memcached_server.client(timeout=0.2), db)
    memcached_faults.slow(5, verbs=["get"])  # switched off again after the test
    assert profiles.get(7) == b"profile of 7"
    assert profiles.cache_errors == 1 and db.loads == 1


def test_a_connection_dropped_mid_reply(memcached_server, memcached_faults) -> None:
    client = memcached_server.client()
    client.set("profile:7", b"cached profile of 7")
    profiles = Profiles(client, Database())
    memcached_faults.drop_connection(verbs=["get"])
    assert profiles.get(7) == b"profile of 7"  # half a reply, then EOF: the database answers
    assert profiles.cache_errors == 1
    assert profiles.get(7) == b"cached profile of 7"  # pymemcache reconnects


def test_a_cache_server_that_is_down(own_server) -> None:
    profiles = Profiles(own_server.client(), Database())  # connects on first use
    with own_server.faults.refuse_connections():
        assert profiles.get(7) == b"profile of 7"
        assert profiles.cache_errors == 1  # the get was refused; no set was tried
    assert profiles.get(7) == b"profile of 7" and profiles.cache_errors == 1


def test_a_restart_that_loses_the_cache(own_server) -> None:
    db = Database()
    profiles = Profiles(own_server.client(), db)
    profiles.get(7)
    own_server.restart(keep_data=False)
    assert profiles.get(7) == b"profile of 7"  # the old connection is gone: one error
    assert profiles.get(7) == b"profile of 7"  # then a miss, refilled
    assert db.loads == 3 and profiles.cache_errors == 1
