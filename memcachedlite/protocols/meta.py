"""memcached's meta commands: ``mg``, ``ms``, ``md``, ``ma``, ``mn`` and ``me``.

One verb per operation, each followed by single-letter flags that say what
to return (``v`` the value, ``c`` the cas, ``t`` the TTL left, ``k`` the key,
``O`` an opaque token) and how to behave (``q`` quiet, ``I`` invalidate,
``N`` create on miss, ``M`` the mode of a set or an arithmetic). Newer
clients speak only this protocol.

The verbs register through the same registry as the classic ones. Replies
follow memcached's ``doc/protocol.txt`` and were compared byte for byte with
memcached 1.6.18 (``tests/test_meta_differential.py``), including its quirks:
``md`` and ``ma`` answer every flag problem with one error string, and a
quiet ``ma`` hides even the value it computed. Each command reads, decides
and writes under :meth:`Store.atomic`, and every change goes through the
store's write path, so it is logged as its effect (``ms`` as a ``set``,
``md I`` as an ``invalidate``) and survives a restart.
"""

from __future__ import annotations

import binascii
from base64 import b64encode
from typing import TYPE_CHECKING, Callable, Final, Optional

from ..errors import BadCommandLine, ClientError, UnknownCommand
from ..storage.items import BINARY_KEY, FETCHED, STALE, WIN_SENT, Item, memcached_size
from ..storage.numbers import U64
from ..storage.records import strict_b64decode
from ..storage.store import Mode, Outcome
from .registry import command
from .text import MAX_KEY, MN, SILENT, U32, check_key, parse_exptime, parse_uint

if TYPE_CHECKING:  # pragma: no cover
    from ..storage.store import Store
    from .session import Session

#: The flags memcached's shared meta parser accepts, for every meta verb
#: alike, plus ``E`` and ``x`` from memcached releases after 1.6.18.
_KNOWN: Final = frozenset(b"bcfhklqstuvOPLINTRCFMDJEx")
#: memcached refuses a meta line of more tokens than this, verb included.
_MAX_TOKENS: Final = 19
_MAX_OPAQUE: Final = 32  # the O included

_HD: Final = b"HD"
_EN: Final = b"EN"
_NF: Final = b"NF"
_NS: Final = b"NS"
_EX: Final = b"EX"

# flag letters, as the integers that indexing bytes gives
(
    _b, _c, _f, _h, _k, _l, _q, _s, _t, _u, _v, _x,
    _C, _D, _E, _F, _I, _J, _M, _N, _O, _R, _T,
) = b"bcfhklqstuvxCDEFIJMNORT"  # fmt: skip


class Meta:
    """The parsed flags of one meta command line.

    ``flags`` maps each flag letter (an int) to the rest of its token, in the
    order the client gave them: replies echo flags in that order. ``numbers``
    holds the values of the numeric flags, read once while parsing.
    """

    __slots__ = ("key", "binary", "flags", "numbers")

    def __init__(self, key: bytes, binary: bool, flags: dict[int, bytes], numbers: dict[int, int]) -> None:
        self.key = key
        self.binary = binary
        self.flags = flags
        self.numbers = numbers

    @property
    def quiet(self) -> bool:
        return _q in self.flags

    def number(self, flag: int, default: int = 0) -> int:
        return self.numbers.get(flag, default)

    def key_field(self, binary: Optional[bool] = None) -> bytes:
        """The key as the ``k`` flag returns it: in base64 if it came so, or
        (``binary``) if the item was stored so."""
        if self.binary if binary is None else binary:
            return b" k" + b64encode(self.key) + b" b"
        return b" k" + self.key

    @property
    def new_cas(self) -> Optional[int]:
        """The cas a change should give the item (``E``), or None for the next one."""
        return self.numbers.get(_E)

    def echo(self, letters: bytes = b"Ok", cas: int = 0, ttl: int = -1) -> bytes:
        """The reply flags among ``letters`` that do not need the item itself:
        ``O``, ``k``, ``c`` (``cas``; 0 on a change that did not happen) and
        ``t`` (``ttl``)."""
        out = b""
        for flag, rest in self.flags.items():
            if flag not in letters:
                continue
            if flag == _O:
                out += b" O" + rest
            elif flag == _k:
                out += self.key_field()
            elif flag == _c:
                out += b" c%d" % cas
            else:
                out += b" t%d" % ttl
        return out


# -- parsing ----------------------------------------------------------------------


def _ttl(token: bytes) -> int:
    """A TTL as memcached's ``safe_strtol`` reads it (see :func:`parse_exptime`)."""
    try:
        return parse_exptime(token)
    except BadCommandLine:
        raise ClientError("bad token in command line format") from None


def _u64(error: str) -> Callable[[bytes], int]:
    """A parser of unsigned 64-bit flag values that answers ``error`` when it cannot."""

    def parse_u64(token: bytes) -> int:
        try:
            return parse_uint(token, U64)
        except BadCommandLine:
            raise ClientError(error) from None

    return parse_u64


_cas_token = _u64("bad token in command line format")
_delta = _u64("invalid numeric delta value")
_initial = _u64("invalid numeric initial value")


def _client_flags(token: bytes) -> int:
    return parse_uint(token, U64) % U32  # memcached keeps the low 32 bits


def _mode(token: bytes) -> int:
    if len(token) != 1:
        raise ClientError("incorrect length for M token")
    return token[0]


_NUMBERS = {
    _T: _ttl,
    _N: _ttl,
    _R: _ttl,
    _C: _cas_token,
    _E: _cas_token,
    _F: _client_flags,
    _D: _delta,
    _J: _initial,
    _M: _mode,
}


def _decode_key(token: bytes) -> bytes:
    """memcached's base64 decoder: padding is required, and decoding stops
    at the first padding."""
    pad = token.find(b"=")
    if pad >= 0:
        token = token[: pad + (-pad % 4)]
    try:
        key = strict_b64decode(token)
    except (binascii.Error, ValueError):
        raise ClientError("error decoding key") from None
    if not key:
        raise ClientError("error decoding key")
    return key


def parse(args: list[bytes], first_flag: int = 1, flag_error: Optional[str] = None) -> Meta:
    """The key and flags of a meta command line (``args`` without the verb).

    Errors come in memcached's order: a duplicate or unknown flag at once,
    a bad number (the last one wins) only after every token was seen.
    ``flag_error`` replaces the message of every flag problem (``md`` and
    ``ma`` in memcached 1.6.18 have just one).
    """
    token = args[0]
    if len(token) > MAX_KEY:
        raise BadCommandLine()
    try:
        flags: dict[int, bytes] = {}
        numbers: dict[int, int] = {}
        problem: Optional[ClientError] = None
        for arg in args[first_flag:]:
            letter = arg[0]
            if letter in flags:
                raise ClientError("duplicate flag")
            if letter not in _KNOWN:
                raise ClientError("invalid flag")
            rest = arg[1:]
            flags[letter] = rest
            check = _NUMBERS.get(letter)
            if check is not None:
                try:
                    numbers[letter] = check(rest)
                except ClientError as exc:  # BadCommandLine too, for F
                    problem = exc
        if problem is not None:
            raise problem
        key = _decode_key(token) if _b in flags else None
    except ClientError:
        if flag_error is None:
            raise
        raise ClientError(flag_error) from None
    if len(flags.get(_O, b"")) + 1 > _MAX_OPAQUE:
        raise ClientError("opaque token too long")
    if key is not None:
        return Meta(key, True, flags, numbers)
    return Meta(check_key(token), False, flags, numbers)


def _check_line(args: list[bytes], need: int, too_long: str = "options flags too long") -> None:
    """What memcached checks before anything else: a key, and not too many
    tokens (``too_long`` is the error, which mg words differently)."""
    if not args:
        raise UnknownCommand()
    if len(args) < need:
        raise BadCommandLine()
    if len(args) + 1 > _MAX_TOKENS:
        raise ClientError(too_long)
    if len(args[0]) > MAX_KEY:
        raise BadCommandLine()


_MD_MA_FLAG_ERROR = "invalid or duplicate flag"


# -- helpers ------------------------------------------------------------------


def _reply(code: bytes, flags: bytes, meta: Meta, quiet_codes: tuple = ()) -> Optional[bytes]:
    if meta.quiet and code in quiet_codes:
        return SILENT
    return code + flags + b"\r\n"


def _ttl_left(exptime: int, now: int) -> int:
    """What the ``t`` flag shows: -1 for no expiry, else the seconds left
    (0 once past, where memcached 1.6.18 shows a wrapped-around number)."""
    return -1 if not exptime else max(exptime - now, 0)


# -- the commands -------------------------------------------------------------


@command("mg")
def mg(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> Optional[bytes]:
    """mg <key> <flags>*: get an item's value and facts about it."""
    _check_line(args, 1, "options flags are too long")
    meta = parse(args)
    store = ctx.store
    with store.atomic():
        now = store.now()
        item = store.fetch_uncounted(meta.key, bump=_u not in meta.flags)
        created = item is None
        if created and _N not in meta.flags:
            _count_read(store, meta, None)
            return _reply(_EN, meta.echo(), meta, (_EN,))
        if item is None:
            item = _vivify(store, meta, now)
        _count_read(store, meta, item)
        out, won = _mg_flags(store, meta, item, created, now)
        out += _mg_marks(store, meta.key, item, won)
    if _v in meta.flags:
        return b"VA %d%b\r\n%b\r\n" % (len(item.value), out, item.value)
    return b"HD" + out + b"\r\n"


def _count_read(store: "Store", meta: Meta, item: Optional[Item]) -> None:
    """Count an ``mg`` as memcached does: a get (a hit, in the item's class,
    also when ``N`` created it), except that a hit that touches (``T``)
    counts as a touch only, as ``gat`` does."""
    if item is None:
        store.count("cmd_get")
        store.count("get_misses")
    elif _T not in meta.flags:
        store.count("cmd_get")
        store.count_in_class("get_hits", item.cls)


def _vivify(store: "Store", meta: Meta, now: int) -> Item:
    """``mg`` with ``N`` on a miss: create an empty item with the TTL given,
    fetched by this read (unless ``u``), and win its recache."""
    exptime = store.absolute(meta.number(_N), now)
    state = BINARY_KEY if meta.binary else 0
    read = state if _u in meta.flags else state | FETCHED  # this read is its first fetch
    cas = store.put(meta.key, b"", 0, exptime, cas=meta.new_cas, state=read)
    size = memcached_size(len(meta.key), 0, 0)
    return Item(b"", 0, exptime, cas, now, state, store.slabs.of(size), size)


def _mg_flags(store: "Store", meta: Meta, item: Item, created: bool, now: int) -> tuple[bytes, bool]:
    """The reply flags of ``mg`` about ``item``, and whether ``R`` won the
    client the recache (or ``N`` created the item). Flags act in the order
    given: a ``t`` before ``N`` or ``T`` shows the TTL before it."""
    out: list[bytes] = []
    add = out.append
    won = created
    exptime = 0 if created else item.exptime
    for flag, rest in meta.flags.items():
        if flag == _N:
            if created:
                exptime = item.exptime
        elif flag == _T:
            exptime = store.absolute(meta.number(_T), now)
            store.touch(meta.key, exptime)  # absolute times pass through memcached's rule unchanged
        elif flag == _R:
            if not item.state & WIN_SENT and not created and exptime and exptime < now + meta.number(_R):
                won = True
        elif flag == _s:
            add(b" s%d" % len(item.value))
        elif flag == _t:
            add(b" t%d" % _ttl_left(exptime, now))
        elif flag == _c:
            add(b" c%d" % item.cas)
        elif flag == _f:
            add(b" f%d" % item.flags)
        elif flag == _l:
            add(b" l%d" % (now - item.atime if item.atime else 0))
        elif flag == _h:
            add(b" h1" if item.state & FETCHED else b" h0")
        elif flag == _O:
            add(b" O" + rest)
        elif flag == _k:
            add(meta.key_field(bool(item.state & BINARY_KEY)))
    return b"".join(out), won


def _mg_marks(store: "Store", key: bytes, item: Item, won: bool) -> bytes:
    """The stale-while-revalidate marks: ``Z`` (a client already won the
    recache), ``X`` (stale; its first reader wins), ``W`` (this client
    won: the item remembers it was told)."""
    out = b""
    if item.state & WIN_SENT:
        out += b" Z"
    if item.state & STALE:
        out += b" X"
        if not item.state & WIN_SENT:
            won = True
    if won:
        out += b" W"
        store.mark(key, win=True)
    return out


def _check_ms(args: list[bytes]) -> None:
    _check_line(args, 2)


def _ms_key(args: list[bytes]) -> Optional[bytes]:
    """The key of an ``ms`` line as the command would take it, or None."""
    try:
        return _decode_key(args[0]) if b"b" in args[2:] else check_key(args[0])
    except ClientError:
        return None


def _refused_ms(ctx: "Session", args: list[bytes], too_large: bool) -> None:
    """An ``ms`` whose data was refused: when too large it is counted and, as
    memcached does, the key's old value goes (meta commands count nothing
    in ``stats detail``)."""
    if too_large:
        ctx.store.refused_set(_ms_key(args), too_large=True, unlink=True)


#: ``ms`` modes (the M flag), and what each is for the store
_SET_MODES = {
    ord("S"): Mode.SET,
    ord("E"): Mode.ADD,
    ord("A"): Mode.APPEND,
    ord("P"): Mode.PREPEND,
    ord("R"): Mode.REPLACE,
}
_SET: Final = ord("S")
_MS_CODES = {Outcome.STORED: _HD, Outcome.NOT_STORED: _NS, Outcome.EXISTS: _EX, Outcome.NOT_FOUND: _NF}


@command("ms", data=1, mutates=True, check=_check_ms, refused=_refused_ms)
def ms(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> Optional[bytes]:
    """ms <key> <datalen> <flags>*: store a value; ``M`` picks set, add, append, prepend or replace."""
    meta = parse(args, first_flag=2)
    flags = meta.flags
    mode = _SET_MODES.get(meta.number(_M, _SET))
    if mode is None:
        raise ClientError("invalid mode for ms M token")
    if _C in flags and (mode == Mode.SET or mode == Mode.REPLACE):
        mode = Mode.CAS  # as memcached: a set or replace with a cas is a cas (add ignores it)
    assert data is not None
    outcome, cas = ctx.store.store(
        mode,
        meta.key,
        data,
        meta.number(_F),
        meta.number(_T),
        meta.number(_C),
        limit=ctx.settings.max_item_size,
        invalidate=_I in flags,
        new_cas=meta.new_cas,
        key_state=BINARY_KEY if meta.binary else 0,
        unlink=True,  # as memcached: no stale value left behind an update refused for lack of memory
        detail=False,
    )
    code = _MS_CODES[outcome]
    if code != _HD:
        return _reply(code, meta.echo(b"Okc"), meta)
    return _reply(_HD, meta.echo(b"Okc", cas), meta, (_HD,))


@command("md", mutates=True)
def md(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> Optional[bytes]:
    """md <key> <flags>*: delete an item, or with ``I`` mark it stale, or with ``x`` empty it."""
    _check_line(args, 1)
    meta = parse(args, flag_error=_MD_MA_FLAG_ERROR)
    flags = meta.flags
    store = ctx.store
    key = meta.key
    with store.atomic():
        item = store.peek(key, count=True)
        if item is None:
            store.count("delete_misses")
            return _reply(_NF, meta.echo(), meta)
        if _C in flags and meta.number(_C) != item.cas:
            store.count("delete_misses")  # as memcached counts a delete refused for its cas
            return _reply(_EX, meta.echo(), meta)
        new_cas = meta.new_cas
        if _x in flags:
            exptime = store.absolute(meta.number(_T)) if _T in flags else item.exptime
            state = item.state & BINARY_KEY
            store.put(key, b"", meta.number(_F), exptime, cas=new_cas, stale=_I in flags, state=state)
        elif _I in flags:
            if _T in flags:
                store.touch(key, meta.number(_T), count=False)
            store.mark(key, stale=True, win=False, cas=new_cas)  # the next reader may win
        else:
            store.delete(key, detail=False)
    return _reply(_HD, meta.echo(), meta, (_HD,))


_INCR: Final = frozenset(b"I+")
_DECR: Final = frozenset(b"D-")
_ARITH_CODES = {Outcome.NOT_FOUND: _NF, Outcome.EXISTS: _EX}


@command("ma", mutates=True)
def ma(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> Optional[bytes]:
    """ma <key> <flags>*: add ``D`` (default 1) to a counter, or subtract with ``MD``."""
    _check_line(args, 1)
    meta = parse(args, flag_error=_MD_MA_FLAG_ERROR)
    flags = meta.flags
    mode = meta.number(_M, ord("I"))
    if mode not in _INCR and mode not in _DECR:
        raise ClientError("invalid mode for ma M token")
    store = ctx.store
    counted = store.arith(
        meta.key,
        meta.number(_D, 1),
        mode in _INCR,
        meta.number(_C),  # C0 asks for no check, as in memcached
        exptime=meta.number(_T) if _T in flags else None,
        create=(meta.number(_J), meta.number(_N)) if _N in flags else None,
        new_cas=meta.new_cas,
        key_state=BINARY_KEY if meta.binary else 0,
    )
    if counted.outcome != Outcome.STORED:
        return _reply(_ARITH_CODES[counted.outcome], meta.echo(), meta)
    value = b"%d" % counted.number
    out = meta.echo(b"Okct", counted.cas, _ttl_left(counted.exptime, store.now()))
    if meta.quiet and not counted.created:
        return SILENT
    if _v in flags:
        return b"VA %d%b\r\n%b\r\n" % (len(value), out, value)
    return _HD + out + b"\r\n"


@command("mn")
def mn(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """mn: answers MN; a quiet pipeline ends with it, so the client knows all replies are in."""
    return MN


@command("me")
def me(ctx: "Session", args: list[bytes], data: Optional[bytes]) -> bytes:
    """me <key> [b]: the item's internals on one line, for people debugging."""
    if not args or len(args[0]) > MAX_KEY:
        raise BadCommandLine()
    key = _decode_key(args[0]) if args[1:2] == [b"b"] else args[0]
    store = ctx.store
    store.count("cmd_meta")  # memcached 1.6.18's cmd_meta counts me alone
    now = store.now()
    item = store.peek(key, count=True)
    if item is None:
        return b"EN\r\n"
    return b"ME %b exp=%d la=%d cas=%d fetch=%b cls=%d size=%d\r\n" % (
        b64encode(key) if item.state & BINARY_KEY else key,
        _ttl_left(item.exptime, now),
        now - item.atime if item.atime else 0,
        item.cas,
        b"yes" if item.fetched else b"no",
        item.cls,
        item.size + store.slabs.cas_bytes,  # memcached's ITEM_ntotal
    )
