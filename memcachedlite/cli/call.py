"""``mcl call VERB [ARGS...]``: send any command line, a verb of one's own
included, and print the reply exactly as it came.

A verb of one's own may answer with any number of lines, so the end of its
reply cannot be told from the reply itself. ``mcl call`` sends ``mn`` (the
meta protocol's no-op, which answers ``MN``) after the command: replies come
back in order, so the reply is everything before ``MN``, however many lines
it has, and nothing at all for a ``noreply`` command. Data blocks announced
by ``VALUE`` and ``VA`` lines are read by their length, so a value holding
an ``MN`` line does not end the reply early. The server must know ``mn``
(memcached 1.6 and later, memcachedlite).
"""

from __future__ import annotations

import os

import click

from . import transfer
from .common import (
    TOO_LARGE_HINT,
    ServerReplyError,
    Unreachable,
    binary_only_message,
    binary_stream,
    closed_message,
    current_config,
    main,
    write_fully,
)
from .transfer import Connection

#: What ``mn`` answers: the end of the reply to the command before it.
END_MARK = b"MN\r\n"
_ERRORS = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")


def block_length(line: bytes) -> int | None:
    """The length of the data block a reply line announces (``VALUE <key>
    <flags> <bytes> [<cas>]``, the seed's ``VALUE <key> <bytes>``, ``VA
    <bytes> ...``), or None for a line without one."""
    parts = line.split()
    try:
        if parts[0] == b"VALUE" and len(parts) >= 3:
            return int(parts[3] if len(parts) >= 4 else parts[2])
        if parts[0] == b"VA" and len(parts) >= 2:
            return int(parts[1])
    except (IndexError, ValueError):
        pass
    return None


def read_reply(conn: Connection) -> bytes:
    """Everything the server sends before the ``MN`` line."""
    reply = []
    while True:
        line = conn.readline()
        if line == END_MARK:
            return b"".join(reply)
        reply.append(line)
        length = block_length(line) if line.startswith((b"VALUE ", b"VA ")) else None
        if length is not None:
            reply.append(conn.read_exactly(length + 2))


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("verb")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--data",
    default=None,
    metavar="DATA",
    help="A data block to send after the line ('-' reads standard input); the line gives its length.",
)
def call(verb: str, args: tuple[str, ...], data: str | None) -> None:
    """Send the command line VERB ARGS... and print the reply as it comes.

    Any verb, a verb of your own included (mcl serve --load MODULE):

        mcl call upper greeting

        mcl call set k 0 0 5 --data hello

    The reply ends where the server's answer to a following 'mn' begins, so
    a reply of any length is printed whole. Exit 4 if it is ERROR,
    CLIENT_ERROR or SERVER_ERROR, 3 if the server closes the connection first.
    """
    config = current_config()
    if len(config.servers) > 1:
        raise click.UsageError("mcl call talks to one server: give a single --server")
    line = b" ".join(os.fsencode(word) for word in (verb, *args))
    request = line + b"\r\n"
    if data is not None:
        request += (binary_stream("stdin").read() if data == "-" else os.fsencode(data)) + b"\r\n"
    try:
        conn = Connection(config.servers[0], config.timeout, config.tls_context, config.credentials)
    except transfer.ServerReplyError as exc:  # the credentials were refused
        raise ServerReplyError(str(exc)) from None
    except OSError as exc:  # refused, unreachable, timed out, no such host
        raise Unreachable(f"cannot reach server {config.describe()}: {exc.strerror or exc}") from None
    with conn:
        try:
            conn.send(request + b"mn\r\n")
            reply = read_reply(conn)
        except transfer.Closed:
            if verb.lower() in ("quit", "shutdown"):  # the connection's end is the whole reply
                return
            raise Unreachable(closed_message(config)) from None
        except TimeoutError:
            raise Unreachable(
                binary_only_message(config)
                or f"no complete reply from {config.describe()} within {config.timeout:g} s (--timeout); the reply"
                " ends where the answer to 'mn' begins, which memcached before 1.6 does not know"
            ) from None
        except OSError as exc:
            raise Unreachable(f"lost server {config.describe()}: {exc.strerror or exc}") from None
    out = binary_stream("stdout")
    write_fully(out, reply)
    out.flush()
    _judge(verb, len(args), reply)


def _judge(verb: str, nargs: int, reply: bytes) -> None:
    """The exit code a reply earns: its error line as one line on standard error."""
    first = reply.split(b"\r\n", 1)[0]
    if not first.startswith(_ERRORS):
        return
    text = first.decode("utf-8", "replace")
    if first == b"ERROR":
        raise ServerReplyError(
            f"the server answered ERROR: it has no verb {verb!r} taking {nargs} arguments"
            " (a verb of your own needs mcl serve --load MODULE)"
        )
    hint = f"; {TOO_LARGE_HINT}" if b"object too large" in first else ""
    raise ServerReplyError(f"the server answered {text}{hint}")
