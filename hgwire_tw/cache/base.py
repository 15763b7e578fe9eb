"""The content-store interface and the counters every store keeps."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol

__all__ = ["CHUNK", "CacheEntry", "CacheStats", "CacheWriter", "ContentStore", "valid_key"]

#: Largest piece ``CacheEntry.chunks`` hands out (bounded memory per reader).
CHUNK: Final = 256 * 1024

_KEY: Final = re.compile(r"^[0-9a-f]{16,128}$")


def valid_key(key: str) -> bool:
    """Whether ``key`` is a cache key (lower-case hex, so it is safe as a file name)."""
    return _KEY.match(key) is not None


class CacheEntry(Protocol):
    """A complete stored response."""

    @property
    def size(self) -> int:
        """Length of the stored bytes."""
        ...

    @property
    def sha256(self) -> str:
        """SHA-256 of the stored bytes (hex)."""
        ...

    def chunks(self) -> Iterator[bytes]:
        """The stored bytes, in pieces of at most ``CHUNK`` bytes (worker thread)."""
        ...

    def close(self) -> None:
        """Release the entry without reading it (``chunks`` releases it when done)."""


class CacheWriter(Protocol):
    """Takes one response as it streams; nothing is visible before ``commit``."""

    def write(self, data: bytes) -> None:
        """Append ``data``."""

    def commit(self) -> None:
        """The response is complete: make it visible to ``lookup``."""

    def abort(self) -> None:
        """Forget everything written (the response failed or was cut short)."""


class ContentStore(Protocol):
    """A dumb content store: look a key up, store an entry as it streams."""

    stats: CacheStats

    def lookup(self, key: str) -> CacheEntry | None:
        """The complete, intact entry stored under ``key``, or None."""
        ...

    def writer(self, key: str) -> CacheWriter:
        """A writer that stores an entry under ``key`` on ``commit``."""
        ...


@dataclass
class CacheStats:
    """Counters of one store (thread-safe; read them with ``snapshot``)."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    aborts: int = 0
    #: Entries too big to keep (memory store) or failed writes (disk store).
    skipped: int = 0
    #: Entries found corrupt or partial and deleted.
    discarded: int = 0
    evictions: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        """All counters at one instant."""
        with self._lock:
            return {
                k: getattr(self, k)
                for k in ("hits", "misses", "stores", "aborts", "skipped", "discarded", "evictions")
            }
