"""Wire protocol v2 over HTTP against real clients: Mercurial 6.0.3 clones and pulls.

The server runs as a real subprocess on 127.0.0.1; the 6.0.3 client (the last release with
a v2 peer) runs with ``experimental.httppeer.advertise-v2``. The reference result is what
Mercurial itself makes of the same repository: a ``clone --pull`` of the source.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hgwire_tw.core import cbor
from hgwire_tw.core.frames import FRAMING_MEDIA_TYPE, FrameDecoder, FrameType
from hgwire_tw.core.reactor import (
    ClientFrameReactor,
    ResponseError,
    ResponseFinished,
    ResponseObjects,
    SendFrames,
)
from tests.repobuilders import HG_603, advance_rich_repo, hg, repo_summary, verify
from tests.servers import RunningServer, running_server

pytestmark = pytest.mark.skipif(
    not os.path.exists(HG_603), reason=f"Mercurial 6.0.3 not installed at {HG_603} (.ci/run)"
)

V2 = ["--config", "experimental.httppeer.advertise-v2=true"]
API = "api/exp-http-v2-0003"


def reference_clone(src: Path, dest: Path) -> Path:
    """What Mercurial makes of ``src`` when pulling it: the oracle for our clones."""
    hg("clone", "-q", "-U", "--pull", src, dest)
    return dest


def v2_clone(server: RunningServer, name: str, dest: Path, encoding: str) -> None:
    hg(
        *V2,
        "--config",
        f"experimental.httppeer.v2-encoder-order={encoding}",
        "clone",
        "-U",
        server.url(name),
        dest,
        exe=HG_603,
    )


@pytest.mark.parametrize("encoding", ["zstd-8mb", "zlib", "identity"])
def test_hg603_clone_over_v2(rich_repo: Path, tmp_path: Path, encoding: str) -> None:
    """A real 6.0.3 v2 clone equals Mercurial's own pull of the source, and verifies."""
    ref = reference_clone(rich_repo, tmp_path / "ref")
    with running_server(tmp_path, "--repo", f"rich={rich_repo}") as server:
        v2_clone(server, "rich", tmp_path / "clone", encoding)
        log = server.log()
    assert f"/rich/{API}/ro/changesetdata" in log, "the client did not use the v2 API"
    assert f"/rich/{API}/ro/filesdata" in log
    assert repo_summary(tmp_path / "clone") == repo_summary(ref)
    verify(tmp_path / "clone", exe=HG_603)
    verify(tmp_path / "clone")


def test_hg603_pull_over_v2_after_new_commits(rich_repo: Path, tmp_path: Path) -> None:
    """Incremental v2 pulls bring new changesets, merges and bookmark moves."""
    hg("phase", "--draft", "--force", "-r", "9", cwd=rich_repo)
    with open(rich_repo / ".hg" / "hgrc", "a") as hgrc:  # drafts stay draft
        hgrc.write("[phases]\npublish = false\n")
    with running_server(tmp_path, "--repo", f"rich={rich_repo}") as server:
        v2_clone(server, "rich", tmp_path / "clone", "zstd-8mb")
        advance_rich_repo(rich_repo)
        hg(*V2, "pull", "-q", "-R", tmp_path / "clone", exe=HG_603)
    ref = reference_clone(rich_repo, tmp_path / "ref")
    assert repo_summary(tmp_path / "clone") == repo_summary(ref)
    verify(tmp_path / "clone")


def post_frames(
    server: RunningServer, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    req = urllib.request.Request(
        f"{server.http_url}/{path}",
        data=body,
        method="POST",
        headers={
            "Accept": FRAMING_MEDIA_TYPE.decode(),
            "Content-Type": FRAMING_MEDIA_TYPE.decode(),
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def request_body(
    client: ClientFrameReactor, *commands: tuple[bytes, dict[bytes, object]]
) -> tuple[bytes, list[int]]:
    data, ids = [], []
    for name, args in commands:
        rid, actions = client.call_command(name, args)
        ids.append(rid)
        data += [a.data for a in actions if isinstance(a, SendFrames)]
    return b"".join(data), ids


@pytest.mark.parametrize("encoding", [b"zstd-8mb", b"zlib", b"identity"])
def test_negotiated_encoding_and_multirequest(
    rich_repo: Path, tmp_path: Path, encoding: bytes
) -> None:
    """The server picks its preferred encoding among the client's and answers every
    command of a multirequest on one stream."""
    client = ClientFrameReactor(encodings=(encoding,))
    body, ids = request_body(
        client,
        (b"heads", {}),
        (b"known", {b"nodes": []}),
        (b"listkeys", {b"namespace": b"bookmarks"}),
    )
    with running_server(tmp_path, "--repo", f"rich={rich_repo}") as server:
        status, ctype, data = post_frames(server, f"rich/{API}/ro/multirequest", body)
    assert status == 200 and ctype == FRAMING_MEDIA_TYPE.decode()
    settings = [f for f in FrameDecoder().feed(data) if f.type == FrameType.STREAM_SETTINGS]
    assert [cbor.loads(f.payload) for f in settings] == [encoding]
    objects: dict[int, list[object]] = {i: [] for i in ids}
    finished = set()
    for event in client.receive_data(data):
        if isinstance(event, ResponseObjects):
            objects[event.request_id].extend(event.objects)
        elif isinstance(event, ResponseFinished):
            finished.add(event.request_id)
    assert finished == set(ids)
    served_heads = hg("log", "-r", "heads(not secret())", "-T", "{node}\n", cwd=rich_repo)
    heads = {bytes.fromhex(n.decode()) for n in served_heads.stdout.split()}
    assert set(objects[ids[0]][0]) == heads  # type: ignore[call-overload]
    assert objects[ids[1]] == [b""]
    bookmarks = objects[ids[2]][0]
    assert isinstance(bookmarks, dict) and set(bookmarks) == {b"main", b"stable-bm"}


def test_http_v2_refusals(rich_repo: Path, tmp_path: Path) -> None:
    """Each misuse of the v2 URL space gets its documented status; a push command under
    ro/ is refused (upstream ran it) and the repository is unchanged."""
    before = repo_summary(rich_repo)
    client = ClientFrameReactor(encodings=(b"identity",))
    pushkey, _ = request_body(
        client,
        (
            b"pushkey",
            {
                b"namespace": b"bookmarks",
                b"key": b"evil",
                b"old": b"",
                b"new": hg("log", "-r", "0", "-T", "{node}", cwd=rich_repo).stdout,
            },
        ),
    )
    heads_body, _ = request_body(ClientFrameReactor(encodings=(b"identity",)), (b"heads", {}))
    with running_server(tmp_path, "--repo", f"rich={rich_repo}") as server:
        assert post_frames(server, f"rich/{API}/ro/pushkey", pushkey)[0] == 403
        assert post_frames(server, f"rich/{API}/ro/multirequest", pushkey)[0] == 403
        # rw needs write permission: anonymous users have none without an access file
        assert post_frames(server, f"rich/{API}/rw/pushkey", pushkey)[0] in (401, 403)
        assert post_frames(server, f"rich/{API}/ro/nosuchcommand", heads_body)[0] == 404
        assert post_frames(server, f"rich/{API}/xx/heads", heads_body)[0] == 404
        assert (
            post_frames(server, f"rich/{API}/ro/heads", heads_body, {"Accept": "application/json"})[
                0
            ]
            == 406
        )
        assert (
            post_frames(server, f"rich/{API}/ro/heads", heads_body, {"Content-Type": "text/plain"})[
                0
            ]
            == 415
        )
        status, ctype, text = post_frames(server, f"rich/{API}/ro/known", heads_body)
        assert (status, ctype) == (200, "text/plain")
        assert b"command in frame must match command in URL" in text
        status, _, text = post_frames(server, f"rich/{API}/ro/heads", b"\x01\x02garbage")
        assert status == 200 and text  # a protocol error, as text
        with urllib.request.urlopen(f"{server.http_url}/rich/{API}/", timeout=10) as resp:
            assert resp.status == 200
        try:
            urllib.request.urlopen(f"{server.http_url}/rich/{API}/ro/heads", timeout=10)
        except urllib.error.HTTPError as e:
            assert e.code == 405 and e.headers["Allow"] == "POST"
        else:
            raise AssertionError("GET on a command URL must be refused")
        # the server still serves after all that
        status, _, data = post_frames(server, f"rich/{API}/ro/heads", heads_body)
        assert status == 200 and data
    assert repo_summary(rich_repo) == before


def test_unknown_node_is_a_command_error(rich_repo: Path, tmp_path: Path) -> None:
    """An unknown manifest node comes back as a command error, and nothing is cached."""
    client = ClientFrameReactor(encodings=(b"zlib",))
    body, (rid,) = request_body(
        client, (b"manifestdata", {b"nodes": [b"\xaa" * 20], b"tree": b"", b"fields": {b"parents"}})
    )
    with running_server(tmp_path, "--repo", f"rich={rich_repo}") as server:
        status, _, data = post_frames(server, f"rich/{API}/ro/manifestdata", body)
    assert status == 200
    errors = [e for e in client.receive_data(data) if isinstance(e, ResponseError)]
    assert errors and errors[0].request_id == rid
    assert b"unknown node" in errors[0].message


def test_capabilities_upgrade_handshake(rich_repo: Path, tmp_path: Path) -> None:
    """`?cmd=capabilities` with the upgrade headers answers the CBOR descriptor."""
    with running_server(tmp_path, "--repo", f"rich={rich_repo}") as server:
        req = urllib.request.Request(
            f"{server.url('rich')}?cmd=capabilities",
            headers={"X-HgUpgrade-1": "exp-http-v2-0003", "X-HgProto-1": "cbor"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.headers["Content-Type"] == "application/mercurial-cbor"
            caps = cbor.loads(resp.read())
        with urllib.request.urlopen(f"{server.url('rich')}?cmd=capabilities", timeout=30) as resp:
            v1 = resp.read()
    assert isinstance(caps, dict) and caps[b"apibase"] == b"api/"
    descriptor = caps[b"apis"][b"exp-http-v2-0003"]
    assert b"changesetdata" in descriptor[b"commands"]
    assert descriptor[b"commands"][b"pushkey"][b"permissions"] == [b"push"]
    assert caps[b"v1capabilities"] == v1 and b"getbundle" in v1
