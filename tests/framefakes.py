"""Fakes for the v2 transport glue tests: a job runner the test drives and a command
runner whose commands stay pending until the test completes them."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from hgwire_tw.core.reactor import EncodeJob, SendFrames


class ManualJobs:
    """A job runner that holds jobs until the test runs them, in any order."""

    def __init__(self) -> None:
        self.jobs: list[tuple[EncodeJob, Deferred[SendFrames | None]]] = []
        self.ran: list[EncodeJob] = []

    def __call__(self, job: EncodeJob) -> Deferred[SendFrames | None]:
        d: Deferred[SendFrames | None] = Deferred()
        self.jobs.append((job, d))
        return d

    def finish(self, index: int = 0) -> EncodeJob:
        job, d = self.jobs.pop(index)
        self.ran.append(job)
        try:
            result = job.run()
        except Exception as e:  # what a thread pool reports as a failure
            d.errback(e)
        else:
            d.callback(result)
        return job

    def finish_all(self) -> None:
        """Run jobs (and the jobs they lead to) until none is left; bounded."""
        for _ in range(1000):
            if not self.jobs:
                return
            self.finish()
        raise AssertionError("jobs keep coming")


class Runner:
    """Keeps every command pending; the test drives its sink."""

    def __init__(self) -> None:
        self.sinks: dict[bytes, Any] = {}
        self.results: dict[bytes, Deferred[None]] = {}
        self.cancelled: list[bytes] = []

    def spec(self, name: bytes) -> Any:
        """The real command table's entry for ``name`` (what the HTTP API checks)."""
        from hgwire_tw.commands.registry import COMMANDS

        return COMMANDS.get(name)

    def run(self, served: Any, name: bytes, args: Any, *, sink: Any, **_: Any) -> Deferred[None]:
        """Remember ``sink``; the command stays pending (``may_push`` etc. are ignored)."""
        self.sinks[name] = sink
        self.results[name] = Deferred(lambda _: self.cancelled.append(name))
        return self.results[name]

    def complete(self, name: bytes) -> None:
        self.sinks[name].finished()
        self.results[name].callback(None)
