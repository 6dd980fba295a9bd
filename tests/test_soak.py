"""benchmarks/soak.py (issue 22, item 6): its judge of what a restart kept,
on made-up histories, and a run of a few seconds end to end (kills,
restarts, compactions, injected faults, evictions), so that it never rots."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from .conftest import ROOT, script_module


@pytest.fixture(scope="module")
def soak() -> Iterator[Any]:
    with script_module(ROOT / "benchmarks" / "soak.py", "bench_soak") as module:
        yield module


#: the sizes of the values a ledger makes up
ledger_rng = random.Random(1)


class Evictions:
    """What a Ledger asks of the soak: the evictions seen so far."""

    def __init__(self) -> None:
        self.count = 0

    def evictions_seen(self) -> int:
        return self.count


def one_written_key(soak: Any) -> tuple[Evictions, Any, bytes, bytes]:
    """A ledger of one key, its first value written and acknowledged: (evictions, ledger, key, value)."""
    seen = Evictions()
    ledger = soak.Ledger(seen, "w0", 1, 1)
    key = ledger.keys[0]
    value = ledger.begin_set(key, ledger_rng)
    ledger.ack(key)
    return seen, ledger, key, value


def judged(soak: Any, ledger: Any, key: bytes, value: Any, evictions: Any) -> Any:
    verdicts = soak.Verdicts()
    ledger.judge(key, value, evictions, verdicts)
    return verdicts


def test_the_judge_tells_a_loss_from_an_eviction_and_from_a_change_never_acknowledged(soak) -> None:
    _, ledger, key, first = one_written_key(soak)
    rng = ledger_rng
    second = ledger.begin_set(key, rng)
    ledger.ack(key)
    assert judged(soak, ledger, key, second, 0).ok == 1
    assert "an older value" in judged(soak, ledger, key, first, 0).losses[0]
    assert "no client wrote" in judged(soak, ledger, key, second[:-1] + b"!", 0).losses[0]
    assert "never sent" in judged(soak, ledger, key, soak.make_value(key, 9, 200), 0).losses[0]
    assert "missing, nothing evicted" in judged(soak, ledger, key, None, 0).losses[0]
    assert judged(soak, ledger, key, None, 1).evicted == 1  # the server evicted something since the ack
    assert judged(soak, ledger, key, None, None).missed == 1  # a read while serving does not judge a miss

    cut_off = ledger.begin_set(key, rng)  # sent, then the server was killed: either state will do
    assert judged(soak, ledger, key, cut_off, 0).unconfirmed == 1
    assert judged(soak, ledger, key, second, 0).ok == 1

    ledger.begin_delete(key)
    ledger.ack(key)
    assert judged(soak, ledger, key, None, 0).absent == 1
    assert "deleted since" in judged(soak, ledger, key, second, 0).losses[0]


def test_after_a_check_the_server_s_state_is_what_later_checks_hold_it_to(soak) -> None:
    seen, ledger, key, old = one_written_key(soak)
    seen.count = 5
    ledger.settle(key, None)  # evicted
    assert judged(soak, ledger, key, None, 5).absent == 1
    assert "deleted since" in judged(soak, ledger, key, old, 5).losses[0]  # an evicted item never comes back


def test_a_counter_going_back_is_a_loss(soak) -> None:
    ledger = soak.Ledger(Evictions(), "w0", 0, 1)
    counter = ledger.counters[0]
    ledger.begin_set(counter, ledger_rng)
    ledger.ack(counter)
    ledger.begin_incr(counter)
    ledger.ack(counter, version=2)
    assert judged(soak, ledger, counter, b"2", 0).ok == 1
    assert "an older value" in judged(soak, ledger, counter, b"1", 0).losses[0]
    ledger.begin_incr(counter)  # cut off: 3 may or may not be there
    assert judged(soak, ledger, counter, b"3", 0).unconfirmed == 1


def summary_figure(output: str, pattern: str) -> int:
    match = re.search(pattern, output, re.M)
    assert match is not None, f"{pattern!r} not in:\n{output}"
    return int(match.group(1).replace(",", ""))


@pytest.mark.slow
def test_a_short_soak_kills_restarts_compacts_fails_and_loses_nothing(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "0.15", "--restart-every", "2"]
    command += ["--compact-every", "1", "--fault-every", "1", "--keys", "200", "--dir", str(tmp_path)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHONPATH=str(ROOT))
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert summary_figure(output, r"^losses +(\d+)") == 0
    assert summary_figure(output, r"^restarts +(\d+)") >= 3
    assert summary_figure(output, r"\(kills (\d+);") >= 2
    assert summary_figure(output, r"^compactions +(\d+) done") >= 1
    assert summary_figure(output, r"^evictions +([\d,]+)") > 0
    assert summary_figure(output, r"^faults injected +(\d+)") >= 3
    assert summary_figure(output, r"data_file_errors seen (\d+)") >= 1
    assert summary_figure(output, r"keys: ([\d,]+) present as acknowledged") > 0
    for kind in ("pymemcache set_many", "text pipelined set", "meta quiet set", "meta set", "binary quiet set"):
        assert summary_figure(output, rf"^  {kind} +([\d,]+)$") > 0, kind
    assert (tmp_path / "data" / "data.txt").exists() and (tmp_path / "server.log").exists()
