"""Decoding a channel's bytes off the reactor thread.

Turning the server's bytes into objects (frame parsing, zstd decompression, CBOR
decoding) was a fifth of a clone's client time, all of it on the reactor thread. An
:class:`OffThreadDecoder` takes the bytes of one channel on the reactor thread, decodes
them in arrival order on a thread of a thread pool (one job at a time per channel, so
nothing is reordered), and hands the resulting events back to the reactor thread in
one call per job, where they are routed to the commands' sinks as before.

Bounded: bytes count from the moment they arrive until their events were handed over
on the reactor thread; above ``high`` bytes the channel's producer is paused and below
``low`` resumed, so a server cannot make the client buffer more than about ``high``
undecoded bytes (and what they decode to) per channel.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["DECODE_HIGH_WATER", "DECODE_LOW_WATER", "OffThreadDecoder"]

#: Pause the channel above this many bytes received but not yet decoded and handed over.
DECODE_HIGH_WATER = 4 * 1024 * 1024
DECODE_LOW_WATER = 1024 * 1024

#: What a decoding step returns: anything, given to ``deliver`` on the reactor thread.
Step = Callable[[], Any]


class OffThreadDecoder:
    """Runs the steps of one channel on a thread pool, in order, one at a time.

    ``decode(data)`` runs on the pool and returns the events of ``data``;
    ``deliver(events)`` then runs on the reactor thread. ``pause(bool)`` is called on the
    reactor thread when the backlog crosses the water marks (True: stop reading).
    """

    def __init__(
        self,
        reactor: Any,
        threadpool: Any,
        decode: Callable[[bytes], Any],
        deliver: Callable[[Any], None],
        pause: Callable[[bool], None],
        *,
        high: int = DECODE_HIGH_WATER,
        low: int = DECODE_LOW_WATER,
    ) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._decode = decode
        self._deliver = deliver
        self._pause = pause
        self._high, self._low = high, low
        self._lock = threading.Lock()
        self._steps: deque[tuple[Step, int]] = deque()
        self._running = False
        self._backlog = 0  # reactor thread only
        self._paused = False
        self._stopped = False

    def data(self, data: bytes) -> None:
        """Reactor thread: decode ``data`` after everything fed before it."""
        self._backlog += len(data)
        if not self._paused and self._backlog > self._high:
            self._paused = True
            self._pause(True)
        self.call(lambda: self._decode(data), len(data))

    def call(self, step: Step, size: int = 0) -> None:
        """Reactor thread: run ``step`` on the pool after the earlier steps, then hand
        its result to ``deliver``; ``size`` bytes of backlog are released then."""
        if self._stopped:
            return
        with self._lock:
            self._steps.append((step, size))
            start = not self._running
            self._running = True
        if start:
            self._threadpool.callInThread(self._run)

    def stop(self) -> None:
        """Reactor thread: drop whatever was not decoded yet; nothing more is delivered."""
        self._stopped = True
        with self._lock:
            self._steps.clear()

    def _run(self) -> None:
        # Pool thread: every step queued so far, in order, then give the thread back.
        while True:
            with self._lock:
                if not self._steps:
                    self._running = False
                    return
                step, size = self._steps.popleft()
            try:
                result: Any = step()
            except Exception as exc:  # handed over: the channel fails its commands
                result = exc
            self._reactor.callFromThread(self._handed_over, result, size)

    def _handed_over(self, result: Any, size: int) -> None:
        # Reactor thread.
        self._backlog -= size
        if self._paused and self._backlog < self._low:
            self._paused = False
            self._pause(False)
        if not self._stopped:
            self._deliver(result)
