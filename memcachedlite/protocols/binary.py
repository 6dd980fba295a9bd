"""memcached's binary protocol: packet framing, the opcode table, status
codes and reply encoding, for connections whose first byte is ``0x80``.

Every packet is a 24-byte header (magic, opcode, key length, extras length,
data type, vbucket or status, total body length, opaque, cas), then the
extras, the key and the value. :class:`BinarySession` is a
:class:`~memcachedlite.protocols.session.Session` with this framing instead of command
lines: ``Session.feed()`` (one store batch and one data file write per
receive, the group fsync, failing a whole batch) is inherited unchanged, and
each opcode calls the same :class:`~memcachedlite.storage.store.Store` operations as
its text counterpart, so items, cas values, log records and ``stats``
counters are shared by both protocols.

Replies follow memcached 1.6.18's ``proto_bin.c`` byte for byte (checked by
``tests/test_binary_differential.py``): the status codes and the error
bodies it sends with them, the opaque echoed, the request's own opcode in
the reply, which malformed packets close the connection, and what the quiet
opcodes keep to themselves (a quiet get answers only hits, a quiet mutation
only errors). The deliberate differences are listed in docs/protocols.md.

Keys are the protocol's own: any bytes, as memcached takes them. A key that
passes the text protocol's rule is stored as a plain key (the item a text
``get`` finds); one that does not is stored as the meta protocol stores a
key given in base64 (``BINARY_KEY``: ``bset`` records in the data file,
read from meta with ``mg <base64> b``).

SASL: with an auth file, a connection must authenticate with ``PLAIN``
(``SASL_AUTH``, or an empty ``SASL_AUTH`` answered ``AUTH_CONTINUE`` and then
``SASL_STEP``) against the same users as the text protocol's login; until
then every opcode but the SASL ones and ``VERSION`` is answered
``AUTH_ERROR`` and the connection is closed, as memcached does.

Verbs registered in the registry are text-protocol verbs: the binary
protocol's opcodes are a fixed table, and an opcode not in it is answered
``UNKNOWN_COMMAND``.
"""

from __future__ import annotations

import logging
import struct
from typing import Callable, Final, NamedTuple, Optional, Union

from mypy_extensions import mypyc_attr

from ..errors import ClientError, NonNumeric, OutOfMemory, ProtocolError
from ..storage.items import BINARY_KEY, item_value, unpack_meta
from ..storage.keys import MAX_KEY, is_plain_key
from ..storage.store import Mode, Outcome
from .session import Session
from .stats import PROTOCOL_VERSION, reset_stats, stats_detail, stats_lines

log = logging.getLogger(__name__)

REQUEST: Final = 0x80
RESPONSE: Final = 0x81
HEADER: Final = struct.Struct(">BBHBBHIIQ")  # magic opcode keylen extlen datatype status/vbucket bodylen opaque cas
HEADER_SIZE: Final = HEADER.size
_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack
#: a reply header followed by the 4-byte flags extras of a get reply
_GET_REPLY: Final = struct.Struct(">BBHBBHIIQI").pack
_SET_EXTRAS: Final = struct.Struct(">II").unpack  # flags, exptime
_ARITH_EXTRAS: Final = struct.Struct(">QQI").unpack  # delta, initial, exptime
_EXPTIME: Final = struct.Struct(">I").unpack
_U64: Final = struct.Struct(">Q").pack
#: memcached refuses a body past this outright and closes (ITEM_SIZE_MAX_UPPER_LIMIT).
BODY_LIMIT: Final = 1024 * 1024 * 1024
#: The incr/decr expiration that means "do not create a missing counter".
NO_CREATE: Final = 0xFFFFFFFF

# -- opcodes (memcached's protocol_binary.h) -----------------------------------

GET, SET, ADD, REPLACE, DELETE, INCREMENT, DECREMENT, QUIT = range(0x00, 0x08)
FLUSH, GETQ, NOOP, VERSION, GETK, GETKQ, APPEND, PREPEND, STAT = range(0x08, 0x11)
SETQ, ADDQ, REPLACEQ, DELETEQ, INCREMENTQ, DECREMENTQ, QUITQ, FLUSHQ = range(0x11, 0x19)
APPENDQ, PREPENDQ, VERBOSITY, TOUCH, GAT, GATQ = range(0x19, 0x1F)
SASL_LIST_MECHS, SASL_AUTH, SASL_STEP, GATK, GATKQ = range(0x20, 0x25)

# -- status codes, and the words memcached sends with each ----------------------

SUCCESS = 0x00
KEY_ENOENT = 0x01
KEY_EEXISTS = 0x02
E2BIG = 0x03
EINVAL = 0x04
NOT_STORED = 0x05
DELTA_BADVAL = 0x06
AUTH_ERROR = 0x20
AUTH_CONTINUE = 0x21
UNKNOWN_COMMAND = 0x81
ENOMEM = 0x82

MESSAGES = {
    ENOMEM: b"Out of memory",
    UNKNOWN_COMMAND: b"Unknown command",
    KEY_ENOENT: b"Not found",
    EINVAL: b"Invalid arguments",
    KEY_EEXISTS: b"Data exists for key.",
    E2BIG: b"Too large.",
    DELTA_BADVAL: b"Non-numeric server-side value for incr or decr",
    NOT_STORED: b"Not stored.",
    AUTH_ERROR: b"Auth failure.",
}

#: What SASL_LIST_MECHS answers: the one mechanism checked against the auth file.
MECHANISMS = b"PLAIN"
_AUTHENTICATED = b"Authenticated"
#: memcached's words when a store runs out of memory (out_of_memory(), prefix dropped).
_NO_MEMORY = b"Out of memory allocating item"
_NO_MEMORY_NEW = b"Out of memory allocating new item"
_INTERNAL = b"internal error"


def response(
    opcode: int,
    status: int = SUCCESS,
    opaque: int = 0,
    cas: int = 0,
    extras: bytes = b"",
    key: bytes = b"",
    value: bytes = b"",
) -> bytes:
    """One reply packet: the header, then extras, key and value."""
    body = len(extras) + len(key) + len(value)
    return _pack_header(RESPONSE, opcode, len(key), len(extras), 0, status, body, opaque, cas) + extras + key + value


def error(opcode: int, status: int, opaque: int, message: Optional[bytes] = None) -> bytes:
    """An error reply with memcached's words for ``status`` (or ``message``)."""
    text = MESSAGES[status] if message is None else message
    return _pack_header(RESPONSE, opcode, 0, 0, 0, status, len(text), opaque, 0) + text


def request(
    opcode: int, key: bytes = b"", value: bytes = b"", extras: bytes = b"", opaque: int = 0, cas: int = 0
) -> bytes:
    """One request packet (for tests, benchmarks and clients of our own)."""
    body = len(extras) + len(key) + len(value)
    return _pack_header(REQUEST, opcode, len(key), len(extras), 0, 0, body, opaque, cas) + extras + key + value


@mypyc_attr(native_class=False)  # a subclass of bytes stays a Python class when compiled
class Quiet(bytes):
    """The reply a quiet opcode kept to itself: empty on the wire, but it
    remembers the request, so that a batch that could not be written can
    still tell the client this request failed (see
    :meth:`BinarySession.failed_reply`)."""

    opcode: int
    opaque: int

    def __new__(cls, opcode: int, opaque: int) -> "Quiet":
        self = bytes.__new__(cls)
        self.opcode = opcode
        self.opaque = opaque
        return self


# -- the opcodes ------------------------------------------------------------------

#: A handler gets the session, the request's opcode, opaque and cas, its
#: extras, key and value, and returns the reply (empty or a Quiet: none).
Handler = Callable[["BinarySession", int, int, int, bytes, bytes, bytes], Union[bytes, None]]


class Op(NamedTuple):
    """One row of the opcode table."""

    handler: Handler
    #: memcached's shape check of (extras length, key length, body length);
    #: a packet that fails it is answered EINVAL and the connection closed.
    fits: Callable[[int, int, int], bool]
    #: whether the value is read (else it is skipped unread)
    value: bool = False


def _no_body(ext: int, key: int, body: int) -> bool:
    return body == 0  # key and extras fit in the body, already checked


def _keyed(ext: int, key: int, body: int) -> bool:
    return ext == 0 and key > 0 and body == key


def _storage(ext: int, key: int, body: int) -> bool:
    return ext == 8 and key > 0


def _concat_shape(ext: int, key: int, body: int) -> bool:
    return ext == 0 and key > 0


def _arith_shape(ext: int, key: int, body: int) -> bool:
    return ext == 20 and key > 0 and body == key + ext


def _flush_shape(ext: int, key: int, body: int) -> bool:
    return key == 0 and body == ext and ext in (0, 4)


def _touch_shape(ext: int, key: int, body: int) -> bool:
    return ext == 4 and key > 0


def _stat_shape(ext: int, key: int, body: int) -> bool:
    return ext == 0


def _sasl_shape(ext: int, key: int, body: int) -> bool:
    return ext == 0 and key > 0


def _key_state(key: bytes) -> int:
    """How an item stored under a binary-protocol key records it (see the module docstring)."""
    return 0 if is_plain_key(key) else BINARY_KEY


def _get(s: BinarySession, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes) -> bytes | None:
    """GET, GETQ, GETK, GETKQ."""
    blob = s.store.get_many([key])[0]
    if blob is None:
        if op == GETK:
            return _pack_header(RESPONSE, op, len(key), 0, 0, KEY_ENOENT, len(key), opaque, 0) + key
        return None if op != GET else error(op, KEY_ENOENT, opaque)  # GETQ and GETKQ keep misses quiet
    _, _, _, item_cas, _, flags, _, _ = unpack_meta(blob)
    data = item_value(blob)
    if op in (GET, GETQ):
        return _GET_REPLY(RESPONSE, op, 0, 4, 0, 0, 4 + len(data), opaque, item_cas, flags) + data
    n = len(key)
    return _GET_REPLY(RESPONSE, op, n, 4, 0, 0, 4 + n + len(data), opaque, item_cas, flags) + key + data


def _touch(s: BinarySession, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes) -> bytes | None:
    """TOUCH, GAT, GATQ, GATK, GATKQ: counted as touches, as memcached counts them."""
    found = s.store.gat([key], _EXPTIME(extras)[0])
    with_key = op in (GATK, GATKQ)
    if not found:
        if op in (GATQ, GATKQ):
            return None
        if with_key:
            return _pack_header(RESPONSE, op, len(key), 0, 0, KEY_ENOENT, len(key), opaque, 0) + key
        return error(op, KEY_ENOENT, opaque)
    item = found[0][1]
    data = b"" if op == TOUCH else item.value
    n = len(key) if with_key else 0
    return _GET_REPLY(RESPONSE, op, n, 4, 0, 0, 4 + n + len(data), opaque, item.cas, item.flags) + key[:n] + data


def _stored(op: int, opaque: int, cas: int, quiet: bool) -> bytes:
    if quiet:
        return Quiet(op, opaque)
    return _pack_header(RESPONSE, op, 0, 0, 0, SUCCESS, 0, opaque, cas)


def _refused(op: int, opaque: int, outcome: Outcome) -> bytes:
    """A storage opcode's refusal, in memcached's status for it (complete_update_bin)."""
    if outcome == Outcome.EXISTS:
        return error(op, KEY_EEXISTS, opaque)
    if outcome == Outcome.NOT_FOUND:
        return error(op, KEY_ENOENT, opaque)
    kind = _BASE[op]  # NOT_STORED: an add of a present key, a replace of a missing one...
    return error(op, KEY_EEXISTS if kind == ADD else KEY_ENOENT if kind == REPLACE else NOT_STORED, opaque)


def _update(s: BinarySession, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes) -> bytes:
    """SET, ADD, REPLACE and their quiet forms; a non-zero cas makes any of them a cas."""
    flags, exptime = _SET_EXTRAS(extras)
    store = s.store
    kind = _BASE[op]
    state = _key_state(key)
    if kind == SET and not cas and not state:  # the common case, spelled out for speed
        return _stored(op, opaque, store.set(key, value, flags, exptime), op == SETQ)
    # as memcached: a cas the item keeps (not under -C) makes the request a cas
    mode = Mode.CAS if cas and store.cas_enabled else _MODES[kind]
    outcome, new_cas = store.store(mode, key, value, flags, exptime, cas, key_state=state, unlink=kind == SET)
    if outcome != Outcome.STORED:
        return _refused(op, opaque, outcome)
    return _stored(op, opaque, new_cas, op != kind)


def _concat(s: BinarySession, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes) -> bytes:
    """APPEND, PREPEND and their quiet forms; a cas, if given, must match."""
    kind = _BASE[op]
    outcome, new_cas = s.store.store(_MODES[kind], key, value, cas=cas, limit=s.settings.max_item_size)
    if outcome != Outcome.STORED:
        return _refused(op, opaque, outcome)
    return _stored(op, opaque, new_cas, op != kind)


def _delete(s: BinarySession, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes) -> bytes:
    outcome = s.store.delete(key, cas)
    if outcome != Outcome.DELETED:
        return error(op, KEY_EEXISTS if outcome == Outcome.EXISTS else KEY_ENOENT, opaque)
    return _stored(op, opaque, 0, op == DELETEQ)


def _arith(s: BinarySession, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes) -> bytes:
    """INCREMENT, DECREMENT and their quiet forms: a missing counter is
    created with the initial value unless the expiration is 0xffffffff."""
    delta, initial, exptime = _ARITH_EXTRAS(extras)
    store = s.store
    kind = _BASE[op]
    create = None if exptime == NO_CREATE else (initial, exptime)
    with store.atomic():
        try:
            counted = store.arith(key, delta, kind == INCREMENT, cas, create=create, key_state=_key_state(key))
        except NonNumeric:
            return error(op, DELTA_BADVAL, opaque)
        except OutOfMemory:
            return error(op, ENOMEM, opaque, _NO_MEMORY_NEW if store.peek(key) is None else _NO_MEMORY)
    if counted.outcome != Outcome.STORED:
        return _refused(op, opaque, counted.outcome)
    if op != kind:
        return Quiet(op, opaque)
    return _pack_header(RESPONSE, op, 0, 0, 0, SUCCESS, 8, opaque, counted.cas) + _U64(counted.number)


def _flush(s: BinarySession, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes) -> bytes:
    if not s.settings.flush_enabled:
        return error(op, AUTH_ERROR, opaque)  # memcached's answer under -F (and, unlike the text verb, not counted)
    s.store.flush_all(_EXPTIME(extras)[0] if extras else 0)
    return _stored(op, opaque, 0, op == FLUSHQ)


def _noop(s: BinarySession, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes) -> bytes:
    return response(op, opaque=opaque)


def _version(s: BinarySession, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes) -> bytes:
    return response(op, opaque=opaque, value=PROTOCOL_VERSION.encode("ascii"))


def _quit(s: BinarySession, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes) -> bytes:
    s.close()
    return b"" if op == QUITQ else response(op, opaque=opaque)


def _stat(s: BinarySession, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes) -> bytes:
    """STAT [group]: one packet per statistic, then an empty one.

    The group is the key; memcached matches ``reset``, ``settings`` and
    ``detail`` as prefixes, and answers a group it does not know KEY_ENOENT.
    """
    end = response(op, opaque=opaque)
    if key.startswith(b"reset"):
        reset_stats(s)
        return end
    if key.startswith(b"detail"):
        return _stat_detail(s, op, opaque, key[6:])
    group = None if not key else b"settings" if key.startswith(b"settings") else key
    try:
        lines = stats_lines(s, group)
    except ProtocolError:
        return error(op, KEY_ENOENT, opaque)
    parts = [response(op, opaque=opaque, key=name.encode(), value=str(v).encode()) for name, v in lines]
    parts.append(end)
    return b"".join(parts)


def _stat_detail(s: BinarySession, op: int, opaque: int, rest: bytes) -> bytes:
    """STAT ``detail on``, ``detail off`` or ``detail dump``, as memcached's
    process_bin_stat: the dump comes as one statistic named ``detailed``
    (the text protocol's lines, END included); any other word is KEY_ENOENT."""
    end = response(op, opaque=opaque)
    for word in (b"dump", b"on", b"off"):
        if rest.startswith(b" " + word):
            dump = stats_detail(s, word)
            return end if dump is None else response(op, opaque=opaque, key=b"detailed", value=dump) + end
    return error(op, KEY_ENOENT, opaque)


def _sasl_mechs(s: BinarySession, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes) -> bytes:
    if s.auth is None:
        return error(op, UNKNOWN_COMMAND, opaque)
    return response(op, opaque=opaque, value=MECHANISMS)


def _sasl(s: BinarySession, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes) -> bytes:
    """SASL_AUTH and SASL_STEP with PLAIN: ``authzid NUL user NUL password``.

    As memcached (with Cyrus SASL), an empty SASL_AUTH is answered
    AUTH_CONTINUE with an empty challenge and the credentials come in a
    SASL_STEP; every attempt first drops an earlier authentication.
    """
    auth = s.auth
    if auth is None:
        return error(op, UNKNOWN_COMMAND, opaque)
    s.authenticated = False
    started, s.sasl_started = s.sasl_started, False
    if op == SASL_AUTH and key == MECHANISMS and not value:
        s.sasl_started = True
        return _pack_header(RESPONSE, op, 0, 0, 0, AUTH_CONTINUE, 0, opaque, 0)
    if key != MECHANISMS or (op == SASL_STEP and not started):
        auth.check(b"", b"")  # counted as a failed attempt (auth_cmds, auth_errors), as memcached does
        return error(op, AUTH_ERROR, opaque)
    fields = value.split(b"\0")
    if len(fields) != 3 or not auth.check(fields[1], fields[2]):
        log.info("SASL PLAIN authentication failed for user %r", fields[1:2])
        if len(fields) != 3:
            auth.check(b"", b"")
        return error(op, AUTH_ERROR, opaque)
    s.authenticated = True
    return response(op, opaque=opaque, value=_AUTHENTICATED)


_GETS = Op(_get, _keyed)
_UPDATE = Op(_update, _storage, value=True)
_CONCAT = Op(_concat, _concat_shape, value=True)
_ARITH = Op(_arith, _arith_shape)
_TOUCHES = Op(_touch, _touch_shape)
_DELETE = Op(_delete, _keyed)

#: opcode -> row. VERBOSITY is missing on purpose: memcached 1.6.18 answers it UNKNOWN_COMMAND.
TABLE: dict[int, Op] = {
    GET: _GETS,
    GETQ: _GETS,
    GETK: _GETS,
    GETKQ: _GETS,
    SET: _UPDATE,
    SETQ: _UPDATE,
    ADD: _UPDATE,
    ADDQ: _UPDATE,
    REPLACE: _UPDATE,
    REPLACEQ: _UPDATE,
    APPEND: _CONCAT,
    APPENDQ: _CONCAT,
    PREPEND: _CONCAT,
    PREPENDQ: _CONCAT,
    DELETE: _DELETE,
    DELETEQ: _DELETE,
    INCREMENT: _ARITH,
    INCREMENTQ: _ARITH,
    DECREMENT: _ARITH,
    DECREMENTQ: _ARITH,
    QUIT: Op(_quit, _no_body),
    QUITQ: Op(_quit, _no_body),
    FLUSH: Op(_flush, _flush_shape),
    FLUSHQ: Op(_flush, _flush_shape),
    NOOP: Op(_noop, _no_body),
    VERSION: Op(_version, _no_body),
    STAT: Op(_stat, _stat_shape),
    TOUCH: _TOUCHES,
    GAT: _TOUCHES,
    GATQ: _TOUCHES,
    GATK: _TOUCHES,
    GATKQ: _TOUCHES,
    SASL_LIST_MECHS: Op(_sasl_mechs, _no_body),
    SASL_AUTH: Op(_sasl, _sasl_shape, value=True),
    SASL_STEP: Op(_sasl, _sasl_shape, value=True),
}

#: each quiet opcode's loud form (and each loud one's own)
_BASE = {op: op for op in TABLE}
_BASE.update(
    {
        GETQ: GET,
        GETKQ: GETK,
        SETQ: SET,
        ADDQ: ADD,
        REPLACEQ: REPLACE,
        APPENDQ: APPEND,
        PREPENDQ: PREPEND,
        DELETEQ: DELETE,
        INCREMENTQ: INCREMENT,
        DECREMENTQ: DECREMENT,
        QUITQ: QUIT,
        FLUSHQ: FLUSH,
        GATQ: GAT,
        GATKQ: GATK,
    }
)
#: what an unauthenticated connection may send (memcached's authenticated())
_OPEN = frozenset([SASL_LIST_MECHS, SASL_AUTH, SASL_STEP, VERSION])
#: answered together when they come in a row (see BinarySession._run)
_QUIET_GETS = frozenset([GETQ, GETKQ])
#: storage opcodes whose value is bounded by the item size limit (E2BIG past it)
_LIMITED = frozenset([SET, SETQ, ADD, ADDQ, REPLACE, REPLACEQ, APPEND, APPENDQ, PREPEND, PREPENDQ])
#: what each storage opcode is for the store
_MODES = {SET: Mode.SET, ADD: Mode.ADD, REPLACE: Mode.REPLACE, APPEND: Mode.APPEND, PREPEND: Mode.PREPEND}


def _error_for(op: int, opaque: int, exc: ProtocolError) -> bytes:
    """A store's refusal, in the binary protocol's words."""
    if isinstance(exc, OutOfMemory):
        return error(op, ENOMEM, opaque, _NO_MEMORY)
    if isinstance(exc, ClientError):
        return error(op, EINVAL, opaque)
    return error(op, ENOMEM, opaque, exc.message.encode("ascii", "replace") or None)


class BinarySession(Session):
    """Framing and dispatch of memcached's binary protocol for one connection.

    Built with the same arguments as a :class:`Session`; ``feed()`` is the
    text session's, so batching and durability are shared. With an auth file,
    the connection counts as mid-request (the read timeout bounds it) until
    SASL succeeds: the text protocol's login (a ``set`` of "user password")
    does not apply, this protocol authenticates with SASL.
    """

    #: an empty SASL_AUTH was answered AUTH_CONTINUE: a SASL_STEP may follow
    #: (a default here, not an ``__init__`` of its own passing ``*args`` on:
    #: mypyc miscompiles that)
    sasl_started: bool = False

    def failed_reply(self, reply: bytes, exc: ProtocolError) -> bytes:
        """The error packet that replaces ``reply`` when its batch could not be
        written: same opcode and opaque, memcached's status for a server-side
        failure (ENOMEM), even for a reply a quiet opcode kept to itself."""
        if isinstance(reply, Quiet):
            return _error_for(reply.opcode, reply.opaque, exc)
        if len(reply) < HEADER_SIZE:
            return b""
        _, op, _, _, _, _, _, opaque, _ = _unpack_header(reply)
        return _error_for(op, opaque, exc)

    def _run(self, buf: bytes, out: list[bytes], pos: int = 0) -> int:
        """Answer every complete packet in ``buf`` from ``pos``; return how much was used.

        Quiet gets in a row (a client's multi-get: GETKQ per key, then NOOP)
        are answered together with one store call, before any other reply.
        """
        n = len(buf)
        gets: list[tuple[int, int, bytes]] = []  # quiet gets waiting to be answered together
        while n - pos >= HEADER_SIZE and not self.closing:
            magic, op, keylen, extlen, _, _, bodylen, opaque, cas = _unpack_header(buf, pos)
            start = pos + HEADER_SIZE
            key_at = start + extlen
            value_at = key_at + keylen
            if magic != REQUEST or value_at > n:
                break  # framing lost (closed below), or the extras and key first, as memcached reads them
            if op in _QUIET_GETS and not extlen and bodylen == keylen and 0 < keylen <= MAX_KEY and self.authenticated:
                gets.append((op, opaque, buf[key_at:value_at]))
                pos = value_at
                continue
            if gets:
                self._quiet_gets(gets, out)
                gets = []
            row = TABLE.get(op)
            refusal = self._refusal(row, op, keylen, extlen, bodylen, opaque)
            if refusal is not None:
                out.append(refusal)
                self.closing = True
                return n
            end = start + bodylen
            value = b""
            if row is None:
                out.append(error(op, UNKNOWN_COMMAND, opaque))
                pos = self._skip(end, n)  # its value is dropped; the stream stays in step
                continue
            if row.value:
                if end - value_at > self.settings.max_item_size:
                    pos = self._too_large(op, opaque, buf[key_at:value_at], end, n, out)
                    continue
                if end > n:
                    return pos  # wait for the rest of the value
                value = buf[value_at:end]
            reply = self._dispatch(row, op, opaque, cas, buf[start:key_at], buf[key_at:value_at], value)
            pos = end if end <= n else self._skip(end, n)
            if reply is not None:
                out.append(reply)
        if gets:
            self._quiet_gets(gets, out)
        if pos < n and buf[pos] != REQUEST and not self.closing:
            # framing is lost: memcached closes without a word (and waits for
            # 24 bytes first; here a first byte that is not a request is enough)
            log.info("closing a binary connection: bad magic byte 0x%02x", buf[pos])
            self.closing = True
            return n
        return pos

    def _refusal(
        self, row: Optional[Op], op: int, keylen: int, extlen: int, bodylen: int, opaque: int
    ) -> Optional[bytes]:
        """The error packet a request gets when it cannot be served and the
        connection must close after it (memcached's checks, in its order), or None."""
        if keylen + extlen > bodylen:
            return error(op, UNKNOWN_COMMAND, opaque)
        if bodylen > BODY_LIMIT:
            return error(op, EINVAL, opaque)
        if not self.authenticated and op not in _OPEN:
            return error(op, AUTH_ERROR, opaque)
        if keylen > MAX_KEY or (row is not None and not row.fits(extlen, keylen, bodylen)):
            return error(op, EINVAL, opaque)
        return None

    def _too_large(self, op: int, opaque: int, key: bytes, end: int, n: int, out: list[bytes]) -> int:
        """A value past the item size limit: refused before it is buffered,
        its bytes read and dropped. A storage opcode gets E2BIG and what the
        store does for a refused set (counted; a SET unlinks the old value,
        as memcached's process_bin_update does); another one ENOMEM."""
        pos = self._skip(end, n)
        if op not in _LIMITED:
            out.append(error(op, ENOMEM, opaque))
            return pos
        try:
            self.store.refused_set(key, too_large=True, unlink=_BASE[op] == SET, detail=True)
        except ProtocolError as exc:
            out.append(_error_for(op, opaque, exc))
            return pos
        out.append(error(op, E2BIG, opaque))
        return pos

    def _dispatch(
        self, row: Op, op: int, opaque: int, cas: int, extras: bytes, key: bytes, value: bytes
    ) -> Optional[bytes]:
        """The opcode's handler; a failure is answered, never raised."""
        try:
            return row.handler(self, op, opaque, cas, extras, key, value)
        except ProtocolError as exc:
            return _error_for(op, opaque, exc)
        except Exception:
            log.exception("binary opcode 0x%02x failed", op)
            return error(op, ENOMEM, opaque, _INTERNAL)

    def _quiet_gets(self, gets: list[tuple[int, int, bytes]], out: list[bytes]) -> None:
        """Answer the hits among quiet gets ``(opcode, opaque, key)``, in order."""
        try:
            found = self.store.get_many([key for _, _, key in gets])
        except Exception:
            log.exception("binary quiet gets failed")
            out.extend(error(op, ENOMEM, opaque, _INTERNAL) for op, opaque, _ in gets)
            return
        add = out.append
        for (op, opaque, key), blob in zip(gets, found, strict=True):
            if blob is None:
                continue  # a quiet get keeps its miss to itself
            _, _, _, cas, _, flags, _, _ = unpack_meta(blob)
            data = item_value(blob)
            if op == GETQ:
                add(_GET_REPLY(RESPONSE, op, 0, 4, 0, 0, 4 + len(data), opaque, cas, flags) + data)
            else:
                k = len(key)
                add(_GET_REPLY(RESPONSE, op, k, 4, 0, 0, 4 + k + len(data), opaque, cas, flags) + key + data)
