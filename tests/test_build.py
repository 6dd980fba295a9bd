"""The two builds of one source (pure Python, and mypyc-compiled; see
memcachedlite/buildinfo.py and setup.py): the list of compiled modules is
read the same by both, the modules in it type-check (mypyc compiles only
what mypy accepts), and the build running is the one expected."""

from __future__ import annotations

import binascii
import gc
import importlib.machinery
import os
import runpy
import subprocess
import sys
import types
import weakref
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memcachedlite import Registry, Session, Store, __version__, buildinfo
from memcachedlite.server.tcp import MemcacheHandler, MemcacheServer
from memcachedlite.storage.records import strict_b64decode

ROOT = Path(__file__).resolve().parent.parent


def test_setup_py_compiles_exactly_the_modules_buildinfo_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMCACHEDLITE_COMPILE", raising=False)
    monkeypatch.setattr("setuptools.setup", lambda **kwargs: None)  # read setup.py, build nothing
    namespace = runpy.run_path(str(ROOT / "setup.py"))
    assert namespace["compiled_modules"]() == list(buildinfo.COMPILED)
    for name in buildinfo.COMPILED:
        assert (ROOT / (name.replace(".", "/") + ".py")).is_file(), name


def test_the_build_running_is_the_one_expected() -> None:
    """CI runs the suite on both builds and says which it expects; a compiled
    module left beside its source would otherwise pass for the pure build."""
    expected = os.environ.get("MEMCACHEDLITE_EXPECT_BUILD", "pure")
    assert buildinfo.build() == expected
    compiled = buildinfo.compiled_modules()
    assert compiled == (list(buildinfo.COMPILED) if expected == "mypyc" else [])


def test_the_compiled_modules_type_check() -> None:
    """mypyc refuses a module mypy does not accept: keep them acceptable."""
    paths = [name.replace(".", "/") + ".py" for name in buildinfo.COMPILED]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the reference, strict_mode, came with Python 3.11")
@settings(max_examples=1000)
@given(st.one_of(st.binary(max_size=12), st.lists(st.sampled_from(ALPHABET), max_size=12).map(bytes)))
def test_strict_base64_decodes_as_python_311_strict_mode(data: bytes) -> None:
    try:
        expected: object = binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        expected = binascii.Error
    try:
        got: object = strict_b64decode(data)
    except binascii.Error:
        got = binascii.Error
    assert got == expected, data


@pytest.mark.parametrize("data", [b"YQ==", b"YWJj", b"", b"YWI=", b"AAAA="])
def test_strict_base64_decodes_padded_base64(data: bytes) -> None:
    assert strict_b64decode(data) == binascii.a2b_base64(data)


def expected_description() -> str:
    return "mypyc build" if os.environ.get("MEMCACHEDLITE_EXPECT_BUILD") == "mypyc" else "pure Python build"


def test_the_start_up_log_names_the_build(spawn) -> None:
    server = spawn()
    assert f"memcachedlite {__version__} ({expected_description()}) listening on" in server.output()
    assert server.terminate() == 0


def test_stats_settings_names_the_build(raw) -> None:
    settings = raw.ask(b"stats settings\r\n")
    build = "mypyc" if os.environ.get("MEMCACHEDLITE_EXPECT_BUILD") == "mypyc" else "pure"
    assert f"STAT build {build}\r\n".encode() in settings


def test_a_closed_store_is_freed(tmp_path: Path) -> None:
    """A store on a data file and its file make a cycle (the file's failure
    callback is the store's), which the garbage collector frees once the
    store is closed and dropped. mypyc once walked an attribute twice in a
    compiled store (one a base class declared and the store annotated
    again): the collector then took the file for referenced from outside,
    and every store leaked (2 GB in ten seconds of fuzzing)."""
    store = Store(tmp_path / "data.txt", fsync="no")
    store.set(b"k", b"v")
    gone = weakref.ref(store)
    store.close()
    del store
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize("make", [lambda path: Store(path), lambda path: Session(Store(path))])
def test_the_collector_sees_each_reference_once(tmp_path: Path, make) -> None:
    """What a store or a session refers to, as the garbage collector walks
    it: no object the collector tracks is visited twice (see above)."""
    held = make(tmp_path / "data.txt")
    try:
        seen = Counter(id(o) for o in gc.get_referents(held) if gc.is_tracked(o))
        assert max(seen.values()) == 1
    finally:
        (held if isinstance(held, Store) else held.store).close()


@pytest.mark.parametrize("base", [Store, Session, Registry, MemcacheServer, MemcacheHandler])
def test_a_subclass_written_in_python_works_on_the_pure_build_only(base: type) -> None:
    """mypyc's compiled classes take no subclass written in Python: the
    compiled build refuses the class statement, saying what to do instead
    (docs/compiled-build.md); the pure build takes it as ever."""
    if buildinfo.build() == "mypyc":
        with pytest.raises(TypeError, match=f"cannot subclass {base.__name__}: .*compiled \\(mypyc\\) build"):
            type("Mine", (base,), {})
        return
    mine = type("Mine", (base,), {})
    if base is MemcacheHandler:  # (made per connection, by the server)
        assert issubclass(mine, base)
        return
    makers = {Store: lambda: mine(None), Session: lambda: mine(Store(None)), Registry: lambda: mine()}
    made = makers.get(base, lambda: mine(("127.0.0.1", 0), Store(None)))()
    assert isinstance(made, base)
    if isinstance(made, MemcacheServer):
        made.server_close()


def test_the_refusal_names_the_class_and_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal itself, on either build: a base from a module loaded from
    a C extension, a subclass from a module that is not compiled."""
    module = types.ModuleType("compiled_elsewhere")
    module.__file__ = "compiled_elsewhere" + importlib.machinery.EXTENSION_SUFFIXES[0]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    base = type("Base", (), {"__module__": module.__name__})
    mine = type("Mine", (), {"__module__": "users_module"})
    with pytest.raises(TypeError) as refused:
        buildinfo.refuse_python_subclass(mine, base)
    message = str(refused.value)
    assert message.startswith("class Mine cannot subclass Base: this is memcachedlite's compiled (mypyc) build")
    assert "install the pure build" in message and "docs/compiled-build.md" in message
    buildinfo.refuse_python_subclass(type("Ours", (), {"__module__": buildinfo.COMPILED[0]}), base)  # compiled too
