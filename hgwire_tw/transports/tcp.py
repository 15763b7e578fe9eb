"""Raw TCP transport (``hgwire://host:port/name``): preamble, then v2 frames, full duplex.

A connection starts with the repository preamble of :mod:`hgwire_tw.core.preamble`;
after ``ok`` it carries frames through a
``ServerFrameReactor(mode=FULL, encoding_jobs=True)``. The
transport is read-only by design: anonymous read permission
(``ctx.access.authorize(None, name).read``) is required, and push commands get a command
error from the runner (``may_push`` is always false).

Flow control, both ways:

- output: this protocol is the transport's ``IPushProducer``; while the socket buffer
  is full, every command's next batch waits (the runner's worker waits with it);
- input: at most ``max_in_flight`` commands run at once per connection; beyond that the
  complete requests wait in a queue and the socket is not read until one finishes.

The session itself (preamble, frames, commands, encoding jobs) is
:class:`~hgwire_tw.transports.framesession.FrameSession`, shared with the SSH subsystem.
Responses are spread round-robin over ``streams`` output streams, each with its own
compression context, compressed on worker threads (one job per stream at a time), so
one connection's streams use several cores. Limits: total and per-address connection
counts, a handshake timeout (preamble) and an idle timeout (no input, nothing running
and nothing being encoded), all timed with an injected clock. ``hgwire serve`` sets
them with the ``--tcp-*`` options (``tap.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from hgwire_tw.context import ServerContext
from hgwire_tw.core.errors import HgWireError
from hgwire_tw.core.preamble import encode_error
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.transports.framesession import (
    FrameSession,
    JobRunner,
    SessionLimits,
    SessionRefused,
    threaded_job_runner,
)
from hgwire_tw.transports.pausegate import PauseGate

__all__ = ["HgwireTCPFactory", "HgwireTCPProtocol", "TCPLimits", "make_tcp_factory"]

log = Logger()

REFUSED = "repository not found or not readable"


@dataclass(frozen=True)
class TCPLimits:
    """Per-service limits of the raw TCP transport."""

    max_connections: int = 256
    max_per_address: int = 16
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    max_in_flight: int = 8
    streams: int = 2


def _anonymous_reader(ctx: ServerContext) -> Callable[[str], tuple[ServedRepository, bool]]:
    def open_repository(name: str) -> tuple[ServedRepository, bool]:
        try:
            served = ctx.registry.resolve(name)
        except HgWireError:
            raise SessionRefused(REFUSED) from None
        if not ctx.access.authorize(None, served.name).read:
            raise SessionRefused(REFUSED)
        return served, False  # read-only by design

    return open_repository


@implementer(IPushProducer, IHalfCloseableProtocol)
class HgwireTCPProtocol(Protocol):
    """One raw TCP connection (see the module docs): a ``FrameSession`` plus timers."""

    def __init__(self, factory: HgwireTCPFactory, host: str) -> None:
        self.factory = factory
        self.ctx = factory.ctx
        self.limits = factory.limits
        self.clock = factory.clock
        self.host = host
        self.gate = PauseGate()
        self.timer: IDelayedCall | None = None
        self.closed = False
        self.session = FrameSession(
            self.ctx,
            self,
            _anonymous_reader(self.ctx),
            label=f"hgwire TCP {host}",
            limits=SessionLimits(
                streams=self.limits.streams,
                max_in_flight=self.limits.max_in_flight,
                max_requests=max(self.limits.max_in_flight * 4, 16),
            ),
            run_job=factory.run_job,
            reading=_Reading(self),
            on_activity=self._touch,
        )

    # -- connection ------------------------------------------------------------------
    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._arm(self.limits.handshake_timeout, "handshake")

    def _arm(self, delay: float, what: str) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = self.clock.callLater(delay, self._timed_out, what)

    def _touch(self) -> None:
        """Activity: restart the idle timer (the handshake timer stays until ``ok``)."""
        if self.session.opened and not self.session.done:
            self._arm(self.limits.idle_timeout, "idle")

    def _timed_out(self, what: str) -> None:
        self.timer = None
        if self.session.done:
            return
        if what == "idle" and self.session.busy:
            self._arm(self.limits.idle_timeout, "idle")  # busy, not idle
            return
        log.info("hgwire TCP {what} timeout from {host}", what=what, host=self.host)
        if not self.session.opened:
            self.session.refuse(f"{what} timeout")
        else:
            self.session.close(1)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.factory.forget(self.host)
        self.session.connectionLost()
        self.resumeProducing()

    # -- FrameChannel --------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def drained(self) -> Deferred[None] | None:
        return self.gate.wait()

    def finish(self, status: int) -> None:
        if not self.closed:
            self.closed = True
            self.transport.loseConnection()  # type: ignore[union-attr]

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abortConnection()  # type: ignore[union-attr]

    # -- IPushProducer (the socket's send buffer) ---------------------------------------
    def pauseProducing(self) -> None:
        self.gate.pause()

    def resumeProducing(self) -> None:
        self.gate.resume()

    def stopProducing(self) -> None:
        self.session.connectionLost()
        self.resumeProducing()

    # -- input -------------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        self.session.dataReceived(data)

    def readConnectionLost(self) -> None:
        """The client half-closed: answer what was asked, then close."""
        self.session.eofReceived()

    def writeConnectionLost(self) -> None:
        self.session.close(0)


class _Reading:
    """Pauses and resumes reading the socket (the in-flight limit)."""

    def __init__(self, protocol: HgwireTCPProtocol) -> None:
        self.protocol = protocol

    def pauseProducing(self) -> None:
        self.protocol.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self.protocol.transport.resumeProducing()  # type: ignore[union-attr]


class _Refusal(Protocol):
    """Says why a connection is refused, then closes."""

    def __init__(self, message: str) -> None:
        self.message = message

    def connectionMade(self) -> None:
        self.transport.write(encode_error(self.message))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class HgwireTCPFactory(Factory):
    """Makes :class:`HgwireTCPProtocol` s within the connection limits."""

    def __init__(
        self,
        ctx: ServerContext,
        limits: TCPLimits | None = None,
        clock: Any = None,
        run_job: JobRunner | None = None,
    ) -> None:
        self.ctx = ctx
        self.limits = limits or TCPLimits()
        self.clock = clock if clock is not None else ctx.reactor
        self.run_job = run_job if run_job is not None else threaded_job_runner(ctx.reactor)
        self.per_address: dict[str, int] = {}
        self.total = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        host = str(getattr(addr, "host", addr))
        if self.total >= self.limits.max_connections:
            return _Refusal("too many connections")
        if self.per_address.get(host, 0) >= self.limits.max_per_address:
            return _Refusal("too many connections from your address")
        self.total += 1
        self.per_address[host] = self.per_address.get(host, 0) + 1
        return HgwireTCPProtocol(self, host)

    def forget(self, host: str) -> None:
        """A connection from ``host`` ended."""
        self.total -= 1
        left = self.per_address.get(host, 1) - 1
        if left:
            self.per_address[host] = left
        else:
            self.per_address.pop(host, None)


def make_tcp_factory(ctx: ServerContext) -> HgwireTCPFactory:
    """The factory ``tap.py`` listens with for ``--tcp ENDPOINT`` (limits from settings)."""
    return HgwireTCPFactory(ctx, ctx.settings.tcp_limits)
