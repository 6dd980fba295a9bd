"""The storage engine: the item table in memory (expiry, LRU eviction, the
counters ``stats`` reports), the operations every protocol calls (memcached's
storing modes and cas test, incr/decr, what a refused set does), and its
durability: batches and group commit,
what a failed write or fsync does, compaction, the data file's format,
replay at start-up and repair.

Nothing here knows a socket, a session or a protocol's bytes: a change comes
in as a call on :class:`~memcachedlite.storage.store.Store`, and an outcome
goes out as a return value, an exception from :mod:`memcachedlite.errors`, or
a callback once the disk has it.
"""
