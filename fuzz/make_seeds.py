"""Build the fuzz targets' seeds from the test suite's own inputs.

    python fuzz/make_seeds.py

Runs a selection of the tests (those that talk to sessions, write and damage
data files, and load dump files) in this process with a recorder plugged in,
then keeps, for each target, the inputs that add coverage (libFuzzer's
``-merge``) in ``fuzz/seeds/<target>/``, replacing what was there:

- text_session, binary_session: everything a test fed one session (through
  ``feed``, or a server's connection), as one stream;
- datafile: every data file a store opened (as it was before the store
  read it) or closed, and every file ``salvage`` read: the tests' damaged
  files included;
- dump: every file ``Source`` (``mcl load``) read.

An input longer than the target's ``MAX_LEN`` is cut to it. The result is a
few hundred files, a few hundred KB in all; commit it when it changes.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
TESTS = [
    "tests/test_session.py",
    "tests/test_binary.py",
    "tests/test_batch_forms.py",
    "tests/test_security.py",
    "tests/test_meta.py",
    "tests/test_commands.py",
    "tests/test_persistence.py",
    "tests/test_meta_persistence.py",
    "tests/test_recovery.py",
    "tests/test_sets_record.py",
    "tests/test_compaction.py",
    "tests/test_dump_load.py",
]
MAX_LEN = {"text_session": 4096, "binary_session": 4096, "datafile": 16384, "dump": 8192}


class Recorder:
    """A pytest plugin that wraps the entry points the fuzz targets call and
    keeps the bytes they were given."""

    def __init__(self) -> None:
        self.inputs: dict[str, list[bytes]] = {name: [] for name in MAX_LEN}
        self.streams: list[tuple[str, bytearray]] = []

    def pytest_configure(self, config) -> None:
        from memcachedlite import Store
        from memcachedlite.cli import transfer
        from memcachedlite.protocols.binary import BinarySession
        from memcachedlite.protocols.session import Session
        from memcachedlite.storage import repair

        recorder = self
        receive, store_init, store_close = Session.receive, Store.__init__, Store.close
        post_init, salvage = transfer.Source.__post_init__, repair.salvage

        def recorded_receive(session, data):
            stream = session.__dict__.get("_seed_stream")
            if stream is None:
                kind = "binary_session" if isinstance(session, BinarySession) else "text_session"
                stream = session.__dict__["_seed_stream"] = bytearray()
                recorder.streams.append((kind, stream))
            stream += data
            return receive(session, data)

        def recorded_store_init(store, path=None, *args, **kwargs):
            if path is not None and os.path.isfile(path):
                recorder.add_file(path)
            store_init(store, path, *args, **kwargs)

        def recorded_store_close(store):
            store_close(store)
            if store.log is not None and os.path.isfile(store.log.path):
                recorder.add_file(store.log.path)

        def recorded_post_init(source):
            content = source.stream.read()
            recorder.inputs["dump"].append(content)
            source.stream = io.BytesIO(content)
            post_init(source)

        def recorded_salvage(buf):
            recorder.inputs["datafile"].append(bytes(buf))
            return salvage(buf)

        Session.receive = recorded_receive
        Store.__init__ = recorded_store_init
        Store.close = recorded_store_close
        transfer.Source.__post_init__ = recorded_post_init
        repair.salvage = recorded_salvage

    def add_file(self, path: str) -> None:
        with open(path, "rb") as f:
            self.inputs["datafile"].append(f.read())

    def collected(self) -> dict[str, list[bytes]]:
        for kind, stream in self.streams:
            self.inputs[kind].append(bytes(stream))
        self.streams.clear()
        return self.inputs


def main() -> int:
    import pytest

    sys.path.insert(0, ROOT)
    recorder = Recorder()
    os.chdir(ROOT)
    pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:benchmark", *TESTS], plugins=[recorder])
    raw = tempfile.mkdtemp(prefix="memcachedlite-seeds-")
    try:
        for target, inputs in recorder.collected().items():
            folder = os.path.join(raw, target)
            os.makedirs(folder)
            for data in inputs:
                data = data[: MAX_LEN[target]]
                if data:
                    name = hashlib.sha1(data).hexdigest()
                    with open(os.path.join(folder, name), "wb") as f:
                        f.write(data)
            seeds = os.path.join(FUZZ, "seeds", target)
            shutil.rmtree(seeds, ignore_errors=True)
            os.makedirs(seeds)
            print(f"{target}: {len(os.listdir(folder))} distinct inputs recorded; merging", flush=True)
            subprocess.run(
                [sys.executable, os.path.join(FUZZ, "run.py"), "--target", target, seeds, folder, "--", "-merge=1"],
                check=False,  # a finding among the tests' own inputs is reported above, and not kept
            )
            size = sum(os.path.getsize(os.path.join(seeds, name)) for name in os.listdir(seeds))
            print(f"{target}: {len(os.listdir(seeds))} seeds kept, {size} bytes", flush=True)
    finally:
        shutil.rmtree(raw, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
