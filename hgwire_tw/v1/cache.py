"""Response caching for v1 ``getbundle`` (full and incremental clones and pulls).

``cached_v1_response`` is a drop-in for ``dispatch.v1_response`` that the HTTP and SSH
transports hand to ``RepositoryPool.iterate``. For ``getbundle`` it keys the response
on everything that can change its bytes:

* the exact repository state: served heads and changeset count, bookmarks, phases
  (``listkeys`` of both), the obsolescence store (size and SHA-256) and the
  repository's ``hgrc``;
* every ``getbundle`` argument as received (``heads``, ``common``, ``bundlecaps``
  with the client's bundle2 capabilities, ``cg``, ``bookmarks``, ``phases`` …);
* the response encoding: the transport and the media type, compression engine and level
  chosen for the client (over SSH: the engine and level a bundle2 is compressed with
  inside itself, or nothing for a raw answer); plus the Mercurial version.

So a push, a phase or bookmark move, or a new obsolescence marker yields a new key
and nothing stale is served; no invalidation is needed. Only compressed-preferred
stream results are stored: that excludes stream clones and the bundle2 error replies
Mercurial makes of an ``Abort`` (both prefer uncompressed), and out-of-band errors are
not streams at all. The permission check runs before the cache is consulted. A hit is
sent as stored, never compressed again; for SSH the engine it names is read from the
stored bundle2 head.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from mercurial import pushkey, wireprotov1server
from twisted.logger import Logger

from hgwire_tw.cache.base import stored_while_streaming
from hgwire_tw.commands.cachekeys import cache_key_digest
from hgwire_tw.core.errors import CommandError
from hgwire_tw.core.v1 import MEDIA_TYPE_V01, ArgValue, ResponseFormat, bundle2_engine
from hgwire_tw.v1.dispatch import (
    STREAM_PIECE,
    V1Stream,
    V1StreamStart,
    close_chunks,
    encode_stream,
    run_v1_command,
    v1_response,
)
from hgwire_tw.v1.protocol import V1Protocol

if TYPE_CHECKING:
    from hgwire_tw.cache import ContentStore

__all__ = ["CACHED_COMMANDS", "cached_v1_response", "getbundle_state"]

log = Logger()

CACHED_COMMANDS = frozenset({b"getbundle"})


def _file_digest(path: bytes, vfs: Any) -> list[object]:
    if not vfs.exists(path):
        return []
    digest = hashlib.sha256()
    size = 0
    with vfs(path, b"rb") as f:
        for chunk in iter(lambda: f.read(256 * 1024), b""):
            digest.update(chunk)
            size += len(chunk)
    return [size, digest.digest()]


def getbundle_state(view: Any) -> dict[bytes, object]:
    """The repository state a ``getbundle`` response depends on (``view`` is served)."""
    return {
        b"heads": sorted(view.heads()),
        b"changesets": len(view),
        b"bookmarks": dict(pushkey.list(view, b"bookmarks")),
        b"phases": dict(pushkey.list(view, b"phases")),
        b"obsstore": _file_digest(b"obsstore", view.svfs),
        b"hgrc": _file_digest(b"hgrc", view.vfs),
    }


def _format_key(fmt: ResponseFormat | None) -> list[object] | None:
    if fmt is None:
        return None
    key: list[object] = [fmt.media_type, fmt.engine.encode(), fmt.level]
    if fmt.bundle2:
        key.append(b"bundle2")  # appended only here, so HTTP keys stay as they were
    return key


def cached_v1_response(
    repo: Any,
    name: bytes,
    args: Mapping[bytes, ArgValue],
    proto: V1Protocol,
    choose: Callable[[bool], ResponseFormat] | None,
    cache: ContentStore | None = None,
    transport: bytes = b"http",
    salt: bytes = b"",
    piece: int = STREAM_PIECE,
) -> Iterator[object]:
    """``v1_response`` with ``getbundle`` served from / stored into ``cache``.

    ``transport`` (``b"http"``/``b"ssh"``) and ``salt`` (``runner.server_salt()``)
    are part of the key.
    """
    if cache is None or name not in CACHED_COMMANDS:
        yield from v1_response(repo, name, args, proto, choose, piece)
        return
    fmt: ResponseFormat | None = None
    if choose is not None:
        try:
            fmt = choose(False)
        except CommandError:
            yield from v1_response(repo, name, args, proto, choose, piece)
            return
    # Permission first: a hit must not skip it (run_v1_command repeats it on a miss).
    proto.bind(repo)
    proto.args = dict(args)
    view = wireprotov1server.getdispatchrepo(repo, proto, name)
    proto.checkperm(wireprotov1server.commands[name].permission)
    state = {
        b"kind": b"v1-" + name,
        b"server": salt,
        b"repo": bytes(repo.root),
        b"transport": transport,
        b"format": _format_key(fmt),
        b"args": {k: v for k, v in args.items()},
        b"repostate": getbundle_state(view),
    }
    key = cache_key_digest(state).decode("ascii")
    media_type = fmt.media_type if fmt is not None else MEDIA_TYPE_V01
    engine = fmt.engine if fmt is not None else "none"
    entry = cache.lookup(key)
    if entry is not None:
        log.info(
            "v1 cache hit {command} {key} {size} bytes",
            command=name.decode(),
            key=key,
            size=entry.size,
        )
        pieces = entry.chunks()
        if fmt is not None and fmt.bundle2:
            # What the stored bytes say, not what was asked: a raw bundle is stored raw.
            first = next(pieces, b"")
            engine = bundle2_engine(first)
            yield V1StreamStart(media_type=media_type, engine=engine, legacy=False)
            yield first
        else:
            yield V1StreamStart(media_type=media_type, engine=engine, legacy=False)
        yield from pieces
        return

    result = run_v1_command(repo, name, args, proto)
    if not isinstance(result, V1Stream) or result.prefer_uncompressed:
        # Not a cacheable answer: serve it exactly as v1_response would.
        yield from v1_response(repo, name, args, proto, choose, piece, result=result)
        return
    chunks = result.chunks
    try:
        start, body = encode_stream(chunks, fmt, piece)
        yield start
        yield from stored_while_streaming(cache, key, body)
    finally:
        close_chunks(chunks)
