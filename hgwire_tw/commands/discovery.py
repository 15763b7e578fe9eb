"""Handlers for the small discovery-style v2 commands.

``heads``, ``known``, ``branchmap``, ``listkeys``, ``lookup`` (pull) and ``pushkey``
(push). Each yields exactly one object. ``capabilities`` lives in ``registry.py``
because it describes the command table itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mercurial import encoding, error, pushkey

from hgwire_tw.commands.common import check_nodes, mercurial_errors
from hgwire_tw.core.errors import CommandError

__all__ = ["branchmap", "heads", "known", "listkeys", "lookup", "pushkey_"]

Args = Mapping[bytes, Any]


def heads(repo: Any, args: Args) -> Iterator[object]:
    """The visible heads (``[nullid]`` for an empty repository); public ones only on request."""
    if args[b"publiconly"]:
        repo = repo.filtered(b"immutable")
    yield list(repo.heads())


def known(repo: Any, args: Args) -> Iterator[object]:
    """A bytestring of ASCII ``1``/``0``, one per node: is it visible here?"""
    nodes = check_nodes(b"nodes", args[b"nodes"])
    yield b"".join(b"1" if k else b"0" for k in repo.known(nodes))


def branchmap(repo: Any, args: Args) -> Iterator[object]:
    """``{branch: [head nodes]}``, closed heads included, as ``repo.branchmap()`` has it."""
    cache = repo.branchmap()
    yield {
        encoding.fromlocal(branch): list(cache.branchheads(branch, closed=True)) for branch in cache
    }


def listkeys(repo: Any, args: Args) -> Iterator[object]:
    """The pushkey namespace's keys and values, as v1 ``listkeys`` gives them."""
    namespace = args[b"namespace"]
    if not isinstance(namespace, bytes):
        raise CommandError(b"namespace must be a bytestring")
    with mercurial_errors():
        keys = pushkey.list(repo, encoding.tolocal(namespace))
    yield {encoding.fromlocal(k): encoding.fromlocal(v) for k, v in keys.items()}


def lookup(repo: Any, args: Args) -> Iterator[object]:
    """The binary node a key (revision number, hash prefix, name) resolves to.

    An unresolvable key is a ``CommandError`` ``unknown revision '%s'`` (a
    ``{status: error}`` reply the 6.0.3 client turns into a clean abort) where upstream
    6.0.3 crashed into an error-response frame. Keys naming changesets outside the
    served view (secret, hidden) get the same message, so their existence is not
    revealed.
    """
    key = args[b"key"]
    if not isinstance(key, bytes):
        raise CommandError(b"key must be a bytestring")
    try:
        node = repo.lookup(encoding.tolocal(key))
    except error.RepoLookupError:
        raise CommandError(b"unknown revision '%s'", (key,)) from None
    yield node


def pushkey_(repo: Any, args: Args) -> Iterator[object]:
    """Set a pushkey value (move a bookmark, advance a phase) for real.

    ``repo.pushkey`` runs the ``prepushkey`` hook and does the change under the
    repository's locks and in a transaction; the result is the boolean outcome.
    """
    values = []
    for name in (b"namespace", b"key", b"old", b"new"):
        value = args[name]
        if not isinstance(value, bytes):
            raise CommandError(b"%s must be a bytestring", (name,))
        values.append(encoding.tolocal(value))
    with mercurial_errors():
        result = repo.pushkey(*values)
    yield bool(result) if isinstance(result, bool) or result is None else result
