"""The hgwire client follows content redirects from a real ``hgwire serve --redirects``
over HTTP v2, raw TCP and the SSH subsystem, verifies what it fetched, and falls back to
inline answers."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from hgwire_tw.client.redirects import BlobFetch, RedirectFailed, redirect_request
from hgwire_tw.core import cbor
from tests.clientsites import TRANSPORTS, client_site
from tests.repobuilders import hg, repo_summary, verify

REDIRECTS = ("--redirects",)
#: A blob served whole by the embedded HTTP listener, as its access log shows it.
BLOB_GET = r'"GET /\.hgwire/blobs/[0-9a-f]{64}\.cbor HTTP/1\.1" 200'


def reference(source: Path, tmp_path: Path) -> dict[str, object]:
    ref = tmp_path / "ref"
    if not ref.exists():
        hg("clone", "-q", "-U", "--pull", source, ref)
    return repo_summary(ref)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_clone_follows_redirects(rich_repo: Path, tmp_path: Path, transport: str) -> None:
    """The second clone gets its data from the blob store and equals the source."""
    with client_site(tmp_path, rich_repo, transport, *REDIRECTS) as site:
        site.clone(tmp_path / "warm")  # fills the cache
        out = site.clone(tmp_path / "dest")
        assert "0 redirects fallen back" in out
        followed = int(out.split(" redirects followed")[0].rsplit("\n", 1)[-1])
        assert followed >= 2
        blob_gets = re.findall(BLOB_GET, site.server.log())
        assert len(blob_gets) >= followed
    assert repo_summary(tmp_path / "dest") == reference(rich_repo, tmp_path)
    verify(tmp_path / "dest")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_corrupt_blobs_fall_back_inline(rich_repo: Path, tmp_path: Path, transport: str) -> None:
    """Blobs whose bytes no longer match their hash are refused; the commands are asked
    again inline and the clone still equals the source."""
    with client_site(tmp_path, rich_repo, transport, *REDIRECTS) as site:
        site.clone(tmp_path / "warm")
        site.clone(tmp_path / "warm2")  # publishes the blobs
        blobs = sorted((site.server.state_dir / "blobs").glob("*.cbor"))
        assert blobs
        for blob in blobs:
            data = bytearray(blob.read_bytes())
            data[len(data) // 2] ^= 0x55
            blob.write_bytes(bytes(data))
        out = site.clone(tmp_path / "dest")
        assert "0 redirects followed" in out
        assert f"{len(blobs)} redirects fallen back" in out
    assert repo_summary(tmp_path / "dest") == reference(rich_repo, tmp_path)
    verify(tmp_path / "dest")


def test_dead_blob_server_falls_back(rich_repo: Path, tmp_path: Path) -> None:
    """Redirects to a base URL nobody listens on fall back inline; the clone completes."""
    args = ("--redirects", "--blob-base-url", "http://127.0.0.1:9/b/")
    with client_site(tmp_path, rich_repo, "http", *args) as site:
        site.clone(tmp_path / "warm")
        out = site.clone(tmp_path / "dest")
        assert "0 redirects followed" in out and "redirects fallen back" in out
    assert repo_summary(tmp_path / "dest") == reference(rich_repo, tmp_path)


# ---------------------------------------------------------------------------------------
# units


def test_redirect_request_keeps_http_targets_and_known_hashes() -> None:
    """Only http/https targets with a TLS version we speak, hashes ∩ {sha256, sha1}."""
    caps = {
        b"redirect": {
            b"targets": [
                {b"name": b"cdn", b"protocol": b"https", b"uris": [b"https://c/"]},
                {b"name": b"old", b"protocol": b"https", b"tlsversions": [b"1.0"]},
                {b"name": b"ftp", b"protocol": b"ftp"},
                {b"name": b"hgwire", b"protocol": b"http", b"tlsversions": [b"1.2"]},
            ],
            b"hashes": [b"sha256", b"md5", b"sha1"],
        }
    }
    assert redirect_request(caps) == {
        b"targets": [b"cdn", b"hgwire"],
        b"hashes": [b"sha256", b"sha1"],
    }
    assert redirect_request({}) is None


def location_for(body: bytes, **overrides: object) -> dict[bytes, object]:
    where: dict[bytes, object] = {
        b"url": b"http://127.0.0.1:1/x.cbor",
        b"mediatype": b"application/mercurial-cbor",
        b"size": len(body),
        b"fullhashes": [[b"sha256", hashlib.sha256(body).digest()]],
    }
    where.update({k.encode(): v for k, v in overrides.items()})
    return where


def run_fetch(location: dict[bytes, object], pieces: list[bytes]) -> object:
    fetch = BlobFetch(location)
    fetch.spool = __import__("tempfile").TemporaryFile()
    outcome: list[object] = []
    fetch.done.addCallbacks(outcome.append, lambda f: outcome.append(f.value))
    try:
        for piece in pieces:
            fetch.feed(piece)
    except RedirectFailed as e:
        fetch.fail(e)
    fetch.complete()
    return outcome[0]


def test_blob_fetch_delivers_only_verified_cbor() -> None:
    """A body of the right size, hash and well-formed CBOR comes back as a spool file;
    wrong size, hash or truncated CBOR is a RedirectFailed."""
    body = cbor.dumps({b"totalitems": 1}) + cbor.dumps([b"x" * 300])
    spool = run_fetch(location_for(body), [body[:7], body[7:]])
    assert hasattr(spool, "read") and spool.read() == body  # type: ignore[union-attr]
    assert isinstance(run_fetch(location_for(body), [body + b"\x00"]), RedirectFailed)
    assert isinstance(run_fetch(location_for(body), [body[:-1]]), RedirectFailed)
    bad = bytearray(body)
    bad[-1] ^= 1
    assert isinstance(run_fetch(location_for(body), [bytes(bad)]), RedirectFailed)
    truncated = body[:-3]
    assert isinstance(run_fetch(location_for(truncated), [truncated]), RedirectFailed)
    junk = b"\xff\xff\xff"
    assert isinstance(run_fetch(location_for(junk), [junk]), RedirectFailed)


def test_unverifiable_locations_are_refused() -> None:
    """No hash we know, a non-http URL or no media type: not followed."""
    for where in (
        location_for(b"", fullhashes=[[b"md5", b"0" * 16]]),
        location_for(b"", url=b"file:///etc/passwd"),
        {b"url": b"http://h/x"},
    ):
        with pytest.raises(RedirectFailed):
            BlobFetch(where)
