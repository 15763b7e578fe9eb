"""``hg -R <repo> serve --stdio`` over an SSH channel: the v1 session.

``V1SSHSession`` is the Twisted glue between three pieces written elsewhere:

* ``hgwire_tw.core.v1.SSHRequestParser`` turns the channel's bytes into requests,
  payload chunks and the shutdown line;
* ``hgwire_tw.v1.runner`` runs each command, a ``V1Call`` decided here, on a worker
  thread (through ``RepositoryPool.iterate``) and yields typed results and, for stream
  responses, the body in pieces;
* a ``SessionOutput`` (the SSH channel) takes stdout/stderr bytes and says when its
  window is full.

Requests are served strictly one at a time, in order, as Mercurial's own server does.
A stream response (``getbundle``) is produced on the worker only as fast as the client
opens the channel window: each batch the worker hands over is written, and while the
channel holds unsent data the ``Deferred`` returned to the pool keeps the worker
waiting. Nothing is ever built whole in memory.

``unbundle``: the user's write permission is checked first (a refusal is an
out-of-band error and the client never sends the bundle); then the server asks for the
payload (``0\\n``), spools it to an anonymous temporary file (bounded by
``Settings.max_push_bytes``) and only then runs the command, which reads the file back
on the worker thread. Each call carries the user's ``Grant``, decided when it starts;
the worker checks ``pushkey`` (and ``unbundle``, again) against it, so ``batch`` cannot
smuggle a push command in. The session keeps what the client's ``protocaps`` command
said (``V1ProtoCaps``) for the calls that follow.

``getbundle`` answers are compressed when the client's ``protocaps`` offered an engine
of ``Settings.v1_compression``: the first of the server's order that the client lists
compresses the bundle2 inside itself (its ``Compression`` stream parameter, see
``core.v1.compress_bundle2``), on the worker thread, under the same window
back-pressure. Clients that sent no ``protocaps``, bundle1 answers, stream clones and
error replies go out raw, as Mercurial's own server sends everything.

Each command leaves one access line in the log (``ssh_log.command_line``). An error
answer refusing the client's input (a malformed argument, an unknown node, a corrupt
push) adds one ``info`` line in the words HTTP uses, ``v1 REPO COMMAND from ADDRESS: bad
input: ...``, naming the argument; a broken request stream one ``info`` line before the
session ends. Neither carries a traceback.

A push whose permission is withdrawn after its payload was taken (the access file was
reloaded in between) is refused in the push's own answer form, like any failed push:
by then a bundle2 client reads nothing but a bundle2 reply.

Remote output (the "adding changesets" lines, hook output) goes to stderr, which the
client prints as ``remote: ...``. When the client closes its side (EOF), requests
already received are still answered; then the session ends with exit status 0. A
protocol violation or an internal error ends it with a message on stderr and exit
status 1.
"""

from __future__ import annotations

import collections
import tempfile
from dataclasses import dataclass
from typing import IO, Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from hgwire_tw.access import Grant
from hgwire_tw.authorized_keys import KeyScope
from hgwire_tw.context import ServerContext
from hgwire_tw.core.errors import PermissionDenied, ProtocolError
from hgwire_tw.core.v1 import (
    MEDIA_TYPE_V01,
    ResponseFormat,
    SSHCommand,
    SSHEvent,
    SSHPayloadChunk,
    SSHPayloadEnd,
    SSHRequestParser,
    SSHShutdown,
    SSHUnknownCommand,
    choose_ssh_engine,
    parse_protocaps,
    ssh_bytes_response,
    ssh_capabilities,
    ssh_ooberror,
    ssh_push_result,
    ssh_unknown_command,
)
from hgwire_tw.repo.pool import StreamStalled
from hgwire_tw.repo.recovery import RepositoryLocked
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.transports.ssh_log import command_line
from hgwire_tw.v1.call import StreamFormats, V1Call
from hgwire_tw.v1.failures import LOGGED_FAILURES, describe_failure, one_line, push_failure
from hgwire_tw.v1.protocol import BUNDLE2_MAGIC, ProtocolFacts, SpooledPayload
from hgwire_tw.v1.results import (
    V1Bytes,
    V1LegacyStream,
    V1OutOfBandError,
    V1ProtoCaps,
    V1PushError,
    V1PushResult,
    V1RemoteOutput,
    V1StreamStart,
)

__all__ = ["MAX_QUEUED_REQUESTS", "SessionOutput", "V1SSHSession"]

log = Logger()

#: Requests a client may send ahead while one is being answered (real clients send the
#: handshake's two, then wait for every answer).
MAX_QUEUED_REQUESTS = 64


class SessionOutput(Protocol):
    """What a session writes to: the SSH channel (or a test double)."""

    def write(self, data: bytes) -> None:
        """Send ``data`` on stdout (buffered by the channel when its window is full)."""

    def write_stderr(self, data: bytes) -> None:
        """Send ``data`` on stderr (extended data)."""

    def drained(self) -> Deferred[None] | None:
        """None when nothing waits for window space; else fires once everything is sent."""

    def finish(self, status: int) -> None:
        """Send the exit status (after any buffered output) and close the channel."""

    def abort(self) -> None:
        """Cut the connection now, dropping the buffered output (the client stopped
        reading)."""


@dataclass(frozen=True, slots=True)
class _InputError:
    """The request stream broke (queued so earlier requests are still answered)."""

    message: str


_Queued = SSHEvent | _InputError


class _CountedOutput:
    """The session's output, counting the bytes written (stdout and stderr)."""

    def __init__(self, output: SessionOutput) -> None:
        self._output = output
        self.sent = 0

    def write(self, data: bytes) -> None:
        self.sent += len(data)
        self._output.write(data)

    def write_stderr(self, data: bytes) -> None:
        self.sent += len(data)
        self._output.write_stderr(data)

    def drained(self) -> Deferred[None] | None:
        return self._output.drained()

    def finish(self, status: int) -> None:
        self._output.finish(status)

    def abort(self) -> None:
        self._output.abort()


@dataclass(slots=True)
class _Command:
    """The command being answered, for its access line."""

    name: str
    started: float
    sent_before: int
    engine: str = "-"
    outcome: str = "ok"


def _v1_command_specs() -> dict[bytes, bytes]:
    from mercurial import wireprotov1server

    return {name: entry.args for name, entry in wireprotov1server.commands.items()}


class V1SSHSession:
    """Serves one ``hg serve --stdio`` session for ``user`` on ``served``."""

    def __init__(
        self,
        ctx: ServerContext,
        output: SessionOutput,
        served: ServedRepository,
        user: str,
        peer_host: str = "",
        *,
        scope: KeyScope | None = None,
    ) -> None:
        from hgwire_tw.clonebundles import source_for

        self.ctx = ctx
        self.output = _CountedOutput(output)
        self.peer_host = peer_host
        self.served = served
        self.user = user
        #: The hg-ssh scope of the user's key: passed to every permission check.
        self.scope = scope
        self.parser = SSHRequestParser(_v1_command_specs(), max_payload=ctx.settings.max_push_bytes)
        self._server_config: tuple[tuple[bytes, bytes, bytes], ...] = ()
        if not ctx.settings.stream_clone:
            self._server_config = ((b"server", b"uncompressed", b"false"),)
        self._clonebundles = source_for(ctx, served)
        #: What the client's ``protocaps`` command said (Mercurial keeps it per session).
        self.protocaps = b""
        self._queue: collections.deque[_Queued] = collections.deque()
        self._busy = False
        self._done = False
        self._in_flight: Deferred[None] | None = None
        self._started_output = False
        self._push: SSHCommand | None = None
        self._spool: IO[bytes] | None = None
        #: The first bytes of the push being spooled (``HG20`` for a bundle2).
        self._push_head = b""
        self._command: _Command | None = None

    # -- input --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the client's stdin."""
        if self._done:
            return
        try:
            events = self.parser.feed(data)
        except ProtocolError as e:
            self._queue.append(_InputError(str(e)))
        else:
            self._queue.extend(events)
        if self._busy and len(self._queue) > MAX_QUEUED_REQUESTS and self._push is None:
            self._queue.append(_InputError("too many requests sent ahead of the answers"))
        self._pump()

    def eofReceived(self) -> None:
        """The client closed stdin: answer what was asked, then end the session."""
        if self._done:
            return
        try:
            self._queue.extend(self.parser.end_of_input())
        except ProtocolError as e:
            self._queue.append(_InputError(str(e)))
        self._pump()

    def connectionLost(self) -> None:
        """The channel is gone: stop any work and drop the spooled push."""
        self._done = True
        self._queue.clear()
        if self._in_flight is not None:
            self._log_command("gone")
            self._in_flight.cancel()
        self._close_spool()

    # -- the request loop ----------------------------------------------------------------

    def _pump(self) -> None:
        while not self._busy and not self._done and self._queue:
            self._handle(self._queue.popleft())

    def _handle(self, event: _Queued) -> None:
        if isinstance(event, SSHCommand):
            if event.name == b"unbundle":
                self._start_push(event)
            else:
                self._run(event.name, event.args)
        elif isinstance(event, SSHPayloadChunk):
            self._spool_chunk(event.data)
        elif isinstance(event, SSHPayloadEnd):
            push, self._push = self._push, None
            if push is not None and self._spool is not None:
                self._spool.flush()
                self._run(push.name, push.args)
        elif isinstance(event, SSHUnknownCommand):
            # Includes the dead ``upgrade`` handshake: answering an empty string keeps
            # the client on plain v1.
            self._begin_command(event.line.split(b" ", 1)[0][:40])
            self.output.write(ssh_unknown_command())
            self._log_command("unknown")
        elif isinstance(event, SSHShutdown):
            self._finish(0)
        elif isinstance(event, _InputError):
            log.info(
                "v1 {repo} session of {user} from {host} ended: protocol error: {error}",
                repo=self.served.name or "/",
                user=self.user or "-",
                host=self.peer_host or "-",
                error=one_line(event.message),
            )
            self._fail(f"protocol error: {event.message}")

    def _start_push(self, command: SSHCommand) -> None:
        grant = self._grant()
        if not grant.write:
            log.warn(
                "push to {repo} refused for {user} over SSH: {why}",
                repo=self.served.name or "/",
                user=self.user or "anonymous",
                why=grant.reason,
            )
            self._begin_command(command.name)
            self._write_ooberror(self._denied_message(b"push"))
            self._log_command("denied")
            self._queue.extend(self._parser_call(self.parser.skip_payload))
            return
        try:
            self._spool = tempfile.TemporaryFile(prefix="hgwire-push-")
        except OSError as e:
            log.error("cannot spool a push: {error}", error=e)
            self._write_ooberror(b"cannot accept a push right now (no temporary space)\n")
            self._queue.extend(self._parser_call(self.parser.skip_payload))
            return
        self._push = command
        self._push_head = b""
        self.output.write(ssh_bytes_response(b""))  # "send the payload"
        self._queue.extend(self._parser_call(self.parser.begin_payload))

    def _parser_call(self, method: Any) -> list[_Queued]:
        try:
            return list(method())
        except ProtocolError as e:
            return [_InputError(str(e))]

    def _spool_chunk(self, data: bytes) -> None:
        if self._spool is None:
            return
        if len(self._push_head) < 4:
            # enough to tell a bundle2 push (which only reads a bundle2 reply) from bundle1
            self._push_head += data[: 4 - len(self._push_head)]
        try:
            self._spool.write(data)
        except OSError as e:
            log.error("cannot spool a push: {error}", error=e)
            self._fail("the server ran out of space for this push")

    def _close_spool(self) -> None:
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()

    # -- running a command --------------------------------------------------------------

    def _facts(self) -> ProtocolFacts:
        """The protocol handler's facts for a command starting now. A push's payload has
        arrived by then, so a policy reloaded while it came in applies to its grant."""
        return ProtocolFacts(
            transport="ssh",
            grant=self._grant(),
            payload=None if self._spool is None else SpooledPayload(fileobj=self._spool),
            protocaps=self.protocaps,
            remote_host=self.peer_host,
            remote_user=self.user,
            capabilities=tuple(ssh_capabilities()),
            server_config=self._server_config,
            clonebundles=self._clonebundles,
        )

    def _grant(self) -> Grant:
        """What the user (with their key's scope) may do here, by the current policy."""
        return self.ctx.access.authorize(self.user, self.served.name, self.scope)

    def _denied_message(self, perm: bytes) -> bytes:
        what = "push to" if perm == b"push" else "read"
        return (
            f"permission denied: user {self.user!r} may not {what} "
            f"repository {self.served.name!r}\n".encode()
        )

    def _run(self, name: bytes, args: dict[bytes, Any]) -> None:
        from hgwire_tw.commands.cachekeys import server_salt
        from hgwire_tw.v1.runner import start_call

        self._busy = True
        self._started_output = False
        self._begin_command(name)
        call = V1Call(
            served=self.served,
            name=name,
            args=args,
            facts=self._facts(),
            formats=self._response_format(name),
            salt=server_salt(),
        )
        d = start_call(self.ctx, call, self._deliver)
        self._in_flight = d
        d.addCallbacks(self._command_done, self._command_failed, errbackArgs=(name,))
        d.addErrback(self._internal_error)

    def _deliver(self, batch: list[object]) -> Deferred[None] | None:
        """Write one batch of a command's output (reactor thread)."""
        if self._done:
            raise CancelledError()
        for item in batch:
            if isinstance(item, bytes):
                self._started_output = True
                self.output.write(item)
            elif isinstance(item, V1StreamStart):
                self._started_output = True  # raw stream: nothing precedes the body
                if self._command is not None:
                    self._command.engine = item.engine
            elif isinstance(item, V1Bytes):
                self.output.write(ssh_bytes_response(item.data))
            elif isinstance(item, V1PushResult):
                self._flush_remote_output(item.output)
                self.output.write(ssh_push_result(item.result))
            elif isinstance(item, V1PushError):
                self._flush_remote_output(item.output)
                self.output.write(ssh_bytes_response(item.message))
                self._set_outcome("error")
                if item.bad_input:
                    self._bad_input(item.message)
            elif isinstance(item, V1OutOfBandError):
                self._write_ooberror(item.message)
                self._set_outcome("error")
                if not item.message.startswith(LOGGED_FAILURES):
                    self._bad_input(item.message)
            elif isinstance(item, V1RemoteOutput):
                self._flush_remote_output(item.data)
            elif isinstance(item, V1ProtoCaps):
                self.protocaps = item.value
            else:
                raise TypeError(f"unexpected v1 result {type(item).__name__}")
        return self.output.drained()

    def _flush_remote_output(self, data: bytes) -> None:
        """Send what the command printed to stderr (the client shows ``remote:`` lines)."""
        if data:
            self.output.write_stderr(data)

    def _bad_input(self, message: bytes) -> None:
        """One info line for an error answer refusing the client's input, naming the
        command (the message names the argument). Never louder: any user who may read
        can send bad input, and must not fill the log with errors or tracebacks."""
        log.info(
            "v1 {repo} {cmd} from {host}: bad input: {error}",
            repo=self.served.name or "/",
            cmd=self._command.name if self._command is not None else "-",
            host=self.peer_host or "-",
            error=one_line(message),
        )

    def _write_ooberror(self, message: bytes) -> None:
        stdout, stderr = ssh_ooberror(message.rstrip(b"\n"))
        self.output.write_stderr(stderr)
        self.output.write(stdout)

    def _end_command(self, outcome: str | None = None, *, log_now: bool = True) -> None:
        self._in_flight = None
        self._busy = False
        self._close_spool()
        if log_now:
            self._log_command(outcome)

    def _command_done(self, _: None) -> None:
        if self._done:
            return
        self._end_command()
        self._pump()

    def _command_failed(self, failure: Failure, name: bytes) -> None:
        if self._done or failure.check(CancelledError):
            return
        if isinstance(failure.value, StreamStalled):
            # The client stopped reading (logged by start_call): cut the connection.
            self._set_outcome("cut")
            self._end_command()
            self._finish(1)
            self.output.abort()
            return
        if failure.check(PermissionDenied) and not self._started_output:
            permission = failure.value.permission  # type: ignore[union-attr]
            denied = self._denied_message(permission).rstrip(b"\n")
            if name == b"unbundle":
                # Allowed when the push began, withdrawn since (a reload): the client
                # has sent its payload and reads only the push's own answer form.
                log.warn(
                    "push to {repo} refused for {user} over SSH: not authorized any more",
                    repo=self.served.name or "/",
                    user=self.user or "anonymous",
                )
                bundle2 = self._push_head == BUNDLE2_MAGIC
                self._deliver_failure(push_failure(denied, transport="ssh", bundle2=bundle2))
            else:
                self._write_ooberror(denied)
            self._end_command("denied")
            self._pump()
            return
        self._set_outcome("error")
        # logged once the answer below is written, so that its bytes count
        self._end_command(log_now=False)
        # The text the client gets; for a bug it names an incident id, logged here too.
        message, hint = describe_failure(failure.value)
        if failure.check(RepositoryLocked):
            log.warn(
                "v1 {repo} {name} refused over SSH: {error}",
                repo=self.served.name or "/",
                name=name.decode("utf-8", "replace"),
                error=failure.value,
            )
        else:
            log.failure(
                "v1 command {name} failed over SSH: {message}",
                failure,
                name=name,
                message=message.decode("utf-8", "replace"),
            )
        if self._started_output:
            # The response is half sent; there is no way to tell the client in-band.
            self._log_command()
            self._fail("internal server error; see the server log")
            return
        if name == b"unbundle":
            # A bundle2 client reads only a bundle2 reply: an out-of-band error would
            # leave it waiting forever.
            bundle2 = self._push_head == BUNDLE2_MAGIC
            self._deliver_failure(push_failure(message, hint, transport="ssh", bundle2=bundle2))
        else:
            self._write_ooberror(message + (b"\n(%s)" % hint if hint else b""))
        self._log_command()
        self._pump()

    def _deliver_failure(self, result: object) -> None:
        if isinstance(result, V1LegacyStream):
            for chunk in result.chunks:
                self.output.write(chunk)
        else:
            self._deliver([result])

    def _internal_error(self, failure: Failure) -> None:
        log.failure("SSH v1 session error", failure)
        self._fail("internal server error; see the server log")

    def _fail(self, message: str) -> None:
        if self._done:
            return
        self.output.write_stderr(f"hgwire: {message}\n".encode())
        self._finish(1)

    def _finish(self, status: int) -> None:
        if self._done:
            return
        self._done = True
        self._queue.clear()
        if self._in_flight is not None:
            self._in_flight.cancel()
        self._close_spool()
        self.output.finish(status)

    # -- response compression -----------------------------------------------------------

    def _response_format(self, name: bytes) -> StreamFormats:
        """How ``name``'s stream answer is compressed: only ``getbundle``, only when the
        client's ``protocaps`` offered one of our engines (else raw, as ever)."""
        if name != b"getbundle":
            return StreamFormats()
        settings = self.ctx.settings
        engine = choose_ssh_engine(parse_protocaps(self.protocaps), settings.v1_compression)
        if engine == "none":
            return StreamFormats()
        level = {"zstd": settings.zstd_level, "zlib": settings.zlib_level}.get(engine)
        return StreamFormats(
            compressed=ResponseFormat(
                media_type=MEDIA_TYPE_V01, engine=engine, level=level, bundle2=True
            ),
            # stream clones and error replies prefer to go out as they are
            uncompressed=ResponseFormat(media_type=MEDIA_TYPE_V01, engine="none", bundle2=True),
        )

    # -- access log ---------------------------------------------------------------------

    def _begin_command(self, name: bytes) -> None:
        # an unknown line is the client's text: nothing in it may forge log output
        text = "".join(
            c if c.isprintable() and c not in '"\\' else "?"
            for c in name.decode("ascii", "replace")
        )
        self._command = _Command(
            name=text,
            started=self.ctx.reactor.seconds(),
            sent_before=self.output.sent,
        )

    def _set_outcome(self, outcome: str) -> None:
        if self._command is not None and self._command.outcome == "ok":
            self._command.outcome = outcome

    def _log_command(self, outcome: str | None = None) -> None:
        """The access line of the command being answered (once)."""
        command, self._command = self._command, None
        if command is None:
            return
        log.info(
            "{line}",
            line=command_line(
                address=self.peer_host,
                user=self.user,
                repo=self.served.name,
                command=command.name,
                outcome=outcome or command.outcome,
                engine=command.engine,
                sent=self.output.sent - command.sent_before,
                seconds=self.ctx.reactor.seconds() - command.started,
            ),
        )
