"""Wire protocol v2 over HTTP: the capabilities upgrade and ``/api/exp-http-v2-0003/``.

A v2 request is one POST whose body holds every frame the client sends. The body is fed
whole to a half-duplex ``ServerFrameReactor``; the commands it announces run one after
another through the ``CommandRunner``, and their frames are written to a chunked
``200 OK`` response as they are produced, paused while the client does not read.
The CBOR encoding and compression of the output run as the reactor's encoding jobs on
a worker thread, through the same :class:`~hgwire_tw.transports.jobpump.JobPump` as
the SSH subsystem and raw TCP; the response ends once the last job's frames are written.

Who may use ``ro`` and ``rw`` is ``AccessPolicy.authorize``'s decision
(``httpauth.check_access`` answers a refusal). Unlike Mercurial 6.0.3, every command's
own permission, as the runner's command table gives it, is checked against the URL's
``ro``/``rw``, on the plain command URL as well as on ``multirequest``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from hgwire_tw.commands.registry import Permission, capabilities_descriptor
from hgwire_tw.context import ServerContext
from hgwire_tw.core import cbor
from hgwire_tw.core.errors import RemoteProtocolError
from hgwire_tw.core.frames import FRAMING_MEDIA_TYPE, HTTP_V2_API
from hgwire_tw.core.reactor import (
    DuplexMode,
    EncodeJob,
    ProtocolFailure,
    RunCommand,
    SendFrames,
    ServerAction,
    ServerFrameReactor,
)
from hgwire_tw.core.v1 import join_header_values
from hgwire_tw.repo.pool import StreamStalled
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.transports.httpauth import HTTPDenied, authenticate, check_access, deny
from hgwire_tw.transports.httpreplies import TEXT, finish, internal_error, plain
from hgwire_tw.transports.jobpump import JobPump, JobRunner, JobSink, threaded_job_runner
from hgwire_tw.transports.pausegate import PauseGate

log = Logger()

API_BASE = b"api/"
CBOR_MEDIA_TYPE = b"application/mercurial-cbor"
#: Largest v2 request body: v2 requests carry commands and arguments, never bundles.
MAX_V2_BODY = 16 * 1024 * 1024
MULTIREQUEST = b"multirequest"


def _joined_header(request: IRequest, name: bytes) -> bytes:
    try:
        return join_header_values(request.getHeader, name)
    except RemoteProtocolError:
        return b""  # absurdly many headers: not an upgrade request


def is_upgrade_request(ctx: ServerContext, request: IRequest) -> bool:
    """Whether a ``?cmd=capabilities`` request asks to upgrade to the v2 API (§3.1)."""
    if not ctx.settings.v2_enabled:
        return False
    upgrade = _joined_header(request, b"X-HgUpgrade")
    proto = _joined_header(request, b"X-HgProto")
    return bool(upgrade) and bool(proto) and b"cbor" in proto.split()


def _redirect_caps(ctx: ServerContext) -> dict[str, Any]:
    # The upgrade answer carries the same redirect section as the capabilities command.
    redirector = getattr(ctx.runner, "redirector", None)
    if redirector is None:
        return {}
    from hgwire_tw.redirects import REDIRECT_HASHES

    targets = [t.advertised() for t in redirector.targets()]
    return {"redirect_targets": targets, "redirect_hashes": REDIRECT_HASHES}


def upgrade_response(
    ctx: ServerContext, request: IRequest, served: ServedRepository, v1_capabilities: bytes
) -> Deferred[bytes] | None:
    """Answer the v2 capabilities upgrade, or None when the request is not one.

    Sets the CBOR content type; the Deferred fires with the body (the descriptor needs
    the repository, which is read on a worker thread).
    """
    if not is_upgrade_request(ctx, request):
        return None
    wanted = set(_joined_header(request, b"X-HgUpgrade").split())
    request.setHeader(b"Content-Type", CBOR_MEDIA_TYPE)

    def descriptor(repo: Any) -> bytes:
        apis: dict[bytes, object] = {}
        if HTTP_V2_API in wanted:
            apis[HTTP_V2_API] = capabilities_descriptor(
                repo, stream_clone_allowed=ctx.settings.stream_clone, **_redirect_caps(ctx)
            )
        return cbor.dumps({b"apibase": API_BASE, b"apis": apis, b"v1capabilities": v1_capabilities})

    d: Deferred[bytes] = ctx.pool.run(served, descriptor)
    return d


def _text(request: IRequest, status: int, message: str) -> bytes:
    # The v2 API answers exactly text/plain, as Mercurial's does.
    return plain(request, status, message, content_type=TEXT)


def render_api(
    ctx: ServerContext,
    request: IRequest,
    served: ServedRepository,
    rest: Sequence[str],
    *,
    run_job: JobRunner | None = None,
) -> bytes | int:
    """Render ``<repo>/api/...``; ``rest`` is the path below the repository, from ``api``.

    ``run_job`` runs the output's encoding jobs (default: the reactor's thread pool).
    """
    parts = [p for p in rest[1:]]
    if parts and parts[-1] == "" and len(parts) <= 2:
        parts = parts[:-1]
    if not ctx.settings.v2_enabled:
        return _text(request, 404, "API not enabled\n")
    if not parts:
        return _text(
            request,
            200,
            f"APIs can be accessed at /api/<name>, where <name> "
            f"can be one of the following:\n\n{HTTP_V2_API.decode()}\n",
        )
    api = parts[0]
    if api != HTTP_V2_API.decode():
        return _text(request, 404, f"Unknown API: {api}\nKnown APIs: {HTTP_V2_API.decode()}")
    if len(parts) == 1:
        return _text(request, 200, "HTTP version 2 API handler")
    if len(parts) != 3:
        return _text(request, 404, "Not Found")
    perm, command = parts[1], parts[2]
    if perm not in ("ro", "rw"):
        return _text(request, 404, "Not Found")
    if request.method != b"POST":
        request.setHeader(b"Allow", b"POST")
        return _text(request, 405, "commands require POST requests")

    def authorised(user: str | None) -> bytes | int:
        check_access(ctx, request, served.name, user, write=(perm == "rw"))
        return _checked_command(ctx, request, served, perm, command, run_job)

    def refused(f: Failure) -> None:
        f.trap(HTTPDenied)
        finish(request, deny(ctx, request, f.value, b"permission denied"))

    d = authenticate(ctx, request).addCallback(authorised)

    def rendered(result: bytes | int) -> None:
        if result is not NOT_DONE_YET:
            finish(request, result)  # type: ignore[arg-type]

    d.addCallbacks(rendered, refused).addErrback(_internal_error, request)
    return NOT_DONE_YET


def _internal_error(f: Failure, request: IRequest) -> None:
    # A bug: logged once with an incident id the answer names; a response already under
    # way is cut, so the client cannot take it for complete.
    body = internal_error(request, f, "v2 HTTP request", hg_error=False)
    if body is not None:
        finish(request, body)


def _checked_command(
    ctx: ServerContext,
    request: IRequest,
    served: ServedRepository,
    perm: str,
    command: str,
    run_job: JobRunner | None,
) -> bytes | int:
    name = command.encode("utf-8")
    spec_of = ctx.runner.spec  # the runner's command table: what this server runs
    if name != MULTIREQUEST and spec_of(name) is None:
        return _text(request, 404, f"unknown wire protocol command: {command}\n")
    if name != MULTIREQUEST and _needs_rw(spec_of(name), perm):
        return _text(request, 403, f"insufficient permissions to execute command: {command}\n")
    if request.requestHeaders.getRawHeaders(b"accept") != [FRAMING_MEDIA_TYPE]:
        return _text(
            request,
            406,
            f"client MUST specify Accept header with value: {FRAMING_MEDIA_TYPE.decode()}\n",
        )
    if request.requestHeaders.getRawHeaders(b"content-type") != [FRAMING_MEDIA_TYPE]:
        return _text(
            request,
            415,
            f"client MUST send Content-Type header with value: {FRAMING_MEDIA_TYPE.decode()}\n",
        )
    body = request.content.read(MAX_V2_BODY + 1)
    if len(body) > MAX_V2_BODY:
        return _text(request, 413, "request body too large\n")

    frame_reactor = ServerFrameReactor(
        mode=DuplexMode.HALF, encodings=ctx.settings.v2_encodings, encoding_jobs=True
    )
    actions = [*frame_reactor.receive_data(body), *frame_reactor.end_of_input()]
    runs: list[RunCommand] = []
    for action in actions:
        if isinstance(action, ProtocolFailure):
            return _text(request, 200, action.message)
        if isinstance(action, RunCommand):
            runs.append(action)
        # A half-duplex reactor sends nothing (no frames, no jobs) before the commands
        # run; CloseConnection only follows a ProtocolFailure.
    if name != MULTIREQUEST:
        if len(runs) != 1:
            return _text(request, 200, "multiple commands cannot be issued to this URL")
        if runs[0].name != name:
            return _text(request, 200, "command in frame must match command in URL")
    for run in runs:
        if spec_of(run.name) is None:
            return _text(
                request,
                200,
                f"wire protocol command not available: {run.name.decode('utf-8', 'replace')}",
            )
        if _needs_rw(spec_of(run.name), perm):
            return _text(
                request,
                403,
                f"insufficient permissions to execute command: "
                f"{run.name.decode('utf-8', 'replace')}",
            )

    request.setResponseCode(200)
    request.setHeader(b"Content-Type", FRAMING_MEDIA_TYPE)
    if run_job is None:
        run_job = threaded_job_runner(ctx.reactor)
    response = _V2Response(
        ctx, request, served, frame_reactor, may_push=(perm == "rw"), run_job=run_job
    )
    response.start(runs)
    return NOT_DONE_YET


def _host(request: Any) -> str:
    """The client's address, for log lines."""
    return str(getattr(request.getClientAddress(), "host", "-"))


def _needs_rw(spec: Any, perm: str) -> bool:
    """Whether a command of ``spec`` (a ``CommandSpec``) pushes, so that a ``ro`` URL
    (``perm``) refuses it."""
    return spec is not None and spec.permission is Permission.PUSH and perm == "ro"


@implementer(IPushProducer)
class _V2Response:
    """Runs a request's commands in order and streams their frames, pausing with the client.

    Output goes through encoding jobs on the reactor's single output stream, so one
    command's frames are all out before the next one's, and the response is finished
    only when no job is left. If the client goes away, the running command is cancelled
    and jobs still running on a worker write nothing.
    """

    def __init__(
        self,
        ctx: ServerContext,
        request: IRequest,
        served: ServedRepository,
        frame_reactor: ServerFrameReactor,
        *,
        may_push: bool,
        run_job: JobRunner,
    ) -> None:
        self.ctx = ctx
        self.request = request
        self.served = served
        self.frames: ServerFrameReactor | None = frame_reactor
        self.may_push = may_push
        self.gate = PauseGate()
        self.pump = JobPump(frame_reactor, run_job, self, self._job_over, "v2 HTTP")
        self.waiting: deque[RunCommand] = deque()
        self.running: tuple[int, Deferred[None]] | None = None
        self.commands_over = False
        #: The client is gone or the response finished: nothing more is written.
        self.done = False

    # IPushProducer: twisted.web pauses us when the client stops reading.
    def pauseProducing(self) -> None:
        self.gate.pause()

    def resumeProducing(self) -> None:
        self.gate.resume()

    def stopProducing(self) -> None:
        """The client went away: cancel the running command, drop the rest."""
        if self.done:
            return
        self._stop()
        running, self.running = self.running, None
        if running is not None:
            request_id, d = running
            frames = self.frames
            if frames is not None:
                frames.request_cancelled(request_id)
            d.cancel()
        self.gate.resume()

    def _stop(self) -> None:
        self.done = True
        self.waiting.clear()
        self.pump.stop()

    def start(self, runs: Sequence[RunCommand]) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self.waiting.extend(runs)
        self._next()

    def _next(self) -> None:
        if self.done:
            return
        if not self.waiting:
            self.commands_over = True
            self._maybe_finish()
            return
        run = self.waiting.popleft()
        sink = JobSink(self, self.pump, run.request_id)
        d: Deferred[None] = self.ctx.runner.run(
            self.served,
            run.name,
            run.args,
            may_push=self.may_push,
            sink=sink,
            redirect=run.redirect,
            who=f"HTTP client {_host(self.request)}",
        )
        self.running = (run.request_id, d)
        d.addBoth(self.ctx.metrics.command(self.served.name, "http", "v2", run.name, run.args))
        d.addBoth(self._command_over)

    def _command_over(self, result: object) -> None:
        self.running = None
        if isinstance(result, Failure) and isinstance(result.value, StreamStalled):
            # The client stopped reading (logged by the runner): cut the connection.
            self._stop()
            transport = getattr(getattr(self.request, "channel", None), "transport", None)
            if transport is not None:
                transport.abortConnection()
            return
        if isinstance(result, Failure) and not isinstance(result.value, CancelledError):
            if not self.done:
                log.failure("v2 command failed", result)
        self._next()

    def _job_over(self, more: Sequence[ServerAction]) -> None:
        self.execute(more)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        frames = self.frames
        if self.done or not self.commands_over or (frames is not None and frames.jobs_pending):
            return
        self._stop()
        self.request.unregisterProducer()
        self.request.finish()

    def execute(self, actions: Sequence[object]) -> Deferred[None] | None:
        """Write the frames and start the jobs among ``actions``; a Deferred while the
        client is not reading."""
        if self.done:
            raise ConnectionAbortedError("client went away")
        for action in actions:
            if self.done:
                break  # a job run inline may have finished the response
            if isinstance(action, SendFrames):
                self.write(action.data)
            elif isinstance(action, EncodeJob):
                self.pump.start(action)
            # ProtocolFailure/CloseConnection: output-side calls never fail the protocol.
        return None if self.done else self.drained()

    # JobOutput, for the pump.
    def write(self, data: bytes) -> None:
        """Send ``data`` in the chunked response."""
        self.request.write(data)

    def drained(self) -> Deferred[None] | None:
        """None while the client reads; else a Deferred firing once it does again."""
        return self.gate.wait()
