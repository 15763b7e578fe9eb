"""Blob retention: ``BlobStore.expire`` and the ``BlobSweeper`` schedule, driven by a
``Clock`` with file mtimes set explicitly (no sleeping)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

from hgwire_tw.blobstore import BlobStore, blob_name
from hgwire_tw.blobsweep import TEMP_GRACE, BlobSweeper, sweep_interval
from hgwire_tw.cache import MemoryStore
from hgwire_tw.redirects import Redirector

#: A wall-clock time for the Clock to stand at, so blob mtimes and ``seconds()`` agree.
START = 1_700_000_000.0


class _InlineThreads:
    """A thread pool running each call at once (the sweep's disk work is real)."""

    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, object], None],
        f: Callable[..., object],
        *a: Any,
        **kw: Any,
    ) -> None:
        self.calls += 1
        try:
            result = f(*a, **kw)
        except Exception as e:  # handed back as a failure, like Twisted's pool
            from twisted.python.failure import Failure

            on_result(False, Failure(e))
        else:
            on_result(True, result)


class _HeldThreads:
    """A thread pool that holds calls until ``release`` (a pass in progress)."""

    def __init__(self) -> None:
        self.held: list[tuple[Callable[[bool, object], None], Callable[[], object]]] = []

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, object], None],
        f: Callable[..., object],
        *a: Any,
        **kw: Any,
    ) -> None:
        self.held.append((on_result, lambda: f(*a, **kw)))

    def release(self) -> None:
        for on_result, call in self.held:
            on_result(True, call())
        self.held.clear()


class _Reactor(Clock):
    """A ``Clock`` that also takes calls from (inline) worker threads."""

    def callFromThread(self, f: Callable[..., object], *args: object, **kw: object) -> None:
        f(*args, **kw)


def _clock() -> _Reactor:
    reactor = _Reactor()
    reactor.advance(START)
    return reactor


def _file(directory: Path, name: str, mtime: float, data: bytes = b"x") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def _cbor(n: int) -> str:
    return blob_name(f"{n:064x}", ".cbor")


def test_expire_deletes_only_stale_redirect_blobs_and_old_temporaries(tmp_path: Path) -> None:
    """Unused .cbor blobs and old temporaries go; fresh ones, .hg bundles, young
    temporaries and unknown files stay."""
    d = tmp_path / "blobs"
    store = BlobStore(d)
    now = START
    _file(d, _cbor(1), now - 1000)  # stale
    _file(d, _cbor(2), now - 10)  # used recently
    _file(d, blob_name("3" * 64, ".hg"), now - 10**6)  # clone bundle: never
    _file(d, ".tmp-old", now - TEMP_GRACE - 1)  # crash leftover
    _file(d, ".tmp-young", now - TEMP_GRACE + 60)  # publish in progress
    _file(d, ".bundle-old", now - TEMP_GRACE - 1)
    _file(d, "README", now - 10**6)  # not ours
    removed = store.expire(unused_before=now - 100, temp_before=now - TEMP_GRACE)
    assert sorted(removed) == sorted([_cbor(1), ".tmp-old", ".bundle-old"])
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [_cbor(2), blob_name("3" * 64, ".hg"), ".tmp-young", "README"]
    )
    assert BlobStore(tmp_path / "missing").expire(unused_before=now, temp_before=now) == []


def test_publish_and_touch_renew_a_blob(tmp_path: Path) -> None:
    """Publishing content that is already there, or touching it, marks it used now."""
    store = BlobStore(tmp_path)
    blob = store.publish([b"payload"], suffix=".cbor")
    path = store.path(blob.name)
    os.utime(path, (1000.0, 1000.0))
    assert store.publish([b"payload"], suffix=".cbor") == blob
    assert path.stat().st_mtime > 1000.0
    os.utime(path, (1000.0, 1000.0))
    assert store.touch(blob.name) and path.stat().st_mtime > 1000.0
    assert not store.touch(_cbor(9)) and not store.touch("../etc")


def test_sweeper_runs_at_start_and_every_interval(tmp_path: Path) -> None:
    """The first pass runs at start; a blob is deleted on the first pass after it has
    been unused for the retention, never before; passes run on the thread pool."""
    d = tmp_path / "blobs"
    reactor, threads = _clock(), _InlineThreads()
    stale = _file(d, _cbor(1), START - 101)
    aging = _file(d, _cbor(2), START - 60)
    sweeper = BlobSweeper(BlobStore(d), reactor=reactor, retention=100, threadpool=threads)
    assert sweeper.every == 25 == sweep_interval(100)
    sweeper.startService()
    assert not stale.exists() and aging.exists()
    assert sweeper.passes == 1 and threads.calls == 1
    reactor.advance(25)  # unused for 85 s
    assert aging.exists() and sweeper.passes == 2
    reactor.advance(25)  # unused for 110 s
    assert not aging.exists() and sweeper.removed == 2
    sweeper.stopService()
    _file(d, _cbor(3), START - 10**6)
    reactor.advance(1000)
    assert sweeper.passes == 3 and (d / _cbor(3)).exists()  # stopped: no more passes


def test_blob_reused_by_a_redirect_survives(tmp_path: Path) -> None:
    """A blob a redirect names again is renewed and outlives the retention after its
    first publication; an equally old blob nobody named is deleted."""
    reactor, threads = _clock(), _InlineThreads()
    store = BlobStore(tmp_path / "b", "http://h/")
    cache = MemoryStore()
    w = cache.writer("ab" * 20)
    w.write(b"cached response")
    w.commit()
    redirector = Redirector(store, embedded=True)
    target = redirector.targets()[0]
    redirector.publish(target, cache.lookup("ab" * 20))  # type: ignore[arg-type]
    reused = store.path(blob_name(cache.lookup("ab" * 20).sha256, ".cbor"))  # type: ignore[union-attr]
    forgotten = _file(store.directory, _cbor(5), START - 500)
    os.utime(reused, (START - 500, START - 500))
    sweeper = BlobSweeper(store, reactor=reactor, retention=100, threadpool=threads)
    # The redirect names it again (real time is later than START): renewed.
    redirector.publish(target, cache.lookup("ab" * 20))  # type: ignore[arg-type]
    assert redirector.published == 1 and redirector.redirects == 2
    sweeper.startService()
    assert reused.exists() and not forgotten.exists()
    sweeper.stopService()


def test_one_pass_at_a_time_and_stop_waits_for_it(tmp_path: Path) -> None:
    """A pass still running when the next is due is not doubled; stopping the service
    fires only once the running pass has finished."""
    d = tmp_path / "blobs"
    reactor, threads = _clock(), _HeldThreads()
    _file(d, _cbor(1), START - 1000)
    sweeper = BlobSweeper(BlobStore(d), reactor=reactor, retention=100, threadpool=threads)
    sweeper.startService()
    reactor.advance(25)
    reactor.advance(25)
    assert sweeper.passes == 1 and len(threads.held) == 1
    stopped: list[object] = []
    sweeper.stopService().addCallback(stopped.append)
    assert stopped == []
    threads.release()
    assert stopped == [None] and not (d / _cbor(1)).exists()


def test_failed_pass_keeps_the_schedule(tmp_path: Path) -> None:
    """A pass that fails (disk trouble) is logged and the next one still runs."""
    d = tmp_path / "blobs"
    reactor, threads = _clock(), _InlineThreads()
    store = BlobStore(d)
    sweeper = BlobSweeper(store, reactor=reactor, retention=100, threadpool=threads)
    real = store.expire
    store.expire = lambda **kw: (_ for _ in ()).throw(OSError("disk gone"))  # type: ignore[method-assign]
    sweeper.startService()
    assert sweeper.passes == 1
    store.expire = real  # type: ignore[method-assign]
    _file(d, _cbor(1), START - 1000)
    reactor.advance(25)
    assert sweeper.passes == 2 and not (d / _cbor(1)).exists()
    sweeper.stopService()


def test_zero_retention_never_sweeps(tmp_path: Path) -> None:
    """Retention 0 keeps blobs forever: no pass is ever scheduled."""
    d = tmp_path / "blobs"
    reactor, threads = _clock(), _InlineThreads()
    _file(d, _cbor(1), 0.0)
    sweeper = BlobSweeper(BlobStore(d), reactor=reactor, retention=0, threadpool=threads)
    sweeper.startService()
    reactor.advance(10**6)
    assert sweeper.passes == 0 and threads.calls == 0 and (d / _cbor(1)).exists()
    sweeper.stopService()
