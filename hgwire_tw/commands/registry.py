"""The v2 command table: arguments, permissions, handlers, cache keys, capabilities.

``normalize_args`` applies the wire protocol's §3.3 rules with upstream's exact error
texts (``unsupported argument to command: a, b``; ``missing required arguments: a, b``),
fills defaults and turns lists into sets for ``set`` arguments. Beyond upstream, two
checks give clear ``ArgumentError``s instead of a later server error: a value of the
wrong type (``invalid type for argument %s: expected %s``; ``None`` is accepted where the
default is ``None``) and, for arguments declaring ``validvalues`` (the ``fields`` sets),
a member outside them (``unsupported value for argument %s: %s``; upstream silently
ignored such fields).
"""

from __future__ import annotations

import copy
import enum
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from hgwire_tw.commands import changesets, discovery, files, manifests, rawstore
from hgwire_tw.commands.cachekeys import (
    FRAMING_MEDIA_TYPE,
    CacheKeyFn,
    changesetdata_key,
    filedata_key,
    filesdata_key,
    manifestdata_key,
)
from hgwire_tw.commands.common import PATH_FILTER_PREFIXES, check_served_revisions
from hgwire_tw.core.errors import ArgumentError

__all__ = [
    "COMMANDS",
    "REQUIRED",
    "ArgSpec",
    "CommandOptions",
    "CommandSpec",
    "Handler",
    "Permission",
    "build_commands",
    "cache_state",
    "capabilities_descriptor",
    "normalize_args",
    "raw_repo_formats",
]

Handler = Callable[[Any, Mapping[bytes, Any]], Iterator[object]]


class Permission(enum.Enum):
    """What a caller must be allowed to do to run a command."""

    PULL = b"pull"
    PUSH = b"push"


class _Required:
    """Sentinel type: the argument has no default."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()

_TYPES: Mapping[bytes, tuple[type, ...]] = {
    b"bytes": (bytes,),
    b"int": (int,),
    b"list": (list, tuple),
    b"dict": (dict,),
    b"set": (set, frozenset, list, tuple),
    b"bool": (bool,),
}


@dataclass(frozen=True)
class ArgSpec:
    """One declared argument: wire ``type``, ``default`` (copied per use), valid values."""

    type: bytes
    default: object = REQUIRED
    valid_values: frozenset[bytes] | None = None
    #: The error text for a value of the wrong type, when the protocol documents one.
    type_error: bytes | None = None

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"illegal argument type {self.type!r}")

    @property
    def required(self) -> bool:
        """An argument is required exactly when it has no default."""
        return self.default is REQUIRED

    def make_default(self) -> object:
        """A fresh copy of the default (so handlers may not share mutable defaults)."""
        return copy.copy(self.default)


@dataclass(frozen=True)
class CommandSpec:
    """A v2 command: its handler and everything the dispatcher needs to know about it."""

    name: bytes
    args: Mapping[bytes, ArgSpec]
    permission: Permission
    handler: Handler
    cache_key: CacheKeyFn | None = None
    extra_capabilities: Callable[[Any], Mapping[bytes, object]] | None = None
    #: Raises the handler's ``CommandError`` when a node asked for is not served; run
    #: before a cache lookup (a hit skips the handler, and must not hand out a response
    #: cached while its changesets were served after they turned secret).
    served_check: Callable[[Any, Mapping[bytes, Any]], object] | None = None


@dataclass(frozen=True)
class CommandOptions:
    """Server settings that change what commands advertise or allow."""

    redirect_targets: Sequence[Mapping[bytes, object]] = ()
    stream_clone_allowed: bool = True
    redirect_hashes: Sequence[bytes] = field(default=(b"sha256", b"sha1"))


def _check_type(name: bytes, spec: ArgSpec, value: object) -> None:
    if value is None and spec.default is None:
        return
    allowed = _TYPES[spec.type]
    ok = isinstance(value, allowed)
    if spec.type == b"int" and isinstance(value, bool):
        ok = False
    if not ok:
        if spec.type_error is not None:
            raise ArgumentError(spec.type_error)
        raise ArgumentError(b"invalid type for argument %s: expected %s", (name, spec.type))


def normalize_args(spec: CommandSpec, args: Mapping[bytes, object]) -> dict[bytes, object]:
    """Check ``args`` against ``spec`` and return them complete (see the module docs)."""
    if not isinstance(args, Mapping):
        raise ArgumentError(b"command arguments must be a map")
    extra = sorted(
        repr(k).encode() if not isinstance(k, bytes) else k for k in args if k not in spec.args
    )
    if extra:
        raise ArgumentError(b"unsupported argument to command: %s" % b", ".join(extra))
    missing = sorted(k for k, a in spec.args.items() if a.required and k not in args)
    if missing:
        raise ArgumentError(b"missing required arguments: %s" % b", ".join(missing))

    out: dict[bytes, object] = {}
    for name, argspec in sorted(spec.args.items()):
        if name not in args:
            out[name] = argspec.make_default()
            continue
        value = args[name]
        _check_type(name, argspec, value)
        if argspec.type == b"set" and isinstance(value, (list, tuple, frozenset)):
            try:
                value = set(value)
            except TypeError:
                raise ArgumentError(
                    b"invalid type for argument %s: expected %s", (name, argspec.type)
                ) from None
        if argspec.valid_values is not None and isinstance(value, set):
            bad = sorted(
                v if isinstance(v, bytes) else repr(v).encode()
                for v in value
                if v not in argspec.valid_values
            )
            if bad:
                raise ArgumentError(
                    b"unsupported value for argument %s: %s", (name, b", ".join(bad))
                )
        out[name] = value
    return out


def cache_state(
    spec: CommandSpec, repo: Any, args: Mapping[bytes, object]
) -> dict[bytes, object] | None:
    """Cache-key material for a normalized call, or None if it must not be cached."""
    if spec.cache_key is None or spec.permission is not Permission.PULL:
        return None
    if spec.served_check is not None:
        spec.served_check(repo, args)
    return spec.cache_key(repo, args)


def raw_repo_formats(repo: Any) -> list[bytes]:
    """The repository requirements a raw store copy needs (``rawrepoformats``).

    Upstream used ``requirements ∩ supportedformats``; Mercurial 7 expresses the same
    idea as the stream-clone requirements (working-copy and share requirements
    dropped, compression engines kept).
    """
    from mercurial import streamclone

    return sorted(streamclone.streamed_requirements(repo))


def _manifestdata_caps(repo: Any) -> Mapping[bytes, object]:
    size = repo.ui.configint(b"experimental", b"server.manifestdata.recommended-batch-size")
    return {b"recommendedbatchsize": size if size is not None else 100000}


def _filesdata_caps(repo: Any) -> Mapping[bytes, object]:
    size = repo.ui.configint(b"experimental", b"server.filesdata.recommended-batch-size")
    return {b"recommendedbatchsize": size if size is not None else 50000}


def capabilities_descriptor(
    repo: Any,
    *,
    redirect_targets: Sequence[Mapping[bytes, object]] | None = None,
    stream_clone_allowed: bool = True,
    redirect_hashes: Sequence[bytes] = (b"sha256", b"sha1"),
    commands: Mapping[bytes, CommandSpec] | None = None,
) -> dict[bytes, object]:
    """The v2 capabilities map (§4): commands, framing, path filters, formats, redirects.

    ``rawstorefiledata`` is left out when stream clones are not allowed (by the server
    option or by the repository's configuration / secret changesets).
    """
    table = COMMANDS if commands is None else commands
    described: dict[bytes, object] = {}
    for name, spec in table.items():
        if name == b"rawstorefiledata" and not rawstore.stream_allowed(repo, stream_clone_allowed):
            continue
        args: dict[bytes, object] = {}
        for argname, arg in spec.args.items():
            meta: dict[bytes, object] = {b"type": arg.type, b"required": arg.required}
            if not arg.required:
                meta[b"default"] = arg.make_default()
            if arg.valid_values:
                meta[b"validvalues"] = set(arg.valid_values)
            args[argname] = meta
        entry: dict[bytes, object] = {b"args": args, b"permissions": [spec.permission.value]}
        if spec.extra_capabilities is not None:
            entry.update(spec.extra_capabilities(repo))
        described[name] = entry

    caps: dict[bytes, object] = {
        b"commands": described,
        b"framingmediatypes": [FRAMING_MEDIA_TYPE],
        b"pathfilterprefixes": set(PATH_FILTER_PREFIXES),
        b"rawrepoformats": raw_repo_formats(repo),
    }
    if redirect_targets:
        targets = []
        for target in redirect_targets:
            item = {k: target[k] for k in (b"name", b"protocol", b"uris")}
            for key in (b"snirequired", b"tlsversions"):
                if key in target:
                    item[key] = target[key]
            targets.append(item)
        caps[b"redirect"] = {b"targets": targets, b"hashes": list(redirect_hashes)}
    return caps


def _capabilities(
    repo: Any,
    args: Mapping[bytes, Any],
    *,
    options: CommandOptions,
    table: Mapping[bytes, CommandSpec],
) -> Iterator[object]:
    """The ``capabilities`` handler: one object, the descriptor."""
    yield capabilities_descriptor(
        repo,
        redirect_targets=options.redirect_targets,
        stream_clone_allowed=options.stream_clone_allowed,
        redirect_hashes=options.redirect_hashes,
        commands=table,
    )


_REVISIONS = ArgSpec(b"list", type_error=b"revisions must be defined as an array")
_FIELDS_CS = frozenset({b"bookmarks", b"parents", b"phase", b"revision"})
_FIELDS_FILE = frozenset({b"linknode", b"parents", b"revision"})
_FIELDS_FILES = frozenset({b"firstchangeset", b"linknode", b"parents", b"revision"})
_FIELDS_MANIFEST = frozenset({b"parents", b"revision"})

PULL, PUSH = Permission.PULL, Permission.PUSH


def build_commands(options: CommandOptions | None = None) -> dict[bytes, CommandSpec]:
    """The command table for a server configured with ``options``."""
    options = options or CommandOptions()
    table: dict[bytes, CommandSpec] = {}

    def add(spec: CommandSpec) -> None:
        table[spec.name] = spec

    add(CommandSpec(b"branchmap", {}, PULL, discovery.branchmap))
    add(
        CommandSpec(
            b"capabilities",
            {},
            PULL,
            functools.partial(_capabilities, options=options, table=table),
        )
    )
    add(
        CommandSpec(
            b"changesetdata",
            {b"revisions": _REVISIONS, b"fields": ArgSpec(b"set", set(), _FIELDS_CS)},
            PULL,
            changesets.changesetdata,
            cache_key=changesetdata_key,
        )
    )
    add(
        CommandSpec(
            b"filedata",
            {
                b"haveparents": ArgSpec(b"bool", False),
                b"nodes": ArgSpec(b"list"),
                b"fields": ArgSpec(b"set", set(), _FIELDS_FILE),
                b"path": ArgSpec(b"bytes"),
            },
            PULL,
            files.filedata,
            cache_key=filedata_key,
            served_check=files.served_file_revisions,
        )
    )
    add(
        CommandSpec(
            b"filesdata",
            {
                b"haveparents": ArgSpec(b"bool", False),
                b"fields": ArgSpec(b"set", set(), _FIELDS_FILES),
                b"pathfilter": ArgSpec(b"dict", None),
                b"revisions": _REVISIONS,
            },
            PULL,
            files.filesdata,
            cache_key=filesdata_key,
            served_check=lambda repo, args: check_served_revisions(repo, args[b"revisions"]),
            extra_capabilities=_filesdata_caps,
        )
    )
    add(CommandSpec(b"heads", {b"publiconly": ArgSpec(b"bool", False)}, PULL, discovery.heads))
    add(CommandSpec(b"known", {b"nodes": ArgSpec(b"list", [])}, PULL, discovery.known))
    add(CommandSpec(b"listkeys", {b"namespace": ArgSpec(b"bytes")}, PULL, discovery.listkeys))
    add(CommandSpec(b"lookup", {b"key": ArgSpec(b"bytes")}, PULL, discovery.lookup))
    add(
        CommandSpec(
            b"manifestdata",
            {
                b"nodes": ArgSpec(b"list"),
                b"haveparents": ArgSpec(b"bool", False),
                b"fields": ArgSpec(b"set", set(), _FIELDS_MANIFEST),
                b"tree": ArgSpec(b"bytes"),
            },
            PULL,
            manifests.manifestdata,
            cache_key=manifestdata_key,
            served_check=manifests.served_manifests,
            extra_capabilities=_manifestdata_caps,
        )
    )
    add(
        CommandSpec(
            b"pushkey",
            {k: ArgSpec(b"bytes") for k in (b"namespace", b"key", b"old", b"new")},
            PUSH,
            discovery.pushkey_,
        )
    )
    add(
        CommandSpec(
            b"rawstorefiledata",
            {b"files": ArgSpec(b"list"), b"pathfilter": ArgSpec(b"list", None)},
            PULL,
            functools.partial(rawstore.rawstorefiledata, configured=options.stream_clone_allowed),
            extra_capabilities=rawstore.rawstore_caps,
        )
    )
    return table


COMMANDS: dict[bytes, CommandSpec] = build_commands()
