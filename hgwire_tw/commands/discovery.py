"""Handlers for the small discovery-style v2 commands.

``heads``, ``known``, ``branchmap``, ``listkeys``, ``lookup`` (pull) and ``pushkey``
(push). Each yields exactly one object. ``capabilities`` lives in ``registry.py``
because it describes the command table itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mercurial import encoding, error, pushkey
from mercurial.node import hex

from hgwire_tw.commands.common import check_nodes, mercurial_errors
from hgwire_tw.core.errors import CommandError
from hgwire_tw.pushkeys import check_pushkey

__all__ = ["branchmap", "heads", "known", "listkeys", "lookup", "pushkey_", "served_node"]

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
    6.0.3 crashed into an error-response frame. See ``served_node``: a key naming a
    changeset outside the served view gets exactly the answer of a key naming nothing.
    """
    key = args[b"key"]
    if not isinstance(key, bytes):
        raise CommandError(b"key must be a bytestring")
    yield served_node(repo, key)


_HEX_DIGITS = b"0123456789abcdef"
_WDIR_HEX = b"f" * 40
#: ``_served_prefix``'s answer for a prefix several served nodes share.
_AMBIGUOUS = b"ambiguous"


def served_node(repo: Any, key: bytes) -> bytes:
    """The node of the served changeset ``key`` names, for ``lookup`` over v1 and v2.

    ``repo`` is the served view. Mercurial's own lookup on a filtered repository tells
    secret and hidden changesets apart from nonexistent ones (``filtered revision``,
    ``.`` naming a secret working-directory parent, a hash prefix called ambiguous only
    because a secret node shares it): all of those become ``unknown revision '%s'``,
    byte for byte what a key naming nothing gets, and a prefix is resolved among the
    served changesets alone. A prefix ambiguous among served changesets keeps
    Mercurial's ``00changelog@<prefix>: ambiguous identifier``.
    """
    unknown = CommandError(b"unknown revision '%s'", (key,))
    try:
        node = repo.lookup(encoding.tolocal(key))
    except error.AmbiguousPrefixLookupError:
        # resolvehexnodeidprefix strips one leading "x", as Mercurial's lookup does
        prefix = key[1:] if key.startswith(b"x") else key
        node = _served_prefix(repo, prefix)
        if node is _AMBIGUOUS:
            raise CommandError(b"00changelog@%s: ambiguous identifier", (prefix,)) from None
    except (error.RepoLookupError, error.LookupError, error.WdirUnsupported):
        node = None
    # ``.`` and names resolve without the filter; the working directory has no node.
    if not isinstance(node, bytes) or not repo.changelog.hasnode(node):
        raise unknown
    return node


def _served_prefix(repo: Any, prefix: bytes) -> bytes | None:
    """The one served node whose hex starts with ``prefix``, None if there is none,
    ``_AMBIGUOUS`` if several served nodes (or one and the working directory, as
    Mercurial has it) share the prefix.

    Mercurial found the prefix ambiguous among *all* nodes. The filtered nodes sharing
    it are few (a scan of the filtered revisions), so the radix tree is walked only
    until it has shown that many plus two matches: enough to know whether the served
    nodes alone are zero, one or several.
    """
    unfiltered = repo.unfiltered().changelog
    filtered = {
        unfiltered.node(r)
        for r in repo.changelog.filteredrevs
        if hex(unfiltered.node(r)).startswith(prefix)
    }
    if not filtered:
        return _AMBIGUOUS
    index = unfiltered.index
    if not hasattr(index, "partialmatch"):  # pure-Python Mercurial: its slow path filters
        try:
            found: bytes | None = repo.changelog._partialmatch(prefix)
        except error.WdirUnsupported:
            return None
        except error.AmbiguousPrefixLookupError:
            return _AMBIGUOUS
        return found
    cap = len(filtered) + 2
    matches: list[bytes] = []

    def walk(p: bytes) -> None:
        try:
            # The index wants at least one digit; the empty prefix matches every node.
            node = index.partialmatch(p) if p else None
            several = not p
        except error.RevlogError:
            several = True
        if several:
            for digit in _HEX_DIGITS:
                if len(matches) >= cap:
                    return
                walk(p + bytes((digit,)))
            return
        if node is not None:
            matches.append(node)

    walk(prefix)
    served = [n for n in matches if n not in filtered]
    if len(served) >= 2 or (served and _WDIR_HEX.startswith(prefix)):
        return _AMBIGUOUS
    return served[0] if served else None


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
    check_pushkey(repo, *values)  # malformed values are the client's error, not a bug
    with mercurial_errors():
        result = repo.pushkey(*values)
    yield bool(result) if isinstance(result, bool) or result is None else result
