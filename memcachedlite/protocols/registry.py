"""The command table: one row per protocol verb, filled by a decorator.

The built-in verbs in :mod:`memcachedlite.protocols.commands` register exactly the way a
user's module does::

    from memcachedlite import command

    @command("upper", min_args=1, max_args=1)
    def upper(ctx, args, data):
        "upper <key>"
        ...

A handler receives the connection's session (a :class:`~memcachedlite.protocols.context.Context`:
(``ctx.store`` is the shared store), the arguments as a list of bytes (without
the verb and without a trailing ``noreply``) and the data block (bytes, or
``None`` for verbs that take none). It returns the reply bytes, CRLF included,
or ``None`` to send nothing, and raises a
:class:`~memcachedlite.errors.ProtocolError` to answer with an error line.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from ..buildinfo import refuse_python_subclass

# The first argument is the session running the command: a user's handler
# sees it as a :class:`~memcachedlite.protocols.context.Context`, the built-in
# ones as the concrete Session they were written for (Any: a Callable's
# arguments are contravariant, so either is to be accepted).
Handler = Callable[[Any, list, Optional[bytes]], Optional[bytes]]
#: What a verb with a data block does when the session refuses its block: (ctx, args, too_large).
RefusedHandler = Callable[[Any, list, bool], None]
#: A batch form: (ctx, [(match, data), ...]) -> one reply (or None) per request.
BatchHandler = Callable[[Any, list], list]


@dataclass(frozen=True)
class Command:
    """One row of the table.

    ``data`` is the index (into the arguments, after ``noreply`` is removed)
    of the argument announcing the length of a data block that follows the
    command line, or ``None`` when the verb takes no data block.
    ``long_line`` lets the command line exceed the usual limit, as memcached
    allows for ``get`` with many keys. ``arities``, when given, lists the only
    argument counts accepted (``set`` takes 2 or 4, never 3). ``check``, for
    verbs with a data block, vets the command line before the block is read:
    an error it raises leaves the block unread, to be taken as the next
    command (as memcached does for a meta set with a bad key). ``refused``,
    for verbs with a data block, is called as ``refused(ctx, args, too_large)``
    when the session refuses the block before the handler runs (too large,
    or not ended by CRLF), for what memcached does then: count it, unlink
    the key's old value (see :meth:`Store.refused_set
    <memcachedlite.storage.store.Store.refused_set>`). Without it, a block too
    large is counted in ``store_too_large`` and nothing else happens.

    ``batch`` and ``batch_line``, when given (see :meth:`Registry.add_batch`),
    let the session hand a run of pipelined commands of this verb to one
    call instead of one call each.
    """

    name: bytes
    handler: Handler
    min_args: int = 0
    max_args: Optional[int] = None
    data: Optional[int] = None
    noreply: bool = False
    long_line: bool = False
    mutates: bool = False
    arities: Optional[frozenset] = None
    check: Optional[Callable[[list], None]] = None
    refused: Optional[RefusedHandler] = None
    batch: Optional[BatchHandler] = None
    batch_line: Optional[re.Pattern] = None

    def accepts(self, count: int) -> bool:
        """Whether ``count`` arguments (``noreply`` removed) fit this verb."""
        if self.arities is not None:  # every bounded row has its counts listed
            return count in self.arities
        return count >= self.min_args


class Registry:
    """Maps verbs to :class:`Command` rows. Taking a name twice is an error."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        refuse_python_subclass(cls, Registry)  # on the compiled build, with a clear message
        super().__init_subclass__(**kwargs)

    def __init__(self) -> None:
        self._commands: dict[bytes, Command] = {}

    def add(
        self,
        name: Union[str, bytes],
        handler: Handler,
        *,
        min_args: int = 0,
        max_args: Optional[int] = None,
        data: Optional[int] = None,
        noreply: bool = False,
        long_line: bool = False,
        mutates: bool = False,
        arities: Optional[Iterable[int]] = None,
        check: Optional[Callable[[list], None]] = None,
        refused: Optional[RefusedHandler] = None,
    ) -> Command:
        """Register ``handler`` for ``name``; the explicit form of :meth:`command`."""
        verb = name.encode("ascii") if isinstance(name, str) else bytes(name)
        if not verb or any(c <= 32 or c == 127 for c in verb):
            raise ValueError(f"invalid verb {name!r}")
        if verb in self._commands:
            raise ValueError(f"verb {verb.decode('ascii', 'replace')!r} is already registered")
        if max_args is not None and max_args < min_args:
            raise ValueError("max_args is smaller than min_args")
        allowed: Optional[frozenset] = None
        if arities is not None:
            allowed = counts = frozenset(arities)
            min_args, max_args = min(counts), max(counts)
        else:
            allowed = frozenset(range(min_args, max_args + 1)) if max_args is not None else None
        row = Command(verb, handler, min_args, max_args, data, noreply, long_line, mutates, allowed, check, refused)
        self._commands[verb] = row
        return row

    def command(self, name: Union[str, bytes, None] = None, **options: object) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`; the verb defaults to the function's name.

        Returns the function unchanged, so it can still be called directly.
        """

        def register(handler: Handler) -> Handler:
            self.add(name if name is not None else handler.__name__, handler, **options)  # type: ignore[arg-type]
            return handler

        return register

    def add_batch(self, name: Union[str, bytes], handler: BatchHandler, line: Union[bytes, re.Pattern]) -> Command:
        """Give the registered verb ``name`` a batch form.

        When a client pipelines several commands of the verb back to back,
        the session matches each command line with ``line`` (a regular
        expression of the whole line, CRLF included; for a verb with a data
        block, a group named ``length`` gives its length, and a group named
        ``noreply`` marks noreply) and calls ``handler(ctx, requests)`` once,
        with ``requests`` a list of ``(match, data)``. It returns one reply
        per request: bytes, None for no reply, or a request's error line,
        exactly what the plain handler would have answered or raised. A line
        the expression does not match, and a lone command, go to the plain
        handler, which stays the reference the batch form is tested against.
        """
        verb = name.encode("ascii") if isinstance(name, str) else bytes(name)
        row = self._commands.get(verb)
        if row is None:
            raise ValueError(f"verb {verb.decode('ascii', 'replace')!r} is not registered")
        pattern = re.compile(line) if isinstance(line, bytes) else line
        row = dataclasses.replace(row, batch=handler, batch_line=pattern)
        self._commands[verb] = row
        return row

    def remove(self, name: Union[str, bytes]) -> None:
        """Drop a verb; mostly for tests and for replacing a built-in on purpose."""
        verb = name.encode("ascii") if isinstance(name, str) else name
        del self._commands[verb]

    def get(self, verb: bytes) -> Optional[Command]:
        return self._commands.get(verb)

    def copy(self) -> "Registry":
        """A registry with the same rows, to extend without touching this one."""
        other = Registry()
        other._commands = dict(self._commands)
        return other

    def table(self) -> dict[bytes, Command]:
        """The live verb -> row mapping, for the session's dispatch loop."""
        return self._commands

    def __contains__(self, verb: object) -> bool:
        if isinstance(verb, str):
            verb = verb.encode("ascii")
        return verb in self._commands

    def __iter__(self) -> Iterator[Command]:
        return iter(list(self._commands.values()))

    def __len__(self) -> int:
        return len(self._commands)


#: The registry the server uses unless given another; ``@command`` fills it.
default_registry = Registry()


def command(name: Union[str, bytes, None] = None, **options: object) -> Callable[[Handler], Handler]:
    """Register a protocol verb in the default registry (see :class:`Registry`)."""
    return default_registry.command(name, **options)
