"""The HTTP listener's request phase: connections, deadlines and bodies, before rendering.

``twisted.web`` reads a request's whole body (spooled to a temporary file past 100 KB)
before any resource sees the request, resets its idle timer on every byte, and accepts
any number of connections. ``HgSite`` puts bounds on all of it, like the raw TCP
listener's (``HTTPLimits``, ``hgwire serve --http-*``):

* **Connections**: at most ``max_connections`` at once and ``max_per_address`` from one
  client address; a connection over a cap gets ``503`` and is closed, so clients from
  other addresses keep being served. At most ``MAX_REFUSED_LINGERING`` refused
  connections linger (below) at once; beyond that a refused connection is closed right
  after its answer, so a flood at the cap cannot hold more file descriptors than the
  caps and that bound.
* **Deadline**: a request (line, headers, body) must arrive within ``request_timeout``
  seconds of the moment the connection started waiting for it (accepted, or the
  previous response finished). Every ``body_rate`` bytes of body received extend the
  deadline by one second, so a large push arriving at a reasonable rate is never cut
  while a client trickling bytes is (``408``); bytes alone never reset it. A connection
  on which nothing of a next request arrived is just closed (an unasked ``408`` would
  be taken for the answer to the next request a kept-alive client sends).
* **Bodies**: the headers are checked *before* the body is read. ``HgRequest.gotLength``
  authenticates (``httpauth.authenticate``, its result kept for rendering) and asks
  the resource for an ``Admission`` (``HgResource.admit``): how large the body may be
  (``max_push_bytes`` for a push, ``max_body`` for v2 frames, a small bound kept in
  memory for anything else) and whether the request is refused anyway. A refused
  request gets its refusal: at once when its body is over ``DRAIN_MAX`` (or of unknown
  length), else once the body was read and dropped (never stored), so hg's "401, then
  again with credentials" push still works. A declared ``Content-Length`` over the
  bound is answered ``413`` at once. Only an admitted body is kept, in memory up to
  ``SPOOL_THRESHOLD`` and in a temporary file beyond (where its admission allows),
  at most ``max_spools`` such files at once (``503`` beyond), of which bodies other
  than writers' pushes may hold half. While the (slow, threaded) password check runs,
  the socket is not read.
* A header line longer than ``MAX_LINE`` (e.g. 1 MB of credentials) gets ``400``
  instead of a silently dropped connection.

Answers given before a request is complete (``400``, ``408``, ``413``, ``503``) are
written straight to the transport with ``Connection: close``; the connection then
keeps reading and dropping input for ``LINGER`` seconds so that the client, still
sending, reads the answer instead of a connection reset.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from hgwire_tw.context import MiB, ServerContext
from hgwire_tw.transports.httpauth import HTTPDenied, authenticate
from hgwire_tw.transports.httpreplies import finish, internal_error

__all__ = [
    "DRAIN_MAX",
    "LINGER",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_LINE",
    "MAX_REFUSED_LINGERING",
    "SPOOL_THRESHOLD",
    "Admission",
    "HTTPLimits",
    "HgChannel",
    "HgRequest",
    "HgSite",
]

log = Logger()

#: Largest request header block (request line + headers) a channel accepts: long
#: ``X-HgArg-N`` series of a big discovery need more than twisted's 16 KiB.
MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_HEADERS = 8192
#: Longest single header line (twisted's LineReceiver limit).
MAX_LINE = 16384
#: Bodies up to this size stay in memory; larger ones go to a temporary file.
SPOOL_THRESHOLD = 100_000
#: Most body bytes held in memory while a request's password is being checked.
MAX_HELD = 1024 * 1024
#: Seconds an early answer's connection keeps reading (and dropping) input.
LINGER = 2.0
#: Refused connections (over a connection cap) lingering at once; more are closed
#: right after their 503.
MAX_REFUSED_LINGERING = 64
#: Largest body of a refused request that is read and dropped before the refusal, so
#: that a client sending it (hg retrying a push with credentials) reads the answer; a
#: larger one is refused at once (then ``LINGER``).
DRAIN_MAX = 1024 * 1024


@dataclass(frozen=True)
class HTTPLimits:
    """Per-service limits of the HTTP listeners (see the module docs)."""

    max_connections: int = 512
    max_per_address: int = 32
    request_timeout: float = 30.0
    body_rate: int = 16 * 1024
    max_body: int = 16 * MiB
    max_spools: int = 16
    #: Failed logins per client address within ``login_window`` before it is refused
    #: (``httpauth.LoginGuard``).
    login_failures: int = 10
    login_window: float = 60.0


@dataclass(frozen=True)
class Admission:
    """What a request may send, decided from its headers: the body bound, and the
    refusal it will get (its body is then dropped, not stored)."""

    body_limit: int
    refusal: HTTPDenied | None = None
    #: A push by a user who may push: it may take any free spool file; other bodies
    #: share at most half of them, so anonymous clients cannot take them all.
    push: bool = False
    #: Whether a large body may go to a spool file; if not, it stays in memory (its
    #: ``body_limit`` is small).
    spool: bool = True


def _response(status: int, reason: bytes, body: bytes, headers: dict[bytes, bytes]) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    fields = {
        b"Content-Type": b"text/plain; charset=utf-8",
        b"Content-Length": b"%d" % len(body),
        b"Connection": b"close",
        **headers,
    }
    lines += [name + b": " + value for name, value in fields.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class HgChannel(HTTPChannel):
    """An ``HTTPChannel`` with the request deadline, early answers and roomy headers."""

    totalHeadersSize = MAX_HEADER_BYTES
    maxHeaders = MAX_HEADERS
    MAX_LENGTH = MAX_LINE

    site: HgSite
    host = ""
    _deadline: IDelayedCall | None = None
    _waiting_since = 0.0
    _body_bytes = 0
    #: Whether a byte of the awaited request arrived (else the deadline just closes).
    _started = False
    _lingering = False
    _linger: IDelayedCall | None = None

    # -- the deadline ------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()

    def _now(self) -> float:
        return float(self.site.reactor.seconds())

    def _arm(self) -> None:
        """Start the deadline of the next request (the connection waits for one)."""
        self._disarm()
        self._waiting_since = self._now()
        self._body_bytes = 0
        self._started = False
        self._deadline = self.callLater(self.site.limits.request_timeout, self._check_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _check_deadline(self) -> None:
        self._deadline = None
        limits = self.site.limits
        allowed = self._waiting_since + limits.request_timeout + self._body_bytes / limits.body_rate
        now = self._now()
        if now < allowed:
            self._deadline = self.callLater(allowed - now, self._check_deadline)
            return
        if not self._started:
            # An idle kept-alive connection: close it silently (an unasked 408 would be
            # read as the answer to the next request a client sends on it).
            if self.transport is not None:
                self.transport.loseConnection()
            return
        log.info(
            "HTTP request from {host} not complete after {secs:.0f}s: closing",
            host=self.host,
            secs=now - self._waiting_since,
        )
        self.answer_early(408, b"Request Timeout", b"request not received in time\n")

    def rawDataReceived(self, data: bytes) -> None:
        if not self._handlingRequest:
            self._body_bytes += len(data)
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        # The request is complete: producing the response is not bounded by this.
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        # Armed first: requestDone may go straight on to a pipelined request (which
        # disarms it once complete).
        if self.persistent:
            self._arm()
        super().requestDone(request)

    # -- early answers -------------------------------------------------------------------

    def answer_early(
        self,
        status: int,
        reason: bytes,
        body: bytes,
        headers: dict[bytes, bytes] | None = None,
    ) -> None:
        """Answer before the request is complete, then close: input is read and dropped
        for ``LINGER`` seconds so a client still sending sees the answer."""
        if self._lingering or self.transport is None:
            return
        self._lingering = True
        self._disarm()
        self.persistent = False
        self.transport.write(_response(status, reason, body, headers or {}))
        self._linger = self.callLater(LINGER, self._linger_over)

    def _linger_over(self) -> None:
        self._linger = None
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._lingering:
            return
        self._started = True
        super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.answer_early(
            400, b"Bad Request", b"request line or header longer than %d bytes\n" % MAX_LINE
        )

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._disarm()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self.site.forget(self.host)
        super().connectionLost(reason)


class _Discard(io.BytesIO):
    """A request body sink that drops everything (the request is refused)."""

    def write(self, data: Any) -> int:
        return len(data)


class HgRequest(Request):
    """A ``Request`` whose headers are judged before its body is read (module docs).

    Set before rendering: ``hg_login`` (the authentication outcome: the user, or the
    ``HTTPDenied`` of bad credentials), and ``hg_refusal`` (the ``HTTPDenied`` this
    request is known to get; its body was dropped).
    """

    # hg never sends HTML forms: do not parse (up to max_body bytes of) form bodies.
    _parsePOSTFormSubmission = False

    hg_login: tuple[str | None, HTTPDenied | None] | None = None
    hg_refusal: HTTPDenied | None = None
    _deciding = False
    _process_pending = False
    _limit: int | None = None
    _declared: int | None = None
    _received = 0
    _discarding = False
    _spooled = False
    _push = False
    _may_spool = True

    _logged = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started_at = time.monotonic()

    def connectionLost(self, reason: Failure) -> None:
        # A request whose client went away is logged too (once), marked "gone".
        if not self.finished and not self._logged:
            self._logged = True
            log.info("{line}", line=access_line(self, gone=True))
        super().connectionLost(reason)

    def _site(self) -> HgSite | None:
        site = getattr(getattr(self, "channel", None), "site", None)
        return site if isinstance(site, HgSite) else None

    def gotLength(self, length: int | None) -> None:
        site = self._site()
        if site is None or site.admit is None:
            super().gotLength(length)
            return
        channel = self.channel
        # requestReceived sets these once the body is in; admission needs them now.
        self.method, self.uri, self.clientproto = channel._command, channel._path, channel._version
        self.path = self.uri.split(b"?", 1)[0]
        self.content = io.BytesIO()
        self._declared = length
        self._deciding = True
        decided = authenticate(site.ctx, self)
        decided.addBoth(self._authenticated, site)
        decided.addErrback(self._failed)
        if self._deciding and channel.transport is not None:
            channel.transport.pauseProducing()  # a password check is running

    def _authenticated(self, result: object, site: HgSite) -> None:
        if isinstance(result, Failure):
            result.trap(HTTPDenied)
            denied: HTTPDenied = result.value  # type: ignore[assignment]
            self.hg_login = (None, denied)
        else:
            self.hg_login = (result if isinstance(result, str) else None, None)
        user, bad_login = self.hg_login
        assert site.admit is not None
        admission = site.admit(self, user)
        self._admitted(site, admission, bad_login or admission.refusal)

    def _admitted(self, site: HgSite, admission: Admission, refusal: HTTPDenied | None) -> None:
        was_deciding, self._deciding = self._deciding, False
        channel = self.channel
        if self._disconnected:
            return  # the client left while its password was checked
        if was_deciding and channel.transport is not None:
            channel.transport.resumeProducing()
        self._limit = admission.body_limit
        self._push = admission.push
        self._may_spool = admission.spool
        self.hg_refusal = refusal
        declared = self._declared
        expects = (self.requestHeaders.getRawHeaders(b"expect") or [b""])[0].lower()
        if refusal is not None:
            # The refusal first (hg asks for a login on a 401, whatever the size).
            if expects == b"100-continue" or declared is None or declared > DRAIN_MAX:
                # Nothing to wait for: the client waits for our answer, the body has no
                # announced end, or reading it would cost more than a refusal is worth.
                self._answer_early(refusal)
                return
        elif declared is not None and declared > admission.body_limit:
            self._too_large()
            return
        held = self.content.getvalue()  # what arrived while deciding (in memory)
        self._received = 0
        self.content = io.BytesIO()
        if refusal is not None:
            self._discarding = True
            self.content = _Discard()
        elif (
            declared is not None
            and declared > SPOOL_THRESHOLD
            and admission.spool
            and not self._to_file(site)
        ):
            return
        if held:
            self.handleContentChunk(held)
        if self._process_pending and not channel._lingering:
            self._process_pending = False
            self.content.seek(0)
            super().process()

    def _failed(self, f: Failure) -> None:
        log.failure("admitting an HTTP request failed", f)
        transport = getattr(self.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _to_file(self, site: HgSite) -> bool:
        """Move the body to a spool file; answers 503 and returns False if none is free."""
        push = self._push
        spool = site.spool_file(push=push)
        if spool is None:
            log.info("HTTP body refused: {n} bodies are being spooled", n=site.spools)
            self.channel.answer_early(
                503,
                b"Service Unavailable",
                b"server busy: too many uploads at once, try again later\n",
                {b"Retry-After": b"10"},
            )
            return False
        self._spooled = True
        self.notifyFinish().addBoth(lambda _: site.spool_released(push=push))
        old, self.content = self.content, spool
        if isinstance(old, io.BytesIO):
            spool.write(old.getvalue())
        return True

    def _too_large(self) -> None:
        limit = self._limit
        log.info("HTTP body over {limit} bytes refused", limit=limit)
        self.channel.answer_early(
            413,
            b"Request Entity Too Large",
            b"request body too large: this server accepts at most %d bytes here\n" % (limit or 0),
        )

    def _answer_early(self, denied: HTTPDenied) -> None:
        headers = {}
        if denied.ask_login:
            realm = self.channel.site.ctx.settings.realm.replace('"', "")
            headers[b"WWW-Authenticate"] = f'Basic realm="{realm}"'.encode()
        reason = denied.message.encode("latin-1", "replace")
        self.channel.answer_early(denied.status, reason, b"0\n" + reason + b"\n", headers)

    def handleContentChunk(self, data: bytes) -> None:
        if getattr(self.channel, "_lingering", False):
            return  # answered early: input is dropped
        if self._limit is None and not self._deciding:
            super().handleContentChunk(data)  # not admitted by us (no HgSite)
            return
        self._received += len(data)
        if self._deciding:
            if self._received > MAX_HELD:
                self._failed(Failure(ValueError("body arrived while paused")))
                return
            self.content.write(data)
            return
        if self._discarding:
            return  # at most DRAIN_MAX bytes: the declared length (_admitted)
        if self._limit is not None and self._received > self._limit:
            self._too_large()
            return
        if not self._spooled and self._may_spool and self._received > SPOOL_THRESHOLD:
            site = self._site()
            if site is None or not self._to_file(site):
                return
        self.content.write(data)

    def processingFailed(self, reason: Failure) -> Failure:
        """A bug outside the resource's own guard (``HgResource.render``): the same
        incident answer (``httpreplies.internal_error``), never twisted.web's page."""
        judge = getattr(getattr(self._site(), "resource", None), "wants_hg_error", None)
        try:
            hg_error = bool(judge(self)) if judge is not None else False
        except Exception:
            hg_error = False
        path = self.path.decode("latin-1")[:200]
        what = f"HTTP {self.method.decode('latin-1')} {path}"
        body = internal_error(self, reason, what, hg_error=hg_error)
        if body is not None:
            finish(self, body)
        return reason

    def process(self) -> None:
        if getattr(self.channel, "_lingering", False):
            # Answered early (413, 503, a refusal): the rest of the request, which may
            # have come in the same read, is never run.
            return
        if self._deciding:
            self._process_pending = True  # once admitted
            return
        super().process()


def _channel_protocol(site: HgSite) -> Any:
    # twisted.web's factory wraps each HTTPChannel in its protocol-negotiation proxy.
    return _GenericHTTPChannelProtocol(HgChannel())


class _Refusal(Protocol):
    """Answers ``503`` to a connection over a cap, then closes: after a short linger,
    dropping input, so that the client reads the answer rather than a reset — unless
    ``MAX_REFUSED_LINGERING`` refused connections linger already, then at once."""

    def __init__(self, message: bytes, site: HgSite) -> None:
        self.message = message
        self.site = site
        self.linger: IDelayedCall | None = None
        self.lingering = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            _response(503, b"Service Unavailable", self.message, {b"Retry-After": b"10"})
        )
        if self.site.refused_lingering >= MAX_REFUSED_LINGERING:
            self.transport.loseConnection()  # the answer is written first
            return
        self.lingering = True
        self.site.refused_lingering += 1
        self.linger = self.site.reactor.callLater(LINGER, self.transport.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        if self.linger is not None and self.linger.active():
            self.linger.cancel()
        if self.lingering:
            self.lingering = False
            self.site.refused_lingering -= 1


class HgSite(Site):
    """The HTTP site of hgwire_tw: ``HgChannel`` s and ``HgRequest`` s within ``limits``.

    ``admit(request, user) -> Admission`` (the resource's ``admit``) decides what a
    request may send once its headers are in.
    """

    requestFactory = HgRequest
    protocol = _channel_protocol

    def __init__(
        self,
        resource: Resource,
        ctx: ServerContext,
        *,
        limits: HTTPLimits | None = None,
        reactor: Any = None,
    ) -> None:
        super().__init__(resource, reactor=reactor if reactor is not None else ctx.reactor)
        self.ctx = ctx
        self.limits = limits or ctx.settings.http_limits or HTTPLimits()
        self.displayTracebacks = False
        admit = getattr(resource, "admit", None)
        self.admit: Callable[[IRequest, str | None], Admission] | None = admit
        self.per_address: dict[str, int] = {}
        self.connections = 0
        #: Refused connections lingering now (``_Refusal``).
        self.refused_lingering = 0
        self.spools = 0
        #: Spool files held by bodies other than writers' pushes.
        self.other_spools = 0

    def log(self, request: Request) -> None:
        """One access line per request (instead of twisted.web's combined log line)."""
        if getattr(request, "_logged", False):
            return
        request._logged = True  # type: ignore[attr-defined]
        log.info("{line}", line=access_line(request))

    def buildProtocol(self, addr: Any) -> Any:
        host = str(getattr(addr, "host", addr))
        if self.connections >= self.limits.max_connections:
            log.info("HTTP connection from {host} refused: too many connections", host=host)
            return _Refusal(b"too many connections\n", self)
        if self.per_address.get(host, 0) >= self.limits.max_per_address:
            log.info("HTTP connection from {host} refused: too many from it", host=host)
            return _Refusal(b"too many connections from your address\n", self)
        self.connections += 1
        self.per_address[host] = self.per_address.get(host, 0) + 1
        protocol = super().buildProtocol(addr)
        protocol._channel.host = host
        return protocol

    def forget(self, host: str) -> None:
        """A connection from ``host`` ended."""
        self.connections -= 1
        left = self.per_address.get(host, 1) - 1
        if left > 0:
            self.per_address[host] = left
        else:
            self.per_address.pop(host, None)

    def spool_file(self, *, push: bool) -> IO[bytes] | None:
        """A temporary file for a body, or None when ``max_spools`` are in use (or, for
        anything but a writer's push, half of them are held by such bodies)."""
        limit = self.limits.max_spools
        if self.spools >= limit or (not push and self.other_spools >= max(1, limit // 2)):
            return None
        self.spools += 1
        self.other_spools += not push
        return tempfile.TemporaryFile()

    def spool_released(self, *, push: bool) -> None:
        """A request holding a spool file is over."""
        self.spools -= 1
        self.other_spools -= not push


#: Longest URI written in an access line (v1 queries can carry long argument lists).
MAX_LOGGED_URI = 300


def access_line(request: Request, *, gone: bool = False) -> str:
    """``ADDRESS USER "METHOD URI PROTO" STATUS BYTES SECONDSs "AGENT"`` for one request;
    USER is the authenticated user (``httpauth``) or ``-``; a request whose client went
    away before the response ended shows ``gone`` after its status."""
    address = getattr(request.getClientAddress(), "host", "-")
    user = getattr(request, "hgwire_user", None) or "-"
    uri = request.uri.decode("latin-1")
    if len(uri) > MAX_LOGGED_URI:
        uri = uri[:MAX_LOGGED_URI] + "..."
    method = request.method.decode("latin-1")
    proto = request.clientproto.decode("latin-1")
    agent = (request.getHeader(b"user-agent") or b"-").decode("latin-1")[:200]
    started = getattr(request, "started_at", None)
    seconds = time.monotonic() - started if started is not None else 0.0
    code = f"{request.code} gone" if gone else str(request.code)
    return (
        f'{address} {user} "{method} {uri} {proto}" {code} {request.sentLength} '
        f'{seconds:.3f}s "{agent}"'
    )
