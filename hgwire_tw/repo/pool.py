"""Run Mercurial code on a bounded pool of worker threads, off the reactor thread.

Mercurial repository objects are not thread-safe, so every worker thread keeps its own
repository object per served repository (``threading.local``). Before each job the
worker stats the files that change when the repository changes (changelog, phase
roots, obsstore, bookmarks, requirements, hgrc: the same idea as hgweb's
``mercurial.hg.cachedlocalrepo``, but with nanosecond mtimes, sizes and inodes) and
reopens the repository if any of them moved. Opening costs milliseconds; a stale
repository object would serve stale heads.

``iterate`` streams a generator's output to the reactor thread in batches. The worker
blocks until each batch has been delivered *and* the Deferred ``deliver`` returned has
fired, so a slow consumer stalls the generator (back-pressure) and at most one batch is
in flight per response. Each streaming response holds a worker for its duration, so
the pool size bounds both concurrency and memory.

Lanes (``hgwire_tw.repo.lanes``): the workers are three thread pools, so that short
work never queues behind long transfers. Transfers (clones, pulls) run on ``size``
workers; writes (``Lane.WRITE``, or ``write=True``: pushes) on ``write_workers`` of
their own; commands answered from small results (handshakes, discovery: ``Lane.QUICK``)
on ``quick_workers``. A transfer beyond ``size`` waits in its lane's FIFO queue (one
small entry per waiting request) while quick commands and pushes keep flowing.

Stalled clients: with ``stall_timeout`` set, a delivery that is not consumed within
that many seconds (the client took nothing of a whole batch, at most about
``DEFAULT_BATCH_BYTES`` plus the transport's buffers) ends the stream with
``StreamStalled``: the generator is closed and the worker freed, and the transport cuts
the connection. Without it a handful of clients that stop reading would hold every
worker of a lane for as long as they keep their connections open.

Crash recovery (``hgwire_tw.repo.recovery``) happens here, on the workers: a job that
finds a transaction journal in its repository first rolls back an abandoned transaction
(without waiting when a live process holds the lock: that journal belongs to a write in
progress), and a *write* job (``write=True``) waits for the lock, at most
``lock_timeout`` seconds, so it never runs over an abandoned journal. ``recover_all``
does the same for every served repository at start-up. ``lock_timeout`` is also the
``ui.timeout`` of every repository the pool opens, so Mercurial's own lock waits during
a push are bounded by it too.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, cast

from mercurial import hg
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from hgwire_tw.core.errors import CommandError, PermissionDenied
from hgwire_tw.repo import recovery
from hgwire_tw.repo.lanes import Lane
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.repo.ui import make_ui

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_ITEMS",
    "Lane",
    "ReactorFromThreads",
    "RepositoryPool",
    "StreamStalled",
    "repository_state",
]

log = Logger()

DEFAULT_BATCH_BYTES = 256 * 1024
DEFAULT_BATCH_ITEMS = 1024

# Files (relative to .hg/) whose stat changes whenever the served content can change.
_WATCHED = (
    "store/00changelog.i",
    "store/00changelog.d",
    "store/phaseroots",
    "store/obsstore",
    "store/bookmarks",
    "bookmarks",
    "requires",
    "store/requires",
    "hgrc",
)


class ReactorFromThreads(Protocol):
    """The part of ``IReactorFromThreads``/``IReactorThreads`` the pool needs."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``f`` on the reactor thread, soon."""


def repository_state(path: os.PathLike[str] | str) -> tuple[tuple[int, int, int] | None, ...]:
    """A fingerprint of the repository at ``path`` that changes when its content does."""
    hgdir = os.path.join(os.fspath(path), ".hg")
    state: list[tuple[int, int, int] | None] = []
    for name in _WATCHED:
        try:
            st = os.stat(os.path.join(hgdir, name))
        except OSError:
            state.append(None)
        else:
            state.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(state)


class Clock(Protocol):
    """The part of ``IReactorTime`` the pool needs (stall timers)."""

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Call ``f`` on the reactor thread in ``delay`` seconds; returns an
        ``IDelayedCall``."""


class StreamStalled(Exception):
    """The consumer of an ``iterate`` stream took nothing for ``seconds``: the stream was
    ended and its worker freed. The transport cuts the connection."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the client took nothing for {seconds:g} seconds")
        self.seconds = seconds


class _Stop(Exception):
    """The consumer went away (cancelled); stop generating."""


class _Stalled(_Stop):
    """The current delivery outlasted the stall timeout; stop generating."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


# What a stream may end with once its consumer is gone, without that being a bug.
_EXPECTED = (_Stop, CancelledError, ConnectionAbortedError, CommandError, PermissionDenied)


class _DeliveryFailed(Exception):
    """``deliver`` raised or its Deferred failed; carries the failure."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.getErrorMessage())
        self.failure = failure


class _Stream:
    """Shared state of one ``iterate`` call between the worker and the reactor thread."""

    def __init__(self) -> None:
        self.cancelled = False
        #: The stall timeout that ended the stream (seconds), if one did.
        self.stalled: float | None = None
        self.pending: Deferred[object] | None = None
        # Where the worker waits for the outcome of the current delivery.
        self.waiting: queue.Queue[object] | None = None

    def stop(self) -> _Stop:
        """The exception that ends the worker's run once the stream was cancelled."""
        return _Stop() if self.stalled is None else _Stalled(self.stalled)

    def abort(self) -> None:
        """Stop the stream from any thread: the worker wakes up and closes the generator."""
        self.cancelled = True
        waiting = self.waiting
        if waiting is not None:
            waiting.put(_Stop())


def _approx_size(obj: object) -> int:
    """A cheap estimate of the encoded size of ``obj`` for batching decisions.

    Byte strings (revision data, file chunks) carry the bulk and count by length; any
    other object counts as a small record. Walking records recursively cost an eighth of
    a full clone's server time in the profile, for batches that are bounded by their
    item count anyway.
    """
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return len(obj) + 9
    return 96


class RepositoryPool:
    """A bounded thread pool whose workers each hold their own repository objects."""

    def __init__(
        self,
        reactor: ReactorFromThreads,
        size: int = 4,
        *,
        ui_factory: Callable[[], Any] = make_ui,
        threadpool: ThreadPool | None = None,
        lock_timeout: int = recovery.DEFAULT_LOCK_TIMEOUT,
        write_workers: int = 2,
        quick_workers: int = 2,
        stall_timeout: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``reactor`` delivers results; ``size`` is the number of transfer workers;
        ``lock_timeout`` bounds every wait for a repository lock (seconds).

        Jobs of ``Lane.WRITE`` run on ``write_workers`` threads of their own, so a push
        never queues behind long clone streams holding every transfer worker (writes to
        one repository are serialised by its lock anyway); jobs of ``Lane.QUICK`` on
        ``quick_workers`` threads, so a handshake or a discovery round never does either.

        ``stall_timeout`` (seconds; None: never) ends a stream whose delivery is not
        consumed in time with ``StreamStalled``; ``clock`` times it (default: the
        reactor).
        """
        self._reactor = reactor
        self._threadpool = threadpool or ThreadPool(
            minthreads=0, maxthreads=size, name="hgwire-repo"
        )
        self._write_threadpool = ThreadPool(
            minthreads=0, maxthreads=write_workers, name="hgwire-repo-write"
        )
        self._quick_threadpool = ThreadPool(
            minthreads=0, maxthreads=quick_workers, name="hgwire-repo-quick"
        )
        self._lanes = {
            Lane.TRANSFER: self._threadpool,
            Lane.WRITE: self._write_threadpool,
            Lane.QUICK: self._quick_threadpool,
        }
        self._ui_factory = ui_factory
        self._local = threading.local()
        self._streams: set[_Stream] = set()
        self.size = size
        self.lock_timeout = lock_timeout
        if stall_timeout is not None and stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive (None: no timeout)")
        self.stall_timeout = stall_timeout
        self._clock = clock if clock is not None else cast(Clock, reactor)

    @property
    def threadpool(self) -> ThreadPool:
        """The transfer workers (for metrics: queue depth, busy threads)."""
        return self._threadpool

    @property
    def write_threadpool(self) -> ThreadPool:
        """The threads of ``Lane.WRITE`` jobs (pushes), for metrics like ``threadpool``."""
        return self._write_threadpool

    @property
    def quick_threadpool(self) -> ThreadPool:
        """The threads of ``Lane.QUICK`` jobs, for metrics like ``threadpool``."""
        return self._quick_threadpool

    def lane_threadpool(self, lane: Lane) -> ThreadPool:
        """The threads of ``lane``."""
        return self._lanes[lane]

    def start(self) -> None:
        """Start the worker threads."""
        for threads in self._lanes.values():
            threads.start()

    def stop(self) -> None:
        """Stop the worker threads (blocks the caller until running jobs return).

        Streams still waiting for a delivery are aborted first: at shutdown the reactor
        may never run their delivery, and a worker blocked on it would hang the join.
        """
        for stream in list(self._streams):
            stream.abort()
        for threads in self._lanes.values():
            threads.stop()

    # -- worker side ----------------------------------------------------------------

    def repository(self, served: ServedRepository, *, write: bool = False) -> Any:
        """This thread's repository object for ``served``, reopened if it changed.

        An abandoned transaction is rolled back first (see the module docs); with
        ``write`` a live lock holder is waited for, and ``RepositoryLocked`` raised when
        it outlasts ``lock_timeout``. Only call this on a worker thread (or in tests, on
        a thread of your own).
        """
        if recovery.has_journal(served.path):
            self._recover(served, wait=write)
        return self._open(served)

    def _open(self, served: ServedRepository) -> Any:
        cache: dict[str, tuple[tuple[object, ...], Any]] = self._local.__dict__.setdefault(
            "repos", {}
        )
        key = os.fspath(served.path)
        state = repository_state(served.path)
        entry = cache.get(key)
        if entry is not None and entry[0] == state:
            return entry[1]
        repo = hg.repository(self._make_ui(), os.fsencode(key))
        cache[key] = (state, repo)
        return repo

    def _make_ui(self) -> Any:
        ui = self._ui_factory()
        ui.setconfig(b"ui", b"timeout", b"%d" % self.lock_timeout, b"hgwire")
        # Mercurial keeps an LRU cache of decompressed revlog chunks unless memory is
        # "low". A server streams each chunk once per clone, so the cache never hits
        # and its bookkeeping was an eighth of a revision-path clone's server time.
        ui.setconfig(b"usage", b"resources.memory", b"low", b"hgwire")
        return ui

    def _recover(self, served: ServedRepository, *, wait: bool) -> recovery.Recovered | None:
        try:
            return recovery.recover_abandoned(
                self._open(served), timeout=self.lock_timeout if wait else 0
            )
        except recovery.RepositoryLocked:
            if wait:
                raise
            return None  # a live writer: its journal is not abandoned

    def recover_all(
        self, repositories: Callable[[], Iterable[ServedRepository]]
    ) -> Deferred[list[recovery.Recovered]]:
        """Roll back abandoned transactions (and drop dead processes' locks) in every
        repository ``repositories()`` lists, on one worker; fires with what was rolled
        back. A repository that cannot be recovered gets a log line and is skipped."""
        return deferToThreadPool(
            cast(Any, self._reactor), self._threadpool, self._recover_all, repositories
        )

    def _recover_all(
        self, repositories: Callable[[], Iterable[ServedRepository]]
    ) -> list[recovery.Recovered]:
        done: list[recovery.Recovered] = []
        for served in repositories():
            if not recovery.needs_attention(served.path):
                continue
            try:
                outcome = recovery.recover_abandoned(self._open(served), timeout=self.lock_timeout)
            except Exception as e:
                log.warn(
                    "repository {name}: not recovered at start-up: {error}",
                    name=served.name or "/",
                    error=e,
                )
                continue
            if outcome is not None:
                done.append(outcome)
        return done

    def _call(
        self, served: ServedRepository, fn: Callable[..., Any], args: tuple[Any, ...], write: bool
    ) -> Any:
        return fn(self.repository(served, write=write), *args)

    def run(
        self,
        served: ServedRepository,
        fn: Callable[..., Any],
        *args: Any,
        write: bool = False,
        lane: Lane | None = None,
    ) -> Deferred[Any]:
        """Run ``fn(repo, *args)`` on a worker; the Deferred fires with its result.

        ``write`` says ``fn`` writes to the repository (see ``repository``). ``lane``
        defaults to ``Lane.WRITE`` for a write, else ``Lane.QUICK``: a whole result
        handed back at once is a short job (pass ``Lane.TRANSFER`` for a long one).
        """
        if lane is None:
            lane = Lane.WRITE if write else Lane.QUICK
        return deferToThreadPool(
            cast(Any, self._reactor), self._lanes[lane], self._call, served, fn, args, write
        )

    def iterate(
        self,
        served: ServedRepository,
        gen_fn: Callable[..., Iterator[object]],
        args: Sequence[Any],
        deliver: Callable[[list[object]], Deferred[Any] | None],
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        batch_items: int = DEFAULT_BATCH_ITEMS,
        write: bool = False,
        lane: Lane | None = None,
    ) -> Deferred[None]:
        """Stream ``gen_fn(repo, *args)`` to ``deliver(batch)`` on the reactor thread.

        Batches hold up to ``batch_items`` objects or about ``batch_bytes`` bytes. The
        worker builds the next batch while one is being delivered, and waits for that
        delivery (and for the Deferred ``deliver`` returns) before handing over another:
        at most one batch is in flight and one is being built. The result fires with
        None when the generator is exhausted and everything was delivered; it fails
        with the generator's exception, or with the failure of ``deliver``. Cancelling
        it stops the generator at its next object.
        With ``stall_timeout`` set, a delivery not consumed in time fails it with
        ``StreamStalled``.
        In every case the generator is ``close()``d on the worker and the worker freed.
        ``write`` says the generator writes to the repository (see ``repository``);
        ``lane`` defaults to ``Lane.WRITE`` for a write, else ``Lane.TRANSFER``.
        """
        if lane is None:
            lane = Lane.WRITE if write else Lane.TRANSFER
        stream = _Stream()
        self._streams.add(stream)

        def cancel(_: Deferred[None]) -> None:
            stream.cancelled = True
            if stream.pending is not None:
                stream.pending.cancel()

        result: Deferred[None] = Deferred(cancel)
        work = deferToThreadPool(
            cast(Any, self._reactor),
            self._lanes[lane],
            self._produce,
            served,
            gen_fn,
            tuple(args),
            deliver,
            stream,
            batch_bytes,
            batch_items,
            write,
        )

        def finished(outcome: object) -> None:
            self._streams.discard(stream)
            if result.called:
                # Cancelled already (the client went away): nobody will see the outcome.
                # A bug is still worth a traceback; a refusal, a command error or the
                # payload vanishing with the client is not.
                if isinstance(outcome, Failure) and not isinstance(outcome.value, _EXPECTED):
                    log.failure("stream failed after cancellation", outcome)
                return
            if isinstance(outcome, Failure):
                if isinstance(outcome.value, _DeliveryFailed):
                    result.errback(outcome.value.failure)
                elif isinstance(outcome.value, _Stalled):
                    result.errback(StreamStalled(outcome.value.seconds))
                elif isinstance(outcome.value, _Stop):
                    result.errback(CancelledError())
                else:
                    result.errback(outcome)
            else:
                result.callback(None)

        work.addBoth(finished)
        return result

    def _produce(
        self,
        served: ServedRepository,
        gen_fn: Callable[..., Iterator[object]],
        args: tuple[Any, ...],
        deliver: Callable[[list[object]], Deferred[Any] | None],
        stream: _Stream,
        batch_bytes: int,
        batch_items: int,
        write: bool,
    ) -> None:
        """Worker side of ``iterate``: generate, batch, hand over, wait."""
        gen = gen_fn(self.repository(served, write=write), *args)
        batch: list[object] = []
        # The delivery still in progress: the worker builds the next batch meanwhile (so
        # generating overlaps encoding and writing) and waits for it before handing over
        # another, so at most one batch is in flight and one being built.
        pending: queue.Queue[object] | None = None
        try:
            size = 0
            for obj in gen:
                if stream.cancelled:
                    raise stream.stop()
                batch.append(obj)
                size += _approx_size(obj)
                if size >= batch_bytes or len(batch) >= batch_items:
                    full, batch, size = batch, [], 0
                    pending = self._hand_over(deliver, full, stream, pending)
            if batch:
                full, batch = batch, []
                pending = self._hand_over(deliver, full, stream, pending)
            self._await_delivery(pending, stream)
        except (_Stop, _DeliveryFailed):
            raise
        except BaseException:
            # The generator failed: what it produced before failing still goes out
            # (the client gets the objects, then the error), as a streaming server would.
            if not stream.cancelled:
                try:
                    if batch:
                        pending = self._hand_over(deliver, batch, stream, pending)
                    self._await_delivery(pending, stream)
                except (_Stop, _DeliveryFailed):
                    pass  # the generator's own error is the one to report
            raise
        finally:
            # Runs the generator's own finally/with blocks (locks, open files) here, on
            # the worker that owns the repository object.
            close = getattr(gen, "close", None)
            if close is not None:
                close()

    def _hand_over(
        self,
        deliver: Callable[[list[object]], Deferred[Any] | None],
        batch: list[object],
        stream: _Stream,
        previous: queue.Queue[object] | None,
    ) -> queue.Queue[object]:
        """Once the ``previous`` delivery was consumed, deliver ``batch`` on the reactor
        thread; returns the queue its outcome arrives on (see ``_await_delivery``)."""
        self._await_delivery(previous, stream)
        # Unbounded on purpose: abort() may add a second item, and put() must never
        # block the reactor thread.
        outcome: queue.Queue[object] = queue.Queue()
        stream.waiting = outcome

        def on_reactor() -> None:
            if stream.cancelled:
                outcome.put(stream.stop())
                return
            try:
                ret = deliver(batch)
            except BaseException:
                outcome.put(Failure())  # type: ignore[no-untyped-call]
                return
            if not isinstance(ret, Deferred):
                outcome.put(None)
                return
            stream.pending = ret
            timer = None if ret.called else self._watch(stream, outcome)

            def done(value: object) -> None:
                if timer is not None and timer.active():
                    timer.cancel()
                stream.pending = None
                outcome.put(value)

            ret.addBoth(done)

        if stream.cancelled:
            raise stream.stop()
        self._reactor.callFromThread(on_reactor)
        return outcome

    def _watch(self, stream: _Stream, outcome: queue.Queue[object]) -> Any:
        """Start the stall timer of a delivery in progress (reactor thread); None when
        there is no stall timeout."""
        seconds = self.stall_timeout
        if seconds is None:
            return None

        def stalled() -> None:
            # Only the worker is woken: the transport's pending Deferred is left alone
            # (the transport cuts the connection when the stream fails).
            stream.stalled = seconds
            stream.cancelled = True
            outcome.put(_Stalled(seconds))

        return self._clock.callLater(seconds, stalled)

    def _await_delivery(self, outcome: queue.Queue[object] | None, stream: _Stream) -> None:
        """Block until the delivery reporting to ``outcome`` was consumed (None: none)."""
        if outcome is None:
            return
        try:
            value = outcome.get()
        finally:
            stream.waiting = None
        if isinstance(value, _Stop):
            raise value
        if isinstance(value, Failure):
            if stream.cancelled:
                raise stream.stop()
            raise _DeliveryFailed(value)
