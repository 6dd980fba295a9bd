"""Files that are not data files: telling one from a data file whose header
is damaged, and naming what it looks like when ``mcl load`` can import it.

The servers memcachedlite grew out of kept one ``<key> <value>`` line per
item in a file of the same default name, ``data.txt``; a server started
where one of them ran meets that file first. A dump written by ``mcl dump``
(JSON lines) can end up there too. Neither is damage, so ``mcl repair`` is
the wrong advice: ``mcl load`` is the right one (see
:mod:`memcachedlite.cli.transfer`, which reads both formats).
"""

from __future__ import annotations

import json
from typing import Optional

from ..errors import NotADataFile
from .keys import is_plain_key
from .records import begins_as_data_file, next_valid_record, read_head

#: The ``format`` field of a dump's header line (``memcachedlite.cli.transfer``
#: has its own, which ``mcl`` imports without the storage engine; a test holds them equal).
DUMP_FORMAT = "memcachedlite-dump"
#: How much of a file is looked at to name its format: an item's worth.
SAMPLE = 1024 * 1024

DUMP = "a dump written by 'mcl dump' (JSON lines)"
KEY_VALUE_LINES = "'<key> <value>' lines (the seed server's data file)"


def check_ours(buf: bytes, path: str) -> None:
    """Refuse the file contents ``buf`` with :class:`NotADataFile` unless
    they are a data file's, whole or damaged: they begin as one (a whole
    header, or a part of one), or hold an intact record (whose checksum
    makes a chance match practically impossible) past a header destroyed."""
    if read_head(buf) is not None or begins_as_data_file(buf) or next_valid_record(buf, 0) is not None:
        return
    raise NotADataFile(path, importable_format(buf))


def importable_format(buf: bytes) -> Optional[str]:
    """What ``buf`` looks like, if it is a file ``mcl load`` imports: a dump,
    or ``key value`` lines (every line of its first :data:`SAMPLE` bytes,
    blank lines aside, a key memcached takes, a space and the value); None
    for anything else."""
    lines = bytes(buf[:SAMPLE]).split(b"\n")
    if len(buf) > SAMPLE:
        lines.pop()  # cut off by the sample
    lines = [line for line in lines if line.strip()]
    if not lines:
        return None
    if lines[0].startswith(b'{"'):  # as mcl load tells a dump: a key may start with '{', not '{"'
        return DUMP if _dump_line(lines[0]) else None
    return KEY_VALUE_LINES if all(map(_key_value_line, lines)) else None


def _dump_line(line: bytes) -> bool:
    """Whether ``line`` is a dump's header, or an item of a dump without one."""
    try:
        first = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(first, dict) and (first.get("format") == DUMP_FORMAT or {"key", "value"} <= first.keys())


def _key_value_line(line: bytes) -> bool:
    key, space, _ = line.partition(b" ")
    return bool(space) and is_plain_key(key)
