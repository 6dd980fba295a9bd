"""One client connection's protocol state, with no socket in sight.

A :class:`Session` is fed the bytes a client sent and returns the bytes to
send back: it frames command lines and data blocks, looks verbs up in the
registry and calls their handlers. Keeping sockets out of it lets the whole
protocol be tested on in-memory bytes; the server only moves bytes.
"""

from __future__ import annotations

import binascii
import logging
import random
import threading
from typing import TYPE_CHECKING, Any, Optional, Union

from ..errors import BadCommandLine, LineTooLong, LogWriteError, ProtocolError, TooLarge
from ..storage.numbers import U64
from .auth import MAX_AUTH_TOKEN
from .context import Host, Standalone
from .registry import Command, Registry, default_registry
from .settings import Settings
from .text import (
    ERROR,
    MAX_LINE,
    MAX_LONG_LINE,
    NOT_STORED,
    NOT_STORED_LITE,
    U32,
    check_key,
    parse_exptime,
    parse_length,
    parse_uint,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..storage.store import Store
    from .auth import AuthFile

log = logging.getLogger(__name__)

_INTERNAL_ERROR = b"SERVER_ERROR internal error\r\n"
_BAD_DATA_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
# memcached's words for its text-protocol authentication (proto_text.c)
_UNAUTHENTICATED = b"CLIENT_ERROR unauthenticated\r\n"
_AUTH_FAILURE = b"CLIENT_ERROR authentication failure\r\n"
_AUTH_BAD_FORMAT = b"CLIENT_ERROR bad authentication token format\r\n"
_AUTH_BAD_TERMINATION = b"CLIENT_ERROR bad command line termination\r\n"
_AUTH_STORED = b"STORED\r\n"
#: Verbs whose refused (too large) value also removes the key's old value, as
#: in memcached: a reader must not get the value an update failed to replace.
_UNLINK_WHEN_TOO_LARGE = frozenset((b"set", b"ms"))
#: The verbs memcached counts as sets in ``stats detail`` (not the meta ones).
_DETAIL_SETS = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas"))


def _always() -> bool:
    return True


class Session:
    """Framing and dispatch for one connection; handlers receive it as ``ctx``.

    Handlers use ``ctx.store``, ``ctx.settings``, ``ctx.lite`` and
    ``ctx.not_stored`` (the dialect's spelling of NOT_STORED); ``ctx.server``
    is the server object when there is one (for connection statistics), and
    ``ctx.close()`` ends the connection after the current reply. With ``auth``
    (a :class:`~memcachedlite.protocols.auth.AuthFile`), the client must
    authenticate before any handler runs (see ``_run_unauthenticated``).
    """

    def __init__(
        self,
        store: "Store",
        settings: Optional[Settings] = None,
        registry: Optional[Registry] = None,
        server: Optional[Host] = None,
        stop: Optional[threading.Event] = None,
        auth: AuthFile | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.server: Host = server if server is not None else Standalone()
        self.lite = self.settings.dialect == "lite"
        self.not_stored = NOT_STORED_LITE if self.lite else NOT_STORED
        self.closing = False
        self._table = (registry or default_registry).table()
        self._buf = b""  # what has arrived but is not a whole command yet
        self._swallow = 0
        self._stop = stop or threading.Event()
        self._delays = {b"set": 2.0, b"get": 1.0} if self.settings.simulate_delay else {}
        log_ = store.log
        # Batching holds the store's lock while a batch runs: not with the
        # simulated delays, which would hold it for seconds.
        self._batched = log_ is not None and not self._delays
        self._auth = auth
        if auth is not None:
            # Until the client authenticates, feed() runs the gate instead of
            # the dispatch loop; without auth the loop pays nothing for it.
            self._run = self._run_unauthenticated  # type: ignore[method-assign]
            # and the connection counts as mid-request: the server's read
            # timeout, not the idle one, bounds how long it may stay silent.
            self.pending = _always  # type: ignore[method-assign]

    @property
    def authenticated(self) -> bool:
        """False only while an auth file is in force and the client has not authenticated."""
        return "_run" not in self.__dict__

    def close(self) -> None:
        """Ask for the connection to be closed once the pending replies are sent."""
        self.closing = True

    def pending(self) -> bool:
        """Whether a request has begun arriving but is not complete yet."""
        return bool(self._buf) or self._swallow > 0

    def feed(self, data: Union[bytes, memoryview]) -> bytes:
        """Take bytes from the client; return the replies to every command now complete.

        Incomplete input (half a line, half a data block) is kept for the next
        call. Replies of a whole batch come back as one bytes object, so the
        server sends a pipelined batch with one write. With ``fsync=always``
        this waits until the disk has what the replies show.
        """
        replies, need = self.receive(data)
        if need and replies:
            replies = self.after_disk(need, replies)
        return b"".join(replies)

    def receive(self, data: Union[bytes, memoryview]) -> tuple[list[bytes], int]:
        """What :meth:`feed` does, without waiting for the disk: the replies,
        and the log position they may not leave before (0: none; see
        :meth:`Store.end_batch <memcachedlite.storage.durability.Durability.end_batch>`).

        The server calls this to hand replies that must wait to a courier
        (:mod:`memcachedlite.server.delivery`) instead of waiting itself.
        """
        buf = self._take(data)
        if not buf:
            return [], 0
        out: list[bytes] = []
        need = 0
        store = self.store
        if not self._batched:
            pos = self._run(buf, out)
            if store.committer is not None:
                need = store.log.lsn  # type: ignore[union-attr]
        else:
            opened = store.begin_batch()  # one write to the data file for the whole batch
            try:
                pos = self._run(buf, out)
            finally:
                try:
                    need = store.end_batch(opened)
                except LogWriteError as exc:
                    # Undone in memory: acknowledge nothing of this batch.
                    out = [self.failed_reply(reply, exc) for reply in out]
        self._buf = buf[pos:] if pos < len(buf) else b""
        return out, need

    def _take(self, data: Union[bytes, memoryview]) -> bytes:
        """The bytes to parse: what was kept from the last call and ``data``,
        less what is left of a refused data block being swallowed."""
        if self._swallow:
            if len(data) <= self._swallow:
                self._swallow -= len(data)
                return b""
            data = data[self._swallow :]
            self._swallow = 0
        # bytes, not a bytearray: lines and data blocks are then sliced out
        # with one copy each; only an incomplete tail is carried over.
        return self._buf + data if self._buf else bytes(data)

    def after_disk(self, need: int, replies: list[bytes]) -> list[bytes]:
        """``replies`` once log position ``need`` is durable (this waits), or
        each one's error reply if it never will be."""
        try:
            self.store.wait_durable(need)
        except LogWriteError as exc:
            return [self.failed_reply(reply, exc) for reply in replies]
        return replies

    def failed_reply(self, reply: bytes, exc: ProtocolError) -> bytes:
        """What replaces ``reply`` when its batch could not be made durable.

        Every reply of such a batch becomes the error, so nothing is
        acknowledged; a reply that was empty (``noreply``) stays empty. A
        protocol with its own framing (the binary one) overrides this, and may
        answer an error even for an empty (quiet) reply.
        """
        return exc.to_bytes() if reply else b""

    def _run(self, buf: bytes, out: list[bytes], pos: int = 0) -> int:
        """Execute every complete command in ``buf`` from ``pos``; return how much was used."""
        table = self._table
        find = buf.find
        n = len(buf)
        while pos < n and not self.closing:
            eol = find(b"\n", pos)
            if eol < 0:
                self._check_partial_line(buf, pos)
                if self.closing:
                    out.append(LineTooLong().to_bytes())
                return n if self.closing else pos
            line = buf[pos : eol - 1] if eol > pos and buf[eol - 1] == 13 else buf[pos:eol]
            # memcached splits on spaces only (a tab stays inside a token and
            # makes the key invalid) and ignores runs of them.
            args = line.split(b" ")
            if b"" in args:
                args = [a for a in args if a]
                if not args:
                    out.append(ERROR)
                    pos = eol + 1
                    continue
            row = table.get(args[0])
            if row is None:
                if args[-1][:5] == b"HTTP/":
                    # memcached hangs up on what looks like HTTP, without a word,
                    # so a web page cannot use a browser to talk to the cache.
                    self.closing = True
                    return n
                out.append(ERROR)
                pos = eol + 1
                continue
            if row.batch is not None and not self._delays:
                # worth it only when another command follows this one
                follows = eol + 1
                if row.data is not None:
                    length = args[-2] if args[-1] == b"noreply" else args[-1]
                    follows += int(length) + 2 if length.isdigit() else n
                if follows < n:
                    after = self._run_batch(row, buf, pos, out)
                    if after:
                        pos = after
                        continue
            del args[0]
            noreply = False
            if row.noreply and (count := len(args)) > row.min_args:
                if count - 1 == row.max_args:
                    # memcached's optional last token: noreply, or anything, ignored
                    noreply = args.pop() == b"noreply"
                elif args[-1] == b"noreply" and (row.accepts(count) or row.accepts(count - 1)):
                    args.pop()
                    noreply = True
            if not row.accepts(len(args)):
                # A wrong number of tokens: memcached's bare ERROR, even under
                # noreply. Unless noreply was the token too many: memcached read
                # it as a number ("set k 0 0 noreply") and its error is silenced.
                if not noreply:
                    out.append(ERROR)
                pos = eol + 1
                continue
            data = None
            try:
                if row.data is not None:
                    if row.check is not None:
                        row.check(args)
                    length = parse_length(args[row.data])
                    start = eol + 1
                    if length > self.settings.max_item_size:
                        self.store.count("store_too_large")
                        pos = self._skip(start + length + 2, n)
                        if row.name in _UNLINK_WHEN_TOO_LARGE:
                            self._unlink_refused(args)
                        if self.store.prefixes.enabled:
                            self._count_refused_set(row.name, args)
                        raise TooLarge()
                    end = start + length
                    if end + 2 > n:
                        return pos  # wait for the rest of the data block
                    data = buf[start:end]
                    pos = end + 2
                    if buf[end:pos] != b"\r\n":
                        if self.store.prefixes.enabled:
                            self._count_refused_set(row.name, args)
                        if not noreply:
                            out.append(_BAD_DATA_CHUNK)
                        continue
                else:
                    pos = eol + 1
                if self._delays:
                    self._simulated_delay(row.name)
                reply = row.handler(self, args, data)
            except ProtocolError as exc:
                if pos <= eol:
                    pos = eol + 1
                # As memcached 1.6 does, noreply silences errors too: a client
                # that asked for no reply is not reading one.
                if not noreply:
                    out.append(exc.to_bytes())
                if exc.close:
                    self.closing = True
                continue
            except Exception:
                if pos <= eol:
                    pos = eol + 1
                log.exception("handler for %r failed", row.name)
                if not noreply:
                    out.append(_INTERNAL_ERROR)
                continue
            if reply and not noreply:
                out.append(reply)
        return pos

    def _run_batch(self, row: Command, buf: bytes, pos: int, out: list[bytes]) -> int:
        """Hand the run of complete, well-formed commands of ``row``'s verb
        that starts at ``pos`` to its batch form; return where the run ends,
        or 0 (nothing done) when fewer than two commands qualify."""
        pattern = row.batch_line
        match = pattern.match  # type: ignore[union-attr]
        groups = pattern.groupindex  # type: ignore[union-attr]
        quiet_at = groups.get("noreply")
        n = len(buf)
        requests: list[tuple[Any, Optional[bytes]]] = []
        add = requests.append
        at = pos
        if row.data is None:
            while (found := match(buf, at)) is not None:
                add((found, None))
                at = found.end()
        else:
            size_at = groups["length"]
            limit = self.settings.max_item_size
            while (found := match(buf, at)) is not None:
                start = found.end()
                end = start + int(found[size_at])
                if end - start > limit or end + 2 > n or buf[end : end + 2] != b"\r\n":
                    break  # the plain path refuses it, or waits for the rest
                add((found, buf[start:end]))
                at = end + 2
        if len(requests) < 2:
            return 0
        try:
            replies = row.batch(self, requests)  # type: ignore[misc]
        except Exception:
            log.exception("batch form of %r failed", row.name)
            replies = [_INTERNAL_ERROR] * len(requests)
        if quiet_at is None:
            out.extend(filter(None, replies))
        else:
            quiet = [found[quiet_at] for found, _ in requests]
            out.extend(reply for reply, hush in zip(replies, quiet, strict=True) if reply and not hush)
        return at

    def _run_unauthenticated(self, buf: bytes, out: list[bytes], pos: int = 0) -> int:
        """The gate before authentication, as memcached's ``-Y``.

        A ``set <key> <flags> <exptime> <bytes>`` whose data is ``user password``
        authenticates (``STORED``; the key is ignored and nothing is stored).
        Every other line is answered ``CLIENT_ERROR unauthenticated``, even
        under noreply, and a data block it announces is swallowed unread so the
        stream stays in step. Unlike memcached, the authenticating ``set``
        honours ``noreply`` (pymemcache sends it by default).
        """
        n = len(buf)
        while pos < n and not self.closing:
            eol = buf.find(b"\n", pos)
            if eol < 0:
                if n - pos > MAX_LINE:  # no long lines before authenticating
                    log.warning("closing a connection: command line of over %d bytes with no newline", MAX_LINE)
                    out.append(LineTooLong().to_bytes())
                    self.closing = True
                    return n
                return pos
            args = [a for a in bytes(buf[pos:eol]).rstrip(b"\r").split(b" ") if a]
            if len(args) >= 5 and args[0] == b"set":
                try:
                    length = parse_length(args[4])
                except ProtocolError:
                    out.append(_UNAUTHENTICATED)
                    pos = eol + 1
                    continue
                noreply = args[-1] == b"noreply" and len(args) > 5
                start = eol + 1
                if length > MAX_AUTH_TOKEN:
                    pos = self._skip(start + length + 2, n)
                    if not noreply:
                        out.append(_AUTH_BAD_FORMAT)
                    continue
                end = start + length
                if end + 2 > n:
                    return pos  # wait for the rest of the token
                pos = end + 2
                reply = self._authenticate(bytes(buf[start:end]), buf[end:pos] == b"\r\n")
                if not noreply:
                    out.append(reply)
                if reply is _AUTH_STORED:
                    return self._run(buf, out, pos)
                continue
            out.append(_UNAUTHENTICATED)
            pos = eol + 1
            row = self._table.get(args[0]) if args else None
            if row is not None and row.data is not None:
                if row.noreply and len(args) > row.min_args + 1 and args[-1] == b"noreply":
                    args.pop()
                # a line too short to hold the length (``ms k``) announces no block
                if row.accepts(len(args) - 1) and len(args) - 1 > row.data:
                    try:
                        length = parse_length(args[1:][row.data])
                    except ProtocolError:
                        continue
                    pos = self._skip(pos + length + 2, n)
        return pos

    def _authenticate(self, token: bytes, terminated: bool) -> bytes:
        if not terminated:
            return _AUTH_BAD_TERMINATION
        words = [w for w in token.split(b" ") if w]
        if len(words) < 2:
            return _AUTH_BAD_FORMAT
        assert self._auth is not None
        if not self._auth.check(words[0], words[1]):
            log.info("authentication failed for user %r", words[0].decode("utf-8", "replace"))
            return _AUTH_FAILURE
        del self._run, self.pending  # back to the class's own methods
        return _AUTH_STORED

    def _count_refused_set(self, verb: bytes, args: list[bytes]) -> None:
        """``stats detail`` counts a classic storage command memcached parsed,
        even when its data is then refused (too large, bad data chunk)."""
        if verb not in _DETAIL_SETS or len(args) < 4:
            return
        try:
            check_key(args[0])
            parse_uint(args[1], U32)
            parse_exptime(args[2])
            if verb == b"cas":
                parse_uint(args[4], U64)
        except BadCommandLine:
            return  # memcached refuses the line before counting
        self.store.prefixes.record_set(args[0])

    def _unlink_refused(self, args: list[bytes]) -> None:
        """Remove the old value of the key a refused ``set``/``ms`` named."""
        key = args[0]
        if b"b" in args[2:]:  # a meta key given in base64
            try:
                key = binascii.a2b_base64(key)
            except binascii.Error:
                return
        try:
            check_key(key)
        except BadCommandLine:
            return
        self.store.unlink(key)

    def _skip(self, end: int, n: int) -> int:
        """Swallow a refused data block up to ``end``, even past what has arrived."""
        if end <= n:
            return end
        self._swallow = end - n
        return n

    def _check_partial_line(self, buf: bytes, pos: int) -> None:
        """Close the connection when a line grows past its limit without a newline."""
        pending = len(buf) - pos
        if pending <= MAX_LINE:
            return
        verb = bytes(buf[pos : pos + 32].split(b" ", 1)[0])
        row = self._table.get(verb)
        if row is not None and row.long_line and pending <= MAX_LONG_LINE:
            return
        log.warning("closing a connection: command line of over %d bytes with no newline", MAX_LINE)
        self.closing = True

    def _simulated_delay(self, verb: bytes) -> None:
        most = self._delays.get(verb)
        if most:
            # waits on the stop event, not time.sleep: shutting down cuts it short
            self._stop.wait(random.uniform(0.0, most))
