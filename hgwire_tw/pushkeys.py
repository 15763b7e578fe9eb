"""What a ``pushkey`` may ask, checked before Mercurial's own function runs (v1 and v2).

Mercurial's pushkey functions trust their strings: a bookmark target that is not a
40-digit hex node raises ``ProgrammingError``, a phase that is not a number
``ValueError``, empty obsolescence data ``struct.error``; bugs to the server, bad input
from the client. ``check_pushkey`` refuses such values with an ``ArgumentError`` naming
the argument, before any lock or transaction is taken. A phase change must name a
changeset of the served view (a secret one is refused in the same words as one that
does not exist), and a bookmark name must be something the bookmarks file can hold.
"""

from __future__ import annotations

import binascii
from typing import Any

from mercurial.node import hex

from hgwire_tw.core.errors import ArgumentError

__all__ = ["MAX_BOOKMARK", "check_pushkey"]

#: Longest bookmark name accepted (bytes).
MAX_BOOKMARK = 1024
_FORBIDDEN_IN_NAMES = (b"\0", b"\n", b"\r")


def _hex_node(name: bytes, value: bytes, *, empty: bool) -> bytes | None:
    if empty and not value:
        return None
    if len(value) == 40:
        try:
            return binascii.unhexlify(value)
        except (binascii.Error, ValueError):
            pass
    what = "empty or a 40-digit hex node" if empty else "a 40-digit hex node"
    raise ArgumentError(b"invalid argument %s: not %s", (name, what.encode()))


def _phase(name: bytes, value: bytes) -> None:
    if not value.isdigit() or len(value) > 3:
        raise ArgumentError(b"invalid argument %s: not a phase number", (name,))


def check_pushkey(repo: Any, namespace: bytes, key: bytes, old: bytes, new: bytes) -> None:
    """Refuse malformed ``pushkey`` arguments (``ArgumentError``); ``repo`` is the
    served view. Namespaces other than bookmarks, phases and obsolete are left to
    Mercurial (which refuses unknown ones with a plain ``False``)."""
    if namespace == b"bookmarks":
        if not key or len(key) > MAX_BOOKMARK or any(c in key for c in _FORBIDDEN_IN_NAMES):
            raise ArgumentError(b"invalid argument %s: not a bookmark name", (b"key",))
        _hex_node(b"old", old, empty=True)
        _hex_node(b"new", new, empty=True)
    elif namespace == b"phases":
        node = _hex_node(b"key", key, empty=False)
        if node is None or not repo.changelog.hasnode(node):
            raise ArgumentError(b"unknown node in argument %s: %s", (b"key", hex(node or b"")))
        _phase(b"old", old)
        _phase(b"new", new)
    elif namespace == b"obsolete":
        from mercurial import obsolete, util

        try:
            markers = list(obsolete._readmarkers(util.b85decode(new))[1])
        except Exception:
            # Any failure to parse is the client's data, whatever the parser raised.
            markers = []
        if not markers:
            raise ArgumentError(b"invalid argument %s: not obsolescence markers", (b"new",))
