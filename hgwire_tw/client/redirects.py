"""Following content redirects (wire-protocol §6) for every client transport.

The pieces live in the shared layer, so HTTP, raw TCP and any peer built on
``FrameStreamProtocol`` (SSH) follow redirects alike:

* :func:`redirect_request` turns the server's advertised ``redirect`` section into the
  ``{targets, hashes}`` map sent with every command: only ``http``/``https`` targets
  whose TLS versions (if listed) we speak, hashes ∩ {sha256, sha1}.
* :class:`RedirectingSink` wraps a command's sink. An inline answer passes straight
  through; a ``ResponseRedirect`` (routed by ``FrameChannel`` to ``redirected``) starts a
  :class:`BlobFetch`: a GET of the location's URL with ``Accept: <mediatype>`` whose
  body is spooled to a temporary file while its size, full hash and CBOR well-formedness
  are checked (``CBORSequenceDecoder``; memory stays bounded). Only a blob that passed
  every check is handed to the sink, as a file the worker thread decodes itself
  (``ObjectQueue.objects_from_file``) — so nothing of a bad blob ever reaches the
  repository. On any failure (refused connection, HTTP error, wrong size or hash, bad
  CBOR, TLS failure) the same command is issued again inline without a redirect map,
  and the fallback is logged: a clone never fails because a CDN did.
* https is verified with Twisted's ``optionsForClientTLS`` (``service_identity``
  hostname checks), trusting exactly the location's ``serverdercerts`` when it names
  some, the platform's roots otherwise.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, Protocol

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

from hgwire_tw.core.cbor import CBORSequenceDecoder
from hgwire_tw.core.errors import CBORError

__all__ = [
    "ACCEPTED_HASHES",
    "BlobFetch",
    "RedirectFailed",
    "RedirectingSink",
    "redirect_request",
]

log = Logger()

#: Hashes we can verify, in order of preference.
ACCEPTED_HASHES = (b"sha256", b"sha1")
_PROTOCOLS = (b"http", b"https")
_TLS_VERSIONS = (b"1.2", b"1.3")
#: Largest blob followed when the location gives no size.
MAX_UNSIZED = 1024 * 1024 * 1024
USER_AGENT = b"hgwire_tw client"


class RedirectFailed(Exception):
    """A redirect could not be followed (the command is then re-issued inline)."""


def redirect_request(capabilities: Mapping[bytes, Any]) -> dict[bytes, object] | None:
    """The ``redirect`` map to send with each command, or None if the server has none."""
    section = capabilities.get(b"redirect")
    if not isinstance(section, dict):
        return None
    targets: list[bytes] = []
    for target in section.get(b"targets", []) or []:
        if not isinstance(target, dict):
            continue
        name, protocol = target.get(b"name"), target.get(b"protocol")
        if not isinstance(name, bytes) or protocol not in _PROTOCOLS:
            continue
        versions = target.get(b"tlsversions")
        if versions and not set(versions) & set(_TLS_VERSIONS):
            continue
        targets.append(name)
    offered = section.get(b"hashes", []) or []
    hashes = [h for h in offered if h in ACCEPTED_HASHES]
    return {b"targets": targets, b"hashes": hashes}


class SpoolSink(Protocol):
    """What a :class:`RedirectingSink` delivers to (``bridge.ObjectQueue``)."""

    def objects(self, objs: Sequence[object]) -> None: ...
    def objects_from_file(self, spool: IO[bytes]) -> None: ...
    def finished(self) -> None: ...
    def failed(self, error: Exception) -> None: ...


@implementer(IPolicyForHTTPS)
class _PinnedPolicy:
    """Trust exactly the given certificates (still checking the host name)."""

    def __init__(self, ders: Sequence[bytes]) -> None:
        from OpenSSL import crypto

        certs = [ssl.Certificate(crypto.load_certificate(crypto.FILETYPE_ASN1, d)) for d in ders]
        self._trust = ssl.trustRootFromCertificates(certs)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.optionsForClientTLS(hostname.decode("idna"), trustRoot=self._trust)


class _Spooler(TwistedProtocol):
    """Writes a blob body to a spool file, checking size, hash and CBOR on the way."""

    def __init__(self, fetch: BlobFetch) -> None:
        self.fetch = fetch

    def dataReceived(self, data: bytes) -> None:
        try:
            self.fetch.feed(data)
        except RedirectFailed as e:
            self.fetch.fail(e)
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if reason.check(ResponseDone):
            self.fetch.complete()
        else:
            self.fetch.fail(RedirectFailed(f"download broken: {reason.getErrorMessage()}"))


class BlobFetch:
    """One redirect download; ``done`` fires with the verified spool file (at 0)."""

    def __init__(self, location: Mapping[bytes, object]) -> None:
        url = location.get(b"url")
        mediatype = location.get(b"mediatype")
        if not isinstance(url, bytes) or not url.lower().startswith((b"http://", b"https://")):
            raise RedirectFailed(f"unusable redirect URL {url!r}")
        if not isinstance(mediatype, bytes):
            raise RedirectFailed("redirect without a media type")
        size = location.get(b"size")
        if size is not None and (not isinstance(size, int) or size < 0):
            raise RedirectFailed(f"bad redirect size {size!r}")
        self.url, self.mediatype, self.size = url, mediatype, size
        self.expected: bytes | None = None
        self.hasher: Any = None
        by_name = {}
        for pair in location.get(b"fullhashes", []) or []:  # type: ignore[attr-defined]
            if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], bytes):
                by_name[pair[0]] = pair[1]
        for name in ACCEPTED_HASHES:
            if name in by_name:
                self.hasher = hashlib.new(name.decode())
                self.expected = by_name[name]
                break
        if self.hasher is None:
            raise RedirectFailed("redirect without a hash we can verify")
        seed = location.get(b"fullhashseed")
        if isinstance(seed, bytes):
            self.hasher.update(seed)
        certs = location.get(b"serverdercerts")
        self.pinned = [c for c in certs if isinstance(c, bytes)] if isinstance(certs, list) else []
        self.received = 0
        self.decoder = CBORSequenceDecoder()
        self.spool: IO[bytes] | None = None
        self.done: Deferred[IO[bytes]] = Deferred()

    def start(self, reactor: Any, agent: Agent | None = None) -> Deferred[IO[bytes]]:
        """GET the URL (with ``agent``, or one trusting the pinned certificates)."""
        if agent is None or self.pinned:
            policy: Any = _PinnedPolicy(self.pinned) if self.pinned else BrowserLikePolicyForHTTPS()
            agent = Agent(reactor, contextFactory=policy)
        headers = Headers({b"Accept": [self.mediatype], b"User-Agent": [USER_AGENT]})
        try:
            d = agent.request(b"GET", self.url, headers)
        except Exception as e:  # a malformed URL raises synchronously
            self.fail(RedirectFailed(f"cannot fetch {self.url!r}: {e}"))
            return self.done
        d.addCallbacks(self._response, lambda f: self.fail(RedirectFailed(f.getErrorMessage())))
        return self.done

    def _response(self, response: IResponse) -> None:
        if response.code != 200:
            response.deliverBody(_Discard())
            self.fail(RedirectFailed(f"HTTP {response.code} from {self.url.decode()}"))
            return
        if self.size is not None and response.length not in (self.size, None, b"UNKNOWN"):
            if isinstance(response.length, int):
                response.deliverBody(_Discard())
                self.fail(RedirectFailed(f"length {response.length}, expected {self.size}"))
                return
        self.spool = tempfile.TemporaryFile(prefix="hgwire-redirect-")
        response.deliverBody(_Spooler(self))

    def feed(self, data: bytes) -> None:
        """Body bytes: count, hash, check the CBOR and spool them."""
        self.received += len(data)
        limit = self.size if self.size is not None else MAX_UNSIZED
        if self.received > limit:
            raise RedirectFailed(f"more than the announced {limit} bytes")
        self.hasher.update(data)
        try:
            self.decoder.feed(data)  # decoded values are dropped: only well-formedness
        except CBORError as e:
            raise RedirectFailed(f"bad CBOR: {e}") from e
        assert self.spool is not None
        self.spool.write(data)

    def complete(self) -> None:
        """The body ended: every check must pass before the spool is handed on."""
        if self.done.called:
            return
        if self.size is not None and self.received != self.size:
            self.fail(RedirectFailed(f"got {self.received} bytes, expected {self.size}"))
        elif self.hasher.digest() != self.expected:
            self.fail(RedirectFailed("content hash mismatch"))
        elif self.decoder.buffered:
            self.fail(RedirectFailed("CBOR ends in the middle of a value"))
        else:
            assert self.spool is not None
            self.spool.seek(0)
            spool, self.spool = self.spool, None
            self.done.callback(spool)

    def fail(self, error: Exception) -> None:
        """Give up (first error wins); the spool is deleted."""
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        if not self.done.called:
            self.done.errback(error)


class _Discard(TwistedProtocol):
    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        pass


class RedirectingSink:
    """A command sink that follows a redirect, or re-issues the command inline.

    ``reissue(sink)`` must start the same command again without a redirect map, with
    ``sink`` receiving its answer. Reactor thread only.
    """

    def __init__(
        self,
        name: bytes,
        target: SpoolSink,
        reissue: Callable[[SpoolSink], None],
        *,
        reactor: Any,
        agent: Agent | None = None,
        on_redirect: Callable[[bool], None] | None = None,
    ) -> None:
        self.name = name
        self.target = target
        self.reissue = reissue
        self.reactor = reactor
        self.agent = agent
        self.on_redirect = on_redirect

    # ResponseSink
    def objects(self, objs: Sequence[object]) -> None:
        self.target.objects(objs)

    def finished(self) -> None:
        self.target.finished()

    def failed(self, error: Exception) -> None:
        self.target.failed(error)

    def redirected(self, location: Mapping[bytes, object]) -> None:
        """The server answered with a redirect: fetch, verify, deliver or fall back."""
        try:
            fetch = BlobFetch(location)
        except RedirectFailed as e:
            self._fall_back(e, location)
            return
        d = fetch.start(self.reactor, self.agent)

        def verified(spool: IO[bytes]) -> None:
            if self.on_redirect is not None:
                self.on_redirect(True)
            self.target.objects_from_file(spool)
            self.target.finished()

        d.addCallbacks(verified, lambda f: self._fall_back(f.value, location))

    def _fall_back(self, error: BaseException, location: Mapping[bytes, object]) -> None:
        url = location.get(b"url")
        log.warn(
            "redirect for {cmd} to {url} failed ({error}); asking the server inline",
            cmd=self.name.decode("utf-8", "replace"),
            url=url.decode("utf-8", "replace") if isinstance(url, bytes) else repr(url),
            error=error,
        )
        if self.on_redirect is not None:
            self.on_redirect(False)
        self.reissue(self.target)
