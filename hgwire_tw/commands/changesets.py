"""The ``changesetdata`` handler: changeset records with phases, bookmarks, raw text."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mercurial import bookmarks, changelog, phases

from hgwire_tw.commands.common import mercurial_errors, resolve_revisions
from hgwire_tw.commands.summaries import SUMMARIES

__all__ = ["changesetdata"]


def changesetdata(repo: Any, args: Mapping[bytes, Any]) -> Iterator[object]:
    """Stream ``{totalitems}``, then per changeset a record and its payloads.

    Records are ``{node, parents?, phase?, bookmarks?, fieldsfollowing?}`` in revision
    (topological) order; ``revision`` is the raw changelog entry. With ``bookmarks``,
    bookmarks on changesets outside the result follow as ``{node, bookmarks}`` records
    sorted by node, so a client sees bookmark moves without new changesets. Bookmarks
    on changesets outside the served view are never shown.
    """
    fields = args[b"fields"]
    nodes = resolve_revisions(repo, args[b"revisions"])
    if nodes:
        with mercurial_errors():
            repo.hook(b"preoutgoing", throw=True, source=b"serve")

    cl = repo.changelog
    # filesdata will want each changeset's manifest and touched paths (summaries.py);
    # they are in the text read here, unless copies live in sidedata (which also holds
    # the touched paths then).
    keep_summaries = repo.filecopiesmode is None
    publishing = repo.publishing()
    phasecache = repo._phasecache

    marks: dict[bytes, list[bytes]] = {}
    if b"bookmarks" in fields:
        for name, node in bookmarks.listbinbookmarks(repo):
            marks.setdefault(node, []).append(name)

    yield {b"totalitems": len(nodes)}
    for node in nodes:
        record: dict[bytes, object] = {b"node": node}
        if b"parents" in fields:
            record[b"parents"] = list(cl.parents(node))
        if b"phase" in fields:
            # A publishing server presents everything it serves as public, as v1 does.
            if publishing:
                record[b"phase"] = b"public"
            else:
                record[b"phase"] = phases.phasenames[phasecache.phase(repo, cl.rev(node))]
        names = marks.pop(node, None)
        if names:
            record[b"bookmarks"] = sorted(names)
        text: bytes | None = None
        if b"revision" in fields:
            text = bytes(cl.revision(node))
            record[b"fieldsfollowing"] = [[b"revision", len(text)]]
            if keep_summaries:
                entry = changelog.changelogrevision(cl, text, {}, False)
                SUMMARIES.remember(node, entry.manifest, tuple(entry.files))
        yield record
        if text is not None:
            yield text

    for node in sorted(marks):
        yield {b"node": node, b"bookmarks": sorted(marks[node])}
