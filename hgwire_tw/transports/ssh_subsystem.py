"""The ``hgwire`` SSH subsystem: v2 frames, full duplex, through the frame reactor.

``ssh -s host hgwire`` opens it. The client first names the repository with the
preamble of ``hgwire_tw.core.preamble`` (``hgwire-v2 <name>\\n`` → ``ok\\n``); the
repository must exist and be readable by the logged-in user, else the answer is
``error <message>\\n`` and exit status 1. After ``ok`` both sides exchange frames: a
``ServerFrameReactor(mode=FULL)`` announces each command as soon as its request is
complete, the ``CommandRunner`` runs several at once (push commands only for users who
may write), and their frames are written as they come, each command's producer waiting
while the channel window is full.

When the client sends EOF, commands in flight still finish; then the session ends with
exit status 0. A protocol failure ends it with status 1 (the reactor has already queued
an error frame). If the channel goes away, every running command is cancelled.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from hgwire_tw.context import ServerContext
from hgwire_tw.core.errors import ProtocolError
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
from hgwire_tw.transports.ssh_command import ExecRefused
from hgwire_tw.transports.ssh_v1 import SessionOutput

__all__ = ["FrameSubsystemSession"]

log = Logger()


class FrameSubsystemSession:
    """One ``hgwire`` subsystem session for ``user``."""

    def __init__(
        self, ctx: ServerContext, output: SessionOutput, user: str, peer_host: str = ""
    ) -> None:
        self.ctx = ctx
        self.output = output
        self.user = user
        self.peer_host = peer_host
        self.preamble: PreambleParser | None = PreambleParser()
        self.served: ServedRepository | None = None
        self.frames: ServerFrameReactor | None = None
        self.may_push = False
        self.running: dict[int, Deferred[None]] = {}
        self.input_closed = False
        self.done = False

    # -- input --------------------------------------------------------------------------

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
            if not data:
                return
        assert self.frames is not None
        self.execute(self.frames.receive_data(data))

    def eofReceived(self) -> None:
        if self.done:
            return
        self.input_closed = True
        if self.frames is None:
            self._finish(1)
            return
        self.execute(self.frames.end_of_input())
        self._maybe_finish()

    def connectionLost(self) -> None:
        self.done = True
        running, self.running = self.running, {}
        for request_id, d in running.items():
            if self.frames is not None:
                self.frames.request_cancelled(request_id)
            d.cancel()

    # -- the preamble -------------------------------------------------------------------

    def _open(self, name: str) -> bool:
        from hgwire_tw.transports.ssh_session import open_repository

        try:
            self.served = open_repository(self.ctx, self.user, name)
        except ExecRefused as e:
            self._refuse(str(e))
            return False
        self.may_push = self.ctx.access.can_write(self.user, self.served.name)
        self.frames = ServerFrameReactor(
            mode=DuplexMode.FULL, encodings=self.ctx.settings.v2_encodings
        )
        log.info("SSH hgwire subsystem: {user} on {repo!r}", user=self.user, repo=self.served.name)
        self.output.write(encode_ok())
        return True

    def _refuse(self, message: str) -> None:
        log.info("SSH hgwire subsystem refused for {user}: {why}", user=self.user, why=message)
        self.output.write(encode_error(message))
        self._finish(1)

    # -- actions ------------------------------------------------------------------------

    def execute(self, actions: Sequence[object]) -> Deferred[None] | None:
        """Carry out the reactor's actions; a Deferred while the channel is full."""
        for action in actions:
            if isinstance(action, SendFrames):
                self.output.write(action.data)
            elif isinstance(action, RunCommand):
                self._run(action)
            elif isinstance(action, ProtocolFailure):
                log.info("hgwire subsystem protocol failure: {why}", why=action.message)
                self._finish(1)
            elif isinstance(action, CloseConnection):
                self._finish(0)
        if self.done:
            return None
        return self.output.drained()

    def _run(self, action: RunCommand) -> None:
        if self.done:
            return
        assert self.served is not None
        sink = FrameSink(self, action.request_id)
        d = self.ctx.runner.run(
            self.served,
            action.name,
            action.args,
            may_push=self.may_push,
            sink=sink,
            redirect=action.redirect,
        )
        self.running[action.request_id] = d
        d.addBoth(self._command_over, action.request_id)

    def _command_over(self, result: object, request_id: int) -> None:
        self.running.pop(request_id, None)
        if isinstance(result, Failure) and not result.check(CancelledError):
            log.failure("hgwire subsystem command failed", result)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.input_closed and not self.running and not self.done:
            self._finish(0)

    def _finish(self, status: int) -> None:
        if self.done:
            return
        self.connectionLost()
        self.output.finish(status)
