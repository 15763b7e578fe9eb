"""What a v1 command may be asked, checked before Mercurial's own function runs.

Mercurial's v1 commands trust their arguments: a node list that is not hex raises
``binascii.Error`` deep inside, an unknown base node a ``RevlogError``, and a secret node
is reported as ``filtered`` where an unknown one is ``no node`` — an oracle anyone may
query. ``check_args(repo, name, args)`` runs on the worker thread, on the served view,
before the command: a malformed argument is an ``ArgumentError`` naming it, and every
node a command needs to exist must be in the served view, else
``unknown node in argument ARG: HEX`` — the same words for a secret node as for one
that never existed. ``lookup`` is answered by ``commands.discovery.served_node`` (one
resolution rule for v1 and v2) and ``get_cached_bundle_inline`` only from the clone
bundle store (``hgwire_tw.clonebundles``), never from an arbitrary path.

``pushkey`` arguments are checked by ``hgwire_tw.pushkeys.check_pushkey``.

``payload_errors(name)`` turns the decompression errors a corrupt push bundle raises
(zlib, bz2, zstd) into a ``CommandError``: bad client input, not a server fault.
"""

from __future__ import annotations

import binascii
import contextlib
import posixpath
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import zstandard
from mercurial.node import hex

from hgwire_tw.commands.discovery import served_node
from hgwire_tw.core.errors import ArgumentError, CommandError
from hgwire_tw.core.v1 import ArgValue
from hgwire_tw.pushkeys import check_pushkey
from hgwire_tw.v1.results import V1Bytes, V1Stream

__all__ = ["MAX_LIST_ITEMS", "answer", "check_args", "payload_errors"]

#: Most entries accepted in a comma-separated getbundle list (bundlecaps, patterns).
MAX_LIST_ITEMS = 10_000
_NARROW_PREFIXES = (b"path:", b"rootfilesin:")


def _zstd_errors() -> tuple[type[Exception], ...]:
    # Mercurial decompresses with its own vendored copy of python-zstandard.
    try:
        from mercurial import zstd as hgzstd
    except ImportError:
        return (zstandard.ZstdError,)
    return (zstandard.ZstdError, hgzstd.ZstdError)


_ZSTD_ERRORS = _zstd_errors()

#: command -> {argument: kind}; kinds: "served" (nodes that must be served), "nodes"
#: (well-formed nodes, unknown ones allowed), "pairs" (between), "hexlist" (unbundle's
#: heads: hex items of any length, e.g. the hex of "force").
_NODE_ARGS: dict[bytes, dict[bytes, str]] = {
    b"between": {b"pairs": "pairs"},
    b"branches": {b"nodes": "served"},
    b"known": {b"nodes": "nodes"},
    b"changegroup": {b"roots": "served"},
    b"changegroupsubset": {b"bases": "served", b"heads": "served"},
    b"getbundle": {b"heads": "served", b"common": "nodes"},
    b"unbundle": {b"heads": "hexlist"},
}


def _text(value: ArgValue | None) -> bytes:
    return value if isinstance(value, bytes) else b""


def _hex_items(name: bytes, value: bytes, sep: bytes, *, node: bool) -> list[bytes]:
    if not value:
        return []
    out = []
    for item in value.split(sep):
        if node and len(item) != 40:
            raise ArgumentError(b"invalid argument %s: not a list of 40-digit hex nodes", (name,))
        try:
            out.append(binascii.unhexlify(item))
        except (binascii.Error, ValueError):
            raise ArgumentError(b"invalid argument %s: not a list of hex values", (name,)) from None
    return out


def _check_served(repo: Any, name: bytes, nodes: list[bytes]) -> None:
    has = repo.changelog.hasnode
    for node in nodes:
        if not has(node):
            raise ArgumentError(b"unknown node in argument %s: %s", (name, hex(node)))


def _check_patterns(name: bytes, value: bytes) -> None:
    patterns = [p for p in value.split(b",") if p]
    if len(patterns) > MAX_LIST_ITEMS:
        raise ArgumentError(
            b"invalid argument %s: more than %s patterns", (name, b"%d" % MAX_LIST_ITEMS)
        )
    for pattern in patterns:
        prefix = next((p for p in _NARROW_PREFIXES if pattern.startswith(p)), None)
        path = pattern[len(prefix) :] if prefix is not None else b""
        normalized = posixpath.normpath(path) if path else b"."
        if (
            prefix is None
            or path.startswith(b"/")
            or normalized == b".."
            or normalized.startswith(b"../")
            or b"\0" in path
        ):
            raise ArgumentError(
                b"invalid argument %s: patterns must be path: or rootfilesin: "
                b"paths inside the repository",
                (name,),
            )


def check_args(repo: Any, name: bytes, args: Mapping[bytes, ArgValue]) -> None:
    """Refuse malformed arguments of v1 command ``name`` (``ArgumentError``).

    ``repo`` is the served view; ``args`` are the command's arguments by name (the
    ``*`` ones in a dict). Only arguments whose shape Mercurial does not check are
    looked at; everything else is passed through unchanged.
    """
    values: dict[bytes, ArgValue] = dict(args)
    star = args.get(b"*")
    if isinstance(star, dict):
        values.update(star)
    for arg, kind in _NODE_ARGS.get(name, {}).items():
        value = _text(values.get(arg))
        if kind == "pairs":
            for pair in value.split(b" ") if value else []:
                nodes = _hex_items(arg, pair, b"-", node=True)
                if len(nodes) != 2:
                    raise ArgumentError(b"invalid argument %s: not pairs of nodes", (arg,))
                _check_served(repo, arg, nodes)
        elif kind == "hexlist":
            _hex_items(arg, value, b" ", node=False)
        else:
            nodes = _hex_items(arg, value, b" ", node=True)
            if kind == "served":
                _check_served(repo, arg, nodes)
    if name == b"pushkey":
        check_pushkey(
            repo, *(_text(values.get(arg)) for arg in (b"namespace", b"key", b"old", b"new"))
        )
    if name == b"getbundle":
        caps = _text(values.get(b"bundlecaps"))
        if caps.count(b",") >= MAX_LIST_ITEMS:
            raise ArgumentError(
                b"invalid argument bundlecaps: more than %s capabilities", (b"%d" % MAX_LIST_ITEMS,)
            )
        for arg in (b"includepats", b"excludepats"):
            if arg in values:
                _check_patterns(arg, _text(values[arg]))


def answer(repo: Any, proto: Any, name: bytes, args: Mapping[bytes, ArgValue]) -> Any:
    """Our own answer to ``name`` when hgwire_tw does not run Mercurial's function for it
    (a ``V1Result``), else None. Raises ``CommandError`` for refused requests."""
    if name == b"lookup":
        key = _text(args.get(b"key"))
        try:
            return V1Bytes(data=b"1 %s\n" % hex(served_node(repo, key)))
        except CommandError as e:
            return V1Bytes(data=b"0 %s\n" % e.render().encode("utf-8", "replace"))
    if name == b"get_cached_bundle_inline":
        source = getattr(proto, "clonebundles", None)
        chunks = None
        if source is not None:
            chunks = source.inline(repo, _text(args.get(b"path")))
        if chunks is None:
            # One answer for every path that is not a bundle of this repository's store.
            raise CommandError(b"no such clone bundle")
        return V1Stream(chunks=chunks, prefer_uncompressed=True)
    return None


@contextlib.contextmanager
def payload_errors(name: bytes) -> Iterator[None]:
    """Report a push bundle that does not decompress as the client's error."""
    if name != b"unbundle":
        yield
        return
    try:
        yield
    except zlib.error as e:
        raise CommandError(b"invalid push bundle: %s", (str(e).encode(),)) from e
    except OSError as e:
        # bz2 reports a corrupt stream as an OSError without an errno; a real I/O error
        # (disk full, ...) has one and stays a server error.
        if e.errno is not None:
            raise
        raise CommandError(b"invalid push bundle: %s", (str(e).encode(),)) from e
    except _ZSTD_ERRORS as e:
        raise CommandError(b"invalid push bundle: %s", (str(e).encode(),)) from e
