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
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from hgwire_tw.app.lifecycle import (
    IDLE_CLOSERS,
    ConnectionTracker,
    drain,
    reloadable_tls,
    tls_context_factory,
)
from hgwire_tw.app.options import TableOptions
from hgwire_tw.app.settings import DEFAULT_HTTP, DEFAULT_SSH, DEFAULT_TCP
from hgwire_tw.context import BLOBS_PATH, ServerContext

__all__ = [
    "DEFAULT_HTTP",
    "DEFAULT_SSH",
    "DEFAULT_TCP",
    "TRANSPORTS",
    "HgwireService",
    "ListenFailed",
    "ListeningService",
    "Options",
    "default_state_dir",
    "makeService",
    "parse_endpoint",
    "warn_refused_keys",
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


class ListenFailed(Exception):
    """A listener could not bind its endpoint (the message names it and the OS error)."""


class ListeningService(service.Service):
    """Listens on one endpoint while running; records the bound port.

    It binds in ``privilegedStartService`` (before the reactor runs, and before twistd
    drops privileges), so a port in use is known at once; ``ready`` fires with the port,
    or with None after a failure (``failure`` then says why). ``tracker`` follows the
    connections for a graceful stop; ``tls`` holds the replaceable certificate of a
    ``ssl:`` endpoint.
    """

    def __init__(
        self,
        transport: str,
        description: str,
        endpoint: Any,
        factory: Any,
        *,
        tracker: ConnectionTracker | None = None,
        metrics: Any = None,
    ) -> None:
        self.transport = transport
        self.description = description
        self.endpoint = endpoint
        self.tls = reloadable_tls(endpoint)
        self.tracker = tracker or ConnectionTracker(IDLE_CLOSERS[transport])
        self.factory = self.tracker.watch(factory)
        #: ``ServerMetrics`` counting this listener's connections and bytes, if any.
        self.metrics = metrics
        self.port: Any = None
        self.failure: Failure | None = None
        self.ready: Deferred[Any] = Deferred()
        self._listening: Deferred[Any] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._listening is not None:
            return
        factory = self.factory
        if self.metrics is not None:
            factory = self.metrics.counting_factory(self.transport, factory)
        self._listening = self.endpoint.listen(factory)
        self._listening.addCallbacks(self._bound, self._failed)

    def _bound(self, port: Any) -> None:
        self.port = port
        log.info(
            "{transport} listening on {address} ({description})",
            transport=self.transport,
            address=_address(port.getHost()),
            description=self.description,
        )
        self.ready.callback(port)

    def _failed(self, failure: Failure) -> None:
        self.failure = failure
        self.ready.callback(None)

    def problem(self) -> str:
        """One line saying why listening failed."""
        assert self.failure is not None
        return (
            f"cannot listen on {self.description} ({self.transport}): "
            f"{describe_error(self.failure.value)}"
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()  # type: ignore[no-any-return]
        return None


def _address(address: Any) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    return str(name if name is not None else address)


def describe_error(error: BaseException) -> str:
    """An exception as one readable line (OpenSSL errors are lists of tuples)."""
    from OpenSSL.SSL import Error as SSLError

    if isinstance(error, SSLError) and error.args and isinstance(error.args[0], list):
        reasons = [str(item[-1]) for item in error.args[0] if item]
        return "TLS: " + ("; ".join(reasons) or "error")
    if isinstance(error, OSError) and error.strerror:
        name = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{name}"
    return str(error).strip() or type(error).__name__


def parse_endpoint(reactor: Any, option: str, description: str) -> Any:
    """The server endpoint ``description`` given to ``--OPTION``, or a one-line
    ``UsageError`` naming both and what is wrong (a missing TLS file, an unknown type,
    a systemd socket that was not passed)."""
    try:
        return endpoints.serverFromString(reactor, description)
    except Exception as e:
        problem = describe_error(e)
        if isinstance(e, (KeyError, IndexError)) and description.strip().startswith("systemd:"):
            problem = _missing_systemd_socket(e)
        raise usage.UsageError(f"--{option} {description}: {problem}") from None


def _missing_systemd_socket(error: LookupError) -> str:
    from twisted.python.systemd import ListenFDs

    # Twisted reads (and clears) systemd's LISTEN_* variables once, when its systemd
    # endpoint parser is imported; what it found is only on that parser.
    parser = getattr(endpoints, "_SystemdParser", None)
    passed = getattr(parser, "_sddaemon", None) or ListenFDs.fromEnvironment()
    if isinstance(error, KeyError):
        wanted = f"no socket named {error.args[0]!r}"
        have = ", ".join(repr(n) for n in passed.inheritedNamedDescriptors())
    else:
        wanted = "no socket at that index"
        have = f"{len(passed.inheritedDescriptors())} socket(s)"
    if not passed.inheritedDescriptors():
        return f"systemd passed {wanted} (none at all: is the service started by its .socket unit?)"
    return f"systemd passed {wanted} (it passed {have})"


class PoolService(service.Service):
    """Starts and stops the worker pool with the service; once started, the pool rolls
    back transactions a crash abandoned in the ``registry``'s repositories."""

    def __init__(self, pool: Any, registry: Any = None) -> None:
        self.pool = pool
        self.registry = registry

    def startService(self) -> None:
        super().startService()
        self.pool.start()
        if self.registry is not None:
            from hgwire_tw.repo.recovery import served_repositories

            d = self.pool.recover_all(lambda: served_repositories(self.registry))
            d.addErrback(lambda f: log.failure("start-up recovery failed", f))

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
    """The whole server.

    Start: listeners bind (a failure raises ``ListenFailed`` from
    ``privilegedStartService``, or stops the reactor with ``exit_status`` 1 for an endpoint
    that binds later); it logs what is served and warns about set-ups that serve nothing;
    ``listening.json`` is written once every endpoint is bound. Stop: no new
    connections, then connections in flight get ``grace`` seconds to finish
    (``lifecycle.drain``), then the other services (mirrors, bundles, the worker pool)
    stop. ``reload()`` (SIGHUP) re-reads the access file and TLS certificates and rescans
    ``--repos-dir``; a reload that fails changes nothing and logs why.
    """

    def __init__(
        self,
        context: ServerContext,
        state_dir: Path,
        *,
        access_path: str | None = None,
        grace: float = 30.0,
        mirrors: dict[str, tuple[str, Path]] | None = None,
    ) -> None:
        super().__init__()
        self.context = context
        self.state_dir = state_dir
        self.access_path = access_path
        self.grace = grace
        self.mirrors = mirrors or {}
        self.listeners: list[ListeningService] = []
        self.exit_status = 0
        self._stopped: Deferred[None] | None = None
        self._logged_skips: set[tuple[str, str]] = set()

    def privilegedStartService(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        super().privilegedStartService()
        failed = [s for s in self.listeners if s.failure is not None]
        if failed:
            for s in self.listeners:
                s.stopService()
            raise ListenFailed(failed[0].problem())

    def startService(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        super().startService()
        self._handle_sighup()
        self._announce()
        DeferredList([s.ready for s in self.listeners]).addCallback(lambda _: self._bound())

    def _bound(self) -> None:
        failed = [s for s in self.listeners if s.failure is not None]
        if failed:
            log.critical("{problem}; stopping", problem=failed[0].problem())
            self.exit_status = 1
            self.context.reactor.stop()
            return
        self._write_listening()

    def _handle_sighup(self) -> None:
        """SIGHUP reloads (when started on the main thread, as both runners do)."""
        if threading.current_thread() is not threading.main_thread():
            return
        reactor = self.context.reactor

        def hangup(signum: int, frame: object) -> None:
            reactor.callFromThread(self.reload)

        signal.signal(signal.SIGHUP, hangup)

    # -- what is served ------------------------------------------------------------------

    def _announce(self) -> None:
        # A --metrics listener of its own serves no repository: it does not count.
        if not any(s.transport in TRANSPORTS for s in self.listeners):
            log.warn("every listener is 'none' (--http, --ssh, --tcp): nothing can connect")
        if any(s.transport == "ssh" for s in self.listeners) and not self.access_path:
            log.warn("SSH is listening but there is no --access file: no one can log in")
        reactor = self.context.reactor
        deferToThreadPool(reactor, reactor.getThreadPool(), self._survey).addCallbacks(
            self._announce_repositories,
            lambda f: log.failure("cannot list the served repositories", f),
        )

    def _survey(self) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
        """Worker thread: the served repositories and those ``--repos-dir`` skips."""
        registry = self.context.registry
        registry.refresh()
        served = []
        for name in registry.names():
            try:
                served.append((name, registry.resolve(name).path))
            except Exception:
                continue
        return served, registry.skipped()

    def _announce_repositories(
        self, survey: tuple[list[tuple[str, Path]], list[tuple[str, str]]]
    ) -> None:
        served, skipped = survey
        for name, path in served:
            mirror = self.mirrors.get(name)
            if mirror is not None:
                log.info(
                    "serving {name} (a mirror of {url}) from {path}",
                    name=name or "/",
                    url=mirror[0],
                    path=path,
                )
            else:
                log.info("serving {name} from {path}", name=name or "/", path=path)
        self._log_skipped(skipped)
        if not served:
            log.warn("no repository is served (check --repo, --repos-dir, --mirror)")

    def _log_skipped(self, skipped: list[tuple[str, str]]) -> None:
        for item in skipped:
            if item not in self._logged_skips:
                self._logged_skips.add(item)
                log.warn("--repos-dir: not serving {name}: {why}", name=item[0], why=item[1])

    def _write_listening(self) -> None:
        ports: dict[str, list[int]] = {name: [] for name in TRANSPORTS}
        for s in self.listeners:
            if s.port is not None:
                ports.setdefault(s.transport, []).append(getattr(s.port.getHost(), "port", 0))
                if s.transport == "http" and self.context.embedded_blob_base is None:
                    self.context.embedded_blob_base = embedded_blob_base(s)
        path = self.state_dir / "listening.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(ports), encoding="utf-8")
        os.replace(tmp, path)

    # -- graceful stop ---------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """Stop accepting, let connections in flight finish (up to ``grace``), then
        stop everything else."""
        if self._stopped is not None:
            return self._stopped
        reactor = self.context.reactor
        trackers = [s.tracker for s in self.listeners]
        open_now = sum(len(t.connections) for t in trackers)
        log.info(
            "stopping: no new connections; {n} open connection(s) have up to {grace:g}s to finish",
            n=open_now,
            grace=self.grace,
        )
        stopped = DeferredList([maybeDeferred(s.stopService) for s in self.listeners])
        stopped.addCallback(lambda _: drain(reactor, trackers, self.grace))

        def drained(cut: int) -> Deferred[Any]:
            if cut:
                log.warn(
                    "{n} connection(s) still open after {grace:g}s: cut",
                    n=cut,
                    grace=self.grace,
                )
            return maybeDeferred(super(HgwireService, self).stopService)

        stopped.addCallback(drained)
        stopped.addCallback(lambda _: log.info("stopped"))
        self._stopped = stopped
        return stopped

    def cut_now(self) -> None:
        """Abort every open connection now (a second SIGTERM)."""
        cut = sum(s.tracker.abort() for s in self.listeners)
        log.warn("cutting {n} open connection(s) now", n=cut)

    # -- reload ------------------------------------------------------------------------------

    def reload(self) -> Deferred[None]:
        """Re-read the access file and TLS certificates, rescan ``--repos-dir``.

        The new access rules and certificates are read and checked on a worker thread
        and then replace the old ones all at once, and the context's reload hooks run
        (``ServerContext.on_reload``); if anything fails, nothing is replaced, no hook
        runs and the reason is logged. Open connections are not touched.
        """
        reactor = self.context.reactor
        log.info("reloading the access file, TLS certificates and --repos-dir")
        d = deferToThreadPool(reactor, reactor.getThreadPool(), self._read_new_config)

        def apply(new: tuple[Any, list[tuple[ListeningService, Any]]]) -> None:
            access, certificates = new
            if access is not None:
                self.context.access = access
                warn_refused_keys(access)
                log.info(
                    "access file {path}: {users} user(s), {rules} rule(s)",
                    path=self.access_path,
                    users=len(access.users),
                    rules=len(access.rules),
                )
            for listener, factory in certificates:
                assert listener.tls is not None
                listener.tls.current = factory
                log.info(
                    "TLS certificate reloaded for {description}", description=listener.description
                )
            self._tell_components()

        def failed(f: Failure) -> None:
            log.error(
                "reload failed, keeping the previous configuration: {why}",
                why=describe_error(f.value),
            )

        d.addCallbacks(apply, failed)
        d.addCallback(lambda _: deferToThreadPool(reactor, reactor.getThreadPool(), self._survey))
        d.addCallbacks(self._reannounce, lambda f: log.failure("cannot rescan the repositories", f))
        return d

    def _tell_components(self) -> None:
        """Run the context's reload hooks (``ServerContext.on_reload``)."""
        for hook in list(self.context.reload_hooks):
            try:
                hook(self.context)
            except Exception:
                log.failure("a reload hook failed: {hook!r}", hook=hook)

    def _read_new_config(self) -> tuple[Any, list[tuple[ListeningService, Any]]]:
        """Worker thread: the new access policy and TLS context factories (or raise)."""
        from hgwire_tw.access import AccessPolicy

        access = AccessPolicy.load(self.access_path) if self.access_path else None
        certificates = []
        for listener in self.listeners:
            if listener.tls is None:
                continue
            try:
                fresh = tls_context_factory(
                    endpoints.serverFromString(self.context.reactor, listener.description)
                )
                fresh.getContext()  # reads and checks the certificate and key now
            except Exception as e:
                raise ValueError(f"{listener.description}: {describe_error(e)}") from e
            certificates.append((listener, fresh))
        return access, certificates

    def _reannounce(self, survey: tuple[list[tuple[str, Path]], list[tuple[str, str]]]) -> None:
        served, skipped = survey
        log.info(
            "serving {n} repositories: {names}",
            n=len(served),
            names=", ".join(name or "/" for name, _ in served) or "none",
        )
        self._log_skipped(skipped)


def _factory(transport: str, ctx: ServerContext, state_dir: Path) -> Any:
    factory = _new_factory(transport, ctx, state_dir)
    factory.noisy = False  # ListeningService logs the listener once, with its address
    return factory


def _new_factory(transport: str, ctx: ServerContext, state_dir: Path) -> Any:
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
    from hgwire_tw.commands.registry import CommandOptions, build_commands
    from hgwire_tw.commands.runner import CommandRunner
    from hgwire_tw.redirects import REDIRECT_HASHES, AdvertisedTargets, Redirector
    from hgwire_tw.transports.httpblobs import blob_access

    s = ctx.settings
    default_size = (4096 if s.cache == "disk" else 256) * 1024 * 1024
    ctx.cache = make_store(
        s.cache, size=s.cache_size or default_size, directory=str(state_dir / "cache")
    )
    redirector = None
    options = CommandOptions(stream_clone_allowed=s.stream_clone)
    if ctx.cache is not None and ctx.blobs is not None and (s.redirects or s.redirect_targets):
        redirector = Redirector(
            ctx.blobs,
            s.redirect_targets,
            embedded=s.redirects,
            embedded_base=lambda: ctx.embedded_blob_base,
            public_blobs=lambda: blob_access(ctx, None) is None,
            public_repo=lambda name: ctx.access.authorize(None, name).read,
        )
        options = CommandOptions(
            redirect_targets=AdvertisedTargets(redirector),
            redirect_hashes=REDIRECT_HASHES,
            stream_clone_allowed=s.stream_clone,
        )
    # Built from the settings every time: ``stream_clone=False`` must reach the v2
    # commands (capabilities and rawstorefiledata itself), not only the HTTP upgrade.
    return CommandRunner(pool, build_commands(options), cache=ctx.cache, redirector=redirector)


def warn_refused_keys(access: Any) -> None:
    """One warning line per SSH key the access file had to leave out (file, line,
    option): the server runs, serving everyone else."""
    for warning in access.warnings:
        log.warn("{warning}", warning=warning)


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
        raise usage.UsageError(f"--access: {e}") from None
    warn_refused_keys(access)
    mirrors = _prepare_mirrors(options, state_dir)
    registry = RepositoryRegistry(
        repos={name: Path(path).resolve() for name, path in options["repos"].items()}
        | {name: path for name, (_, path) in mirrors.items()},
        repos_dir=Path(options["repos-dir"]).resolve() if options["repos-dir"] else None,
        max_depth=options["repos-depth"],
    )
    pool = RepositoryPool(
        reactor,
        size=settings.workers,
        lock_timeout=settings.lock_timeout,
        stall_timeout=settings.stall_timeout or None,
    )
    ctx = ServerContext(
        reactor=reactor, registry=registry, pool=pool, access=access, settings=settings
    )
    ctx.blobs = BlobStore(state_dir / "blobs", settings.blob_base_url)
    ctx.runner = _make_runner(ctx, pool, state_dir)
    top = HgwireService(
        ctx,
        state_dir,
        access_path=options["access"],
        grace=options["shutdown-grace"],
        mirrors=mirrors,
    )
    PoolService(pool, registry).setServiceParent(top)
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
            endpoint = parse_endpoint(reactor, transport, description)
            try:
                factory = _factory(transport, ctx, state_dir)
            except Exception as e:  # e.g. an SSH host key that cannot be read
                raise usage.UsageError(describe_error(e)) from None
            listener = ListeningService(
                transport, description, endpoint, factory, metrics=ctx.metrics
            )
            listener.setServiceParent(top)
            top.listeners.append(listener)
    _add_web(top, ctx, reactor)
    _add_mirror_syncs(top, options, mirrors, reactor, settings.lock_timeout)
    return top


def _add_web(top: HgwireService, ctx: ServerContext, reactor: Any) -> None:
    """The hgweb pages' thread pool, metrics wiring and a ``--metrics ENDPOINT`` listener."""
    ctx.metrics.watch(ctx)
    ctx.metrics.watch_pool("repo", ctx.pool.threadpool)
    ctx.metrics.watch_pool("write", ctx.pool.write_threadpool)
    ctx.metrics.watch_pool("quick", ctx.pool.quick_threadpool)
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

        endpoint = parse_endpoint(reactor, "metrics", ctx.settings.metrics)
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
    top: service.MultiService,
    options: Options,
    mirrors: dict[str, tuple[str, Path]],
    reactor: Any,
    lock_timeout: int,
) -> None:
    from hgwire_tw.client.mirror import MirrorSync, pull_mirror

    every = float(options["mirror-every"])
    for name, (url, path) in mirrors.items():
        pull = pull_mirror(
            reactor, url, path, threadpool=reactor.getThreadPool(), lock_timeout=lock_timeout
        )
        MirrorSync(name or "(root)", pull, reactor=reactor, every=every).setServiceParent(top)
