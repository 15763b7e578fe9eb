"""Running a frame reactor's encoding jobs off the reactor thread, for every v2 transport.

A ``ServerFrameReactor(encoding_jobs=True)`` answers output calls with ``EncodeJob`` s
instead of frames (see the essay in ``hgwire_tw/core/reactor.py``). :class:`JobPump` is
the glue every v2 connection (the SSH subsystem and raw TCP through ``FrameSession``,
and HTTP v2) uses for them: it runs each job through a :data:`JobRunner` (a worker
thread by default), writes the frames the job returns, tells the reactor the job is
done and passes on the stream's next job. :class:`JobSink` is the command runner's sink
on such a connection: a batch's Deferred fires only once its job's frames are written
and the connection has room again, so at most one batch per running command is queued.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from hgwire_tw.core.reactor import EncodeJob, SendFrames, ServerAction, ServerFrameReactor
from hgwire_tw.transports.framesink import FrameConnection, FrameSink

__all__ = [
    "JobOutput",
    "JobPump",
    "JobRunner",
    "JobSink",
    "inline_job_runner",
    "threaded_job_runner",
]

log = Logger()

#: Runs an encoding job somewhere; fires with what ``job.run()`` returned.
JobRunner = Callable[[EncodeJob], "Deferred[SendFrames | None]"]


def threaded_job_runner(reactor: Any) -> JobRunner:
    """Run jobs on ``reactor``'s thread pool (not the repository pool: its workers wait
    for our output, so sharing it could deadlock)."""

    def run(job: EncodeJob) -> Deferred[SendFrames | None]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), job.run)

    return run


def inline_job_runner(job: EncodeJob) -> Deferred[SendFrames | None]:
    """Run a job right away on the calling thread (tests, single-core setups)."""
    return maybeDeferred(job.run)


class JobOutput(Protocol):
    """Where a :class:`JobPump` writes (a ``FrameChannel``, an HTTP v2 response)."""

    def write(self, data: bytes) -> None:
        """Send ``data`` to the peer."""

    def drained(self) -> Deferred[None] | None:
        """None while the peer is reading; else a Deferred firing once it is again."""


class JobPump:
    """Runs the encoding jobs of one connection's frame reactor and writes their frames.

    The frames go to ``output``; ``then(actions)`` gets the reactor's actions after each
    job (the stream's next job, to hand back to :meth:`start`) and lets the connection
    check whether it is done; ``label`` names the connection in log lines. Everything
    runs on the reactor thread except ``job.run()``. After :meth:`stop` nothing more is
    written or reported.
    """

    def __init__(
        self,
        frames: ServerFrameReactor,
        run_job: JobRunner,
        output: JobOutput,
        then: Callable[[Sequence[ServerAction]], None],
        label: str,
    ) -> None:
        self.stopped = False
        self._written: dict[int, list[Deferred[None]]] = {}
        self.frames = frames
        self.run_job = run_job
        self.output = output
        self.then = then
        self.label = label

    def start(self, job: EncodeJob) -> None:
        """Run ``job`` (an ``EncodeJob`` the reactor handed out)."""
        self.run_job(job).addBoth(self._ran, job)

    def _ran(self, result: SendFrames | Failure | None, job: EncodeJob) -> None:
        if self.stopped:
            return  # the peer is gone: a job finishing now writes nothing
        if isinstance(result, Failure):
            # A bug (e.g. an object CBOR refuses): the stream is untouched, the command
            # hears of it through its batch and reports a server error.
            log.failure("{label}: encoding failed", result, label=self.label)
        elif result is not None:
            self.output.write(result.data)
        more = self.frames.job_done(job)
        if not self.frames.output_pending(job.request_id):
            for d in self._written.pop(job.request_id, []):
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)
        self.then(more)

    def output_written(self, request_id: int) -> Deferred[None]:
        """Fires once ``request_id``'s queued output is written and the peer reads."""
        d: Deferred[None] = Deferred()
        self._written.setdefault(request_id, []).append(d)
        d.addCallback(lambda _: None if self.stopped else self.output.drained())
        return d

    def after(self, request_id: int, waiting: Deferred[None] | None) -> Deferred[None] | None:
        """What a batch of ``request_id`` waits for: its job's frames, else ``waiting``."""
        if not self.stopped and self.frames.output_pending(request_id):
            return self.output_written(request_id)
        return waiting

    def stop(self) -> None:
        """The connection is over: ignore jobs still running, write nothing more.

        Batches still waiting are not fired; the connection cancels their commands.
        """
        self.stopped = True
        self._written.clear()


class JobSink(FrameSink):
    """``FrameSink`` whose batches wait until their encoding job is written."""

    def __init__(
        self,
        connection: FrameConnection,
        pump: JobPump,
        request_id: int,
        stream_id: int | None = None,
    ) -> None:
        super().__init__(connection, request_id, stream_id)
        self.pump = pump

    def objects(self, objs: list[object]) -> Deferred[None] | None:
        return self.pump.after(self.request_id, super().objects(objs))

    def encoded(self, data: bytes) -> Deferred[None] | None:
        return self.pump.after(self.request_id, super().encoded(data))
