"""The v2 peer over HTTP: capabilities upgrade, then frames POSTed to the v2 API.

``capabilities()`` sends ``GET <repo>/?cmd=capabilities`` with the upgrade headers and
reads the CBOR answer (wire-protocol §3.1). Each :meth:`HTTPPeer.call` is one POST to
``<api>/ro/<command>`` (one command) or ``<api>/ro/multirequest`` (several), whose body
holds the frames of a fresh :class:`ClientFrameReactor`; the response body is fed to
that reactor as it arrives and each command's objects go to its sink at once.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from OpenSSL.SSL import Error as SSLError
from service_identity import VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseDone,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from hgwire_tw.client.credentials import HTTPLogin, strip_userinfo
from hgwire_tw.client.decoding import OffThreadDecoder
from hgwire_tw.client.peer import Command, CommandFailed, ConnectionFailed
from hgwire_tw.core import cbor
from hgwire_tw.core.errors import ProtocolError
from hgwire_tw.core.frames import FRAMING_MEDIA_TYPE, HTTP_V2_API
from hgwire_tw.core.reactor import (
    ClientEvent,
    ClientFrameReactor,
    ProtocolFailure,
    ResponseError,
    ResponseFinished,
    ResponseObjects,
    ResponseRedirect,
)

__all__ = ["FrameChannel", "HTTPPeer"]

USER_AGENT = b"hgwire_tw client"
MAX_CAPABILITIES_BODY = 4 * 1024 * 1024


class _Closed:
    """A decoding step's result: the channel ended (``error`` None: cleanly)."""

    def __init__(self, events: list[ClientEvent], error: Exception | None) -> None:
        self.events = events
        self.error = error


class FrameChannel:
    """Routes a client frame reactor's events to the sinks of its commands.

    Shared by the HTTP and TCP peers: feed it bytes with :meth:`data`, and
    :meth:`closed` when the channel ends. With a ``reactor`` the bytes are decoded on
    its thread pool (:class:`~hgwire_tw.client.decoding.OffThreadDecoder`, which calls
    ``pause(True/False)`` to bound the backlog) and the events still reach the sinks on
    the reactor thread; without one, everything happens in :meth:`data`. Commands added
    while bytes are decoded take :attr:`lock` around the frame reactor.
    """

    def __init__(
        self,
        frame_reactor: ClientFrameReactor,
        *,
        reactor: Any = None,
        pause: Callable[[bool], None] | None = None,
    ) -> None:
        self.frame_reactor = frame_reactor
        self.commands: dict[int, Command] = {}
        self.lock = threading.Lock()
        #: Called with True/False when decoding falls behind / catches up (settable:
        #: the HTTP body reader only exists once the response arrived).
        self.on_pause: Callable[[bool], None] = pause or (lambda _: None)
        self._decoder: OffThreadDecoder | None = None
        if reactor is not None:
            self._decoder = OffThreadDecoder(
                reactor,
                reactor.getThreadPool(),
                self._decode,
                self._delivered,
                lambda on: self.on_pause(on),
            )

    def add(self, request_id: int, command: Command) -> None:
        """Route the responses of ``request_id`` to ``command.sink``."""
        self.commands[request_id] = command

    def data(self, data: bytes) -> None:
        """Bytes from the server."""
        if self._decoder is not None:
            self._decoder.data(data)
        else:
            self._dispatch(self.frame_reactor.receive_data(data))

    def closed(self, error: Exception | None) -> None:
        """The channel ended: cleanly (``None``) or with ``error``; bytes received
        before are decoded first."""
        if self._decoder is not None:
            self._decoder.call(lambda: self._close_step(error))
        else:
            self._delivered(self._close_step(error))

    def _close_step(self, error: Exception | None) -> _Closed:
        if error is not None:
            return _Closed([], error)
        with self.lock:
            return _Closed(self.frame_reactor.end_of_input(), None)

    def _decode(self, data: bytes) -> list[ClientEvent]:
        # A decoding thread (or the reactor thread without one).
        with self.lock:
            return self.frame_reactor.receive_data(data)

    def _delivered(self, result: object) -> None:
        # Reactor thread: a step's events, its exception, or the end of the channel.
        if isinstance(result, _Closed):
            self._dispatch(result.events)
            self.fail_all(result.error or ConnectionFailed("the server closed the connection"))
        elif isinstance(result, Exception):
            self.fail_all(ConnectionFailed(f"cannot decode the server's answer: {result}"))
        else:
            self._dispatch(result)  # type: ignore[arg-type]

    def fail_all(self, error: Exception) -> None:
        """Fail every command still waiting."""
        commands, self.commands = self.commands, {}
        for command in commands.values():
            command.sink.failed(error)

    def _dispatch(self, events: list[ClientEvent]) -> None:
        for event in events:
            if isinstance(event, ProtocolFailure):
                self.fail_all(ConnectionFailed(f"protocol error: {event.message}"))
                continue
            command = self.commands.get(event.request_id)
            if command is None:
                continue
            if isinstance(event, ResponseObjects):
                command.sink.objects(event.objects)
            elif isinstance(event, ResponseFinished):
                del self.commands[event.request_id]
                command.sink.finished()
            elif isinstance(event, ResponseError):
                del self.commands[event.request_id]
                command.sink.failed(CommandFailed(command.name, event.message, event.args))
            elif isinstance(event, ResponseRedirect):
                del self.commands[event.request_id]
                follow = getattr(command.sink, "redirected", None)
                if follow is None:
                    command.sink.failed(
                        ConnectionFailed(f"unexpected content redirect for {command.name!r}")
                    )
                else:
                    follow(event.location)


class _BodyReader(Protocol):
    """Feeds a streamed response body into a :class:`FrameChannel`."""

    def __init__(self, peer: HTTPPeer, channel: FrameChannel) -> None:
        self.peer = peer
        self.channel = channel
        self.decoding_behind = False
        self._transport_paused = False
        channel.on_pause = self._decoding_behind

    def connectionMade(self) -> None:
        self.peer._readers.add(self)
        self.update_pause()

    def _decoding_behind(self, behind: bool) -> None:
        self.decoding_behind = behind
        self.update_pause()

    def update_pause(self) -> None:
        """Read while neither the consumer (the peer) nor decoding is behind."""
        paused = self.peer._paused or self.decoding_behind
        if paused != self._transport_paused and self.transport is not None:
            self._transport_paused = paused
            if paused:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        try:
            self.channel.data(data)
        except ProtocolError as exc:
            self.channel.fail_all(ConnectionFailed(str(exc)))
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self.peer._readers.discard(self)
        if reason.check(ResponseDone):
            self.channel.closed(None)
        else:
            self.channel.closed(ConnectionFailed(f"response broken: {reason.getErrorMessage()}"))


class _QuietPool(HTTPConnectionPool):
    """A connection pool whose connections do not log "Starting factory" each time
    (a mirror connects every few minutes)."""

    class _factory(HTTPConnectionPool._factory):  # type: ignore[name-defined, misc]
        noisy = False


def _tls_policy(cacerts: str | None) -> BrowserLikePolicyForHTTPS:
    """Verify servers against the CA certificates in ``cacerts`` (PEM, any number), or
    the system's when None."""
    if cacerts is None:
        return BrowserLikePolicyForHTTPS()
    try:
        pem = Path(cacerts).read_bytes()
    except OSError as e:
        raise ConnectionFailed(f"--cacerts {cacerts}: {e.strerror or e}") from None
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    if not blocks:
        raise ConnectionFailed(f"--cacerts {cacerts}: no PEM certificate in the file")
    roots = [Certificate.loadPEM(block) for block in blocks]
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(roots))


def describe_http_failure(url: str, failure: Failure) -> str:
    """A connection failure as one line; a TLS verification failure says what to do."""
    reasons = getattr(failure.value, "reasons", None) or [failure]
    for reason in reasons:
        value = getattr(reason, "value", reason)
        if isinstance(value, SSLError | VerificationError):
            detail = _tls_detail(value)
            return (
                f"TLS: cannot verify the certificate of {url} ({detail}); "
                "trust its CA with --cacerts FILE or [web] cacerts in ~/.hgrc"
            )
    first = reasons[0]
    return str(getattr(first, "getErrorMessage", lambda: str(first))())


def _tls_detail(error: BaseException) -> str:
    if isinstance(error, SSLError) and error.args and isinstance(error.args[0], list):
        return "; ".join(str(item[-1]) for item in error.args[0] if item) or "TLS error"
    return str(error) or type(error).__name__


class HTTPPeer:
    """A v2 server over HTTP (see the module docs). Reactor thread only.

    ``login`` is sent with every request (HTTP Basic); ``cacerts`` replaces the system's
    certificate authorities for ``https://``. A password in ``url`` is never sent in the
    request line nor shown in messages.
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        *,
        login: HTTPLogin | None = None,
        cacerts: str | None = None,
    ) -> None:
        self.url = strip_userinfo(url)
        self._base = self.url.rstrip("/")
        self._login = login
        self._reactor = reactor
        self._pool = _QuietPool(reactor, persistent=True)
        self._agent = Agent(reactor, contextFactory=_tls_policy(cacerts), pool=self._pool)
        self._api: str | None = None
        self._readers: set[_BodyReader] = set()
        self._channels: set[FrameChannel] = set()
        self._paused = False
        self._closed = False

    async def _capabilities(self) -> dict[bytes, Any]:
        headers = Headers(
            {
                b"X-HgUpgrade-1": [HTTP_V2_API],
                b"X-HgProto-1": [b"cbor"],
                b"Vary": [b"X-HgProto-1,X-HgUpgrade-1"],
                b"Accept": [b"application/mercurial-0.1"],
                b"User-Agent": [USER_AGENT],
            }
        )
        self._authorize(headers)
        try:
            response = await self._agent.request(
                b"GET", f"{self._base}/?cmd=capabilities".encode(), headers
            )
        except Exception:
            raise ConnectionFailed(describe_http_failure(self.url, Failure())) from None
        body = await readBody(response)
        if response.code == 401:
            raise ConnectionFailed(self._login_needed())
        if response.code != 200:
            raise ConnectionFailed(f"capabilities: HTTP {response.code} from {self.url}")
        ctype = response.headers.getRawHeaders(b"content-type", [b""])[0]
        if ctype != b"application/mercurial-cbor":
            raise ConnectionFailed(f"{self.url} does not offer the v2 API (no CBOR upgrade)")
        answer = cbor.loads(body)
        if not isinstance(answer, dict):
            raise ConnectionFailed("capabilities: malformed answer")
        apis = answer.get(b"apis", {})
        if not isinstance(apis, dict) or HTTP_V2_API not in apis:
            raise ConnectionFailed(f"{self.url} does not offer {HTTP_V2_API.decode()}")
        base = answer.get(b"apibase", b"api/")
        assert isinstance(base, bytes)
        self._api = f"{self._base}/{base.decode().rstrip('/')}/{HTTP_V2_API.decode()}"
        descriptor = apis[HTTP_V2_API]
        assert isinstance(descriptor, dict)
        return descriptor

    def _authorize(self, headers: Headers) -> None:
        if self._login is not None:
            token = f"{self._login.user}:{self._login.password}".encode()
            headers.setRawHeaders(b"Authorization", [b"Basic " + base64.b64encode(token)])

    def _login_needed(self) -> str:
        if self._login is None:
            return (
                f"{self.url} asks for a login: give it in the URL (https://USER:PASSWORD@...), "
                "with --user, or in the [auth] section of ~/.hgrc"
            )
        return f"{self.url} refused the login of {self._login.user!r} (HTTP 401)"

    def capabilities(self) -> Deferred[dict[bytes, Any]]:
        return Deferred.fromCoroutine(self._capabilities())

    def call(self, commands: Sequence[Command]) -> None:
        if self._closed:
            raise ConnectionFailed("the peer is closed")
        if self._api is None:
            raise ConnectionFailed("capabilities() must come first")
        frame_reactor = ClientFrameReactor()
        channel = FrameChannel(frame_reactor, reactor=self._reactor)
        body = []
        for command in commands:
            request_id, actions = frame_reactor.call_command(
                command.name, command.args, redirect=command.redirect
            )
            channel.add(request_id, command)
            body += [a.data for a in actions]
        path = commands[0].name.decode() if len(commands) == 1 else "multirequest"
        headers = Headers(
            {
                b"Accept": [FRAMING_MEDIA_TYPE],
                b"Content-Type": [FRAMING_MEDIA_TYPE],
                b"User-Agent": [USER_AGENT],
            }
        )
        self._authorize(headers)
        self._channels.add(channel)
        d = self._agent.request(
            b"POST",
            f"{self._api}/ro/{path}".encode(),
            headers,
            FileBodyProducer(BytesIO(b"".join(body))),
        )
        d.addCallback(self._response, channel, path)
        d.addErrback(
            lambda f: channel.fail_all(ConnectionFailed(describe_http_failure(self.url, f)))
        )
        d.addBoth(lambda _: self._channels.discard(channel))

    def _response(self, response: IResponse, channel: FrameChannel, path: str) -> Deferred[None]:
        ctype = response.headers.getRawHeaders(b"content-type", [b""])[0]
        if response.code != 200 or ctype != FRAMING_MEDIA_TYPE:

            def refused(body: bytes) -> None:
                text = body[:500].decode("utf-8", "replace").strip()
                channel.fail_all(ConnectionFailed(f"{path}: HTTP {response.code}: {text}"))

            return readBody(response).addCallback(refused)
        done: Deferred[None] = Deferred()
        reader = _BodyReader(self, channel)
        original = reader.connectionLost

        def lost(reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
            original(reason)
            done.callback(None)

        reader.connectionLost = lost  # type: ignore[method-assign]
        response.deliverBody(reader)
        return done

    def pauseProducing(self) -> None:
        self._paused = True
        for reader in self._readers:
            reader.update_pause()

    def resumeProducing(self) -> None:
        self._paused = False
        for reader in list(self._readers):
            reader.update_pause()

    def close(self) -> None:
        self._closed = True
        for channel in list(self._channels):
            channel.fail_all(ConnectionFailed("connection closed by the client"))
        for reader in list(self._readers):
            reader.transport.stopProducing()
        self._pool.closeCachedConnections()
