"""Clone bundles for wire protocol v1: full-repository bundles in the blob store.

Modern ``hg`` clients speak only v1; before a full clone they ask a server that
advertises the ``clonebundles`` capability for a manifest of pre-built bundles, download
one from its URL, apply it and pull whatever is newer from the server. ``CloneBundles``
makes those bundles and answers the manifest, so a clone costs the server a small
incremental pull instead of a whole ``getbundle``.

* A bundle holds every served (non-secret, non-hidden) changeset up to the heads of the
  moment, in ``BUNDLESPEC`` (``zstd-v2``: bundle2, changegroup 02, zstd — what every
  hg ≥ 4.x applies). It is generated with Mercurial's own ``bundle2.writenewbundle`` on
  a dedicated single generator thread (so at most one generation runs at a time, and
  never on a request worker) and published into the ``BlobStore`` with suffix ``.hg``
  before any manifest names it.
* The manifest lists the newest complete bundle of the repository whose heads are all
  still served (it may be older than the current heads: the client pulls the rest),
  as ``URL BUNDLESPEC=zstd-v2 DIGEST=sha256:<hex>``; hg ≥ 6.x checks the digest.
* ``on-demand``: a ``capabilities`` or manifest request for a repository whose heads
  have no bundle starts a generation in the background, unless the newest bundle is
  younger than ``every`` seconds (a busy repository is re-bundled at most that often).
  The first bundle of a repository is made on its first request. ``scheduled``: every
  ``every`` seconds, every served repository whose heads changed is re-bundled.
* A bundle superseded by a newer one of the same repository is deleted ``grace`` seconds
  after its successor appeared (clients that fetched the old manifest have that long to
  download it); a blob some repository's current manifest names is never deleted.
* The index (which bundle belongs to which repository) is ``STATE_DIR/clonebundles.json``,
  written atomically, so bundles survive a restart.

Thread model: ``advertise``/``manifest`` run on request worker threads (they read the
repository); generation and deletion run on the generator thread; the scheduling
decisions run on the reactor thread. The index is guarded by a lock.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from mercurial import bundle2, bundlecaches, discovery, hg, util
from mercurial.node import hex as hexnode
from mercurial.node import nullid
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from hgwire_tw.blobstore import BlobStore
from hgwire_tw.core.errors import UnknownRepository
from hgwire_tw.repo.registry import RepositoryRegistry, ServedRepository
from hgwire_tw.repo.ui import make_ui

__all__ = [
    "BUNDLESPEC",
    "CloneBundle",
    "CloneBundleMode",
    "CloneBundleSource",
    "CloneBundles",
    "manifest_base_url",
    "source_for",
]

log = Logger()

#: The bundle specification generated and advertised.
BUNDLESPEC = "zstd-v2"
#: Capabilities advertised when a manifest is available.
CAPABILITIES = (b"clonebundles", b"clonebundles_manifest")

_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class CloneBundleMode(Enum):
    """When clone bundles are made."""

    OFF = "off"
    ON_DEMAND = "on-demand"
    SCHEDULED = "scheduled"


@dataclass(frozen=True, slots=True, kw_only=True)
class CloneBundle:
    """One published bundle of a repository."""

    blob: str
    size: int
    heads: tuple[str, ...]
    changesets: int
    created: float
    spec: str = BUNDLESPEC


def manifest_base_url(
    blobs: BlobStore, *, host: bytes | None, secure: bool, embedded: str | None
) -> str | None:
    """The base URL bundles are named under for one client.

    A configured ``--blob-base-url`` wins; otherwise the HTTP ``Host`` the client used
    to reach us (so a server bound to 0.0.0.0 hands out a name the client can resolve),
    if it is a well-formed host[:port]; otherwise the embedded listener's URL.
    """
    from hgwire_tw.context import BLOBS_PATH

    if blobs.base_url is not None:
        return blobs.base_url
    if host is not None:
        text = host.decode("latin-1")
        if _HOST.match(text):
            return f"{'https' if secure else 'http'}://{text}{BLOBS_PATH}"
    return embedded


def source_for(
    ctx: Any, served: ServedRepository, *, host: bytes | None = None, secure: bool = False
) -> CloneBundleSource | None:
    """The clone bundle source for one v1 request or session, or None for none at all.

    None when clone bundles are off, when there is no URL to name blobs under, or when
    the embedded listener would refuse the blob to an anonymous client (some repository
    needs a login: see ``hgwire_tw.transports.httpblobs``) — hg fetches a bundle URL
    without the credentials it used for the repository, so advertising it would only
    make the clone fail. A configured external base URL is the operator's to protect.
    """
    bundles: CloneBundles | None = ctx.clonebundles
    if bundles is None:
        return None
    base = manifest_base_url(
        bundles.blobs, host=host, secure=secure, embedded=ctx.embedded_blob_base
    )
    if base is None:
        return None
    if bundles.blobs.base_url is None:
        from hgwire_tw.transports.httpblobs import blob_access

        if blob_access(ctx, None) is not None:
            return None
    return CloneBundleSource(bundles, served, base)


class CloneBundleSource:
    """What one v1 request's protocol handler asks (on a worker thread)."""

    def __init__(self, bundles: CloneBundles, served: ServedRepository, base_url: str) -> None:
        self.bundles = bundles
        self.served = served
        self.base_url = base_url

    def advertise(self, repo: Any) -> bool:
        """Whether to advertise the clone bundle capabilities (may start a generation)."""
        return self.bundles.current(self.served, repo) is not None

    def manifest(self, repo: Any) -> bytes:
        """The manifest text for this repository (empty when there is no bundle yet)."""
        bundle = self.bundles.current(self.served, repo)
        if bundle is None:
            return b""
        url = self.bundles.blobs.url(bundle.blob, self.base_url)
        self.bundles.manifests_served += 1
        return f"{url} BUNDLESPEC={bundle.spec} DIGEST=sha256:{bundle.blob[:64]}\n".encode()

    def inline(self, repo: Any, path: bytes) -> Iterator[bytes] | None:
        """``get_cached_bundle_inline``'s body for ``path``, or None (worker thread).

        Only the blob name of a bundle indexed for *this* repository, still served and
        hash-checked, is found; every other ``path`` (a file name, ``../``, another
        repository's bundle) gets None, so the caller gives one answer for all of them
        and the command cannot probe the filesystem. The body is Mercurial's: the
        length as an unsigned varint, then the file in pieces.
        """
        name = path.decode("ascii", "replace")
        view = repo.filtered(b"served")
        found = any(
            b.blob == name and self.bundles._still_served(view, b)
            for b in self.bundles.bundles(self.served.name)
        )
        if not found or not self.bundles._check(name):
            return None
        f = self.bundles.blobs.open(name)
        if f is None:
            return None
        return _inline_chunks(f)


def _inline_chunks(f: Any) -> Iterator[bytes]:
    with f:
        f.seek(0, os.SEEK_END)
        yield util.uvarintencode(f.tell())
        f.seek(0)
        yield from util.filechunkiter(f)


class CloneBundles:
    """Makes, indexes, advertises and expires the clone bundles of every repository."""

    def __init__(
        self,
        *,
        reactor: Any,
        blobs: BlobStore,
        registry: RepositoryRegistry,
        index_path: Path,
        mode: CloneBundleMode = CloneBundleMode.ON_DEMAND,
        every: float = 3600.0,
        grace: float = 3600.0,
        clock: Callable[[], float] = time.time,
        threadpool: ThreadPool | None = None,
    ) -> None:
        self.reactor = reactor
        self.blobs = blobs
        self.registry = registry
        self.index_path = index_path
        self.mode = mode
        self.every = every
        self.grace = grace
        self.clock = clock
        self._threads = threadpool or ThreadPool(minthreads=0, maxthreads=1, name="clonebundles")
        self._lock = threading.Lock()
        self._index: dict[str, list[CloneBundle]] = self._load()
        self._running: dict[str, Deferred[CloneBundle | None]] = {}
        #: blob → (size, mtime) when its hash was last checked.
        self._verified: dict[str, tuple[int, int]] = {}
        self._loop: LoopingCall | None = None
        #: Counters for logs and tests.
        self.generated = 0
        self.manifests_served = 0

    # -- lifecycle (reactor thread) ------------------------------------------------------

    def start(self) -> None:
        """Start the generator thread, the schedule and a first expiry pass."""
        self._threads.start()
        if self.mode is CloneBundleMode.SCHEDULED and self.every > 0:
            self._loop = LoopingCall(self.sweep)
            self._loop.clock = self.reactor
            self._loop.start(self.every, now=True).addErrback(
                lambda f: log.failure("clone bundle schedule failed", f)
            )
        self._collect_later(0)

    def stop(self) -> None:
        """Stop the schedule and the generator thread (waits for a running generation)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._threads.stop()

    # -- worker-thread side ----------------------------------------------------------------

    def current(self, served: ServedRepository, repo: Any) -> CloneBundle | None:
        """The bundle to advertise for ``served`` now, starting a generation if the heads
        moved on (on-demand). Runs on the worker thread holding ``repo``."""
        view = repo.filtered(b"served")
        heads = tuple(sorted(hexnode(h).decode("ascii") for h in view.heads()))
        if heads == (hexnode(nullid).decode("ascii"),):
            return None
        with self._lock:
            bundles = list(self._index.get(served.name, ()))
        usable: CloneBundle | None = None
        for bundle in reversed(bundles):
            if self._still_served(view, bundle) and self._intact(bundle.blob):
                usable = bundle
                break
        if self.mode is CloneBundleMode.ON_DEMAND and (usable is None or usable.heads != heads):
            self.reactor.callFromThread(self.request, served)
        return usable

    def _stat(self, blob: str) -> tuple[int, int] | None:
        try:
            st = self.blobs.path(blob).stat()
        except (OSError, ValueError):
            return None
        return (st.st_size, st.st_mtime_ns)

    def _intact(self, blob: str) -> bool:
        """Whether ``blob`` was hash-checked and has not changed on disk since.

        hg aborts a clone on a bundle whose bytes do not match its DIGEST (its
        ``ui.clonebundlefallback`` covers only HTTP and connection errors), so a blob
        that changed after publishing is not advertised until it is checked again.
        """
        stat = self._stat(blob)
        with self._lock:
            return stat is not None and self._verified.get(blob) == stat

    @staticmethod
    def _still_served(view: Any, bundle: CloneBundle) -> bool:
        # After a strip, or heads turned secret, an old bundle would hand out changesets
        # the server no longer serves.
        has = view.changelog.hasnode
        return all(has(bytes.fromhex(h)) for h in bundle.heads)

    # -- scheduling (reactor thread) -------------------------------------------------------

    def request(self, served: ServedRepository) -> Deferred[CloneBundle | None] | None:
        """Start generating a bundle of ``served`` unless one is running or too recent."""
        if served.name in self._running:
            return None
        with self._lock:
            newest = (self._index.get(served.name) or [None])[-1]
        if (
            self.mode is CloneBundleMode.ON_DEMAND
            and newest is not None
            and self._intact(newest.blob)
            and self.clock() - newest.created < self.every
        ):
            return None
        return self.generate(served)

    def generate(self, served: ServedRepository) -> Deferred[CloneBundle | None]:
        """Generate a bundle of ``served`` now (on the generator thread), one at a time per
        repository; fires with the new bundle, or None when it was already current."""
        running = self._running.get(served.name)
        if running is not None:
            result: Deferred[CloneBundle | None] = Deferred()
            running.addBoth(lambda r: (result.callback(None), r)[1])
            return result
        d: Deferred[CloneBundle | None] = deferToThreadPool(
            self.reactor, self._threads, self._generate, served
        )
        self._running[served.name] = d

        def done(bundle: CloneBundle | None) -> CloneBundle | None:
            self._running.pop(served.name, None)
            if bundle is not None:
                log.info(
                    "clone bundle {repo} {blob} {size} bytes {n} changesets",
                    repo=served.name or "/",
                    blob=bundle.blob,
                    size=bundle.size,
                    n=bundle.changesets,
                )
                self._collect_later(self.grace)
            return bundle

        def failed(f: Any) -> None:
            self._running.pop(served.name, None)
            log.failure("clone bundle generation for {repo} failed", f, repo=served.name or "/")

        d.addCallbacks(done, failed)
        return d

    def sweep(self) -> Deferred[Any]:
        """Scheduled pass: re-bundle every served repository whose heads changed."""
        from twisted.internet.defer import DeferredList

        return DeferredList([self.generate(served) for served in self._served()])

    def _served(self) -> list[ServedRepository]:
        out = []
        for name in self.registry.names():
            try:
                out.append(self.registry.resolve(name))
            except UnknownRepository:  # vanished between listing and lookup
                continue
        return out

    def _collect_later(self, delay: float) -> None:
        def collect() -> None:
            deferToThreadPool(self.reactor, self._threads, self.collect).addErrback(
                lambda f: log.failure("clone bundle expiry failed", f)
            )

        self.reactor.callLater(max(delay, 0) + 0.001, collect)

    # -- generator thread ------------------------------------------------------------------

    def _generate(self, served: ServedRepository) -> CloneBundle | None:
        repo = hg.repository(make_ui(), os.fsencode(served.path))
        view = repo.filtered(b"served")
        heads = sorted(view.heads())
        if heads == [nullid]:
            return None
        hex_heads = tuple(hexnode(h).decode("ascii") for h in heads)
        with self._lock:
            newest = (self._index.get(served.name) or [None])[-1]
        if newest is not None and newest.heads == hex_heads and self._check(newest.blob):
            return None
        spec = bundlecaches.parsebundlespec(view, BUNDLESPEC.encode(), strict=True)
        outgoing = discovery.outgoing(view, [nullid], heads)
        self.blobs.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".bundle-", dir=self.blobs.directory)
        os.close(fd)
        try:
            bundle2.writenewbundle(
                view.ui,
                view,
                b"clonebundles",
                os.fsencode(tmp),
                b"HG20",
                outgoing,
                spec.params,
                compression=spec.wirecompression,
                compopts={},
            )
            blob = self.blobs.publish_file(tmp, suffix=".hg")
        finally:
            os.unlink(tmp)
        stat = self._stat(blob.name)
        bundle = CloneBundle(
            blob=blob.name,
            size=blob.size,
            heads=hex_heads,
            changesets=len(outgoing.missing),
            created=self.clock(),
        )
        with self._lock:
            if stat is not None:
                self._verified[blob.name] = stat
            # A bundle regenerated with the same bytes replaces its old entry.
            others = [b for b in self._index.get(served.name, []) if b.blob != blob.name]
            self._index[served.name] = [*others, bundle]
            self._save()
        self.generated += 1
        return bundle

    def _check(self, blob: str) -> bool:
        """Hash-check ``blob`` unless it is known intact; a damaged one is deleted."""
        if self._intact(blob):
            return True
        stat = self._stat(blob)
        if stat is None:
            return False
        if not self.blobs.verify(blob):
            log.warn("clone bundle {blob} is damaged: deleting it", blob=blob)
            self.blobs.remove(blob)
            return False
        with self._lock:
            self._verified[blob] = stat
        return True

    def collect(self) -> list[str]:
        """Delete bundles superseded more than ``grace`` seconds ago; returns their blobs.

        Never deletes a blob that some repository's newest bundle names.
        """
        now = self.clock()
        removed: list[str] = []
        with self._lock:
            current = {bundles[-1].blob for bundles in self._index.values() if bundles}
            for name, bundles in list(self._index.items()):
                keep: list[CloneBundle] = []
                for older, newer in itertools.pairwise(bundles):
                    if now - newer.created >= self.grace and older.blob not in current:
                        removed.append(older.blob)
                    else:
                        keep.append(older)
                self._index[name] = [*keep, bundles[-1]] if bundles else []
            if removed:
                self._save()
            still_named = {b.blob for bundles in self._index.values() for b in bundles}
        for blob in removed:
            if blob not in still_named:
                self.blobs.remove(blob)
        return removed

    # -- the index -------------------------------------------------------------------------

    def bundles(self, name: str) -> list[CloneBundle]:
        """The indexed bundles of repository ``name``, oldest first."""
        with self._lock:
            return list(self._index.get(name, ()))

    def _load(self) -> dict[str, list[CloneBundle]]:
        try:
            raw = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warn(
                "ignoring unreadable clone bundle index {path}: {e}", path=self.index_path, e=e
            )
            return {}
        index: dict[str, list[CloneBundle]] = {}
        for name, entries in raw.items():
            try:
                bundles = [
                    CloneBundle(**{**entry, "heads": tuple(entry["heads"])}) for entry in entries
                ]
            except (TypeError, KeyError):
                continue
            index[name] = [b for b in bundles if BlobStore.valid_name(b.blob)]
        return index

    def _save(self) -> None:
        # Called with the lock held.
        data = {name: [asdict(b) for b in bundles] for name, bundles in self._index.items()}
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, self.index_path)
