"""An in-memory LRU content store bounded in bytes (the default cache)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from hgwire_tw.cache.base import CHUNK, CacheStats, valid_key

__all__ = ["MemoryStore"]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    pieces: tuple[bytes, ...]
    size: int
    sha256: str

    def chunks(self) -> Iterator[bytes]:
        # Pieces are at most CHUNK bytes already (see _Writer).
        yield from self.pieces

    def close(self) -> None:
        pass


class _Writer:
    def __init__(self, store: MemoryStore, key: str) -> None:
        self._store = store
        self._key = key
        self._pieces: list[bytes] = []
        self._pending = bytearray()
        self._size = 0
        self._hash = hashlib.sha256()
        self._closed = False
        self._too_big = False

    def write(self, data: bytes) -> None:
        if self._closed or self._too_big:
            return
        self._size += len(data)
        if self._size > self._store.max_entry:
            # Keeping it would evict most of the cache for one response: drop it now,
            # so memory does not grow with the response either.
            self._too_big = True
            self._pieces.clear()
            self._pending = bytearray()
            return
        self._hash.update(data)
        self._pending += data
        while len(self._pending) >= CHUNK:
            self._pieces.append(bytes(self._pending[:CHUNK]))
            del self._pending[:CHUNK]

    def commit(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._too_big:
            self._store.stats.add("skipped")
            return
        if self._pending:
            self._pieces.append(bytes(self._pending))
        entry = _Entry(pieces=tuple(self._pieces), size=self._size, sha256=self._hash.hexdigest())
        self._pieces, self._pending = [], bytearray()
        self._store._put(self._key, entry)

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pieces, self._pending = [], bytearray()
        self._store.stats.add("aborts")


class MemoryStore:
    """LRU store of at most ``max_bytes`` bytes of entries.

    Entries bigger than ``max_bytes * max_entry_fraction`` are not kept.
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024, max_entry_fraction: float = 0.25):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.max_entry = max(1, int(max_bytes * max_entry_fraction))
        self.stats = CacheStats()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes_used(self) -> int:
        """Total size of the entries held."""
        with self._lock:
            return self._bytes

    def lookup(self, key: str) -> _Entry | None:
        """The entry under ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        self.stats.add("hits" if entry is not None else "misses")
        return entry

    def writer(self, key: str) -> _Writer:
        """A writer for ``key`` (see ``CacheWriter``)."""
        if not valid_key(key):
            raise ValueError(f"not a cache key: {key!r}")
        return _Writer(self, key)

    def _put(self, key: str, entry: _Entry) -> None:
        evicted = 0
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[key] = entry
            self._bytes += entry.size
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, gone = self._entries.popitem(last=False)
                self._bytes -= gone.size
                evicted += 1
        self.stats.add("stores")
        if evicted:
            self.stats.add("evictions", evicted)
