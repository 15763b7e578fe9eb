"""Run Mercurial's own v1 wire commands on a worker thread and type their results.

``run_v1_command(repo, name, args, proto)`` is the whole of v1 command execution: it
binds our ``V1Protocol`` to the worker's repository, takes the ``served`` view (secret
and hidden changesets are never served), checks the command's permission through
``proto.checkperm``, runs ``batch`` itself (every inner command's permission checked
the same way) and calls ``mercurial.wireprotov1server.commands[name].func`` for the
rest, except ``clonebundles``/``clonebundles_manifest`` when the protocol handler carries
a clone bundle source (``hgwire_tw.clonebundles``): those are answered from it.
Results come back as small frozen dataclasses that the transports format.

``v1_response(repo, name, args, proto, choose)`` is the generator a transport hands to
``RepositoryPool.iterate``: it runs the command, then yields the result and, for stream
results, a ``V1StreamStart`` followed by the response body in pieces of about
``STREAM_PIECE`` bytes, compressed here, on the worker thread, as the transport
consumes them (nothing is built whole in memory). Over HTTP the whole body is
compressed as its media type says; over SSH (a format with ``bundle2`` set) a bundle2
is compressed inside itself (``core.v1.compress_bundle2``) and anything else goes out
raw.

Failures of writes. A command that needs the ``push`` permission and finds an abandoned
transaction (its writer died while we waited for the lock) gets it rolled back
(``hgwire_tw.repo.recovery``) and runs once more. ``unbundle`` never fails with an
exception: whatever goes wrong (a Mercurial error that its own ``unbundle`` does not
catch, a lock that stayed taken, a bug) is logged once with its traceback and becomes
the push's error answer in the form the client waits for (``push_failure``): a bundle2
reply holding an ``error:abort`` part when the client pushed a bundle2, else an
out-of-band error (HTTP) or the non-empty reply frame of a failed push (SSH). A client
that sent a bundle2 over SSH reads nothing but a bundle2 reply, so any other answer
would leave it waiting forever.

Bad input. An error answer refusing the client's own input (a malformed argument, an
unknown node, a corrupt push) is logged by the transport that sends it, in one ``info``
line naming the command (``one_line`` keeps it short); the answers whose cause was
logged here already start with one of ``LOGGED_FAILURES``. A push refused for bad input
is marked (``V1PushError.bad_input``) for the transport, except a bundle2 reply, which
transports pass on unread: that refusal is logged here.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
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
from hgwire_tw.v1.protocol import V1Protocol

__all__ = [
    "LOGGED_FAILURES",
    "NOT_BATCHABLE",
    "STREAM_PIECE",
    "UnknownCommand",
    "V1Bytes",
    "V1LegacyStream",
    "V1OutOfBandError",
    "V1PushError",
    "V1PushResult",
    "V1Result",
    "V1Stream",
    "V1StreamStart",
    "bundle2_abort_reply",
    "close_chunks",
    "command_permission",
    "command_spec",
    "describe_failure",
    "encode_stream",
    "is_command",
    "one_line",
    "push_failure",
    "run_v1_command",
    "stream_body",
    "v1_response",
]

log = Logger()

#: Bytes per piece of a streamed body handed to the transport.
STREAM_PIECE = 64 * 1024

#: Beginnings of error answers whose cause was logged where it happened (a bug, with
#: its incident id; a lock held past the timeout): these are no bad input.
LOGGED_FAILURES = (b"internal server error (incident ", b"the repository is locked by ")

#: Longest error text written in a log line about bad input.
MAX_LOGGED_ERROR = 300


def one_line(text: str | bytes, limit: int = MAX_LOGGED_ERROR) -> str:
    """``text`` on one line, at most ``limit`` characters (a client chose it)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


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


@dataclass(frozen=True, slots=True, kw_only=True)
class V1Bytes:
    """A string response (``application/mercurial-0.1``, raw)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class V1Stream:
    """A compressible stream response; ``chunks`` must be read on the worker thread."""

    chunks: Iterator[bytes]
    prefer_uncompressed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class V1LegacyStream:
    """A stream always sent as raw 0.1 (``stream_out``, a bundle2 push reply)."""

    chunks: Iterator[bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class V1PushResult:
    """A bundle1 push outcome: Mercurial's integer result and the captured output."""

    result: int
    output: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class V1PushError:
    """A push refused before it started (e.g. the remote heads changed)."""

    message: bytes
    output: bytes = b""
    #: Refused for the client's bad input (a malformed argument, a corrupt bundle),
    #: which the transport logs; Mercurial's own refusals and logged failures are not.
    bad_input: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class V1OutOfBandError:
    """An error reported outside the command's response format (``application/hg-error``)."""

    message: bytes


V1Result = V1Bytes | V1Stream | V1LegacyStream | V1PushResult | V1PushError | V1OutOfBandError


@dataclass(frozen=True, slots=True, kw_only=True)
class V1StreamStart:
    """First item of a streamed response in ``v1_response``: how the body is encoded.

    For a legacy stream ``media_type`` is 0.1 and ``engine`` is ``"none"``.
    """

    media_type: bytes
    engine: str
    legacy: bool


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


def describe_failure(exc: BaseException, repo: Any = None) -> tuple[bytes, bytes | None]:
    """``(message, hint)`` telling a client why a command failed with ``exc``.

    Mercurial's own errors carry text meant for users; anything else is a bug whose
    details stay in the server log (the message names an incident id found there).
    """
    from mercurial.utils import stringutil

    if isinstance(exc, hgerror.LockHeld):
        timeout = repo.ui.configint(b"ui", b"timeout") if repo is not None else 0
        return recovery.locked_message(exc, timeout).encode("utf-8"), None
    if isinstance(exc, CommandError):
        return exc.render().encode("utf-8"), None
    if isinstance(exc, (hgerror.Error, hgerror.RepoError)):
        return stringutil.forcebytestr(exc), getattr(exc, "hint", None)
    incident = secrets.token_hex(4).encode("ascii")
    return (
        b"internal server error (incident %s in the server log)" % incident,
        None,
    )


def bundle2_abort_reply(message: bytes, hint: bytes | None = None) -> bytes:
    """A whole bundle2 reply holding one ``error:abort`` part (what a Mercurial server
    answers a failed bundle2 push with; the client prints ``abort: MESSAGE``)."""
    from mercurial import bundle2

    from hgwire_tw.repo.ui import make_ui

    # Part parameter values are at most 255 bytes long.
    params = [(b"message", _clip(message))]
    advisory = [(b"hint", _clip(hint))] if hint else []
    bundler = bundle2.bundle20(make_ui())
    bundler.addpart(bundle2.bundlepart(b"error:abort", params, advisory))
    return b"".join(bundler.getchunks())


def _clip(text: bytes, limit: int = 255) -> bytes:
    text = text.rstrip(b"\n")
    return text if len(text) <= limit else text[: limit - 3] + b"..."


def push_failure(
    message: bytes,
    hint: bytes | None = None,
    *,
    transport: str,
    bundle2: bool,
    bad_input: bool = False,
) -> V1Result:
    """The answer to a push that failed with ``message``, in the form the client reads:
    a bundle2 ``error:abort`` reply to a bundle2 push; else an out-of-band error over
    HTTP, or the non-empty reply frame of a failed push over SSH (``bad_input`` marks
    it for the transport's log)."""
    if bundle2:
        return V1LegacyStream(chunks=iter([bundle2_abort_reply(message, hint)]))
    text = message.rstrip(b"\n") + b"\n"
    if hint:
        text += b"(%s)\n" % hint
    if transport == "ssh":
        return V1PushError(message=text, bad_input=bad_input)
    return V1OutOfBandError(message=text)


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


def run_v1_command(
    repo: Any, name: bytes, args: Mapping[bytes, ArgValue], proto: V1Protocol
) -> V1Result:
    """Run v1 command ``name`` on the worker thread's ``repo`` and type its result.

    ``args`` are the command's arguments selected per its spec. Permission refusals
    propagate as whatever ``proto.checkperm`` raises; a Mercurial ``Abort`` or our
    ``CommandError`` becomes an out-of-band error. ``unbundle`` answers every failure
    with ``push_failure`` (see the module docs).
    """
    entry = wireprotov1server.commands.get(name)
    if entry is None:
        raise UnknownCommand(b"unknown command: %s", (name,))
    proto.bind(repo)
    proto.args = dict(args)
    view = wireprotov1server.getdispatchrepo(repo, proto, name)
    proto.checkperm(entry.permission)
    if name == b"unbundle":
        return _run_unbundle(entry, view, proto, args)
    return _guarded(entry, view, proto, name, args)


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


def v1_response(
    repo: Any,
    name: bytes,
    args: Mapping[bytes, ArgValue],
    proto: V1Protocol,
    choose: Callable[[bool], ResponseFormat] | None,
    piece: int = STREAM_PIECE,
    result: V1Result | None = None,
) -> Iterator[object]:
    """Generator for ``RepositoryPool.iterate``: the result, then any stream body.

    Non-stream results are yielded alone. A stream yields ``V1StreamStart`` and then
    ``bytes`` pieces. ``choose(prefer_uncompressed)`` picks the media type and engine
    (HTTP), or the engine for a bundle2 (SSH, ``ResponseFormat.bundle2``); with
    ``choose=None`` streams go out raw. The command's own generator is
    closed when this one is, on the same worker thread. ``result`` is the command's
    result when the caller already ran it (``v1.cache``).
    """
    if result is None:
        result = run_v1_command(repo, name, args, proto)
    if isinstance(result, V1Stream):
        chunks = result.chunks
        try:
            fmt = None
            if choose is not None:
                try:
                    fmt = choose(result.prefer_uncompressed)
                except CommandError as e:
                    yield V1OutOfBandError(message=e.render().encode("utf-8") + b"\n")
                    return
            start, body = encode_stream(chunks, fmt, piece)
            yield start
            yield from body
        finally:
            close_chunks(chunks)
    elif isinstance(result, V1LegacyStream):
        chunks = result.chunks
        try:
            yield V1StreamStart(media_type=MEDIA_TYPE_V01, engine="none", legacy=True)
            yield from stream_body(chunks, None, piece)
        finally:
            close_chunks(chunks)
    else:
        yield result
