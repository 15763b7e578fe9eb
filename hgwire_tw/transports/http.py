"""The HTTP transport: a ``twisted.web`` resource tree serving wire protocol v1 (and v2).

``HgResource(ctx)`` is the root. Paths under ``BLOBS_PATH`` are the embedded blob store
(``httpblobs.render_blob``); any other request's path is mapped to a served repository with
``visible_match`` (``ctx.registry.match`` leaving out the repositories this client may
not read, so a private repository answers exactly like one that does not exist: 401 to
an anonymous client when logging in could help, else 404); ``<repo>/api/...`` goes to
the v2 API (``http_v2.render_api``) and ``<repo>?cmd=NAME`` is a v1 command:

1. the command must be known and addressed to the repository root;
2. the arguments (query string, ``X-HgArg-N`` or ``X-HgArgs-Post``) must decode
   strictly (400);
3. the user is authenticated (HTTP Basic, ``httpauth.authenticate``) and the pull and
   push decisions are made here, once, hgweb's way (``v1_denial``): read, then POST
   (405), then TLS (403 unless ``allow_push_over_http``), then write (401 when logging
   in could help, else 403). The call's ``Grant`` holds those decisions; a command
   inside ``batch`` that it refuses (``PermissionDenied`` from the worker) gets the
   refusal decided here;
4. ``?cmd=capabilities`` carrying the v2 upgrade headers is answered by
   ``http_v2.upgrade_response`` when it accepts the upgrade;
5. the command runs on a worker thread as a ``V1Call`` (``hgwire_tw.v1.runner``),
   everything it depends on decided here first. String results become
   ``200 Script output follows`` with ``application/mercurial-0.1``; stream results
   are compressed on the worker (media type and engine negotiated from ``X-HgProto-N``
   by ``core.v1.choose_response_format`` before the call) and written through a push
   producer, so the worker only produces as fast as the client reads; out-of-band
   errors are ``application/hg-error``. A client that disconnects cancels the stream
   and frees the worker. twisted.web's gzip encoding is never used: compression is
   negotiated in-band.

Everything before rendering — connection caps, the request deadline, authentication and
admission before the body is read, body bounds and spooling — is ``httpsite.HgSite``'s
(``make_site``); ``HgResource.admit`` is the part of it that knows the URL space.
"""

from __future__ import annotations

import io
import time
from typing import IO, Any
from urllib.parse import unquote

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from hgwire_tw.access import Grant
from hgwire_tw.clonebundles import source_for
from hgwire_tw.commands.cachekeys import server_salt
from hgwire_tw.context import ServerContext
from hgwire_tw.core.errors import (
    CommandError,
    PermissionDenied,
    RemoteProtocolError,
    UnknownRepository,
)
from hgwire_tw.core.v1 import (
    MEDIA_TYPE_ERROR,
    MEDIA_TYPE_V01,
    ArgValue,
    ProtoCaps,
    choose_response_format,
    decode_http_args,
    http_capabilities,
    join_header_values,
    parse_protocaps,
    parse_urlencoded,
    select_command_args,
)
from hgwire_tw.repo.pool import StreamStalled
from hgwire_tw.repo.recovery import RepositoryLocked
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.transports import http_v2, httpblobs
from hgwire_tw.transports.httpauth import HTTPDenied, authenticate, check_access, deny, refusal
from hgwire_tw.transports.httpreplies import finish, internal_error, is_gone, plain
from hgwire_tw.transports.httpsite import Admission, HgRequest, HgSite, HTTPLimits
from hgwire_tw.transports.pausegate import PauseGate
from hgwire_tw.v1.call import FormatChoice, StreamFormats, V1Call
from hgwire_tw.v1.dispatch import command_permission, command_spec, is_command
from hgwire_tw.v1.failures import LOGGED_FAILURES, describe_failure, one_line
from hgwire_tw.v1.protocol import ProtocolFacts, SpooledPayload
from hgwire_tw.v1.results import (
    V1Bytes,
    V1OutOfBandError,
    V1PushError,
    V1PushResult,
    V1StreamStart,
)
from hgwire_tw.v1.runner import V1Runner, start_call
from hgwire_tw.web import metricspage
from hgwire_tw.web.resource import is_web_request

__all__ = ["HgRequest", "HgResource", "HgSite", "make_site"]

log = Logger()

OK_REASON = b"Script output follows"


def make_site(ctx: ServerContext) -> HgSite:
    """The ``Site`` to listen with: ``HgResource(ctx)`` behind an ``HgSite`` bounded by
    ``ctx.settings.http_limits`` (connections, deadlines, bodies: ``httpsite``)."""
    return HgSite(HgResource(ctx), ctx)


# ---------------------------------------------------------------------------------------
# helpers


def _path_segments(request: IRequest) -> list[str]:
    path = request.path.split(b"?", 1)[0]
    segments = [unquote(s.decode("latin-1"), encoding="utf-8") for s in path.split(b"/")]
    return [s for s in segments if s]


def _query(request: IRequest) -> bytes:
    _, _, query = request.uri.partition(b"?")
    return query


def _logged_path(request: IRequest) -> str:
    path = request.path.decode("latin-1")
    return path if len(path) <= 200 else path[:200] + "..."


def _body_size(content: IO[bytes] | None) -> int:
    if content is None:
        return 0
    pos = content.tell()
    content.seek(0, io.SEEK_END)
    size = content.tell()
    content.seek(pos)
    return size


# ---------------------------------------------------------------------------------------
# the resource


class HgResource(Resource):
    """Root of the HTTP URL space: repositories, their v1 commands and their v2 API."""

    isLeaf = True

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__()
        self.ctx = ctx

    def render(self, request: IRequest) -> bytes | int:
        """Route one request (any method) to a repository's v1 command or v2 API.

        A bug raised while routing or rendering is answered ``internal_error``'s way (an
        incident id, the traceback logged once), never twisted.web's bare 500 page."""
        try:
            return self._render(request)
        except Exception:
            body = internal_error(
                request,
                Failure(),
                f"HTTP {request.method.decode('latin-1')} {_logged_path(request)}",
                hg_error=self.wants_hg_error(request),
            )
            return NOT_DONE_YET if body is None else body

    def wants_hg_error(self, request: IRequest) -> bool:
        """Whether ``request`` looks like a v1 command, whose client reads an internal
        error best as an out-of-band ``application/hg-error``."""
        try:
            if self.ctx.web is not None and is_web_request(request):
                return False
            if "api" in _path_segments(request):
                return False
            return b"cmd" in parse_urlencoded(_query(request), where="query string")
        except Exception:
            return False

    def _render(self, request: IRequest) -> bytes | int:
        if httpblobs.is_blob_request(request):
            return httpblobs.render_blob(self.ctx, request)
        if metricspage.is_metrics_request(self.ctx, request):  # web: /metrics
            return metricspage.render_metrics(self.ctx, request)
        segments = _path_segments(request)
        web = self.ctx.web if self.ctx.web is not None and is_web_request(request) else None
        try:
            served, rest = visible_match(self.ctx, request)
        except UnknownRepository as e:
            if web is not None and self._is_index(request, segments):
                # web: the index, nested indexes, their static files
                return web.render(request, segments, None, segments)
            return self._not_found(request, e)
        if rest and rest[0] == "api":
            result: bytes | int = http_v2.render_api(self.ctx, request, served, rest)
            return result
        if web is not None:  # web: every other request without a wire command is hgweb's
            return web.render(request, segments, served, rest)
        try:
            query = parse_urlencoded(_query(request), where="query string")
        except RemoteProtocolError as e:
            return plain(request, 400, f"bad request: {e}\n")
        cmd = query.get(b"cmd")
        if not cmd:
            if rest:
                return plain(request, 404, "Not Found\n")
            return plain(
                request, 200, f"Mercurial repository {served.name or '/'} (served by hgwire_tw)\n"
            )
        return _V1Request(self.ctx, request, served, rest, cmd[0], query).render()

    def _is_index(self, request: IRequest, segments: list[str]) -> bool:
        """Whether a path that names no repository is an index page (or its static
        files): the root, or a directory holding a repository this client may read.
        Anything else gets ``_not_found``'s answer, the same as a private repository."""
        prefix = segments[: segments.index("static")] if "static" in segments else segments
        if not prefix:
            return True
        _, user = _known_user(request)
        below = "/".join(prefix) + "/"
        access = self.ctx.access
        return any(
            name.startswith(below) and access.authorize(user, name).read
            for name in self.ctx.registry.names()
        )

    def _not_found(self, request: IRequest, e: UnknownRepository) -> bytes:
        """The one answer for a path naming no repository this client may read (a
        private one looks like one that does not exist): 401 to an anonymous client when
        logging in could help, else 404."""
        known, user = _known_user(request)
        if known and user is None and self.ctx.access.users:
            return deny(self.ctx, request, NOT_FOUND_ANONYMOUS, b"authorization required\n")
        return plain(request, 404, f"{e}\n")

    def admit(self, request: IRequest, user: str | None) -> Admission:
        """What ``request`` may send, from its headers alone (``httpsite.HgSite`` asks
        before reading the body), and the refusal it will get.

        Only ``unbundle`` carries a payload (up to ``max_push_bytes``, spooled to a file
        when large) and a v2 API request its frames (up to the HTTP body bound). Any
        other v1 command's body holds at most its ``X-HgArgs-Post`` arguments (none
        without that header), and every other request's at most ``MAX_SMALL_BODY``
        bytes: such bodies stay in memory, never in a spool file."""
        ctx = self.ctx
        small = (ctx.settings.http_limits or HTTPLimits()).max_body
        if httpblobs.is_blob_request(request):
            return Admission(0)  # GET and HEAD only
        try:
            served, rest = visible_match(ctx, request, user=user)
        except UnknownRepository:
            anonymous = user is None and ctx.access.users
            refusal = NOT_FOUND_ANONYMOUS if anonymous else NOT_FOUND
            return Admission(MAX_SMALL_BODY, refusal, spool=False)
        if rest and rest[0] == "api":
            try:
                write = len(rest) > 2 and rest[2] == "rw"
                check_access(ctx, request, served.name, user, write=write)
            except HTTPDenied as denied:
                return Admission(small, denied)
            return Admission(small)
        try:
            cmd = parse_urlencoded(_query(request), where="query string").get(b"cmd")
        except RemoteProtocolError:
            return Admission(MAX_SMALL_BODY, spool=False)
        if rest or not cmd or not is_command(cmd[0]):
            return Admission(MAX_SMALL_BODY, spool=False)
        denied = v1_denial(ctx, request, served.name, user, command_permission(cmd[0]))
        if cmd[0] == b"unbundle":
            return Admission(ctx.settings.max_push_bytes, denied, push=denied is None)
        return Admission(_post_args_bound(request), denied, spool=False)


#: Largest body of a request that carries no payload: ``X-HgArgs-Post`` arguments
#: (hg sends a few KB; a big discovery some hundreds), or anything sent to a web page.
MAX_SMALL_BODY = 1024 * 1024


def _post_args_bound(request: IRequest) -> int:
    """The body a v1 command other than ``unbundle`` may send: its ``X-HgArgs-Post``
    arguments, at most ``MAX_SMALL_BODY``; nothing without the header. A malformed
    header is let through (up to the bound) to get its precise 400 from the command."""
    raw = request.getHeader(b"X-HgArgs-Post")
    if raw is None:
        return 0
    text = raw.strip()
    if not text.isdigit() or len(text) > 12:
        return MAX_SMALL_BODY
    return min(int(text), MAX_SMALL_BODY)


#: The refusals of a path naming no repository the client may read (``_not_found``).
NOT_FOUND_ANONYMOUS = HTTPDenied(401, "authorization required", ask_login=True)
NOT_FOUND = HTTPDenied(404, "no such repository")


def _known_user(request: IRequest) -> tuple[bool, str | None]:
    """(known, user): the user the site authenticated (``HgRequest.hg_login``), or
    anonymous for a request without credentials; unknown otherwise."""
    login = getattr(request, "hg_login", None)
    if login is not None:
        return True, login[0]
    if not request.getHeader(b"authorization"):
        return True, None
    return False, None


def visible_match(
    ctx: ServerContext, request: IRequest, *, user: str | bool | None = False
) -> tuple[ServedRepository, list[str]]:
    """``registry.match`` of the request's path, with the repositories this client may
    not read left out: a private repository is matched exactly as if it did not exist.

    ``user`` is the client (default: as ``_known_user`` finds it; when it cannot tell,
    nothing is left out and the command's own access check answers).
    """
    segments = _path_segments(request)
    served, rest = ctx.registry.match(segments)
    if user is False:
        known, who = _known_user(request)
        if not known:
            return served, rest
    else:
        who = user if isinstance(user, str) else None
    access = ctx.access
    while not access.authorize(who, served.name).read:
        depth = len(segments) - len(rest)
        try:
            if depth == 0:
                raise UnknownRepository("")
            served, shorter = ctx.registry.match(segments[: depth - 1])
        except UnknownRepository:
            raise UnknownRepository(f"no repository at {'/'.join(segments)!r}") from None
        rest = shorter + segments[depth - 1 :]
    return served, rest


def v1_denial(
    ctx: ServerContext,
    request: IRequest,
    repo_name: str,
    user: str | None,
    perm: bytes,
    grant: Grant | None = None,
) -> HTTPDenied | None:
    """The refusal for ``perm`` (pull/push) on ``repo_name`` for this user and request,
    or None: hgweb's order, read, then POST (405), then TLS and write. ``grant`` is the
    user's (default: asked of ``ctx.access`` now)."""
    if grant is None:
        grant = ctx.access.authorize(user, repo_name)
    denied = refusal(ctx, request, repo_name, user, grant, write=False)
    if denied is None and perm == b"push":
        if request.method != b"POST":
            return HTTPDenied(405, "push requires POST request")
        denied = refusal(ctx, request, repo_name, user, grant, write=True)
    return denied


class _V1Request:
    """One v1 command over HTTP, from checks to the finished response."""

    def __init__(
        self,
        ctx: ServerContext,
        request: IRequest,
        served: ServedRepository,
        rest: list[str],
        name: bytes,
        query: dict[bytes, list[bytes]],
    ) -> None:
        self.ctx = ctx
        self.request = request
        self.served = served
        self.rest = rest
        self.name = name
        self.query = query
        self.started_at = time.monotonic()
        self.user: str | None = None
        self.payload_file: IO[bytes] | None = None
        self.payload_offset = 0
        self.args: dict[bytes, ArgValue] = {}
        self.caps = ProtoCaps()
        #: The refusal of each permission (None: granted), decided once authenticated.
        self.denials: dict[bytes, HTTPDenied | None] = {}
        self.call: V1Call | None = None
        self.v1_caps = b""

    # -- checks -------------------------------------------------------------------------

    def render(self) -> bytes | int:
        request, name = self.request, self.name
        if self.rest:
            if is_command(name):
                request.setResponseCode(404)
                request.setHeader(b"Content-Type", MEDIA_TYPE_V01)
                return b"0\nNot Found\n"
            return plain(request, 404, "Not Found\n")
        if not is_command(name):
            self._bad_input("no such command")
            return plain(request, 400, f"no such method: {name.decode('utf-8', 'replace')}\n")
        refusal = getattr(request, "hg_refusal", None)
        if refusal is not None:
            # Refused from its headers (HgRequest): the body was dropped, not read.
            self._refused(Failure(refusal))
            return NOT_DONE_YET
        content = getattr(request, "content", None)
        try:
            self.args = self._decode_args(content)
        except RemoteProtocolError as e:
            self._bad_input(str(e))
            return plain(request, 400, f"bad request: {e}\n")
        except CommandError as e:
            self._bad_input(e.render())
            return self._oob(e.render().encode("utf-8") + b"\n")

        d = authenticate(self.ctx, request)
        d.addCallback(self._authenticated)
        d.addErrback(self._refused)
        d.addErrback(self._internal_error)
        return NOT_DONE_YET

    def _decode_args(self, content: IO[bytes] | None) -> dict[bytes, ArgValue]:
        request = self.request
        header_args = join_header_values(request.getHeader, b"X-HgArg")
        post_args: bytes | None = None
        post_len_header = request.getHeader(b"X-HgArgs-Post")
        if post_len_header is not None:
            text = post_len_header.strip()
            if not text.isdigit() or len(text) > 12:
                raise RemoteProtocolError(f"bad X-HgArgs-Post header: {text[:20]!r}")
            post_len = int(text)
            size = _body_size(content)
            if post_len > size:
                raise RemoteProtocolError("X-HgArgs-Post is longer than the request body")
            if post_len and content is not None:
                content.seek(0)
                post_args = content.read(post_len)
                self.payload_offset = post_len
        known = decode_http_args(query=self.query, header_args=header_args, post_args=post_args)
        self.payload_file = content
        return select_command_args(command_spec(self.name), known)

    def _authenticated(self, user: str | None) -> Deferred[None] | None:
        self.user = user
        policy = self.ctx.access.authorize(user, self.served.name)
        self.denials = {
            perm: v1_denial(self.ctx, self.request, self.served.name, user, perm, policy)
            for perm in (b"pull", b"push")
        }
        denied = self.denials[command_permission(self.name)]
        if denied is not None:
            raise denied
        # The call's grant: the policy's, narrowed by HTTP's own rules (POST, TLS).
        refusals = [d.message for d in self.denials.values() if d is not None]
        grant = Grant(
            read=self.denials[b"pull"] is None,
            write=self.denials[b"push"] is None,
            reason="; ".join(refusals),
        )
        request = self.request
        secure = bool(request.isSecure())
        settings = self.ctx.settings
        protocaps_raw = join_header_values(request.getHeader, b"X-HgProto")
        self.caps = parse_protocaps(protocaps_raw)
        config: list[tuple[bytes, bytes, bytes]] = []
        if not settings.stream_clone:
            config.append((b"server", b"uncompressed", b"false"))
        client_address = request.getClientAddress()
        payload = None
        if self.payload_file is not None:
            payload = SpooledPayload(fileobj=self.payload_file, offset=self.payload_offset)
        facts = ProtocolFacts(
            transport="https" if secure else "http",
            grant=grant,
            payload=payload,
            protocaps=protocaps_raw,
            remote_host=str(getattr(client_address, "host", "")),
            remote_user=user,
            capabilities=tuple(
                http_capabilities(
                    engines=settings.v1_compression,
                    header_max=settings.http_header_max,
                    post_args=settings.http_post_args,
                    min_recv=settings.v1_min_recv,
                    min_send=settings.v1_min_send,
                )
            ),
            server_config=tuple(config),
            clonebundles=source_for(
                self.ctx, self.served, host=request.getHeader(b"host"), secure=secure
            ),
        )
        self.call = V1Call(
            served=self.served,
            name=self.name,
            args=self.args,
            facts=facts,
            formats=StreamFormats(compressed=self._choose(False), uncompressed=self._choose(True)),
            salt=server_salt(),
        )
        if self.name == b"capabilities" and http_v2.is_upgrade_request(self.ctx, request):
            return self._upgrade()
        self._start()
        return None

    def denial(self, refused: PermissionDenied) -> HTTPDenied:
        """The answer to a permission the worker found refused (inside ``batch``)."""
        return self.denials.get(refused.permission) or HTTPDenied(403, "unknown permission")

    def _refused(self, f: Failure) -> None:
        f.trap(HTTPDenied)
        denied: HTTPDenied = f.value  # type: ignore[assignment]
        if is_gone(self.request):
            return
        if denied.status == 405:
            self.request.setHeader(b"Allow", b"POST")
        body = b"0\n%s\n" % denied.message.encode("utf-8")
        if command_permission(self.name) == b"push":
            log.warn(
                "push to {repo} refused for {user} over HTTP: {status} {why}",
                repo=self.served.name or "/",
                user=self.user or "anonymous",
                status=denied.status,
                why=denied.message,
            )
        self._log(denied.status, b"-", "-")
        finish(self.request, deny(self.ctx, self.request, denied, body))

    def _internal_error(self, f: Failure) -> None:
        """Log ``f`` once and tell the client in Mercurial's error form (an out-of-band
        error, which hg prints as ``abort: remote error``), never a bare 500; a response
        already under way is cut instead, so it cannot look complete."""
        message, hint = describe_failure(f.value)
        if f.check(RepositoryLocked):
            log.warn(
                "v1 {repo} {cmd} refused: {error}",
                repo=self.served.name or "/",
                cmd=self.name.decode("utf-8", "replace"),
                error=f.value,
            )
        else:
            log.failure(
                "v1 HTTP command {cmd!r} failed: {message}",
                f,
                cmd=self.name,
                message=message.decode("utf-8", "replace"),
            )
        request = self.request
        if is_gone(request):
            return
        if not getattr(request, "startedWriting", False):
            body = message + b"\n" + (b"(%s)\n" % hint if hint else b"")
            finish(request, self._oob(body))
        else:
            _abort(request)

    def _oob(self, message: bytes) -> bytes:
        request = self.request
        request.setResponseCode(200, OK_REASON)
        request.setHeader(b"Content-Type", MEDIA_TYPE_ERROR)
        request.setHeader(b"Content-Length", b"%d" % len(message))
        self._log(200, MEDIA_TYPE_ERROR, "-")
        return message

    def _bad_input(self, error: str | bytes) -> None:
        """One info line for an answer to bad client input, naming the command and what
        was wrong (the error names the argument). Never louder: any anonymous client can
        send bad input, and must not be able to fill the log with critical lines."""
        if isinstance(error, bytes):
            error = error.decode("utf-8", "replace")
        log.info(
            "v1 {repo} {cmd} from {host}: bad input: {error}",
            repo=self.served.name or "/",
            cmd=self.name.decode("utf-8", "replace")[:100],
            host=getattr(self.request.getClientAddress(), "host", "-"),
            error=one_line(error),
        )

    def _log(self, status: int, media_type: bytes, engine: str) -> None:
        # Details of the command; the request's access line is HgSite.log.
        log.debug(
            "v1 {repo} {cmd} {status} {media} {engine} {secs:.3f}s",
            repo=self.served.name or "/",
            cmd=self.name.decode("utf-8", "replace"),
            status=status,
            media=media_type.decode("latin-1"),
            engine=engine,
            secs=time.monotonic() - self.started_at,
        )

    # -- the capabilities upgrade --------------------------------------------------------

    def _upgrade(self) -> Deferred[None]:
        d: Deferred[Any] = self.ctx.pool.run(self.served, V1Runner().result, self.call)

        def got_capabilities(result: object) -> Any:
            assert isinstance(result, V1Bytes)
            self.v1_caps = result.data
            return maybeDeferred(
                http_v2.upgrade_response, self.ctx, self.request, self.served, result.data
            )

        def answer(body: bytes | None) -> None:
            if body is None:
                # not accepted after all: the plain v1 answer
                self._write_result(V1Bytes(data=self.v1_caps))
                self.request.finish()
                return
            if is_gone(self.request):
                return
            self.request.setResponseCode(200)
            self.request.setHeader(b"Content-Length", b"%d" % len(body))
            self._log(200, b"application/mercurial-cbor", "-")
            finish(self.request, body)

        d.addCallback(got_capabilities)
        d.addCallback(answer)
        return d

    # -- running the command ---------------------------------------------------------------

    def _choose(self, prefer_uncompressed: bool) -> FormatChoice:
        """The format of a stream answer for this client, or the out-of-band error
        refusing a client that reads no media type the server sends (``min_send``)."""
        settings = self.ctx.settings
        try:
            return choose_response_format(
                self.caps,
                settings.v1_compression,
                prefer_uncompressed=prefer_uncompressed,
                levels={"zstd": settings.zstd_level, "zlib": settings.zlib_level},
                min_send=settings.v1_min_send,
            )
        except CommandError as e:
            return V1OutOfBandError(message=e.render().encode("utf-8") + b"\n")

    def _start(self) -> None:
        assert self.call is not None
        response = _V1Response(self)
        response.attach(start_call(self.ctx, self.call, response.deliver))

    def _write_result(self, result: object) -> None:
        """Write a whole (non-stream) result with its headers."""
        request = self.request
        media_type = MEDIA_TYPE_V01
        if isinstance(result, V1Bytes):
            body = result.data
        elif isinstance(result, V1PushResult):
            body = b"%d\n%s" % (result.result, result.output)
        elif isinstance(result, V1PushError):
            body = b"0\n%s\n" % result.message
        elif isinstance(result, V1OutOfBandError):
            body = result.message
            media_type = MEDIA_TYPE_ERROR
            if not body.startswith(LOGGED_FAILURES):
                self._bad_input(body)
        else:
            raise TypeError(f"unexpected v1 result {type(result).__name__}")
        request.setResponseCode(200, OK_REASON)
        request.setHeader(b"Content-Type", media_type)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        self._log(200, media_type, "-")
        request.write(body)


def _abort(request: IRequest) -> None:
    """Cut the connection: a response that failed half-way must not look complete."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


@implementer(IPushProducer)
class _V1Response:
    """Writes a v1 result as the worker produces it, paused while the client is not reading."""

    def __init__(self, v1request: _V1Request) -> None:
        self.v1 = v1request
        self.request = v1request.request
        self.streaming = False
        self.gate = PauseGate()
        self.gone = False
        self.iteration: Deferred[None] | None = None
        self.request.notifyFinish().addErrback(self._client_gone)

    def attach(self, iteration: Deferred[None]) -> None:
        self.iteration = iteration
        iteration.addCallbacks(self._done, self._failed)
        iteration.addErrback(self.v1._internal_error)

    # IPushProducer
    def pauseProducing(self) -> None:
        self.gate.pause()

    def resumeProducing(self) -> None:
        self.gate.resume()

    def stopProducing(self) -> None:
        self._client_gone(None)

    def _client_gone(self, _: object) -> None:
        if self.gone:
            return
        self.gone = True
        # Cancelling the iteration also cancels the delivery the worker waits for; the
        # pool then closes the generator on the worker and frees it.
        if self.iteration is not None and not self.iteration.called:
            self.iteration.cancel()

    # called on the reactor thread with each batch from the worker
    def deliver(self, batch: list[object]) -> Deferred[None] | None:
        if self.gone:
            raise ConnectionAbortedError("client went away")
        request = self.request
        for item in batch:
            if isinstance(item, bytes):
                request.write(item)
            elif isinstance(item, V1StreamStart):
                request.setResponseCode(200, OK_REASON)
                request.setHeader(b"Content-Type", item.media_type)
                self.v1._log(200, item.media_type, item.engine)
                request.registerProducer(self, True)
                self.streaming = True
                # HTTPChannel does not pause a producer registered while the transport
                # is already full (e.g. after an earlier response on this connection).
                channel = getattr(request, "channel", None)
                if getattr(channel, "_waitingForTransport", False):
                    self.pauseProducing()
            else:
                self.v1._write_result(item)
        return None if self.gone else self.gate.wait()

    def _done(self, _: object) -> None:
        if self.streaming and not self.gone:
            self.request.unregisterProducer()
        self._close_payload()
        if not is_gone(self.request):
            self.request.finish()

    def _failed(self, f: Failure) -> None:
        if self.streaming and not self.gone:
            self.request.unregisterProducer()
        self._close_payload()
        if self.gone or f.check(CancelledError, ConnectionAbortedError):
            return None
        if isinstance(f.value, StreamStalled):  # the client stopped reading (logged by start_call)
            return _abort(self.request)
        if f.check(PermissionDenied) and not getattr(self.request, "startedWriting", False):
            self.v1._refused(Failure(self.v1.denial(f.value)))  # type: ignore[arg-type]
            return None
        return self.v1._internal_error(f)

    def _close_payload(self) -> None:
        # The worker is done with the spooled body; twisted.web closes it as well, but
        # only once the response finishes.
        self.v1.payload_file = None
