"""The ``external`` marker: the tests ``pytest -m "not external"`` leaves out,
so that a contributor with the Python packages alone gets a quick run. They
are the tests that need a program from a Debian package (memcached, the
libmemcached tools, nutcracker, Ruby, PHP, Redis, openssl, systemd-analyze,
saslpasswd2, the SASL plugins), and the ``slow`` ones (crash, power-loss,
fuzzing and load tests: two fifths of the rest's CPU time). CI runs them all.

A test gets the marker in one of four ways: it uses a fixture that starts
such a program (:data:`EXTERNAL_FIXTURES`, marked here at collection, so a new
test that asks for ``memcached`` is marked without anyone thinking of it); it
is marked ``slow`` (marked here too); its module says
``pytestmark = pytest.mark.external``; or it says ``@pytest.mark.external``
itself. A test that starts one of these programs without the marker fails:
an audit hook sees every program the test process starts, so a forgotten
marker shows up in CI, which runs everything.

tests/conftest.py imports the hooks and the fixture below; a missing program
still fails its test, it is never skipped."""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Iterator

import pytest

#: Fixtures (of tests/) that start a program from a Debian package: the real
#: memcached (conftest.py; a module-wide one in the differential tests; one
#: with SASL, whose users ``saslpasswd2`` makes), redis-server (the benchmark
#: harness), certificates made by ``openssl`` (test_security.py) and a
#: twemproxy cluster (test_cluster.py).
EXTERNAL_FIXTURES = frozenset({"memcached", "shared_memcached", "sasl_memcached", "redis", "pki", "cluster"})

#: The programs of those packages that the tests run, by file name:
#: memcached and its memcached-tool, libmemcached-tools (memccapable, memccat,
#: memccp, memcstat, memcslap, ...), nutcracker, ruby, php, redis-server and
#: redis-cli, systemd-analyze, openssl, saslpasswd2 (sasl2-bin) and valgrind.
PROGRAMS = re.compile(
    r"memcached(-tool)?|memc?(capable|cat|cp|dump|error|exist|flush|parse|ping|rm|slap|aslap|stat|touch)"
    r"|nutcracker|ruby[\d.]*|php[\d.]*|redis-[a-z-]+|systemd-analyze|openssl|saslpasswd2|valgrind"
)

#: Programs that run another one, named on their command line (``stdbuf -o0 memccapable``).
WRAPPERS = frozenset({"stdbuf", "env", "nice", "timeout", "setsid"})

_started: list[str] = []
_hook_installed = False


def external_program(argv: list[str]) -> str | None:
    """The file name of the Debian program ``argv`` runs (looking through
    ``stdbuf -o0 -e0 memccapable ...`` and the like), or None for any other."""
    names = [os.path.basename(os.fsdecode(word)) for word in argv]
    candidates = names if names and names[0] in WRAPPERS else names[:1]
    return next((name for name in candidates if PROGRAMS.fullmatch(name)), None)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Note each program from :data:`PROGRAMS` that this process starts.
    Runs on every audited event of the process, so it returns at once for
    the others and never raises."""
    if event != "subprocess.Popen":
        return
    try:
        name = external_program(list(args[1]))
    except Exception:  # an audit hook that raises would break the caller's Popen
        return
    if name is not None:
        _started.append(name)


def pytest_configure(config: pytest.Config) -> None:
    global _hook_installed
    if not _hook_installed:  # an audit hook stays for the life of the process: add it once
        sys.addaudithook(_audit)
        _hook_installed = True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a fixture of :data:`EXTERNAL_FIXTURES`,
    directly or through another fixture, and every ``slow`` one."""
    for item in items:
        uses = EXTERNAL_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if uses or item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.external)


@pytest.fixture(autouse=True)
def external_programs_need_the_marker(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test, at its teardown, that started a program of a Debian
    package but is not marked ``external``: ``pytest -m "not external"``
    would select it, and without the package it would fail."""
    yield
    started = sorted(set(_started))
    _started.clear()
    if started and request.node.get_closest_marker("external") is None:
        pytest.fail(
            f"{request.node.nodeid} started {', '.join(started)}, from a Debian package, but is not marked "
            '"external": add @pytest.mark.external (or pytestmark = pytest.mark.external in its module) '
            'so that pytest -m "not external" leaves it out',
            pytrace=False,
        )
