"""``twistd hgwire`` / ``hgwire serve``: options and the service they build.

Both entry points parse the same ``Options`` and call ``makeService``, which returns one
``MultiService``: the worker pool, then one listening service per endpoint of each
transport. Settings come from ``--config FILE`` (TOML with the same names as the long
options, using ``_`` for ``-``) and are overridden by the command line.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python import usage

from hgwire_tw.context import BLOBS_PATH, ServerContext, Settings

log = Logger()

DEFAULT_HTTP = "tcp:8000:interface=127.0.0.1"
DEFAULT_SSH = "tcp:8022:interface=127.0.0.1"
DEFAULT_TCP = "tcp:8023:interface=127.0.0.1"

#: Transports and the modules that build their factories, in listening.json order.
TRANSPORTS = ("http", "ssh", "tcp")
#: hgweb styles ``--web-style`` accepts (Mercurial's HTML template sets).
WEB_STYLES = ("paper", "coal", "gitweb", "monoblue", "spartan")
#: Config keys of the web pages and metrics.
WEB_SETTINGS = ("web", "web_style", "web_archives", "metrics", "web_cpu_share")

# -- raw TCP limits: option -> (TCPLimits field, type, help); TOML keys use "_" --------
TCP_LIMIT_OPTIONS: dict[str, tuple[str, type, str]] = {
    "tcp-max-connections": ("max_connections", int, "Raw TCP: connections at once (256)."),
    "tcp-max-per-address": (
        "max_per_address",
        int,
        "Raw TCP: connections at once from one address (16).",
    ),
    "tcp-handshake-timeout": (
        "handshake_timeout",
        float,
        "Raw TCP: seconds to send the preamble (10).",
    ),
    "tcp-idle-timeout": (
        "idle_timeout",
        float,
        "Raw TCP: seconds without input or work before closing (300).",
    ),
    "tcp-max-in-flight": (
        "max_in_flight",
        int,
        "Raw TCP: commands running at once per connection (8).",
    ),
    "tcp-streams": (
        "streams",
        int,
        "Raw TCP: output streams per connection, each compressed on its own thread (2).",
    ),
}


def default_state_dir() -> Path:
    """Where keys, caches and ``listening.json`` live unless ``--state-dir`` says otherwise."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "hgwire"


class Options(usage.Options):
    """Command-line options shared by ``hgwire serve`` and ``twistd hgwire``."""

    synopsis = "[options]"
    longdesc = (
        "Serve Mercurial repositories over HTTP (wire protocol v1 and v2), SSH and raw TCP. "
        "With no --repo or --repos-dir, serves the repository in the current directory."
    )
    optParameters = [
        ["repos-dir", None, None, "Serve every repository found below DIR, named by path."],
        [
            "state-dir",
            None,
            None,
            "Directory for host keys, caches and listening.json "
            "(default: $XDG_STATE_HOME/hgwire or ~/.local/state/hgwire).",
        ],
        ["config", None, None, "TOML file holding the same settings as these options."],
        [
            "access",
            None,
            None,
            "TOML access file (users, passwords, SSH keys, rules); "
            "without one everything is read-only and anonymous.",
        ],
        ["workers", None, None, "Worker threads for repository I/O and compression.", int],
        [
            "compression",
            None,
            None,
            "v1 HTTP compression engines in preference order "
            "(comma-separated from zstd, zlib, none; default zstd,zlib).",
        ],
        ["max-push-bytes", None, None, "Largest push accepted, in bytes.", int],
        [
            "blob-base-url",
            None,
            None,
            "URL under which a static server or CDN serves the blob directory "
            "(STATE_DIR/blobs); default: this server's first HTTP listener.",
        ],
        *([name, None, None, text, kind] for name, (_, kind, text) in TCP_LIMIT_OPTIONS.items()),
        [
            "mirror-every",
            None,
            None,
            "Seconds between two pulls of each --mirror (default 300).",
            float,
        ],
        ["mirror-dir", None, None, "Where --mirror repositories live (default STATE-DIR/mirrors)."],
        # -- clone bundles (hgwire_tw.clonebundles) --
        [
            "clonebundles",
            None,
            None,
            "Pre-built clone bundles for hg clients: off (default), on-demand or scheduled.",
        ],
        [
            "clonebundles-every",
            None,
            None,
            "Seconds between scheduled bundles; on-demand: least age before re-bundling "
            "(default 3600).",
            float,
        ],
        [
            "clonebundles-grace",
            None,
            None,
            "Seconds a superseded bundle stays downloadable (default 3600).",
            float,
        ],
        # -- response cache and content redirects
        ["cache", None, None, "Response cache: memory (default), disk (STATE_DIR/cache) or none."],
        [
            "cache-size",
            None,
            None,
            "Cache bound in bytes (default 256 MiB in memory, 4 GiB on disk).",
            int,
        ],
        # -- blob retention (hgwire_tw.blobsweep)
        [
            "blob-retention",
            None,
            None,
            "Seconds a redirect blob (.cbor in STATE_DIR/blobs) is kept after it was last "
            "used (default 604800, a week; 0 keeps blobs forever).",
            float,
        ],
        # -- web pages and metrics (hgwire_tw.web, hgwire_tw.metrics)
        ["web", None, None, "Web pages: hgweb (default; Mercurial's hgweb and an index) or none."],
        ["web-style", None, None, f"hgweb style: {', '.join(WEB_STYLES)} (default paper)."],
        [
            "metrics",
            None,
            None,
            "Prometheus metrics: http (default: /metrics on the HTTP listeners), none, "
            "or a Twisted endpoint of their own.",
        ],
    ]
    optFlags = [
        ["allow-push-over-http", None, "Accept pushes over plain (non-TLS) HTTP."],
        ["no-v2", None, "Do not serve the frame-based v2 API over HTTP."],
        [
            "redirects",
            None,
            "Answer cached v2 responses with redirects to the blob store (target 'hgwire').",
        ],
        ["web-archives", None, "Offer archive downloads (zip, tar.gz, tar.bz2) on web pages."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["repos"] = {}
        for name in TRANSPORTS:
            self[name] = []
        self["ssh-host-keys"] = []
        self["mirrors"] = {}
        self["redirect-targets"] = ()

    def opt_repo(self, value: str) -> None:
        """Serve the repository at PATH as NAME (NAME=PATH); repeatable. A bare PATH is
        served at the root URL."""
        name, sep, path = value.partition("=")
        if not sep:
            name, path = "", value
        if name in self["repos"]:
            raise usage.UsageError(f"--repo: name {name!r} given twice")
        self["repos"][name.strip("/")] = path

    def opt_http(self, value: str) -> None:
        """Twisted endpoint to serve HTTP on (repeatable; 'none' disables);
        default tcp:8000:interface=127.0.0.1."""
        self["http"].append(value)

    def opt_ssh(self, value: str) -> None:
        """Twisted endpoint to serve SSH on (repeatable; 'none' disables);
        default tcp:8022:interface=127.0.0.1."""
        self["ssh"].append(value)

    def opt_ssh_host_key(self, value: str) -> None:
        """OpenSSH private host key file for the SSH server, besides the generated ed25519
        key (repeatable)."""
        self["ssh-host-keys"].append(value)

    def opt_mirror(self, value: str) -> None:
        """Serve a read-only mirror of URL as NAME, kept in sync (NAME=URL; repeatable)."""
        name, sep, url = value.partition("=")
        if not sep or not url:
            raise usage.UsageError(f"--mirror: expected NAME=URL, got {value!r}")
        name = name.strip("/")
        if name in self["mirrors"]:
            raise usage.UsageError(f"--mirror: name {name!r} given twice")
        self["mirrors"][name] = url

    def opt_tcp(self, value: str) -> None:
        """Twisted endpoint to serve raw v2 frames on (repeatable; 'none' disables)."""
        self["tcp"].append(value)

    def postOptions(self) -> None:
        config: dict[str, Any] = {}
        if self["config"]:
            try:
                config = tomllib.loads(Path(self["config"]).read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise usage.UsageError(f"--config {self['config']}: {e}") from e
        known = {
            "repos",
            "repos_dir",
            "state_dir",
            "access",
            "workers",
            "compression",
            "max_push_bytes",
            "allow_push_over_http",
            "no_v2",
            "ssh_host_keys",
            "blob_base_url",
            "mirrors",
            "mirror_every",
            "mirror_dir",
            "clonebundles",
            "clonebundles_every",
            "clonebundles_grace",
            "cache",
            "cache_size",
            "redirects",
            "redirect",
            "blob_retention",
            *WEB_SETTINGS,
            *TRANSPORTS,
            *(name.replace("-", "_") for name in TCP_LIMIT_OPTIONS),
        }
        unknown = set(config) - known
        if unknown:
            raise usage.UsageError(f"--config: unknown setting(s): {', '.join(sorted(unknown))}")
        for key, value in config.items():
            opt = key.replace("_", "-")
            if key == "repos":
                if not isinstance(value, dict):
                    raise usage.UsageError("--config: repos must be a table of NAME = PATH")
                for name, path in value.items():
                    self["repos"].setdefault(name.strip("/"), str(path))
            elif key in TRANSPORTS:
                if not self[key]:
                    self[key] = [value] if isinstance(value, str) else list(value)
            elif key == "mirrors":
                if not isinstance(value, dict):
                    raise usage.UsageError("--config: mirrors must be a table of NAME = URL")
                for name, url in value.items():
                    self["mirrors"].setdefault(name.strip("/"), str(url))
            elif key == "ssh_host_keys":
                if not self["ssh-host-keys"]:
                    self["ssh-host-keys"] = [value] if isinstance(value, str) else list(value)
            elif key == "redirect":
                self._redirect_config(value)
            elif opt in ("allow-push-over-http", "no-v2", "redirects", "web-archives"):
                self[opt] = self[opt] or bool(value)
            elif self.get(opt) is None:
                self[opt] = value
        defaults = {"http": DEFAULT_HTTP, "ssh": DEFAULT_SSH, "tcp": DEFAULT_TCP}
        for name in TRANSPORTS:
            if not self[name]:
                self[name] = [defaults[name]]
            self[name] = [e for e in self[name] if e.strip().lower() != "none"]
        if not self["repos"] and not self["repos-dir"] and not self["mirrors"]:
            self["repos"] = {"": "."}
        for name, path in self["repos"].items():
            if not (Path(path) / ".hg").is_dir():
                raise usage.UsageError(f"--repo {name}={path}: not a Mercurial repository")
        if self["repos-dir"] and not Path(self["repos-dir"]).is_dir():
            raise usage.UsageError(f"--repos-dir {self['repos-dir']}: not a directory")
        self._check_mirrors()
        if self["cache"] is None:
            self["cache"] = "memory"
        if self["cache"] not in ("memory", "disk", "none"):
            raise usage.UsageError(f"--cache: must be memory, disk or none, not {self['cache']!r}")
        if self["cache-size"] is not None and int(self["cache-size"]) <= 0:
            raise usage.UsageError("--cache-size: must be a positive number of bytes")
        if (self["redirects"] or self["redirect-targets"]) and self["cache"] == "none":
            raise usage.UsageError("--redirects: redirects serve cached responses; --cache none")
        if self["compression"]:
            engines = tuple(e.strip() for e in str(self["compression"]).split(",") if e.strip())
            bad = [e for e in engines if e not in ("zstd", "zlib", "none")]
            if bad or not engines:
                raise usage.UsageError(f"--compression: unknown engine(s) {bad}")
            self["compression"] = engines
        for name, (_, kind, _text) in TCP_LIMIT_OPTIONS.items():
            if self[name] is not None:
                try:
                    self[name] = kind(self[name])
                except (TypeError, ValueError):
                    raise usage.UsageError(f"--{name}: not a number: {self[name]!r}") from None
                if self[name] <= 0:
                    raise usage.UsageError(f"--{name} must be positive")
        if (self["tcp-streams"] or 1) > 64:
            raise usage.UsageError("--tcp-streams: at most 64 (even stream ids run out)")
        if self["clonebundles"] not in (None, "off", "on-demand", "scheduled"):
            raise usage.UsageError(
                f"--clonebundles: {self['clonebundles']!r} is not off, on-demand or scheduled"
            )
        for opt in ("clonebundles-every", "clonebundles-grace"):
            if self[opt] is not None and float(self[opt]) < 0:
                raise usage.UsageError(f"--{opt}: must not be negative")
        if self["blob-retention"] is not None:
            try:
                self["blob-retention"] = float(self["blob-retention"])
            except (TypeError, ValueError):
                raise usage.UsageError(
                    f"--blob-retention: not a number: {self['blob-retention']!r}"
                ) from None
            if not self["blob-retention"] >= 0:
                raise usage.UsageError("--blob-retention: must not be negative")
        self._check_web()

    def _check_web(self) -> None:
        """--web, --web-style, --metrics."""
        self["web"] = self["web"] or "hgweb"
        if self["web"] not in ("hgweb", "none"):
            raise usage.UsageError(f"--web: must be hgweb or none, not {self['web']!r}")
        self["web-style"] = self["web-style"] or "paper"
        if self["web-style"] not in WEB_STYLES:
            raise usage.UsageError(
                f"--web-style: {self['web-style']!r} is not one of {', '.join(WEB_STYLES)}"
            )
        self["metrics"] = self["metrics"] or "http"
        share = self.get("web-cpu-share")  # config file only
        if share is not None and not (isinstance(share, int | float) and 0 < share <= 1):
            raise usage.UsageError(f"--config: web_cpu_share must be in (0, 1], not {share!r}")

    def _check_mirrors(self) -> None:
        from hgwire_tw.client.peer import parse_url

        for name, url in self["mirrors"].items():
            if name in self["repos"]:
                raise usage.UsageError(f"--mirror {name}: also given as --repo")
            try:
                parse_url(url)
            except ValueError as e:
                raise usage.UsageError(f"--mirror {name}: {e}") from e
        every = self["mirror-every"]
        if every is not None and float(every) <= 0:
            raise usage.UsageError("--mirror-every must be positive")

    def _redirect_config(self, value: object) -> None:
        """``[redirect]`` in the config file: ``[[redirect.targets]]`` tables."""
        from hgwire_tw.redirects import RedirectConfigError, parse_targets

        if not isinstance(value, dict) or set(value) - {"targets"}:
            raise usage.UsageError("--config: [redirect] holds only [[redirect.targets]]")
        try:
            self["redirect-targets"] = parse_targets(value.get("targets", []))
        except RedirectConfigError as e:
            raise usage.UsageError(f"--config: {e}") from e

    def settings(self) -> Settings:
        """The ``Settings`` these options describe."""
        s = Settings()
        if self["compression"]:
            s.v1_compression = tuple(self["compression"])
        if self["workers"]:
            s.workers = int(self["workers"])
        if self["max-push-bytes"]:
            s.max_push_bytes = int(self["max-push-bytes"])
        s.allow_push_over_http = bool(self["allow-push-over-http"])
        s.v2_enabled = not self["no-v2"]
        s.ssh_host_keys = tuple(str(Path(p).resolve()) for p in self["ssh-host-keys"])
        s.blob_base_url = self["blob-base-url"] or None
        s.tcp_limits = self.tcp_limits()
        s.clonebundles = self["clonebundles"] or "off"
        if self["clonebundles-every"] is not None:
            s.clonebundles_every = float(self["clonebundles-every"])
        if self["clonebundles-grace"] is not None:
            s.clonebundles_grace = float(self["clonebundles-grace"])
        s.cache = self["cache"]
        s.cache_size = int(self["cache-size"]) if self["cache-size"] else None
        s.redirects = bool(self["redirects"])
        s.redirect_targets = tuple(self["redirect-targets"])
        if self["blob-retention"] is not None:
            s.blob_retention = float(self["blob-retention"])
        s.web, s.web_style, s.metrics = self["web"], self["web-style"], self["metrics"]
        s.web_archives = bool(self["web-archives"])
        if self.get("web-cpu-share") is not None:
            s.web_cpu_share = float(self["web-cpu-share"])
        assert {f.name for f in fields(s)} >= {"v1_compression", "workers"}
        return s

    def tcp_limits(self) -> Any:
        """The ``TCPLimits`` of the ``--tcp-*`` options (defaults for those not given)."""
        from hgwire_tw.transports.tcp import TCPLimits

        given = {
            field: self[name]
            for name, (field, _, _) in TCP_LIMIT_OPTIONS.items()
            if self[name] is not None
        }
        return replace(TCPLimits(), **given)


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
    from hgwire_tw.client.mirror import DEFAULT_EVERY, MirrorSync, pull_mirror

    every = float(options["mirror-every"] or DEFAULT_EVERY)
    for name, (url, path) in mirrors.items():
        pull = pull_mirror(reactor, url, path, threadpool=reactor.getThreadPool())
        MirrorSync(name or "(root)", pull, reactor=reactor, every=every).setServiceParent(top)
