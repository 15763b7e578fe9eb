"""The blob store: immutable, content-addressed files that redirects and clone bundles name.

A blob is published once and never changes: its file name is the SHA-256 of its bytes (hex)
plus a suffix that tells a static server its media type (``.cbor`` for v2 command output,
``.hg`` for bundles). Publishing writes a temporary file beside the final one, checks the
hash, syncs it and renames it into place, so a reader (our HTTP listener, or any static
server or CDN mirroring the directory) sees either nothing or the whole blob. That is also
why a redirect may name a blob only after ``publish`` has returned.

Retention: a blob's modification time is when it was last *used* — published, or
refreshed by ``touch`` (the redirector touches a blob each time a redirect names it, and
``publish`` touches a blob that is already there). ``expire`` deletes ``.cbor`` blobs
unused since a cut-off and leftover temporary files (``.tmp-*``, ``.bundle-*``) older
than another; ``.hg`` clone bundles are never touched by it (``hgwire_tw.clonebundles``
expires those). One lock orders ``touch``/``publish`` against ``expire``'s check-and-
delete, so a blob touched for a redirect is never deleted by a sweep already running.

Everything here blocks on disk I/O: call it from a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

__all__ = [
    "EXPIRING_SUFFIXES",
    "MEDIA_TYPES",
    "TEMP_PREFIXES",
    "Blob",
    "BlobError",
    "BlobStore",
    "blob_name",
]

#: Suffix → media type served for it.
MEDIA_TYPES: Final = {
    ".cbor": "application/mercurial-cbor",
    ".hg": "application/mercurial-bundle",
}

#: Blob suffixes ``expire`` deletes when unused (clone bundles expire on their own).
EXPIRING_SUFFIXES: Final = (".cbor",)
#: Name prefixes of temporary files written into the directory while publishing
#: (``.bundle-``: clone bundles being generated).
TEMP_PREFIXES: Final = (".tmp-", ".bundle-")

_NAME: Final = re.compile(r"^([0-9a-f]{64})(\.cbor|\.hg)$")
_CHUNK: Final = 256 * 1024


class BlobError(Exception):
    """A blob could not be published (its bytes did not match the expected hash)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Blob:
    """A published blob: its file ``name``, ``sha256`` (hex) and ``size`` in bytes."""

    name: str
    sha256: str
    size: int

    @property
    def media_type(self) -> str:
        """The media type its suffix stands for."""
        return MEDIA_TYPES[self.name[64:]]


def blob_name(sha256: str, suffix: str) -> str:
    """The file name of the blob with hex digest ``sha256`` and ``suffix``."""
    name = sha256 + suffix
    if not _NAME.match(name):
        raise ValueError(f"not a blob name: {name!r}")
    return name


class BlobStore:
    """Blobs in ``directory``, reachable at ``base_url`` + name when a base URL is set.

    Without ``base_url`` the embedded HTTP listener serves the directory; the URL then
    depends on the listener's address and is built by the caller (see ``url``).
    """

    def __init__(self, directory: str | os.PathLike[str], base_url: str | None = None) -> None:
        self.directory = Path(directory)
        if base_url is not None and not base_url.endswith("/"):
            base_url += "/"
        self.base_url = base_url
        # Orders touch/publish against expire's check-and-delete (see the module docs).
        self._lock = threading.Lock()

    @staticmethod
    def valid_name(name: str) -> bool:
        """Whether ``name`` is a blob file name (so it is safe to join onto the directory)."""
        return _NAME.match(name) is not None

    def path(self, name: str) -> Path:
        """The file of blob ``name``; refuses anything that is not a blob name."""
        if not self.valid_name(name):
            raise ValueError(f"not a blob name: {name!r}")
        return self.directory / name

    def find(self, name: str) -> Blob | None:
        """The published blob called ``name``, or None."""
        try:
            size = self.path(name).stat().st_size
        except (FileNotFoundError, ValueError):
            return None
        return Blob(name=name, sha256=name[:64], size=size)

    def open(self, name: str) -> BinaryIO | None:
        """Open blob ``name`` for reading, or None if it is not published."""
        try:
            return self.path(name).open("rb")
        except (FileNotFoundError, ValueError):
            return None

    def publish(self, chunks: Iterable[bytes], *, suffix: str, sha256: str | None = None) -> Blob:
        """Store ``chunks`` as one blob and return it; idempotent for equal content.

        With ``sha256`` given, bytes that hash differently raise ``BlobError`` and
        nothing is published.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".tmp-{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        size = 0
        try:
            with tmp.open("wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = digest.hexdigest()
            if sha256 is not None and actual != sha256:
                raise BlobError(f"blob content hashes to {actual}, expected {sha256}")
            name = blob_name(actual, suffix)
            final = self.directory / name
            with self._lock:
                if _refresh(final, size):
                    return Blob(name=name, sha256=actual, size=size)
                os.replace(tmp, final)
            _sync_directory(self.directory)
            return Blob(name=name, sha256=actual, size=size)
        finally:
            tmp.unlink(missing_ok=True)

    def publish_file(self, source: str | os.PathLike[str], *, suffix: str) -> Blob:
        """Publish a copy of the file ``source`` (read in chunks)."""
        with open(source, "rb") as f:
            return self.publish(iter(lambda: f.read(_CHUNK), b""), suffix=suffix)

    def verify(self, name: str) -> bool:
        """Whether blob ``name`` exists and its bytes still hash to its name."""
        f = self.open(name)
        if f is None:
            return False
        digest = hashlib.sha256()
        with f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest() == name[:64]

    def touch(self, name: str) -> bool:
        """Mark blob ``name`` used now (its mtime); False if it is not published."""
        try:
            path = self.path(name)
        except ValueError:
            return False
        with self._lock:
            try:
                os.utime(path)
            except FileNotFoundError:
                return False
        return True

    def expire(self, *, unused_before: float, temp_before: float) -> list[str]:
        """Delete ``EXPIRING_SUFFIXES`` blobs whose mtime (last use) is before
        ``unused_before`` and temporary files (``TEMP_PREFIXES``) modified before
        ``temp_before`` (both POSIX times); returns the names deleted.

        Anything else in the directory (clone bundles, unknown files) is left alone.
        """
        removed: list[str] = []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return removed
        for entry in entries:
            name = entry.name
            if self.valid_name(name) and name.endswith(EXPIRING_SUFFIXES):
                cutoff = unused_before
            elif name.startswith(TEMP_PREFIXES):
                cutoff = temp_before
            else:
                continue
            with self._lock:
                # Checked again under the lock: a touch may have just renewed it.
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    if os.stat(entry.path, follow_symlinks=False).st_mtime >= cutoff:
                        continue
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
            removed.append(name)
        return removed

    def remove(self, name: str) -> None:
        """Delete blob ``name`` if it exists (only once no published URL names it)."""
        try:
            self.path(name).unlink(missing_ok=True)
        except ValueError:
            return

    def url(self, name: str, embedded_base: str | None = None) -> str:
        """The absolute URL of blob ``name``: under ``base_url`` if configured, else under
        ``embedded_base`` (the embedded listener's ``…/.hgwire/blobs/`` URL)."""
        base = self.base_url or embedded_base
        if base is None:
            raise ValueError("no base URL for blobs: configure one or serve them over HTTP")
        if not base.endswith("/"):
            base += "/"
        return base + self.path(name).name


def _refresh(path: Path, size: int) -> bool:
    """Whether ``path`` holds ``size`` bytes already; if so it is marked used now."""
    try:
        if path.stat().st_size != size:
            return False
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def _sync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
