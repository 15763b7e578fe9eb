"""An on-disk content store in the state directory that survives restarts.

Each entry is one file, ``<dir>/<key[:2]>/<key>``: a 48-byte header (magic
``HGWCACH1``, body length as 8 bytes big-endian, SHA-256 of the body) and the body.
Entries are written to a temporary file, synced and renamed into place, so a crash
leaves either nothing or a whole entry. A file whose length or hash does not match its
header (truncated, partial, bit rot, tampered) is deleted and reported as a miss, never
served. Every file is hashed the first time this process looks it up (and again if it
changed on disk since), so a corrupt entry is caught before its first byte is served.

Least recently used entries (by modification time, refreshed on each hit) are removed
once the store holds more than ``max_bytes``. Everything here blocks on disk I/O: call
it from worker threads only.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

from twisted.logger import Logger

from hgwire_tw.cache.base import CHUNK, CacheStats, valid_key

__all__ = ["HEADER_SIZE", "MAGIC", "DiskStore"]

log = Logger()

MAGIC: Final = b"HGWCACH1"
_HEADER: Final = struct.Struct(">8sQ32s")
HEADER_SIZE: Final = _HEADER.size
_TMP_PREFIX: Final = ".tmp-"


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class _Entry:
    """An intact entry, read through the descriptor opened at lookup (so a concurrent
    eviction cannot cut it short)."""

    def __init__(self, f: BinaryIO, size: int, sha256: str) -> None:
        self._f = f
        self.size = size
        self.sha256 = sha256

    def chunks(self) -> Iterator[bytes]:
        f = self._f
        try:
            f.seek(HEADER_SIZE)
            left = self.size
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    raise OSError("cache entry shrank while being read")
                left -= len(data)
                yield data
        finally:
            f.close()

    def close(self) -> None:
        """Release the file without reading it."""
        self._f.close()


class _Writer:
    def __init__(self, store: DiskStore, key: str) -> None:
        self._store = store
        self._key = key
        self._hash = hashlib.sha256()
        self._size = 0
        self._closed = False
        store.directory.mkdir(parents=True, exist_ok=True)
        self._tmp = store.directory / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        self._f: BinaryIO | None = self._tmp.open("wb")
        self._f.write(b"\0" * HEADER_SIZE)

    def write(self, data: bytes) -> None:
        if self._closed or self._f is None:
            return
        try:
            self._f.write(data)
        except OSError as e:
            log.warn("disk cache write failed: {error}", error=e)
            self._discard()
            self._store.stats.add("skipped")
            return
        self._hash.update(data)
        self._size += len(data)

    def commit(self) -> None:
        if self._closed or self._f is None:
            self._closed = True
            return
        self._closed = True
        f, self._f = self._f, None
        try:
            f.seek(0)
            f.write(_HEADER.pack(MAGIC, self._size, self._hash.digest()))
            f.flush()
            os.fsync(f.fileno())
            f.close()
            final = self._store.path(self._key)
            final.parent.mkdir(exist_ok=True)
            os.replace(self._tmp, final)
        except OSError as e:
            log.warn("disk cache commit failed: {error}", error=e)
            f.close()
            self._tmp.unlink(missing_ok=True)
            self._store.stats.add("skipped")
            return
        self._store._committed(self._key, final, self._size)

    def abort(self) -> None:
        if self._closed:
            return
        self._discard()
        self._store.stats.add("aborts")

    def _discard(self) -> None:
        self._closed = True
        if self._f is not None:
            self._f.close()
            self._f = None
        self._tmp.unlink(missing_ok=True)


class DiskStore:
    """Content store in ``directory``, holding at most about ``max_bytes`` of entries."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 4 * 1024**3) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._lock = threading.Lock()
        # key -> file identity already hashed by this process
        self._verified: dict[str, tuple[int, int, int]] = {}
        self._bytes: int | None = None  # measured on first use, on a worker

    def path(self, key: str) -> Path:
        """The file of entry ``key``."""
        if not valid_key(key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.directory / key[:2] / key

    def lookup(self, key: str) -> _Entry | None:
        """The intact entry under ``key``, or None (a damaged one is deleted)."""
        self._measure()
        entry = self._open(key)
        self.stats.add("hits" if entry is not None else "misses")
        return entry

    def writer(self, key: str) -> _Writer:
        """A writer for ``key`` (see ``CacheWriter``)."""
        self.path(key)  # validates the key
        self._measure()
        return _Writer(self, key)

    def _open(self, key: str) -> _Entry | None:
        path = self.path(key)
        try:
            f: BinaryIO = path.open("rb")
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(f.fileno())
            header = f.read(HEADER_SIZE)
            if len(header) != HEADER_SIZE:
                raise _Damaged("short header")
            magic, size, digest = _HEADER.unpack(header)
            if magic != MAGIC:
                raise _Damaged("bad magic")
            if st.st_size != HEADER_SIZE + size:
                raise _Damaged(f"length {st.st_size - HEADER_SIZE}, header says {size}")
            with self._lock:
                known = self._verified.get(key)
            if known != _identity(st):
                actual = hashlib.sha256()
                for data in iter(lambda: f.read(CHUNK), b""):
                    actual.update(data)
                if actual.digest() != digest:
                    raise _Damaged("content does not match its SHA-256")
            # Refresh the modification time: eviction removes the least recently used.
            os.utime(f.fileno())
            st = os.fstat(f.fileno())
            with self._lock:
                self._verified[key] = _identity(st)
            return _Entry(f, size, digest.hex())
        except _Damaged as e:
            f.close()
            log.warn("disk cache entry {key} discarded: {why}", key=key, why=str(e))
            self._remove(key, path)
            self.stats.add("discarded")
            return None
        except BaseException:
            f.close()
            raise

    def _remove(self, key: str, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        with self._lock:
            self._verified.pop(key, None)
            if self._bytes is not None:
                self._bytes -= size

    def _committed(self, key: str, path: Path, size: int) -> None:
        self.stats.add("stores")
        st = path.stat()
        with self._lock:
            # Written and hashed by us: no need to hash it again on the first hit.
            self._verified[key] = _identity(st)
            if self._bytes is not None:
                self._bytes += st.st_size
            over = self._bytes is not None and self._bytes > self.max_bytes
        if over:
            self._evict()

    def _entries(self) -> list[tuple[int, int, Path]]:
        out: list[tuple[int, int, Path]] = []
        if not self.directory.is_dir():
            return out
        for sub in self.directory.iterdir():
            if sub.name.startswith(_TMP_PREFIX):
                continue
            if not sub.is_dir():
                continue
            for path in sub.iterdir():
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                out.append((st.st_mtime_ns, st.st_size, path))
        return out

    def _measure(self) -> None:
        if self._bytes is not None:
            return
        # First use: leftovers of writes cut short by a crash go; the rest is counted.
        if self.directory.is_dir():
            for tmp in self.directory.glob(f"{_TMP_PREFIX}*"):
                tmp.unlink(missing_ok=True)
        total = sum(size for _, size, _ in self._entries())
        with self._lock:
            if self._bytes is None:
                self._bytes = total

    def _evict(self) -> None:
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        target = int(self.max_bytes * 0.9)
        removed = 0
        for _, size, path in entries:
            if total <= target:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
            with self._lock:
                self._verified.pop(path.name, None)
        with self._lock:
            self._bytes = total
        if removed:
            self.stats.add("evictions", removed)


class _Damaged(Exception):
    """A stored entry failed its checks."""
