"""The store path of a full clone: copy the server's revlogs instead of rebuilding them.

When the destination is empty and the server offers ``rawstorefiledata`` (it does only
where Mercurial's own rule allows a stream clone: ``server.uncompressed`` on, no secret
changesets unless ``server.uncompressedallowsecret``), the client asks for the store
files in one command and writes them as they arrive:

* every revlog (``changelog``, ``manifestlog``, ``filelogs``) and, from a non-publishing
  server, the phase roots, when the server advertises those file types (hgwire_tw
  servers do): the copy is complete and consistent, taken under one server lock;
* otherwise only the changelog and the manifests (what Mercurial 6.0.3's v2 client
  fetched), and then the file revisions of every changeset with ``filesdata``.

Files are written the way Mercurial's stream clones write them (``prepare_streamed_file``
registers them with the store's fncache or file index), inside a transaction that
records each new file: if anything fails, the transaction's abort removes every file
written, and the repository is empty again. The repository then takes the server's
storage requirements (``rawrepoformats``) like ``streamclone.applybundlev2`` does. The
caller follows up with an ordinary pull, which brings bookmarks and anything pushed
since the copy was taken.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from hgwire_tw.client.bridge import Remote
from hgwire_tw.core.cbor import IndefiniteChunk
from hgwire_tw.core.errors import RemoteProtocolError

__all__ = [
    "OPTIONAL_FILE_TYPES",
    "STORE_FILE_TYPES",
    "UPSTREAM_FILE_TYPES",
    "store_clone",
    "store_clone_plan",
]

#: What Mercurial 6.0.3's client asked for (and what any v2 server accepts).
UPSTREAM_FILE_TYPES = (b"changelog", b"manifestlog")
#: A complete store: every revlog.
STORE_FILE_TYPES = (b"changelog", b"manifestlog", b"filelogs")
#: Asked for when offered: the phase roots of a non-publishing server, and the branch
#: and tag caches (which a clone would otherwise compute when it commits).
OPTIONAL_FILE_TYPES = (b"phaseroots", b"caches")


def store_clone_plan(repo: Any, caps: dict[bytes, Any]) -> list[bytes] | None:
    """The file types to ask ``rawstorefiledata`` for, or None when the store path does
    not apply (destination not empty, command not offered, formats we cannot read)."""
    if len(repo.unfiltered().changelog) or _has_store_files(repo):
        return None
    command = caps.get(b"commands", {}).get(b"rawstorefiledata")
    if not isinstance(command, dict):
        return None
    formats = caps.get(b"rawrepoformats")
    if not isinstance(formats, list) or any(f not in repo.supported for f in formats):
        return None
    offered = command.get(b"filetypes")
    if not isinstance(offered, list) or not all(t in offered for t in STORE_FILE_TYPES):
        return list(UPSTREAM_FILE_TYPES)
    return list(STORE_FILE_TYPES) + [t for t in OPTIONAL_FILE_TYPES if t in offered]


def _has_store_files(repo: Any) -> bool:
    return any(True for _ in repo.store.data_entries()) or any(
        getattr(e, "is_revlog", False) for e in repo.store.top_entries()
    )


def _checked_path(path: object) -> bytes:
    """A store path from the server: a revlog file or the phase roots, relative, no
    ``..`` (the store vfs audits too; this also refuses names a clone never needs)."""
    from mercurial import store

    if not isinstance(path, bytes) or not path or path.startswith(b"/"):
        raise RemoteProtocolError("rawstorefiledata: bad file path")
    if b"\0" in path or b".." in path.split(b"/") or b"\\" in path:
        raise RemoteProtocolError(f"rawstorefiledata: bad file path {path!r}")
    if path != b"phaseroots" and not store.is_revlog_file(path):
        raise RemoteProtocolError(f"rawstorefiledata: not a store file: {path!r}")
    return path


def _next(objs: Iterator[object], what: str) -> Any:
    try:
        return next(objs)
    except StopIteration:
        raise RemoteProtocolError(f"{what}: response ended early") from None


def _write_file(fd: int, objs: Iterator[object], size: int, path: bytes) -> int:
    """Write one file's indefinite-length bytestring to ``fd``; returns bytes written."""
    written = 0
    while True:
        chunk = _next(objs, "rawstorefiledata")
        if not isinstance(chunk, IndefiniteChunk):
            raise RemoteProtocolError("rawstorefiledata: file data must be a streamed bytestring")
        data = chunk.data
        if data:
            written += len(data)
            if written > size:
                raise RemoteProtocolError(f"rawstorefiledata: {path!r} is longer than announced")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        if chunk.is_last:
            break
    if written != size:
        raise RemoteProtocolError(f"rawstorefiledata: {path!r} is shorter than announced")
    return written


def _read_file(objs: Iterator[object], size: int, name: bytes) -> bytes:
    """A small file's bytes (a cache file), kept in memory."""
    parts: list[bytes] = []
    got = 0
    while True:
        chunk = _next(objs, "rawstorefiledata")
        if not isinstance(chunk, IndefiniteChunk):
            raise RemoteProtocolError("rawstorefiledata: file data must be a streamed bytestring")
        parts.append(chunk.data)
        got += len(chunk.data)
        if got > size:
            raise RemoteProtocolError(f"rawstorefiledata: {name!r} is longer than announced")
        if chunk.is_last:
            break
    if got != size:
        raise RemoteProtocolError(f"rawstorefiledata: {name!r} is shorter than announced")
    return b"".join(parts)


def store_clone(
    repo: Any,
    remote: Remote,
    caps: dict[bytes, Any],
    file_types: list[bytes],
    stats: Any,
    progress: Callable[[Any], None],
    fetch_files: Callable[[Any, Any, list[bytes]], None],
) -> None:
    """Fill the empty ``repo`` from ``rawstorefiledata`` (see the module docs).

    ``fetch_files(repo, tr, changesets)`` brings the file revisions of ``changesets``
    when the server sent no filelogs. Raises what went wrong; the repository is then
    left as empty as it was.
    """
    from mercurial import cacheutil, scmutil, store, streamclone
    from mercurial.revlogutils import nodemap

    repo = repo.unfiltered()
    objs = remote.call(b"rawstorefiledata", {b"files": file_types})
    header = _next(objs, "rawstorefiledata")
    if not isinstance(header, dict):
        raise RemoteProtocolError("rawstorefiledata: malformed header")
    count, total = int(header.get(b"filecount", 0)), int(header.get(b"totalsize", 0))
    stats.topic, stats.total, stats.done = "store files", total, 0
    progress(stats)
    formats = list(caps.get(b"rawrepoformats", []))
    svfs = repo.svfs
    with repo.wlock(), repo.lock(), repo.transaction(b"clone") as tr:
        tr.hookargs.setdefault(b"source", b"clone")
        fileindex = getattr(repo.store, "fileindex", None)
        cache_names = set(cacheutil.cachetocopy(repo))
        known_dirs: set[bytes] = set()
        caches: list[tuple[bytes, bytes]] = []
        for _ in range(count):
            meta = _next(objs, "rawstorefiledata")
            if not isinstance(meta, dict):
                raise RemoteProtocolError("rawstorefiledata: malformed file record")
            size = meta.get(b"size")
            if not isinstance(size, int) or size < 0:
                raise RemoteProtocolError("rawstorefiledata: malformed file size")
            if meta.get(b"location") == b"cache" and b"caches" in file_types:
                name = meta.get(b"path")
                if name not in cache_names:
                    raise RemoteProtocolError(f"rawstorefiledata: not a cache file: {name!r}")
                caches.append((name, _read_file(objs, size, name)))
                continue
            if meta.get(b"location") != b"store":
                raise RemoteProtocolError("rawstorefiledata: unknown file location")
            path = _checked_path(meta.get(b"path"))
            # Recorded before the first byte: an abort removes the file again.
            tr.add(path, 0)
            if fileindex is not None:
                radix = store.parse_filelog_radix(path)
                if radix is not None:
                    fileindex.add(radix, tr)
            real, mode = svfs.prepare_streamed_file(path, known_dirs)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            fd = os.open(real, flags, mode if mode is not None else 0o666)
            try:
                n = _write_file(fd, objs, size, path)
            finally:
                os.close(fd)
            stats.bytes += n
            stats.done += n
            stats.extra["store files"] = stats.extra.get("store files", 0) + 1
            progress(stats)
        for extra in objs:
            raise RemoteProtocolError(f"rawstorefiledata: unexpected {type(extra).__name__}")

        # The copy takes the server's storage formats (as applybundlev2 does).
        repo.requirements = streamclone.new_stream_clone_requirements(repo.requirements, formats)
        _refresh_store_options(repo)
        scmutil.writereporequirements(repo)
        # The server's caches go in last, just before the commit warms the caches
        # (finding them current, it has nothing to compute).
        for name, data in caches:
            repo.cachevfs.write(name, data, atomictemp=True)
        repo.invalidate(clearfilecache=True)
        nodemap.post_stream_cleanup(repo)
        cl = repo.changelog
        stats.changesets = len(cl)
        if b"filelogs" not in file_types:
            # Mercurial 6.0.3's way: the file revisions of every changeset, as deltas.
            fetch_files(repo, tr, [cl.node(r) for r in cl])
    repo.invalidate(clearfilecache=True)


def _refresh_store_options(repo: Any) -> None:
    """Make the store's revlog options follow the new requirements (compression...)."""
    from mercurial.repo import vfs_options

    repo.svfs.options = vfs_options.resolve_store_vfs_options(
        repo.ui, repo.requirements, repo.features
    )
