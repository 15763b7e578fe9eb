"""Where a response producer waits while its consumer has paused it.

Every transport streams command output the same way: Twisted calls ``pauseProducing`` /
``resumeProducing`` on the producer as the peer's buffer fills and drains, and the code
writing the output (a worker's delivery) must wait for the resume. ``PauseGate`` is that
waiting point, so each transport's producer only forwards the two calls.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred


class PauseGate:
    """A flag and a Deferred that fires when the flag is lowered again."""

    def __init__(self) -> None:
        self.paused = False
        self._waiting: Deferred[None] | None = None

    def pause(self) -> None:
        """The consumer asked us to stop producing for now."""
        self.paused = True

    def resume(self) -> None:
        """The consumer wants more: release everyone waiting."""
        self.paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def wait(self) -> Deferred[None] | None:
        """A Deferred that fires on the next resume, or None when not paused."""
        if not self.paused:
            return None
        if self._waiting is None:
            self._waiting = Deferred()
        return self._waiting
