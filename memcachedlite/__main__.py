"""``python -m memcachedlite`` is the ``mcl`` command."""

from .cli import main

main(prog_name="mcl")
