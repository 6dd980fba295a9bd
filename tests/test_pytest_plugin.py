"""The pytest plugin, run in throwaway projects with pytester: loaded by the
entry point alone, inert until its fixtures are used, a clean server per test,
factories, xdist workers with servers of their own, ``--memcached-external``
against the real memcached, and a teardown that leaves no thread or port."""

from __future__ import annotations

import os
import pwd
import shutil
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT, not_an_xdist_worker, running_memcached, running_program
from tests.test_cli import wait_until
from tests.test_testing_api import refused

pytest_plugins = ["pytester"]

#: Every throwaway project runs as strictly as this one does.
STRICT_INI = "[pytest]\nfilterwarnings =\n    error\n"


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    not_an_xdist_worker(monkeypatch)
    pytester.makeini(STRICT_INI)
    return pytester


@pytest.fixture
def records(project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the throwaway project's tests note what they saw, with ``record(name, value)``
    from its conftest."""
    monkeypatch.setenv("RECORD_DIR", str(tmp_path))
    project.makeconftest(
        """
        import os, pathlib

        def record(name, value):
            with open(pathlib.Path(os.environ["RECORD_DIR"]) / name, "a") as f:
                f.write(str(value) + "\\n")
        """
    )
    return tmp_path


def test_the_entry_point_alone_loads_the_plugin(project: pytest.Pytester) -> None:
    result = project.runpytest("--help")
    result.stdout.fnmatch_lines(["*--memcached-external=HOST:PORT*", "*memcached_external*"])
    result = project.runpytest("--fixtures")
    result.stdout.fnmatch_lines(
        [
            "memcached_server [[]session scope[]] -- *",
            "memcached_address [[]session scope[]] -- *",
            "memcached -- *",
            "memcached_faults -- *",
        ]
    )


def test_a_suite_that_uses_no_fixture_starts_nothing(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import os, sys, threading

        def test_untouched(request):
            assert request.config.pluginmanager.hasplugin("memcachedlite")
            assert "memcachedlite.testing.background" not in sys.modules  # no server code even imported
            assert threading.active_count() == 1
            sockets = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                        sockets.append(fd)
                except FileNotFoundError:  # the directory listing's own descriptor
                    pass
            assert not sockets
        """
    )
    project.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_each_test_starts_on_an_empty_server_shared_by_the_session(project: pytest.Pytester, records: Path) -> None:
    project.makepyfile(
        """
        import pytest
        from conftest import record

        @pytest.mark.parametrize("n", range(3))
        def test_clean(memcached, memcached_address, memcached_server, n):
            assert memcached.get("left-over") is None
            assert memcached.set("left-over", b"from test %d" % n) is True
            assert memcached_address == f"127.0.0.1:{memcached_server.port}"
            record("ports", memcached_server.port)

        def test_a_fault_does_not_outlive_its_test(memcached, memcached_faults):
            memcached_faults.fail_writes()
            memcached_faults.refuse_connections()

        def test_the_next_test_sees_a_healthy_server(memcached):
            assert memcached.set("k", b"v") and memcached.get("k") == b"v"
        """
    )
    threads_before = set(threading.enumerate())
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=5)
    ports = set((records / "ports").read_text().split())
    assert len(ports) == 1  # one session-wide server
    assert set(threading.enumerate()) <= threads_before  # every thread it started was joined
    assert refused(int(ports.pop()))  # and its port freed


def test_the_memcached_client_survives_a_restart_of_the_server(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from pymemcache.exceptions import MemcacheUnexpectedCloseError

        def test_restart(memcached, memcached_server):
            memcached.set("k", b"v")
            other = memcached_server.client()
            assert other.get("k") == b"v"
            port = memcached_server.port
            memcached_server.restart()  # a warm restart: the items stay
            assert memcached.get("k") == b"v" and memcached_server.port == port
            with pytest.raises(MemcacheUnexpectedCloseError):
                other.get("k")  # any other client sees the restart, as from a real server
            memcached_server.restart(keep_data=False)
            assert memcached.get("k") is None and memcached.set("k", b"again")

        def test_the_next_test_gets_a_working_client(memcached):
            assert memcached.get("k") is None
        """
    )
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_factories_give_several_servers_with_their_own_options(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        from memcachedlite.testing import server_factory

        tiny = server_factory(max_item_size="1k")
        shared = server_factory(scope="module", dialect="lite")

        def test_two_servers_at_once(tiny, shared, memcached_server):
            assert len({tiny.port, shared.port, memcached_server.port}) == 3
            tiny.client().set("k", b"tiny")
            assert shared.client().get("k") is None and memcached_server.client().get("k") is None
            assert tiny.client().stats("settings")[b"item_size_max"] == 1024
            assert shared.store.get(b"k") is None

        def test_module_scope_is_shared(shared):
            shared.client().set("again", b"1")

        def test_module_scope_is_shared_indeed(shared):
            assert shared.store.get(b"again").value == b"1"
        """
    )
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_xdist_workers_each_get_a_server_of_their_own(project: pytest.Pytester, records: Path) -> None:
    project.makepyfile(
        """
        import os
        import pytest
        from conftest import record

        @pytest.mark.parametrize("n", range(8))
        def test_clean(memcached, memcached_server, n):
            assert memcached.get("mine") is None
            memcached.set("mine", os.environ["PYTEST_XDIST_WORKER"])
            record("ports", f'{os.environ["PYTEST_XDIST_WORKER"]} {memcached_server.port}')
        """
    )
    # pytest-benchmark, where installed, warns about xdist: not ours to judge.
    result = project.runpytest_subprocess("-n", "2", "-p", "xdist", "-p", "no:benchmark", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)
    seen = {tuple(line.split()) for line in (records / "ports").read_text().splitlines()}
    workers = {worker for worker, _ in seen}
    ports = {port for _, port in seen}
    assert workers == {"gw0", "gw1"} and len(ports) == 2 and len(seen) == 2  # one server per worker
    assert all(refused(int(port)) for port in ports)


@pytest.mark.external
def test_external_mode_runs_the_same_fixtures_against_the_real_memcached(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(2))
        def test_clean(memcached, memcached_address, memcached_server, n):
            assert memcached.get("left-over") is None
            memcached.set("left-over", b"x")
            assert memcached_address == memcached_server.address
            assert b"memcachedlite" not in memcached.version()  # the real memcached answers
            assert b"memory_only" not in memcached.stats("settings")

        def test_no_faults_from_outside(memcached_server):
            with pytest.raises(RuntimeError, match="fault injection needs the in-process"):
                memcached_server.faults
        """
    )
    threads_before = set(threading.enumerate())
    with running_memcached() as port:
        address = f"127.0.0.1:{port}"
        project.runpytest("-p", "no:cacheprovider", f"--memcached-external={address}").assert_outcomes(passed=3)
        project.makeini(STRICT_INI + f"memcached_external = {address}\n")  # the ini option does the same
        project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
    assert set(threading.enumerate()) <= threads_before
    result = project.runpytest("-p", "no:cacheprovider", "--memcached-external=nonsense")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*--memcached-external: 'nonsense' is not HOST:PORT*"])


@pytest.mark.external
def test_external_mode_takes_a_unix_socket(project: pytest.Pytester, tmp_path: Path) -> None:
    """``--memcached-external`` with the real memcached's ``-s`` socket, as a
    path and as Django's ``unix:`` form."""
    project.makepyfile(
        """
        import os

        def test_over_the_socket(memcached, memcached_address, memcached_server):
            assert memcached_address == memcached_server.address == memcached_server.host
            assert os.path.exists(memcached_address) and memcached_server.port == 0
            memcached.set("k", b"v")
            assert memcached.get("k") == b"v"
            assert b"memcachedlite" not in memcached.version()  # the real memcached answers
        """
    )
    path = tmp_path / "memcached.sock"
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    user = pwd.getpwuid(os.geteuid()).pw_name  # memcached makes its socket as this user, who owns tmp_path
    with running_program([binary, "-s", str(path), "-m", "64", "-u", user]):
        wait_until(path.exists)
        for address in (str(path), f"unix:{path}"):
            project.runpytest("-p", "no:cacheprovider", f"--memcached-external={address}").assert_outcomes(passed=1)


def test_a_memcachedlite_default_is_not_the_real_memcached(project: pytest.Pytester) -> None:
    """The counterpart of the external run above: without the option, the fixtures are memcachedlite's."""
    project.makepyfile(
        """
        def test_lite(memcached, memcached_server):
            assert b"memcachedlite" in memcached.version()
            assert memcached.stats("settings")[b"memory_only"] == b"yes"
            assert memcached_server.store is not None
        """
    )
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_cache_failure_example_passes(project: pytest.Pytester) -> None:
    example = ROOT / "examples" / "cache_failure"
    for name in ("profiles.py", "test_profiles.py"):
        project.path.joinpath(name).write_text((example / name).read_text())
    threads_before = set(threading.enumerate())
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=6)
    assert set(threading.enumerate()) <= threads_before


def test_the_readme_example_passes(project: pytest.Pytester) -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("<!-- plugin-example -->\n```python\n", 1)[1].split("```", 1)[0]
    assert len(example.strip().splitlines()) <= 12  # "a ten-line example", give or take the imports
    project.makepyfile(test_readme=example)
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_external_mode_against_an_mcl_serve_process(project: pytest.Pytester, spawn) -> None:
    proc = spawn("--no-data-file")
    project.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(2))
        def test_clean(memcached, memcached_server, n):
            assert memcached.get("left-over") is None
            memcached.set("left-over", b"x")
            assert b"memcachedlite" in memcached.version()
            with pytest.raises(AttributeError):
                memcached_server.store  # not in this process
        """
    )
    project.runpytest("-p", "no:cacheprovider", f"--memcached-external=127.0.0.1:{proc.port}").assert_outcomes(passed=2)
    assert proc.terminate() == 0
