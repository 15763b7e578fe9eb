"""The mirror's schedule and back-off, driven by a ``Clock`` (no sleeping, no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from hgwire_tw.client.mirror import Backoff, MirrorSync
from hgwire_tw.client.peer import ConnectionFailed
from hgwire_tw.client.pull import PullStats


class Upstream:
    """Hands out one Deferred per pull; the test decides how each ends."""

    def __init__(self) -> None:
        self.pulls: list[Deferred[PullStats]] = []
        self.cancelled = 0

    def pull(self) -> Deferred[PullStats]:
        def cancel(_: Deferred[PullStats]) -> None:
            self.cancelled += 1

        d: Deferred[PullStats] = Deferred(cancel)
        self.pulls.append(d)
        return d

    def succeed(self, changesets: int = 0) -> None:
        self.pulls[-1].callback(PullStats(changesets=changesets))

    def fail(self) -> None:
        self.pulls[-1].errback(ConnectionFailed("connection refused"))


def make(every: float = 60.0, **kw: object) -> tuple[MirrorSync, Upstream, Clock]:
    clock = Clock()
    upstream = Upstream()
    sync = MirrorSync(
        "m",
        upstream.pull,
        reactor=clock,
        every=every,
        rand=lambda: 0.0,
        **kw,  # type: ignore[arg-type]
    )
    return sync, upstream, clock


def test_pulls_at_start_then_every_interval_after_the_last_pull_ended() -> None:
    """One pull at start; the next ``every`` seconds after the previous one finished."""
    sync, upstream, clock = make(every=60)
    sync.startService()
    clock.advance(0)
    assert len(upstream.pulls) == 1
    clock.advance(30)  # a slow pull: no second pull while it runs
    assert len(upstream.pulls) == 1
    upstream.succeed(3)
    assert sync.last_stats is not None and sync.last_stats.changesets == 3
    clock.advance(59.9)
    assert len(upstream.pulls) == 1
    clock.advance(0.1)
    assert len(upstream.pulls) == 2


def test_failures_back_off_exponentially_up_to_the_cap_then_recover() -> None:
    """Retries after 5, 10, 20, 40 s ... capped at 600 s; a success resets to ``every``."""
    sync, upstream, clock = make(every=300)
    sync.startService()
    clock.advance(0)
    waits = []
    for _ in range(10):
        upstream.fail()
        before = len(upstream.pulls)
        delay = clock.getDelayedCalls()[0].getTime() - clock.seconds()
        waits.append(delay)
        clock.advance(delay)
        assert len(upstream.pulls) == before + 1
    assert waits == [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]
    assert sync.failures == 10 and sync.last_error == "connection refused"
    upstream.succeed()
    assert sync.failures == 0 and sync.last_error is None
    assert clock.getDelayedCalls()[0].getTime() - clock.seconds() == 300


def test_jitter_only_shortens_the_delay() -> None:
    """With jitter 0.2 the n-th delay lies in [0.8, 1] times the exponential base."""
    backoff = Backoff(initial=5, cap=600, jitter=0.2)
    assert backoff.delay(1, lambda: 1.0) == pytest.approx(4.0)
    assert backoff.delay(3, lambda: 0.5) == pytest.approx(18.0)
    assert backoff.delay(30, lambda: 0.0) == 600


def test_a_pull_that_raises_counts_as_a_failure() -> None:
    """An exception from starting the pull is retried like a failed pull."""
    clock = Clock()

    def broken() -> Deferred[PullStats]:
        raise ConnectionFailed("bad URL")

    sync = MirrorSync("m", broken, reactor=clock, every=60, rand=lambda: 0.0)
    sync.startService()
    clock.advance(0)
    assert sync.failures == 1 and sync.last_error == "bad URL"
    assert len(clock.getDelayedCalls()) == 1


def test_stop_cancels_the_running_pull_and_schedules_nothing() -> None:
    """Stopping aborts a running pull (its Deferred is cancelled) and no pull follows."""
    sync, upstream, clock = make(every=60)
    sync.startService()
    clock.advance(0)
    sync.stopService()
    assert upstream.cancelled == 1
    assert upstream.pulls[0].called and sync.failures == 0  # a stop is not a failure
    assert clock.getDelayedCalls() == []
    clock.advance(3600)
    assert len(upstream.pulls) == 1


def test_stop_while_waiting_cancels_the_timer() -> None:
    """Stopping between pulls cancels the next one."""
    sync, upstream, clock = make(every=60)
    sync.startService()
    clock.advance(0)
    upstream.succeed()
    assert len(clock.getDelayedCalls()) == 1
    sync.stopService()
    assert clock.getDelayedCalls() == []
    clock.advance(3600)
    assert len(upstream.pulls) == 1


def test_a_served_mirror_waits_for_a_live_lock_at_most_lock_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hgwire serve --mirror ... --lock-timeout 7``: each sync opens the mirror with
    ``ui.timeout`` 7 (Mercurial's own lock waits), not the 30 s default."""
    from twisted.internet.testing import MemoryReactor

    from hgwire_tw.client import job
    from hgwire_tw.tap import Options, makeService

    opened: list[Any] = []

    def start_pull(reactor: Any, url: str, open_repo: Any, **kwargs: Any) -> Deferred[PullStats]:
        opened.append(open_repo())  # what the worker would pull into
        return succeed(PullStats())

    monkeypatch.setattr(job, "start_pull", start_pull)

    class Reactor(MemoryReactor):
        def getThreadPool(self) -> Any:
            return None

    options = Options()
    options.parseOptions(
        [
            *("--mirror", "m=http://127.0.0.1:9/up", "--lock-timeout", "7"),
            *("--state-dir", str(tmp_path / "state")),
        ]
    )
    top = makeService(options, reactor=Reactor())
    syncs = [s for s in top if isinstance(s, MirrorSync)]
    assert len(syncs) == 1
    syncs[0]._pull()
    assert [repo.ui.configint(b"ui", b"timeout") for repo in opened] == [7]
