"""Unit tests of the raw TCP transport with StringTransport and a fake clock."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from hgwire_tw.access import Grant
from hgwire_tw.context import ServerContext
from hgwire_tw.core.errors import UnknownRepository
from hgwire_tw.core.reactor import (
    ClientFrameReactor,
    ProtocolFailure,
    ResponseError,
    ResponseFinished,
    ResponseObjects,
)
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.transports.framesession import inline_job_runner
from hgwire_tw.transports.tcp import HgwireTCPFactory, HgwireTCPProtocol, TCPLimits


class FakeRegistry:
    def resolve(self, name: str) -> ServedRepository:
        if name != "repo":
            raise UnknownRepository(name)
        return ServedRepository(name="repo", path=Path("/nonexistent"))


class FakeAccess:
    def __init__(self, readable: bool = True) -> None:
        self.readable = readable

    def authorize(self, user: str | None, name: str) -> Grant:
        read = self.readable and user is None
        return Grant(read=read, write=False, reason="" if read else "closed")


class FakeRunner:
    """Answers ``heads`` at once; keeps ``slow`` commands pending."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bool]] = []
        self.pending: list[Deferred[None]] = []
        self.sinks: list[Any] = []

    def run(
        self,
        served: Any,
        name: bytes,
        args: Mapping[bytes, object],
        *,
        may_push: bool,
        sink: Any,
        redirect: Any = None,
        who: str = "",
    ) -> Deferred[None]:
        self.calls.append((name, may_push))
        if name == b"slow":
            d: Deferred[None] = Deferred()
            self.pending.append(d)
            self.sinks.append(sink)
            return d
        sink.objects([[b"\x01" * 20]])
        sink.finished()
        done: Deferred[None] = Deferred()
        done.callback(None)
        return done


def connect(
    limits: TCPLimits | None = None, readable: bool = True
) -> tuple[HgwireTCPProtocol, StringTransport, Clock, FakeRunner]:
    clock = Clock()
    runner = FakeRunner()
    ctx = ServerContext(
        reactor=clock,
        registry=FakeRegistry(),  # type: ignore[arg-type]
        pool=None,  # type: ignore[arg-type]
        access=FakeAccess(readable),  # type: ignore[arg-type]
        runner=runner,
    )
    factory = HgwireTCPFactory(ctx, limits, clock=clock, run_job=inline_job_runner)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    assert isinstance(proto, HgwireTCPProtocol)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock, runner


def test_unknown_or_unreadable_repository_is_refused_alike() -> None:
    """Unknown and unreadable repositories get the same error line, then a close."""
    for name, readable in ((b"nope", True), (b"repo", False)):
        proto, transport, _, _ = connect(readable=readable)
        proto.dataReceived(b"hgwire-v2 " + name + b"\n")
        assert transport.value() == b"error repository not found or not readable\n"
        assert transport.disconnecting


def test_garbage_preamble_errors_and_closes() -> None:
    """Something other than a preamble line gets an error line and a close."""
    proto, transport, _, _ = connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\n")
    assert transport.value().startswith(b"error ")
    assert transport.disconnecting


def test_overlong_preamble_is_refused() -> None:
    """A preamble without a newline within the bound is refused."""
    proto, transport, _, _ = connect()
    proto.dataReceived(b"hgwire-v2 " + b"x" * 2000)
    assert transport.value().startswith(b"error ") and transport.disconnecting


def test_handshake_timeout() -> None:
    """A client that never finishes its preamble is dropped after the handshake timeout."""
    proto, transport, clock, _ = connect(TCPLimits(handshake_timeout=5))
    proto.dataReceived(b"hgwire-v")
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.value() == b"error handshake timeout\n" and transport.disconnecting


def test_idle_timeout_only_when_idle() -> None:
    """After ``ok``, silence closes the connection, but not while a command runs."""
    proto, transport, clock, runner = connect(TCPLimits(idle_timeout=60))
    proto.dataReceived(b"hgwire-v2 repo\n")
    assert transport.value() == b"ok\n"
    client = ClientFrameReactor()
    _, actions = client.call_command(b"slow", {})
    proto.dataReceived(actions[0].data)
    clock.advance(61)
    assert not transport.disconnecting  # busy
    runner.sinks[0].finished()
    runner.pending[0].callback(None)
    clock.advance(61)
    assert transport.disconnecting


def test_commands_round_trip_read_only() -> None:
    """Frames sent right behind the preamble run, with may_push false, and answer."""
    proto, transport, _, runner = connect()
    client = ClientFrameReactor()
    _, actions = client.call_command(b"heads", {})
    _, more = client.call_command(b"pushkey", {})
    proto.dataReceived(b"hgwire-v2 repo\n" + actions[0].data + more[0].data)
    assert runner.calls == [(b"heads", False), (b"pushkey", False)]
    out = transport.value()
    assert out.startswith(b"ok\n")
    events = client.receive_data(out[3:])
    assert ResponseObjects(request_id=1, objects=([b"\x01" * 20],)) in events
    assert ResponseFinished(request_id=1) in events


def test_garbage_frames_get_error_frame_and_close() -> None:
    """Bytes that are not frames after ``ok`` get an error frame, then a close."""
    proto, transport, _, _ = connect()
    proto.dataReceived(b"hgwire-v2 repo\n")
    client = ClientFrameReactor()
    client.call_command(b"heads", {})
    proto.dataReceived(b"\xff" * 64)
    assert transport.disconnecting
    events = client.receive_data(transport.value()[3:])
    assert any(isinstance(e, (ProtocolFailure, ResponseError)) for e in events)


def test_vanished_client_cancels_running_commands() -> None:
    """When the client goes away mid-response, its running commands are cancelled."""
    proto, _transport, _, runner = connect()
    client = ClientFrameReactor()
    _, actions = client.call_command(b"slow", {})
    proto.dataReceived(b"hgwire-v2 repo\n" + actions[0].data)
    runner.sinks[0].objects([b"partial"])
    assert not runner.pending[0].called
    proto.connectionLost(None)
    assert runner.pending[0].called  # cancelled
    assert proto.factory.total == 0


def test_in_flight_limit_pauses_reading() -> None:
    """Beyond max_in_flight, requests wait and the socket is not read."""
    proto, transport, _, runner = connect(TCPLimits(max_in_flight=2))
    client = ClientFrameReactor()
    data = b"".join(client.call_command(b"slow", {})[1][0].data for _ in range(3))
    proto.dataReceived(b"hgwire-v2 repo\n" + data)
    assert len(runner.calls) == 2 and transport.producerState == "paused"
    runner.sinks[0].finished()
    runner.pending[0].callback(None)
    assert len(runner.calls) == 3 and transport.producerState == "producing"


def test_connection_limits() -> None:
    """Connections over the total or per-address limit are refused with a message."""
    clock = Clock()
    ctx = ServerContext(
        reactor=clock,
        registry=FakeRegistry(),  # type: ignore[arg-type]
        pool=None,  # type: ignore[arg-type]
        access=FakeAccess(),  # type: ignore[arg-type]
        runner=FakeRunner(),
    )
    factory = HgwireTCPFactory(ctx, TCPLimits(max_connections=3, max_per_address=1), clock=clock)
    first = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
    first.makeConnection(StringTransport())
    second = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 2))
    transport = StringTransport()
    second.makeConnection(transport)
    assert transport.value().startswith(b"error too many") and transport.disconnecting
    first.connectionLost(None)
    again = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 3))
    assert isinstance(again, HgwireTCPProtocol)
