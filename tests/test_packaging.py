"""The package as PyPI and pip see it: the sdist and the wheel that
``python -m build`` makes pass ``twine check --strict``, the wheel holds the
whole package and nothing else, the licence travels with it, and the
metadata says what the project is (licence, Python versions, platform,
pytest plugin) with the version defined once.

The build runs without isolation (so without the network): its backend,
setuptools and wheel, is in the ``test`` extra, as are build and twine; a
missing one fails the test. It builds from a copy of the source tree, so the
checkout gets no ``build/`` or ``*.egg-info`` from it.
"""

from __future__ import annotations

import ast
import configparser
import email
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from memcachedlite.version import __version__
from tests.conftest import ROOT

PACKAGE = ROOT / "memcachedlite"
#: What never goes into the copy the build starts from: what .gitignore keeps out of the repository.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", "venv", "site", ".*_cache", ".hypothesis",
    ".coverage*", "htmlcov", "data.txt", "*.log", "results", "cluster-data", "corpus", "artifacts",
)  # fmt: skip


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built from a copy of this checkout."""
    work = tmp_path_factory.mktemp("build")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    out = work / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_twine_check_strict_passes_on_both(dists: dict[str, Path]) -> None:
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dists["sdist"]), str(dists["wheel"])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("PASSED") == 2, check.stdout


def test_the_wheel_holds_the_whole_package_and_nothing_else(dists: dict[str, Path]) -> None:
    dist_info = f"memcachedlite-{__version__}.dist-info/"
    assert dists["wheel"].name == f"memcachedlite-{__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(dists["wheel"]).namelist()
    code = {name for name in names if not name.startswith(dist_info)}
    source = {path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*.py")}
    assert {name for name in code if name.endswith(".py")} == source
    subpackages = {path.parent.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("__init__.py")}
    assert {"memcachedlite/storage", "memcachedlite/protocols", "memcachedlite/server", "memcachedlite/testing"} <= (
        subpackages
    )
    assert {f"{package}/__init__.py" for package in subpackages} <= code
    assert code - source == {"memcachedlite/py.typed"}  # no tests, no data files, no bytecode
    assert {name for name in names if name.startswith(dist_info) and name.rsplit("/", 1)[-1] == "LICENSE"}
    entry_points = zipfile.ZipFile(dists["wheel"]).read(dist_info + "entry_points.txt").decode()
    assert "mcl = memcachedlite.cli:main" in entry_points
    assert "memcachedlite = memcachedlite.testing.plugin" in entry_points


def test_the_sdist_carries_the_licence_and_changelog_but_not_the_tests(dists: dict[str, Path]) -> None:
    top = f"memcachedlite-{__version__}/"
    with tarfile.open(dists["sdist"]) as sdist:
        names = {name.removeprefix(top) for name in sdist.getnames()}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "setup.cfg", "PKG-INFO"} <= names
    assert {path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*.py")} <= names
    assert not {name for name in names if name.startswith(("tests", "docs", "benchmarks", "fuzz"))}


def test_the_metadata_says_what_the_project_is(dists: dict[str, Path]) -> None:
    raw = zipfile.ZipFile(dists["wheel"]).read(f"memcachedlite-{__version__}.dist-info/METADATA")
    metadata = email.message_from_bytes(raw)
    assert metadata["Name"] == "memcachedlite" and metadata["Version"] == __version__
    assert metadata["License"] == "MIT" and metadata["Author"] == "the memcachedlite developers"
    classifiers = set(metadata.get_all("Classifier"))
    assert {
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX :: Linux",
        "Framework :: Pytest",
        "Topic :: Database",
        "Typing :: Typed",
    } <= classifiers
    assert [c for c in classifiers if c.startswith("Development Status :: ")]
    # one classifier for each Python version python_requires admits, and none it does not
    requires = SpecifierSet(metadata["Requires-Python"])
    versions = {c.rsplit(" ", 1)[-1] for c in classifiers if c.startswith("Programming Language :: Python :: 3.")}
    assert versions == {"3.10", "3.11", "3.12", "3.13"}
    assert all(requires.contains(f"{v}.0") for v in versions) and not requires.contains("3.9.0")
    assert metadata["Description-Content-Type"] == "text/markdown"


def test_the_version_is_defined_once() -> None:
    assert setup_cfg()["metadata"]["version"] == "attr: memcachedlite.version.__version__"
    defining = [
        path.relative_to(ROOT).as_posix()
        for path in [*PACKAGE.rglob("*.py"), ROOT / "setup.cfg", ROOT / "pyproject.toml"]
        if f'"{__version__}"' in path.read_text(encoding="utf-8")
    ]
    assert defining == ["memcachedlite/version.py"]


def test_the_changelog_starts_at_this_release() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "[Keep a Changelog](https://keepachangelog.com/" in text
    releases = [line for line in text.splitlines() if line.startswith("## ")]
    assert releases[0].startswith(f"## [{__version__}] - ")


def test_the_test_extra_holds_the_build_backend_so_no_isolation_works() -> None:
    extra = {Requirement(line).name for line in lines(setup_cfg()["options.extras_require"]["test"])}
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    # the first "requires = [...]" is [build-system]'s (tomllib would need Python 3.11)
    backend = ast.literal_eval(pyproject.split("[build-system]\nrequires = ", 1)[1].split("\n", 1)[0])
    assert {Requirement(line).name for line in backend} | {"build", "twine"} <= extra
