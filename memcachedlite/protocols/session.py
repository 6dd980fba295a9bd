"""One client connection's protocol state, with no socket in sight.

A :class:`Session` is fed the bytes a client sent and returns the bytes to
send back: it frames command lines and data blocks, looks verbs up in the
registry and calls their handlers. Keeping sockets out of it lets the whole
protocol be tested on in-memory bytes; the server only moves bytes.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from typing import TYPE_CHECKING, Final, Optional, Union

from ..buildinfo import refuse_python_subclass
from ..errors import BadDataChunk, LineTooLong, LogWriteError, ProtocolError, TooLarge
from .auth import MAX_AUTH_TOKEN
from .context import Host, Standalone
from .registry import Command, Registry, default_registry
from .settings import Settings
from .text import (
    ERROR,
    MAX_LINE,
    MAX_LONG_LINE,
    MN,
    NOT_STORED,
    NOT_STORED_LITE,
    SILENT,
    parse_length,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..storage.store import Store
    from .auth import AuthFile

log = logging.getLogger(__name__)

_INTERNAL_ERROR: Final = b"SERVER_ERROR internal error\r\n"
# memcached's words for its text-protocol authentication (proto_text.c)
_UNAUTHENTICATED: Final = b"CLIENT_ERROR unauthenticated\r\n"
_AUTH_FAILURE: Final = b"CLIENT_ERROR authentication failure\r\n"
_AUTH_BAD_FORMAT: Final = b"CLIENT_ERROR bad authentication token format\r\n"
_AUTH_BAD_TERMINATION: Final = b"CLIENT_ERROR bad command line termination\r\n"
_AUTH_STORED: Final = b"STORED\r\n"


class Session:
    """Framing and dispatch for one connection; handlers receive it as ``ctx``.

    Handlers use ``ctx.store``, ``ctx.settings``, ``ctx.lite`` and
    ``ctx.not_stored`` (the dialect's spelling of NOT_STORED); ``ctx.server``
    is the server object when there is one (for connection statistics), and
    ``ctx.close()`` ends the connection after the current reply. With ``auth``
    (a :class:`~memcachedlite.protocols.auth.AuthFile`), the client must
    authenticate before any handler runs (see ``_run_login``).
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        refuse_python_subclass(cls, Session)  # on the compiled build, with a clear message
        super().__init_subclass__(**kwargs)

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
        #: the users a client must log in as before anything else (None: no login)
        self.auth = auth
        #: False only while an auth file is in force and the client has not logged in
        self.authenticated = auth is None

    def close(self) -> None:
        """Ask for the connection to be closed once the pending replies are sent."""
        self.closing = True

    def pending(self) -> bool:
        """Whether a request has begun arriving but is not complete yet. A
        client yet to log in counts as mid-request: the server's read timeout,
        not the idle one, bounds how long it may stay silent."""
        return bool(self._buf) or self._swallow > 0 or not self.authenticated

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
        acknowledged: a quiet meta command's silence too (:data:`SILENT`),
        while a ``noreply`` command's nothing stays nothing (memcached's
        noreply silences errors). ``mn``'s ``MN`` is left as it is: it ends
        a quiet pipeline, and a client waits for it. A protocol with its own
        framing (the binary one) overrides this.
        """
        if reply is SILENT or (reply and reply != MN):
            return exc.to_bytes()
        return reply

    def _run(self, buf: bytes, out: list[bytes], pos: int = 0) -> int:
        """Execute every complete command in ``buf`` from ``pos``; return how much was used."""
        if not self.authenticated:
            return self._run_login(buf, out, pos)
        table = self._table
        find = buf.find
        n = len(buf)
        while pos < n and not self.closing:
            eol = find(b"\n", pos)
            if eol < 0:
                return self._incomplete_line(buf, pos, out)
            # the tokens: memcached splits on spaces only (a tab stays inside a
            # token and makes the key invalid) and ignores runs of them
            args = (buf[pos : eol - 1] if eol > pos and buf[eol - 1] == 13 else buf[pos:eol]).split(b" ")
            if b"" in args:
                args = [a for a in args if a]
            row = table.get(args[0]) if args else None
            if row is None:
                pos = self._not_a_command(args, eol, n, out)
                continue
            after = self._command(row, args, buf, pos, eol, out)
            if after == pos:
                return pos  # wait for the rest of its data block
            pos = after
        return pos

    def _incomplete_line(self, buf: bytes, pos: int, out: list[bytes]) -> int:
        """A line without its newline yet: wait for the rest, unless it has
        grown past its limit (then the connection closes after an error)."""
        self._check_partial_line(buf, pos)
        if self.closing:
            out.append(LineTooLong().to_bytes())
            return len(buf)
        return pos

    def _not_a_command(self, args: list[bytes], eol: int, n: int, out: list[bytes]) -> int:
        """An empty line or an unknown verb: ``ERROR``. memcached hangs up,
        without a word, on what looks like HTTP, so that a web page cannot
        use a browser to talk to the cache."""
        if args and args[-1][:5] == b"HTTP/":
            self.closing = True
            return n
        out.append(ERROR)
        return eol + 1

    def _command(self, row: Command, args: list[bytes], buf: bytes, start: int, eol: int, out: list[bytes]) -> int:
        """Run the command whose line is ``buf[start:eol]`` (``args`` its
        tokens, the verb first): its arguments, noreply, its data block, the
        handler, the reply; or, when more commands of a verb with a batch form
        follow, the whole run of them. Returns where the next command starts
        (``start``: the data block has not all arrived yet)."""
        if (
            row.batch is not None
            and row.data is None
            and eol + 1 < len(buf)
            and (after := self._run_batch(row, buf, start, out))
        ):
            return after
        del args[0]
        noreply = False
        if row.noreply and len(args) > row.min_args and (args[-1] == b"noreply" or len(args) - 1 == row.max_args):
            noreply = self._noreply(row, args)
        count = len(args)
        if not (count in row.arities if row.arities is not None else count >= row.min_args):  # row.accepts, inlined
            # A wrong number of tokens: memcached's bare ERROR, even under
            # noreply. Unless noreply was the token too many: memcached read
            # it as a number ("set k 0 0 noreply") and its error is silenced.
            if not noreply:
                out.append(ERROR)
            return eol + 1
        pos = eol + 1
        data = None
        try:
            if row.data is not None:
                data, pos = self._data_block(row, args, buf, start, eol, noreply, out)
                if data is None:
                    return pos
            if self._delays:
                self._simulated_delay(row.name)
            reply = row.handler(self, args, data)
        except ProtocolError as exc:
            # As memcached 1.6 does, noreply silences errors too: a client
            # that asked for no reply is not reading one.
            if not noreply:
                out.append(exc.to_bytes())
            if exc.close:
                self.closing = True
            return pos
        except Exception:
            log.exception("handler for %r failed", row.name)
            if not noreply:
                out.append(_INTERNAL_ERROR)
            return pos
        if reply and not noreply or reply is SILENT:
            out.append(reply)
        return pos

    def _data_block(
        self, row: Command, args: list[bytes], buf: bytes, start: int, eol: int, noreply: bool, out: list[bytes]
    ) -> tuple[Optional[bytes], int]:
        """The data block after the line ``buf[start:eol]``, read whole
        before it is judged: (the block, where the next command starts), or
        no block and ``start`` while it has not all arrived, or no block and
        the end of the run when the batch form took it, or no block and the
        end of the block when it was refused (answered here): too large (it
        is swallowed, even past what has arrived) or not ended by CRLF.
        A bad line raises, and the block is then read as the next command."""
        if row.check is not None:
            row.check(args)
        n = len(buf)
        end = eol + 1 + parse_length(args[row.data])  # type: ignore[index]
        if end - eol - 1 > self.settings.max_item_size:
            after = self._skip(end + 2, n)
            self._refuse_block(row, args, True, noreply, out)
            return None, after
        if end + 2 > n:
            return None, start  # wait for the rest of the data block
        if row.batch is not None and end + 2 < n and (after := self._run_batch(row, buf, start, out)):
            return None, after
        if buf[end : end + 2] != b"\r\n":
            self._refuse_block(row, args, False, noreply, out)
            return None, end + 2
        return buf[eol + 1 : end], end + 2

    @staticmethod
    def _noreply(row: Command, args: list[bytes]) -> bool:
        """Whether the command's last token asks for no reply (then it is taken off ``args``)."""
        count = len(args)
        if count - 1 == row.max_args:
            # memcached's optional last token: noreply, or anything, ignored
            return args.pop() == b"noreply"
        if args[-1] == b"noreply" and (row.accepts(count) or row.accepts(count - 1)):
            args.pop()
            return True
        return False

    def _refuse_block(self, row: Command, args: list[bytes], too_large: bool, noreply: bool, out: list[bytes]) -> None:
        """Answer a data block refused before the handler sees it (too large,
        or not ended by CRLF; already swallowed). What memcached does for the
        command then is the verb's own business (``row.refused``: count it,
        unlink the old value); a verb with no say is counted as too large.
        The reply is the refusal, or the store's error if it could not do that."""
        refusal: ProtocolError = TooLarge() if too_large else BadDataChunk()
        try:
            if row.refused is not None:
                row.refused(self, args, too_large)
            elif too_large:
                self.store.refused_set(None, too_large=True)
        except ProtocolError as exc:  # the store could not unlink the old value (a full disk)
            refusal = exc
        except Exception:
            log.exception("refused hook of %r failed", row.name)
        if not noreply:
            out.append(refusal.to_bytes())

    def _run_batch(self, row: Command, buf: bytes, pos: int, out: list[bytes]) -> int:
        """Hand the run of complete, well-formed commands of ``row``'s verb
        that starts at ``pos`` to its batch form; return where the run ends,
        or 0 (nothing done) when fewer than two commands qualify. (Not with
        the simulated delays, which are per command.)"""
        if self._delays:
            return 0
        pattern: re.Pattern[bytes] = row.batch_line  # type: ignore[assignment]
        groups = pattern.groupindex
        quiet_at = groups.get("noreply")
        n = len(buf)
        requests: list[tuple[re.Match[bytes], Optional[bytes]]] = []
        at = pos
        found: Optional[re.Match[bytes]]
        if row.data is None:
            while (found := pattern.match(buf, at)) is not None:
                requests.append((found, None))
                at = found.end()
        else:
            size_at: int = groups["length"]
            limit = self.settings.max_item_size
            # typed, so that the compiled build does this arithmetic and
            # slicing on machine integers rather than on Python objects
            start: int
            end: int
            while (found := pattern.match(buf, at)) is not None:
                start = found.end()
                end = start + int(found[size_at])
                # a user's pattern may let a negative length through: the
                # plain path refuses it (and mypyc 2.4 compiles a bytes slice
                # whose start lies past its end into SystemError, not b"")
                if not 0 <= end - start <= limit or end + 2 > n or buf[end : end + 2] != b"\r\n":
                    break  # the plain path refuses it, or waits for the rest
                requests.append((found, buf[start:end]))
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

    def _run_login(self, buf: bytes, out: list[bytes], pos: int = 0) -> int:
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
                if self.authenticated:
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
        assert self.auth is not None
        if not self.auth.check(words[0], words[1]):
            log.info("authentication failed for user %r", words[0].decode("utf-8", "replace"))
            return _AUTH_FAILURE
        self.authenticated = True
        return _AUTH_STORED

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
