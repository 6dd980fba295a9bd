#!/usr/bin/env python3
"""Run the coverage-guided fuzz targets (atheris, on libFuzzer).

    python fuzz/run.py --target text_session --seconds 600
    python fuzz/run.py --target all --runs 2000        # a fixed number of inputs, as CI does
    python fuzz/run.py --target datafile crash-1234    # run saved inputs once (reproduce)
    python fuzz/run.py --target dump -- -jobs=2        # anything after -- goes to libFuzzer

Targets: text_session, binary_session, datafile, dump (see each module's
docstring for its input and properties). Each target starts from its seeds
(``fuzz/seeds/<target>/``, built by ``fuzz/make_seeds.py`` from the tests'
own inputs) and keeps what it finds in ``fuzz/corpus/<target>/``; a crash,
hang or property violation stops it and leaves the input in
``fuzz/artifacts/<target>/``. Neither of those two folders is committed.

Each target runs in a child process (libFuzzer ends the process when it is
done), with a scratch folder for its data files that is removed afterwards.
The exit status is 0 when every target finished without a finding.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
TARGETS = ("text_session", "binary_session", "datafile", "dump")
#: A run that does not return at all is reported by libFuzzer after this many
#: seconds; the one-second limit itself is checked by ``common.Timed``.
HANG_SECONDS = 10


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    passthrough: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, passthrough = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, choices=(*TARGETS, "all"))
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=int, help="run each target for this long")
    budget.add_argument("--runs", type=int, help="run each target on this many inputs (fixed random seed)")
    parser.add_argument("--seed", type=int, help="libFuzzer's random seed (default: 1 with --runs, else random)")
    parser.add_argument("inputs", nargs="*", help="files to run once, or corpus folders instead of the default ones")
    return parser.parse_args(argv), passthrough


def libfuzzer_args(target: str, args: argparse.Namespace, passthrough: list[str]) -> list[str]:
    out = [f"-timeout={HANG_SECONDS}", "-print_final_stats=1"]
    artifacts = os.path.join(FUZZ, "artifacts", target)
    os.makedirs(artifacts, exist_ok=True)
    out.append(f"-artifact_prefix={artifacts}{os.sep}")
    if args.seconds is not None:
        out.append(f"-max_total_time={args.seconds}")
    if args.runs is not None:
        out.append(f"-runs={args.runs}")
    seed = args.seed if args.seed is not None else (1 if args.runs is not None else None)
    if seed is not None:
        out.append(f"-seed={seed}")
    out.extend(passthrough)
    if args.inputs:
        out.extend(args.inputs)
    else:
        corpus = os.path.join(FUZZ, "corpus", target)
        os.makedirs(corpus, exist_ok=True)
        out.append(corpus)  # new inputs go to the first folder
        seeds = os.path.join(FUZZ, "seeds", target)
        if os.path.isdir(seeds):
            out.append(seeds)
    return out


def run_target(target: str, args: argparse.Namespace, passthrough: list[str]) -> bool:
    """Fuzz one target in a child process; print what it did; True if nothing was found."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    scratch = tempfile.mkdtemp(prefix=f"memcachedlite-fuzz-{target}-", dir=base)
    env = dict(os.environ, MCL_FUZZ_WORKDIR=scratch)
    flags = libfuzzer_args(target, args, passthrough)
    command = [sys.executable, os.path.abspath(__file__), f"--child={target}", *flags]
    artifacts = os.path.join(FUZZ, "artifacts", target)
    before = set(os.listdir(artifacts))
    started = time.monotonic()
    runs = None
    found = []
    try:
        child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, cwd=ROOT)
        assert child.stderr is not None
        for raw in child.stderr:
            line = raw.decode("utf-8", "replace")
            sys.stderr.write(line)
            if m := re.match(r"stat::number_of_executed_units: (\d+)", line):
                runs = int(m.group(1))
            elif m := re.match(r"#(\d+)", line):  # progress lines, all that -fork=1 prints
                runs = max(runs or 0, int(m.group(1)))
            elif m := re.search(r"Test unit written to (\S+)", line):
                found.append(m.group(1))
        status = child.wait()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # with -fork=1 the findings are told in the jobs' own logs: look at the folder too
    found += sorted(os.path.join(artifacts, name) for name in set(os.listdir(artifacts)) - before)
    found = sorted(set(found))
    took = time.monotonic() - started
    ok = status == 0 and not found
    outcome = "no finding" if ok else f"FOUND (exit {status}): {', '.join(found) or 'see above'}"
    print(f"{target}: {runs if runs is not None else '?'} inputs in {took:.0f} s, {outcome}", flush=True)
    return ok


def child(target: str, argv: list[str]) -> None:
    """Inside the child: instrument the package, then hand over to libFuzzer."""
    import atheris

    sys.path[:0] = [FUZZ, ROOT]  # this tree's memcachedlite, not an installed one
    with atheris.instrument_imports(include=["memcachedlite"]):
        module = importlib.import_module(target)
    from common import Timed

    if not any(arg.startswith("-max_len=") for arg in argv):
        argv.append(f"-max_len={module.MAX_LEN}")
    # libFuzzer runs argv[0] again for -merge and -fork (so this file is
    # executable), and passes on the flags starting with "--" untouched.
    atheris.Setup([os.path.abspath(__file__), f"--child={target}", *argv], Timed(module.one_input))
    atheris.Fuzz()


def main(argv: list[str]) -> int:
    if argv and argv[0].startswith("--child="):
        child(argv[0].partition("=")[2], argv[1:])
        return 0
    args, passthrough = parse_args(argv)
    targets = TARGETS if args.target == "all" else (args.target,)
    results = [run_target(target, args, passthrough) for target in targets]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
