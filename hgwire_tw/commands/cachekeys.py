"""Cache-key material for cacheable v2 commands (wire protocol §7.3).

A key function returns the *state map* whose deterministic CBOR encoding is hashed
(``cache_key_digest``): ``{globalversion, localversion, command, mediatype, version,
repo, args}`` with the normalized arguments, exactly as upstream builds it, so a cacher
may adjust it before hashing. Beyond upstream:

* ``changesetdata`` is cacheable: its key adds ``repostate`` (served heads, bookmarks,
  phase roots and publishing flag), because phase and bookmark fields change without
  new changesets.
* ``filesdata`` adds the served heads when a revision specifier is not a plain list of
  nodes (a DAG range resolves differently as the repository grows).
* Commands that need push permission never get a key (see ``registry.cache_state``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from mercurial import pushkey

from hgwire_tw.core.cbor import dumps

__all__ = [
    "FRAMING_MEDIA_TYPE",
    "GLOBAL_CACHE_VERSION",
    "HTTP_V2_API",
    "CacheKeyFn",
    "cache_key_digest",
    "changesetdata_key",
    "command_state",
    "filedata_key",
    "filesdata_key",
    "manifestdata_key",
    "server_salt",
]

GLOBAL_CACHE_VERSION = 1
FRAMING_MEDIA_TYPE = b"application/mercurial-exp-framing-0006"
HTTP_V2_API = b"exp-http-v2-0003"

CacheKeyFn = Callable[[Any, Mapping[bytes, Any]], "dict[bytes, object] | None"]


def command_state(
    repo: Any, command: bytes, args: Mapping[bytes, Any], localversion: int = 1
) -> dict[bytes, object]:
    """The upstream state map for ``command`` with normalized ``args`` on ``repo``."""
    return {
        b"globalversion": GLOBAL_CACHE_VERSION,
        b"localversion": localversion,
        b"command": command,
        b"mediatype": FRAMING_MEDIA_TYPE,
        b"version": HTTP_V2_API,
        b"repo": bytes(repo.root),
        b"args": dict(args),
    }


def cache_key_digest(state: Mapping[bytes, object]) -> bytes:
    """The cache key: SHA-1 hex of the deterministic CBOR of ``state``."""
    return hashlib.sha1(dumps(dict(state))).hexdigest().encode("ascii")


def server_salt() -> bytes:
    """What the cached bytes depend on beyond the request: Mercurial and the format."""
    from mercurial import util

    version: bytes = util.version()
    return b"hgwire-cache-1 mercurial-" + version


def _repo_state(repo: Any) -> dict[bytes, object]:
    """What changesetdata's phase/bookmark fields depend on, beyond the nodes."""
    return {
        b"heads": sorted(repo.heads()),
        b"bookmarks": dict(pushkey.list(repo, b"bookmarks")),
        b"phases": dict(pushkey.list(repo, b"phases")),
    }


def manifestdata_key(repo: Any, args: Mapping[bytes, Any]) -> dict[bytes, object]:
    """Key material for ``manifestdata`` (upstream's, localversion 1)."""
    return command_state(repo, b"manifestdata", args)


def filedata_key(repo: Any, args: Mapping[bytes, Any]) -> dict[bytes, object]:
    """Key material for ``filedata`` (upstream's, localversion 1)."""
    return command_state(repo, b"filedata", args)


def filesdata_key(repo: Any, args: Mapping[bytes, Any]) -> dict[bytes, object]:
    """Key material for ``filesdata``; DAG-range requests also depend on the heads."""
    state = command_state(repo, b"filesdata", args)
    revisions = args.get(b"revisions")
    explicit = isinstance(revisions, list) and all(
        isinstance(spec, dict) and spec.get(b"type") == b"changesetexplicit" for spec in revisions
    )
    if not explicit:
        state[b"repostate"] = {b"heads": sorted(repo.heads())}
    return state


def changesetdata_key(repo: Any, args: Mapping[bytes, Any]) -> dict[bytes, object]:
    """Key material for ``changesetdata``, including phase and bookmark state."""
    state = command_state(repo, b"changesetdata", args)
    state[b"repostate"] = _repo_state(repo)
    return state
