"""FrameSession glue: encoding jobs through an injected runner, back-pressure, EOF and
disconnects while jobs are in flight (trial's SynchronousTestCase, no threads)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hgwire_tw.context import ServerContext
from hgwire_tw.core.reactor import ClientFrameReactor, ResponseFinished
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.transports.framesession import FrameSession, SessionLimits, SessionRefused
from tests.framefakes import ManualJobs, Runner

SERVED = ServedRepository(name="repo", path=Path("/nonexistent"))


class Channel:
    """A ``FrameChannel`` recording output; ``full`` makes ``drained`` wait."""

    def __init__(self) -> None:
        self.data = b""
        self.status: int | None = None
        self.full: Deferred[None] | None = None

    def write(self, data: bytes) -> None:
        assert self.status is None
        self.data += data

    def drained(self) -> Deferred[None] | None:
        return self.full

    def finish(self, status: int) -> None:
        self.status = status

    def abort(self) -> None:
        self.status = -1


def _open(name: str) -> tuple[ServedRepository, bool]:
    if name != "repo":
        raise SessionRefused("no such repository")
    return SERVED, False


class FrameSessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = Runner()
        self.jobs = ManualJobs()
        self.channel = Channel()
        ctx = ServerContext(
            reactor=Clock(),
            registry=None,  # type: ignore[arg-type]
            pool=None,  # type: ignore[arg-type]
            access=None,  # type: ignore[arg-type]
            runner=self.runner,
        )
        self.session = FrameSession(
            ctx,
            self.channel,
            _open,
            label="test",
            limits=SessionLimits(streams=2),
            run_job=self.jobs,
        )
        self.client = ClientFrameReactor()

    def _start(self, *names: bytes) -> None:
        wire = b"hgwire-v2 repo\n"
        for name in names:
            wire += self.client.call_command(name, {})[1][0].data
        self.session.dataReceived(wire)
        self.assertEqual(self.channel.data, b"ok\n")
        self.channel.data = b""

    def test_refusal(self) -> None:
        """An unknown repository gets an error line and status 1."""
        self.session.dataReceived(b"hgwire-v2 other\n")
        self.assertEqual(self.channel.data, b"error no such repository\n")
        self.assertEqual(self.channel.status, 1)

    def test_stalled_command_cuts_the_connection(self) -> None:
        """A command ended by the pool's stall timeout (the peer stopped reading) cuts the
        connection at once and cancels the session's other commands, without a
        traceback."""
        from hgwire_tw.repo.pool import StreamStalled

        self._start(b"a", b"b")
        self.runner.results[b"a"].errback(StreamStalled(30))
        self.assertEqual(self.channel.status, -1)
        self.assertEqual(self.runner.cancelled, [b"b"])
        self.assertTrue(self.session.done)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_batch_waits_until_its_job_is_written(self) -> None:
        """A command's batch Deferred fires only after its encoding job's frames are out."""
        self._start(b"a")
        waiting = self.runner.sinks[b"a"].objects([b"x" * 1000])
        self.assertIsInstance(waiting, Deferred)
        fired: list[object] = []
        waiting.addCallback(fired.append)
        self.assertEqual(fired, [])
        self.jobs.finish()
        self.assertEqual(fired, [None])

    def test_batch_also_waits_for_a_full_channel(self) -> None:
        """After its job is written, a batch still waits while the channel is full."""
        self._start(b"a")
        self.channel.full = Deferred()
        fired: list[object] = []
        self.runner.sinks[b"a"].objects([b"x"]).addCallback(fired.append)
        self.jobs.finish()
        self.assertEqual(fired, [])
        full, self.channel.full = self.channel.full, None
        full.callback(None)
        self.assertEqual(fired, [None])

    def test_streams_finish_out_of_order_and_still_decode(self) -> None:
        """Jobs of two streams completing in reverse order still decode per request."""
        self._start(b"a", b"b")
        self.runner.sinks[b"a"].objects([b"from a"])
        self.runner.sinks[b"b"].objects([b"from b"])
        self.assertEqual({j.stream_id for j, _ in self.jobs.jobs}, {2, 4})
        self.jobs.finish(1)
        self.jobs.finish(0)
        self.runner.complete(b"b")
        self.runner.complete(b"a")
        while self.jobs.jobs:
            self.jobs.finish(len(self.jobs.jobs) - 1)
        events = self.client.receive_data(self.channel.data)
        self.assertIn(ResponseFinished(request_id=1), events)
        self.assertIn(ResponseFinished(request_id=3), events)

    def test_eof_waits_for_the_last_jobs(self) -> None:
        """After EOF the session finishes only once the final frames are encoded and written."""
        self._start(b"a")
        self.session.eofReceived()
        self.runner.complete(b"a")
        self.assertIsNone(self.channel.status)
        self.assertTrue(self.session.busy)
        self.jobs.finish()
        self.assertEqual(self.channel.status, 0)
        self.assertEqual(
            self.client.receive_data(self.channel.data)[-1], ResponseFinished(request_id=1)
        )

    def test_disconnect_with_a_job_in_flight(self) -> None:
        """A job finishing after the peer left writes nothing and the command is cancelled."""
        self._start(b"a")
        self.runner.sinks[b"a"].objects([b"x"])
        self.session.connectionLost()
        self.assertTrue(self.runner.results[b"a"].called)  # cancelled
        self.jobs.finish()
        self.assertEqual(self.channel.data, b"")

    def test_encoding_failure_fails_the_batch(self) -> None:
        """Objects CBOR refuses fail the batch's Deferred (the runner then reports it)."""
        self._start(b"a")
        waiting = self.runner.sinks[b"a"].objects(["text"])
        self.jobs.finish()
        self.failureResultOf(waiting)
        self.flushLoggedErrors()
        self.assertFalse(self.session.frames is not None and self.session.frames.jobs_pending)
