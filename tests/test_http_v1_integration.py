"""Real ``hg`` 7.2.4 clients against the real server over HTTP wire protocol v1.

Every test starts ``hgwire serve`` on 127.0.0.1 as a subprocess (``tests.servers``) and
drives it with the ``hg`` of the test virtualenv, or with raw ``urllib`` requests that
carry the same headers a client sends. The server logs one line per v1 command with
the media type and compression engine it answered with; tests read that log.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from hgwire_tw.access import hash_password
from tests import repobuilders as rb
from tests.servers import RunningServer, running_server

pytestmark = pytest.mark.timeout(120)

ZERO = "0" * 40


# --------------------------------------------------------------------------- helpers


def expected_clone(src: Path, *, publishing: bool = True) -> dict[str, object]:
    """What a faithful clone of ``src`` holds: no secret changesets; drafts public when
    the source publishes."""
    phases = rb.hg_out("log", "-r", "not secret()", "-T", "{node} {phase}\n", cwd=src)
    if publishing:
        phases = phases.replace(" draft\n", " public\n")
    return {
        "nodes": sorted(rb.log_nodes(src, "not secret()")),
        "phases": sorted(phases.splitlines()),
        "bookmarks": rb.hg_out("bookmarks", "-T", "{bookmark} {node}\n", cwd=src),
        "heads": sorted(rb.log_nodes(src, "heads(not secret())")),
    }


def summary(repo: Path) -> dict[str, object]:
    s = rb.repo_summary(repo)
    s["phases"] = sorted(str(s["phases"]).splitlines())
    return s


def v1_log(server: RunningServer, cmd: str) -> list[str]:
    """The server's log lines for v1 command ``cmd``: '<status> <media type> <engine>'."""
    pattern = re.compile(rf"\] v1 \S+ {re.escape(cmd)} (\d+ \S+ \S+)")
    return [m.group(1) for m in pattern.finditer(server.log())]


def raw(
    url: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    data: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns (status, headers, body) for any status."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def write_access(path: Path, *, write: str) -> Path:
    """An access file: anonymous read; ``write`` (a user or 'anonymous') may push.
    User alice's password is 'secret'."""
    path.write_text(
        f'[users.alice]\npassword = "{hash_password("secret")}"\n\n'
        f'[[rules]]\nrepos = "*"\nread = ["anonymous", "*"]\nwrite = ["{write}"]\n',
        encoding="utf-8",
    )
    return path


def commit(repo: Path, name: str, content: bytes) -> None:
    (repo / name).write_bytes(content)
    rb.hg("commit", "-A", "-q", "-m", f"change {name}", "-d", "1700000000 0", cwd=repo)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    """One read-only server for the tests that do not change repositories."""
    base = tmp_path_factory.mktemp("v1shared")
    src = rb.make_rich_repo(base / "rich")
    with running_server(base, "--repo", f"rich={src}") as server:
        yield server, src


# --------------------------------------------------------------------------- clone


def test_clone_default_negotiates_zstd(shared: tuple[RunningServer, Path], tmp_path: Path) -> None:
    """A default 7.2.4 client gets its bundle as 0.2 + zstd; the clone is faithful."""
    server, src = shared
    dest = tmp_path / "c"
    rb.hg("clone", "-U", server.url("rich"), dest)
    assert "200 application/mercurial-0.2 zstd" in v1_log(server, "getbundle")
    assert summary(dest) == expected_clone(src)
    rb.verify(dest)


@pytest.mark.parametrize(
    "server_engines, engine",
    [("zlib,zstd", "zlib"), ("none", "none"), ("zstd,none", "zstd")],
)
def test_clone_follows_server_engine_order(
    tmp_path: Path, server_engines: str, engine: str
) -> None:
    """The server's engine order decides among those a real client offers.

    (hg 7.2.4's HTTP peer always offers every engine it has, ``zstd,zlib,none,bzip2``:
    ``experimental.clientcompressionengines`` does not reach its X-HgProto header, so
    client-side lists are exercised with raw requests below.)
    """
    src = rb.make_linear_repo(tmp_path / "src", commits=3)
    with running_server(tmp_path, "--repo", f"r={src}", "--compression", server_engines) as server:
        _, _, caps = raw(server.url("r") + "?cmd=capabilities")
        assert b"compression=" + server_engines.encode() in caps.split()
        dest = tmp_path / "c"
        rb.hg("clone", "-U", server.url("r"), dest)
        assert v1_log(server, "getbundle") == [f"200 application/mercurial-0.2 {engine}"]
    assert summary(dest) == expected_clone(src)
    rb.verify(dest)


def getbundle_args(heads: str) -> str:
    """getbundle arguments asking for a bundle2 with a changegroup, as a client does."""
    caps = "HG20,bundle2=" + urllib.parse.quote("HG20\nchangegroup=01,02")
    return urllib.parse.urlencode({"bundlecaps": caps, "cg": "1", "common": ZERO, "heads": heads})


def _getbundle_headers(proto: str | None, heads: str) -> dict[str, str]:
    headers = {"X-HgArg-1": getbundle_args(heads)}
    if proto is not None:
        headers["X-HgProto-1"] = proto
    return headers


@pytest.mark.parametrize(
    "proto, media, engine",
    [
        ("0.1 0.2 comp=zstd,zlib,none partial-pull", "application/mercurial-0.2", "zstd"),
        ("0.1 0.2 comp=zlib,zstd", "application/mercurial-0.2", "zstd"),
        ("0.1 0.2 comp=none", "application/mercurial-0.1", "zlib"),
        ("0.1", "application/mercurial-0.1", "zlib"),
        (None, "application/mercurial-0.1", "zlib"),
    ],
)
def test_raw_getbundle_negotiation(
    shared: tuple[RunningServer, Path], proto: str | None, media: str, engine: str
) -> None:
    """Media type and engine on the wire follow the server's order and the 0.1 fallback."""
    server, src = shared
    heads = " ".join(rb.log_nodes(src, "heads(not secret())"))
    status, headers, body = raw(
        server.url("rich") + "?cmd=getbundle", _getbundle_headers(proto, heads)
    )
    assert status == 200
    assert headers["Content-Type"] == media
    if media.endswith("0.2"):
        assert body[0] == len(engine) and body[1 : 1 + len(engine)] == engine.encode()
        body = body[1 + len(engine) :]
    if engine == "zstd":
        data = zstandard.ZstdDecompressor().decompressobj().decompress(body)
    else:
        data = zlib.decompress(body)
    assert data.startswith(b"HG20") and b"CHANGEGROUP" in data.upper()
    assert len(data) > 2000  # the whole history, not an empty bundle


def test_capabilities_and_batch(shared: tuple[RunningServer, Path]) -> None:
    """The HTTP capabilities and a batch as the real client sends it."""
    server, src = shared
    status, headers, caps = raw(server.url("rich") + "?cmd=capabilities")
    assert status == 200 and headers["Content-Type"] == "application/mercurial-0.1"
    words = caps.split()
    for cap in (b"batch", b"httpheader=1024", b"httpmediatype=0.1rx,0.1tx,0.2tx"):
        assert cap in words
    assert b"compression=zstd,zlib" in words
    assert any(w.startswith(b"bundle2=") for w in words)
    status, _, body = raw(
        server.url("rich") + "?cmd=batch",
        {"X-HgArg-1": "cmds=heads+%3Bknown+nodes%3D%3Blookup+key%3Dtip"},
    )
    assert status == 200
    heads, known, lookup = body.split(b";")
    assert sorted(heads.split()) == sorted(
        n.encode() for n in rb.log_nodes(src, "heads(not secret())")
    )
    assert known == b""
    # tip of the served view: the secret changeset is not visible
    assert lookup == b"1 " + rb.log_nodes(src, "max(not secret())")[0].encode() + b"\n"


def test_clone_stream(tmp_path: Path) -> None:
    """``clone --stream`` goes through getbundle stream=1 and gives the same repository."""
    src = rb.make_linear_repo(tmp_path / "src", commits=4)
    with running_server(tmp_path, "--repo", f"r={src}") as server:
        dest = tmp_path / "c"
        out = rb.hg("clone", "-U", "--stream", server.url("r"), dest).stdout
        assert b"streaming all changes" in out
    assert summary(dest) == expected_clone(src)
    rb.verify(dest)


def test_clone_non_publishing_keeps_drafts(tmp_path: Path, rich_repo: Path) -> None:
    """Drafts stay draft when the source does not publish; secret never travels."""
    (rich_repo / ".hg" / "hgrc").write_text("[phases]\npublish = False\n", encoding="utf-8")
    with running_server(tmp_path, "--repo", f"r={rich_repo}") as server:
        dest = tmp_path / "c"
        rb.hg("clone", "-U", server.url("r"), dest)
    assert summary(dest) == expected_clone(rich_repo, publishing=False)
    assert "draft" in str(summary(dest)["phases"])
    rb.verify(dest)


# --------------------------------------------------------------------------- pull, incoming


def test_pull_incoming_outgoing(tmp_path: Path) -> None:
    """incoming sees new commits, pull brings them, outgoing sees local ones."""
    src = rb.make_linear_repo(tmp_path / "src", commits=3)
    with running_server(tmp_path, "--repo", f"r={src}") as server:
        dest = tmp_path / "c"
        rb.hg("clone", "-q", server.url("r"), dest)
        assert rb.hg("incoming", server.url("r"), cwd=dest, check=False).returncode == 1
        commit(src, "new.txt", b"new\n")
        commit(src, "new2.txt", b"new2\n")
        rb.hg("bookmark", "-r", "tip", "feature", cwd=src)
        out = rb.hg("incoming", "-T", "{node}\n", server.url("r"), cwd=dest).stdout.decode()
        assert set(out.split()) >= set(rb.log_nodes(src, "-2:"))
        rb.hg("pull", "-q", server.url("r"), cwd=dest)
        assert summary(dest) == expected_clone(src)
        commit(dest, "local.txt", b"local\n")
        out = rb.hg("outgoing", "-T", "{desc}\n", server.url("r"), cwd=dest).stdout.decode()
        assert "change local.txt" in out
    rb.verify(dest)


# --------------------------------------------------------------------------- push


def test_push_with_login(tmp_path: Path) -> None:
    """A logged-in writer pushes over HTTP (allowed); the server has the changesets."""
    src = rb.make_linear_repo(tmp_path / "src", commits=2)
    access = write_access(tmp_path / "access.toml", write="alice")
    with running_server(
        tmp_path, "--repo", f"r={src}", "--access", str(access), "--allow-push-over-http"
    ) as server:
        dest = tmp_path / "c"
        rb.hg("clone", "-q", server.url("r"), dest)
        commit(dest, "pushed.txt", b"pushed\n")
        rb.hg("bookmark", "pushed-bm", cwd=dest)
        url = server.url("r").replace("http://", "http://alice:secret@")
        out = rb.hg("push", "-B", "pushed-bm", url, cwd=dest).stdout.decode()
        assert "added 1 changesets" in out
        # urllib sends the credentials after a 401 challenge
        assert v1_log(server, "unbundle")[-1] == "200 application/mercurial-0.1 none"
        assert rb.log_nodes(src) == rb.log_nodes(dest)
        assert "pushed-bm" in rb.hg_out("bookmarks", cwd=src)
        # pull back into a fresh clone sees it too
        again = tmp_path / "again"
        rb.hg("clone", "-U", server.url("r"), again)
        assert summary(again) == summary(dest) | {"bookmarks": summary(again)["bookmarks"]}
    rb.verify(src)


def _push_refused(tmp_path: Path, args: list[str], url_user: str = "") -> tuple[str, str]:
    src = rb.make_linear_repo(tmp_path / "src", commits=2)
    before = rb.repo_summary(src)
    with running_server(tmp_path, "--repo", f"r={src}", *args) as server:
        dest = tmp_path / "c"
        rb.hg("clone", "-q", server.url("r"), dest)
        commit(dest, "refused.txt", b"refused\n")
        url = server.url("r").replace("http://", f"http://{url_user}")
        proc = rb.hg("push", url, cwd=dest, check=False)
        log = server.log()
    assert proc.returncode not in (0, 1)
    assert rb.repo_summary(src) == before
    assert not (src / ".hg" / "store" / "lock").exists()
    rb.verify(src)
    return proc.stderr.decode() + proc.stdout.decode(), log


def test_anonymous_push_refused_without_access_file(tmp_path: Path) -> None:
    """No access file: anonymous read-only; a push is refused and the repo unchanged."""
    out, log = _push_refused(tmp_path, ["--allow-push-over-http"])
    # 403, not 401: nobody could log in to push here, so asking for a login would mislead.
    assert "push not authorized" in out and "authorization required" not in out
    assert "unbundle" not in log or "v1 r unbundle 200" not in log


def test_push_over_plain_http_refused(tmp_path: Path) -> None:
    """Without --allow-push-over-http, pushing over plain HTTP is 403 'ssl required'."""
    access = write_access(tmp_path / "access.toml", write="anonymous")
    out, _ = _push_refused(tmp_path, ["--access", str(access)])
    assert "ssl required" in out


def test_push_too_large_refused(tmp_path: Path) -> None:
    """A push over --max-push-bytes is refused with 413 and changes nothing."""
    access = write_access(tmp_path / "access.toml", write="anonymous")
    out, _ = _push_refused(
        tmp_path, ["--access", str(access), "--allow-push-over-http", "--max-push-bytes", "100"]
    )
    assert "413" in out


# --------------------------------------------------------------------------- refusals


def test_refusals(shared: tuple[RunningServer, Path]) -> None:
    """Unknown repository, unknown command, GET unbundle, bad X-HgArg, sub-path command."""
    server, src = shared
    before = rb.repo_summary(src)
    status, _, body = raw(server.http_url + "/nosuch?cmd=capabilities")
    assert status == 404 and b"nosuch" in body
    status, _, body = raw(server.url("rich") + "?cmd=nosuchcommand")
    assert status == 400 and b"no such method" in body
    status, headers, body = raw(server.url("rich") + "?cmd=unbundle", {"X-HgArg-1": "heads=x"})
    assert status == 405 and body == b"0\npush requires POST request\n"
    assert headers.get("Allow") == "POST"
    status, _, body = raw(server.url("rich") + "?cmd=lookup", {"X-HgArg-1": "key=%zz"})
    assert status == 400 and b"bad percent escape" in body
    status, _, body = raw(server.url("rich") + "?cmd=lookup", {"X-HgArgs-Post": "nan"})
    assert status == 400
    status, _, body = raw(server.url("rich") + "?cmd=lookup")
    assert status == 200 and b"missing argument" in body
    status, headers, body = raw(server.url("rich") + "/sub?cmd=heads")
    assert status == 404 and body == b"0\nNot Found\n"
    status, headers, body = raw(
        server.url("rich") + "?cmd=batch", {"X-HgArg-1": "cmds=pushkey+namespace%3Dx"}
    )
    assert status in (401, 403, 405), (status, body)
    status, headers, body = raw(server.url("rich") + "?cmd=batch", {"X-HgArg-1": "cmds=getbundle+"})
    assert status == 200 and headers["Content-Type"] == "application/hg-error"
    assert rb.repo_summary(src) == before


def test_client_disconnect_frees_the_worker(tmp_path: Path) -> None:
    """A client that stops reading a big bundle and hangs up does not hold the only worker."""
    src = rb.init_repo(tmp_path / "src")
    (src / "big.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    rb.hg("commit", "-A", "-q", "-m", "big", cwd=src)
    with running_server(tmp_path, "--repo", f"r={src}", "--workers", "1") as server:
        heads = rb.log_nodes(src, "tip")[0]
        args = getbundle_args(heads)
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
            sock.sendall(
                b"GET /r?cmd=getbundle HTTP/1.1\r\nHost: x\r\n"
                b"X-HgProto-1: 0.1 0.2 comp=zstd\r\n"
                b"X-HgArg-1: " + args.encode() + b"\r\n\r\n"
            )
            got = 0
            while got < 256 * 1024:  # the response is flowing; stop reading and hang up
                got += len(sock.recv(65536))
        dest = tmp_path / "c"
        rb.hg("clone", "-U", server.url("r"), dest, timeout=60)
        assert "Traceback" not in server.log()
    assert summary(dest) == expected_clone(src)
    shutil.rmtree(dest)
