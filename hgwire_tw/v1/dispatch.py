"""Run Mercurial's own v1 wire commands on a worker thread and type their results.

``prepare(repo, name, args, proto)`` binds our ``V1Protocol`` to the worker's repository,
takes the ``served`` view (secret and hidden changesets are never served) and checks the
command's permission through ``proto.checkperm`` (against the transport's grant): the
one check of a call, made before anything is read. ``execute(prepared)`` runs it:
``batch`` itself (every inner command checked the same way) and
``mercurial.wireprotov1server.commands[name].func`` for the rest, except
``clonebundles``/``clonebundles_manifest`` when the protocol handler carries a clone
bundle source (``hgwire_tw.clonebundles``): those are answered from it.
``run_v1_command`` is both. Results are the records of ``hgwire_tw.v1.results``;
``encode_stream`` gives a stream result's body in pieces of about ``STREAM_PIECE``
bytes, compressed as the transport's format says (over SSH a bundle2 is compressed
inside itself, ``core.v1.compress_bundle2``).

Failures of writes. A command that needs the ``push`` permission and finds an abandoned
transaction (its writer died while we waited for the lock) gets it rolled back
(``hgwire_tw.repo.recovery``) and runs once more. ``unbundle`` never fails with an
exception: whatever goes wrong (a Mercurial error that its own ``unbundle`` does not
catch, a lock that stayed taken, a bug) is logged once with its traceback and becomes
the push's error answer in the form the client waits for (``failures.push_failure``).
A client that sent a bundle2 over SSH reads nothing but a bundle2 reply, so any other
answer would leave it waiting forever.

Bad input. A push refused for bad input is marked (``V1PushError.bad_input``) for the
transport to log, except a bundle2 reply, which transports pass on unread: that refusal
is logged here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from mercurial import error as hgerror
from mercurial import wireprototypes, wireprotov1server
from twisted.logger import Logger

from hgwire_tw.core.errors import CommandError, ProtocolError
from hgwire_tw.core.v1 import (
    MEDIA_TYPE_V01,
    ArgValue,
    ResponseFormat,
    compress_bundle2,
    decode_batch_cmds,
    encode_batch_results,
    make_compressor,
    parse_arg_spec,
    select_command_args,
)
from hgwire_tw.repo import recovery
from hgwire_tw.v1 import guard
from hgwire_tw.v1.failures import describe_failure, one_line, push_failure
from hgwire_tw.v1.protocol import V1Protocol
from hgwire_tw.v1.results import (
    V1Bytes,
    V1LegacyStream,
    V1OutOfBandError,
    V1PushError,
    V1PushResult,
    V1Result,
    V1Stream,
    V1StreamStart,
)

__all__ = [
    "NOT_BATCHABLE",
    "STREAM_PIECE",
    "Prepared",
    "UnknownCommand",
    "close_chunks",
    "command_permission",
    "command_spec",
    "encode_stream",
    "execute",
    "is_command",
    "prepare",
    "run_v1_command",
    "stream_body",
]

log = Logger()

#: Bytes per piece of a streamed body handed to the transport.
STREAM_PIECE = 64 * 1024

#: Commands whose result is not a string, or that cannot run inside ``batch``.
NOT_BATCHABLE = frozenset(
    {
        b"batch",
        b"changegroup",
        b"changegroupsubset",
        b"get_cached_bundle_inline",
        b"getbundle",
        b"stream_out",
        b"unbundle",
    }
)


class UnknownCommand(CommandError):
    """The request names no v1 command."""


def is_command(name: bytes) -> bool:
    """Whether ``name`` is a v1 wire command."""
    return name in wireprotov1server.commands


def command_spec(name: bytes) -> tuple[bytes, ...]:
    """The argument names of v1 command ``name`` (``UnknownCommand`` if there is none)."""
    entry = wireprotov1server.commands.get(name)
    if entry is None:
        raise UnknownCommand(b"unknown command: %s", (name,))
    return parse_arg_spec(entry.args)


def command_permission(name: bytes) -> bytes:
    """``b"pull"`` or ``b"push"``: what running command ``name`` requires."""
    entry = wireprotov1server.commands.get(name)
    if entry is None:
        raise UnknownCommand(b"unknown command: %s", (name,))
    perm: bytes = entry.permission
    return perm


def _abort_message(exc: hgerror.Abort) -> bytes:
    message: bytes = exc.message
    if not message.endswith(b"\n"):
        message += b"\n"
    if exc.hint:
        message += b"(%s)\n" % exc.hint
    return message


def _convert(rsp: object) -> V1Result:
    """Mercurial's response objects → our typed results."""
    if isinstance(rsp, bytes):
        return V1Bytes(data=rsp)
    if isinstance(rsp, wireprototypes.bytesresponse):
        return V1Bytes(data=rsp.data)
    if isinstance(rsp, wireprototypes.streamres):
        return V1Stream(chunks=iter(rsp.gen), prefer_uncompressed=bool(rsp.prefer_uncompressed))
    if isinstance(rsp, wireprototypes.streamreslegacy):
        return V1LegacyStream(chunks=iter(rsp.gen))
    if isinstance(rsp, wireprototypes.pushres):
        # None: a bundle2 push that asked for no reply (no replycaps part)
        return V1PushResult(result=int(rsp.res or 0), output=rsp.output or b"")
    if isinstance(rsp, wireprototypes.pusherr):
        return V1PushError(message=rsp.res, output=rsp.output or b"")
    if isinstance(rsp, wireprototypes.ooberror):
        return V1OutOfBandError(message=rsp.message)
    raise TypeError(f"unexpected v1 response type {type(rsp).__name__}")


def _positional(spec: tuple[bytes, ...], args: Mapping[bytes, ArgValue]) -> list[ArgValue]:
    # Copies: Mercurial's commands consume the ``*`` dict (``options`` deletes keys).
    try:
        return [dict(args[n]) if isinstance(args[n], dict) else args[n] for n in spec]
    except KeyError as e:
        raise CommandError(b"missing argument: %s", (e.args[0],)) from None


#: Commands answered by ``proto.clonebundles`` when clone bundles are on.
CLONEBUNDLE_COMMANDS = frozenset({b"clonebundles", b"clonebundles_manifest"})


def _call(entry: Any, repo: Any, proto: V1Protocol, name: bytes, args: list[ArgValue]) -> V1Result:
    """Run one command: Mercurial's function, or our clone bundle manifest; its arguments
    checked first and ``lookup``/``get_cached_bundle_inline`` answered by ``v1.guard``."""
    if name in CLONEBUNDLE_COMMANDS and proto.clonebundles is not None:
        return V1Bytes(data=proto.clonebundles.manifest(repo))
    named = dict(zip(parse_arg_spec(entry.args), args, strict=True))
    guard.check_args(repo, name, named)
    ours: V1Result | None = guard.answer(repo, proto, name, named)
    if ours is not None:
        return ours
    with guard.payload_errors(name):
        if entry.permission != b"push":
            return _convert(entry.func(repo, proto, *args))
        try:
            return _convert(entry.func(repo, proto, *args))
        except hgerror.RepoError as e:
            if not recovery.is_abandoned_transaction_error(e):
                raise
        # The pool rolled back any abandoned transaction before this job, so this one
        # was left by a writer that died while we waited for its lock: roll it back, run
        # again. (Mercurial opens the transaction before it reads the pushed data, so
        # nothing of this push was applied; the spooled payload is read again from its
        # start.)
        recovery.recover_abandoned(repo, timeout=repo.ui.configint(b"ui", b"timeout"))
        return _convert(entry.func(repo, proto, *args))


def _run_unbundle(
    entry: Any, repo: Any, proto: V1Protocol, args: Mapping[bytes, ArgValue]
) -> V1Result:
    """``unbundle``, whose every failure is answered in the push's own error form."""
    try:
        result = _guarded(entry, repo, proto, b"unbundle", args)
    except ConnectionAbortedError as e:
        # The client went away while we read its push: nothing was applied, and there
        # is nobody to answer (the transport drops what we return).
        log.info(
            "unbundle into {root} abandoned: {error}",
            root=repo.root.decode("utf-8", "replace"),
            error=e,
        )
        return push_failure(str(e).encode(), transport=proto.transport, bundle2=False)
    except Exception as e:
        message, hint = describe_failure(e, repo)
        root = repo.root.decode("utf-8", "replace")
        text = message.decode("utf-8", "replace")
        if isinstance(e, (hgerror.LockHeld, recovery.RepositoryLocked)):
            # expected under contention: one line, no traceback
            log.warn("unbundle into {root} refused: {message}", root=root, message=text)
        else:
            log.failure("unbundle into {root} failed: {message}", root=root, message=text)
        return push_failure(
            message, hint, transport=proto.transport, bundle2=proto.payload_is_bundle2()
        )
    if isinstance(result, V1OutOfBandError):
        # an argument or payload error of ours: the SSH client cannot read it as such
        bundle2 = proto.payload_is_bundle2()
        if bundle2:
            # the bundle2 reply is a stream the transports pass on unread: log it here
            log.info(
                "unbundle into {root} from {host} ({transport}): bad input: {error}",
                root=repo.root.decode("utf-8", "replace"),
                host=proto.remote_host or "-",
                transport=proto.transport,
                error=one_line(result.message),
            )
        return push_failure(
            result.message, transport=proto.transport, bundle2=bundle2, bad_input=True
        )
    return result


def _run_batch(repo: Any, proto: V1Protocol, cmds: bytes) -> V1Result:
    """``batch``: our parsing and permission checks, Mercurial's inner commands."""
    try:
        calls = decode_batch_cmds(cmds)
    except ProtocolError as e:
        return V1OutOfBandError(message=b"malformed batch request: %s\n" % str(e).encode())
    results: list[bytes] = []
    for name, values in calls:
        entry = wireprotov1server.commands.get(name)
        if entry is None or name in NOT_BATCHABLE:
            return V1OutOfBandError(message=b"command %s cannot be batched\n" % name)
        proto.checkperm(entry.permission)
        spec = parse_arg_spec(entry.args)
        inner = select_command_args(spec, {k: [v] for k, v in values.items()})
        result = _call(entry, repo, proto, name, _positional(spec, inner))
        if isinstance(result, V1OutOfBandError):
            return result
        if not isinstance(result, V1Bytes):
            return V1OutOfBandError(message=b"command %s cannot be batched\n" % name)
        results.append(result.data)
    return V1Bytes(data=encode_batch_results(results))


@dataclass(frozen=True, slots=True)
class Prepared:
    """A command bound to the worker's repository, its permission checked: ready to run.

    ``view`` is the served view of the repository; ``entry`` Mercurial's command entry.
    """

    name: bytes
    args: Mapping[bytes, ArgValue]
    proto: V1Protocol
    view: Any
    entry: Any


def prepare(repo: Any, name: bytes, args: Mapping[bytes, ArgValue], proto: V1Protocol) -> Prepared:
    """Bind ``proto`` to the worker thread's ``repo`` for command ``name`` and check the
    command's permission (``PermissionDenied`` from ``proto.checkperm``).

    ``args`` are the command's arguments selected per its spec.
    """
    entry = wireprotov1server.commands.get(name)
    if entry is None:
        raise UnknownCommand(b"unknown command: %s", (name,))
    proto.bind(repo)
    proto.args = dict(args)
    view = wireprotov1server.getdispatchrepo(repo, proto, name)
    proto.checkperm(entry.permission)
    return Prepared(name, args, proto, view, entry)


def execute(prepared: Prepared) -> V1Result:
    """Run a prepared command and type its result.

    A Mercurial ``Abort`` or our ``CommandError`` becomes an out-of-band error;
    ``unbundle`` answers every failure with ``push_failure`` (see the module docs).
    """
    p = prepared
    if p.name == b"unbundle":
        return _run_unbundle(p.entry, p.view, p.proto, p.args)
    return _guarded(p.entry, p.view, p.proto, p.name, p.args)


def run_v1_command(
    repo: Any, name: bytes, args: Mapping[bytes, ArgValue], proto: V1Protocol
) -> V1Result:
    """Run v1 command ``name`` on the worker thread's ``repo``: ``prepare``, ``execute``."""
    return execute(prepare(repo, name, args, proto))


def _guarded(
    entry: Any, view: Any, proto: V1Protocol, name: bytes, args: Mapping[bytes, ArgValue]
) -> V1Result:
    """Run the command; Mercurial's user-facing errors become out-of-band errors."""
    try:
        if name == b"batch":
            cmds = args.get(b"cmds")
            if not isinstance(cmds, bytes):
                raise CommandError(b"missing argument: %s", (b"cmds",))
            return _run_batch(view, proto, cmds)
        spec = parse_arg_spec(entry.args)
        return _call(entry, view, proto, name, _positional(spec, args))
    except hgerror.Abort as e:
        return V1OutOfBandError(message=_abort_message(e))
    except (hgerror.LookupError, hgerror.RepoLookupError) as e:
        # e.g. a getbundle naming a node that is unknown or not served (secret)
        return V1OutOfBandError(message=bytes(e) + b"\n")
    except CommandError as e:
        return V1OutOfBandError(message=e.render().encode("utf-8") + b"\n")


def _pieces(chunks: Iterator[bytes], piece: int) -> Iterator[bytes]:
    """Regroup ``chunks`` into pieces of at least ``piece`` bytes (the last may be short)."""
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        if not chunk:
            continue
        pending.append(chunk)
        size += len(chunk)
        if size >= piece:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _compressed(chunks: Iterator[bytes], fmt: ResponseFormat, piece: int) -> Iterator[bytes]:
    compressor = make_compressor(fmt.engine, fmt.level)
    out: list[bytes] = [fmt.prefix] if fmt.prefix else []
    size = len(fmt.prefix)
    for chunk in chunks:
        data = compressor.compress(chunk)
        if data:
            out.append(data)
            size += len(data)
            if size >= piece:
                yield b"".join(out)
                out, size = [], 0
    out.append(compressor.finish())
    tail = b"".join(out)
    if tail:
        yield tail


def stream_body(
    chunks: Iterator[bytes], fmt: ResponseFormat | None, piece: int = STREAM_PIECE
) -> Iterator[bytes]:
    """A stream result's body in pieces of about ``piece`` bytes: compressed as ``fmt``
    says (its prefix first), or raw when ``fmt`` is None (SSH, legacy streams)."""
    if fmt is None:
        return _pieces(chunks, piece)
    return _compressed(_pieces(chunks, piece), fmt, piece)


def encode_stream(
    chunks: Iterator[bytes], fmt: ResponseFormat | None, piece: int = STREAM_PIECE
) -> tuple[V1StreamStart, Iterator[bytes]]:
    """How a stream result goes out as ``fmt`` says, and its body (worker thread).

    For a ``bundle2`` format (SSH) this reads ahead to the bundle2 head to learn whether
    the engine applies; the start names the engine the body really uses.
    """
    if fmt is not None and fmt.bundle2:
        engine, body = compress_bundle2(_pieces(chunks, piece), fmt.engine, fmt.level, piece=piece)
        return V1StreamStart(media_type=MEDIA_TYPE_V01, engine=engine, legacy=False), body
    if fmt is None:
        start = V1StreamStart(media_type=MEDIA_TYPE_V01, engine="none", legacy=False)
    else:
        start = V1StreamStart(media_type=fmt.media_type, engine=fmt.engine, legacy=False)
    return start, stream_body(chunks, fmt, piece)


def close_chunks(chunks: Iterator[bytes]) -> None:
    """Close a command's chunk generator (if it is one), on the worker that ran it."""
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
