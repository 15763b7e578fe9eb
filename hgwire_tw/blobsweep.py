"""Blob retention: a service that periodically deletes redirect blobs nobody used lately.

Redirect blobs (``.cbor`` in the blob store) are published on the first redirect to a
cached response and would otherwise pile up forever. A blob's mtime is its last use
(``BlobStore.touch``/``publish``: every redirect naming it renews it), so the sweep
deletes the ``.cbor`` blobs unused for more than ``retention`` seconds: a redirect
answered just now names a blob the sweep keeps for at least that long, which is the
time a client (or a CDN mirroring the directory) has to fetch it. Temporary files older
than ``TEMP_GRACE`` are crash leftovers and go too; younger ones may be a publish in
progress. Clone bundles (``.hg``) are left to ``hgwire_tw.clonebundles``.

The schedule runs on the (injected) reactor; each pass runs ``BlobStore.expire`` on a
worker thread, one pass at a time. A retention of 0 turns the service off.
"""

from __future__ import annotations

from typing import Any, Final

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from hgwire_tw.blobstore import BlobStore

__all__ = ["DEFAULT_RETENTION", "TEMP_GRACE", "BlobSweeper", "sweep_interval"]

log = Logger()

#: Default ``--blob-retention``: a week.
DEFAULT_RETENTION: Final = 7 * 24 * 3600.0
#: Least age of a temporary file before it counts as a crash leftover.
TEMP_GRACE: Final = 3600.0
#: Longest time between two passes.
MAX_INTERVAL: Final = 3600.0


def sweep_interval(retention: float) -> float:
    """Seconds between passes: a quarter of ``retention`` (so a blob outlives it by at
    most a quarter), at least a second and at most an hour."""
    return min(max(retention / 4, 1.0), MAX_INTERVAL)


class BlobSweeper(service.Service):
    """Deletes blobs unused for ``retention`` seconds, every ``every`` seconds.

    ``threadpool`` runs the disk work (default: the reactor's thread pool); the
    reactor's ``seconds()`` is the wall clock blob mtimes are compared with.
    """

    def __init__(
        self,
        blobs: BlobStore,
        *,
        reactor: Any,
        retention: float = DEFAULT_RETENTION,
        every: float | None = None,
        threadpool: Any = None,
    ) -> None:
        self.blobs = blobs
        self.retention = retention
        self.every = sweep_interval(retention) if every is None else every
        self._reactor = reactor
        self._threadpool = threadpool
        self._loop: LoopingCall | None = None
        self._running: Deferred[list[str]] | None = None
        #: Passes started and files deleted (for logs and tests).
        self.passes = 0
        self.removed = 0

    def startService(self) -> None:
        super().startService()
        if self.retention <= 0:
            return
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = self._reactor
        self._loop.start(self.every, now=True).addErrback(
            lambda f: log.failure("blob retention schedule failed", f)
        )

    def stopService(self) -> Deferred[None]:
        """Stop the schedule; fires once a pass in progress has finished."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        running = self._running
        if running is None:
            return succeed(None)
        done: Deferred[None] = Deferred()

        def finished(result: object) -> object:
            done.callback(None)
            return result

        running.addBoth(finished)
        return done

    def sweep(self) -> Deferred[list[str]]:
        """Start one pass now (unless one is running); fires with the names deleted."""
        if self._running is not None:
            return succeed([])
        now = self._reactor.seconds()
        pool = self._threadpool or self._reactor.getThreadPool()
        self.passes += 1
        d: Deferred[list[str]] = deferToThreadPool(
            self._reactor,
            pool,
            self.blobs.expire,
            unused_before=now - self.retention,
            temp_before=now - TEMP_GRACE,
        )
        self._running = d

        def done(removed: list[str]) -> list[str]:
            self._running = None
            self.removed += len(removed)
            if removed:
                log.info("blob retention: deleted {n} unused blob(s) and leftovers", n=len(removed))
            return removed

        def failed(f: Failure) -> list[str]:
            # A failed pass (disk trouble) must not stop the schedule: log and go on.
            self._running = None
            log.failure("blob retention pass failed", f)
            return []

        d.addCallbacks(done, failed)
        return d
