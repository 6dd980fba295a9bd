"""The package's layers, as import-linter checks them (the contracts are in
pyproject.toml): errors and version at the bottom, then storage, protocols,
server, and the command line, load generator and testing helpers on top;
TYPE_CHECKING imports counted, no import circle in any package. Missing
import-linter fails this test, never skips it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_layers_and_acyclic_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is not installed (pip install -e '.[test]')"
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout, done.stdout


def test_storage_never_imports_a_socket_or_a_protocol() -> None:
    """Beyond the layers: no module of the storage engine imports ``socket``
    or ``ssl``; replies and sockets are the server's business."""
    for path in sorted((ROOT / "memcachedlite" / "storage").glob("*.py")):
        text = path.read_text()
        for banned in ("import socket", "import ssl", "import selectors"):
            assert banned not in text, f"{path.name} has {banned!r}"
