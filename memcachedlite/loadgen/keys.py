"""The key space of a load run: keys, the values derived from them, and the exact bytes of each
command and its expected reply in the configured protocol."""

from __future__ import annotations

from .config import LoadConfig
from .wire import BIN_GET, BIN_SET, END, STORED, binary_request, binary_set, resp_command


class Keyspace:
    """Keys, their values and the exact bytes of commands and hit replies."""

    def __init__(self, config: LoadConfig) -> None:
        self.count = config.keys
        self.size = config.value_size
        self.prefix = f"{config.key_prefix}{config.value_size}:".encode()
        self.filler = b"." * self.size
        self.protocol = config.protocol
        # Cache the rendered bytes unless the key space is too big to keep twice.
        self.cached = self.count * (2 * self.size + 3 * len(self.prefix) + 100) <= 64 * 1024 * 1024
        self._sets: list = [None] * self.count if self.cached else []
        self._gets: list = [None] * self.count if self.cached else []
        # (command, expectation, the reply if it is a hit, or None when not fixed)
        self._get_entries: list = [None] * self.count if self.cached else []
        self._set_entries: list = [None] * self.count if self.cached else []

    def key(self, i: int) -> bytes:
        return self.prefix + b"%d" % i

    def value(self, key: bytes) -> bytes:
        return (key + self.filler)[: self.size]

    def _render_set(self, i: int) -> bytes:
        key = self.key(i)
        return b"set %s 0 0 %d\r\n%s\r\n" % (key, self.size, self.value(key))

    def set_command(self, i: int) -> bytes:
        if not self.cached:
            return self._render_set(i)
        command = self._sets[i]
        if command is None:
            command = self._sets[i] = self._render_set(i)
        return command

    def _render_get(self, i: int) -> tuple:
        key = self.key(i)
        block = b"VALUE %s 0 %d\r\n%s\r\n" % (key, self.size, self.value(key))
        return b"get " + key + b"\r\n", ((key,), (block,), block + END)

    def get_one(self, i: int) -> tuple:
        """(command, expectation) for a get of key ``i``."""
        if not self.cached:
            return self._render_get(i)
        entry = self._gets[i]
        if entry is None:
            entry = self._gets[i] = self._render_get(i)
        return entry

    def _render_entry(self, i: int, get: bool) -> tuple:
        if self.protocol == "text":
            if get:
                command, exp = self.get_one(i)
                return command, exp, exp[2]
            return self.set_command(i), STORED, STORED
        key = self.key(i)
        value = self.value(key)
        if self.protocol == "binary":  # the cas in a reply's header varies: no fixed reply
            if get:
                return binary_request(BIN_GET, key), (True, BIN_GET, b"\0\0\0\0" + value), None
            return binary_set(key, value), (False, BIN_SET, b""), None
        if get:
            hit = b"$%d\r\n%s\r\n" % (len(value), value)
            return resp_command(b"GET", key), (True, hit, b"$-1\r\n"), hit
        return resp_command(b"SET", key, value), (False, b"+OK\r\n", None), b"+OK\r\n"

    def get_entry(self, i: int) -> tuple:
        """(command, expectation, hit reply or None) for a get of key ``i``, in the configured protocol."""
        if not self.cached:
            return self._render_entry(i, True)
        entry = self._get_entries[i]
        if entry is None:
            entry = self._get_entries[i] = self._render_entry(i, True)
        return entry

    def set_entry(self, i: int) -> tuple:
        """(command, expectation, reply or None) for a set of key ``i``, in the configured protocol."""
        if not self.cached:
            return self._render_entry(i, False)
        entry = self._set_entries[i]
        if entry is None:
            entry = self._set_entries[i] = self._render_entry(i, False)
        return entry

    def get_many(self, first: int, count: int) -> tuple:
        """(command, expectation) for a get of ``count`` consecutive keys (wrapping)."""
        n = self.count
        keys = []
        blocks = []
        for i in range(first, first + count):
            _, (key, block, _) = self.get_one(i % n)
            keys.append(key[0])
            blocks.append(block[0])
        return b"get " + b" ".join(keys) + b"\r\n", (tuple(keys), tuple(blocks), b"".join(blocks) + END)
