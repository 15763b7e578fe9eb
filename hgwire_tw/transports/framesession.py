"""A repository preamble, then a full-duplex v2 frame session: SSH subsystem and raw TCP.

Both the ``hgwire`` SSH subsystem and the raw TCP port speak the same session: the
client names a repository with the preamble of :mod:`hgwire_tw.core.preamble`
(``hgwire-v2 <name>\\n`` → ``ok\\n`` or ``error <message>\\n``), then both sides exchange
frames through a ``ServerFrameReactor(mode=FULL, encoding_jobs=True)``. Each complete
request runs through the ``CommandRunner`` while more arrive; several run at once.
:class:`FrameSession` is that session; the transport supplies a :class:`FrameChannel`
(where bytes go, whether the peer is reading, how to close) and a function that opens
the named repository for the logged-in user (or refuses).

Output. Responses are spread round-robin over ``limits.streams`` output streams, each
with its own compression context. The CBOR encoding and compression of a stream's
output run as ``EncodeJob`` s through ``run_job`` (by default on the reactor's thread
pool), driven by the :class:`~hgwire_tw.transports.jobpump.JobPump` HTTP v2 shares:
the reactor hands out at most one job per stream at a time, in order, so two streams
compress on two cores while each stream's bytes stay in order. A command's next batch
waits until its previous batch is encoded and written and the channel is not full
(back-pressure: at most one batch per running command is ever queued).

Input. With ``limits.max_in_flight`` set, at most that many commands run at once;
complete requests beyond that wait in a queue and reading is paused (``ReadControl``)
until one finishes. End of input: commands in flight still finish, then the channel is
finished with status 0. A protocol failure (the reactor has queued an error frame)
finishes it with status 1. If the peer goes away, every running command is cancelled.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from hgwire_tw.context import ServerContext
from hgwire_tw.core.errors import ProtocolError
from hgwire_tw.core.preamble import PreambleParser, encode_error, encode_ok
from hgwire_tw.core.reactor import (
    DEFAULT_MAX_REQUESTS_IN_FLIGHT,
    CloseConnection,
    DuplexMode,
    EncodeJob,
    ProtocolFailure,
    RunCommand,
    SendFrames,
    ServerAction,
    ServerFrameReactor,
)
from hgwire_tw.repo.pool import StreamStalled
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.transports.jobpump import (
    JobPump,
    JobRunner,
    JobSink,
    inline_job_runner,
    threaded_job_runner,
)

__all__ = [
    "FrameChannel",
    "FrameSession",
    "JobRunner",
    "ReadControl",
    "SessionLimits",
    "SessionRefused",
    "inline_job_runner",
    "threaded_job_runner",
]

log = Logger()


class SessionRefused(Exception):
    """The named repository may not be served to this peer; the message says why."""


class FrameChannel(Protocol):
    """Where a session writes: an SSH channel or a TCP connection."""

    def write(self, data: bytes) -> None:
        """Send ``data`` (buffered by the channel while the peer is not reading)."""

    def drained(self) -> Deferred[None] | None:
        """None while the peer is reading; else a Deferred firing once it is again."""

    def finish(self, status: int) -> None:
        """Close after the buffered output; ``status`` 0 = done, 1 = refused/failed."""

    def abort(self) -> None:
        """Cut the connection now, dropping the buffered output (the peer stopped
        reading)."""


class ReadControl(Protocol):
    """Stops and restarts reading the peer (needed with ``max_in_flight``)."""

    def pauseProducing(self) -> None:
        """Stop reading."""

    def resumeProducing(self) -> None:
        """Read again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionLimits:
    """Per-session limits."""

    #: Output streams (compression contexts) responses are spread over.
    streams: int = 1
    #: Commands running at once (None: no limit besides the reactor's request limit).
    max_in_flight: int | None = None
    #: Requests the frame reactor accepts at once (receiving, waiting or running).
    max_requests: int = DEFAULT_MAX_REQUESTS_IN_FLIGHT


class FrameSession:
    """One preamble-then-frames session (see the module docs).

    ``open_repository(name)`` returns the repository and whether this peer may push,
    or raises :class:`SessionRefused`. ``label`` names the transport in log lines.
    ``on_activity`` is called when input arrives or a command finishes.
    """

    #: The transport label of this session's metrics (the SSH subsystem says ``ssh``).
    transport = "tcp"

    def __init__(
        self,
        ctx: ServerContext,
        channel: FrameChannel,
        open_repository: Callable[[str], tuple[ServedRepository, bool]],
        *,
        label: str,
        limits: SessionLimits = SessionLimits(),
        run_job: JobRunner | None = None,
        reading: ReadControl | None = None,
        on_activity: Callable[[], None] | None = None,
    ) -> None:
        if limits.max_in_flight is not None and reading is None:
            raise ValueError("max_in_flight needs a ReadControl")
        self.ctx = ctx
        self.channel = channel
        self.open_repository = open_repository
        self.label = label
        self.limits = limits
        self.run_job = run_job if run_job is not None else threaded_job_runner(ctx.reactor)
        self.reading = reading
        self.on_activity = on_activity
        self.preamble: PreambleParser | None = PreambleParser()
        self.served: ServedRepository | None = None
        self.may_push = False
        self.frames: ServerFrameReactor | None = None
        self.stream_ids: list[int] = []
        self.next_stream = 0
        self.running: dict[int, Deferred[None]] = {}
        self.waiting: deque[RunCommand] = deque()
        self.pump: JobPump | None = None
        self.reading_paused = False
        self.input_closed = False
        self.status = 0
        self.done = False

    @property
    def opened(self) -> bool:
        """Whether the preamble was answered ``ok``."""
        return self.frames is not None

    @property
    def busy(self) -> bool:
        """Whether commands are running or waiting to run, or output is being encoded."""
        jobs = self.frames is not None and self.frames.jobs_pending
        return bool(self.running or self.waiting or jobs)

    # -- input --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the peer: the preamble first, then frames."""
        if self.done:
            return
        if self.preamble is not None:
            try:
                request = self.preamble.feed(data)
            except ProtocolError as e:
                self.refuse(str(e))
                return
            if request is None:
                return
            self.preamble = None
            if not self._open(request.name):
                return
            data = request.rest
        self._activity()
        if data:
            assert self.frames is not None
            self.execute(self.frames.receive_data(data))

    def eofReceived(self) -> None:
        """The peer sent everything: answer what was asked, then finish."""
        if self.done:
            return
        self.input_closed = True
        if self.frames is None:
            self.close(1)
            return
        self.execute(self.frames.end_of_input())
        self._maybe_finish()

    def connectionLost(self) -> None:
        """The peer is gone: cancel every running command."""
        self.done = True
        self.waiting.clear()
        if self.pump is not None:
            self.pump.stop()
        running, self.running = self.running, {}
        for request_id, d in running.items():
            if self.frames is not None:
                self.frames.request_cancelled(request_id)
            d.cancel()

    # -- the preamble -------------------------------------------------------------------

    def _open(self, name: str) -> bool:
        try:
            self.served, self.may_push = self.open_repository(name)
        except SessionRefused as e:
            self.refuse(str(e))
            return False
        self.frames = ServerFrameReactor(
            mode=DuplexMode.FULL,
            encodings=self.ctx.settings.v2_encodings,
            max_requests_in_flight=self.limits.max_requests,
            encoding_jobs=True,
        )
        self.stream_ids = [self.frames.open_stream() for _ in range(max(1, self.limits.streams))]
        self.pump = JobPump(self.frames, self.run_job, self.channel, self._job_over, self.label)
        log.info("{label}: serving {repo!r}", label=self.label, repo=self.served.name)
        self.channel.write(encode_ok())
        return True

    def refuse(self, message: str) -> None:
        """Answer the preamble with ``error <message>`` and finish with status 1."""
        log.info("{label} refused: {why}", label=self.label, why=message)
        self.channel.write(encode_error(message))
        self.close(1)

    # -- actions ------------------------------------------------------------------------

    def execute(self, actions: Sequence[object]) -> Deferred[None] | None:
        """Carry out the reactor's actions; a Deferred while the channel is full."""
        for action in actions:
            if self.done:
                break
            if isinstance(action, SendFrames):
                self.channel.write(action.data)
            elif isinstance(action, EncodeJob):
                assert self.pump is not None
                self.pump.start(action)
            elif isinstance(action, RunCommand):
                self.waiting.append(action)
            elif isinstance(action, ProtocolFailure):
                log.info("{label} protocol failure: {why}", label=self.label, why=action.message)
                self.status = 1
            elif isinstance(action, CloseConnection):
                self.close(self.status)
        self._start_waiting()
        return None if self.done else self.channel.drained()

    def _job_over(self, more: Sequence[ServerAction]) -> None:
        self.execute(more)
        self._maybe_finish()

    def _start_waiting(self) -> None:
        limit = self.limits.max_in_flight
        while self.waiting and not self.done and (limit is None or len(self.running) < limit):
            self._run(self.waiting.popleft())
        if self.reading is None:
            return
        want_pause = bool(self.waiting) and not self.done
        if want_pause != self.reading_paused and not self.done:
            self.reading_paused = want_pause
            if want_pause:
                self.reading.pauseProducing()
            else:
                self.reading.resumeProducing()

    def _run(self, action: RunCommand) -> None:
        assert self.served is not None
        stream_id = self.stream_ids[self.next_stream % len(self.stream_ids)]
        self.next_stream += 1
        assert self.pump is not None
        sink = JobSink(self, self.pump, action.request_id, stream_id)
        # The one place a frame session starts a command.
        d = self.ctx.runner.run(
            self.served,
            action.name,
            action.args,
            may_push=self.may_push,
            sink=sink,
            redirect=action.redirect,
            who=self.label,
        )
        self.running[action.request_id] = d
        d.addBoth(
            self.ctx.metrics.command(
                self.served.name, self.transport, "v2", action.name, action.args
            )
        )
        d.addBoth(self._command_over, action.request_id)

    def _command_over(self, result: object, request_id: int) -> None:
        self.running.pop(request_id, None)
        if isinstance(result, Failure) and isinstance(result.value, StreamStalled):
            # The peer stopped reading (logged by the runner): nothing more can reach it.
            if not self.done:
                self.connectionLost()
                self.channel.abort()
            return
        if isinstance(result, Failure) and not isinstance(result.value, CancelledError):
            log.failure("{label}: command failed", result, label=self.label)
        if not self.done:
            self._activity()
            self._start_waiting()
            self._maybe_finish()

    def _activity(self) -> None:
        if self.on_activity is not None:
            self.on_activity()

    def _maybe_finish(self) -> None:
        if self.input_closed and not self.busy and not self.done:
            self.close(0)

    def close(self, status: int) -> None:
        """End the session now: cancel what runs, finish the channel with ``status``."""
        if self.done:
            return
        self.connectionLost()
        self.channel.finish(status)
