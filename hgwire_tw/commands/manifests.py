"""The ``manifestdata`` handler: manifest revisions as full texts or deltas."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mercurial import error

from hgwire_tw.commands.common import check_nodes, store_records
from hgwire_tw.core.errors import CommandError

__all__ = ["manifestdata", "unique"]


def unique(nodes: list[bytes]) -> list[bytes]:
    """``nodes`` without repeats, first occurrence kept."""
    return list(dict.fromkeys(nodes))


def manifestdata(repo: Any, args: Mapping[bytes, Any]) -> Iterator[object]:
    """Stream ``{totalitems}``, then a record (+ payload) per manifest revision.

    Revisions come in storage order (parents first). A delta's base is a revision the
    client has: a parent when ``haveparents``, or one sent earlier in this response;
    otherwise a full text is sent. Every node is checked before anything is sent, so
    an unknown node is a clean ``unknown node: %s`` error (binary node argument).
    """
    tree = args[b"tree"]
    if not isinstance(tree, bytes):
        raise CommandError(b"tree must be a bytestring")
    nodes = unique(check_nodes(b"nodes", args[b"nodes"]))
    store = repo.manifestlog.getstorage(tree)
    for node in nodes:
        try:
            store.rev(node)
        except error.LookupError:
            raise CommandError(b"unknown node: %s", (node,)) from None
    yield from store_records(store, nodes, args)
