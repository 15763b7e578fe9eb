"""The ``rawstorefiledata`` handler: the changelog and manifest store files, verbatim."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import IO, Any

from mercurial import streamclone

from hgwire_tw.core.cbor import (
    EncodedCBOR,
    indefinite_bytes_begin,
    indefinite_bytes_chunk,
    indefinite_bytes_end,
)
from hgwire_tw.core.errors import CommandError

__all__ = ["CHUNK_SIZE", "FILE_TYPES", "rawstorefiledata", "stream_allowed"]

FILE_TYPES = frozenset({b"changelog", b"manifestlog"})
# Well under the 32 KiB frame payload, so a chunk plus its header fits a frame.
CHUNK_SIZE = 32 * 1024 - 64


def stream_allowed(repo: Any, configured: bool = True) -> bool:
    """Whether raw store files may be served (server option and repository config).

    Mercurial refuses stream clones when ``server.uncompressed`` is off and when the
    repository has secret changesets (raw revlogs would include them) unless
    ``server.uncompressedallowsecret`` is set.
    """
    return configured and bool(streamclone.allowservergeneration(repo))


def rawstorefiledata(
    repo: Any, args: Mapping[bytes, Any], *, configured: bool = True
) -> Iterator[object]:
    """Stream ``{filecount, totalsize}``, then per file ``{location, path, size}`` and
    its bytes as one indefinite-length bytestring (pre-encoded ``EncodedCBOR`` pieces).

    The file list is taken and the files opened under the repository lock; the data is
    read after the lock is released from those open handles, at the sizes recorded
    under the lock, so concurrent pushes neither wait for a slow client nor corrupt the
    copy (revlogs only grow; a rewritten file is a new inode).
    """
    if not stream_allowed(repo, configured):
        raise CommandError(b"stream clone is disabled")
    files = args[b"files"]
    if not isinstance(files, (list, tuple)) or not all(isinstance(f, bytes) for f in files):
        raise CommandError(b"files must be an array of bytestrings")
    wanted = set(files)
    unsupported = wanted - FILE_TYPES
    if unsupported:
        raise CommandError(b"unknown file type: %s", (b", ".join(sorted(unsupported)),))

    vfs = repo.svfs
    with contextlib.ExitStack() as stack:
        opened: list[tuple[bytes, int, IO[bytes]]] = []
        with repo.lock():
            for entry in repo.store.top_entries():
                if not getattr(entry, "is_revlog", False):
                    continue
                if entry.is_changelog and b"changelog" not in wanted:
                    continue
                if entry.is_manifestlog and b"manifestlog" not in wanted:
                    continue
                if not (entry.is_changelog or entry.is_manifestlog):
                    continue
                for storefile in entry.files(vfs):
                    path = storefile.unencoded_path
                    handle = stack.enter_context(vfs(path, b"rb", auditpath=False))
                    size = storefile.file_size(vfs)
                    opened.append((path, size, handle))

        yield {
            b"filecount": len(opened),
            b"totalsize": sum(size for _, size, _ in opened),
        }
        for path, size, handle in opened:
            yield {b"location": b"store", b"path": path, b"size": size}
            yield EncodedCBOR(indefinite_bytes_begin())
            remaining = size
            while remaining:
                data = handle.read(min(CHUNK_SIZE, remaining))
                if not data:
                    raise CommandError(b"store file shrank while being sent: %s", (path,))
                remaining -= len(data)
                yield EncodedCBOR(indefinite_bytes_chunk(data))
            yield EncodedCBOR(indefinite_bytes_end())
