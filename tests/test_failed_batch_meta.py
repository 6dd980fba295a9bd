"""A pipeline of quiet meta commands whose batch the disk could not take
(found by benchmarks/soak.py, issue 22 item 6).

A client that pipelines quiet commands (``ms ... q``) reads replies until
``MN``: in memcached an error is never quiet and ``mn`` always answers
``MN``, so that is where its replies end. When the fsync of such a batch
fails, memcachedlite turns every non-empty reply of the batch into the
error (``Session.failed_reply``): the quiet sets stay silent and ``mn``'s
``MN`` becomes ``SERVER_ERROR ...``, so the client never sees ``MN`` and
waits until its timeout (the soak's meta client did, three times in six
minutes), and the quiet sets' silence acknowledged changes that were undone.
Now each quiet command of the failed batch answers the error and ``mn``
still answers ``MN``.
"""

from __future__ import annotations

import errno
from pathlib import Path

from tests.crashsim import Disk


def test_a_failed_pipeline_of_quiet_meta_sets_still_ends_with_mn(tmp_path: Path, monkeypatch) -> None:
    disk = Disk(tmp_path / "disk", monkeypatch, "always")
    try:
        assert disk.client.ask(b"ms a 1\r\nx\r\n") == b"HD\r\n"
        disk.recorder.fail("fsync", 1, errno.EIO)
        disk.client.send(b"ms b 1 q\r\ny\r\nms c 1 q\r\nz\r\nmn\r\n")
        lines: list[bytes] = []
        while not lines or lines[-1] != b"MN\r\n":
            if b"\r\n" not in disk.client.buf and disk.client.quiet(1.0):
                break  # nothing more comes
            lines.append(disk.client.readline())
        assert lines[-1:] == [b"MN\r\n"], lines  # the pipeline ends, as memcached ends it
        assert lines[:-1] and all(line.startswith(b"SERVER_ERROR ") for line in lines[:-1])  # and the failure is told
    finally:
        disk.stop()
