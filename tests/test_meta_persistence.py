"""What the meta commands store survives restarts, compaction, repair and kill -9."""

from __future__ import annotations

import base64
import signal
import threading
import time
from pathlib import Path

import pytest

from memcachedlite import CorruptLogError, Store
from memcachedlite.storage import records as fmt
from memcachedlite.storage import repair
from memcachedlite.storage.records import HEADER, parse_records
from tests.conftest import Raw, mark_synced

NOW = 1_800_000_000
#: Keys only the base64 form can carry: space, CRLF, NUL, a leading "=".
ODD_KEYS = [b"with space", b"cr\r\nlf", b"nul\x00byte", b"=starts-with-equals", b"\xff\xfe"]


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64(key: bytes) -> bytes:
    return base64.b64encode(key)


def fill(port: int) -> dict[bytes, bytes]:
    """Store one of everything the meta commands can leave behind; return
    what ``mg <key> v c t f`` answers for each key afterwards."""
    c = Raw(port)
    try:
        replies = [
            c.ask(b"ms ttl 3 T100 F7\r\nabc\r\n"),
            c.ask(b"ms chosen 1 E4242\r\nx\r\n"),
            c.ask(b"ms cat 1\r\nb\r\n"),
            c.ask(b"ms cat 1 MA\r\nc\r\n"),
            c.ask(b"ms cat 1 MP\r\na\r\n"),
            c.ask(b"ms stale 3 T500\r\nold\r\n"),
            c.ask(b"md stale I T200\r\n"),
            c.ask(b"ma counter N0 J40\r\n"),
            c.ask(b"ma counter D2\r\n"),
            c.ask(b"ma counter MD D1\r\n"),
            c.ask(b"ms emptied 5 F9\r\nhello\r\n"),
            c.ask(b"md emptied x\r\n"),
            c.ask(b"ms gone 1\r\nx\r\n"),
            c.ask(b"md gone\r\n"),
            c.ask(b"ms =text 2\r\nok\r\n"),  # a plain text key that begins with "="
            c.ask(b"mg vivified N300 v\r\n"),
        ]
        replies += [c.ask(b"ms %s 1 b T60\r\n%d\r\n" % (b64(key), i)) for i, key in enumerate(ODD_KEYS)]
        assert all(r.startswith((b"HD", b"VA")) for r in replies), replies
        keys = [b"ttl", b"chosen", b"cat", b"stale", b"counter", b"emptied", b"gone", b"=text", b"vivified"]
        seen = {key: c.ask(b"mg %s v c t f\r\n" % key) for key in keys}
        seen.update({key: c.ask(b"mg %s b v c t f k\r\n" % b64(key)) for key in ODD_KEYS})
        return seen
    finally:
        c.close()


def read_back(port: int, keys: list[bytes]) -> dict[bytes, bytes]:
    c = Raw(port)
    try:
        seen = {}
        for key in keys:
            line = b"mg %s b v c t f k\r\n" % b64(key) if key in ODD_KEYS else b"mg %s v c t f\r\n" % key
            seen[key] = c.ask(line)
        return seen
    finally:
        c.close()


def test_meta_changes_survive_a_restart(start_server, tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "meta.txt"
    first = start_server(Store(path, clock=clock))
    before = fill(first.port)
    first.stop()
    first.store.close()

    assert before[b"ttl"] == b"VA 3 c1 t100 f7\r\nabc\r\n"
    assert before[b"chosen"] == b"VA 1 c4242 t-1 f0\r\nx\r\n"
    assert before[b"cat"].endswith(b"\r\nabc\r\n")
    assert before[b"counter"] == b"VA 2 c9 t-1 f0\r\n41\r\n"
    assert before[b"emptied"] == b"VA 0 c11 t-1 f0\r\n\r\n"
    assert before[b"gone"] == b"EN\r\n"
    assert before[b"stale"].startswith(b"VA 3 c") and before[b"stale"].endswith(b" X W\r\nold\r\n")

    second = start_server(Store(path, clock=clock))
    after = read_back(second.port, list(before))
    # The win token is not kept (as in memcached, it lives while the server
    # runs): the first reader after a restart wins the stale item again.
    assert after.pop(b"stale") == before.pop(b"stale")
    # the vivified item's token is gone with it: no Z after the restart
    assert after.pop(b"vivified") == before.pop(b"vivified").replace(b" Z", b"")
    assert after == before
    for key in ODD_KEYS:
        assert after[key].startswith(b"VA 1 ") and b" k%s b" % b64(key) in after[key]
    c = Raw(second.port)
    try:  # cas values keep growing past everything replayed, E's included
        assert int(c.ask(b"ms new 1 c\r\nx\r\n").split(b"c")[1]) > 4242
        assert c.ask(b"get =text\r\n") == b"VALUE =text 0 2\r\nok\r\nEND\r\n"
        assert c.ask(b"mg =text k\r\n") == b"HD k=text\r\n"  # still a text key, not base64
    finally:
        c.close()


def test_keys_given_in_base64_have_records_of_their_own(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    store = Store(path)
    store.put(b"a b", b"1", state=8)
    store.set(b"=eq", b"2")  # a text key that merely begins with "=" stays as it is
    store.put(b"a b", b"3", state=8)
    store.mark(b"a b", stale=True)
    store.touch(b"=eq", 100)
    store.delete(b"a b")
    store.close()
    data = path.read_bytes()
    assert b"\r\nbset YSBi 0 0 1 1 " in data
    assert b"\r\nset =eq 0 0 1 2 " in data
    assert b"\r\nbinvalidate YSBi 4 " in data
    assert b"\r\ntouch =eq " in data and b"\r\nbdelete YSBi " in data
    # no record names the raw key (a sync mark's hex may hold "a b" by chance: "...3a b9...")
    assert [line for line in data.split(b"\r\n") if line.split(b" ")[1:3] == [b"a", b"b"]] == []
    # a record rewritten from its parsed form is byte for byte the original
    start = fmt.read_header(data)[0]
    records = list(parse_records(data, start))
    assert data[:start] + b"".join(fmt.encode(r) for r in records) == data
    again = Store(path)
    try:
        assert again.keys() == [b"=eq"] and again.peek(b"=eq").value == b"2"
    finally:
        again.close()


def test_files_written_before_base64_keys_read_as_before(tmp_path: Path) -> None:
    """Version-1 files could hold text keys such as "=abc" and "==x": they
    must come back as those very keys."""
    path = tmp_path / "data.txt"
    path.write_bytes(
        HEADER
        + fmt.encode_set(b"=abcd", b"one", 0, 0, 1)
        + fmt.encode_set(b"=abc", b"two", 0, 0, 2)
        + fmt.encode_set(b"==x", b"three", 0, 0, 3)
        + fmt.encode_touch(b"=abc", NOW + 100)
        + fmt.encode_delete(b"=abcd")
    )
    store = Store(path, clock=Clock())
    try:
        assert {k: store.peek(k).value for k in store.keys()} == {b"=abc": b"two", b"==x": b"three"}
        assert store.peek(b"=abc").exptime == NOW + 100
    finally:
        store.close()


def test_a_binary_record_with_a_bad_key_is_damage_with_an_offset(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    bad = fmt.encode_delete(b"k").replace(b"delete k", b"bdelete !!")
    bad = fmt.seal(bad.rsplit(b" ", 1)[0])  # a valid checksum over a key that is not base64
    path.write_bytes(HEADER + bad + fmt.encode_set(b"k", b"v", 0, 0, 1))
    mark_synced(path)
    with pytest.raises(CorruptLogError) as caught:
        Store(path)
    assert caught.value.offset == len(HEADER)


def test_compaction_and_repair_keep_meta_state(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "data.txt"
    store = Store(path, clock=clock)
    store.put(b"k y", b"binary", state=8, exptime=NOW + 60)
    store.put(b"stale", b"v", exptime=NOW + 60)
    store.mark(b"stale", stale=True, cas=900)
    store.put(b"chosen", b"v", cas=777)
    for i in range(50):
        store.set(b"churn", b"%d" % i)
    before = {k: store.peek(k)[:5] for k in store.keys()}
    size = path.stat().st_size
    store.compact()
    assert path.stat().st_size < size
    store.close()

    repair.repair(path)  # a clean file: repair must change nothing that matters
    again = Store(path, clock=clock)
    try:
        assert {k: again.peek(k)[:5] for k in again.keys()} == before
        assert again.peek(b"stale").stale and again.peek(b"stale").cas == 900
        assert again.peek(b"k y").state & 8
        assert again.put(b"next", b"x") > 900
    finally:
        again.close()


def quiet_writer(port: int, writer: int, acked: dict, stop: threading.Event) -> None:
    """Quiet meta sets in batches of 20, each closed by ``mn``: once MN
    arrives with no error before it, the whole batch was acknowledged."""
    try:
        client = Raw(port, timeout=5)
    except OSError:
        return
    try:
        batch = 0
        while not stop.is_set():
            keys = [b"m%d-%d" % (writer, (batch * 20 + i) % 200) for i in range(20)]
            payload = b"".join(b"ms %s %d q T0 F%d\r\n%d\r\n" % (k, len(b"%d" % batch), writer, batch) for k in keys)
            client.send(payload + b"mn\r\n")
            if client.readline() != b"MN\r\n":
                raise AssertionError("a quiet set answered")
            for key in keys:
                acked[key] = batch
            batch += 1
    except (OSError, ConnectionError):
        pass  # killed mid-batch: that batch was never acknowledged
    finally:
        client.close()


def test_kill_9_under_quiet_meta_load_loses_nothing_acknowledged(spawn, tmp_path: Path) -> None:
    proc = spawn("--fsync", "everysec")
    acked: dict[bytes, int] = {}
    stop = threading.Event()
    threads = [threading.Thread(target=quiet_writer, args=(proc.port, w, acked, stop)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(acked) < 800 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) == 800

    store = Store(proc.data_file)
    try:
        for key, batch in acked.items():
            item = store.peek(key)
            assert item is not None, key
            assert int(item.value) >= batch, (key, item.value, batch)
            assert item.flags == int(key[1:].split(b"-")[0])
    finally:
        store.close()
