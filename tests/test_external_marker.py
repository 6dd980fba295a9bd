"""The ``external`` marker's rules (tests/external.py), run in throwaway projects
with pytester: a fixture that starts a Debian package's program marks its
tests, ``slow`` tests are marked too, and a test that starts such a program
without the marker fails, so that ``pytest -m "not external"`` never selects
a test that needs one. The programs here are stand-ins: shell scripts named
``memcached`` and ``openssl``, so these tests need no Debian package."""

from __future__ import annotations

import os
import sys

import pytest

from tests.conftest import not_an_xdist_worker
from tests.external import external_program

pytest_plugins = ["pytester"]

CONFTEST = """
from tests.external import (  # noqa: F401
    external_programs_need_the_marker,
    pytest_collection_modifyitems,
    pytest_configure,
)
"""

INI = """
[pytest]
addopts = --strict-markers
filterwarnings = error
markers =
    external: as in memcachedlite
    slow: as in memcachedlite
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project with the rules of tests/external.py, and stand-ins for two
    Debian programs in its bin/ (which its tests find in PROGRAMS_DIR)."""
    not_an_xdist_worker(monkeypatch)
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    programs = pytester.mkdir("bin")
    for name in ("memcached", "openssl"):
        script = programs / name
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(0o755)
    monkeypatch.setenv("PROGRAMS_DIR", str(programs))
    return pytester


def selected(project: pytest.Pytester, expression: str) -> list[str]:
    """The names of the tests ``-m EXPRESSION`` selects."""
    result = project.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "-m", expression)
    return sorted(line.split("::")[-1] for line in result.outlines if "::" in line)


def test_a_test_that_starts_a_debian_program_without_the_marker_fails(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import os, subprocess, sys
        import pytest

        def run(name, *wrapper):
            subprocess.run([*wrapper, os.path.join(os.environ["PROGRAMS_DIR"], name)], check=True)

        def test_unmarked():
            run("memcached")

        def test_unmarked_behind_stdbuf():
            run("openssl", "stdbuf", "-o0")

        @pytest.mark.external
        def test_marked():
            run("memcached")

        def test_python_alone():
            subprocess.run([sys.executable, "-c", "pass"], check=True)
        """
    )
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_unmarked *",
            "*::test_unmarked started memcached, from a Debian package, but is not marked "
            '"external": add @pytest.mark.external (or pytestmark = pytest.mark.external in its module)*',
            "*ERROR at teardown of test_unmarked_behind_stdbuf *",
            "*::test_unmarked_behind_stdbuf started openssl, *",
        ]
    )


def test_the_fixtures_that_start_programs_and_the_slow_marker_mark_their_tests(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest

        @pytest.fixture
        def memcached():
            return 11211

        @pytest.fixture
        def through_memcached(memcached):
            return memcached

        @pytest.fixture(params=[pytest.param("real", marks=pytest.mark.external), "lite"])
        def server(request):
            return request.param

        def test_direct(memcached):
            pass

        def test_indirect(through_memcached):
            pass

        def test_either(server):
            pass

        @pytest.mark.slow
        def test_long():
            pass

        def test_python_alone():
            pass
        """
    )
    assert selected(project, "external") == ["test_direct", "test_either[real]", "test_indirect", "test_long"]
    assert selected(project, "not external") == ["test_either[lite]", "test_python_alone"]


@pytest.mark.parametrize(
    ("argv", "program"),
    [
        (["/usr/bin/memcached", "-p", "0"], "memcached"),
        (["/usr/share/memcached/scripts/memcached-tool", "127.0.0.1:1", "dump"], "memcached-tool"),
        (["stdbuf", "-o0", "-e0", "/usr/bin/memccapable", "-p", "1"], "memccapable"),
        ([b"/usr/sbin/nutcracker", b"--test-conf"], "nutcracker"),
        (["ruby3.1", "check.rb"], "ruby3.1"),
        (["php", "-d", "x=1"], "php"),
        (["redis-server", "--port", "1"], "redis-server"),
        (["systemd-analyze", "verify"], "systemd-analyze"),
        (["/usr/sbin/saslpasswd2", "-c"], "saslpasswd2"),
        ([sys.executable, "-m", "memcachedlite", "set", "memcached", "openssl"], None),
        (["mcl", "serve"], None),
        (["sh", "-c", "memcached"], None),  # a shell's command line is not looked into
        ([os.path.join("tmp", "memcachedlite")], None),
    ],
)
def test_which_programs_count(argv: list, program: str | None) -> None:
    assert external_program(argv) == program
