"""The ``rawstorefiledata`` handler: revlog store files (and phase roots), verbatim.

Mercurial 6.0.3's v2 client asks for ``changelog`` and ``manifestlog`` and fetches file
revisions afterwards. hgwire_tw's own client also asks for ``filelogs`` and
``phaseroots`` (advertised as ``filetypes`` in the command's capabilities), which makes
the response a complete stream clone taken under one repository lock: every revlog of
the store, on a non-publishing server the phase roots, and the branch and tag caches
(``caches``), as Mercurial's own stream clones copy them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import IO, Any

from mercurial import cacheutil, streamclone

from hgwire_tw.core.cbor import (
    EncodedCBOR,
    indefinite_bytes_begin,
    indefinite_bytes_chunk,
    indefinite_bytes_end,
)
from hgwire_tw.core.errors import CommandError

__all__ = [
    "CHUNK_SIZE",
    "FILE_TYPES",
    "PHASEROOTS",
    "rawstore_caps",
    "rawstorefiledata",
    "stream_allowed",
]

#: The store's phase-roots file (sent only to clients asking for ``phaseroots``).
PHASEROOTS = b"phaseroots"
#: Upstream's two file types, then ours: every filelog, the phase roots, and the caches
#: a clone would otherwise compute (branch heads, tags; ``location: cache``).
FILE_TYPES = frozenset({b"changelog", b"manifestlog", b"filelogs", PHASEROOTS, b"caches"})
#: Bytes per indefinite-length chunk: big enough that a file costs few objects, small
#: enough that the pool's batches stay bounded (well under its batch byte limit).
CHUNK_SIZE = 256 * 1024
#: Types whose revlogs are store data entries (filelogs; tree manifests under meta/).
_DATA_TYPES = frozenset({b"manifestlog", b"filelogs"})


def stream_allowed(repo: Any, configured: bool = True) -> bool:
    """Whether raw store files may be served (server option and repository config).

    Mercurial refuses stream clones when ``server.uncompressed`` is off and when the
    repository has secret changesets (raw revlogs would include them) unless
    ``server.uncompressedallowsecret`` is set. A repository with obsolescence markers is
    refused too: this command does not send them, so the copy would show the changesets
    they hide (the revision path sends only the served view).
    """
    return (
        configured and bool(streamclone.allowservergeneration(repo)) and not _has_obsmarkers(repo)
    )


def _has_obsmarkers(repo: Any) -> bool:
    try:
        return bool(repo.svfs.stat(b"obsstore").st_size)
    except FileNotFoundError:
        return False


def rawstore_caps(repo: Any) -> Mapping[bytes, object]:
    """Extra capabilities of ``rawstorefiledata``: the file types it accepts."""
    return {b"filetypes": sorted(FILE_TYPES)}


def _wanted_entry(entry: Any, wanted: set[bytes]) -> bool:
    if not getattr(entry, "is_revlog", False):
        return False
    if entry.is_changelog:
        return b"changelog" in wanted
    if entry.is_manifestlog:
        return b"manifestlog" in wanted
    return bool(entry.is_filelog) and b"filelogs" in wanted


def rawstorefiledata(
    repo: Any, args: Mapping[bytes, Any], *, configured: bool = True
) -> Iterator[object]:
    """Stream ``{filecount, totalsize}``, then per file ``{location, path, size}`` and
    its bytes as one indefinite-length bytestring (pre-encoded ``EncodedCBOR`` pieces).

    The file list is taken and the files opened under the repository lock; the data is
    read after the lock is released from those open handles, at the sizes recorded
    under the lock, so concurrent pushes neither wait for a slow client nor corrupt the
    copy (revlogs only grow; a rewritten file is a new inode). The phase roots, a small
    file rewritten in place, are read whole under the lock.
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
    # A publishing server presents everything as public: its phase roots are not sent
    # (Mercurial's stream clones make the same choice).
    send_phases = PHASEROOTS in wanted and not repo.publishing()
    with contextlib.ExitStack() as stack:
        opened: list[tuple[bytes, bytes, int, IO[bytes] | bytes]] = []
        with repo.lock():
            entries = list(repo.store.data_entries()) if wanted & _DATA_TYPES else []
            entries += repo.store.top_entries(phase=send_phases)
            for entry in entries:
                if _wanted_entry(entry, wanted):
                    for storefile in entry.files(vfs):
                        path = storefile.unencoded_path
                        size = storefile.file_size(vfs)
                        handle = stack.enter_context(vfs(path, b"rb", auditpath=False))
                        opened.append((b"store", path, size, handle))
                elif send_phases and not getattr(entry, "is_revlog", False):
                    if any(f.unencoded_path == PHASEROOTS for f in entry.files(vfs)):
                        data = vfs.tryread(PHASEROOTS)
                        opened.append((b"store", PHASEROOTS, len(data), data))
            if b"caches" in wanted:
                # Small files rewritten whole: read under the lock, like the phase roots.
                for name in cacheutil.cachetocopy(repo):
                    if repo.cachevfs.exists(name):
                        data = repo.cachevfs.tryread(name)
                        opened.append((b"cache", name, len(data), data))

        yield {
            b"filecount": len(opened),
            b"totalsize": sum(size for _, _, size, _ in opened),
        }
        for location, path, size, source in opened:
            yield {b"location": location, b"path": path, b"size": size}
            yield EncodedCBOR(indefinite_bytes_begin())
            if isinstance(source, bytes):
                if source:
                    yield EncodedCBOR(indefinite_bytes_chunk(source))
            else:
                remaining = size
                while remaining:
                    data = source.read(min(CHUNK_SIZE, remaining))
                    if not data:
                        raise CommandError(b"store file shrank while being sent: %s", (path,))
                    remaining -= len(data)
                    yield EncodedCBOR(indefinite_bytes_chunk(data))
            yield EncodedCBOR(indefinite_bytes_end())
