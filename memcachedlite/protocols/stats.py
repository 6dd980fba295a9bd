"""What ``stats`` reports: memcached's general, settings, per-class
(``items``, ``slabs``) and ``sizes`` keys, in memcached's order, with this
server's own after them. The text ``stats`` verb
(:mod:`memcachedlite.protocols.commands`) and the binary STAT opcode
(:mod:`memcachedlite.protocols.binary`) both answer from here."""

from __future__ import annotations

import os
import ssl
import sys
import time
from typing import TYPE_CHECKING, Optional

from .. import buildinfo
from ..errors import BadCommandLine, ClientError, UnsupportedPlatform
from ..storage import slabs
from ..version import __version__

try:
    import resource  # rusage_user and rusage_system: POSIX only
except ImportError:
    raise UnsupportedPlatform("resource") from None

if TYPE_CHECKING:  # pragma: no cover
    from ..storage.store import Store
    from .session import Session

#: What ``version`` answers: the memcached protocol level implemented, then
#: this server's name and version. Clients such as libmemcached parse the
#: leading major.minor.micro numbers and refuse a major version of 0.
PROTOCOL_VERSION = f"1.6.0-memcachedlite-{__version__}"


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
    conn = server.connection_stats()
    started = server.started
    auth = server.auth
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
    if server.ssl_context is not None:
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
        ("evicted_unfetched", store["evicted_unfetched"]),
        ("evicted_active", _IDLE),
        ("evictions", store["evictions"]),
        ("reclaimed", store["reclaimed"]),
        ("crawler_reclaimed", store["crawler_reclaimed"]),
        ("crawler_items_checked", store["crawler_items_checked"]),
        ("lrutail_reflocked", _IDLE),
        ("moves_to_cold", _IDLE),
        ("moves_to_warm", _IDLE),
        ("moves_within_lru", _IDLE),
        ("direct_reclaims", store["direct_reclaims"]),
        ("lru_bumps_dropped", _IDLE),
        # this server's own. bytes above is memcached's figure for these items; this is
        # what they really take here, the figure the memory limit is enforced on
        ("bytes_in_memory", store["bytes_in_memory"]),
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
    conn = server.connection_stats()
    log_ = store.log
    auth = server.auth
    tls = server.ssl_context
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
        ("domain_socket", conn.get("domain_socket", "NULL")),
        ("umask", conn.get("umask", 700)),
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
        ("binding_protocol", server.protocol.replace("auto", "auto-negotiate")),  # -B
        # memcached's names; binary connections log in with SASL PLAIN, text ones
        # with memcached's set-based login (auth_enabled_ascii: the auth file's path or "no")
        ("auth_enabled_sasl", "yes" if auth is not None else "no"),
        ("auth_enabled_ascii", auth.path if auth is not None else "no"),
        ("item_size_max", settings.max_item_size),
        ("maxconns_fast", "yes"),
        ("hashpower_init", 0),
        ("slab_reassign", "yes"),
        ("slab_automove", server.slab_automove),
        ("slab_automove_ratio", "%.2f" % server.slab_automove_ratio),
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
        ("track_sizes", _yes(store.sizes_from is not None)),
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
        # pure (Python) or mypyc (compiled): see memcachedlite.buildinfo
        ("build", buildinfo.build()),
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
        return list(ctx.store.class_stats(group.decode()))
    if group in _SIZES:
        return _SIZES[group](ctx.store)
    raise BadCommandLine()


def _sizes(store: "Store") -> list[tuple[str, object]]:
    """``stats sizes``: memcached's histogram (items by size, 32-byte steps),
    or its status while off (as memcached starts, unless ``-o track_sizes``)."""
    if store.sizes_from is None:
        return [("sizes_status", "disabled")]
    return [(str(size), count) for size, count in store.size_histogram().items()]


def _sizes_enable(store: "Store") -> list[tuple[str, object]]:
    if not store.cas_enabled:  # memcached tells its items apart by cas
        return [("sizes_status", "error"), ("sizes_error", "cas_support_disabled")]
    store.enable_sizes()
    return [("sizes_status", "enabled")]


def _sizes_disable(store: "Store") -> list[tuple[str, object]]:
    store.sizes_from = None
    return [("sizes_status", "disabled")]


_SIZES = {b"sizes": _sizes, b"sizes_enable": _sizes_enable, b"sizes_disable": _sizes_disable}


_DETAIL_USAGE = "usage: stats detail on|off|dump"


def stats_detail(ctx: "Session", word: bytes) -> Optional[bytes]:
    """``stats detail on|off|dump``, for the text ``stats`` and the binary
    STAT (key ``detail on``...): switch per-prefix counting on or off (None),
    or the dump, memcached's ``PREFIX`` lines and ``END``. Another word is a
    :class:`ClientError` (the binary STAT answers it KEY_ENOENT)."""
    prefixes = ctx.store.prefixes
    if word == b"dump":
        return prefixes.dump()
    if word not in (b"on", b"off"):
        raise ClientError(_DETAIL_USAGE)
    prefixes.enabled = word == b"on"
    return None


def reset_stats(ctx: "Session") -> None:
    """``stats reset``: zero the counters of the store and of the server, and
    forget the per-prefix counts (memcached clears them too)."""
    ctx.store.reset_stats()
    ctx.store.prefixes.clear()
    ctx.server.reset_stats()
