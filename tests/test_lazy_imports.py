"""What importing memcachedlite costs, and where it works.

The pytest plugin is loaded into every pytest run of an environment where
memcachedlite is installed, so importing it (and the root package it sits
in) imports nothing of the server: ``python -X importtime`` lists which
memcachedlite modules a fresh interpreter imports, and the list is checked
(not the time, which a loaded machine makes noisy). Without ``fcntl`` (as
on Windows) the plugin, the root package and ``mcl`` still import, and the
server refuses to start with a message that says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import memcachedlite
from memcachedlite.errors import UnsupportedPlatform
from tests.conftest import ROOT

#: Run first in a subprocess to make fcntl unimportable, as it is on Windows.
NO_FCNTL = "import sys; sys.modules['fcntl'] = None\n"


def python(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess:
    """A fresh interpreter running this checkout's memcachedlite (and not
    this run's xdist worker settings, which a pytest started in it would take)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def imported_by(statement: str) -> set[str]:
    """The memcachedlite modules ``statement`` imports in a fresh interpreter:
    those ``-X importtime`` reports (one line per module an import statement
    loads), and those in ``sys.modules`` after it (``importlib.import_module``,
    which the root package's lazy names use, is not timed), which must agree."""
    listing = "import sys; print(*(name for name in sys.modules if name.split('.')[0] == 'memcachedlite'))"
    result = python("-X", "importtime", "-c", f"{statement}\n{listing}")
    assert result.returncode == 0, result.stderr
    names = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    timed = {name for name in names if name.split(".")[0] == "memcachedlite"}
    loaded = set(result.stdout.split())
    assert "memcachedlite" in timed and timed <= loaded, (timed, loaded)
    return loaded


def test_the_plugin_imports_no_server_code() -> None:
    assert imported_by("import memcachedlite.testing.plugin") == {
        "memcachedlite",
        "memcachedlite.testing",
        "memcachedlite.testing.plugin",
    }


def test_the_root_package_imports_nothing_until_a_name_is_used() -> None:
    assert imported_by("import memcachedlite") == {"memcachedlite"}
    assert imported_by("from memcachedlite import __version__") == {"memcachedlite", "memcachedlite.version"}
    assert imported_by("import memcachedlite; memcachedlite.version") == {"memcachedlite", "memcachedlite.version"}


def test_mcl_imports_no_server_code_until_a_server_command_runs() -> None:
    """Only the rules a client shares with the server: how addresses are
    written, what a key is, what the numbers of an item are."""
    assert imported_by("import memcachedlite.cli") - {
        f"memcachedlite.cli.{name}" for name in ("bench", "bulk", "call", "client", "common", "serve", "transfer")
    } == {
        "memcachedlite",
        "memcachedlite.cli",
        "memcachedlite.errors",
        "memcachedlite.server",
        "memcachedlite.server.addresses",
        "memcachedlite.storage",
        "memcachedlite.storage.keys",
        "memcachedlite.storage.numbers",
        "memcachedlite.version",
    }


def test_every_public_name_is_there_when_asked_for() -> None:
    from memcachedlite import Store, command
    from memcachedlite.protocols.registry import command as registry_command
    from memcachedlite.storage.store import Store as store_class

    assert command is registry_command and Store is store_class
    for name in memcachedlite.__all__:
        assert getattr(memcachedlite, name) is not None
    assert {"command", "MemcacheServer", "Store", "UnsupportedPlatform", "__version__"} <= set(memcachedlite.__all__)
    assert set(memcachedlite.__all__) <= set(dir(memcachedlite)) and "storage" in dir(memcachedlite)
    assert memcachedlite.storage.store.Store is Store  # a subpackage, reached as an attribute
    with pytest.raises(AttributeError, match="has no attribute 'nonesuch'"):
        memcachedlite.nonesuch  # noqa: B018


def test_without_fcntl_the_plugin_the_package_and_mcl_still_import() -> None:
    result = python(
        "-c",
        NO_FCNTL
        + textwrap.dedent(
            """
            import memcachedlite, memcachedlite.testing.plugin, memcachedlite.cli
            from memcachedlite import __version__, ClientError
            try:
                from memcachedlite import Store
            except ImportError as exc:
                print(type(exc).__name__, exc.name, exc)
            """
        ),
    )
    assert result.returncode == 0, result.stderr
    kind, module, message = result.stdout.strip().split(" ", 2)
    assert (kind, module) == ("UnsupportedPlatform", "fcntl")
    assert (
        message.startswith("memcachedlite's server needs a POSIX system such as Linux") and "no fcntl module" in message
    )


def test_without_fcntl_mcl_serve_refuses_to_start_in_one_line() -> None:
    result = python(
        "-c", NO_FCNTL + "from memcachedlite.cli import main; main(['serve', '--port', '0', '--no-data-file'])"
    )
    assert result.returncode == 5, result.stderr
    assert (
        result.stderr.startswith("Error: memcachedlite's server needs a POSIX system")
        and "Traceback" not in result.stderr
    )
    assert result.stderr.count("\n") == 1


def test_without_fcntl_pytest_runs_and_only_the_fixtures_say_why_they_cannot(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings =\n    error\n")
    (tmp_path / "test_app.py").write_text(
        textwrap.dedent(
            """
            def test_without_a_server():
                assert True

            def test_with_one(memcached):
                memcached.set("k", b"v")
            """
        )
    )
    result = python(
        "-c",
        NO_FCNTL + "import pytest; raise SystemExit(pytest.main(['-p', 'no:cacheprovider', '-q', '-rE']))",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 1 error" in result.stdout, result.stdout
    assert "UnsupportedPlatform: memcachedlite's server needs a POSIX system" in result.stdout


def test_the_error_is_an_import_error_naming_the_module() -> None:
    error = UnsupportedPlatform("resource")
    assert isinstance(error, ImportError) and error.name == "resource"
    assert f"this Python ({sys.platform}) has no resource module" in str(error)
