"""Response caches: dumb content stores behind one small interface.

The dispatch layer (``hgwire_tw.commands.runner`` for v2, ``hgwire_tw.v1.cache`` for v1
``getbundle``) decides what is cached and under which key; a store only keeps bytes:

* ``lookup(key)`` → a ``CacheEntry`` (size, SHA-256, ``chunks()``) or None;
* ``writer(key)`` → a ``CacheWriter`` that takes the response as it streams
  (``write``), and either ``commit()`` s it or ``abort()`` s it.

Keys are hex digests (``[0-9a-f]{16,128}``). Stores are used from worker threads only
(the disk store blocks on I/O) and are thread-safe.
"""

from __future__ import annotations

from hgwire_tw.cache.base import (
    CacheEntry,
    CacheStats,
    CacheWriter,
    ContentStore,
    valid_key,
)
from hgwire_tw.cache.disk import DiskStore
from hgwire_tw.cache.memory import MemoryStore

__all__ = [
    "CacheEntry",
    "CacheStats",
    "CacheWriter",
    "ContentStore",
    "DiskStore",
    "MemoryStore",
    "make_store",
    "valid_key",
]


def make_store(kind: str, *, size: int, directory: str | None = None) -> ContentStore | None:
    """The store ``--cache KIND`` asks for (``memory``, ``disk`` or ``none``)."""
    if kind == "none":
        return None
    if kind == "memory":
        return MemoryStore(max_bytes=size)
    if kind == "disk":
        if directory is None:
            raise ValueError("the disk cache needs a directory")
        return DiskStore(directory, max_bytes=size)
    raise ValueError(f"unknown cache kind {kind!r}")
