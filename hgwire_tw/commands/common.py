"""Helpers shared by the v2 command handlers: argument checks, revision specifiers,
path filters, revision records, and turning Mercurial's errors into command errors.

Handlers receive the repository already filtered to the server's view (``served`` by
default: secret and hidden changesets do not exist for them), see ``served_view``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from mercurial import discovery, error
from mercurial import match as matchmod
from mercurial.node import hex, nullrev

from hgwire_tw.core.cbor import (
    EncodedCBOR,
    byte_string_head,
    dumps,
    map_head,
    uint_head,
)
from hgwire_tw.core.errors import ArgumentError, CommandError

__all__ = [
    "MAX_PATH",
    "PATH_FILTER_PREFIXES",
    "check_nodes",
    "check_path",
    "check_served_revisions",
    "file_matcher",
    "mercurial_errors",
    "resolve_revisions",
    "revision_records",
    "served_referrers",
    "served_view",
]

PATH_FILTER_PREFIXES = (b"path:", b"rootfilesin:")
#: Longest file or directory path accepted from a client (PATH_MAX on Linux).
MAX_PATH = 4096


def served_view(repo: Any) -> Any:
    """``repo`` filtered as ``hg serve`` filters it (config ``server.view``, ``served``)."""
    view = repo.ui.config(b"server", b"view") or b"served"
    return repo.filtered(view)


def check_nodes(name: bytes, value: object) -> list[bytes]:
    """``value`` as a list of 20-byte binary nodes, or ``ArgumentError``."""
    if not isinstance(value, (list, tuple)):
        raise ArgumentError(b"%s must be an array of nodes", (name,))
    for node in value:
        if not isinstance(node, bytes) or len(node) != 20:
            raise ArgumentError(b"%s must contain 20-byte binary nodes", (name,))
    return list(value)


def check_path(name: bytes, value: object) -> bytes:
    """``value`` as a repository file path: non-empty bytes of at most ``MAX_PATH``
    bytes, without NUL or line breaks (which no tracked path has), or ``ArgumentError``."""
    if not isinstance(value, bytes) or not value:
        raise ArgumentError(b"%s must be a non-empty bytestring", (name,))
    if len(value) > MAX_PATH or any(c in value for c in (b"\0", b"\n", b"\r")):
        raise ArgumentError(b"invalid argument %s: not a file path", (name,))
    return value


@contextlib.contextmanager
def mercurial_errors() -> Iterator[None]:
    """Turn Mercurial's user-facing aborts (hooks, locks, lookups) into ``CommandError``."""
    try:
        yield
    except (error.Abort, error.RepoError, error.LookupError) as exc:
        message = getattr(exc, "message", None) or str(exc).encode("utf-8", "replace")
        raise CommandError(b"%s", (bytes(message),)) from exc


def _spec_key(spec: Mapping[bytes, object], key: bytes, typ: bytes) -> object:
    if key not in spec:
        raise CommandError(b"%s key not present in %s revision specifier", (key, typ))
    return spec[key]


def resolve_revisions(repo: Any, revisions: object) -> list[bytes]:
    """The changeset nodes named by a list of revision specifiers (wire protocol §5).

    The result is the de-duplicated union, sorted by revision number, which is a
    topological order: a client can add the changesets in the order received, and
    "first changeset referencing a file revision" is the earliest one. Nodes the
    served view does not have (unknown, secret, hidden) are refused, except in the
    ``roots`` of a DAG range where they are simply not common.
    """
    if not isinstance(revisions, list):
        raise CommandError(b"revisions must be defined as an array")
    cl = repo.changelog
    revs: set[int] = set()

    def known(name: bytes, nodes: object) -> list[bytes]:
        return _served_nodes(cl, name, nodes)

    for spec in revisions:
        if not isinstance(spec, dict):
            raise CommandError(b"revision specifier must be a map")
        if b"type" not in spec:
            raise CommandError(b"type key not present in revision specifier")
        typ = spec[b"type"]
        if typ == b"changesetexplicit":
            nodes = known(b"nodes", _spec_key(spec, b"nodes", typ))
            revs.update(cl.rev(n) for n in nodes)
        elif typ == b"changesetexplicitdepth":
            nodes = known(b"nodes", _spec_key(spec, b"nodes", typ))
            depth = _spec_key(spec, b"depth", typ)
            if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
                raise CommandError(b"depth must be a positive integer")
            revs.update(_ancestors_within(cl, [cl.rev(n) for n in nodes], depth - 1))
        elif typ == b"changesetdagrange":
            roots = check_nodes(b"roots", _spec_key(spec, b"roots", typ))
            heads = _spec_key(spec, b"heads", typ)
            if not heads:
                raise CommandError(b"heads key in changesetdagrange cannot be empty")
            heads = known(b"heads", heads)
            common = [n for n in roots if cl.hasnode(n)] or [repo.nullid]
            out = discovery.outgoing(repo, commonheads=common, ancestorsof=heads)
            revs.update(cl.rev(n) for n in out.missing)
        else:
            raise CommandError(b"unknown revision specifier type: %s", (_printable(typ),))
    return [cl.node(r) for r in sorted(revs)]


def _served_nodes(cl: Any, name: bytes, nodes: object) -> list[bytes]:
    checked = check_nodes(name, nodes)
    for node in checked:
        if not cl.hasnode(node):
            raise CommandError(b"unknown changeset: %s", (hex(node),))
    return checked


def check_served_revisions(repo: Any, revisions: object) -> None:
    """Raise ``resolve_revisions``' error for a node of a revision specifier that is not
    served, without resolving anything (cheap: run before a cache lookup)."""
    if not isinstance(revisions, list):
        return  # resolve_revisions reports it
    cl = repo.changelog
    for spec in revisions:
        if isinstance(spec, dict):
            for key in (b"nodes", b"heads"):
                if isinstance(spec.get(key), (list, tuple)):
                    _served_nodes(cl, key, spec[key])


def _ancestors_within(cl: Any, revs: list[int], distance: int) -> set[int]:
    """``revs`` and their ancestors at most ``distance`` generations away."""
    result = set(revs)
    frontier = set(revs)
    for _ in range(distance):
        frontier = {p for r in frontier for p in cl.parentrevs(r) if p != nullrev} - result
        if not frontier:
            break
        result |= frontier
    return result


def _printable(value: object) -> bytes:
    return value if isinstance(value, bytes) else repr(value).encode("ascii", "replace")


def file_matcher(repo: Any, pathfilter: object) -> Any:
    """A matcher for a ``{include?, exclude?}`` path filter (None: everything).

    Only ``path:`` and ``rootfilesin:`` patterns are accepted; the result is also
    limited to the repository's narrow spec.
    """
    if pathfilter is None or pathfilter == {}:
        return repo.narrowmatch(matchmod.always())
    if not isinstance(pathfilter, dict):
        raise CommandError(b"pathfilter must be a map")
    lists: dict[bytes, list[bytes]] = {}
    for key in (b"include", b"exclude"):
        patterns = pathfilter.get(key, [])
        if not isinstance(patterns, (list, tuple)):
            raise CommandError(b"%s must be an array of patterns", (key,))
        for pattern in patterns:
            if not isinstance(pattern, bytes) or not pattern.startswith(PATH_FILTER_PREFIXES):
                raise CommandError(
                    b"%s pattern must begin with `path:` or `rootfilesin:`; got %s",
                    (key, _printable(pattern)),
                )
            if len(pattern) > MAX_PATH + len(b"rootfilesin:"):
                raise ArgumentError(b"invalid argument pathfilter: %s pattern too long", (key,))
        lists[key] = list(patterns)
    unknown = sorted(k for k in pathfilter if k not in (b"include", b"exclude"))
    if unknown:
        raise CommandError(b"unknown pathfilter keys: %s", (b", ".join(map(_printable, unknown)),))
    include = lists[b"include"] if b"include" in pathfilter else None
    with mercurial_errors():
        matcher = matchmod.match(
            repo.root, b"", include=include or None, exclude=lists[b"exclude"] or None
        )
    if include is not None and not include:
        # An explicit empty include list matches nothing, not everything.
        matcher = matchmod.never()
    return repo.narrowmatch(matcher)


#: The manifest or file nodes changeset revision ``rev`` references (``served_referrers``).
_Refs = Callable[[int], Iterable[bytes]]


def served_referrers(repo: Any, linkrevs: Mapping[bytes, int], refs: _Refs) -> dict[bytes, int]:
    """A served changeset revision referencing each node of ``linkrevs`` that has one.

    ``linkrevs`` maps manifest or file nodes to their linkrev, the first changeset that
    introduced them; ``refs(rev)`` names the nodes changeset ``rev`` references. A node
    whose linkrev is served is answered by it. Otherwise the changeset that introduced
    it is secret or hidden, yet a later served one may hold the same node: after
    ``hg commit --amend -m`` the new changeset reuses the manifest and file revisions
    of the one it obsoletes, whose linkrevs stay on the hidden predecessor. Those nodes
    are looked up in one pass over the served changesets after the smallest such
    linkrev (every referencing changeset comes at or after the linkrev), which ends as
    soon as all are found; a node no served changeset references is left out, so the
    caller refuses it like an unknown one and nothing reachable only from secret or
    hidden changesets leaves.
    """
    filtered = repo.changelog.filteredrevs
    found: dict[bytes, int] = {}
    pending: dict[bytes, int] = {}
    for node, linkrev in linkrevs.items():
        if linkrev in filtered:
            pending[node] = linkrev
        else:
            found[node] = linkrev
    if pending:
        cl = repo.changelog
        for rev in cl.revs(min(pending.values()) + 1):
            for node in refs(rev):
                if node in pending and pending[node] < rev:
                    found[node] = rev
                    del pending[node]
            if not pending:
                break
    return found


def store_records(
    store: Any,
    nodes: Sequence[bytes],
    args: Mapping[bytes, Any],
    linknodes: Mapping[bytes, bytes] | None = None,
) -> Iterator[object]:
    """The ``{totalitems}`` header, then records for ``nodes`` of a manifest or file store.

    Shared by manifestdata and filedata, whose responses differ only in which nodes are
    valid and whether link nodes are attached.
    """
    fields = args[b"fields"]
    yield {b"totalitems": len(nodes)}
    if not nodes:
        return
    revisions = store.emitrevisions(
        nodes,
        nodesorder=b"storage",
        revisiondata=b"revision" in fields,
        assumehaveparentrevisions=bool(args[b"haveparents"]),
    )
    yield from revision_records(revisions, fields, linknodes)


_NODE_HEAD = byte_string_head(20)


def _cbor_bytes(value: bytes) -> bytes:
    """The CBOR head of a definite byte string of ``len(value)`` bytes, then ``value``."""
    if len(value) == 20:  # a node: most byte strings of a record
        return _NODE_HEAD + value
    return byte_string_head(len(value)) + value


_NODE_KEY = dumps(b"node")
_PARENTS_KEY = dumps(b"parents")
_LINKNODE_KEY = dumps(b"linknode")
_DELTABASE_KEY = dumps(b"deltabasenode")
#: ``fieldsfollowing: [[name, ...`` up to the size, per payload kind.
_FOLLOWING = {
    kind: dumps(b"fieldsfollowing") + b"\x81\x82" + dumps(kind) for kind in (b"delta", b"revision")
}


def revision_records(
    revisions: Iterable[Any],
    fields: set[bytes] | frozenset[bytes],
    linknodes: Mapping[bytes, bytes] | None = None,
) -> Iterator[object]:
    """Records (and their following payloads) for ``emitrevisions`` output.

    Each record is ``{node, parents?, linknode?, deltabasenode?, fieldsfollowing?}``
    followed by one bytestring per ``fieldsfollowing`` entry: the full text, or a
    delta in Mercurial's binary patch format against ``deltabasenode``.

    A record and its payload come out as one :class:`EncodedCBOR`, written here from
    their fixed shape: encoding the record maps through the general encoder (a Python
    callback per map) was a tenth of a revision-path clone's server time. The keys are
    written in Mercurial's order (sorted bytes), so the bytes are exactly what the
    general encoder writes (a test compares them).
    """
    want_parents = b"parents" in fields
    want_revision = b"revision" in fields
    for rev in revisions:
        parts: list[bytes] = []
        count = 1
        payload: Any = None
        if want_revision:
            if rev.revision is not None:
                payload, kind = rev.revision, b"revision"
            else:
                payload, kind = rev.delta, b"delta"
                parts += (_DELTABASE_KEY, _cbor_bytes(rev.basenode))
                count += 1
            parts += (_FOLLOWING[kind], uint_head(len(payload)))
            count += 1
        if linknodes is not None:
            parts += (_LINKNODE_KEY, _cbor_bytes(linknodes[rev.node]))
            count += 1
        parts += (_NODE_KEY, _cbor_bytes(rev.node))
        if want_parents:
            parts += (_PARENTS_KEY, b"\x82", _cbor_bytes(rev.p1node), _cbor_bytes(rev.p2node))
            count += 1
        if payload is not None:
            parts += (byte_string_head(len(payload)), payload)
        yield EncodedCBOR(map_head(count) + b"".join(parts))
