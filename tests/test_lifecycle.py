"""Graceful drain of tracked connections, with a Clock and in-memory transports."""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from hgwire_tw.app.lifecycle import ConnectionTracker, drain


class Busy(Protocol):
    """A protocol that is busy until told otherwise."""

    busy = True


def closer(protocol: Busy) -> bool:
    if protocol.busy:
        return False
    protocol.transport.loseConnection()
    return True


def connect(factory: Factory) -> tuple[Busy, StringTransport]:
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol: Busy) -> None:
    protocol.connectionLost(Failure(ConnectionError("closed")))


def test_idle_connections_close_busy_ones_finish_then_drain_ends() -> None:
    clock, tracker = Clock(), ConnectionTracker(closer)
    factory = tracker.watch(Factory.forProtocol(Busy))
    (idle, idle_t), (busy, busy_t) = connect(factory), connect(factory)
    idle.busy = False
    result: list[int] = []
    drain(clock, [tracker], grace=30, sweep=1).addCallback(result.append)
    assert idle_t.disconnecting and not busy_t.disconnecting
    lose(idle)
    clock.advance(5)
    assert result == [] and tracker.connections == {busy}
    busy.busy = False  # its response finished: the next sweep closes it
    clock.advance(1)
    assert busy_t.disconnecting
    lose(busy)
    assert result == [0] and not tracker.connections


def test_grace_expiry_aborts_what_is_left() -> None:
    clock, tracker = Clock(), ConnectionTracker(closer)
    factory = tracker.watch(Factory.forProtocol(Busy))
    _, transport = connect(factory)
    result: list[int] = []
    drain(clock, [tracker], grace=3, sweep=1).addCallback(result.append)
    clock.advance(2)
    assert result == [] and not transport.disconnected
    clock.advance(1)
    assert result == [1] and transport.disconnected  # StringTransport.abortConnection


def test_no_connections_drains_at_once() -> None:
    result: list[int] = []
    drain(Clock(), [ConnectionTracker(closer)], grace=30).addCallback(result.append)
    assert result == [0]
