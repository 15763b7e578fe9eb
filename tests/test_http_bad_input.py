"""Bad client input gets a protocol error naming the argument, never an HTTP 500.

Each probe of the security review is sent to the real service over HTTP (v1 with raw
requests, pushes as a logged-in writer; v2 as frames): the answer is 200 with an error
naming the argument (v1 ``application/hg-error``, v2 a command error), and the server
log holds no ``critical`` line — an anonymous client must not be able to fill the log
with tracebacks. ``get_cached_bundle_inline`` gives one answer for every path that is
not a bundle of the repository's clone-bundle store, and serves the ones that are.
"""

from __future__ import annotations

import base64
import os
import shutil
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from mercurial import util

from hgwire_tw.core.reactor import ClientFrameReactor
from tests import repobuilders as rb
from tests.servers import RunningServer, running_server
from tests.test_clonebundles import ON_DEMAND, bundle_for_heads
from tests.test_http_v1_integration import raw, write_access
from tests.test_http_v2_integration import post_frames
from tests.test_ssh_integration import _answers, _call_all

CAPS = "HG20,bundle2=" + urllib.parse.quote("HG20\nchangegroup=01,02")
ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, rich_repo_template: Path
) -> Iterator[tuple[RunningServer, Path]]:
    tmp = tmp_path_factory.mktemp("badinput")
    repo = tmp / "r"
    shutil.copytree(rich_repo_template, repo, symlinks=True)
    access = write_access(tmp / "access.toml", write="alice")
    args = ("--repo", f"r={repo}", "--access", str(access), "--allow-push-over-http")
    with running_server(tmp, *args, *ON_DEMAND) as server:
        yield server, repo


def v1(
    server: RunningServer,
    cmd: str,
    args: dict[str, str],
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:
    """A v1 command with its arguments in the POST body (X-HgArgs-Post), as hg sends
    big ones; ``body`` follows them as the payload."""
    encoded = urllib.parse.urlencode(args).encode()
    status, got, data = raw(
        f"{server.url('r')}?cmd={cmd}",
        {"X-HgArgs-Post": str(len(encoded)), **(headers or {})},
        method="POST",
        data=encoded + body,
    )
    return status, got.get("Content-Type", ""), data


def v2(server: RunningServer, name: bytes, args: dict[bytes, object]) -> object:
    client = ClientFrameReactor(encodings=(b"identity",))
    body, ids = _call_all(client, [(name, args)])
    status, _, data = post_frames(server, f"r/api/exp-http-v2-0003/ro/{name.decode()}", body)
    assert status == 200
    return _answers(client, data, ids)[ids[0]]


def test_bad_v1_arguments_are_errors_naming_them(served: tuple[RunningServer, Path]) -> None:
    """getbundle heads=zz / 41 hex digits / 100k bundlecaps / includepats=../..,
    changegroupsubset with 5,000 random bases, unbundle heads=zz and a garbage HG10GZ
    bundle: each a 200 hg-error naming the argument; bundle1 without bundlecaps works."""
    server, repo = served
    head = rb.log_nodes(repo, "max(not secret())")[0]
    random_bases = " ".join(os.urandom(20).hex() for _ in range(5000))
    cases = [
        ("getbundle", {"bundlecaps": CAPS, "heads": "zz"}, b"heads"),
        ("getbundle", {"bundlecaps": CAPS, "heads": head + "a"}, b"heads"),
        (
            "getbundle",
            {"heads": head, "bundlecaps": ",".join(f"c{i}" for i in range(100_000))},
            b"bundlecaps",
        ),
        (
            "getbundle",
            {"bundlecaps": CAPS, "heads": head, "includepats": "path:../../etc"},
            b"includepats",
        ),
        ("changegroupsubset", {"bases": random_bases, "heads": head}, b"bases"),
    ]
    for cmd, args, named in cases:
        status, media, body = v1(server, cmd, args)
        assert (status, media) == (200, "application/hg-error"), (cmd, named, body)
        assert b"argument " + named in body, body
    status, media, body = v1(server, "getbundle", {"heads": head})  # bundle1, no bundlecaps
    assert status == 200 and media.startswith("application/mercurial-0.")
    assert b"def f():" in zlib.decompress(body)  # a raw changegroup with src/util.py
    before = rb.repo_summary(repo)
    pushes = [
        ({"heads": "zz"}, b"HG10UN", b"argument heads"),
        ({"heads": "666f726365"}, b"HG10GZ" + os.urandom(2000), b"invalid push bundle"),
        ({"heads": "666f726365"}, b"HG10BZ" + os.urandom(2000), b"invalid push bundle"),
    ]
    for args, payload, named in pushes:
        status, media, body = v1(server, "unbundle", args, body=payload, headers=ALICE)
        assert (status, media) == (200, "application/hg-error") and named in body, body
    assert rb.repo_summary(repo) == before
    assert "critical" not in server.log()


def test_bad_v2_arguments_are_command_errors(served: tuple[RunningServer, Path]) -> None:
    """manifestdata tree=../.. (an AssertionError upstream), an ambiguous lookup, a
    200 KB path and a 200 KB path filter: command errors naming them."""
    server, repo = served
    manifest = bytes.fromhex(rb.hg_out("log", "-r", "0", "-T", "{manifest.node}", cwd=repo))
    long_path = b"a/" * 100_000
    cases: list[tuple[bytes, dict[bytes, object], bytes]] = [
        (b"manifestdata", {b"tree": b"../..", b"nodes": [manifest], b"fields": set()}, b"tree"),
        (b"lookup", {b"key": b"a"}, b"ambiguous identifier"),
        (b"filedata", {b"path": long_path, b"nodes": [b"\1" * 20], b"fields": set()}, b"path"),
        (
            b"filesdata",
            {
                b"revisions": [{b"type": b"changesetexplicit", b"nodes": []}],
                b"pathfilter": {b"include": [b"path:" + long_path]},
                b"fields": set(),
            },
            b"pathfilter",
        ),
    ]
    for name, args, named in cases:
        answer = v2(server, name, args)
        assert isinstance(answer, tuple) and answer[0] == "error", (name, answer)
        message = answer[1] % tuple(answer[2]) if answer[2] else answer[1]
        assert named in message, (name, message)
    assert "critical" not in server.log()


def test_inline_clone_bundles_only_from_the_store(served: tuple[RunningServer, Path]) -> None:
    """Any path but a bundle of this repository's store — /etc/shadow, ../, a missing
    file — gets one identical answer; the store's bundle itself is served inline."""
    server, repo = served
    raw(f"{server.url('r')}?cmd=capabilities")  # asks for an on-demand bundle
    blob = bundle_for_heads(server, repo)
    answers = {
        path: v1(server, "get_cached_bundle_inline", {"path": path})
        for path in (
            "/etc/shadow",
            "../../../../etc/passwd",
            "nothing.hg",
            "../" + blob,
            "0" * 64 + ".hg",
        )
    }
    assert len(set(answers.values())) == 1, answers
    status, media, body = next(iter(answers.values()))
    assert (status, media) == (200, "application/hg-error")
    status, media, body = v1(server, "get_cached_bundle_inline", {"path": blob})
    assert status == 200 and media == "application/mercurial-0.1"
    data = zlib.decompress(body)
    size = (server.state_dir / "blobs" / blob).stat().st_size
    prefix = util.uvarintencode(size)
    assert data.startswith(prefix + b"HG20") and len(data) == len(prefix) + size
