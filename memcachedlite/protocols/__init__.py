"""The protocols: the command registry, the operations every protocol shares,
the text and meta session (command lines and data blocks), the binary
session (24-byte headers and opcodes), the built-in verbs, ``stats`` and
authentication.

A session is fed bytes and returns bytes: it never touches a socket, and it
changes data only through the store's operations. Importing this package
registers the built-in verbs in :data:`~memcachedlite.protocols.registry.default_registry`,
the same way a user's module registers its own.
"""

from . import admin, commands, meta  # noqa: F401  (register the built-in verbs)
