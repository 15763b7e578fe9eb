"""Full clones by ``hgwire clone`` over raw TCP, HTTP v2 and SSH: the store path (the
server's revlogs copied with ``rawstorefiledata``) and the revision path (forced with
``--no-stream``, or because the server has secret changesets or stream clones off).

One server per module serves ``drafts`` (no secret changeset, non-publishing, so the
copy must carry drafts and bookmarks) and ``secret`` (the rich repository with its
secret changeset) on all three transports; a second one runs with
``--no-stream-clone``. Every clone must equal ``hg clone --pull`` of the source and
verify clean.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hgwire_tw.core.reactor import ClientFrameReactor
from tests.repobuilders import hg, make_rich_repo, repo_summary, verify
from tests.servers import RunningServer, running_server
from tests.sshclient import (
    SSH_KEYGEN,
    SSH_LISTEN,
    keygen,
    run_hgwire,
    write_key_access,
    write_known_hosts,
)

pytestmark = [
    pytest.mark.skipif(not os.path.exists(SSH_KEYGEN), reason="ssh-keygen not installed"),
    pytest.mark.timeout(300),
]

TCP_LISTEN = ("--tcp", "tcp:0:interface=127.0.0.1")


@dataclass
class Site:
    server: RunningServer
    tmp: Path
    repos: dict[str, Path]
    key: Path
    known_hosts: Path

    def url(self, transport: str, repo: str) -> str:
        if transport == "tcp":
            return f"hgwire://127.0.0.1:{self.server.ports['tcp'][0]}/{repo}"
        if transport == "ssh":
            return f"ssh://alice@127.0.0.1:{self.server.ports['ssh'][0]}/{repo}"
        return f"{self.server.http_url}/{repo}"

    def clone(self, transport: str, repo: str, dest: Path, *extra: str) -> str:
        auth = ["--ssh-key", str(self.key), "--known-hosts", str(self.known_hosts)]
        result = run_hgwire(
            self.tmp / "home", "clone", "-U", *extra, *auth, self.url(transport, repo), dest
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


def _reference(src: Path, dest: Path) -> dict[str, object]:
    if not dest.exists():
        hg("clone", "-q", "-U", "--pull", src, dest)
    return repo_summary(dest)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("storeclone")
    secret = make_rich_repo(tmp / "secret")
    drafts = make_rich_repo(tmp / "drafts")
    hg("phase", "--draft", "--force", "-r", "secret()", cwd=drafts)
    with open(drafts / ".hg" / "hgrc", "a", encoding="utf-8") as f:
        f.write("[phases]\npublish = false\n")
    key = keygen(tmp / "alice")
    access = write_key_access(tmp / "access.toml", {"alice": [key]}, read='"*", "anonymous"')
    with running_server(
        tmp,
        "--repo",
        f"drafts={drafts}",
        "--repo",
        f"secret={secret}",
        *SSH_LISTEN,
        *TCP_LISTEN,
        "--access",
        str(access),
    ) as server:
        known = write_known_hosts(server, tmp / "known_hosts")
        yield Site(server, tmp, {"drafts": drafts, "secret": secret}, key, known)


@pytest.mark.parametrize("transport", ["tcp", "http", "ssh"])
def test_store_path_and_revision_path(site: Site, tmp_path: Path, transport: str) -> None:
    """The default clone copies the store; ``--no-stream`` fetches revision by revision;
    both equal hg's own clone (drafts stay draft, bookmarks arrive) and verify clean."""
    expected = _reference(site.repos["drafts"], site.tmp / "ref-drafts")
    out = site.clone(transport, "drafts", tmp_path / "store")
    assert "by copying" in out, out
    assert repo_summary(tmp_path / "store") == expected
    verify(tmp_path / "store")
    out = site.clone(transport, "drafts", tmp_path / "revs", "--no-stream")
    assert "by copying" not in out and "added 11 changesets" in out, out
    assert repo_summary(tmp_path / "revs") == expected
    verify(tmp_path / "revs")


def test_secret_changesets_fall_back_and_never_leak(site: Site, tmp_path: Path) -> None:
    """A server with a secret changeset offers no store files: the clone takes the
    revision path and the secret changeset (and its file) never arrive."""
    out = site.clone("tcp", "secret", tmp_path / "c")
    assert "by copying" not in out, out
    assert repo_summary(tmp_path / "c") == _reference(site.repos["secret"], site.tmp / "ref-s")
    assert not list((tmp_path / "c" / ".hg" / "store" / "data").glob("secret*"))
    verify(tmp_path / "c")


def _call_once(port: int, name: bytes, args: dict[bytes, object]) -> list[object] | bytes:
    """One v2 command on a fresh TCP connection: its objects, or its error message."""
    import socket

    from hgwire_tw.core.reactor import ResponseError, ResponseFinished, ResponseObjects

    client = ClientFrameReactor()
    _, actions = client.call_command(name, args)
    objects: list[object] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"hgwire-v2 drafts\n" + b"".join(a.data for a in actions))
        head = b""
        while not head.endswith(b"\n"):
            head += s.recv(1)
        assert head == b"ok\n", head
        while True:
            data = s.recv(65536)
            assert data, "connection closed early"
            for event in client.receive_data(data):
                if isinstance(event, ResponseObjects):
                    objects += event.objects
                elif isinstance(event, ResponseError):
                    return event.message
                elif isinstance(event, ResponseFinished):
                    return objects


def test_no_stream_clone_refuses_rawstorefiledata_everywhere(site: Site, tmp_path: Path) -> None:
    """With --no-stream-clone the v2 capabilities hide rawstorefiledata on TCP too, a
    direct call is refused, and the client falls back to the revision path."""
    with running_server(
        tmp_path, "--repo", f"drafts={site.repos['drafts']}", *TCP_LISTEN, "--no-stream-clone"
    ) as server:
        port = server.ports["tcp"][0]
        caps = _call_once(port, b"capabilities", {})
        assert isinstance(caps, list) and isinstance(caps[0], dict)
        assert b"rawstorefiledata" not in caps[0][b"commands"]
        assert b"manifestdata" in caps[0][b"commands"]
        refused = _call_once(port, b"rawstorefiledata", {b"files": [b"changelog"]})
        assert refused == b"stream clone is disabled"
        result = run_hgwire(
            site.tmp / "home", "clone", "-U", f"hgwire://127.0.0.1:{port}/drafts", tmp_path / "c"
        )
        assert result.returncode == 0, result.stderr
        assert "by copying" not in result.stdout
        assert repo_summary(tmp_path / "c") == _reference(site.repos["drafts"], site.tmp / "ref")
