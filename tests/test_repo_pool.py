"""Tests for hgwire_tw.repo.pool with real worker threads and a test-driven reactor."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred

from hgwire_tw.repo.lanes import Lane
from hgwire_tw.repo.pool import RepositoryPool, StreamStalled
from hgwire_tw.repo.registry import ServedRepository
from tests import repobuilders


@pytest.fixture
def served(tmp_path: Path) -> ServedRepository:
    """A small linear repository."""
    return ServedRepository("lin", repobuilders.make_linear_repo(tmp_path / "lin", commits=2))


def test_run_returns_result_and_uses_worker_thread(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """run() calls fn(repo, *args) off the calling thread."""
    main = threading.get_ident()
    d = pool.run(served, lambda repo, x: (len(repo), x, threading.get_ident()), 7)
    count, x, ident = pump_reactor.result_of(d)
    assert (count, x) == (2, 7)
    assert ident != main


def test_run_propagates_errors(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """An exception in fn fails the Deferred."""

    def boom(repo: Any) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        pump_reactor.result_of(pool.run(served, boom))


def test_repository_object_is_per_thread_and_refreshed(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """A commit made on disk is seen by the next job (the cached repo is reopened)."""

    def info(repo: Any) -> tuple[int, int]:
        return len(repo), id(repo)

    n1, _ = pump_reactor.result_of(pool.run(served, info))
    (served.path / "new.txt").write_text("x")
    repobuilders.hg("commit", "-A", "-q", "-m", "more", cwd=served.path)
    seen = {pump_reactor.result_of(pool.run(served, info))[0] for _ in range(4)}
    assert n1 == 2 and seen == {3}


def _numbers(repo: Any, n: int, fail_at: int | None, closed: list[bool]) -> Iterator[object]:
    try:
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("generator failed")
            yield b"%d" % i
    finally:
        closed.append(True)


def test_iterate_batches_in_order(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """All objects arrive in order, in batches no larger than batch_items."""
    got: list[list[object]] = []
    closed: list[bool] = []
    d = pool.iterate(served, _numbers, (25, None, closed), got.append, batch_items=10)
    assert pump_reactor.result_of(d) is None
    assert [len(b) for b in got] == [10, 10, 5]
    assert [x for b in got for x in b] == [b"%d" % i for i in range(25)]
    assert closed == [True]


def test_iterate_back_pressure(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """While a delivery Deferred is pending, the generator builds one more batch and
    then waits: it never runs further ahead."""
    produced: list[int] = []

    def gen(repo: Any) -> Iterator[object]:
        for i in range(100):
            produced.append(i)
            yield i

    pending: list[Deferred[None]] = []

    def deliver(batch: list[object]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        pending.append(d)
        return d

    result = pool.iterate(served, gen, (), deliver, batch_items=5)
    pump_reactor.pump_until(lambda: len(pending) == 1)
    import time

    time.sleep(0.2)  # give the worker every chance to run ahead
    assert len(produced) == 10  # one batch handed over, the next one built, then a wait
    assert len(pending) == 1  # the second batch waits for the first delivery
    for k in range(20):
        pump_reactor.pump_until(lambda k=k: len(pending) == k + 1)
        pending[k].callback(None)
    assert pump_reactor.result_of(result) is None
    assert len(produced) == 100


def test_iterate_generator_error_fails_result(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """An exception from the generator fails the result after all earlier objects arrived."""
    got: list[list[object]] = []
    closed: list[bool] = []
    d = pool.iterate(served, _numbers, (50, 12, closed), got.append, batch_items=5)
    with pytest.raises(RuntimeError, match="generator failed"):
        pump_reactor.result_of(d)
    # What was produced before the failure is still delivered, in order.
    assert [x for b in got for x in b] == [b"%d" % i for i in range(12)]
    assert closed == [True]


def test_iterate_deliver_raises_closes_generator(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """A raising deliver stops the generator (closed) and fails the result with its error."""
    closed: list[bool] = []

    def deliver(batch: list[object]) -> None:
        raise OSError("consumer broke")

    d = pool.iterate(served, _numbers, (10_000, None, closed), deliver, batch_items=3)
    with pytest.raises(OSError, match="consumer broke"):
        pump_reactor.result_of(d)
    assert closed == [True]


def test_iterate_deliver_deferred_fails(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """A failing delivery Deferred stops the generator too."""
    from twisted.internet.defer import fail

    closed: list[bool] = []
    d = pool.iterate(
        served,
        _numbers,
        (10_000, None, closed),
        lambda b: fail(ConnectionError("gone")),
        batch_items=3,
    )
    with pytest.raises(ConnectionError):
        pump_reactor.result_of(d)
    assert closed == [True]


def test_iterate_cancel_frees_worker(pump_reactor: Any, served: ServedRepository) -> None:
    """Cancelling the result closes the generator and frees the (only) worker."""
    pool = RepositoryPool(pump_reactor, size=1)
    pool.start()
    try:
        closed: list[bool] = []
        pending: list[Deferred[None]] = []

        def deliver(batch: list[object]) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            pending.append(d)
            return d

        result = pool.iterate(served, _numbers, (10**9, None, closed), deliver, batch_items=2)
        pump_reactor.pump_until(lambda: bool(pending))
        result.cancel()
        with pytest.raises(CancelledError):
            pump_reactor.result_of(result)
        # The single worker must be free again to run this.
        free = pool.run(served, lambda repo: "free", lane=Lane.TRANSFER)
        assert pump_reactor.result_of(free) == "free"
        assert closed == [True]
    finally:
        pool.stop()


def test_stop_aborts_stalled_streams(pump_reactor: Any, served: ServedRepository) -> None:
    """stop() does not hang on a worker waiting for a delivery that will never finish."""
    pool = RepositoryPool(pump_reactor, size=1)
    pool.start()
    closed: list[bool] = []
    pending: list[Deferred[None]] = []
    pool.iterate(
        served,
        _numbers,
        (10**9, None, closed),
        lambda b: pending.append(Deferred()) or pending[-1],
        batch_items=2,
    )
    pump_reactor.pump_until(lambda: bool(pending))
    pool.stop()
    assert closed == [True]


@pytest.mark.parametrize(("error", "logged"), [("command", False), ("bug", True)])
def test_errors_after_cancellation_are_logged_only_when_they_are_bugs(
    pump_reactor: Any, served: ServedRepository, error: str, logged: bool
) -> None:
    """A stream whose client went away and that then fails with a command error (or a
    vanished push payload) is not a traceback in the log; a bug still is."""
    from twisted.logger import globalLogPublisher

    from hgwire_tw.core.errors import CommandError

    go = threading.Event()
    failures: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_format") == "stream failed after cancellation":
            failures.append(event)

    def gen(repo: Any) -> Iterator[object]:
        go.wait(30)
        raise CommandError(b"unknown node") if error == "command" else KeyError("bug")
        yield  # a generator

    pool = RepositoryPool(pump_reactor, size=1)
    pool.start()
    globalLogPublisher.addObserver(observe)
    try:
        result = pool.iterate(served, gen, (), lambda batch: None)
        result.cancel()
        go.set()
        # the only worker is free again once the generator has failed and been logged
        free = pool.run(served, lambda repo: "free", lane=Lane.TRANSFER)
        assert pump_reactor.result_of(free) == "free"
        pump_reactor.pump_until(lambda: True)
        with pytest.raises(CancelledError):
            pump_reactor.result_of(result)
    finally:
        globalLogPublisher.removeObserver(observe)
        pool.stop()
    assert bool(failures) == logged


def test_writes_do_not_queue_behind_streams_holding_every_worker(
    pump_reactor: Any, served: ServedRepository
) -> None:
    """With the only read worker stalled in a stream, a write job still runs (before,
    a push under 50 concurrent clones waited for all of them)."""
    pool = RepositoryPool(pump_reactor, size=1)
    pool.start()
    try:
        pending: list[Deferred[None]] = []

        def deliver(batch: list[object]) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            pending.append(d)
            return d

        stream = pool.iterate(served, _numbers, (10**9, None, []), deliver, batch_items=2)
        pump_reactor.pump_until(lambda: bool(pending))
        write = pool.run(served, lambda repo: len(repo), write=True)
        assert pump_reactor.result_of(write, timeout=10) == 2
        stream.cancel()
        with pytest.raises(CancelledError):
            pump_reactor.result_of(stream)
    finally:
        pool.stop()


def _held(pending: list[Deferred[None]]) -> Any:
    """A ``deliver`` whose Deferreds never fire by themselves (a client not reading)."""

    def deliver(batch: list[object]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        pending.append(d)
        return d

    return deliver


def test_quick_jobs_run_while_every_transfer_worker_is_held(
    pump_reactor: Any, served: ServedRepository
) -> None:
    """With both transfer workers stuck in streams whose clients do not read, quick
    jobs (a run, a quick stream) complete, and a transfer job waits for a worker."""
    pool = RepositoryPool(pump_reactor, size=2)
    pool.start()
    try:
        pending: list[Deferred[None]] = []
        streams = [
            pool.iterate(served, _numbers, (10**9, None, []), _held(pending), batch_items=2)
            for _ in range(2)
        ]
        pump_reactor.pump_until(lambda: len(pending) == 2)
        waiting = pool.run(served, lambda repo: "transfer", lane=Lane.TRANSFER)

        assert pump_reactor.result_of(pool.run(served, lambda repo: len(repo))) == 2
        got: list[object] = []
        quick = pool.iterate(served, _numbers, (5, None, []), got.extend, lane=Lane.QUICK)
        pump_reactor.result_of(quick, timeout=10)
        assert got == [b"0", b"1", b"2", b"3", b"4"]
        assert not waiting.called
        assert pool.threadpool.q.qsize() == 1  # the waiting transfer, FIFO

        streams[0].cancel()
        assert pump_reactor.result_of(waiting, timeout=10) == "transfer"
        streams[1].cancel()
        for stream in streams:
            with pytest.raises(CancelledError):
                pump_reactor.result_of(stream)
    finally:
        pool.stop()


def test_lane_defaults(pump_reactor: Any) -> None:
    """run() is quick unless it writes; iterate() is a transfer unless it writes."""
    pool = RepositoryPool(pump_reactor, size=3, write_workers=1, quick_workers=2)
    assert pool.threadpool.max == 3
    assert pool.lane_threadpool(Lane.WRITE) is pool.write_threadpool
    assert pool.write_threadpool.max == 1
    assert pool.lane_threadpool(Lane.QUICK) is pool.quick_threadpool
    assert pool.quick_threadpool.max == 2
    assert pool.lane_threadpool(Lane.TRANSFER) is pool.threadpool


def _stalling_pool(pump_reactor: Any, clock: Any) -> RepositoryPool:
    pool = RepositoryPool(pump_reactor, size=1, stall_timeout=30, clock=clock)
    pool.start()
    return pool


def test_stalled_stream_is_ended_and_its_worker_freed(
    pump_reactor: Any, served: ServedRepository
) -> None:
    """A delivery not consumed within stall_timeout fails the stream with StreamStalled,
    closes the generator and frees the (only) worker."""
    from twisted.internet.task import Clock

    clock = Clock()
    pool = _stalling_pool(pump_reactor, clock)
    try:
        closed: list[bool] = []
        pending: list[Deferred[None]] = []
        result = pool.iterate(
            served, _numbers, (10**9, None, closed), _held(pending), batch_items=2
        )
        pump_reactor.pump_until(lambda: bool(pending))
        clock.advance(29)
        assert not result.called
        clock.advance(1)
        with pytest.raises(StreamStalled) as caught:
            pump_reactor.result_of(result)
        assert caught.value.seconds == 30
        assert "30 seconds" in str(caught.value)
        free = pool.run(served, lambda repo: "free", lane=Lane.TRANSFER)
        assert pump_reactor.result_of(free) == "free"
        assert closed == [True]
        # The transport's own Deferred was left alone; firing it late changes nothing.
        pending[0].callback(None)
    finally:
        pool.stop()


def test_consumed_deliveries_restart_the_stall_timer(
    pump_reactor: Any, served: ServedRepository
) -> None:
    """A slow client that takes each batch within the timeout is never cut, however long
    the whole stream takes."""
    from twisted.internet.task import Clock

    clock = Clock()
    pool = _stalling_pool(pump_reactor, clock)
    try:
        pending: list[Deferred[None]] = []
        closed: list[bool] = []
        result = pool.iterate(served, _numbers, (12, None, closed), _held(pending), batch_items=2)
        delivered = 0
        while not result.called:
            pump_reactor.pump_until(lambda n=delivered: len(pending) > n or result.called)
            if result.called:
                break
            clock.advance(25)
            pending[delivered].callback(None)
            delivered += 1
        assert pump_reactor.result_of(result) is None
        assert delivered == 6 and closed == [True]
        assert clock.getDelayedCalls() == []
    finally:
        pool.stop()


def test_stall_timeout_must_be_positive(pump_reactor: Any) -> None:
    with pytest.raises(ValueError, match="positive"):
        RepositoryPool(pump_reactor, stall_timeout=0)
