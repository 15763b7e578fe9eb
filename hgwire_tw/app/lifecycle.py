"""Graceful stop and certificate reload of the listening services.

Graceful stop (SIGTERM, SIGINT). Every listening factory is watched by a
:class:`ConnectionTracker`, which records the protocols it builds until their
connections are lost. :func:`drain` then stops the service without cutting a response
in flight: each sweep (every ``sweep`` seconds) closes the connections that are *idle*
(an HTTP keep-alive connection between requests, a raw TCP session with no command
running) and asks busy HTTP connections to close once their response is complete; it
ends when no connection is left, or after ``grace`` seconds, when the remaining ones
are aborted. SSH connections are not closed early: an ``hg`` client closes its session
when its command is done. How idle is recognised is per transport (:data:`IDLE_CLOSERS`).

TLS reload (SIGHUP). A ``ssl:`` endpoint reads its certificate and key when it is
parsed and keeps them in a context factory. :func:`reloadable_tls` puts a
:class:`ReloadableContextFactory` in its place, so that a later :meth:`swap` with a
freshly parsed endpoint gives new connections the new certificate while open ones keep
theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "IDLE_CLOSERS",
    "ConnectionTracker",
    "ReloadableContextFactory",
    "drain",
    "reloadable_tls",
]

log = Logger()


class ConnectionTracker:
    """The open connections of one server factory.

    ``watch(factory)`` wraps the factory's ``buildProtocol`` (on the instance), so the
    protocols, their transports and the factory itself stay exactly what they are;
    each protocol's ``connectionLost`` is wrapped the same way to forget it.
    """

    def __init__(self, close_if_idle: Callable[[Any], bool]) -> None:
        self.close_if_idle = close_if_idle
        self.connections: set[Any] = set()
        self._emptied: list[Deferred[None]] = []

    def watch(self, factory: Any) -> Any:
        """Track the connections ``factory`` builds from now on; returns ``factory``."""
        build = factory.buildProtocol

        def buildProtocol(addr: Any) -> Any:
            protocol = build(addr)
            if protocol is not None:
                self._add(protocol)
            return protocol

        factory.buildProtocol = buildProtocol
        return factory

    def _add(self, protocol: Any) -> None:
        self.connections.add(protocol)
        lost = protocol.connectionLost

        def connectionLost(reason: Failure) -> None:
            try:
                lost(reason)
            finally:
                self._remove(protocol)

        protocol.connectionLost = connectionLost

    def _remove(self, protocol: Any) -> None:
        self.connections.discard(protocol)
        if not self.connections:
            emptied, self._emptied = self._emptied, []
            for d in emptied:
                d.callback(None)

    def sweep(self) -> None:
        """Close the idle connections (see ``close_if_idle``)."""
        for protocol in list(self.connections):
            if getattr(protocol, "transport", None) is None:
                continue
            try:
                self.close_if_idle(protocol)
            except Exception:
                log.failure("closing an idle connection failed")

    def abort(self) -> int:
        """Cut every connection left; returns how many there were."""
        left = list(self.connections)
        for protocol in left:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()
        return len(left)

    def emptied(self) -> Deferred[None]:
        """Fires once no connection is open."""
        d: Deferred[None] = Deferred()
        if not self.connections:
            d.callback(None)
        else:
            self._emptied.append(d)
        return d


def close_idle_http(protocol: Any) -> bool:
    """An HTTP connection is idle between requests; a busy one is told to close after
    the response it is sending (no keep-alive)."""
    # Site wraps its HTTPChannel in a protocol-negotiation wrapper (see HgSite).
    channel = getattr(protocol, "_channel", protocol)
    if getattr(channel, "requests", None):
        channel.persistent = False
        return False
    protocol.transport.loseConnection()
    return True


def close_idle_frames(protocol: Any) -> bool:
    """A raw TCP frame session is idle when no command runs or waits and no output is
    being encoded; output already written is flushed before the close."""
    session = getattr(protocol, "session", None)
    if session is not None and session.busy:
        return False
    protocol.transport.loseConnection()
    return True


def wait_for_client(protocol: Any) -> bool:
    """SSH: the client ends its session when its command is done."""
    return False


#: Transport name -> how its idle connections are closed.
IDLE_CLOSERS: dict[str, Callable[[Any], bool]] = {
    "http": close_idle_http,
    "metrics": close_idle_http,
    "tcp": close_idle_frames,
    "ssh": wait_for_client,
}


def drain(
    reactor: Any, trackers: list[ConnectionTracker], grace: float, *, sweep: float = 0.25
) -> Deferred[int]:
    """Close idle connections every ``sweep`` seconds until none is left or ``grace``
    seconds passed; then abort the rest. Fires with the number of connections cut."""
    done: Deferred[int] = Deferred()
    deadline = reactor.seconds() + grace
    pending: list[Any] = []

    def finish(cut: int) -> None:
        for call in pending:
            if call.active():
                call.cancel()
        if not done.called:
            done.callback(cut)

    def step() -> None:
        pending.clear()
        if done.called:
            return
        for tracker in trackers:
            tracker.sweep()
        if not any(t.connections for t in trackers):
            finish(0)
        elif reactor.seconds() >= deadline:
            finish(sum(t.abort() for t in trackers))
        else:
            pending.append(reactor.callLater(min(sweep, deadline - reactor.seconds()), step))

    def emptied(_: object) -> None:
        if not any(t.connections for t in trackers):
            finish(0)

    for tracker in trackers:
        tracker.emptied().addCallback(emptied)
    step()
    return done


# -- TLS certificates reloaded on SIGHUP ---------------------------------------------------


class ReloadableContextFactory:
    """An old-style TLS context factory delegating to a replaceable one.

    Twisted asks the context factory for a context for every new connection, so
    swapping ``current`` changes the certificate of the connections accepted after it.
    """

    def __init__(self, current: Any) -> None:
        self.current = current

    def getContext(self) -> Any:
        """The context of the current certificate."""
        return self.current.getContext()


def reloadable_tls(endpoint: Any) -> ReloadableContextFactory | None:
    """Make the certificate of a ``ssl:`` endpoint replaceable before it listens; None
    for other endpoints."""
    # SSL4ServerEndpoint has no public accessor for its context factory; listen() reads
    # this attribute, so replacing it before listening is enough.
    current = getattr(endpoint, "_sslContextFactory", None)
    if current is None:
        return None
    reloadable = ReloadableContextFactory(current)
    endpoint._sslContextFactory = reloadable
    return reloadable


def tls_context_factory(endpoint: Any) -> Any:
    """The context factory of a freshly parsed ``ssl:`` endpoint (None for others)."""
    return getattr(endpoint, "_sslContextFactory", None)
