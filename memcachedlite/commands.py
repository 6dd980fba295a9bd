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

from . import __version__, slabs
from .errors import BadCommandLine, ClientError, ProtocolError, UnknownCommand
from .protocol import (
    DELETED,
    END,
    ERROR,
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
    parse_exptime,
    parse_uint,
    value_line,
    value_line_lite,
)
from .registry import command, default_registry
from .store import BINARY_KEY, Item

if TYPE_CHECKING:  # pragma: no cover
    from .detail import PrefixStats
    from .session import Session
    from .store import Store


def _storage_args(args: list[bytes], prefixes: Optional[PrefixStats] = None) -> tuple[bytes, int, int]:
    """Key, flags and exptime of a storage command.

    Accepts memcached's ``<key> <flags> <exptime> <bytes>`` and the seed's
    lite form ``<key> <bytes>`` (flags and exptime 0). Once the line has
    parsed, counts a set for ``stats detail`` when ``prefixes`` (the store's)
    counts, as memcached does.
    """
    if len(args) == 2:
        parsed = check_key(args[0]), 0, 0
    elif len(args) != 4:
        raise BadCommandLine()
    else:
        parsed = check_key(args[0]), parse_uint(args[1], U32), parse_exptime(args[2])
    if prefixes is not None and prefixes.enabled:
        prefixes.record_set(parsed[0])
    return parsed


_STORAGE = dict(arities=(2, 4), data=-1, noreply=True, mutates=True)


@command("set", **_STORAGE)
def set_(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """set <key> <flags> <exptime> <bytes> [noreply]  (or: set <key> <bytes>)"""
    store = ctx.store
    if len(args) == 4 and args[1] == b"0" and args[2] == b"0" and not store.prefixes.enabled:
        store.set(check_key(args[0]), data)  # type: ignore[arg-type]  # the common case, spelled out for speed
        return STORED
    key, flags, exptime = _storage_args(args, store.prefixes)
    store.set(key, data, flags, exptime)  # type: ignore[arg-type]
    return STORED


#: One ``set`` command line with memcached's four arguments: a key of
#: printable bytes (the rule check_key applies), decimal flags and exptime.
SET_LINE = rb"set ([!-~\x80-\xff]{1,250}) (\d{1,20}) (-?\d{1,20}) (?P<length>\d{1,10})(?P<noreply> noreply)?\r\n"


def set_batch(ctx: "Session", requests: list) -> list[Optional[bytes]]:
    """The batch form of ``set``: pipelined sets stored under one lock.

    Each request is parsed as :func:`set_` parses it and stored as
    :meth:`Store.set` stores it; one that :func:`set_` would refuse gets
    the same error line.
    """
    entries = []
    stored: list[int] = []  # which request each entry came from
    replies: list[Optional[bytes]] = [STORED] * len(requests)
    prefixes = ctx.store.prefixes
    for i, (found, data) in enumerate(requests):
        key, flags, exptime, length = found.groups()[:4]
        if prefixes.enabled:
            prefixes.record_set(key)
        if flags == b"0" and exptime == b"0":
            entries.append((key, data, 0, 0))
        else:
            try:
                _, number, when = _storage_args([key, flags, exptime, length])
            except ProtocolError as exc:
                replies[i] = exc.to_bytes()
                continue
            entries.append((key, data, number, when))
        stored.append(i)
    for i, error in zip(stored, ctx.store.set_many(entries), strict=True):
        if error is not None:
            replies[i] = error.to_bytes()
    return replies


default_registry.add_batch("set", set_batch, SET_LINE)


@command("add", **_STORAGE)
def add(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """add <key> <flags> <exptime> <bytes> [noreply]: store only if absent."""
    key, flags, exptime = _storage_args(args, ctx.store.prefixes)
    return STORED if ctx.store.add(key, data, flags, exptime) else ctx.not_stored  # type: ignore[arg-type]


@command("replace", **_STORAGE)
def replace(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """replace <key> <flags> <exptime> <bytes> [noreply]: store only if present."""
    key, flags, exptime = _storage_args(args, ctx.store.prefixes)
    return STORED if ctx.store.replace(key, data, flags, exptime) else ctx.not_stored  # type: ignore[arg-type]


@command("append", **_STORAGE)
def append(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """append <key> <flags> <exptime> <bytes> [noreply]: flags and exptime are ignored."""
    key, _, _ = _storage_args(args, ctx.store.prefixes)
    stored = ctx.store.append(key, data, ctx.settings.max_item_size)  # type: ignore[arg-type]
    return STORED if stored else ctx.not_stored


@command("prepend", **_STORAGE)
def prepend(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """prepend <key> <flags> <exptime> <bytes> [noreply]: flags and exptime are ignored."""
    key, _, _ = _storage_args(args, ctx.store.prefixes)
    stored = ctx.store.prepend(key, data, ctx.settings.max_item_size)  # type: ignore[arg-type]
    return STORED if stored else ctx.not_stored


@command("cas", min_args=5, max_args=5, data=3, noreply=True, mutates=True)
def cas(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]"""
    key, flags, exptime = _storage_args(args[:4])
    unique = parse_uint(args[4], U64)
    if ctx.store.prefixes.enabled:
        ctx.store.prefixes.record_set(key)
    if not ctx.store.cas_enabled:
        unique = -1  # as memcached's -C: no cas value matches, every item's is 0
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


def _record_gets(store: "Store", keys: list[bytes]) -> None:
    """Count a retrieval of ``keys`` for ``stats detail`` (a hit is a key now live)."""
    store.prefixes.record_gets(keys, {key for key in keys if store.peek(key) is not None})


@command("get", min_args=1, long_line=True)
def get(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """get <key>*"""
    check_keys(args)
    store = ctx.store
    if store.prefixes.enabled:
        _record_gets(store, args)
    return store.render(args, with_cas=False, lite=ctx.lite)


@command("gets", min_args=1, long_line=True)
def gets(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """gets <key>*: like get, with each item's cas unique."""
    check_keys(args)
    store = ctx.store
    if store.prefixes.enabled:
        _record_gets(store, args)
    return store.render(args, with_cas=True)


def _exptime(token: bytes) -> int:
    try:
        return parse_exptime(token)
    except BadCommandLine:
        raise ClientError("invalid exptime argument") from None


def _gat(ctx: "Session", args: list[bytes], with_cas: bool) -> bytes:
    exptime = _exptime(args[0])
    keys = args[1:]
    for key in keys:
        check_key(key)
    found = ctx.store.gat(keys, exptime)
    if ctx.store.prefixes.enabled:
        ctx.store.prefixes.record_gets(keys, {key for key, _ in found})
    return _values(ctx, found, with_cas=with_cas)


@command("gat", min_args=1, long_line=True, mutates=True)
def gat(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """gat <exptime> <key>*: get and touch."""
    return _gat(ctx, args, with_cas=False)


@command("gats", min_args=1, long_line=True, mutates=True)
def gats(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """gats <exptime> <key>*: get and touch, with cas."""
    return _gat(ctx, args, with_cas=True)


_DELETE_USAGE = "bad command line format.  Usage: delete <key> [noreply]"


@command("delete", min_args=1, max_args=3, mutates=True)
def delete(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> Optional[bytes]:
    """delete <key> [0] [noreply]: the old hold time is accepted only as 0.

    noreply is read here, as memcached reads it: a malformed line whose last
    token is ``noreply`` gets no reply, not even its error.
    """
    noreply = len(args) > 1 and args[-1] == b"noreply"
    if len(args) > 1:
        hold_is_zero = args[1] == b"0"
        if not ((len(args) == 2 and (hold_is_zero or noreply)) or (len(args) == 3 and hold_is_zero and noreply)):
            if noreply:
                return None
            raise ClientError(_DELETE_USAGE)
    try:
        key = check_key(args[0])
    except BadCommandLine:
        if noreply:
            return None
        raise
    if ctx.store.prefixes.enabled:
        ctx.store.prefixes.record_delete(key)
    reply = DELETED if ctx.store.delete(key) else NOT_FOUND
    return None if noreply else reply


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
    """flush_all [delay] [noreply]; refused under --disable-flush-all (memcached's -F)."""
    if not ctx.settings.flush_enabled:
        ctx.store.count("cmd_flush")  # memcached counts the refused ones too
        raise ClientError("flush_all not allowed")
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


@command("quit")
def quit_(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> None:
    """quit: close the connection, with no reply."""
    ctx.close()
    return None


#: memcached's general ``stats`` keys for things this server does not have
#: (slab rebalancing, its log watchers, response objects...), with the value
#: memcached shows when they are idle.
_IDLE = 0


def general_stats(ctx: "Session") -> list[tuple[str, object]]:
    """memcached 1.6.18's ``stats`` lines, in its order, then this server's own.

    Counters of machinery memcached has and this server lacks show memcached's
    idle value (0; 16 and 512 KiB for the hash table it starts with), so tools
    that read every key find them all.
    """
    store = ctx.store.stats()
    server = ctx.server
    now = time.time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn = server.connection_stats() if server is not None else {}
    started = server.started if server is not None else now
    auth = getattr(server, "auth", None)
    curr = conn.get("curr_connections", 0)
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
        ("curr_connections", curr),
        ("total_connections", conn.get("total_connections", 0)),
        ("rejected_connections", conn.get("rejected_connections", 0)),
        ("connection_structures", curr),
        ("response_obj_oom", _IDLE),
        ("response_obj_count", _IDLE),
        ("response_obj_bytes", _IDLE),
        # each connection's receive buffer
        ("read_buf_count", curr),
        ("read_buf_bytes", curr * conn.get("read_buf_size", 0)),
        ("read_buf_bytes_free", _IDLE),
        ("read_buf_oom", _IDLE),
        ("reserved_fds", _IDLE),
    ]
    lines += [(name, store[name]) for name in ("cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "cmd_meta")]
    lines += [
        (name, store[name])
        for name in (
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
            "store_too_large",
            "store_no_memory",
        )
    ]
    lines += [
        ("auth_cmds", auth.auth_cmds if auth is not None else 0),
        ("auth_errors", auth.auth_errors if auth is not None else 0),
    ]
    if conn.get("idle_timeout"):  # as memcached, only when connections can idle out
        lines.append(("idle_kicks", conn.get("idle_kicks", 0)))
    lines += [
        ("bytes_read", conn.get("bytes_read", 0)),
        ("bytes_written", conn.get("bytes_written", 0)),
        ("limit_maxbytes", store["limit_maxbytes"]),
        ("accepting_conns", conn.get("accepting_conns", 1)),
        ("listen_disabled_num", conn.get("listen_disabled_num", 0)),
        ("time_in_listen_disabled_us", conn.get("time_in_listen_disabled_us", 0)),
        ("threads", conn.get("threads", 1)),
        ("conn_yields", _IDLE),
        ("hash_power_level", 16),
        ("hash_bytes", 524288),
        ("hash_is_expanding", _IDLE),
        ("slab_reassign_rescues", _IDLE),
        ("slab_reassign_chunk_rescues", _IDLE),
        ("slab_reassign_evictions_nomem", _IDLE),
        ("slab_reassign_inline_reclaim", _IDLE),
        ("slab_reassign_busy_items", _IDLE),
        ("slab_reassign_busy_deletes", _IDLE),
        ("slab_reassign_running", _IDLE),
        ("slabs_moved", _IDLE),
        ("lru_crawler_running", _IDLE),
        ("lru_crawler_starts", store["lru_crawler_starts"]),
        ("lru_maintainer_juggles", _IDLE),
        ("malloc_fails", _IDLE),
        ("log_worker_dropped", _IDLE),
        ("log_worker_written", _IDLE),
        ("log_watcher_skipped", _IDLE),
        ("log_watcher_sent", _IDLE),
        ("log_watchers", _IDLE),
    ]
    if getattr(server, "ssl_context", None) is not None:
        lines += [
            ("ssl_handshake_errors", conn.get("ssl_handshake_errors", 0)),
            ("time_since_server_cert_refresh", int(now - started)),
        ]
    lines += [
        ("unexpected_napi_ids", _IDLE),
        ("round_robin_fallback", _IDLE),
        ("bytes", store["bytes"]),
        ("curr_items", store["curr_items"]),
        ("total_items", store["total_items"]),
        ("slab_global_page_pool", _IDLE),
        ("expired_unfetched", store["expired_unfetched"]),
        ("evicted_unfetched", _IDLE),
        ("evicted_active", _IDLE),
        ("evictions", store["evictions"]),
        ("reclaimed", store["reclaimed"]),
        ("crawler_reclaimed", store["crawler_reclaimed"]),
        ("crawler_items_checked", store["crawler_items_checked"]),
        ("lrutail_reflocked", _IDLE),
        ("moves_to_cold", _IDLE),
        ("moves_to_warm", _IDLE),
        ("moves_within_lru", _IDLE),
        ("direct_reclaims", _IDLE),
        ("lru_bumps_dropped", _IDLE),
        # this server's own
        ("total_malloced", store["bytes"]),
        ("compactions", store["compactions"]),
        ("compaction_failures", store["compaction_failures"]),
        ("compacting", store["compacting"]),
        ("data_file_bytes", store["data_file_bytes"]),
        # 0 after a failed fsync or write, until the file is rewritten: alert on it
        ("data_file_writable", store["data_file_writable"]),
        ("data_file_errors", store["data_file_errors"]),
    ]
    return lines


def _yes(flag: object) -> str:
    return "yes" if flag else "no"


def settings_stats(ctx: "Session") -> list[tuple[str, object]]:
    """``stats settings``: memcached 1.6.18's keys in its order (less extstore's),
    then this server's own."""
    store = ctx.store
    server = ctx.server
    settings = ctx.settings
    conn = server.connection_stats() if server is not None else {}
    log_ = store.log
    auth = getattr(server, "auth", None)
    tls = getattr(server, "ssl_context", None)
    threads = conn.get("threads", 2) - 1
    return [
        ("maxbytes", store.memory_limit),
        ("maxconns", conn.get("max_connections", 0)),
        ("tcpport", conn.get("port", 0)),
        ("udpport", 0),
        ("inter", conn.get("host", "NULL")),
        ("verbosity", 0),
        ("oldest", 0),
        ("evictions", "on" if store.evict else "off"),
        ("domain_socket", "NULL"),
        ("umask", 700),
        ("shutdown_command", _yes(settings.enable_shutdown)),
        ("growth_factor", "1.25"),
        ("chunk_size", 48),
        ("num_threads", threads),
        ("num_threads_per_udp", threads),
        ("stat_key_prefix", store.prefixes.delimiter.decode("latin-1")),
        ("detail_enabled", _yes(store.prefixes.enabled)),
        ("reqs_per_event", 20),
        ("cas_enabled", _yes(store.cas_enabled)),
        ("tcp_backlog", conn.get("backlog", 0)),
        ("binding_protocol", getattr(server, "protocol", "auto").replace("auto", "auto-negotiate")),  # -B
        # memcached's names; binary connections log in with SASL PLAIN, text ones
        # with memcached's set-based login (auth_enabled_ascii: the auth file's path or "no")
        ("auth_enabled_sasl", "yes" if auth is not None else "no"),
        ("auth_enabled_ascii", auth.path if auth is not None else "no"),
        ("item_size_max", settings.max_item_size),
        ("maxconns_fast", "yes"),
        ("hashpower_init", 0),
        ("slab_reassign", "yes"),
        ("slab_automove", getattr(server, "slab_automove", 1)),
        ("slab_automove_ratio", "%.2f" % getattr(server, "slab_automove_ratio", 0.8)),
        ("slab_automove_window", 30),
        ("slab_chunk_max", slabs.class_sizes(settings.max_item_size)[-1]),
        ("lru_crawler", "yes"),
        ("lru_crawler_sleep", 100000),
        ("lru_crawler_tocrawl", 5000),
        ("tail_repair_time", 0),
        ("flush_enabled", _yes(settings.flush_enabled)),
        ("dump_enabled", "yes"),
        ("hash_algorithm", sys.hash_info.algorithm),
        ("lru_maintainer_thread", "no"),
        ("lru_segmented", "no"),
        ("hot_lru_pct", 0),
        ("warm_lru_pct", 0),
        ("hot_max_factor", 0),
        ("warm_max_factor", 0),
        ("temp_lru", "no"),
        ("temporary_ttl", 0),
        ("idle_timeout", int(conn.get("idle_timeout", 0))),
        ("watcher_logbuf_size", 0),
        ("worker_logbuf_size", 0),
        ("read_buf_mem_limit", 0),
        ("track_sizes", "no"),
        ("inline_ascii_response", "no"),
        # memcached's extstore (a flash tier): absent here, shown with memcached's defaults
        ("ext_item_size", 512),
        ("ext_item_age", 4294967295),
        ("ext_low_ttl", 0),
        ("ext_recache_rate", 2000),
        ("ext_wbuf_size", 4194304),
        ("ext_compact_under", 0),
        ("ext_drop_under", 0),
        ("ext_max_sleep", 1000000),
        ("ext_max_frag", "0.80"),
        ("slab_automove_freeratio", "0.010"),
        ("ext_drop_unread", "no"),
        ("ssl_enabled", _yes(tls is not None)),
        ("ssl_chain_cert", "(null)"),
        ("ssl_key", "(null)"),
        ("ssl_verify_mode", 2 if tls is not None and tls.verify_mode == ssl.CERT_REQUIRED else 0),
        ("ssl_keyformat", 1),
        ("ssl_ciphers", "NULL"),
        ("ssl_ca_cert", "NULL"),
        ("ssl_wbuf_size", 16384),
        ("ssl_session_cache", "no"),
        ("ssl_kernel_tls", "no"),
        ("ssl_min_version", "tlsv1.2"),
        ("num_napi_ids", "(null)"),
        ("memory_file", "(null)"),
        # this server's own
        ("dialect", settings.dialect),
        ("data_file", log_.path if log_ is not None else ""),
        ("fsync", log_.policy if log_ is not None else "none"),
        # not in memcached, which is always memory only: say whether a restart keeps the data
        ("memory_only", "yes" if log_ is None else "no"),
    ]


def stats_lines(ctx: "Session", group: Optional[bytes] = None) -> list[tuple[str, object]]:
    """The ``(name, value)`` pairs of ``stats [group]``, for any protocol that
    reports them (the text ``stats`` and the binary STAT opcode share this).

    Raises :class:`BadCommandLine` for a group this server does not know
    (the text ``stats`` answers it with memcached's ``ERROR``). ``reset``,
    ``detail`` and ``cachedump`` are not pair lists: the text ``stats``
    handler answers them itself.
    """
    if group is None:
        return general_stats(ctx)
    if group == b"settings":
        return settings_stats(ctx)
    if group in (b"items", b"slabs"):
        # No slab classes here: memory is Python's. A valid, empty answer keeps
        # tools that ask for these (exporters, memcstat) working.
        return [("active_slabs", 0), ("total_malloced", ctx.store.stats()["bytes"])] if group == b"slabs" else []
    if group == b"sizes":
        return [("sizes_status", "disabled")]  # memcached's answer unless started with -o track_sizes
    raise BadCommandLine()


def reset_stats(ctx: "Session") -> None:
    """``stats reset``: zero the counters of the store and of the server, and
    forget the per-prefix counts (memcached clears them too)."""
    ctx.store.reset_stats()
    ctx.store.prefixes.clear()
    if ctx.server is not None:
        ctx.server.reset_stats()


_DETAIL_USAGE = "usage: stats detail on|off|dump"


def _stats_detail(ctx: "Session", word: bytes) -> bytes:
    prefixes = ctx.store.prefixes
    if word == b"dump":
        return prefixes.dump()
    if word not in (b"on", b"off"):
        raise ClientError(_DETAIL_USAGE)
    prefixes.enabled = word == b"on"
    return OK


def _cachedump(ctx: "Session", args: list[bytes]) -> bytes:
    """``stats cachedump <class> <limit>``: the items memcached would keep in that
    slab class, most recently used first, as ``ITEM <key> [<bytes> b; <exptime> s]``."""
    if len(args) < 2:
        raise ClientError("bad command line")
    class_id = parse_uint(args[0], U32)
    limit = parse_uint(args[1], U32)
    if class_id >= slabs.MAX_CLASSES:
        raise ClientError("Illegal slab id")
    size_max = ctx.settings.max_item_size
    cas = ctx.store.cas_enabled

    def in_class(key: bytes, item: Item) -> bool:
        # memcached leaves out keys given in base64: they may not print
        return (
            not item.state & BINARY_KEY
            and slabs.item_class(key, len(item.value), item.flags, cas, size_max) == class_id
        )

    found = ctx.store.walk_lru(in_class, limit)
    lines = [b"ITEM %s [%d b; %d s]\r\n" % (key, len(item.value), item.exptime) for key, item in found]
    return b"".join(lines) + END


@command("stats")
def stats(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """stats [settings|items|slabs|sizes|reset|detail on|off|dump|cachedump <class> <limit>]"""
    group = args[0] if args else None
    if group == b"reset":
        reset_stats(ctx)
        return RESET
    if group == b"detail":
        return _stats_detail(ctx, args[1] if len(args) > 1 else b"")
    if group == b"cachedump":
        return _cachedump(ctx, args[1:])
    try:
        lines = stats_lines(ctx, group)
    except BadCommandLine:
        raise UnknownCommand() from None  # memcached's reply to a group it does not know
    body = b"".join(b"STAT %s %s\r\n" % (name.encode(), str(value).encode()) for name, value in lines)
    return body + END


# -- operators' commands ------------------------------------------------------------


@command("shutdown")
def shutdown(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> Optional[bytes]:
    """shutdown [graceful]: stop the server, as SIGTERM does (memcached's -A enables it).

    The connection is closed without a reply. memcached's plain ``shutdown``
    exits at once; here both forms are the clean stop: every command already
    received is answered and the data file is flushed.
    """
    if not ctx.settings.enable_shutdown:
        return b"ERROR: shutdown not enabled\r\n"
    if args and args != [b"graceful"]:
        raise ClientError("invalid shutdown mode")
    ctx.close()
    if ctx.server is not None:
        ctx.server.request_stop("shutdown command")
    return None


#: memcached refuses limits under 8 MiB, and takes one over 10^9 for bytes by mistake.
_MEMLIMIT_MIN = 8
_MEMLIMIT_MAX = 1_000_000_000


@command("cache_memlimit", min_args=1, max_args=1, noreply=True, mutates=True)
def cache_memlimit(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """cache_memlimit <MiB> [noreply]: change the memory limit, evicting down to it."""
    try:
        megabytes = parse_uint(args[0], U32)
    except BadCommandLine:
        return ERROR  # memcached's reply to a limit that is not a number
    if megabytes < _MEMLIMIT_MIN:
        return b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n"
    if megabytes > _MEMLIMIT_MAX:
        return b"MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes\r\n"
    ctx.store.set_memory_limit(megabytes * 1024 * 1024)
    return OK


def _slabs_automove(ctx: "Session", args: list[bytes]) -> bytes:
    if args[0] == b"ratio":
        try:
            ratio = float(args[1]) if len(args) > 1 else None
        except ValueError:
            ratio = None
        if ratio is None:
            return ERROR
        if ctx.server is not None:
            ctx.server.slab_automove_ratio = ratio
        return OK
    level = parse_uint(args[0], U32)
    if level > 2:
        return ERROR
    if ctx.server is not None:
        ctx.server.slab_automove = level
    return OK


def _slabs_reassign(ctx: "Session", args: list[bytes]) -> bytes:
    source, destination = parse_exptime(args[0]), parse_exptime(args[1])  # signed 32-bit, as memcached reads them
    if source == destination:
        return b"SAME src and dst class are identical\r\n"
    largest = slabs.largest_class(ctx.settings.max_item_size)
    # -1 asks memcached to pick a class with a page to spare: there is none here
    if not (0 <= source <= largest and 0 <= destination <= largest):
        return b"BADCLASS invalid src or dst class id\r\n"
    return b"NOSPARE source class has no spare pages\r\n"


@command("slabs")
def slabs_(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> Optional[bytes]:
    """slabs automove <0|1|2> | slabs automove ratio <r> | slabs reassign <src> <dst>

    Answered as memcached answers on a server with nothing to move: memory
    here is Python's, not slab pages.
    """
    if len(args) == 3 and args[0] == b"reassign":
        return _slabs_reassign(ctx, args[1:])
    if len(args) >= 2 and args[0] == b"automove":
        noreply = args[-1] == b"noreply"
        try:
            reply = _slabs_automove(ctx, args[1:])
        except BadCommandLine:
            if noreply:
                return None
            raise
        return None if noreply else reply
    return ERROR
