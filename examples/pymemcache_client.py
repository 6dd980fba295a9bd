"""Using memcachedlite from Python with pymemcache, exactly as one uses memcached.

Start a server, then run this against it::

    mcl serve &                                          # 127.0.0.1:9889
    python3 examples/pymemcache_client.py                # or HOST:PORT [HOST:PORT ...]
    MCL_SERVER=127.0.0.1:9901,127.0.0.1:9902 python3 examples/pymemcache_client.py

The servers come from the arguments, else ``MCL_SERVER`` (a comma list, as
for ``mcl``), else 127.0.0.1:9889. Several servers are used through
pymemcache's ``HashClient``, which spreads the keys over them with consistent
hashing, the way ``mcl`` does. Every key used here starts with ``example:``.
"""

from __future__ import annotations

import os
import sys

from pymemcache import serde
from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient

DEFAULT_SERVER = "127.0.0.1:9889"


def servers_from(args: list[str]) -> list[tuple[str, int]]:
    """HOST:PORT arguments (or the MCL_SERVER comma list) as (host, port) pairs."""
    specs = args or os.environ.get("MCL_SERVER", DEFAULT_SERVER).replace(",", " ").split()
    servers = []
    for spec in specs:
        host, _, port = spec.rpartition(":")
        servers.append((host or "127.0.0.1", int(port)))
    return servers


def connect(servers: list[tuple[str, int]]) -> Client | HashClient:
    options = dict(
        # pickle_serde keeps Python types: the type goes in the item's flags
        serde=serde.pickle_serde,
        key_prefix=b"example:",
        connect_timeout=5,
        timeout=5,
        # pymemcache's default is noreply for writes: ask for replies, so a
        # refused or failed write is seen
        default_noreply=False,
    )
    if len(servers) == 1:
        return Client(servers[0], **options)
    return HashClient(servers, **options)


def add_tag(client: Client | HashClient, key: str, tag: str) -> list[str]:
    """Append to a list stored under ``key`` without losing a concurrent writer's change (gets + cas)."""
    while True:
        tags, unique = client.gets(key)
        if tags is None:
            if client.add(key, [tag]):
                return [tag]
            continue  # someone else created it first: read theirs
        if client.cas(key, tags + [tag], unique):
            return tags + [tag]


def main(args: list[str]) -> int:
    servers = servers_from(args)
    print("servers:", ", ".join(f"{h}:{p}" for h, p in servers))
    client = connect(servers)
    try:
        # Strings, numbers and any picklable object.
        client.set("greeting", "hello")
        client.set("profile", {"name": "Ada", "languages": ["en", "fr"]}, expire=3600)
        print("greeting:", client.get("greeting"))
        print("profile:", client.get("profile"))

        # Counters: incr and decr work on numbers stored as decimal text.
        client.set("visits", 0)
        client.incr("visits", 10)
        print("visits:", client.decr("visits", 3))

        # Check-and-set for read-modify-write without locks.
        client.delete("tags")
        add_tag(client, "tags", "fast")
        print("tags:", add_tag(client, "tags", "durable"))

        # Many keys in one round trip per server.
        client.set_many({f"user:{i}": f"user number {i}" for i in range(5)})
        users = client.get_many([f"user:{i}" for i in range(5)])
        print("users:", len(users), users["user:3"])

        # Values are bytes on the wire: CRLF and NUL survive.
        raw = b"line one\r\nline two\r\n\x00 the end"
        client.set("blob", raw)
        print("blob intact:", client.get("blob") == raw)

        # Expiry: add a time to live to an item that had none.
        print("touched:", client.touch("greeting", 60))

        # add refuses an existing key; delete removes one.
        print("add over an existing key:", client.add("greeting", "again"))
        print("deleted:", client.delete("greeting"), "now:", client.get("greeting"))
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
