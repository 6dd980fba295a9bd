"""Each example in examples/ is run for real."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from memcachedlite import Store
from tests.conftest import ROOT, Raw


def test_upper_verb_served_by_mcl_serve_load(spawn, tmp_path: Path) -> None:
    proc = spawn("--load", str(ROOT / "examples" / "upper.py"))
    client = Raw(proc.port)
    try:
        assert client.ask(b"set greeting 7 0 5\r\nhello\r\n") == b"STORED\r\n"
        assert client.ask(b"upper greeting\r\n") == b"VALUE greeting 7 5\r\nHELLO\r\nEND\r\n"
        assert client.ask(b"upper missing\r\n") == b"NOT_FOUND\r\n"
        assert client.ask(b"upper\r\n") == b"CLIENT_ERROR bad command line format\r\n"
        assert client.ask(b"get greeting\r\n") == b"VALUE greeting 7 5\r\nHELLO\r\nEND\r\n"
    finally:
        client.close()
    assert proc.terminate() == 0
    # The data file replays without the module: the effect was logged as a set.
    store = Store(proc.data_file)
    try:
        item = store.get(b"greeting")
        assert item is not None and item.value == b"HELLO" and item.flags == 7
    finally:
        store.close()


def test_upper_module_registers_into_a_fresh_registry(fresh_registry, start_server, monkeypatch) -> None:
    # Importing the module with the default registry swapped for a copy keeps
    # the global table clean for other tests.
    import memcachedlite.registry as registry_module

    monkeypatch.setattr(registry_module, "default_registry", fresh_registry)
    spec = importlib.util.spec_from_file_location("upper_example", ROOT / "examples" / "upper.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert b"upper" in fresh_registry
    running = start_server(registry=fresh_registry)
    client = Raw(running.port)
    try:
        assert client.ask(b"set k 0 0 3\r\nabc\r\nupper k\r\n", replies=2) == (
            b"STORED\r\nVALUE k 0 3\r\nABC\r\nEND\r\n"
        )
    finally:
        client.close()
