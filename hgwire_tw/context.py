"""Settings and the shared context every transport is built from.

One ``ServerContext`` is made per service; the HTTP, SSH and TCP transports all read the
same registry, worker pool, access policy and settings from it, so a rule (who may push,
which compression the server prefers) is decided in one place for every transport.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hgwire_tw.access import AccessPolicy
    from hgwire_tw.blobstore import BlobStore
    from hgwire_tw.metrics import ServerMetrics
    from hgwire_tw.repo.pool import RepositoryPool
    from hgwire_tw.repo.registry import RepositoryRegistry
    from hgwire_tw.transports.httpsite import HTTPLimits
    from hgwire_tw.transports.ssh_limits import SSHLimits
    from hgwire_tw.transports.tcp import TCPLimits

MiB = 1024 * 1024
#: Path under which the embedded HTTP listener serves the blob store.
BLOBS_PATH = "/.hgwire/blobs/"


@dataclass
class Settings:
    """Tunables shared by every transport; defaults are safe for a public server."""

    #: v1 HTTP compression engines in server preference order (``zstd``, ``zlib``, ``none``).
    v1_compression: tuple[str, ...] = ("zstd", "zlib")
    zstd_level: int = 3
    zlib_level: int = -1
    #: Push over plain (non-TLS) HTTP is refused unless this is set.
    allow_push_over_http: bool = False
    #: Largest push (request body) accepted, in bytes.
    max_push_bytes: int = 2048 * MiB
    #: Seconds a write waits for a repository lock held by a live process.
    lock_timeout: int = 30
    http_header_max: int = 1024
    http_post_args: bool = False
    #: ``httpmediatype`` ``minrecv``/``minsend`` values (e.g. ``"0.2"``), or None.
    v1_min_recv: str | None = None
    v1_min_send: str | None = None
    #: Whether stream clones (``clone --stream``, ``rawstorefiledata``) are allowed.
    stream_clone: bool = True
    #: Whether the frame-based v2 API is served over HTTP.
    v2_enabled: bool = True
    #: v2 content encodings in server preference order.
    v2_encodings: tuple[bytes, ...] = (b"zstd-8mb", b"zlib", b"identity")
    #: Worker threads doing repository I/O and compression.
    workers: int = 4
    #: Seconds a streaming response waits for its client to take a batch before it is
    #: cut (0: never).
    stall_timeout: float = 120.0
    #: SSH channel window (bytes).
    ssh_window: int = 2 * MiB
    #: Extra OpenSSH private host keys offered by the SSH server (besides the generated
    #: ed25519 key in the state directory).
    ssh_host_keys: tuple[str, ...] = ()
    #: SSH connection caps, login deadline and failed-attempt limit
    #: (``hgwire_tw.transports.ssh_limits.SSHLimits``); None: its defaults.
    ssh_limits: SSHLimits | None = None
    #: Realm shown to HTTP clients asked to log in.
    realm: str = "hgwire"
    #: Where an external static server or CDN serves the blob directory (None: the
    #: embedded HTTP listener serves it at ``BLOBS_PATH``).
    blob_base_url: str | None = None
    #: Raw TCP limits (``hgwire_tw.transports.tcp.TCPLimits``); None: its defaults.
    tcp_limits: TCPLimits | None = None
    #: HTTP connection, deadline, body and login limits
    #: (``hgwire_tw.transports.httpsite.HTTPLimits``); None: its defaults.
    http_limits: HTTPLimits | None = None
    # -- clone bundles (hgwire_tw.clonebundles) --
    #: ``off``, ``on-demand`` (made when a client asks and the heads moved on) or
    #: ``scheduled`` (every ``clonebundles_every`` seconds).
    clonebundles: str = "off"
    #: Schedule period; with ``on-demand`` the least age of a bundle before it is replaced.
    clonebundles_every: float = 3600.0
    #: How long a superseded bundle stays downloadable.
    clonebundles_grace: float = 3600.0
    # -- response cache and content redirects (``hgwire_tw.cache``, ``hgwire_tw.redirects``)
    #: ``memory`` (LRU), ``disk`` (STATE_DIR/cache) or ``none``.
    cache: str = "memory"
    #: Bound of the cache in bytes (None: 256 MiB in memory, 4 GiB on disk).
    cache_size: int | None = None
    #: Whether v2 cache hits may be redirected to the embedded ``hgwire`` target.
    redirects: bool = False
    #: Extra redirect targets (``redirects.RedirectTarget``), in preference order.
    redirect_targets: tuple[Any, ...] = ()
    # -- blob retention (``hgwire_tw.blobsweep``)
    #: Seconds a ``.cbor`` redirect blob is kept after its last use (0: forever).
    blob_retention: float = 7 * 24 * 3600.0
    # -- web pages and metrics (``hgwire_tw.web``, ``hgwire_tw.metrics``)
    #: ``hgweb`` (Mercurial's web pages for every non-wire-protocol request) or ``none``.
    web: str = "hgweb"
    #: hgweb style (template set): paper, gitweb, coal, monoblue, spartan.
    web_style: str = "paper"
    #: Whether hgweb offers archive downloads (``/NAME/archive/REV.tar.gz``).
    web_archives: bool = False
    #: Threads rendering hgweb pages (never the repository workers).
    web_threads: int = 2
    #: While clones/pulls run, the share of one CPU all web threads together may use.
    web_cpu_share: float = 0.1
    #: ``http`` (``/metrics`` on the HTTP listeners), ``none``, or an endpoint of its own.
    metrics: str = "http"


def _new_metrics() -> ServerMetrics:
    from hgwire_tw.metrics import ServerMetrics

    return ServerMetrics()


@dataclass
class ServerContext:
    """Everything a transport needs, made once by ``hgwire_tw.tap.makeService``."""

    reactor: Any
    registry: RepositoryRegistry
    pool: RepositoryPool
    access: AccessPolicy
    settings: Settings = field(default_factory=Settings)
    #: The v2 ``CommandRunner`` (``hgwire_tw.commands.runner``).
    runner: Any = None
    #: Published redirect targets and clone bundles (``hgwire_tw.blobstore.BlobStore``).
    blobs: BlobStore | None = None
    #: ``http://host:port`` + ``BLOBS_PATH`` of the first HTTP listener, once it is bound.
    embedded_blob_base: str | None = None
    #: ``hgwire_tw.clonebundles.CloneBundles`` when clone bundles are on.
    clonebundles: Any = None
    #: The response cache (``hgwire_tw.cache.ContentStore``), None when disabled.
    cache: Any = None
    #: Failed HTTP logins per address (``httpauth.LoginGuard``), made on first use.
    http_logins: Any = None
    #: This service's Prometheus metrics (``hgwire_tw.metrics.ServerMetrics``).
    metrics: ServerMetrics = field(default_factory=_new_metrics)
    #: The hgweb front end (``hgwire_tw.web.WebFrontEnd``), None with ``--web none``.
    web: Any = None
    #: What ``on_reload`` registered, in order.
    reload_hooks: list[Callable[[ServerContext], object]] = field(default_factory=list)

    def on_reload(self, hook: Callable[[ServerContext], object]) -> None:
        """Call ``hook(ctx)`` after every reload (SIGHUP) that succeeded.

        It runs on the reactor thread once the new configuration is in place
        (``ctx.access`` is the new policy, new TLS certificates are in use), before the
        next event, so the next connection or request already sees what the hook did.
        It is for components that derive state from the policy (an index of keys, a
        copy handed to a library); a component that can read ``ctx.access`` when it
        decides should do that instead. A reload that fails changes nothing and calls
        no hook; a hook that raises is logged and the others still run.
        """
        self.reload_hooks.append(hook)
