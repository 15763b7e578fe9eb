"""``twistd hgwire`` / ``hgwire serve``: options and the service they build.

Both entry points parse the same ``Options`` and call ``makeService``, which returns one
``MultiService``: the worker pool, then one listening service per endpoint of each
transport. The options, their config-file keys, defaults and checks are the rows of
``hgwire_tw.app.settings.TABLE``; this module adds the checks spanning several settings
and builds the service.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python import usage

from hgwire_tw.app.options import TableOptions
from hgwire_tw.app.settings import DEFAULT_HTTP, DEFAULT_SSH, DEFAULT_TCP
from hgwire_tw.context import BLOBS_PATH, ServerContext

__all__ = [
    "DEFAULT_HTTP",
    "DEFAULT_SSH",
    "DEFAULT_TCP",
    "TRANSPORTS",
    "HgwireService",
    "Options",
    "default_state_dir",
    "makeService",
]

log = Logger()

#: Transports and the modules that build their factories, in listening.json order.
TRANSPORTS = ("http", "ssh", "tcp")


def default_state_dir() -> Path:
    """Where keys, caches and ``listening.json`` live unless ``--state-dir`` says otherwise."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "hgwire"


class Options(TableOptions):
    """Command-line options shared by ``hgwire serve`` and ``twistd hgwire``: one per row
    of ``hgwire_tw.app.settings.TABLE``, plus the checks that span several rows."""

    synopsis = "[options]"
    longdesc = (
        "Serve Mercurial repositories over HTTP (wire protocol v1 and v2), SSH and raw TCP. "
        "With no --repo, --repos-dir or --mirror, serves the repository in the current "
        "directory."
    )

    def check_together(self) -> None:
        """The default repository, paths that must exist, names used twice, and
        redirects that need a cache."""
        if not self["repos"] and not self["repos-dir"] and not self["mirrors"]:
            self["repos"] = {"": "."}
        for name, path in self["repos"].items():
            if not (Path(path) / ".hg").is_dir():
                raise usage.UsageError(f"--repo {name}={path}: not a Mercurial repository")
        if self["repos-dir"] and not Path(self["repos-dir"]).is_dir():
            raise usage.UsageError(f"--repos-dir {self['repos-dir']}: not a directory")
        for name in self["mirrors"]:
            if name in self["repos"]:
                raise usage.UsageError(f"--mirror {name}: also given as --repo")
        if (self["redirects"] or self["redirect-targets"]) and self["cache"] == "none":
            raise usage.UsageError("--redirects: redirects serve cached responses; --cache none")


class ListeningService(service.Service):
    """Listens on one endpoint while running; records the bound port."""

    def __init__(
        self, transport: str, description: str, endpoint: Any, factory: Any, metrics: Any = None
    ) -> None:
        self.transport = transport
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        #: ``ServerMetrics`` counting this listener's connections and bytes, if any.
        self.metrics = metrics
        self.port: Any = None
        self.ready: Deferred[Any] = Deferred()

    def startService(self) -> None:
        super().startService()
        factory = self.factory
        if self.metrics is not None:
            factory = self.metrics.counting_factory(self.transport, factory)
        d = self.endpoint.listen(factory)

        def listening(port: Any) -> Any:
            self.port = port
            log.info(
                "{transport} listening on {address}",
                transport=self.transport,
                address=port.getHost(),
            )
            return port

        def failed(f: Any) -> Any:
            log.failure("cannot listen on {description}", f, description=self.description)
            from twisted.internet import reactor

            reactor.stop()  # type: ignore[attr-defined]
            return f

        d.addCallbacks(listening, failed)
        d.chainDeferred(self.ready)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()  # type: ignore[no-any-return]
        return None


class PoolService(service.Service):
    """Starts and stops the worker pool with the service."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


def embedded_blob_base(listener: ListeningService) -> str:
    """The URL of the blob directory served by ``listener`` (an HTTP listener)."""
    address = listener.port.getHost()
    host = address.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    elif ":" in host:
        host = f"[{host}]"
    scheme = "https" if listener.description.strip().lower().startswith("ssl:") else "http"
    return f"{scheme}://{host}:{address.port}{BLOBS_PATH}"


class CloneBundleService(service.Service):
    """Runs the clone bundle generator and schedule with the service."""

    def __init__(self, bundles: Any) -> None:
        self.bundles = bundles

    def startService(self) -> None:
        super().startService()
        self.bundles.start()

    def stopService(self) -> None:
        super().stopService()
        self.bundles.stop()


class HgwireService(service.MultiService):
    """The whole server; writes ``listening.json`` once every endpoint is bound."""

    def __init__(self, context: ServerContext, state_dir: Path) -> None:
        super().__init__()
        self.context = context
        self.state_dir = state_dir
        self.listeners: list[ListeningService] = []

    def startService(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        super().startService()
        DeferredList([s.ready for s in self.listeners], consumeErrors=True).addCallback(
            lambda _: self._write_listening()
        )

    def _write_listening(self) -> None:
        ports: dict[str, list[int]] = {name: [] for name in TRANSPORTS}
        for s in self.listeners:
            if s.port is not None:
                ports.setdefault(s.transport, []).append(s.port.getHost().port)
                if s.transport == "http" and self.context.embedded_blob_base is None:
                    self.context.embedded_blob_base = embedded_blob_base(s)
        path = self.state_dir / "listening.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(ports), encoding="utf-8")
        os.replace(tmp, path)


def _factory(transport: str, ctx: ServerContext, state_dir: Path) -> Any:
    if transport == "http":
        from hgwire_tw.transports.http import make_site

        site = make_site(ctx)
        site.displayTracebacks = False
        return site
    if transport == "ssh":
        from hgwire_tw.transports.ssh import make_ssh_factory  # type: ignore[import-not-found]

        return make_ssh_factory(ctx, state_dir)
    from hgwire_tw.transports.tcp import make_tcp_factory  # type: ignore[import-not-found]

    return make_tcp_factory(ctx)


def _make_runner(ctx: ServerContext, pool: Any, state_dir: Path) -> Any:
    """The v2 runner with the configured response cache and redirect targets."""
    from hgwire_tw.cache import make_store
    from hgwire_tw.commands.registry import COMMANDS, CommandOptions, build_commands
    from hgwire_tw.commands.runner import CommandRunner
    from hgwire_tw.redirects import REDIRECT_HASHES, AdvertisedTargets, Redirector

    s = ctx.settings
    default_size = (4096 if s.cache == "disk" else 256) * 1024 * 1024
    ctx.cache = make_store(
        s.cache, size=s.cache_size or default_size, directory=str(state_dir / "cache")
    )
    redirector = None
    commands = COMMANDS
    if ctx.cache is not None and ctx.blobs is not None and (s.redirects or s.redirect_targets):
        redirector = Redirector(
            ctx.blobs,
            s.redirect_targets,
            embedded=s.redirects,
            embedded_base=lambda: ctx.embedded_blob_base,
        )
        commands = build_commands(
            CommandOptions(
                redirect_targets=AdvertisedTargets(redirector), redirect_hashes=REDIRECT_HASHES
            )
        )
    return CommandRunner(pool, commands, cache=ctx.cache, redirector=redirector)


def makeService(options: Options, reactor: Any = None) -> HgwireService:
    """Build the service ``options`` describe."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    from hgwire_tw.access import AccessFileError, AccessPolicy
    from hgwire_tw.blobstore import BlobStore
    from hgwire_tw.repo.pool import RepositoryPool
    from hgwire_tw.repo.registry import RepositoryRegistry

    settings = options.settings()
    state_dir = Path(options["state-dir"] or default_state_dir()).resolve()
    try:
        access = (
            AccessPolicy.load(options["access"]) if options["access"] else (AccessPolicy.default())
        )
    except AccessFileError as e:
        raise usage.UsageError(str(e)) from e
    mirrors = _prepare_mirrors(options, state_dir)
    registry = RepositoryRegistry(
        repos={name: Path(path).resolve() for name, path in options["repos"].items()}
        | {name: path for name, (_, path) in mirrors.items()},
        repos_dir=Path(options["repos-dir"]).resolve() if options["repos-dir"] else None,
    )
    pool = RepositoryPool(reactor, size=settings.workers)
    ctx = ServerContext(
        reactor=reactor, registry=registry, pool=pool, access=access, settings=settings
    )
    ctx.blobs = BlobStore(state_dir / "blobs", settings.blob_base_url)
    ctx.runner = _make_runner(ctx, pool, state_dir)
    top = HgwireService(ctx, state_dir)
    PoolService(pool).setServiceParent(top)
    if settings.clonebundles != "off":
        from hgwire_tw.clonebundles import CloneBundleMode, CloneBundles

        ctx.clonebundles = CloneBundles(
            reactor=reactor,
            blobs=ctx.blobs,
            registry=registry,
            index_path=state_dir / "clonebundles.json",
            mode=CloneBundleMode(settings.clonebundles),
            every=settings.clonebundles_every,
            grace=settings.clonebundles_grace,
        )
        CloneBundleService(ctx.clonebundles).setServiceParent(top)
    if settings.blob_retention > 0:
        from hgwire_tw.blobsweep import BlobSweeper

        sweeper = BlobSweeper(ctx.blobs, reactor=reactor, retention=settings.blob_retention)
        sweeper.setServiceParent(top)
    for transport in TRANSPORTS:
        for description in options[transport]:
            factory = _factory(transport, ctx, state_dir)
            endpoint = endpoints.serverFromString(reactor, description)
            listener = ListeningService(transport, description, endpoint, factory, ctx.metrics)
            listener.setServiceParent(top)
            top.listeners.append(listener)
    _add_web(top, ctx, reactor)
    _add_mirror_syncs(top, options, mirrors, reactor)
    return top


def _add_web(top: HgwireService, ctx: ServerContext, reactor: Any) -> None:
    """The hgweb pages' thread pool, metrics wiring and a ``--metrics ENDPOINT`` listener."""
    ctx.metrics.watch(ctx)
    ctx.metrics.watch_pool("repo", ctx.pool.threadpool)
    if hasattr(reactor, "getThreadPool"):
        ctx.metrics.watch_pool("reactor", reactor.getThreadPool)
    if ctx.settings.web != "none":
        from hgwire_tw.web.resource import WebFrontEnd

        ctx.web = WebFrontEnd(ctx)
        ctx.metrics.watch_pool("web", ctx.web.threadpool)
        PoolService(ctx.web).setServiceParent(top)
    if ctx.settings.metrics not in ("http", "none"):
        from twisted.web.server import Site

        from hgwire_tw.web.metricspage import MetricsResource

        try:
            endpoint = endpoints.serverFromString(reactor, ctx.settings.metrics)
        except ValueError as e:
            raise usage.UsageError(f"--metrics {ctx.settings.metrics}: {e}") from e
        site = Site(MetricsResource(ctx))
        listener = ListeningService("metrics", ctx.settings.metrics, endpoint, site)
        listener.setServiceParent(top)
        top.listeners.append(listener)


# -- mirrors (--mirror NAME=URL): served read-only, synced by a child service ------------


def _prepare_mirrors(options: Options, state_dir: Path) -> dict[str, tuple[str, Path]]:
    """``{name: (url, path)}`` of the mirrors, each repository created and marked
    read-only if needed (before the reactor runs)."""
    from hgwire_tw.client.mirror import prepare_mirror
    from hgwire_tw.repo.registry import check_name

    if not options["mirrors"]:
        return {}
    base = Path(options["mirror-dir"] or state_dir / "mirrors").resolve()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    mirrors: dict[str, tuple[str, Path]] = {}
    for name, url in options["mirrors"].items():
        try:
            check_name(name)
        except Exception as e:
            raise usage.UsageError(f"--mirror {name}: {e}") from e
        path = base / name if name else base / "_root"
        prepare_mirror(path, url)
        mirrors[name] = (url, path)
    return mirrors


def _add_mirror_syncs(
    top: service.MultiService, options: Options, mirrors: dict[str, tuple[str, Path]], reactor: Any
) -> None:
    from hgwire_tw.client.mirror import MirrorSync, pull_mirror

    every = float(options["mirror-every"])
    for name, (url, path) in mirrors.items():
        pull = pull_mirror(reactor, url, path, threadpool=reactor.getThreadPool())
        MirrorSync(name or "(root)", pull, reactor=reactor, every=every).setServiceParent(top)
