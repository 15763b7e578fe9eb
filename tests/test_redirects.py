"""Redirect targets: configuration, advertisement, the per-request choice, locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from hgwire_tw.blobstore import BlobStore
from hgwire_tw.cache import MemoryStore
from hgwire_tw.commands.registry import capabilities_descriptor
from hgwire_tw.redirects import (
    AdvertisedTargets,
    RedirectConfigError,
    Redirector,
    choose_target,
    embedded_target,
    location,
    parse_targets,
)

CDN = {"name": "cdn", "protocol": "https", "uris": ["https://cdn.example/hg/"]}


def test_parse_and_advertise() -> None:
    """A TOML target becomes the capabilities entry Mercurial's client filters on."""
    (t,) = parse_targets([{**CDN, "snirequired": True, "tlsversions": ["1.2", "1.3"]}])
    assert t.base_url == "https://cdn.example/hg/"
    assert t.advertised() == {
        b"name": b"cdn",
        b"protocol": b"https",
        b"uris": [b"https://cdn.example/hg/"],
        b"snirequired": True,
        b"tlsversions": [b"1.2", b"1.3"],
    }
    assert t.url("x.cbor") == "https://cdn.example/hg/x.cbor"


@pytest.mark.parametrize(
    "entry",
    [
        {**CDN, "protocol": "ftp"},
        {**CDN, "uris": []},
        {**CDN, "name": "hgwire"},
        {**CDN, "tlsversions": ["0.9"]},
        {**CDN, "base_url": "http://plain.example/"},
        {**CDN, "colour": "blue"},
        {"protocol": "https", "uris": ["https://x/"]},
        {**CDN, "protocol": "http", "uris": ["http://x/"], "server_certs": ["c.pem"]},
    ],
)
def test_bad_targets_refused(entry: dict[str, object]) -> None:
    """Malformed targets are configuration errors, not silent surprises."""
    with pytest.raises(RedirectConfigError):
        parse_targets([entry])


def test_duplicate_names_refused() -> None:
    """Two targets cannot share a name."""
    with pytest.raises(RedirectConfigError):
        parse_targets([CDN, CDN])


def test_server_certificates_read(tmp_path: Path) -> None:
    """server_certs are loaded as DER (here handed in by the reader) for https targets."""
    (t,) = parse_targets([{**CDN, "server_certs": ["a.pem"]}], read_certs=lambda p: (b"DER",))
    assert t.serverdercerts == (b"DER",)
    where = location(t.url("n"), size=3, sha256="00" * 32, serverdercerts=t.serverdercerts)
    assert where[b"serverdercerts"] == [b"DER"]


def test_choose_first_accepted_server_target() -> None:
    """The server's order wins; the client must accept sha256."""
    targets = parse_targets([CDN, {**CDN, "name": "cdn2"}])
    req = {b"targets": [b"cdn2", b"cdn"], b"hashes": [b"sha256"]}
    assert choose_target(targets, req) is targets[0]
    assert choose_target(targets, {b"targets": [b"cdn2"], b"hashes": [b"sha256"]}) is targets[1]
    assert choose_target(targets, {b"targets": [b"cdn"], b"hashes": [b"sha1"]}) is None
    assert choose_target(targets, {b"targets": [b"other"], b"hashes": [b"sha256"]}) is None
    assert choose_target(targets, None) is None
    assert choose_target(targets, {b"targets": b"cdn", b"hashes": 5}) is None


def test_embedded_target_follows_listener(tmp_path: Path) -> None:
    """The hgwire target appears once the blob base URL is known, first in order."""
    base: list[str | None] = [None]
    r = Redirector(
        BlobStore(tmp_path), parse_targets([CDN]), embedded=True, embedded_base=lambda: base[0]
    )
    live = AdvertisedTargets(r)
    assert [t[b"name"] for t in live] == [b"cdn"]
    base[0] = "http://127.0.0.1:8000/.hgwire/blobs/"
    assert [t[b"name"] for t in live] == [b"hgwire", b"cdn"] and len(live) == 2
    assert embedded_target("file:///x") is None


def test_capabilities_carry_live_targets(tmp_path: Path, rich_repo_template: Path) -> None:
    """The capabilities descriptor lists the targets and only the sha256 hash."""
    from mercurial import hg, ui

    r = Redirector(BlobStore(tmp_path, "http://cdn.example/b/"), embedded=True)
    repo = hg.repository(ui.ui.load(), bytes(rich_repo_template))
    caps = capabilities_descriptor(
        repo, redirect_targets=AdvertisedTargets(r), redirect_hashes=(b"sha256",)
    )
    assert caps[b"redirect"] == {
        b"targets": [
            {b"name": b"hgwire", b"protocol": b"http", b"uris": [b"http://cdn.example/b/"]}
        ],
        b"hashes": [b"sha256"],
    }


def test_publish_is_idempotent(tmp_path: Path) -> None:
    """Publishing the same entry twice writes one blob and gives the same location."""
    store = MemoryStore()
    w = store.writer("ab" * 20)
    w.write(b"\x41")
    w.commit()
    r = Redirector(BlobStore(tmp_path / "b", "http://h/"), embedded=True)
    target = r.targets()[0]
    first = r.publish(target, store.lookup("ab" * 20))  # type: ignore[arg-type]
    second = r.publish(target, store.lookup("ab" * 20))  # type: ignore[arg-type]
    assert first == second and r.published == 1 and r.redirects == 2
    assert len(list((tmp_path / "b").iterdir())) == 1


def test_embedded_redirects_are_scoped_when_a_repository_is_private(tmp_path: Path) -> None:
    """With a private repository, a public repository's redirect to the embedded target
    carries a scope token for that blob and repository; a private one's is not
    redirected there at all (the next accepted target, else inline)."""
    public = {"pub"}
    r = Redirector(
        BlobStore(tmp_path),
        parse_targets([CDN]),
        embedded=True,
        embedded_base=lambda: "http://127.0.0.1:1/.hgwire/blobs/",
        public_blobs=lambda: False,
        public_repo=lambda name: name in public,
    )
    both = {b"targets": [b"hgwire", b"cdn"], b"hashes": [b"sha256"]}
    assert r.choose(both, "pub").name == "hgwire"  # type: ignore[union-attr]
    assert r.choose(both, "private").name == "cdn"  # type: ignore[union-attr]
    assert r.choose({**both, b"targets": [b"hgwire"]}, "private") is None
    embedded = r.targets()[0]
    url = r.scoped_url(embedded, "a" * 64 + ".cbor", "pub")
    token = url.rpartition("scope=")[2]
    assert url.startswith("http://127.0.0.1:1/.hgwire/blobs/" + "a" * 64 + ".cbor?repo=pub&")
    assert r.in_scope("pub", "a" * 64 + ".cbor", token)
    assert not r.in_scope("private", "a" * 64 + ".cbor", token)
    assert not r.in_scope("pub", "b" * 64 + ".cbor", token)
