"""Administrative verbs outside the everyday protocol: memcached's
``lru_crawler metadump``, which lists every live item so tools can dump a
server (``mcl dump``, memcached's own ``memcached-tool ... dump``).

Registered with the same decorator as the built-in verbs and a user's own,
and written against the public :class:`~memcachedlite.storage.store.Store` methods only.

``lru_crawler metadump all`` answers one line per live item, then ``END``::

    key=<url-encoded key> exp=<unix time, -1: never> la=<unix time> cas=<cas> fetch=<yes|no> cls=1 size=<bytes>\\n
    ...
    END\\r\\n

As in memcached, the item lines end with a bare ``\\n`` and only ``END`` with
``\\r\\n``; keys are percent-encoded (every byte but ``A-Z a-z 0-9 - . _ ~``
as ``%XX``). ``la`` is the item's last access and ``fetch`` whether it was
read since it was stored; ``cls`` is the slab class memcached would keep the
item in and ``size`` memcached's size for it (see
:mod:`memcachedlite.storage.slabs`), and a list of classes lists their items only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote_from_bytes

from ..errors import UnknownCommand
from .registry import command
from .text import END

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

#: memcached's answer to a slab class list it cannot parse, or a class out of range.
BAD_CLASS = b"BADCLASS invalid class id\r\n"
#: memcached numbers its slab classes 1..63.
_LARGEST_CLASS = 63


def _classes(token: bytes) -> set[int] | None:
    """The slab classes asked for: ``all`` and ``hash`` mean every one; None if malformed."""
    if token in (b"all", b"hash"):
        return set(range(1, _LARGEST_CLASS + 1))
    wanted = set()
    for part in token.split(b","):
        if not part.isdigit() or not 1 <= int(part) <= _LARGEST_CLASS:
            return None
        wanted.add(int(part))
    return wanted


def metadump_lines(ctx: Session, classes: set[int]) -> bytes:
    """The item lines of a metadump, one per live item of ``classes``, in LRU order (oldest first)."""
    store = ctx.store
    now = store.now()
    cas_bytes = store.slabs.cas_bytes
    lines = []
    live = store.keys()  # a copy taken under the store's lock; items may go meanwhile
    for key in live:
        item = store.peek(key)
        if item is None or item.cls not in classes:  # deleted or expired since the key list was taken
            continue
        exp = item.exptime if item.exptime else -1
        lines.append(
            b"key=%s exp=%d la=%d cas=%d fetch=%s cls=%d size=%d\n"
            % (
                quote_from_bytes(key, safe="").encode("ascii"),
                exp,
                item.atime or now,
                item.cas,
                b"yes" if item.fetched else b"no",
                item.cls,
                item.size + cas_bytes,  # memcached's ITEM_ntotal
            )
        )
    return b"".join(lines)


@command("lru_crawler", min_args=2, max_args=2, long_line=False)
def lru_crawler(ctx: Session, args: list[bytes], data: bytes | None) -> bytes:
    """lru_crawler metadump <all|hash|class[,class...]>: list every live item, then END."""
    if args[0] != b"metadump":
        raise UnknownCommand()  # memcached: ERROR for a subcommand it does not know
    classes = _classes(args[1])
    if classes is None:
        return BAD_CLASS
    return metadump_lines(ctx, classes) + END
