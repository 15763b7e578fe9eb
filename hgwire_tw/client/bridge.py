"""Between the reactor thread (network) and the worker thread (Mercurial).

The pull logic (:mod:`hgwire_tw.client.pull`) is plain blocking code on one worker
thread, which owns every Mercurial object. It sees the server as a :class:`Remote`:
``call(name, args)`` returns an iterator of output objects. :class:`ThreadedRemote`
implements that over a :class:`~hgwire_tw.client.peer.Peer`: commands are started on the
reactor thread, and their objects come back through a bounded :class:`ObjectQueue`; when
too many bytes wait in the queues, the peer is paused until the worker catches up.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, Protocol

from twisted.internet.threads import blockingCallFromThread

from hgwire_tw.client.peer import Command, ConnectionFailed, Peer
from hgwire_tw.client.redirects import RedirectingSink, redirect_request
from hgwire_tw.core.cbor import CBORSequenceDecoder, IndefiniteChunk

__all__ = ["ObjectQueue", "Remote", "ThreadedRemote"]

#: Pause reading from the server above this many queued bytes; resume below LOW.
HIGH_WATER = 16 * 1024 * 1024
LOW_WATER = 4 * 1024 * 1024


class Remote(Protocol):
    """The server as the pull logic sees it (worker thread, blocking)."""

    url: str

    def capabilities(self) -> dict[bytes, Any]:
        """The v2 capabilities descriptor."""

    def call(
        self,
        name: bytes,
        args: Mapping[bytes, object],
        *,
        after: Iterator[object] | None = None,
    ) -> Iterator[object]:
        """Run one command; iterate over its output objects (errors raise).

        ``after``: an answer of an earlier call; this command is sent once that answer
        has fully arrived (pipelining without letting two answers share the buffers).
        """

    def call_many(
        self, commands: Sequence[tuple[bytes, Mapping[bytes, object]]]
    ) -> list[Iterator[object]]:
        """Run several commands at once; consume the iterators in order."""


def _size(obj: object) -> int:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return len(obj) + 16
    if isinstance(obj, IndefiniteChunk):
        return len(obj.data) + 16
    return 64


class _FlowControl:
    """Counts bytes waiting in all queues of one peer; pauses and resumes it."""

    def __init__(self, reactor: Any, peer: Peer) -> None:
        self._reactor = reactor
        self._peer = peer
        self._lock = threading.Lock()
        self._queued = 0
        self._paused = False

    def added(self, n: int) -> None:
        """Reactor thread: ``n`` bytes were queued."""
        with self._lock:
            self._queued += n
            pause = not self._paused and self._queued > HIGH_WATER
            if pause:
                self._paused = True
        if pause:
            self._peer.pauseProducing()

    def taken(self, n: int) -> None:
        """Worker thread: ``n`` bytes were consumed."""
        with self._lock:
            self._queued -= n
            resume = self._paused and self._queued < LOW_WATER
            if resume:
                self._paused = False
        if resume:
            self._reactor.callFromThread(self._peer.resumeProducing)


_END = object()
#: Bytes read per step when decoding a verified redirect blob (worker thread).
SPOOL_CHUNK = 256 * 1024


class _Spooled:
    """A queue item: a verified redirect blob, decoded by the consumer thread."""

    def __init__(self, spool: IO[bytes]) -> None:
        self.spool = spool


def _decode_spool(spool: IO[bytes]) -> Iterator[object]:
    decoder = CBORSequenceDecoder()
    with spool:
        for chunk in iter(lambda: spool.read(SPOOL_CHUNK), b""):
            yield from decoder.feed(chunk)


class ObjectQueue:
    """A :class:`ResponseSink` whose objects are read by another thread as an iterator."""

    def __init__(self, name: bytes, flow: _FlowControl | None = None) -> None:
        self.name = name
        self._flow = flow
        self._cond = threading.Condition()
        self._items: deque[tuple[object, int]] = deque()
        self._error: Exception | None = None
        self._done = False
        self._file_items: Iterator[object] | None = None
        self._arrived: list[Callable[[], None]] | None = []

    def when_arrived(self, callback: Callable[[], None]) -> None:
        """Reactor thread: ``callback()`` once the whole answer has arrived (or failed),
        now if it has."""
        if self._arrived is None:
            callback()
        else:
            self._arrived.append(callback)

    def _run_arrived(self) -> None:
        callbacks, self._arrived = self._arrived, None
        for callback in callbacks or ():
            callback()

    # ResponseSink (reactor thread)
    def objects(self, objs: Sequence[object]) -> None:
        total = 0
        with self._cond:
            for obj in objs:
                n = _size(obj)
                total += n
                self._items.append((obj, n))
            self._cond.notify_all()
        if self._flow is not None and total:
            self._flow.added(total)

    def objects_from_file(self, spool: IO[bytes]) -> None:
        """The command's objects are the CBOR sequence in ``spool`` (already verified);
        the consumer reads and decodes it, so the reactor thread never does."""
        with self._cond:
            self._items.append((_Spooled(spool), 0))
            self._cond.notify_all()

    def finished(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()
        self._run_arrived()

    def failed(self, error: Exception) -> None:
        with self._cond:
            if not self._done:
                self._error = error
                self._done = True
            self._cond.notify_all()
        self._run_arrived()

    def drain_nowait(self) -> list[object]:
        """Everything queued so far (reactor thread, for small answers)."""
        with self._cond:
            items = [obj for obj, _ in self._items]
            self._items.clear()
        return items

    # consumer (worker thread)
    def __iter__(self) -> Iterator[object]:
        return self

    def __next__(self) -> object:
        while self._file_items is not None:
            try:
                return next(self._file_items)
            except StopIteration:
                self._file_items = None
        with self._cond:
            while not self._items and not self._done:
                # A timeout keeps the wait interruptible; the loop re-checks.
                self._cond.wait(1.0)
            if self._items:
                obj, n = self._items.popleft()
            elif self._error is not None:
                raise self._error
            else:
                raise StopIteration
        if isinstance(obj, _Spooled):
            self._file_items = _decode_spool(obj.spool)
            return next(self)
        if self._flow is not None:
            self._flow.taken(n)
        return obj


class ThreadedRemote:
    """A blocking :class:`Remote` over a peer that lives on the reactor thread."""

    def __init__(self, reactor: Any, peer: Peer) -> None:
        self._reactor = reactor
        self._peer = peer
        self._flow = _FlowControl(reactor, peer)
        self.url = peer.url
        self._caps: dict[bytes, Any] | None = None
        self._aborted = False
        #: The ``redirect`` map sent with every command (from the capabilities).
        self.redirect: dict[bytes, object] | None = None
        #: Content redirects followed, and those that fell back to an inline answer.
        self.redirects_followed = 0
        self.redirects_failed = 0

    def abort(self) -> None:
        """Reactor thread: close the peer; every waiting and later call fails."""
        self._aborted = True
        self._peer.close()

    def capabilities(self) -> dict[bytes, Any]:
        if self._caps is None:
            self._caps = blockingCallFromThread(self._reactor, self._peer.capabilities)
            self.redirect = redirect_request(self._caps)
        return self._caps

    def call(
        self,
        name: bytes,
        args: Mapping[bytes, object],
        *,
        after: Iterator[object] | None = None,
    ) -> Iterator[object]:
        if after is None:
            return self.call_many([(name, args)])[0]
        if self._aborted:
            raise ConnectionFailed("the connection was aborted")
        queue = ObjectQueue(name, self._flow)

        def start() -> None:
            # Reactor thread.
            items = [(name, args, queue)]
            if isinstance(after, ObjectQueue):
                after.when_arrived(lambda: self._start_commands(items))
            else:
                self._start_commands(items)

        self._reactor.callFromThread(start)
        return iter(queue)

    def call_many(
        self, commands: Sequence[tuple[bytes, Mapping[bytes, object]]]
    ) -> list[Iterator[object]]:
        if self._aborted:
            raise ConnectionFailed("the connection was aborted")
        queues = [ObjectQueue(name, self._flow) for name, _ in commands]
        pairs = zip(commands, queues, strict=True)
        self._reactor.callFromThread(self._start_commands, [(n, a, q) for (n, a), q in pairs])
        return [iter(q) for q in queues]

    def _start_commands(self, items: list[tuple[bytes, Mapping[bytes, object], Any]]) -> None:
        # Reactor thread: wrap each sink so a redirect is followed (or the command is
        # asked again inline) here, in the layer every transport shares.
        batch = []
        for name, args, queue in items:
            if self.redirect is None:
                batch.append(Command(name, args, queue))
                continue
            sink = RedirectingSink(
                name,
                queue,
                lambda target, n=name, a=args: self._start([Command(n, a, target)]),
                reactor=self._reactor,
                on_redirect=self._count_redirect,
            )
            batch.append(Command(name, args, sink, redirect=self.redirect))
        self._start(batch)

    def _count_redirect(self, ok: bool) -> None:
        if ok:
            self.redirects_followed += 1
        else:
            self.redirects_failed += 1

    def _start(self, batch: list[Command]) -> None:
        if self._aborted:
            for command in batch:
                command.sink.failed(ConnectionFailed("the connection was aborted"))
            return
        try:
            self._peer.call(batch)
        except Exception as exc:
            for command in batch:
                command.sink.failed(ConnectionFailed(str(exc)))
