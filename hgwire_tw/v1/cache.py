"""Response caching for v1 ``getbundle`` (full and incremental clones and pulls).

``CachingV1Runner`` decorates a ``V1Runner`` (``hgwire_tw.v1.runner.make_runner`` puts
it in front whenever the service has a cache). For ``getbundle`` it keys the response
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
not streams at all. The runner's own ``prepare`` (the call's one permission check)
runs before the cache is consulted, and a miss goes on with the same prepared command.
A hit is sent as stored, never compressed again; for SSH the engine it names is read
from the stored bundle2 head.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mercurial import pushkey
from twisted.logger import Logger

from hgwire_tw.cache.base import stored_while_streaming
from hgwire_tw.commands.cachekeys import cache_key_digest
from hgwire_tw.core.v1 import MEDIA_TYPE_V01, ResponseFormat, bundle2_engine
from hgwire_tw.v1.call import V1Call
from hgwire_tw.v1.dispatch import close_chunks, encode_stream
from hgwire_tw.v1.results import V1OutOfBandError, V1Stream, V1StreamStart
from hgwire_tw.v1.runner import V1Runner

if TYPE_CHECKING:
    from hgwire_tw.cache import ContentStore

__all__ = ["CACHED_COMMANDS", "CachingV1Runner", "getbundle_state"]

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


class CachingV1Runner:
    """``inner``'s runs, with ``getbundle`` answers served from / stored into ``cache``."""

    def __init__(self, inner: V1Runner, cache: ContentStore) -> None:
        self.inner = inner
        self.cache = cache

    def run(self, repo: Any, call: V1Call) -> Iterator[object]:
        """Run ``call`` as ``inner`` does, answering a cached ``getbundle`` from the
        cache and storing a new one as it streams."""
        fmt = call.formats.compressed
        if call.name not in CACHED_COMMANDS or isinstance(fmt, V1OutOfBandError):
            # a client refused any stream answer gets that refusal, never a stored one
            yield from self.inner.run(repo, call)
            return
        prepared = self.inner.prepare(repo, call)
        key = _key(call, fmt, prepared.view)
        media_type = fmt.media_type if fmt is not None else MEDIA_TYPE_V01
        engine = fmt.engine if fmt is not None else "none"
        entry = self.cache.lookup(key)
        if entry is not None:
            log.info(
                "v1 cache hit {command} {key} {size} bytes",
                command=call.name.decode(),
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

        result = yield from self.inner.execute(prepared)
        if not isinstance(result, V1Stream) or result.prefer_uncompressed:
            # Not a cacheable answer: served exactly as the runner serves it.
            yield from self.inner.respond(prepared, result, call.formats)
            return
        chunks = result.chunks
        try:
            start, body = encode_stream(chunks, fmt, self.inner.piece)
            yield start
            yield from stored_while_streaming(self.cache, key, body)
        finally:
            close_chunks(chunks)
        yield from self.inner.asides(prepared)


def _key(call: V1Call, fmt: ResponseFormat | None, view: Any) -> str:
    """The cache key of ``call``'s answer in format ``fmt`` (``view``: the served view)."""
    state = {
        b"kind": b"v1-" + call.name,
        b"server": call.salt,
        b"repo": bytes(view.root),
        b"transport": call.transport.encode("ascii"),
        b"format": _format_key(fmt),
        b"args": {k: v for k, v in call.args.items()},
        b"repostate": getbundle_state(view),
    }
    return cache_key_digest(state).decode("ascii")
