"""The recipes of docs/testing.md for the frameworks people test, run through the
plugin's fixtures: Django's ``PyMemcacheCache``, Flask-Caching's
``MemcachedCache`` and meta-memcache. They are test dependencies: missing,
this module fails to import (an error, never a skip)."""

from __future__ import annotations

import socket
from typing import Any, Iterator

import django
import pytest
from django.conf import settings
from django.core.cache import InvalidCacheKey, caches
from django.test import override_settings
from flask import Flask
from flask_caching import Cache
from meta_memcache import CacheClient, ConnectionPool, Key, ServerAddress
from pymemcache.exceptions import MemcacheServerError

from memcachedlite.testing import BackgroundServer


@pytest.fixture(autouse=True)
def fresh(memcached_server: BackgroundServer) -> Iterator[None]:
    """What the plugin's ``memcached`` fixture does (this suite's conftest has a
    ``memcached`` fixture of its own, the real memcached, which hides it)."""
    memcached_server.reset()
    yield
    memcached_server.faults.reset()


# -- Django -------------------------------------------------------------------------


@pytest.fixture
def django_cache(memcached_address: str) -> Iterator[Any]:
    if not settings.configured:  # a Django project has its settings already
        settings.configure()
        django.setup()
    backend = {"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache", "LOCATION": memcached_address}
    with override_settings(CACHES={"default": backend}):
        cache = caches["default"]
        yield cache
        cache.close()


def test_django_cache_operations(django_cache: Any, memcached_server: BackgroundServer) -> None:
    cache = django_cache
    cache.set("greeting", "hello", timeout=60)
    assert cache.get("greeting") == "hello"
    assert memcached_server.store.get(b":1:greeting") is not None  # Django's key, on our server
    cache.set("profile", {"name": "Ada", "langs": ["en", "fr"]})  # pickled, flagged as such
    assert cache.get("profile") == {"name": "Ada", "langs": ["en", "fr"]}
    assert cache.add("greeting", "other") is False and cache.add("fresh", 1) is True
    cache.set("hits", 10)
    assert cache.incr("hits", 5) == 15 and cache.decr("hits") == 14
    cache.set_many({"a": 1, "b": 2})
    assert cache.get_many(["a", "b", "missing"]) == {"a": 1, "b": 2}
    assert cache.get_or_set("computed", lambda: "value") == "value" and cache.get("computed") == "value"
    assert cache.touch("a", 300) is True and cache.touch("missing") is False
    assert cache.delete("a") is True and cache.get("a", "gone") == "gone"
    cache.set("expired", "x", timeout=0)  # Django: 0 means expire at once
    assert cache.get("expired") is None
    with pytest.raises(InvalidCacheKey):
        cache.set("a key with spaces", 1)  # the memcached backend's key rules
    cache.clear()
    assert cache.get("greeting") is None and len(memcached_server.store) == 0


def test_django_sees_a_full_disk_as_an_error(django_cache: Any, memcached_server: BackgroundServer) -> None:
    django_cache.set("k", "before")
    with memcached_server.faults.fail_writes(), pytest.raises(MemcacheServerError):
        django_cache.set("k", "after")
    assert django_cache.get("k") == "before"


# -- Flask-Caching ------------------------------------------------------------------


@pytest.fixture
def flask_app(memcached_address: str) -> Iterator[Flask]:
    app = Flask(__name__)
    # cachelib uses the first memcached client library it finds: pylibmc, else python-memcached
    app.config.update(CACHE_TYPE="MemcachedCache", CACHE_MEMCACHED_SERVERS=[memcached_address])
    cache = Cache(app)
    calls = []

    @app.route("/square/<int:n>")
    @cache.cached(timeout=60)
    def square(n: int) -> str:
        calls.append(n)
        return str(n * n)

    app.extensions["calls"] = calls
    with app.app_context():
        backend = cache.cache
    yield app
    # cachelib has no close: python-memcached's client (kept here) leaves its sockets open
    # otherwise; pylibmc's pool is C code that closes its own
    disconnect = getattr(backend._client, "disconnect_all", None)
    if disconnect is not None:
        disconnect()


def test_flask_caching_caches_views_and_values(flask_app: Flask, memcached_server: BackgroundServer) -> None:
    client = flask_app.test_client()
    assert client.get("/square/12").text == client.get("/square/12").text == "144"
    assert flask_app.extensions["calls"] == [12]  # the second answer came from memcachedlite
    assert len(memcached_server.store) > 0
    with flask_app.app_context():
        (cache,) = flask_app.extensions["cache"].values()
        assert cache.set("answer", {"value": 42}) and cache.get("answer") == {"value": 42}
        assert cache.add("answer", 0) is False
        assert cache.inc("counter") == 1 and cache.inc("counter", 4) == 5
        assert cache.get_many("answer", "nothing") == [{"value": 42}, None]
        assert cache.delete("answer") and cache.get("answer") is None
        assert cache.clear()
    assert len(memcached_server.store) == 0


def test_flask_caching_serves_the_view_when_the_cache_refuses_writes(
    flask_app: Flask, memcached_server: BackgroundServer
) -> None:
    client = flask_app.test_client()
    with memcached_server.faults.fail_writes():
        assert client.get("/square/3").text == client.get("/square/3").text == "9"
    assert flask_app.extensions["calls"] == [3, 3]  # nothing could be cached, every request was served
    assert len(memcached_server.store) == 0


# -- meta-memcache ------------------------------------------------------------------


@pytest.fixture
def meta_client(memcached_server: BackgroundServer) -> Iterator[Any]:
    opened: list[socket.socket] = []  # meta-memcache has no close: keep its sockets to close them

    def new_socket() -> socket.socket:
        sock = socket.create_connection((memcached_server.host, memcached_server.port), timeout=5)
        opened.append(sock)
        return sock

    def pool(address: ServerAddress) -> ConnectionPool:
        return ConnectionPool(str(address), new_socket, initial_pool_size=1, max_pool_size=2)

    server = ServerAddress(memcached_server.host, memcached_server.port)
    yield CacheClient.cache_client_from_servers([server], connection_pool_factory_fn=pool)
    for sock in opened:
        sock.close()


def test_meta_memcache_round_trips(meta_client: Any, memcached_server: BackgroundServer) -> None:
    assert meta_client.set(Key("greeting"), "hello", ttl=60) is True
    assert meta_client.get(Key("greeting")) == "hello"
    assert meta_client.set(Key("blob"), b"\r\n\x00 binary", ttl=0) is True
    assert meta_client.get(Key("blob")) == b"\r\n\x00 binary"
    assert memcached_server.store.get(b"blob").value == b"\r\n\x00 binary"
    assert meta_client.delta(Key("n"), 5, refresh_ttl=60) is False  # no such counter yet
    meta_client.set(Key("n"), 1, ttl=0)
    assert meta_client.delta(Key("n"), 5) is True and meta_client.get(Key("n")) == 6
    assert meta_client.delete(Key("greeting")) is True and meta_client.get(Key("greeting")) is None
