"""The ``mcl`` command group: its options, the client plumbing every command
shares (:mod:`.cli_common`) and the small client verbs (``mcl get``, ``mcl set``, ...). Thin by design: parse
options, call the library or pymemcache, turn failures into one-line messages
and exit codes. The server side (:mod:`.cli_serve`), the benchmark
(:mod:`.cli_bench`) and dump/load (:mod:`.cli_bulk`) register their commands on
the same group, imported at the end of this module.

Exit codes: 0 success, 1 the key was missing or not stored, 2 bad usage,
3 the server could not be reached, 4 the server answered with an error,
5 the server could not start, 141 standard output closed early (quietly).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Optional

import click

from ..storage.numbers import U64
from .common import (
    TOO_LARGE_HINT,
    NotFound,
    ServerReplyError,
    binary_stream,
    current_config,
    key_for,
    main,
    talking,
    write_fully,
)
from .transfer import exptime


@main.command()
@click.argument("key")
def get(key: str) -> None:
    """Print the value of KEY (raw bytes); exit 1 if it is missing."""
    config = current_config()
    with talking(config) as client:
        value = client.get(key_for(key))
    if value is None:
        raise NotFound(f"{key}: not found")
    out = binary_stream("stdout")
    write_fully(out, value)
    if out.isatty() and not value.endswith(b"\n"):
        out.write(b"\n")  # keep the prompt off the value; pipes get the exact bytes
    out.flush()


def _store(verb: str, key: str, value: str, ttl: int, flags: int) -> None:
    from pymemcache.exceptions import MemcacheServerError

    data = binary_stream("stdin").read() if value == "-" else os.fsencode(value)
    with talking(current_config()) as client:
        try:
            ok = getattr(client, verb)(key_for(key), data, expire=exptime(ttl), noreply=False, flags=flags)
        except MemcacheServerError as exc:
            if "object too large" not in str(exc):
                raise
            raise ServerReplyError(
                f"server error: object too large for cache; {_too_large(client, len(data))}"
            ) from None
    if not ok:
        raise NotFound(f"{key}: not stored")
    click.echo("STORED")


def _too_large(client: Any, size: int) -> str:
    """What a refused value's size was against the server's limit, and what raises the limit."""
    try:
        limit = int(client.stats("settings")[b"item_size_max"])
    except Exception:  # an old server without it, or the connection went: say what is known
        return f"the value is {size} bytes; {TOO_LARGE_HINT}"
    return f"the value is {size} bytes, the server takes at most {limit}; {TOO_LARGE_HINT}"


_ttl = click.option(
    "--ttl",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Seconds from now until the item expires, however many (0: never).",
)
_flags = click.option(
    "--flags",
    default=0,
    show_default=True,
    type=click.IntRange(0, 2**32 - 1),
    help="32-bit client flags kept with the value.",
)


@main.command("set")
@click.argument("key")
@click.argument("value")
@_ttl
@_flags
def set_(key: str, value: str, ttl: int, flags: int) -> None:
    """Store VALUE under KEY ('-' reads the value from standard input)."""
    _store("set", key, value, ttl, flags)


@main.command()
@click.argument("key")
@click.argument("value")
@_ttl
@_flags
def add(key: str, value: str, ttl: int, flags: int) -> None:
    """Store VALUE under KEY only if KEY is not there yet."""
    _store("add", key, value, ttl, flags)


@main.command()
@click.argument("key")
def delete(key: str) -> None:
    """Delete KEY; exit 1 if it was not there."""
    with talking(current_config()) as client:
        deleted = client.delete(key_for(key), noreply=False)
    if not deleted:
        raise NotFound(f"{key}: not found")
    click.echo("DELETED")


def _arith(verb: str, key: str, text: str) -> None:
    delta = _delta(verb, key, text)
    with talking(current_config()) as client:
        value = getattr(client, verb)(key_for(key), delta, noreply=False)
    if value is None:
        raise NotFound(f"{key}: not found")
    click.echo(value)


def _delta(verb: str, key: str, text: str) -> int:
    """DELTA as memcached takes it: a whole number from 0 to 2**64 - 1. A
    negative one is the other verb's job, and the error says which."""
    if not re.fullmatch(r"-?[0-9]+", text):
        raise click.BadParameter(f"{text!r} is not a whole number", param_hint="DELTA")
    delta = int(text)
    if delta < 0:
        other, does = ("decr", "subtract") if verb == "incr" else ("incr", "add")
        raise click.UsageError(f"DELTA cannot be negative; to {does} {-delta}, use: mcl {other} {key} {-delta}")
    if delta >= U64:
        raise click.BadParameter(f"{delta} is past memcached's 64-bit counters (at most {U64 - 1})", param_hint="DELTA")
    return delta


#: DELTA is read by :func:`_delta`, so that a negative one ("-1") reaches it
#: instead of being taken for an unknown option.
_arith_command = main.command(context_settings={"ignore_unknown_options": True})


@_arith_command
@click.argument("key")
@click.argument("delta", default="1")
def incr(key: str, delta: str) -> None:
    """Add DELTA (default 1) to the number stored under KEY; decr subtracts."""
    _arith("incr", key, delta)


@_arith_command
@click.argument("key")
@click.argument("delta", default="1")
def decr(key: str, delta: str) -> None:
    """Subtract DELTA (default 1) from the number under KEY, stopping at 0."""
    _arith("decr", key, delta)


@main.command()
@click.argument("key")
@click.argument("ttl", type=click.IntRange(0))
def touch(key: str, ttl: int) -> None:
    """Give KEY a new time to live of TTL seconds (0: never expires)."""
    with talking(current_config()) as client:
        touched = client.touch(key_for(key), exptime(ttl), noreply=False)
    if not touched:
        raise NotFound(f"{key}: not found")
    click.echo("TOUCHED")


@main.command("flush-all")
@click.option(
    "--delay", default=0, show_default=True, type=click.IntRange(0), help="Seconds before the items are invalidated."
)
def flush_all(delay: int) -> None:
    """Invalidate every item (on every server given)."""
    with talking(current_config()) as client:
        client.flush_all(delay=exptime(delay), noreply=False)
    click.echo("OK")


@main.command()
@click.option(
    "--wait",
    default=600.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds to wait for it to finish (0: just start it).",
)
def compact(wait: float) -> None:
    """Compact the data file of the server(s) now, and wait until it is done."""
    config = current_config()
    for server in config.servers:
        one = config.only(server)
        done = None  # said after the connection: a closed standard output is not the server's fault
        with talking(one) as client:
            before = client.stats()
            reply = client.raw_command("compact", b"\r\n")
            if reply.strip() != b"OK":
                raise ServerReplyError(reply.decode("utf-8", "replace").strip())
            deadline = time.monotonic() + wait
            while wait:
                now = client.stats()
                if int(now[b"compaction_failures"]) > int(before[b"compaction_failures"]):
                    raise ServerReplyError(f"{one.describe()}: the compaction failed; see the server's log")
                if int(now[b"compactions"]) > int(before[b"compactions"]):
                    done = f"{one.describe()}: data file compacted to {now[b'data_file_bytes']} bytes"
                    break
                if time.monotonic() > deadline:
                    raise ServerReplyError(f"{one.describe()}: still compacting after {wait:g} s")
                time.sleep(0.05)
        if done:
            click.echo(done)
    click.echo("OK")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (server -> {name: value}) for scripts.")
@click.argument("group", required=False, type=click.Choice(["settings"]))
def stats(as_json: bool, group: Optional[str]) -> None:
    """Show the server's statistics."""
    config = current_config()
    table = {}
    for server in config.servers:
        one = config.only(server)
        with talking(one) as client:
            raw = client.stats(*([group] if group else []))
        table[one.describe()] = {_text(k): _text(v) for k, v in raw.items()}
    if as_json:
        click.echo(json.dumps(table, indent=2, sort_keys=False))
        return
    for server, values in table.items():
        if len(table) > 1:
            click.echo(f"[{server}]")
        width = max((len(k) for k in values), default=0)
        for name, value in values.items():
            click.echo(f"{name.ljust(width)}  {value}")


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


# The server side, the benchmark and dump/load live in modules of their own
# and register their commands on ``main`` when imported; importing them here
# gives ``mcl`` (memcachedlite.cli:main) every command.
