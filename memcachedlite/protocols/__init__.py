"""The protocols: the command registry, the text and meta session (command
lines and data blocks), the binary session (24-byte headers and opcodes),
the built-in verbs, ``stats`` and authentication.

A session is fed bytes and returns bytes: it never touches a socket, and it
changes data only through the store's operations. The front ends frame,
parse and render; every rule that is not framing (storing modes and cas,
incr/decr, the exptime rule, what a refused set does, what ``stats`` and
``stats detail`` count) is one :class:`~memcachedlite.storage.store.Store`
operation that the text, meta and binary front ends all call. Importing this package
registers the built-in verbs in :data:`~memcachedlite.protocols.registry.default_registry`,
the same way a user's module registers its own.
"""

from . import admin, commands, meta  # noqa: F401  (register the built-in verbs)
