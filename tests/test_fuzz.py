"""The fuzz targets (fuzz/, atheris): each runs for a fixed number of inputs
from its seeds, with a fixed random seed, and must finish without a
finding. This checks the harness and the properties on every change; the
long runs are ``python fuzz/run.py --target NAME --seconds N`` (see
docs/fuzzing.md). atheris is a test dependency: without it these fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: Inputs per target: a few seconds each on a small machine (the seeds run first).
RUNS = {"text_session": 3000, "binary_session": 3000, "datafile": 1500, "dump": 2000}


def test_atheris_is_installed() -> None:
    import atheris  # noqa: F401  (the test extra installs it; a missing one must fail, not skip)


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(RUNS))
def test_target_runs_its_inputs_without_a_finding(target: str, tmp_path: Path) -> None:
    # Not under coverage: libFuzzer ends the process without the exit
    # handlers that would save its data, and the tracer would only slow it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS")}
    seeds = Path(ROOT) / "fuzz" / "seeds" / target
    assert len(list(seeds.iterdir())) > 0, f"no seeds in {seeds}: run fuzz/make_seeds.py"
    result = subprocess.run(
        [sys.executable, "fuzz/run.py", "--target", target, "--runs", str(RUNS[target]), str(tmp_path), str(seeds)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    summary = result.stdout.strip().splitlines()[-1:] or [""]
    assert result.returncode == 0 and "no finding" in summary[0], result.stdout + result.stderr[-6000:]
    assert f"{target}: {RUNS[target]} inputs" in summary[0]
