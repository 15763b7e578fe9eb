"""The v2 peer over raw TCP (``hgwire://host:port/name``).

One connection: the preamble line, then frames both ways through one
:class:`ClientFrameReactor`; every command is written as soon as it is issued, so
several are in flight at once, and their responses (interleaved on the server's
streams) go to their sinks as they are decoded. The protocol class only needs a
byte transport, so an SSH-subsystem peer can reuse it on a channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from hgwire_tw.client.bridge import ObjectQueue
from hgwire_tw.client.http import FrameChannel
from hgwire_tw.client.peer import Command, ConnectionFailed
from hgwire_tw.core.errors import ProtocolError
from hgwire_tw.core.preamble import (
    PreambleAccepted,
    PreambleRefused,
    PreambleReplyParser,
    encode_request,
)
from hgwire_tw.core.reactor import ClientFrameReactor

__all__ = ["FrameStreamProtocol", "StreamPeer", "TCPPeer"]


class FrameStreamProtocol(Protocol):
    """Client side of a preamble + frames byte stream."""

    def __init__(self, repo_name: str, reactor: Any = None) -> None:
        """``reactor``: decode on its thread pool (see ``FrameChannel``); None: here."""
        self.repo_name = repo_name
        self.reply: PreambleReplyParser | None = PreambleReplyParser()
        self.channel = FrameChannel(
            ClientFrameReactor(),
            reactor=reactor,
            pause=lambda on: self.pause_for("decoding", on),
        )
        self.ready: Deferred[FrameStreamProtocol] = Deferred()
        self.lost = False
        # Why reading is paused: "consumer" (the pull is behind), "decoding".
        self._pause_reasons: set[str] = set()

    def pause_for(self, reason: str, paused: bool) -> None:
        """Stop reading while any reason holds; read again once none does."""
        before = bool(self._pause_reasons)
        if paused:
            self._pause_reasons.add(reason)
        else:
            self._pause_reasons.discard(reason)
        after = bool(self._pause_reasons)
        if before != after and not self.lost and self.transport is not None:
            if after:
                self.transport.pauseProducing()  # type: ignore[attr-defined]
            else:
                self.transport.resumeProducing()  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        self.transport.write(encode_request(self.repo_name))  # type: ignore[union-attr]

    def send(self, commands: Sequence[Command]) -> None:
        """Write ``commands`` (after the preamble was accepted)."""
        if self.lost:
            raise ConnectionFailed("the connection is closed")
        out = []
        for command in commands:
            with self.channel.lock:  # the frame reactor may be decoding on a thread
                request_id, actions = self.channel.frame_reactor.call_command(
                    command.name, command.args, redirect=command.redirect
                )
            self.channel.add(request_id, command)
            out += [a.data for a in actions]
        self.transport.write(b"".join(out))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.reply is not None:
            try:
                answer = self.reply.feed(data)
            except ProtocolError as exc:
                self._abort(ConnectionFailed(f"bad preamble reply: {exc}"))
                return
            if answer is None:
                return
            self.reply = None
            if isinstance(answer, PreambleRefused):
                self._abort(ConnectionFailed(f"server refused: {answer.message}"))
                return
            assert isinstance(answer, PreambleAccepted)
            self.ready.callback(self)
            data = answer.rest
            if not data:
                return
        self.channel.data(data)

    def _abort(self, error: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(error)
        self.channel.fail_all(error)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        error = ConnectionFailed(
            f"connection lost: {reason.getErrorMessage() if reason else 'closed'}"
        )
        if not self.ready.called:
            self.ready.errback(error)
        # After the bytes that arrived before (they may still be decoding).
        self.channel.closed(error)


class _Factory(ClientFactory):
    noisy = False  # no "Starting factory" line per connection (mirrors pull often)

    def __init__(
        self, repo_name: str, connected: Deferred[FrameStreamProtocol], reactor: Any
    ) -> None:
        self.repo_name = repo_name
        self.connected = connected
        self.reactor = reactor

    def buildProtocol(self, addr: Any) -> FrameStreamProtocol:
        protocol = FrameStreamProtocol(self.repo_name, self.reactor)
        protocol.ready.chainDeferred(self.connected)
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.connected.called:
            self.connected.errback(ConnectionFailed(reason.getErrorMessage()))


def _fire(d: Deferred[FrameStreamProtocol], outcome: FrameStreamProtocol | Failure) -> None:
    if isinstance(outcome, Failure):
        d.errback(outcome)
    else:
        d.callback(outcome)


class StreamPeer:
    """A v2 server on one byte stream carrying a :class:`FrameStreamProtocol`.

    Subclasses say how the stream is opened (:meth:`_open`); commands, capabilities,
    pausing and closing are the same for raw TCP and an SSH channel. The stream's
    transport must offer ``write``, ``loseConnection``, ``pauseProducing`` and
    ``resumeProducing``. Reactor thread only.
    """

    url: str

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._protocol: FrameStreamProtocol | None = None
        self._connecting: Deferred[FrameStreamProtocol] | None = None
        self._outcome: FrameStreamProtocol | Failure | None = None
        self._waiting: list[Deferred[FrameStreamProtocol]] = []
        self._paused = False

    def _open(self) -> Deferred[FrameStreamProtocol]:
        """Open the stream; fires with the protocol once the preamble was accepted."""
        raise NotImplementedError

    def _connect(self) -> Deferred[FrameStreamProtocol]:
        """A Deferred of the open stream; every caller gets its own, the stream is opened
        once. The outcome is kept here rather than left at the end of a shared Deferred,
        so a failed connection is reported to each caller and never also logged as an
        unhandled error when the peer is dropped."""
        if self._connecting is None:
            connected = self._open()

            def up(protocol: FrameStreamProtocol) -> FrameStreamProtocol:
                self._protocol = protocol
                if self._paused:
                    protocol.pause_for("consumer", True)
                return protocol

            def settle(outcome: FrameStreamProtocol | Failure) -> None:
                self._outcome = outcome
                waiting, self._waiting = self._waiting, []
                for d in waiting:
                    _fire(d, outcome)

            connected.addCallback(up).addBoth(settle)
            self._connecting = connected
        d: Deferred[FrameStreamProtocol] = Deferred()
        if self._outcome is None:
            self._waiting.append(d)
        else:
            _fire(d, self._outcome)
        return d

    def capabilities(self) -> Deferred[dict[bytes, Any]]:
        queue = ObjectQueue(b"capabilities")
        result: Deferred[dict[bytes, Any]] = Deferred()

        class _One:
            def objects(self, objs: Sequence[object]) -> None:
                queue.objects(objs)

            def finished(self) -> None:
                items = list(queue.drain_nowait())
                if items and isinstance(items[0], dict):
                    result.callback(items[0])
                else:
                    result.errback(ConnectionFailed("capabilities: malformed answer"))

            def failed(self, error: Exception) -> None:
                result.errback(error)

        self.call([Command(b"capabilities", {}, _One())])
        return result

    def call(self, commands: Sequence[Command]) -> None:
        def send(protocol: FrameStreamProtocol) -> None:
            protocol.send(commands)

        def failed(f: Failure) -> None:
            error = f.value if isinstance(f.value, Exception) else ConnectionFailed(str(f))
            for command in commands:
                command.sink.failed(error)

        self._connect().addCallback(send).addErrback(failed)

    def pauseProducing(self) -> None:
        self._paused = True
        if self._protocol is not None:
            self._protocol.pause_for("consumer", True)

    def resumeProducing(self) -> None:
        self._paused = False
        if self._protocol is not None:
            self._protocol.pause_for("consumer", False)

    def close(self) -> None:
        if self._protocol is not None and not self._protocol.lost:
            self._protocol.transport.loseConnection()  # type: ignore[union-attr]
            self._protocol.channel.fail_all(ConnectionFailed("connection closed by the client"))


class TCPPeer(StreamPeer):
    """A v2 server over raw TCP (see the module docs). Reactor thread only."""

    def __init__(self, reactor: Any, host: str, port: int, repo_name: str) -> None:
        super().__init__(reactor)
        self.url = f"hgwire://{host}:{port}/{repo_name}"
        self._host, self._port, self._name = host, port, repo_name

    def _open(self) -> Deferred[FrameStreamProtocol]:
        connected: Deferred[FrameStreamProtocol] = Deferred()
        factory = _Factory(self._name, connected, self._reactor)
        self._reactor.connectTCP(self._host, self._port, factory, 30)
        return connected
