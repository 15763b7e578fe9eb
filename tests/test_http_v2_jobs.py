"""HTTP v2 glue: output is encoded and compressed by jobs through an injected runner,
never inline; the response ends after the last job; disconnects leave nothing running
(trial's SynchronousTestCase with a DummyRequest, no threads)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from hgwire_tw.access import AccessPolicy
from hgwire_tw.commands.registry import COMMANDS
from hgwire_tw.context import ServerContext
from hgwire_tw.core import cbor
from hgwire_tw.core.frames import (
    FRAMING_MEDIA_TYPE,
    HTTP_V2_API,
    FrameDecoder,
    FrameType,
    StreamFlag,
)
from hgwire_tw.core.reactor import (
    ClientEvent,
    ClientFrameReactor,
    ResponseError,
    ResponseFinished,
    ResponseObjects,
    ResponseRedirect,
)
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.transports import http_v2
from tests.framefakes import ManualJobs, Runner

SERVED = ServedRepository(name="repo", path=Path("/nonexistent"))
#: The largest frame payload Mercurial 6.0.3's client accepts.
HG603_MAX_PAYLOAD = 32768


class PushRequest(DummyRequest):
    """A POST that records its push producer (DummyRequest only drives pull producers)
    and refuses writes after it finished or its client left."""

    def __init__(self, body: bytes) -> None:
        super().__init__([])
        self.method = b"POST"
        self.content = io.BytesIO(body)
        self.requestHeaders.setRawHeaders(b"accept", [FRAMING_MEDIA_TYPE])
        self.requestHeaders.setRawHeaders(b"content-type", [FRAMING_MEDIA_TYPE])
        self.producer: Any = None
        self.gone = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming and self.producer is None
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        assert not self.finished and not self.gone, "write after the request ended"
        super().write(data)

    def finish(self) -> None:
        assert not self.gone
        super().finish()

    def disconnect(self) -> None:
        """The client went away (twisted.web stops the producer and fails notifyFinish)."""
        self.gone = True
        if self.producer is not None:
            self.producer.stopProducing()
        self.processingFailed(Failure(ConnectionDone()))


class HTTPV2JobTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = Runner()
        self.jobs = ManualJobs()
        self.ctx = ServerContext(
            reactor=Clock(),
            registry=None,  # type: ignore[arg-type]
            pool=None,  # type: ignore[arg-type]
            access=AccessPolicy.default(),
            runner=self.runner,
        )
        self.client = ClientFrameReactor()

    def _post(self, *names: bytes) -> PushRequest:
        body = b"".join(self.client.call_command(name, {})[1][0].data for name in names)
        request = PushRequest(body)
        url = names[0].decode() if len(names) == 1 else "multirequest"
        rest = ["api", HTTP_V2_API.decode(), "ro", url]
        result = http_v2.render_api(self.ctx, request, SERVED, rest, run_job=self.jobs)
        self.assertEqual(result, NOT_DONE_YET)
        self.assertEqual(request.responseCode, 200)
        return request

    def _events(self, request: PushRequest) -> list[ClientEvent]:
        return self.client.receive_data(b"".join(request.written))

    def test_compression_happens_in_a_job_not_inline(self) -> None:
        """A batch writes nothing until its job runs; the job's frames are compressed."""
        request = self._post(b"heads")
        data = os.urandom(64) * 2000  # compressible
        self.runner.sinks[b"heads"].objects([data])
        self.assertEqual(request.written, [])
        self.assertEqual(len(self.jobs.jobs), 1)
        self.jobs.finish()
        self.runner.complete(b"heads")
        self.jobs.finish_all()
        self.assertLess(sum(map(len, request.written)), len(data) // 4)
        self.assertEqual(
            self._events(request),
            [ResponseObjects(request_id=1, objects=(data,)), ResponseFinished(request_id=1)],
        )

    def test_response_ends_only_after_the_last_job(self) -> None:
        """The command finishing leaves the request open until its eos job is written."""
        request = self._post(b"heads")
        self.runner.complete(b"heads")
        self.assertEqual(request.finished, 0)
        self.assertIsNotNone(request.producer)
        self.jobs.finish()
        self.assertEqual(request.finished, 1)
        self.assertIsNone(request.producer)
        self.assertEqual(self._events(request)[-1], ResponseFinished(request_id=1))

    def test_batch_waits_for_its_job_and_for_the_client(self) -> None:
        """A batch's Deferred fires after its job is written and the client reads again."""
        request = self._post(b"heads")
        request.producer.pauseProducing()
        fired: list[object] = []
        waiting = self.runner.sinks[b"heads"].objects([os.urandom(300_000)])
        self.assertIsInstance(waiting, Deferred)
        waiting.addCallback(fired.append)
        self.jobs.finish()
        self.assertNotEqual(request.written, [])
        self.assertEqual(fired, [])
        request.producer.resumeProducing()
        self.assertEqual(fired, [None])

    def test_multirequest_answers_each_command_in_order(self) -> None:
        """Several commands of one POST run one after another and all end on one stream."""
        request = self._post(b"heads", b"branchmap")
        self.assertEqual(list(self.runner.sinks), [b"heads"])
        self.runner.sinks[b"heads"].objects([b"from a"])
        self.runner.complete(b"heads")
        self.runner.sinks[b"branchmap"].objects([b"from b"])
        self.assertEqual(len(self.jobs.jobs), 1)  # b's job waits behind a's on the stream
        self.runner.complete(b"branchmap")
        self.jobs.finish_all()
        self.assertEqual(request.finished, 1)
        events = self._events(request)
        self.assertEqual(
            events,
            [
                ResponseObjects(request_id=1, objects=(b"from a",)),
                ResponseFinished(request_id=1),
                ResponseObjects(request_id=3, objects=(b"from b",)),
                ResponseFinished(request_id=3),
            ],
        )
        self.assertEqual({job.stream_id for job in self.jobs.ran}, {2})

    def test_the_runners_table_says_which_commands_exist(self) -> None:
        """The URL's command and the framed ones are looked up in the runner's command
        table: one that table lacks is unknown (404, or an error in a multirequest),
        even when the default table has it."""
        heads = self.client.call_command(b"heads", {})[1][0].data
        only_branchmap = {b"branchmap": COMMANDS[b"branchmap"]}
        self.runner.spec = only_branchmap.get  # type: ignore[method-assign]
        for url, expected in [("heads", 404), ("multirequest", 200)]:
            request = PushRequest(heads)
            rest = ["api", HTTP_V2_API.decode(), "ro", url]
            http_v2.render_api(self.ctx, request, SERVED, rest, run_job=self.jobs)
            self.assertEqual(request.responseCode, expected)
            body = b"".join(request.written)
            self.assertIn(b"heads", body)
            self.assertIn(b"unknown" if expected == 404 else b"not available", body)
        self.assertEqual(self.runner.sinks, {})

    def test_frames_fit_the_603_client(self) -> None:
        """Big batches come out in frames of at most 32 KiB, stream settings first."""
        request = self._post(b"heads")
        self.runner.sinks[b"heads"].objects([os.urandom(300_000)])
        self.runner.complete(b"heads")
        self.jobs.finish_all()
        frames = FrameDecoder().feed(b"".join(request.written))
        self.assertLessEqual(max(len(f.payload) for f in frames), HG603_MAX_PAYLOAD)
        first_encoded = next(i for i, f in enumerate(frames) if f.stream_flags & StreamFlag.ENCODED)
        settings = [i for i, f in enumerate(frames) if f.type is FrameType.STREAM_SETTINGS]
        self.assertEqual(len(settings), 1)
        self.assertLess(settings[0], first_encoded)

    def test_cache_hit_is_sent_through_a_job(self) -> None:
        """Pre-encoded bytes (a cache hit) also wait for their job and arrive unchanged."""
        request = self._post(b"heads")
        waiting = self.runner.sinks[b"heads"].encoded(cbor.dumps(b"cached") + cbor.dumps(7))
        self.assertIsInstance(waiting, Deferred)
        self.assertEqual(request.written, [])
        self.runner.complete(b"heads")
        self.jobs.finish_all()
        self.assertEqual(
            self._events(request),
            [ResponseObjects(request_id=1, objects=(b"cached", 7)), ResponseFinished(request_id=1)],
        )

    def test_errors_before_and_after_output_and_redirects(self) -> None:
        """An error or a redirect goes out through a job and ends the response."""
        request = self._post(b"heads", b"branchmap", b"known")
        self.runner.sinks[b"heads"].error(b"no such thing: %s", [b"x"])
        self.runner.results[b"heads"].callback(None)
        self.runner.sinks[b"branchmap"].objects([b"partial"])
        self.runner.sinks[b"branchmap"].error(b"broke")
        self.runner.results[b"branchmap"].callback(None)
        self.runner.sinks[b"known"].redirect({b"targets": [b"t"], b"url": b"http://x/"})
        self.runner.results[b"known"].callback(None)
        self.assertEqual(request.finished, 0)
        self.jobs.finish_all()
        self.assertEqual(request.finished, 1)
        ends = [e for e in self._events(request) if not isinstance(e, ResponseObjects)]
        self.assertEqual([type(e) for e in ends], [ResponseError, ResponseError, ResponseRedirect])

    def test_disconnect_with_a_job_pending(self) -> None:
        """A client leaving while a job runs cancels the command; the job writes nothing."""
        request = self._post(b"heads", b"branchmap")
        self.runner.sinks[b"heads"].objects([b"x" * 1000])
        request.disconnect()
        self.assertEqual(self.runner.cancelled, [b"heads"])
        self.jobs.finish()  # a worker finishing after the client left
        self.assertEqual(request.written, [])
        self.assertEqual(self.jobs.jobs, [])
        self.assertEqual(list(self.runner.sinks), [b"heads"])  # b never starts
        self.assertEqual(request.finished, 0)

    def test_disconnect_while_paused_after_the_job(self) -> None:
        """A batch waiting for the client when it leaves is cancelled, nothing more runs."""
        request = self._post(b"heads")
        request.producer.pauseProducing()
        waiting = self.runner.sinks[b"heads"].objects([b"x"])
        self.jobs.finish()
        written = list(request.written)
        request.disconnect()
        self.assertEqual(self.runner.cancelled, [b"heads"])
        self.assertFalse(self.jobs.jobs)
        self.assertEqual(request.written, written)
        self.assertTrue(waiting.called)
        self.assertRaises(CancelledError, self.runner.sinks[b"heads"].objects, [b"more"])
