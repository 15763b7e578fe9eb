"""The ``manifestdata`` handler: manifest revisions as full texts or deltas."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mercurial import error

from hgwire_tw.commands.common import MAX_PATH, check_nodes, served_referrers, store_records
from hgwire_tw.core.errors import ArgumentError, CommandError

__all__ = ["check_tree", "manifestdata", "served_manifests", "unique"]


def unique(nodes: list[bytes]) -> list[bytes]:
    """``nodes`` without repeats, first occurrence kept."""
    return list(dict.fromkeys(nodes))


def manifestdata(repo: Any, args: Mapping[bytes, Any]) -> Iterator[object]:
    """Stream ``{totalitems}``, then a record (+ payload) per manifest revision.

    Revisions come in storage order (parents first). A delta's base is a revision the
    client has: a parent when ``haveparents``, or one sent earlier in this response;
    otherwise a full text is sent. Every node is checked before anything is sent, so
    an unknown node is a clean ``unknown node: %s`` error (binary node argument). A
    manifest revision first introduced by a changeset outside the served view (secret,
    hidden) gets that same error unless a served changeset uses it too (``hg commit
    --amend -m`` keeps the manifest): its file names and file nodes never leave.
    """
    store, nodes = served_manifests(repo, args)
    yield from store_records(store, nodes, args)


def served_manifests(repo: Any, args: Mapping[bytes, Any]) -> tuple[Any, list[bytes]]:
    """manifestdata's store and nodes, every node checked to be served (see above).

    Also run before a cache lookup (``cachekeys.manifestdata_key``), so a manifest
    cached while its changeset was served is not handed out once it is secret.
    """
    tree = check_tree(repo, args[b"tree"])
    nodes = unique(check_nodes(b"nodes", args[b"nodes"]))
    store = repo.manifestlog.getstorage(tree)
    linkrevs: dict[bytes, int] = {}
    for node in nodes:
        try:
            linkrevs[node] = store.linkrev(store.rev(node))
        except error.LookupError:
            raise CommandError(b"unknown node: %s", (node,)) from None
    if tree:
        # Changesets name only the root manifest; a directory manifest is served by
        # the linkrev alone.
        filtered = repo.changelog.filteredrevs
        served = {n for n, linkrev in linkrevs.items() if linkrev not in filtered}
    else:
        cl = repo.changelog
        served = set(
            served_referrers(repo, linkrevs, lambda rev: (cl.changelogrevision(rev).manifest,))
        )
    for node in nodes:
        if node not in served:
            raise CommandError(b"unknown node: %s", (node,))
    return store, nodes


def check_tree(repo: Any, tree: object) -> bytes:
    """``tree`` as a manifest directory of ``repo``: ``b""`` (the root manifest), or with
    tree manifests a relative ``dir/sub/`` path; anything else is an ``ArgumentError``
    (Mercurial asserts, or joins it onto a store path)."""
    if not isinstance(tree, bytes):
        raise CommandError(b"tree must be a bytestring")
    if not tree:
        return tree
    segments = tree.split(b"/")
    well_formed = (
        len(tree) <= MAX_PATH
        and tree.endswith(b"/")
        and all(s and s not in (b".", b"..") for s in segments[:-1])
        and not any(c in tree for c in (b"\0", b"\\", b"\n", b"\r"))
    )
    if not well_formed or b"treemanifest" not in repo.requirements:
        raise ArgumentError(b"invalid argument tree: not a manifest directory of this repository")
    return tree
