"""The pytest plugin: fixtures that give a test suite a real memcached-protocol
server, registered through the ``pytest11`` entry point so that installing
memcachedlite is all a project does.

Loaded into every pytest run where memcachedlite is installed, it therefore
only declares things: two options and four fixtures. Nothing starts, binds
or changes until a test asks for one of the fixtures.

=====================  =========  ==============================================
fixture                scope      what it guarantees
=====================  =========  ==============================================
``memcached_server``   session    one server for the run (per xdist worker): a
                                  :class:`~memcachedlite.testing.BackgroundServer`,
                                  or an :class:`~memcachedlite.testing.ExternalServer`
                                  under ``--memcached-external``; stopped, its
                                  threads joined and port freed, at the end
``memcached_address``  session    its ``"HOST:PORT"`` (or socket path)
``memcached``          function   a pymemcache client of that server, which is
                                  empty, with every fault off, when the test
                                  starts; it reconnects after a
                                  ``memcached_server.restart()``, and is closed
                                  after the test
``memcached_faults``   function   the server's :class:`~memcachedlite.testing.Faults`,
                                  all switched off again after the test
=====================  =========  ==============================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Union

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from .background import BackgroundServer, ExternalServer, Faults

_EXTERNAL_HELP = (
    "Run the memcached fixtures against this already running memcached or memcachedlite "
    "(HOST:PORT, or a Unix socket: /path or unix:path) instead of an in-process memcachedlite; "
    "fault injection is then unavailable."
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memcachedlite", "memcached fixtures (memcachedlite)")
    group.addoption("--memcached-external", metavar="HOST:PORT|PATH", default=None, help=_EXTERNAL_HELP)
    parser.addini("memcached_external", _EXTERNAL_HELP + " (--memcached-external wins)", default="")


def _external(config: pytest.Config) -> str:
    return config.getoption("memcached_external") or config.getini("memcached_external") or ""


@pytest.fixture(scope="session")
def memcached_server(request: pytest.FixtureRequest) -> Iterator[Union[BackgroundServer, ExternalServer]]:
    """The session's memcached: an in-process memcachedlite on a free port of
    127.0.0.1 (memory only), or the ``--memcached-external`` server."""
    from .background import ExternalServer, serve_in_background

    address = _external(request.config)
    if address:
        try:
            external = ExternalServer(address)
        except ValueError as exc:
            raise pytest.UsageError(f"--memcached-external: {exc}") from None
        try:
            yield external
        finally:
            external.stop()
        return
    with serve_in_background() as server:
        yield server


@pytest.fixture(scope="session")
def memcached_address(memcached_server: Any) -> str:
    """``"HOST:PORT"`` of the session's server (a Unix socket's path under
    ``--memcached-external PATH``), for code that takes a location string."""
    return memcached_server.address


@pytest.fixture
def memcached(memcached_server: Any) -> Iterator[Any]:
    """A pymemcache ``Client`` (``default_noreply=False``) of the session's
    server, emptied and with every fault off before the test."""
    from .background import BackgroundServer

    memcached_server.reset()
    client = memcached_server.client(follow_restarts=True)  # a test's own client outlives a restart
    try:
        yield client
    finally:
        client.close()
        if isinstance(memcached_server, BackgroundServer):
            memcached_server.faults.reset()  # the next test may only take the address


@pytest.fixture
def memcached_faults(memcached_server: Any) -> Iterator[Faults]:
    """The session server's fault switches, all turned off again after the test."""
    faults = memcached_server.faults
    try:
        yield faults
    finally:
        faults.reset()
