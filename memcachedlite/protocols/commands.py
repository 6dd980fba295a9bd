"""The built-in verbs of memcached's text protocol.

Each is registered with :func:`memcachedlite.protocols.registry.command`, the same
decorator a user's module uses; the first line of each docstring is the
verb's syntax. Replies are byte-exact with memcached's ``doc/protocol.txt``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final, Optional

from ..errors import BadCommandLine, ClientError, ProtocolError, UnknownCommand
from ..storage import slabs
from ..storage.items import BINARY_KEY, META, Item, item_cas
from ..storage.numbers import U64
from ..storage.store import Mode, Outcome
from .registry import command, default_registry
from .stats import PROTOCOL_VERSION, reset_stats, stats_detail, stats_lines
from .text import (
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
    check_key,
    check_keys,
    parse_exptime,
    parse_uint,
    value_line,
    value_line_lite,
)

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
    return check_key(args[0]), parse_uint(args[1], U32), parse_exptime(args[2])


def _parsed_key(args: list[bytes], with_cas: bool = False) -> Optional[bytes]:
    """The key of a storage command whose line parses as memcached parses it
    before it counts the set and reads the data; None if it does not."""
    try:
        key = _storage_args(args[:4] if with_cas else args)[0]
        if with_cas:
            parse_uint(args[4], U64)
    except (BadCommandLine, IndexError):
        return None
    return key


def _refused_set(ctx: "Session", args: list[bytes], too_large: bool) -> None:
    """A ``set`` whose data was refused: counted as memcached counts it, and
    when too large, the key's old value goes too."""
    ctx.store.refused_set(_parsed_key(args), too_large=too_large, unlink=too_large, detail=True)


def _refused_update(ctx: "Session", args: list[bytes], too_large: bool) -> None:
    """``add``, ``replace``, ``append`` or ``prepend`` whose data was refused: counted only."""
    ctx.store.refused_set(_parsed_key(args), too_large=too_large, detail=True)


def _refused_cas(ctx: "Session", args: list[bytes], too_large: bool) -> None:
    ctx.store.refused_set(_parsed_key(args, with_cas=True), too_large=too_large, detail=True)


_STORAGE = dict(arities=(2, 4), data=-1, noreply=True, mutates=True, refused=_refused_update)


@command("set", **{**_STORAGE, "refused": _refused_set})
def set_(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """set <key> <flags> <exptime> <bytes> [noreply]  (or: set <key> <bytes>)"""
    if len(args) == 4 and args[1] == b"0" and args[2] == b"0":
        ctx.store.set(check_key(args[0]), data)  # type: ignore[arg-type]  # the common case, spelled out for speed
        return STORED
    key, flags, exptime = _storage_args(args)
    ctx.store.set(key, data, flags, exptime)  # type: ignore[arg-type]
    return STORED


#: One ``set`` command line with memcached's four arguments: a key of
#: printable bytes (the rule check_key applies), decimal flags and exptime.
SET_LINE = rb"set ([!-~\x80-\xff]{1,250}) (\d{1,20}) (-?\d{1,20}) (?P<length>\d{1,10})(?P<noreply> noreply)?\r\n"


def set_batch(ctx: "Session", requests: list[tuple[re.Match[bytes], Optional[bytes]]]) -> list[Optional[bytes]]:
    """The batch form of ``set``: pipelined sets stored under one lock.

    Each request is parsed as :func:`set_` parses it and stored as
    :meth:`Store.set` stores it; one that :func:`set_` would refuse gets
    the same error line.
    """
    entries: list[tuple[bytes, bytes, int, int]] = []
    stored: list[int] = []  # which request each entry came from
    replies: list[Optional[bytes]] = [STORED] * len(requests)
    key: bytes  # typed, so that the compiled build compares bytes as bytes
    flags: bytes
    exptime: bytes
    for i, (found, data) in enumerate(requests):
        key, flags, exptime = found.group(1, 2, 3)
        assert data is not None  # (set has a data block)
        if flags == b"0" and exptime == b"0":
            entries.append((key, data, 0, 0))
        else:
            try:
                _, number, when = _storage_args([key, flags, exptime, found.group(4)])
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


def _update(ctx: "Session", mode: Mode, args: list[bytes], data: Optional[bytes]) -> bytes:
    key, flags, exptime = _storage_args(args)
    outcome, _ = ctx.store.store(mode, key, data, flags, exptime, limit=ctx.settings.max_item_size)  # type: ignore[arg-type]
    return STORED if outcome == Outcome.STORED else ctx.not_stored


@command("add", **_STORAGE)
def add(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """add <key> <flags> <exptime> <bytes> [noreply]: store only if absent."""
    return _update(ctx, Mode.ADD, args, data)


@command("replace", **_STORAGE)
def replace(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """replace <key> <flags> <exptime> <bytes> [noreply]: store only if present."""
    return _update(ctx, Mode.REPLACE, args, data)


@command("append", **_STORAGE)
def append(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """append <key> <flags> <exptime> <bytes> [noreply]: flags and exptime are ignored."""
    return _update(ctx, Mode.APPEND, args, data)


@command("prepend", **_STORAGE)
def prepend(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """prepend <key> <flags> <exptime> <bytes> [noreply]: flags and exptime are ignored."""
    return _update(ctx, Mode.PREPEND, args, data)


_CAS_REPLIES = {Outcome.STORED: STORED, Outcome.EXISTS: EXISTS, Outcome.NOT_FOUND: NOT_FOUND}


@command("cas", min_args=5, max_args=5, data=3, noreply=True, mutates=True, refused=_refused_cas)
def cas(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]"""
    key, flags, exptime = _storage_args(args[:4])
    unique = parse_uint(args[4], U64)
    outcome, _ = ctx.store.store(Mode.CAS, key, data, flags, exptime, unique)  # type: ignore[arg-type]
    return _CAS_REPLIES[outcome]


def _values(ctx: "Session", found: list, with_cas: bool) -> bytes:
    if ctx.lite and not with_cas:
        parts = [value_line_lite(key, item.value) for key, item in found]
    elif with_cas:
        parts = [value_line(key, item.flags, item.value, item.cas) for key, item in found]
    else:
        parts = [value_line(key, item.flags, item.value) for key, item in found]
    parts.append(END)
    return b"".join(parts)


def _retrieve(ctx: "Session", keys: list[bytes], with_cas: bool) -> bytes:
    """The reply to ``get``/``gets``: a ``VALUE`` line and data block per hit, then ``END``.

    A stored item ends with the text protocol's ``<flags> <bytes>\r\n<data>\r\n``
    (see :mod:`memcachedlite.storage.items`), so a plain hit is rendered with
    one slice and no decoding.
    """
    check_keys(keys)
    found = ctx.store.get_many(keys)
    if len(found) == 1 and not with_cas and not ctx.lite:  # the most common request, spelled out for speed
        blob = found[0]
        return END if blob is None else b"".join((b"VALUE ", keys[0], blob[META:], END))
    parts: list[bytes] = []
    add = parts.extend
    # enumerate, not zip(strict=True): a call with a keyword argument costs
    # the hot path more than a whole one-key loop
    if with_cas:
        for i, blob in enumerate(found):
            if blob is not None:
                end = blob.index(b"\r\n", META)
                add((b"VALUE ", keys[i], b"%b %d" % (blob[META:end], item_cas(blob)), blob[end:]))
    elif ctx.lite:
        for i, blob in enumerate(found):
            if blob is not None:
                end = blob.index(b"\r\n", META)
                add((b"VALUE ", keys[i], b" %d" % (len(blob) - end - 4), blob[end:]))
    else:
        for i, blob in enumerate(found):
            if blob is not None:
                add((b"VALUE ", keys[i], blob[META:]))
    parts.append(END)
    return b"".join(parts)


@command("get", min_args=1, long_line=True)
def get(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """get <key>*"""
    return _retrieve(ctx, args, with_cas=False)


@command("gets", min_args=1, long_line=True)
def gets(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """gets <key>*: like get, with each item's cas unique."""
    return _retrieve(ctx, args, with_cas=True)


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


def _cachedump(ctx: "Session", args: list[bytes]) -> bytes:
    """``stats cachedump <class> <limit>``: the items of that slab class (the
    class memcached would keep each in, see :mod:`memcachedlite.storage.slabs`),
    most recently used first, as ``ITEM <key> [<bytes> b; <exptime> s]``."""
    if len(args) < 2:
        raise ClientError("bad command line")
    class_id = parse_uint(args[0], U32)
    limit = parse_uint(args[1], U32)
    if class_id >= slabs.MAX_CLASSES:
        raise ClientError("Illegal slab id")

    def in_class(key: bytes, item: Item) -> bool:
        # memcached leaves out keys given in base64: they may not print
        return not item.state & BINARY_KEY and item.cls == class_id

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
        dump = stats_detail(ctx, args[1] if len(args) > 1 else b"")
        return OK if dump is None else dump
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
    ctx.server.request_stop("shutdown command")
    return None


#: memcached refuses limits under 8 MiB, and takes one over 10^9 for bytes by mistake.
_MEMLIMIT_MIN: Final = 8
_MEMLIMIT_MAX: Final = 1_000_000_000


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
        ctx.server.slab_automove_ratio = ratio
        return OK
    level = parse_uint(args[0], U32)
    if level > 2:
        return ERROR
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
