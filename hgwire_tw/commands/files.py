"""The ``filedata`` and ``filesdata`` handlers: file revisions, per path."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from mercurial import error
from mercurial.node import hex, nullrev

from hgwire_tw.commands.common import (
    check_nodes,
    check_path,
    file_matcher,
    resolve_revisions,
    revision_records,
    served_referrers,
    store_records,
)
from hgwire_tw.commands.manifests import unique
from hgwire_tw.commands.summaries import summary
from hgwire_tw.core.errors import CommandError

__all__ = ["filedata", "filesdata", "served_file_revisions"]


def _file_refs(repo: Any, path: bytes) -> Callable[[int], tuple[bytes, ...]]:
    """``served_referrers``' ``refs`` for one file: the node of ``path`` in a changeset
    that touched it (a changeset reusing a file revision of a hidden or secret one, as an
    amend does, lists the file as touched too)."""
    cl = repo.changelog
    manifestlog = repo.manifestlog

    def refs(rev: int) -> tuple[bytes, ...]:
        entry = cl.changelogrevision(rev)
        if path not in entry.files:
            return ()
        try:
            return (manifestlog[entry.manifest].find(path)[0],)
        except KeyError:
            return ()

    return refs


def _filelog(repo: Any, path: object) -> Any:
    """The file's store; ``unknown file`` also when only filtered (secret, hidden)
    changesets ever had the file, so its name does not leak."""
    path = check_path(b"path", path)
    store = repo.file(path)
    filtered = repo.changelog.filteredrevs
    if any(store.linkrev(r) not in filtered for r in store):
        return store
    linkrevs = {store.node(r): store.linkrev(r) for r in store}
    if not served_referrers(repo, linkrevs, _file_refs(repo, path)):
        raise CommandError(b"unknown file: %s", (path,))
    return store


def filedata(repo: Any, args: Mapping[bytes, Any]) -> Iterator[object]:
    """Stream ``{totalitems}`` then records for the given revisions of one file.

    Revision data is the raw filelog data (copy metadata included). A file revision
    first introduced by a changeset outside the served view (secret, hidden) is
    refused like an unknown one, so secret content never leaves through this command.
    """
    store, nodes, linknodes = served_file_revisions(repo, args)
    wanted = linknodes if b"linknode" in args[b"fields"] else None
    yield from store_records(store, nodes, args, wanted)


def served_file_revisions(
    repo: Any, args: Mapping[bytes, Any]
) -> tuple[Any, list[bytes], dict[bytes, bytes]]:
    """filedata's file store, nodes and link nodes, every node checked to be served.

    Also run before a cache lookup (``cachekeys.filedata_key``), so a revision cached
    while its changeset was served is not handed out once it is secret.
    """
    path = check_path(b"path", args[b"path"])
    store = _filelog(repo, path)
    nodes = unique(check_nodes(b"nodes", args[b"nodes"]))
    cl = repo.changelog
    linkrevs: dict[bytes, int] = {}
    for node in nodes:
        try:
            linkrevs[node] = store.linkrev(store.rev(node))
        except error.LookupError:
            raise CommandError(b"unknown file node: %s", (hex(node),)) from None
    # A served changeset referencing each node: its linkrev, or a later one where the
    # linkrev's changeset is hidden or secret (see served_referrers).
    referrers = served_referrers(repo, linkrevs, _file_refs(repo, path))
    linknodes: dict[bytes, bytes] = {}
    for node in nodes:
        if node not in referrers:
            raise CommandError(b"unknown file node: %s", (hex(node),))
        linknodes[node] = cl.node(referrers[node])
    return store, nodes, linknodes


def _touched_file_nodes(repo: Any, mstore: Any, rev: int) -> list[tuple[bytes, bytes]]:
    """``(path, file node)`` of the files changeset ``rev`` touched that its manifest has.

    Reading a whole manifest per changeset was most of a full clone's server time: for a
    changeset with one parent whose manifest is stored as a delta against the parent's,
    that delta alone holds every entry that changed, so it is read instead (a touched
    file missing from it was removed, or kept its parent's file node, which a client
    with the parents already has). Otherwise the whole manifest is read. The manifest
    nodes and touched paths usually come from what changesetdata kept (summaries.py).
    """
    cl = repo.changelog
    manifest, paths = summary(cl, rev)
    if not paths:
        return []
    p1, p2 = cl.parentrevs(rev)
    mctx = repo.manifestlog[manifest]
    if p1 != nullrev and p2 == nullrev:
        base = mstore.rev(summary(cl, p1)[0])
        used, delta = mctx.read_any_fast_delta({base})
        if used == base:
            return [(path, delta[path]) for path in paths if path in delta]
    full = mctx.read()
    return [(path, full[path]) for path in paths if path in full]


def _completes_the_repository(cl: Any, revs: list[int]) -> bool:
    """Whether a client holding the ancestors of ``revs`` ends up with every changeset
    of the repository, and the served view hides none (so every linkrev is served)."""
    if not revs or cl.filteredrevs:
        return False
    return not cl.findmissingrevs(common=revs, heads=cl.headrevs())


def _by_linkrev(repo: Any, revs: list[int], matcher: Any) -> dict[bytes, dict[bytes, bytes]]:
    """filesdata's ``wanted`` from the filelogs' linkrevs, without reading a manifest.

    Only valid where ``_completes_the_repository``: then a file revision a requested
    changeset uses either was introduced by a requested changeset (its linkrev, which is
    also the earliest requested changeset using it), or by one the client has. So the
    revisions to send are, for each path the requested changesets touched, those whose
    linkrev was requested: what Mercurial's own changegroups send in that case
    ("fastpathlinkrev"). Reading a manifest delta per changeset was a third of a full
    clone's filesdata.
    """
    cl = repo.changelog
    wanted_revs = set(revs)
    paths: set[bytes] = set()
    for rev in revs:
        paths.update(summary(cl, rev)[1])
    wanted: dict[bytes, dict[bytes, bytes]] = {}
    for path in sorted(paths):
        if not matcher(path):
            continue
        store = repo.file(path)
        linkrev, node = store.linkrev, store.node
        found = {node(r): cl.node(lr) for r in store if (lr := linkrev(r)) in wanted_revs}
        if found:
            wanted[path] = found
    return wanted


def filesdata(repo: Any, args: Mapping[bytes, Any]) -> Iterator[object]:
    """Stream the file revisions a set of changesets needs.

    With ``haveparents`` the candidates of a changeset are the files it touched (a
    removed file has no revision and is skipped: upstream looked it up and crashed),
    otherwise its whole manifest. The header ``{totalpaths, totalitems}`` is followed,
    per path in sorted order, by ``{path, totalitems}`` and the revision records, whose
    ``linknode`` is the earliest requested changeset referencing that file revision.
    """
    nodes = resolve_revisions(repo, args[b"revisions"])
    matcher = file_matcher(repo, args[b"pathfilter"])
    haveparents = bool(args[b"haveparents"])
    fields = args[b"fields"]

    # path -> {file node: linknode}; metadata only, the data itself is streamed below.
    wanted: dict[bytes, dict[bytes, bytes]] = {}
    cl = repo.changelog
    revs = [cl.rev(node) for node in nodes]
    if haveparents and _completes_the_repository(cl, revs):
        wanted = _by_linkrev(repo, revs, matcher)
    else:
        mstore = repo.manifestlog.getstorage(b"")
        for node, rev in zip(nodes, revs, strict=True):
            if haveparents:
                found = _touched_file_nodes(repo, mstore, rev)
            else:
                found = list(repo[node].manifest().items())
            for path, fnode in found:
                if matcher(path):
                    wanted.setdefault(path, {}).setdefault(fnode, node)

    yield {
        b"totalpaths": len(wanted),
        b"totalitems": sum(len(v) for v in wanted.values()),
    }
    for path in sorted(wanted):
        filenodes = wanted.pop(path)
        # Every path here comes from a served changeset's manifest: no check is needed.
        store = repo.file(path)
        yield {b"path": path, b"totalitems": len(filenodes)}
        revisions = store.emitrevisions(
            list(filenodes),
            nodesorder=b"storage",
            revisiondata=b"revision" in fields,
            assumehaveparentrevisions=haveparents,
        )
        yield from revision_records(revisions, fields, filenodes if b"linknode" in fields else None)
