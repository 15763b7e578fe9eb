"""The server's settings, declared once: :data:`TABLE`.

Every setting of ``hgwire serve`` (and ``twistd hgwire``) is one :class:`Setting` row:
its option name, kind, type, default, help text, TOML key, validation and the
``Settings`` field it fills. ``hgwire_tw.app.options`` generates from the table

- the command-line options (``TableOptions``, the base of ``hgwire_tw.tap.Options``)
  and the ``--help`` text;
- the keys ``--config FILE`` accepts, with the same types and validation;
- the ``Settings`` the transports read (``build_settings``);
- the reference in README.md (``python -m hgwire_tw.app.options --write README.md``
  rewrites it; a test checks it is current).

A default is written once: a row whose value goes straight into a ``Settings`` (or
``TCPLimits``) field says ``default=FIELD`` and the dataclass holds the value. To add a
setting, add a row here (and, if the service needs it outside ``Settings``, read
``options[row.dest]`` in ``hgwire_tw.tap``). This module is long because the table is:
one row per setting, keyword per attribute, so that a row reads like a declaration.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from hgwire_tw.context import Settings
from hgwire_tw.core.preamble import DEFAULT_PORT

__all__ = [
    "BY_NAME",
    "BY_TOML",
    "FIELD",
    "GROUPS",
    "NESTED",
    "TABLE",
    "Kind",
    "Lazy",
    "Setting",
    "at_most",
    "non_negative",
    "one_of",
    "positive",
    "setting",
]


class Kind(enum.Enum):
    """How a setting is written on the command line and in TOML."""

    #: ``--name VALUE``; a TOML scalar (a string is parsed like the command line).
    VALUE = "value"
    #: ``--name``; a TOML boolean.
    FLAG = "flag"
    #: ``--name VALUE``, repeatable; a TOML string or array of strings.
    LIST = "list"
    #: ``--name KEY=VALUE``, repeatable; a TOML table of strings.
    MAP = "map"
    #: TOML only: a table parsed by the row's ``parse_toml``.
    TABLE = "table"


class _FromField:
    """The default of a row is the default of the dataclass field it fills."""

    def __repr__(self) -> str:
        return "FIELD"


#: ``Setting.default`` meaning "read the default from ``Settings``/``TCPLimits``".
FIELD: Any = _FromField()


@dataclass(frozen=True, slots=True)
class Lazy:
    """A value imported when first needed (``module.attribute``): keeps the table cheap
    to import when a default lives in a module that pulls in Mercurial."""

    module: str
    attribute: str

    def get(self) -> Any:
        """The value."""
        return getattr(importlib.import_module(self.module), self.attribute)


#: Dataclasses a dotted ``Setting.field`` (``tcp_limits.streams``) fills, by head.
NESTED: dict[str, Lazy] = {
    "tcp_limits": Lazy("hgwire_tw.transports.tcp", "TCPLimits"),
    "http_limits": Lazy("hgwire_tw.transports.httpsite", "HTTPLimits"),
    "ssh_limits": Lazy("hgwire_tw.transports.ssh_limits", "SSHLimits"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """One setting: everything the options, the config file, ``Settings`` and the
    reference need to know about it."""

    #: Long option name (``--name``).
    name: str
    #: One or two sentences for ``--help`` and the README (plain text).
    help: str
    #: Section of the reference it is listed in.
    group: str
    kind: Kind = Kind.VALUE
    #: ``str``, ``int`` or ``float``: how a command-line (or TOML string) value parses.
    type: type = str
    #: The default (``FIELD``: the ``field``'s dataclass default; ``Lazy``: imported).
    default: Any = None
    #: How the default reads in the reference when the value alone does not say it.
    shown: str | None = None
    metavar: str = "VALUE"
    #: Key in the parsed options (``options["repos"]``); default: ``name``.
    key: str = ""
    #: TOML key; ``""``: ``key`` with ``_`` for ``-``; None: command line only.
    toml: str | None = ""
    #: Whether there is a command-line option (False: TOML only).
    cli: bool = True
    #: ``Settings`` field the value fills (dotted for ``NESTED`` ones), or None.
    field: str | None = None
    #: Turns the option's value into the field's (default: the value itself).
    to_field: Callable[[Any], Any] | None = None
    #: Validates (and may normalise) the typed value; raises ``ValueError(problem)``.
    check: Callable[[Any], Any] | None = None
    #: ``MAP``: the key of an item given without ``KEY=`` (None: ``KEY=`` is required).
    bare_key: str | None = None
    #: ``TABLE``: parses the TOML value; raises ``ValueError(problem)``.
    parse_toml: Callable[[Any], Any] | None = None
    #: A document with more about it (README link, ``--help`` mention).
    see: str | None = None

    @property
    def dest(self) -> str:
        """Key of the value in the parsed options."""
        return self.key or self.name

    @property
    def toml_key(self) -> str | None:
        """The TOML key, or None when the setting is command-line only."""
        if self.toml is None:
            return None
        return self.toml or self.dest.replace("-", "_")

    @property
    def where(self) -> str:
        """How messages name it."""
        return f"--{self.name}" if self.cli else f"[{self.toml_key}]"

    def default_value(self) -> Any:
        """The value used when neither the command line nor the file gives one."""
        default = self.default
        if default is FIELD:
            assert self.field is not None and self.to_field is None, self.name
            return _field_default(self.field)
        if isinstance(default, Lazy):
            default = default.get()
        if self.kind is Kind.LIST:
            return list(default or ())
        if self.kind is Kind.MAP:
            return dict(default or {})
        if self.kind is Kind.FLAG:
            return bool(default)
        return default

    def default_text(self) -> str:
        """The default as the reference shows it."""
        if self.shown is not None:
            return self.shown
        value = self.default_value()
        if self.kind is Kind.FLAG:
            return "off"
        if value is None or value == [] or value == {}:
            return "none"
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)


def setting(**kwargs: Any) -> Setting:
    """A ``Setting`` row (keyword arguments as its fields)."""
    return Setting(**kwargs)


def _field_default(path: str) -> Any:
    head, _, tail = path.partition(".")
    owner: Any = NESTED[head].get() if tail else Settings
    name = tail or head
    for f in fields(owner):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            assert f.default_factory is not MISSING
            return f.default_factory()
    raise AssertionError(f"{owner.__name__} has no field {name!r}")


# -- validation helpers --------------------------------------------------------------------


def positive(value: Any) -> Any:
    """Refuse zero and negative numbers."""
    if not value > 0:
        raise ValueError("must be positive")
    return value


def non_negative(value: Any) -> Any:
    """Refuse negative numbers (and NaN)."""
    if not value >= 0:
        raise ValueError("must not be negative")
    return value


def one_of(*choices: str) -> Callable[[Any], Any]:
    """Accept only ``choices``."""
    text = ", ".join(choices[:-1]) + f" or {choices[-1]}"

    def check(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"must be {text}, not {value!r}")
        return value

    return check


def at_most(limit: int, why: str) -> Callable[[Any], Any]:
    """Accept positive numbers up to ``limit``."""

    def check(value: Any) -> Any:
        positive(value)
        if value > limit:
            raise ValueError(f"at most {limit} ({why})")
        return value

    return check


def _compression(value: Any) -> tuple[str, ...]:
    engines = tuple(e.strip() for e in str(value).split(",") if e.strip())
    bad = [e for e in engines if e not in ("zstd", "zlib", "none")]
    if bad or not engines:
        raise ValueError(f"unknown engine(s) {bad}")
    return engines


def _without_none(endpoints: Any) -> list[str]:
    return [e for e in endpoints if e.strip().lower() != "none"]


def _mirror_urls(mirrors: Any) -> Any:
    from hgwire_tw.client.peer import parse_url

    for name, url in mirrors.items():
        if not url:
            raise ValueError(f"{name}: expected NAME=URL")
        try:
            parse_url(url)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return mirrors


def _redirect_table(value: Any) -> tuple[Any, ...]:
    from hgwire_tw.redirects import parse_targets

    if not isinstance(value, dict) or set(value) - {"targets"}:
        raise ValueError("holds only [[redirect.targets]]")
    return tuple(parse_targets(value.get("targets", [])))


def _resolved_paths(paths: Any) -> tuple[str, ...]:
    return tuple(str(Path(p).resolve()) for p in paths)


# -- the table -----------------------------------------------------------------------------

REPOS = "Repositories"
LISTEN = "Listeners"
ACCESS = "Access and pushes"
SERVICE = "Service"
SSH = "SSH limits"
TCP = "Raw TCP limits"
HTTP = "HTTP limits"
CACHE = "Response cache, redirects and blobs"
BUNDLES = "Clone bundles"
MIRRORS = "Mirrors"
WEB = "Web pages and metrics"

#: hgweb styles ``--web-style`` accepts (Mercurial's HTML template sets).
WEB_STYLES = ("paper", "coal", "gitweb", "monoblue", "spartan")


def _metrics_place(value: Any) -> Any:
    if not str(value).strip():
        raise ValueError("expected http, none or a Twisted endpoint")
    return str(value).strip()


def _share(value: Any) -> Any:
    if not 0 < value <= 1:
        raise ValueError("must be more than 0 and at most 1")
    return value


DEFAULT_HTTP = "tcp:8000:interface=127.0.0.1"
DEFAULT_SSH = "tcp:8022:interface=127.0.0.1"
DEFAULT_TCP = f"tcp:{DEFAULT_PORT}:interface=127.0.0.1"

TABLE: tuple[Setting, ...] = (
    # -- what is served
    setting(
        name="repo",
        key="repos",
        kind=Kind.MAP,
        group=REPOS,
        metavar="NAME=PATH",
        bare_key="",
        shown="the repository in the current directory, at /",
        help="Serve the repository at PATH as NAME (repeatable). A bare PATH is served at "
        "the root URL.",
    ),
    setting(
        name="repos-dir",
        group=REPOS,
        metavar="DIR",
        help="Serve every repository found below DIR, named by its path relative to DIR "
        "(rescanned every few seconds and on SIGHUP). Repositories inside another "
        "repository's working copy are not served.",
    ),
    setting(
        name="repos-depth",
        type=int,
        group=REPOS,
        metavar="N",
        default=Lazy("hgwire_tw.repo.registry", "DEFAULT_MAX_DEPTH"),
        check=positive,
        help="How many directory levels below --repos-dir are searched for repositories.",
    ),
    # -- listeners
    setting(
        name="http",
        kind=Kind.LIST,
        group=LISTEN,
        metavar="ENDPOINT",
        default=[DEFAULT_HTTP],
        check=_without_none,
        help="Twisted endpoint to serve HTTP on, e.g. ssl:8443:privateKey=key.pem:"
        "certKey=cert.pem (repeatable; 'none' disables).",
    ),
    setting(
        name="ssh",
        kind=Kind.LIST,
        group=LISTEN,
        metavar="ENDPOINT",
        default=[DEFAULT_SSH],
        check=_without_none,
        see="docs/ssh.md",
        help="Twisted endpoint to serve SSH on (repeatable; 'none' disables); users' keys "
        "come from --access.",
    ),
    setting(
        name="ssh-host-key",
        key="ssh-host-keys",
        kind=Kind.LIST,
        group=LISTEN,
        metavar="FILE",
        shown="an ed25519 key generated in the state directory",
        field="ssh_host_keys",
        to_field=_resolved_paths,
        help="OpenSSH private host key file for the SSH server, besides the generated "
        "ed25519 key (repeatable).",
    ),
    setting(
        name="tcp",
        kind=Kind.LIST,
        group=LISTEN,
        metavar="ENDPOINT",
        default=[DEFAULT_TCP],
        check=_without_none,
        see="docs/preamble.md",
        help="Twisted endpoint to serve raw v2 frames on, read-only, for hgwire clients "
        "and mirrors (repeatable; 'none' disables).",
    ),
    # -- access
    setting(
        name="access",
        group=ACCESS,
        metavar="FILE",
        shown="none (everything is readable anonymously, nothing can be pushed)",
        see="docs/access.md",
        help="TOML access file: users, passwords, SSH keys and read/write rules.",
    ),
    setting(
        name="allow-push-over-http",
        kind=Kind.FLAG,
        group=ACCESS,
        field="allow_push_over_http",
        help="Accept pushes over plain (non-TLS) HTTP (refused by default: 403 ssl required).",
    ),
    setting(
        name="max-push-bytes",
        type=int,
        group=ACCESS,
        metavar="BYTES",
        default=FIELD,
        field="max_push_bytes",
        shown="2147483648 (2 GiB)",
        check=positive,
        help="Largest push (v1 unbundle body) accepted from a user who may push; a larger "
        "Content-Length is 413 before the body is read.",
    ),
    setting(
        name="lock-timeout",
        type=int,
        group=ACCESS,
        metavar="S",
        default=FIELD,
        field="lock_timeout",
        check=non_negative,
        help="Seconds a push (or crash recovery) waits for a repository lock held by a live "
        "process before it is refused; a lock left by a dead process is broken at once.",
    ),
    # -- the service
    setting(
        name="config",
        group=SERVICE,
        metavar="FILE",
        toml=None,
        help="TOML file holding any of these settings (the TOML keys listed here); the "
        "command line wins.",
    ),
    setting(
        name="state-dir",
        group=SERVICE,
        metavar="DIR",
        shown="$XDG_STATE_HOME/hgwire or ~/.local/state/hgwire",
        help="Directory for host keys, caches, blobs, mirrors and listening.json.",
    ),
    setting(
        name="log-level",
        group=SERVICE,
        metavar="LEVEL",
        default="info",
        check=one_of("debug", "info", "warn", "error"),
        help="Least important log lines written: debug (adds a line per v1 command, per "
        "web page and more), info (one line per HTTP request, start-up and shutdown), "
        "warn or error. "
        "Applies to hgwire serve; twistd has its own logging options.",
    ),
    setting(
        name="shutdown-grace",
        type=float,
        group=SERVICE,
        metavar="SECONDS",
        default=30.0,
        check=non_negative,
        help="On SIGTERM or SIGINT, stop accepting connections and let responses in flight "
        "finish for up to this long before the remaining connections are cut.",
    ),
    setting(
        name="workers",
        type=int,
        group=SERVICE,
        metavar="N",
        default=FIELD,
        field="workers",
        check=positive,
        help="Worker threads for transfers (clones, pulls) and their compression; "
        "handshakes and discovery run on 2 threads of their own, pushes on 2 more.",
    ),
    setting(
        name="stall-timeout",
        type=float,
        group=SERVICE,
        metavar="SECONDS",
        default=FIELD,
        field="stall_timeout",
        check=non_negative,
        see="docs/internals.md",
        help="Cut a response whose client has not taken a batch of it (up to 256 KiB) "
        "for this long, freeing its worker; 0 never cuts.",
    ),
    setting(
        name="compression",
        group=SERVICE,
        metavar="ENGINES",
        default="zstd,zlib",
        field="v1_compression",
        check=_compression,
        help="v1 compression engines in server preference order (comma-separated from zstd, "
        "zlib, none): HTTP responses, and SSH bundles for clients whose protocaps list one.",
    ),
    setting(
        name="no-v2",
        kind=Kind.FLAG,
        group=SERVICE,
        field="v2_enabled",
        to_field=lambda off: not off,
        help="Do not serve the frame-based v2 API over HTTP.",
    ),
    setting(
        name="no-stream-clone",
        kind=Kind.FLAG,
        group=SERVICE,
        field="stream_clone",
        to_field=lambda off: not off,
        help="Refuse stream clones on every transport (hg clone --stream over HTTP and "
        "SSH, v2 rawstorefiledata); clients fall back to changegroups.",
    ),
    # -- SSH limits (hgwire_tw.transports.ssh_limits; docs/ssh.md)
    setting(
        name="ssh-max-connections",
        type=int,
        group=SSH,
        metavar="N",
        default=FIELD,
        field="ssh_limits.max_connections",
        check=positive,
        see="docs/ssh.md",
        help="SSH connections at once, per SSH listener; more are refused with an SSH "
        "disconnect message and closed at once.",
    ),
    setting(
        name="ssh-max-per-address",
        type=int,
        group=SSH,
        metavar="N",
        default=FIELD,
        field="ssh_limits.max_per_address",
        check=positive,
        help="SSH connections at once from one client address, per SSH listener.",
    ),
    setting(
        name="ssh-login-timeout",
        type=float,
        group=SSH,
        metavar="SECONDS",
        default=FIELD,
        field="ssh_limits.login_timeout",
        check=positive,
        help="Seconds an SSH client has from connecting to being logged in (version and "
        "key exchange and authentication together, a key passphrase typed included).",
    ),
    setting(
        name="ssh-login-attempts",
        type=int,
        group=SSH,
        metavar="N",
        default=FIELD,
        field="ssh_limits.login_attempts",
        check=positive,
        help="Failed authentication attempts (keys refused) after which an SSH connection "
        "is closed; counted per connection.",
    ),
    # -- raw TCP limits
    setting(
        name="tcp-max-connections",
        type=int,
        group=TCP,
        metavar="N",
        default=FIELD,
        field="tcp_limits.max_connections",
        check=positive,
        help="Raw TCP connections at once; more are refused with an error line.",
    ),
    setting(
        name="tcp-max-per-address",
        type=int,
        group=TCP,
        metavar="N",
        default=FIELD,
        field="tcp_limits.max_per_address",
        check=positive,
        help="Raw TCP connections at once from one address.",
    ),
    setting(
        name="tcp-handshake-timeout",
        type=float,
        group=TCP,
        metavar="SECONDS",
        default=FIELD,
        field="tcp_limits.handshake_timeout",
        check=positive,
        help="Seconds a raw TCP client has to send the preamble.",
    ),
    setting(
        name="tcp-idle-timeout",
        type=float,
        group=TCP,
        metavar="SECONDS",
        default=FIELD,
        field="tcp_limits.idle_timeout",
        check=positive,
        help="Seconds without input or work before a raw TCP connection is closed.",
    ),
    setting(
        name="tcp-max-in-flight",
        type=int,
        group=TCP,
        metavar="N",
        default=FIELD,
        field="tcp_limits.max_in_flight",
        check=positive,
        help="Commands running at once per raw TCP connection; further requests wait and "
        "the socket is not read.",
    ),
    setting(
        name="tcp-streams",
        type=int,
        group=TCP,
        metavar="N",
        default=FIELD,
        field="tcp_limits.streams",
        check=at_most(64, "even stream ids run out"),
        help="Output streams per raw TCP connection (1-64), each with its own compression "
        "context, compressed on its own worker thread.",
    ),
    # -- HTTP limits (hgwire_tw.transports.httpsite; docs/http.md)
    setting(
        name="http-max-connections",
        type=int,
        group=HTTP,
        metavar="N",
        default=FIELD,
        field="http_limits.max_connections",
        check=positive,
        help="HTTP connections at once; more get 503 and are closed.",
        see="docs/http.md",
    ),
    setting(
        name="http-max-per-address",
        type=int,
        group=HTTP,
        metavar="N",
        default=FIELD,
        field="http_limits.max_per_address",
        check=positive,
        help="HTTP connections at once from one client address (raise it behind a proxy).",
    ),
    setting(
        name="http-request-timeout",
        type=float,
        group=HTTP,
        metavar="SECONDS",
        default=FIELD,
        field="http_limits.request_timeout",
        check=positive,
        help="Seconds a client has to send a request's line, headers and body, from when "
        "the connection waits for it; bytes do not reset it (408).",
    ),
    setting(
        name="http-body-rate",
        type=int,
        group=HTTP,
        metavar="BYTES",
        default=FIELD,
        field="http_limits.body_rate",
        check=positive,
        help="Body bytes that add one second to the request deadline (a body arriving at "
        "this rate is never cut).",
    ),
    setting(
        name="http-max-body",
        type=int,
        group=HTTP,
        metavar="BYTES",
        default=FIELD,
        field="http_limits.max_body",
        shown="16777216 (16 MiB)",
        check=positive,
        help="Largest HTTP request body other than a push; a larger Content-Length is 413 "
        "before the body is read.",
    ),
    setting(
        name="http-max-spools",
        type=int,
        group=HTTP,
        metavar="N",
        default=FIELD,
        field="http_limits.max_spools",
        check=positive,
        help="Request bodies spooled to temporary files at once (beyond: 503); bodies are "
        "read only after authentication and admission.",
    ),
    setting(
        name="http-login-failures",
        type=int,
        group=HTTP,
        metavar="N",
        default=FIELD,
        field="http_limits.login_failures",
        check=positive,
        help="Failed HTTP logins from one address within --http-login-window before it "
        "gets 429, without any password checked.",
    ),
    setting(
        name="http-login-window",
        type=float,
        group=HTTP,
        metavar="SECONDS",
        default=FIELD,
        field="http_limits.login_window",
        check=positive,
        help="Seconds a failed HTTP login counts against its address.",
    ),
    # -- cache, redirects, blobs
    setting(
        name="cache",
        group=CACHE,
        metavar="KIND",
        default=FIELD,
        field="cache",
        check=one_of("memory", "disk", "none"),
        help="Response cache for v2 data commands and v1 getbundle: memory, disk "
        "(STATE_DIR/cache, kept across restarts) or none.",
    ),
    setting(
        name="cache-size",
        type=int,
        group=CACHE,
        metavar="BYTES",
        default=FIELD,
        field="cache_size",
        shown="256 MiB in memory, 4 GiB on disk",
        check=positive,
        help="Bound of the response cache in bytes.",
    ),
    setting(
        name="redirects",
        kind=Kind.FLAG,
        group=CACHE,
        field="redirects",
        see="docs/redirects.md",
        help="Answer cached v2 responses with content redirects to the blob store (target "
        "'hgwire', served at /.hgwire/blobs/ or --blob-base-url).",
    ),
    setting(
        name="redirect",
        key="redirect-targets",
        toml="redirect",
        kind=Kind.TABLE,
        cli=False,
        group=CACHE,
        metavar="[[redirect.targets]]",
        field="redirect_targets",
        parse_toml=_redirect_table,
        default=(),
        shown="none",
        see="docs/redirects.md",
        help="More redirect targets, in preference order: [[redirect.targets]] tables with "
        "name, protocol, uris, base_url, snirequired, tlsversions, server_certs.",
    ),
    setting(
        name="blob-base-url",
        group=CACHE,
        metavar="URL",
        field="blob_base_url",
        to_field=lambda url: url or None,
        shown="this server's first HTTP listener, /.hgwire/blobs/",
        help="Where a static server or CDN serves the blob directory (STATE_DIR/blobs); "
        "redirects and clone-bundle manifests then name this URL.",
    ),
    setting(
        name="blob-retention",
        type=float,
        group=CACHE,
        metavar="SECONDS",
        default=FIELD,
        field="blob_retention",
        shown="604800 (a week)",
        check=non_negative,
        help="Seconds a redirect blob (.cbor in STATE_DIR/blobs) is kept after it was last "
        "used; 0 keeps blobs forever. Clone bundles are not affected.",
    ),
    # -- clone bundles
    setting(
        name="clonebundles",
        group=BUNDLES,
        metavar="MODE",
        default=FIELD,
        field="clonebundles",
        check=one_of("off", "on-demand", "scheduled"),
        see="docs/redirects.md",
        help="Pre-built zstd-v2 clone bundles for hg clone, listed in the clonebundles "
        "manifest and served from the blob store: off, on-demand or scheduled.",
    ),
    setting(
        name="clonebundles-every",
        type=float,
        group=BUNDLES,
        metavar="SECONDS",
        default=FIELD,
        field="clonebundles_every",
        check=non_negative,
        help="Seconds between scheduled bundles; on-demand: the least age of a bundle "
        "before it is replaced.",
    ),
    setting(
        name="clonebundles-grace",
        type=float,
        group=BUNDLES,
        metavar="SECONDS",
        default=FIELD,
        field="clonebundles_grace",
        check=non_negative,
        help="Seconds a superseded bundle stays downloadable.",
    ),
    # -- web pages and metrics (hgwire_tw.web, hgwire_tw.metrics)
    setting(
        name="web",
        group=WEB,
        metavar="MODE",
        default=FIELD,
        field="web",
        check=one_of("hgweb", "none"),
        see="docs/web.md",
        help="Web pages for every request that is not wire protocol: hgweb (Mercurial's own "
        "pages and a repository index, under the access rules) or none.",
    ),
    setting(
        name="web-style",
        group=WEB,
        metavar="STYLE",
        default=FIELD,
        field="web_style",
        check=one_of(*WEB_STYLES),
        help="hgweb style: " + ", ".join(WEB_STYLES) + ".",
    ),
    setting(
        name="web-archives",
        kind=Kind.FLAG,
        group=WEB,
        field="web_archives",
        help="Offer archive downloads (zip, tar.gz, tar.bz2) on the web pages.",
    ),
    setting(
        name="web-cpu-share",
        type=float,
        cli=False,
        group=WEB,
        metavar="SHARE",
        default=FIELD,
        field="web_cpu_share",
        check=_share,
        see="docs/web.md",
        help="While clones or pulls run, the share of one CPU the web threads together may "
        "use (0 to 1; 1 turns the pacing off).",
    ),
    setting(
        name="metrics",
        group=WEB,
        metavar="ENDPOINT",
        default=FIELD,
        field="metrics",
        check=_metrics_place,
        see="docs/metrics.md",
        help="Prometheus metrics: http (/metrics on the HTTP listeners, readable from this "
        "machine or by the access file's metrics principals), none, or a Twisted endpoint "
        "of their own.",
    ),
    # -- mirrors
    setting(
        name="mirror",
        key="mirrors",
        kind=Kind.MAP,
        group=MIRRORS,
        metavar="NAME=URL",
        check=_mirror_urls,
        help="Serve a read-only mirror of URL (http(s)://, hgwire:// or ssh://) as NAME, "
        "kept in sync (repeatable).",
    ),
    setting(
        name="mirror-every",
        type=float,
        group=MIRRORS,
        metavar="SECONDS",
        default=Lazy("hgwire_tw.client.mirror", "DEFAULT_EVERY"),
        check=positive,
        help="Seconds between two pulls of each --mirror.",
    ),
    setting(
        name="mirror-dir",
        group=MIRRORS,
        metavar="DIR",
        shown="STATE_DIR/mirrors",
        help="Where --mirror repositories live.",
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in TABLE}
BY_TOML: dict[str, Setting] = {s.toml_key: s for s in TABLE if s.toml_key is not None}
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(s.group for s in TABLE))
