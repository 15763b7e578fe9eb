"""Raw TCP transport (``hgwire://host:port/name``): preamble, then v2 frames, full duplex.

A connection starts with the repository preamble of :mod:`hgwire_tw.core.preamble`;
after ``ok`` it carries frames through a ``ServerFrameReactor(mode=FULL)``. The
transport is read-only by design: anonymous read permission
(``ctx.access.can_read(None, name)``) is required, and push commands get a command
error from the runner (``may_push`` is always false).

Flow control, both ways:

- output: this protocol is the transport's ``IPushProducer``; while the socket buffer
  is full, every command's next batch waits (the runner's worker waits with it);
- input: at most ``max_in_flight`` commands run at once per connection; beyond that the
  complete requests wait in a queue and the socket is not read until one finishes.

Responses are spread round-robin over ``streams`` output streams, each with its own
compression context. Limits: total and per-address connection counts, a handshake
timeout (preamble) and an idle timeout (no input and nothing running), all timed with
an injected clock. Compression runs on the reactor thread (moving it to the worker
threads is not done).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from hgwire_tw.context import ServerContext
from hgwire_tw.core.errors import HgWireError, ProtocolError
from hgwire_tw.core.preamble import PreambleParser, encode_error, encode_ok
from hgwire_tw.core.reactor import (
    CloseConnection,
    DuplexMode,
    ProtocolFailure,
    RunCommand,
    SendFrames,
    ServerFrameReactor,
)
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.transports.framesink import FrameSink
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


@implementer(IPushProducer, IHalfCloseableProtocol)
class HgwireTCPProtocol(Protocol):
    """One raw TCP connection (see the module docs)."""

    def __init__(self, factory: HgwireTCPFactory, host: str) -> None:
        self.factory = factory
        self.ctx = factory.ctx
        self.limits = factory.limits
        self.clock = factory.clock
        self.host = host
        self.preamble: PreambleParser | None = PreambleParser()
        self.served: ServedRepository | None = None
        self.frames: ServerFrameReactor | None = None
        self.stream_ids: list[int] = []
        self.next_stream = 0
        self.running: dict[int, Deferred[None]] = {}
        self.waiting: deque[RunCommand] = deque()
        self.gate = PauseGate()
        self.reading_paused = False
        self.input_closed = False
        self.done = False
        self.timer: IDelayedCall | None = None

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
        if self.preamble is None and not self.done:
            self._arm(self.limits.idle_timeout, "idle")

    def _timed_out(self, what: str) -> None:
        self.timer = None
        if self.done:
            return
        if what == "idle" and (self.running or self.waiting):
            self._arm(self.limits.idle_timeout, "idle")  # busy, not idle
            return
        log.info("hgwire TCP {what} timeout from {host}", what=what, host=self.host)
        if self.preamble is not None:
            self.transport.write(encode_error(f"{what} timeout"))  # type: ignore[union-attr]
        self._close()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.factory.forget(self.host)
        self.waiting.clear()
        running, self.running = self.running, {}
        for request_id, d in running.items():
            if self.frames is not None:
                self.frames.request_cancelled(request_id)
            d.cancel()
        self.resumeProducing()

    def _close(self) -> None:
        if not self.done:
            self.done = True
            self.transport.loseConnection()  # type: ignore[union-attr]

    # -- IPushProducer (the socket's send buffer) ---------------------------------------
    def pauseProducing(self) -> None:
        self.gate.pause()

    def resumeProducing(self) -> None:
        self.gate.resume()

    def stopProducing(self) -> None:
        self.done = True
        self.resumeProducing()

    # -- input -------------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self.done:
            return
        if self.preamble is not None:
            try:
                request = self.preamble.feed(data)
            except ProtocolError as e:
                self._refuse(str(e))
                return
            if request is None:
                return
            self.preamble = None
            if not self._open(request.name):
                return
            data = request.rest
        self._touch()
        if data:
            assert self.frames is not None
            self.execute(self.frames.receive_data(data))

    def readConnectionLost(self) -> None:
        """The client half-closed: answer what was asked, then close."""
        if self.done:
            return
        self.input_closed = True
        if self.frames is None:
            self._close()
            return
        self.execute(self.frames.end_of_input())
        self._maybe_finish()

    def writeConnectionLost(self) -> None:
        self._close()

    def _open(self, name: str) -> bool:
        try:
            served = self.ctx.registry.resolve(name)
        except HgWireError:
            self._refuse(REFUSED)
            return False
        if not self.ctx.access.can_read(None, served.name):
            self._refuse(REFUSED)
            return False
        self.served = served
        self.frames = ServerFrameReactor(
            mode=DuplexMode.FULL,
            encodings=self.ctx.settings.v2_encodings,
            max_requests_in_flight=max(self.limits.max_in_flight * 4, 16),
        )
        self.stream_ids = [self.frames.open_stream() for _ in range(max(1, self.limits.streams))]
        self.transport.write(encode_ok())  # type: ignore[union-attr]
        return True

    def _refuse(self, message: str) -> None:
        log.info("hgwire TCP refused {host}: {why}", host=self.host, why=message)
        self.transport.write(encode_error(message))  # type: ignore[union-attr]
        self._close()

    # -- actions -----------------------------------------------------------------------
    def execute(self, actions: Sequence[object]) -> Deferred[None] | None:
        for action in actions:
            if self.done:
                break
            if isinstance(action, SendFrames):
                self.transport.write(action.data)  # type: ignore[union-attr]
            elif isinstance(action, RunCommand):
                self.waiting.append(action)
            elif isinstance(action, ProtocolFailure):
                log.info(
                    "hgwire TCP protocol failure from {host}: {why}",
                    host=self.host,
                    why=action.message,
                )
            elif isinstance(action, CloseConnection):
                self._close()
        self._start_waiting()
        return None if self.done else self.gate.wait()

    def _start_waiting(self) -> None:
        while self.waiting and len(self.running) < self.limits.max_in_flight and not self.done:
            self._run(self.waiting.popleft())
        want_pause = bool(self.waiting) and not self.done
        if want_pause != self.reading_paused and not self.done:
            self.reading_paused = want_pause
            if want_pause:
                self.transport.pauseProducing()  # type: ignore[union-attr]
            else:
                self.transport.resumeProducing()  # type: ignore[union-attr]

    def _run(self, action: RunCommand) -> None:
        assert self.served is not None
        stream_id = self.stream_ids[self.next_stream % len(self.stream_ids)]
        self.next_stream += 1
        sink = FrameSink(self, action.request_id, stream_id)
        d = self.ctx.runner.run(
            self.served,
            action.name,
            action.args,
            may_push=False,
            sink=sink,
            redirect=action.redirect,
        )
        self.running[action.request_id] = d
        d.addBoth(self._command_over, action.request_id)

    def _command_over(self, result: object, request_id: int) -> None:
        self.running.pop(request_id, None)
        if isinstance(result, Failure) and not result.check(CancelledError):
            log.failure("hgwire TCP command failed", result)
        if not self.done:
            self._touch()
            self._start_waiting()
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.input_closed and not self.running and not self.waiting:
            self._close()


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
        self, ctx: ServerContext, limits: TCPLimits | None = None, clock: Any = None
    ) -> None:
        self.ctx = ctx
        self.limits = limits or TCPLimits()
        self.clock = clock if clock is not None else ctx.reactor
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
    """The factory ``tap.py`` listens with for ``--tcp ENDPOINT``."""
    return HgwireTCPFactory(ctx)
