"""The ``mcl`` command: a click group whose commands parse their options and
call the library (the server side: ``serve``, ``repair``) or a memcached
client (``get``, ``set``..., ``dump``, ``load``, ``bench``). Thin by design:
failures become one-line messages and exit codes.

Exit codes: 0 success, 1 the key was missing or not stored, 2 bad usage,
3 the server could not be reached, 4 the server answered with an error,
5 the server could not start, 141 standard output closed early (quietly).
"""

from . import bench, bulk, call, client, serve  # noqa: F401  (each registers its commands on main)
from .common import main

__all__ = ["main"]
