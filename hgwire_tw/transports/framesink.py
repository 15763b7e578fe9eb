"""The command runner's sink for transports that speak v2 frames.

HTTP v2, the SSH ``hgwire`` subsystem and raw TCP all run commands the same way: the
runner hands a request's output to a sink, the sink turns it into frames through the
connection's ``ServerFrameReactor``, and the connection writes them, answering with a
Deferred while its peer is not reading (back-pressure). Only the connection differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred

from hgwire_tw.core.reactor import ServerFrameReactor


class FrameConnection(Protocol):
    """What a ``FrameSink`` writes through."""

    #: True once the peer is gone or the connection was closed.
    done: bool
    #: The connection's frame reactor (None before it exists).
    frames: ServerFrameReactor | None

    def execute(self, actions: Sequence[object]) -> Deferred[None] | None:
        """Carry out frame-reactor actions; a Deferred while the peer is not reading."""


class FrameSink:
    """``CommandRunner`` sink for one request id on one connection.

    ``stream_id`` picks the output stream (None: the reactor's default stream).
    """

    def __init__(
        self, connection: FrameConnection, request_id: int, stream_id: int | None = None
    ) -> None:
        self.connection = connection
        self.request_id = request_id
        self.stream_id = stream_id

    def _frames(self) -> ServerFrameReactor:
        # Raising stops the command's generator: nobody is left to read its output.
        if self.connection.done or self.connection.frames is None:
            raise CancelledError()
        return self.connection.frames

    def _output(self, actions: Sequence[object]) -> Deferred[None] | None:
        waiting = self.connection.execute(actions)
        if self.connection.done:
            raise CancelledError()
        return waiting

    def objects(self, objs: list[object]) -> Deferred[None] | None:
        return self._output(
            self._frames().response_objects(self.request_id, objs, stream_id=self.stream_id)
        )

    def encoded(self, data: bytes) -> Deferred[None] | None:
        """Pre-encoded CBOR objects (a cache hit): frames without the ENCODED flag, so
        stored bytes are not compressed again."""
        return self._output(
            self._frames().response_raw(
                self.request_id, data, encode=False, stream_id=self.stream_id
            )
        )

    def error(self, message: bytes, args: Sequence[bytes] = ()) -> None:
        if not self.connection.done:
            self.connection.execute(self._frames().response_error(self.request_id, message, args))

    def redirect(self, location: Mapping[bytes, Any]) -> None:
        if not self.connection.done:
            self.connection.execute(self._frames().response_redirect(self.request_id, location))

    def finished(self) -> None:
        if not self.connection.done:
            self.connection.execute(self._frames().response_end(self.request_id))
