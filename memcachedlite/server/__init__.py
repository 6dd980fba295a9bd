"""The server: the ``ThreadingTCPServer`` and its ``StreamRequestHandler``,
the pool of worker threads and the connection limit, TLS, building a server
from one settings object, and delivering the replies that wait for the disk.

It moves bytes between sockets and sessions; what the bytes mean is the
protocols' business, and what they change is the store's.
"""
