"""The built-in verbs of memcached's text protocol.

Each is registered with :func:`memcachedlite.registry.command`, the same
decorator a user's module uses; the first line of each docstring is the
verb's syntax. Replies are byte-exact with memcached's ``doc/protocol.txt``.
"""

from __future__ import annotations

import os
import resource
import ssl
import sys
import time
from typing import TYPE_CHECKING, Optional

from . import __version__
from .errors import BadCommandLine, ClientError
from .protocol import (
    DELETED,
    END,
    EXISTS,
    NOT_FOUND,
    OK,
    RESET,
    STORED,
    TOUCHED,
    U32,
    U64,
    check_key,
    check_keys,
    parse_int,
    parse_uint,
    value_line,
    value_line_lite,
)
from .registry import command

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session


def _storage_args(args: list[bytes]) -> tuple[bytes, int, int]:
    """Key, flags and exptime of a storage command.

    Accepts memcached's ``<key> <flags> <exptime> <bytes>`` and the seed's
    lite form ``<key> <bytes>`` (flags and exptime 0).
    """
    if len(args) == 2:
        return check_key(args[0]), 0, 0
    if len(args) != 4:
        raise BadCommandLine()
    return check_key(args[0]), parse_uint(args[1], U32), parse_int(args[2])


_STORAGE = dict(arities=(2, 4), data=-1, noreply=True, mutates=True)


@command("set", **_STORAGE)
def set_(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """set <key> <flags> <exptime> <bytes> [noreply]  (or: set <key> <bytes>)"""
    if len(args) == 4 and args[1] == b"0" and args[2] == b"0":  # the common case, spelled out for speed
        ctx.store.set(check_key(args[0]), data)  # type: ignore[arg-type]
        return STORED
    key, flags, exptime = _storage_args(args)
    ctx.store.set(key, data, flags, exptime)  # type: ignore[arg-type]
    return STORED


@command("add", **_STORAGE)
def add(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """add <key> <flags> <exptime> <bytes> [noreply]: store only if absent."""
    key, flags, exptime = _storage_args(args)
    return STORED if ctx.store.add(key, data, flags, exptime) else ctx.not_stored  # type: ignore[arg-type]


@command("replace", **_STORAGE)
def replace(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """replace <key> <flags> <exptime> <bytes> [noreply]: store only if present."""
    key, flags, exptime = _storage_args(args)
    return STORED if ctx.store.replace(key, data, flags, exptime) else ctx.not_stored  # type: ignore[arg-type]


@command("append", **_STORAGE)
def append(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """append <key> <flags> <exptime> <bytes> [noreply]: flags and exptime are ignored."""
    key, _, _ = _storage_args(args)
    stored = ctx.store.append(key, data, ctx.settings.max_item_size)  # type: ignore[arg-type]
    return STORED if stored else ctx.not_stored


@command("prepend", **_STORAGE)
def prepend(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """prepend <key> <flags> <exptime> <bytes> [noreply]: flags and exptime are ignored."""
    key, _, _ = _storage_args(args)
    stored = ctx.store.prepend(key, data, ctx.settings.max_item_size)  # type: ignore[arg-type]
    return STORED if stored else ctx.not_stored


@command("cas", min_args=5, max_args=5, data=3, noreply=True, mutates=True)
def cas(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]"""
    key, flags, exptime = _storage_args(args[:4])
    unique = parse_uint(args[4], U64)
    outcome = ctx.store.cas(key, data, flags, exptime, unique)  # type: ignore[arg-type]
    if outcome is None:
        return NOT_FOUND
    return STORED if outcome else EXISTS


def _values(ctx: "Session", found: list, with_cas: bool) -> bytes:
    if ctx.lite and not with_cas:
        parts = [value_line_lite(key, item.value) for key, item in found]
    elif with_cas:
        parts = [value_line(key, item.flags, item.value, item.cas) for key, item in found]
    else:
        parts = [value_line(key, item.flags, item.value) for key, item in found]
    parts.append(END)
    return b"".join(parts)


@command("get", min_args=1, long_line=True)
def get(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """get <key>*"""
    check_keys(args)
    return ctx.store.render(args, with_cas=False, lite=ctx.lite)


@command("gets", min_args=1, long_line=True)
def gets(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """gets <key>*: like get, with each item's cas unique."""
    check_keys(args)
    return ctx.store.render(args, with_cas=True)


def _exptime(token: bytes) -> int:
    try:
        return parse_int(token)
    except BadCommandLine:
        raise ClientError("invalid exptime argument") from None


def _gat(ctx: "Session", args: list[bytes], with_cas: bool) -> bytes:
    exptime = _exptime(args[0])
    keys = args[1:]
    for key in keys:
        check_key(key)
    return _values(ctx, ctx.store.gat(keys, exptime), with_cas=with_cas)


@command("gat", min_args=2, long_line=True, mutates=True)
def gat(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """gat <exptime> <key>*: get and touch."""
    return _gat(ctx, args, with_cas=False)


@command("gats", min_args=2, long_line=True, mutates=True)
def gats(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """gats <exptime> <key>*: get and touch, with cas."""
    return _gat(ctx, args, with_cas=True)


_DELETE_USAGE = "bad command line format.  Usage: delete <key> [noreply]"


@command("delete", min_args=1, max_args=2, noreply=True, mutates=True)
def delete(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """delete <key> [0] [noreply]: the old hold time is accepted only as 0."""
    if len(args) == 2 and args[1] != b"0":
        raise ClientError(_DELETE_USAGE)
    key = check_key(args[0])
    return DELETED if ctx.store.delete(key) else NOT_FOUND


def _delta(token: bytes) -> int:
    try:
        return parse_uint(token, U64)
    except BadCommandLine:
        raise ClientError("invalid numeric delta argument") from None


@command("incr", min_args=2, max_args=2, noreply=True, mutates=True)
def incr(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """incr <key> <value> [noreply]: 64-bit unsigned, wraps around."""
    key = check_key(args[0])
    value = ctx.store.incr(key, _delta(args[1]))
    return NOT_FOUND if value is None else b"%d\r\n" % value


@command("decr", min_args=2, max_args=2, noreply=True, mutates=True)
def decr(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """decr <key> <value> [noreply]: stops at 0."""
    key = check_key(args[0])
    value = ctx.store.decr(key, _delta(args[1]))
    return NOT_FOUND if value is None else b"%d\r\n" % value


@command("touch", min_args=2, max_args=2, noreply=True, mutates=True)
def touch(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """touch <key> <exptime> [noreply]"""
    key = check_key(args[0])
    exptime = _exptime(args[1])
    return TOUCHED if ctx.store.touch(key, exptime) else NOT_FOUND


@command("flush_all", min_args=0, max_args=1, noreply=True, mutates=True)
def flush_all(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """flush_all [delay] [noreply]"""
    delay = _exptime(args[0]) if args else 0
    ctx.store.flush_all(max(delay, 0))
    return OK


@command("compact", max_args=0)
def compact(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """compact: start rewriting the data file to the live items (not in memcached).

    Answers at once, as Redis's BGREWRITEAOF does; ``stats`` shows
    ``compacting`` and ``compactions``.
    """
    ctx.store.start_compaction()
    return OK


#: What ``version`` answers: the memcached protocol level implemented, then
#: this server's name and version. Clients such as libmemcached parse the
#: leading major.minor.micro numbers and refuse a major version of 0.
PROTOCOL_VERSION = f"1.6.0-memcachedlite-{__version__}"


@command("version")
def version(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """version: extra words are ignored, as memcached 1.6 ignores them."""
    return b"VERSION %s\r\n" % PROTOCOL_VERSION.encode("ascii")


@command("verbosity", min_args=1, max_args=2)
def verbosity(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> Optional[bytes]:
    """verbosity <level> [noreply]: accepted for compatibility; logging is set by -v.

    As in memcached, a lone ``noreply`` counts as the level (0) and the flag.
    """
    noreply = args[-1] == b"noreply"
    level = args[0] if not (noreply and len(args) == 1) else b"0"
    try:
        if len(args) == 2 and not noreply:
            raise BadCommandLine()
        parse_uint(level, U32)
    except BadCommandLine:
        if noreply:
            return None  # errors are silenced by noreply too
        raise
    return None if noreply else OK


@command("quit", max_args=0)
def quit_(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> None:
    """quit: close the connection, with no reply."""
    ctx.close()
    return None


def general_stats(ctx: "Session") -> list[tuple[str, object]]:
    """memcached's ``stats`` lines that apply to this server, in its order."""
    store = ctx.store.stats()
    server = ctx.server
    now = time.time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn = server.connection_stats() if server is not None else {}
    started = server.started if server is not None else now
    lines: list[tuple[str, object]] = [
        ("pid", os.getpid()),
        ("uptime", int(now - started)),
        ("time", int(now)),
        ("version", PROTOCOL_VERSION),
        ("libevent", "none"),
        ("pointer_size", 64 if sys.maxsize > 2**32 else 32),
        ("rusage_user", "%.6f" % usage.ru_utime),
        ("rusage_system", "%.6f" % usage.ru_stime),
        ("max_connections", conn.get("max_connections", 0)),
        ("curr_connections", conn.get("curr_connections", 0)),
        ("total_connections", conn.get("total_connections", 0)),
        ("rejected_connections", conn.get("rejected_connections", 0)),
        ("connection_structures", conn.get("curr_connections", 0)),
    ]
    for name in [
        "cmd_get",
        "cmd_set",
        "cmd_flush",
        "cmd_touch",
        "get_hits",
        "get_misses",
        "get_expired",
        "get_flushed",
        "delete_misses",
        "delete_hits",
        "incr_misses",
        "incr_hits",
        "decr_misses",
        "decr_hits",
        "cas_misses",
        "cas_hits",
        "cas_badval",
        "touch_hits",
        "touch_misses",
    ]:
        lines.append((name, store[name]))
    auth = getattr(server, "auth", None)
    lines += [
        ("auth_cmds", auth.auth_cmds if auth is not None else 0),
        ("auth_errors", auth.auth_errors if auth is not None else 0),
        ("bytes_read", conn.get("bytes_read", 0)),
        ("bytes_written", conn.get("bytes_written", 0)),
        ("limit_maxbytes", store["limit_maxbytes"]),
        ("accepting_conns", conn.get("accepting_conns", 1)),
        ("threads", conn.get("threads", 1)),
        ("conn_yields", 0),
        ("listen_disabled_num", 0),
        ("lru_crawler_starts", store["lru_crawler_starts"]),
        ("crawler_items_checked", store["crawler_items_checked"]),
        ("crawler_reclaimed", store["crawler_reclaimed"]),
        ("direct_reclaims", 0),
        ("moves_to_cold", 0),
        ("moves_to_warm", 0),
        ("moves_within_lru", 0),
        ("total_malloced", store["bytes"]),
        ("compactions", store["compactions"]),
        ("compaction_failures", store["compaction_failures"]),
        ("compacting", store["compacting"]),
        ("data_file_bytes", store["data_file_bytes"]),
        ("bytes", store["bytes"]),
        ("curr_items", store["curr_items"]),
        ("total_items", store["total_items"]),
        ("expired_unfetched", store["expired_unfetched"]),
        ("evicted_unfetched", 0),
        ("evictions", store["evictions"]),
        ("reclaimed", store["reclaimed"]),
        ("store_too_large", store["store_too_large"]),
        ("store_no_memory", store["store_no_memory"]),
    ]
    return lines


def settings_stats(ctx: "Session") -> list[tuple[str, object]]:
    """``stats settings``: the knobs this server runs with."""
    store = ctx.store
    server = ctx.server
    conn = server.connection_stats() if server is not None else {}
    log_ = store.log
    auth = getattr(server, "auth", None)
    tls = getattr(server, "ssl_context", None)
    return [
        ("maxbytes", store.memory_limit),
        ("maxconns", conn.get("max_connections", 0)),
        ("tcpport", conn.get("port", 0)),
        ("udpport", 0),
        ("evictions", "on" if store.evict else "off"),
        ("lru_crawler", "yes"),
        ("lru_crawler_sleep", 100000),
        ("lru_crawler_tocrawl", 5000),
        ("lru_maintainer_thread", "no"),
        ("hot_lru_pct", 0),
        ("warm_lru_pct", 0),
        ("hot_max_factor", 0),
        ("warm_max_factor", 0),
        ("idle_timeout", int(conn.get("idle_timeout", 0))),
        ("item_size_max", ctx.settings.max_item_size),
        ("cas_enabled", "yes"),
        ("dialect", ctx.settings.dialect),
        ("data_file", log_.path if log_ is not None else ""),
        ("fsync", log_.policy if log_ is not None else "none"),
        # memcached's names; auth_enabled_ascii is the auth file's path or "no"
        ("auth_enabled_sasl", "yes" if auth is not None else "no"),  # binary connections use SASL PLAIN
        ("auth_enabled_ascii", auth.path if auth is not None else "no"),
        ("binding_protocol", getattr(server, "protocol", "auto").replace("auto", "auto-negotiate")),  # memcached's -B
        ("ssl_enabled", "yes" if tls is not None else "no"),
        ("ssl_verify_mode", 2 if tls is not None and tls.verify_mode == ssl.CERT_REQUIRED else 0),
    ]


def stats_lines(ctx: "Session", group: Optional[bytes] = None) -> list[tuple[str, object]]:
    """The ``(name, value)`` pairs of ``stats [group]``, for any protocol that
    reports them (the text ``stats`` and the binary STAT opcode share this).

    Raises :class:`BadCommandLine` for a group this server does not know.
    ``reset`` is not a group: see :func:`reset_stats`.
    """
    if group is None:
        return general_stats(ctx)
    if group == b"settings":
        return settings_stats(ctx)
    if group in (b"items", b"slabs"):
        # No slab classes here: memory is Python's. A valid, empty answer keeps
        # tools that ask for these (exporters, memcstat) working.
        return [("active_slabs", 0), ("total_malloced", ctx.store.stats()["bytes"])] if group == b"slabs" else []
    raise BadCommandLine()


def reset_stats(ctx: "Session") -> None:
    """``stats reset``: zero the counters of the store and of the server."""
    ctx.store.reset_stats()
    if ctx.server is not None:
        ctx.server.reset_stats()


@command("stats", max_args=1)
def stats(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """stats [settings|items|slabs|reset]"""
    if args and args[0] == b"reset":
        reset_stats(ctx)
        return RESET
    lines = stats_lines(ctx, args[0] if args else None)
    body = b"".join(b"STAT %s %s\r\n" % (name.encode(), str(value).encode()) for name, value in lines)
    return body + END
