"""The content-store interface and the counters every store keeps."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol

from twisted.logger import Logger

__all__ = [
    "CHUNK",
    "CacheEntry",
    "CacheStats",
    "CacheWriter",
    "ContentStore",
    "stored_while_streaming",
    "valid_key",
]

log = Logger()

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


def stored_while_streaming(
    store: ContentStore, key: str, pieces: Iterable[bytes]
) -> Iterator[bytes]:
    """Yield ``pieces`` while writing them to a new entry for ``key`` (worker thread).

    The entry is committed only if ``pieces`` ran to its end and the consumer took every
    piece; an error or a consumer that stops early (the client went away) aborts it, so
    failed or cut-short responses are never stored. A failing writer is logged, never
    raised: the response itself is unaffected.
    """
    writer = store.writer(key)
    complete = False
    try:
        for data in pieces:
            writer.write(data)
            yield data
        complete = True
    finally:
        try:
            if complete:
                writer.commit()
            else:
                writer.abort()
        except Exception:
            log.failure("cache writer for {key} failed", key=key)


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
