"""Client glue of the revision path: decoding off the reactor thread, pipelined requests,
and the changeset summaries the server keeps between changesetdata and filesdata.

Threads are stood in for by queues the test runs by hand, so every interleaving checked
here is deterministic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from hgwire_tw.client.bridge import ObjectQueue, ThreadedRemote
from hgwire_tw.client.decoding import OffThreadDecoder
from hgwire_tw.client.http import FrameChannel
from hgwire_tw.client.peer import Command
from hgwire_tw.commands.summaries import Summaries
from hgwire_tw.core.reactor import ClientFrameReactor, DuplexMode, SendFrames, ServerFrameReactor


class _Manual:
    """A reactor (``callFromThread``) and thread pool (``callInThread``) whose calls wait
    in queues until the test runs them."""

    def __init__(self) -> None:
        self.pool: deque[Callable[[], None]] = deque()
        self.reactor_calls: deque[Callable[[], None]] = deque()

    def getThreadPool(self) -> _Manual:
        return self

    def callInThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.pool.append(lambda: f(*args))

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.reactor_calls.append(lambda: f(*args))

    def run_pool(self) -> None:
        while self.pool:
            self.pool.popleft()()

    def run_reactor(self, count: int | None = None) -> None:
        ran = 0
        while self.reactor_calls and (count is None or ran < count):
            self.reactor_calls.popleft()()
            ran += 1


class OffThreadDecoderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.manual = _Manual()
        self.delivered: list[object] = []
        self.pauses: list[bool] = []
        self.decoder = OffThreadDecoder(
            self.manual,
            self.manual,
            lambda data: data.upper(),
            self.delivered.append,
            self.pauses.append,
            high=10,
            low=4,
        )

    def test_in_order_one_job_at_a_time(self) -> None:
        """Bytes fed while a job is pending join it: one pool job, results in order."""
        for chunk in (b"a", b"b", b"c"):
            self.decoder.data(chunk)
        self.assertEqual(len(self.manual.pool), 1)
        self.manual.run_pool()
        self.assertEqual(self.delivered, [])  # nothing reaches the sinks off the reactor
        self.manual.run_reactor()
        self.assertEqual(self.delivered, [b"A", b"B", b"C"])
        self.decoder.data(b"d")
        self.assertEqual(len(self.manual.pool), 1)  # the first job gave its thread back

    def test_backlog_pauses_until_handed_over(self) -> None:
        """Above ``high`` bytes not yet handed over the channel pauses; it resumes only
        once the backlog fell below ``low`` on the reactor thread."""
        self.decoder.data(b"x" * 6)
        self.assertEqual(self.pauses, [])
        self.decoder.data(b"y" * 6)
        self.assertEqual(self.pauses, [True])
        self.manual.run_pool()  # decoded, but not handed over: still paused
        self.assertEqual(self.pauses, [True])
        self.manual.run_reactor(1)  # 6 bytes left, not below 4
        self.assertEqual(self.pauses, [True])
        self.manual.run_reactor(1)
        self.assertEqual(self.pauses, [True, False])

    def test_a_failing_step_is_handed_over_and_stop_drops_the_rest(self) -> None:
        def boom() -> object:
            raise ValueError("bad frame")

        self.decoder.call(boom)
        self.decoder.data(b"later")
        self.manual.run_pool()
        self.manual.run_reactor(1)
        [error] = self.delivered
        self.assertIsInstance(error, ValueError)
        self.decoder.stop()
        self.manual.run_reactor()
        self.decoder.data(b"after stop")
        self.manual.run_pool()
        self.manual.run_reactor()
        self.assertEqual(len(self.delivered), 1)


class _Sink:
    def __init__(self) -> None:
        self.events: list[object] = []

    def objects(self, objs: Sequence[object]) -> None:
        self.events += list(objs)

    def finished(self) -> None:
        self.events.append("finished")

    def failed(self, error: Exception) -> None:
        self.events.append(("failed", str(error)))


def _answer(client: ClientFrameReactor, objs: list[object]) -> bytes:
    """The server's bytes answering the client's first command with ``objs``."""
    rid, actions = client.call_command(b"heads", {})
    server = ServerFrameReactor(mode=DuplexMode.FULL)
    server.receive_data(b"".join(a.data for a in actions if isinstance(a, SendFrames)))
    server.end_of_input()
    out = server.response_objects(rid, objs) + server.response_end(rid)
    return b"".join(a.data for a in out if isinstance(a, SendFrames))


class FrameChannelTests(SynchronousTestCase):
    def test_objects_then_end_in_arrival_order(self) -> None:
        """Decoded on the pool, routed on the reactor thread; a clean end that arrives
        after the last bytes is handled after them (the command finished, not failed)."""
        manual = _Manual()
        client = ClientFrameReactor(encodings=(b"identity",))
        data = _answer(client, [b"one", b"two"])
        channel = FrameChannel(client, reactor=manual)
        sink = _Sink()
        channel.add(1, Command(b"heads", {}, sink))
        channel.data(data[:7])
        channel.data(data[7:])
        channel.closed(None)
        self.assertEqual(sink.events, [])
        manual.run_pool()
        manual.run_reactor()
        self.assertEqual(sink.events, [b"one", b"two", "finished"])


class _Peer:
    url = "fake:"

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def call(self, commands: Sequence[Command]) -> None:
        self.sent += [c.name for c in commands]


class PipelineTests(SynchronousTestCase):
    def test_after_waits_for_the_earlier_answer_to_arrive(self) -> None:
        """A command sent ``after`` another goes out once that answer has fully arrived
        (not when it is read): one answer at a time shares the buffers."""
        manual = _Manual()
        peer = _Peer()
        remote = ThreadedRemote(manual, peer)  # type: ignore[arg-type]
        first = remote.call(b"manifestdata", {})
        second = remote.call(b"filesdata", {}, after=first)
        manual.run_reactor()
        self.assertEqual(peer.sent, [b"manifestdata"])
        assert isinstance(first, ObjectQueue)
        first.objects([b"part"])
        self.assertEqual(peer.sent, [b"manifestdata"])
        first.finished()
        self.assertEqual(peer.sent, [b"manifestdata", b"filesdata"])
        assert isinstance(second, ObjectQueue)
        second.finished()
        self.assertEqual(list(first), [b"part"])
        self.assertEqual(list(second), [])

    def test_after_a_failed_answer_still_sends(self) -> None:
        manual = _Manual()
        peer = _Peer()
        remote = ThreadedRemote(manual, peer)  # type: ignore[arg-type]
        first = remote.call(b"manifestdata", {})
        remote.call(b"filesdata", {}, after=first)
        manual.run_reactor()
        assert isinstance(first, ObjectQueue)
        first.failed(RuntimeError("gone"))
        self.assertEqual(peer.sent, [b"manifestdata", b"filesdata"])


class SummariesTests(SynchronousTestCase):
    def test_bounded_oldest_dropped_first(self) -> None:
        store = Summaries(max_bytes=1000)
        for i in range(10):
            store.remember(bytes([i]) * 20, b"m" * 20, (b"p" * 60,))
        self.assertLess(len(store), 10)
        self.assertIsNone(store.get(b"\0" * 20))
        self.assertEqual(store.get(b"\x09" * 20), (b"m" * 20, (b"p" * 60,)))
