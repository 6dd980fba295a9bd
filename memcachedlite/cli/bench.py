"""``mcl bench``: load one server with :mod:`memcachedlite.loadgen` and report
its throughput, latency percentiles and errors (progress line, text or JSON
report), registered on the :func:`memcachedlite.cli.main` group.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .common import SHOWN, ServerReplyError, Unreachable, current_config, main


def _duration_text(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} us"


class BenchProgress:
    """One line on a terminal's stderr, rewritten each second; nothing elsewhere."""

    def __init__(self, warmup: float, duration: float) -> None:
        self.warmup = warmup
        self.total = warmup + duration
        self.last = (0.0, 0)
        self.shown = False
        self.enabled = sys.stderr.isatty()

    def __call__(self, elapsed: float, ops: int, errors: int) -> None:
        if not self.enabled:
            return
        then, before = self.last
        warm = elapsed > self.warmup + 0.05
        rate = (ops - before) / (elapsed - then) if elapsed > then and warm else 0.0
        self.last = (elapsed, ops)
        phase = f"{ops:,} ops  {rate:,.0f} ops/s" if warm else "warming up"
        click.echo(f"\r  {elapsed:4.0f}/{self.total:.0f} s  {phase}  {errors} errors\x1b[K", nl=False, err=True)
        self.shown = True

    def done(self) -> None:
        if self.shown:
            click.echo("\r\x1b[K", nl=False, err=True)


@main.command()
@click.option(
    "--connections", "-c", default=4, type=click.IntRange(1, 10000), help="Connections kept busy at once.", **SHOWN
)
@click.option(
    "--duration", "-d", default=10.0, type=click.FloatRange(0.1), help="Seconds measured, after the warm-up.", **SHOWN
)
@click.option(
    "--warmup", default=1.0, type=click.FloatRange(0), help="Seconds of load before the measuring starts.", **SHOWN
)
@click.option(
    "--get-ratio",
    default=0.9,
    type=click.FloatRange(0, 1),
    help="Share of commands that are gets; the rest are sets.",
    **SHOWN,
)
@click.option("--value-size", default=100, type=click.IntRange(1, 1024 * 1024), help="Bytes per value.", **SHOWN)
@click.option(
    "--keys", default=10000, type=click.IntRange(1), help="Size of the key space, picked from uniformly.", **SHOWN
)
@click.option(
    "--pipeline", default=1, type=click.IntRange(1, 10000), help="Commands per send (1: request/response).", **SHOWN
)
@click.option("--multiget", default=1, type=click.IntRange(1, 10000), help="Keys per get.", **SHOWN)
@click.option(
    "--processes",
    default=None,
    type=click.IntRange(0),
    help="Load processes  [default: one per core, at most one per connection; 0: none, run in mcl itself]",
)
@click.option("--prefill/--no-prefill", default=True, help="Store every key before the run, so gets hit.", **SHOWN)
@click.option("--key-prefix", default="mclbench:", help="Keys are KEY_PREFIX<value size>:<n>.", **SHOWN)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON, for scripts.")
def bench(
    connections: int,
    duration: float,
    warmup: float,
    get_ratio: float,
    value_size: int,
    keys: int,
    pipeline: int,
    multiget: int,
    processes: int | None,
    prefill: bool,
    key_prefix: str,
    as_json: bool,
) -> None:
    """Load a server and report throughput, latency percentiles and errors.

    Works against any memcached-protocol server (memcached too), so servers
    can be compared. It sets and gets keys named KEY_PREFIX<value size>:<n>
    (do not point it at data you care about). Every reply is checked: a wrong
    or missing one is counted as an error, and any error makes the exit
    code 4. A request's latency runs from sending its batch to reading its
    reply.
    """
    from ..loadgen import runner as loadgen

    config = current_config()
    if len(config.servers) != 1:
        raise click.UsageError("bench drives one server at a time; give a single --server")
    host, port = config.servers[0]
    try:
        load = loadgen.LoadConfig(
            host=host,
            port=port,
            connections=connections,
            duration=duration,
            warmup=warmup,
            get_ratio=get_ratio,
            value_size=value_size,
            keys=keys,
            pipeline=pipeline,
            multiget=multiget,
            processes=processes,
            prefill=prefill,
            key_prefix=key_prefix,
            reply_timeout=config.timeout,
            connect_timeout=config.timeout,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    progress = BenchProgress(warmup, duration)
    try:
        result = loadgen.run(load, progress=progress)
    except loadgen.ConnectFailed as exc:
        raise Unreachable(str(exc)) from None
    except loadgen.LoadError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        progress.done()
    if as_json:
        click.echo(json.dumps(dict(server=config.describe(), **result.to_dict()), indent=2))
    else:
        _bench_report(config.describe(), result)
    if result.errors:
        raise ServerReplyError(f"{result.errors} requests got a wrong reply or none (see above)")


def _bench_report(server: str, result: Any) -> None:
    cfg = result.config
    workers = f"{result.processes} processes" if result.processes else "in this process"
    click.echo(
        f"{server}: {cfg.connections} connections ({workers}), {cfg.duration:g} s after {cfg.warmup:g} s warm-up; "
        f"{cfg.get_ratio:.0%} gets, {cfg.value_size}-byte values, {cfg.keys:,} keys, "
        f"pipeline {cfg.pipeline}, {cfg.multiget} key{'s' if cfg.multiget > 1 else ''} per get"
    )
    if result.prefill_items:
        click.echo(f"prefill      {result.prefill_items:,} items in {result.prefill_seconds:.2f} s")
    rate = result.elapsed or 1.0
    click.echo(
        f"throughput   {result.ops_per_sec:,.0f} ops/s  ({result.ops:,} in {result.elapsed:.2f} s; "
        f"gets {result.gets / rate:,.0f}/s, sets {result.sets / rate:,.0f}/s)"
    )
    if result.keys:
        click.echo(f"keys read    {result.keys_per_sec:,.0f} keys/s, {result.hits / result.keys:.1%} hits")
    lat = result.latency_us()
    click.echo(
        "latency      "
        + "  ".join(f"{name} {_duration_text(lat[name])}" for name in ("p50", "p90", "p99", "p99.9", "max"))
    )
    click.echo(f"errors       {result.errors:,}")
    for kind, count in sorted(result.error_kinds.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {count:,} x {kind}")
    for sample in result.error_samples:
        click.echo(f"  e.g. {sample}")
    click.echo(
        f"client CPU   {result.client_cpu_percent:.0f}% (100 per busy core: near"
        f" {max(1, result.processes) * 100}% the client may be the limit)"
    )
