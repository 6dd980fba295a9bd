"""libmemcached's protocol checker, ``memccapable``, run against memcachedlite.

The ASCII tests are run here (``-a``); its binary tests (``-b``) are run in
``tests/test_binary_clients.py`` with the other binary-protocol clients.

memccapable 1.1.x reads the server's ``version`` reply: for a server that
says 1.6 or later it expects ``version foo bar`` and ``version noreply`` to
be answered with a VERSION line (memcached 1.6 ignores the extra tokens);
for older or other versions, as memcachedlite's own version number is, it
expects an error line, which memcachedlite gives. Its ``ascii verbosity``
test sends ``verbosity noreply`` and expects no reply at all: memcached keeps
quiet about errors under ``noreply`` (the next line it reads must be the reply
to ``version``).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.external  # memccapable, from libmemcached-tools

MEMCCAPABLE = shutil.which("memccapable") or "/usr/bin/memccapable"
#: memccapable writes test names to stdout and verdicts to stderr; unbuffered,
#: the two interleave in order in one captured transcript.
UNBUFFERED = [shutil.which("stdbuf") or "/usr/bin/stdbuf", "-o0", "-e0"]  # coreutils
#: per-read timeout inside memccapable (-t), and a bound on the whole run
IO_TIMEOUT = 5
RUN_TIMEOUT = 120


def run_memccapable(port: int, *extra: str) -> subprocess.CompletedProcess:
    assert os.path.exists(MEMCCAPABLE), "memccapable is not installed (apt-get install libmemcached-tools)"
    return subprocess.run(
        [*UNBUFFERED, MEMCCAPABLE, "-a", "-v", "-t", str(IO_TIMEOUT), "-h", "127.0.0.1", "-p", str(port), *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=RUN_TIMEOUT,
    )


def test_memccapable_ascii_passes(server) -> None:
    result = run_memccapable(server.port)
    report = f"memccapable exited {result.returncode}; its output:\n{result.stdout}"
    assert result.returncode == 0, report
    assert "All tests passed" in result.stdout, report
    assert "[FAIL]" not in result.stdout, report


def test_memccapable_passes_against_memcached(memcached: int) -> None:
    """The control: this memccapable passes against the real memcached."""
    result = run_memccapable(memcached)
    assert result.returncode == 0, f"memccapable exited {result.returncode}; its output:\n{result.stdout}"
