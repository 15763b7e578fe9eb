"""The embedded blob resource: exact blob names only, streamed in bounded reads, and
never handed to a client that could not pull every repository."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from hgwire_tw.access import AccessPolicy, hash_password
from hgwire_tw.blobstore import BlobStore
from hgwire_tw.context import BLOBS_PATH, ServerContext, Settings
from hgwire_tw.repo.registry import RepositoryRegistry
from hgwire_tw.transports import httpblobs
from hgwire_tw.transports.http import HgResource, HgSite
from tests import repobuilders as rb
from tests.servers import running_server


@pytest.fixture
def repos(tmp_path: Path) -> dict[str, Path]:
    return {
        "pub": rb.make_linear_repo(tmp_path / "pub", 1),
        "priv": rb.make_linear_repo(tmp_path / "priv", 1),
    }


def make_ctx(tmp_path: Path, repos: dict[str, Path], access: AccessPolicy | None = None) -> Any:
    return ServerContext(
        reactor=None,
        registry=RepositoryRegistry(repos),
        pool=None,  # type: ignore[arg-type]
        access=access or AccessPolicy.default(),
        settings=Settings(),
        blobs=BlobStore(tmp_path / "blobs"),
    )


PRIVATE = """
[users.alice]
password = "{pw}"
[users.bob]
password = "{pw}"
[[rules]]
repos = "priv"
read = ["alice"]
[[rules]]
repos = "*"
read = ["*", "anonymous"]
"""


def private_policy(tmp_path: Path) -> AccessPolicy:
    path = tmp_path / "access.toml"
    path.write_text(PRIVATE.format(pw=hash_password("pw")), encoding="utf-8")
    policy = AccessPolicy.load(path)
    # Pre-answer the (slow, threaded) password checks so the channel tests stay synchronous.
    policy.remember_login("alice", "pw", True)
    policy.remember_login("bob", "pw", True)
    return policy


def dummy(path: bytes, method: bytes = b"GET") -> DummyRequest:
    request = DummyRequest([])
    request.path = path
    request.uri = path
    request.method = method
    return request


def test_get_streams_the_blob_in_bounded_chunks(tmp_path: Path, repos: dict[str, Path]) -> None:
    """A published blob comes back whole, with its media type and length, in CHUNK pieces."""
    ctx = make_ctx(tmp_path, repos)
    data = os.urandom(3 * httpblobs.CHUNK + 17)
    blob = ctx.blobs.publish([data], suffix=".hg")
    request = dummy(BLOBS_PATH.encode() + blob.name.encode())
    assert HgResource(ctx).render(request) == NOT_DONE_YET
    assert request.responseCode == 200
    assert request.finished == 1
    assert b"".join(request.written) == data
    assert max(len(w) for w in request.written) <= httpblobs.CHUNK
    assert len(request.written) == 4
    headers = request.responseHeaders
    assert headers.getRawHeaders(b"content-type") == [b"application/mercurial-bundle"]
    assert headers.getRawHeaders(b"content-length") == [str(len(data)).encode()]
    assert headers.getRawHeaders(b"cache-control")[0].startswith(b"public")


def test_head_sends_headers_only(tmp_path: Path, repos: dict[str, Path]) -> None:
    """HEAD gives the length and type of a .cbor blob without a body."""
    ctx = make_ctx(tmp_path, repos)
    blob = ctx.blobs.publish([b"\xa0"], suffix=".cbor")
    request = dummy(BLOBS_PATH.encode() + blob.name.encode(), b"HEAD")
    HgResource(ctx).render(request)
    assert request.responseCode == 200 and request.finished == 1
    assert request.written == []
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/mercurial-cbor"]
    assert request.responseHeaders.getRawHeaders(b"content-length") == [b"1"]


@pytest.mark.parametrize(
    "tail",
    [
        b"",
        b"../access.toml",
        b"%2e%2e/secret",
        b"0" * 64,
        b"0" * 64 + b".txt",
        b"A" * 64 + b".hg",
        b"0" * 63 + b".hg",
        b"0" * 64 + b".hg/x",
        b".tmp-0123",
    ],
)
def test_anything_but_a_blob_name_is_404(
    tmp_path: Path, repos: dict[str, Path], tail: bytes
) -> None:
    """Names that are not exactly <sha256><suffix> never touch the file system: 404."""
    ctx = make_ctx(tmp_path, repos)
    ctx.blobs.directory.mkdir()
    (ctx.blobs.directory / ".tmp-0123").write_bytes(b"partial")
    request = dummy(BLOBS_PATH.encode() + tail)
    body = HgResource(ctx).render(request)
    assert request.responseCode == 404
    assert body == b"no such blob\n"


def test_unpublished_blob_is_404(tmp_path: Path, repos: dict[str, Path]) -> None:
    """A well-formed name with no file behind it is a 404 after the access check."""
    ctx = make_ctx(tmp_path, repos)
    request = dummy(BLOBS_PATH.encode() + b"a" * 64 + b".hg")
    HgResource(ctx).render(request)
    assert request.responseCode == 404 and request.finished == 1


def test_other_methods_are_405(tmp_path: Path, repos: dict[str, Path]) -> None:
    """Blobs are read-only: POST is refused with an Allow header."""
    ctx = make_ctx(tmp_path, repos)
    request = dummy(BLOBS_PATH.encode() + b"a" * 64 + b".hg", b"POST")
    HgResource(ctx).render(request)
    assert request.responseCode == 405
    assert request.responseHeaders.getRawHeaders(b"allow") == [b"GET, HEAD"]


def channel_get(ctx: Any, path: bytes, auth: bytes | None = None, method: bytes = b"GET") -> bytes:
    site = HgSite(HgResource(ctx), ctx, reactor=Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    lines = [b"%s %s HTTP/1.1" % (method, path), b"Host: test"]
    if auth is not None:
        import base64

        lines.append(b"Authorization: Basic " + base64.b64encode(auth))
    channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
    return bytes(transport.value())


def test_private_repository_blobs_need_a_reader_of_everything(
    tmp_path: Path, repos: dict[str, Path]
) -> None:
    """With a private repository: anonymous gets 401, a user who cannot read it 403, a
    user who reads every repository gets the blob (marked private for caches)."""
    ctx = make_ctx(tmp_path, repos, private_policy(tmp_path))
    blob = ctx.blobs.publish([b"bundle bytes"], suffix=".hg")
    path = BLOBS_PATH.encode() + blob.name.encode()
    anonymous = channel_get(ctx, path)
    assert anonymous.startswith(b"HTTP/1.1 401")
    assert b"WWW-Authenticate: Basic" in anonymous
    assert channel_get(ctx, path, b"bob:pw").startswith(b"HTTP/1.1 403")
    alice = channel_get(ctx, path, b"alice:pw", method=b"HEAD")
    assert alice.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 12" in alice
    assert b"Cache-Control: private" in alice


def test_real_listener_serves_blobs(tmp_path: Path, repos: dict[str, Path]) -> None:
    """Over a real HTTP listener a multi-MiB blob downloads intact; bad names are 404."""
    data = os.urandom(2 * 1024 * 1024 + 5)
    with running_server(tmp_path, "--repo", f"pub={repos['pub']}") as server:
        blob = BlobStore(server.state_dir / "blobs").publish([data], suffix=".hg")
        url = f"{server.http_url}{BLOBS_PATH}{blob.name}"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.headers["Content-Type"] == "application/mercurial-bundle"
            assert int(response.headers["Content-Length"]) == len(data)
            assert response.read() == data
        for bad in ("../listening.json", "%2e%2e/listening.json", blob.name[:-3] + ".txt"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(f"{server.http_url}{BLOBS_PATH}{bad}", timeout=30)
            assert caught.value.code == 404
        # The repository itself is still served alongside.
        with urllib.request.urlopen(server.url("pub"), timeout=30) as response:
            assert response.status == 200


def test_real_listener_refuses_anonymous_blobs_of_private_repos(
    tmp_path: Path, repos: dict[str, Path]
) -> None:
    """A real server with a login-only repository does not serve blobs anonymously."""
    access = tmp_path / "access.toml"
    access.write_text(PRIVATE.format(pw=hash_password("pw")), encoding="utf-8")
    args = ["--repo", f"pub={repos['pub']}", "--repo", f"priv={repos['priv']}"]
    with running_server(tmp_path, *args, "--access", str(access)) as server:
        blob = BlobStore(server.state_dir / "blobs").publish([b"x" * 100], suffix=".hg")
        url = f"{server.http_url}{BLOBS_PATH}{blob.name}"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url, timeout=30)
        assert caught.value.code == 401

        def opener(password: str) -> urllib.request.OpenerDirector:
            manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            manager.add_password(None, server.http_url, "alice", password)
            return urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(manager))

        with pytest.raises(urllib.error.HTTPError) as caught:
            opener("wrong").open(url, timeout=30)
        assert caught.value.code == 401
        with opener("pw").open(url, timeout=30) as response:
            assert response.read() == b"x" * 100
