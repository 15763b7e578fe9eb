"""Content redirects (wire protocol §6): targets, the per-request choice, the location.

A redirect target is somewhere the client may fetch a cached response from instead of
receiving it inline: the embedded target ``hgwire`` (this server's own blob directory,
served by the first HTTP listener or mirrored at ``--blob-base-url``) and any targets
configured under ``[[redirect.targets]]``, each a mirror of the blob directory at its
``base_url`` (default: its first URI). Targets are advertised in the capabilities in
configuration order (the embedded one first); for each request the server takes the
first one the client accepted, and only when the client can verify SHA-256.

Everything here is pure except ``Redirector.publish`` (disk I/O: worker threads only)
and ``load_certificates`` (startup).
"""

from __future__ import annotations

import hmac
import os
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, overload
from urllib.parse import urlencode

if TYPE_CHECKING:
    from hgwire_tw.blobstore import BlobStore
    from hgwire_tw.cache import CacheEntry

__all__ = [
    "CBOR_MEDIA_TYPE",
    "EMBEDDED_TARGET",
    "REDIRECT_HASHES",
    "AdvertisedTargets",
    "RedirectConfigError",
    "RedirectTarget",
    "Redirector",
    "choose_target",
    "load_certificates",
    "location",
    "parse_targets",
]

EMBEDDED_TARGET: Final = "hgwire"
CBOR_MEDIA_TYPE: Final = b"application/mercurial-cbor"
#: Hashes we put in ``fullhashes`` (a client must accept one of them to be redirected).
REDIRECT_HASHES: Final = (b"sha256",)
_PROTOCOLS: Final = ("http", "https")
_TLS_VERSIONS: Final = ("1.0", "1.1", "1.2", "1.3")


class RedirectConfigError(ValueError):
    """A ``[[redirect.targets]]`` entry is malformed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RedirectTarget:
    """One place blobs can be fetched from (the capabilities' ``redirect.targets``)."""

    name: str
    protocol: str
    uris: tuple[str, ...]
    #: Blob URLs are ``base_url`` + blob file name.
    base_url: str
    snirequired: bool = False
    tlsversions: tuple[str, ...] = ()
    #: DER certificates sent as ``serverdercerts`` with each https redirect.
    serverdercerts: tuple[bytes, ...] = ()

    def advertised(self) -> dict[bytes, object]:
        """The target as listed in the capabilities descriptor."""
        out: dict[bytes, object] = {
            b"name": self.name.encode(),
            b"protocol": self.protocol.encode(),
            b"uris": [u.encode() for u in self.uris],
        }
        if self.snirequired:
            out[b"snirequired"] = True
        if self.tlsversions:
            out[b"tlsversions"] = [v.encode() for v in self.tlsversions]
        return out

    def url(self, blob_name: str) -> str:
        """Where this target serves blob ``blob_name``."""
        return self.base_url + blob_name


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower()


def _str_list(entry: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RedirectConfigError(f"{where}: {key} must be a list of strings")
    return tuple(value)


def load_certificates(paths: Sequence[str]) -> tuple[bytes, ...]:
    """DER certificates from PEM files (every certificate in each) or DER files."""
    out: list[bytes] = []
    for p in paths:
        data = Path(p).read_bytes()
        if b"-----BEGIN CERTIFICATE-----" not in data:
            out.append(data)
            continue
        text = data.decode("ascii", "replace")
        for block in text.split("-----END CERTIFICATE-----")[:-1]:
            pem = block[block.index("-----BEGIN CERTIFICATE-----") :]
            out.append(ssl.PEM_cert_to_DER_cert(pem + "-----END CERTIFICATE-----\n"))
    return tuple(out)


def parse_targets(
    entries: Sequence[Mapping[str, Any]],
    read_certs: Callable[[Sequence[str]], tuple[bytes, ...]] = load_certificates,
) -> tuple[RedirectTarget, ...]:
    """Targets from the TOML ``[[redirect.targets]]`` tables.

    Keys: ``name``, ``protocol`` (http|https), ``uris`` (list), optional ``base_url``
    (default: the first URI), ``snirequired`` (bool), ``tlsversions`` (list of
    ``"1.2"``-style versions), ``server_certs`` (PEM/DER files, https only).
    """
    targets: list[RedirectTarget] = []
    seen = {EMBEDDED_TARGET}
    for index, entry in enumerate(entries):
        where = f"redirect.targets[{index}]"
        if not isinstance(entry, Mapping):
            raise RedirectConfigError(f"{where}: must be a table")
        unknown = set(entry) - {
            "name",
            "protocol",
            "uris",
            "base_url",
            "snirequired",
            "tlsversions",
            "server_certs",
        }
        if unknown:
            raise RedirectConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise RedirectConfigError(f"{where}: name is required")
        if name in seen:
            raise RedirectConfigError(f"{where}: name {name!r} is used twice (or reserved)")
        seen.add(name)
        protocol = entry.get("protocol")
        if protocol not in _PROTOCOLS:
            raise RedirectConfigError(f"{where}: protocol must be http or https")
        uris = _str_list(entry, "uris", where)
        if not uris:
            raise RedirectConfigError(f"{where}: uris must not be empty")
        base = entry.get("base_url", uris[0])
        if not isinstance(base, str) or _scheme(base) != protocol:
            raise RedirectConfigError(f"{where}: base_url must be a {protocol} URL")
        if not base.endswith("/"):
            base += "/"
        sni = entry.get("snirequired", False)
        if not isinstance(sni, bool):
            raise RedirectConfigError(f"{where}: snirequired must be true or false")
        versions = _str_list(entry, "tlsversions", where)
        bad = [v for v in versions if v not in _TLS_VERSIONS]
        if bad:
            raise RedirectConfigError(f"{where}: unknown TLS version(s) {bad}")
        cert_files = _str_list(entry, "server_certs", where)
        if cert_files and protocol != "https":
            raise RedirectConfigError(f"{where}: server_certs only apply to https targets")
        try:
            certs = read_certs(cert_files) if cert_files else ()
        except (OSError, ValueError) as e:
            raise RedirectConfigError(f"{where}: server_certs: {e}") from e
        targets.append(
            RedirectTarget(
                name=name,
                protocol=protocol,
                uris=uris,
                base_url=base,
                snirequired=sni,
                tlsversions=versions,
                serverdercerts=certs,
            )
        )
    return tuple(targets)


def embedded_target(base: str | None) -> RedirectTarget | None:
    """The ``hgwire`` target serving the blob directory at ``base`` (None: not known yet)."""
    if not base or _scheme(base) not in _PROTOCOLS:
        return None
    if not base.endswith("/"):
        base += "/"
    return RedirectTarget(name=EMBEDDED_TARGET, protocol=_scheme(base), uris=(base,), base_url=base)


def _names(value: object) -> list[bytes]:
    if not isinstance(value, (list, tuple)):
        return []
    return [v for v in value if isinstance(v, bytes)]


def choose_target(
    targets: Sequence[RedirectTarget], request: Mapping[bytes, object] | None
) -> RedirectTarget | None:
    """The first of ``targets`` the request's ``redirect`` map accepts, if it also
    accepts a hash we send; None otherwise (answer inline)."""
    if not isinstance(request, Mapping):
        return None
    hashes = _names(request.get(b"hashes"))
    if not any(h in hashes for h in REDIRECT_HASHES):
        return None
    accepted = set(_names(request.get(b"targets")))
    for target in targets:
        if target.name.encode() in accepted:
            return target
    return None


def location(
    url: str, *, size: int, sha256: str, serverdercerts: Sequence[bytes] = ()
) -> dict[bytes, object]:
    """The ``location`` map of a redirect to a CBOR blob."""
    where: dict[bytes, object] = {
        b"url": url.encode(),
        b"mediatype": CBOR_MEDIA_TYPE,
        b"size": size,
        b"fullhashes": [[b"sha256", bytes.fromhex(sha256)]],
    }
    if serverdercerts:
        where[b"serverdercerts"] = list(serverdercerts)
    return where


class Redirector:
    """The service's redirect targets and the blob store their bytes are published to.

    ``embedded`` enables the ``hgwire`` target; ``embedded_base`` returns the blob
    directory's URL once it is known (``--blob-base-url`` or the first HTTP listener).

    A client is never sent where it cannot read. Redirect clients fetch blobs without
    credentials, and the embedded blob resource serves a bare blob name to anonymous
    clients only when everything served is anonymous (``public_blobs()``). Otherwise a
    redirect to the embedded listener names the blob *scoped* to its repository:
    ``<blob>?repo=<name>&scope=<HMAC of repository and blob>`` (``scoped_url``), which
    the blob resource serves anonymously while that repository is anonymously readable
    (``public_repo(name)``, see ``httpblobs``); a request for a repository that needs a
    login is never redirected there (the answer goes inline, or to another target the
    client accepted). The key is per process: scoped URLs are good for this run only,
    which is all a redirect needs.
    """

    def __init__(
        self,
        blobs: BlobStore,
        targets: Sequence[RedirectTarget] = (),
        *,
        embedded: bool = False,
        embedded_base: Callable[[], str | None] = lambda: None,
        public_blobs: Callable[[], bool] = lambda: True,
        public_repo: Callable[[str], bool] = lambda name: True,
    ) -> None:
        self.blobs = blobs
        self.configured = tuple(targets)
        self.embedded = embedded
        self._embedded_base = embedded_base
        self._public_blobs = public_blobs
        self._public_repo = public_repo
        self._scope_key = os.urandom(32)
        self._lock = threading.Lock()
        #: How many redirects were answered and blobs published (for tests and logs).
        self.redirects = 0
        self.published = 0

    def targets(self) -> list[RedirectTarget]:
        """The targets in effect now, in order of preference."""
        out: list[RedirectTarget] = []
        if self.embedded:
            base = self.blobs.base_url or self._embedded_base()
            target = embedded_target(base)
            if target is not None:
                out.append(target)
        out.extend(self.configured)
        return out

    def choose(
        self, request: Mapping[bytes, object] | None, repo: str | None = None
    ) -> RedirectTarget | None:
        """The target to redirect a request (for repository ``repo``) with this
        ``redirect`` map to, or None: never the embedded listener when its blobs of
        ``repo`` would refuse an anonymous client."""
        targets = self.targets()
        if self._scoped() and (repo is None or not self._public_repo(repo)):
            targets = [t for t in targets if t.name != EMBEDDED_TARGET]
        return choose_target(targets, request)

    def _scoped(self) -> bool:
        """Whether embedded blob URLs need a repository scope (some repository needs a
        login, and the blobs are served by our own listener)."""
        return self.embedded and self.blobs.base_url is None and not self._public_blobs()

    def scope(self, repo: str, blob_name: str) -> str:
        """The scope token of ``blob_name`` published for repository ``repo``."""
        message = repo.encode("utf-8") + b"\0" + blob_name.encode("ascii")
        return hmac.new(self._scope_key, message, "sha256").hexdigest()

    def scoped_url(self, target: RedirectTarget, blob_name: str, repo: str) -> str:
        """``target``'s URL of ``blob_name``, scoped to ``repo`` (see the class docs)."""
        query = urlencode({"repo": repo, "scope": self.scope(repo, blob_name)})
        return f"{target.url(blob_name)}?{query}"

    def in_scope(self, repo: str, blob_name: str, token: str) -> bool:
        """Whether ``token`` is ``blob_name``'s scope token for ``repo``."""
        return hmac.compare_digest(self.scope(repo, blob_name), token)

    def publish(
        self, target: RedirectTarget, entry: CacheEntry, repo: str | None = None
    ) -> dict[bytes, object]:
        """Publish ``entry`` as a ``.cbor`` blob (idempotent; an existing blob is marked
        used now) and return the redirect location at ``target`` (scoped to ``repo``
        when the embedded blobs need it). Worker thread only."""
        from hgwire_tw.blobstore import blob_name

        name = blob_name(entry.sha256, ".cbor")
        found = self.blobs.find(name)
        # Touching marks the blob used now, so the retention sweep keeps it at least
        # ``--blob-retention`` seconds past this redirect.
        if found is not None and found.size == entry.size and self.blobs.touch(name):
            entry.close()
        else:
            self.blobs.publish(entry.chunks(), suffix=".cbor", sha256=entry.sha256)
            with self._lock:
                self.published += 1
        with self._lock:
            self.redirects += 1
        certs = target.serverdercerts if target.protocol == "https" else ()
        url = target.url(name)
        if target.name == EMBEDDED_TARGET and repo is not None and self._scoped():
            url = self.scoped_url(target, name, repo)
        return location(url, size=entry.size, sha256=entry.sha256, serverdercerts=certs)


class AdvertisedTargets(Sequence[Mapping[bytes, object]]):
    """``CommandOptions.redirect_targets`` that follows the redirector's current targets
    (the embedded target's URL is known only once the HTTP listener is bound)."""

    def __init__(self, redirector: Redirector) -> None:
        self._redirector = redirector

    def _now(self) -> list[dict[bytes, object]]:
        return [t.advertised() for t in self._redirector.targets()]

    @overload
    def __getitem__(self, index: int) -> Mapping[bytes, object]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Mapping[bytes, object]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        return self._now()[index]

    def __len__(self) -> int:
        return len(self._now())

    def __iter__(self) -> Iterator[Mapping[bytes, object]]:
        return iter(self._now())
