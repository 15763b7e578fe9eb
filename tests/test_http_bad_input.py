"""Bad client input gets a protocol error naming the argument, never an HTTP 500.

Each probe of the security review is sent to the real service over HTTP (v1 with raw
requests, pushes as a logged-in writer; v2 as frames) and, for v2, over raw TCP on one
connection that stays usable: the answer is 200 with an error naming the argument (v1
``application/hg-error``, v2 a command error). Each answer is one ``info`` line in the
server log naming the command and what was wrong, and the log holds no ``critical``
line and no traceback — an anonymous client must neither fill the log with tracebacks
nor go unrecorded. ``get_cached_bundle_inline`` gives one answer for every path that is
not a bundle of the repository's clone-bundle store, and serves the ones that are.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from mercurial import util

from hgwire_tw.core.preamble import encode_ok, encode_request
from hgwire_tw.core.reactor import (
    ClientFrameReactor,
    ProtocolFailure,
    ResponseError,
    ResponseFinished,
    ResponseObjects,
)
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
    args += ("--tcp", "tcp:0:interface=127.0.0.1")
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


class LogWatch:
    """The server log lines written since the last ``new()``."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.seen = len(server.log())

    def new(self) -> list[str]:
        text = self.server.log()
        lines, self.seen = text[self.seen :].splitlines(), len(text)
        return lines


def assert_one_bad_input_line(lines: list[str], prefix: str, named: bytes) -> None:
    """Exactly one line about this bad input, at info (or warn), naming the command
    (``prefix``) and the argument; nothing critical, no traceback."""
    about = [line for line in lines if f"] {prefix}" in line and "bad input" in line]
    assert len(about) == 1, (prefix, named, lines)
    assert "#info]" in about[0] or "#warn]" in about[0], about[0]
    assert named.decode() in about[0], about[0]
    assert not any("#critical]" in line or "#error]" in line for line in lines), lines
    assert not any("Traceback" in line for line in lines), lines


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
    watch = LogWatch(server)
    for cmd, args, named in cases:
        status, media, body = v1(server, cmd, args)
        assert (status, media) == (200, "application/hg-error"), (cmd, named, body)
        assert b"argument " + named in body, body
        assert_one_bad_input_line(watch.new(), f"v1 r {cmd} from 127.0.0.1", named)
    status, media, body = v1(server, "getbundle", {"heads": head})  # bundle1, no bundlecaps
    assert status == 200 and media.startswith("application/mercurial-0.")
    assert b"def f():" in zlib.decompress(body)  # a raw changegroup with src/util.py
    before = rb.repo_summary(repo)
    pushes = [
        ({"heads": "zz"}, b"HG10UN", b"argument heads"),
        ({"heads": "666f726365"}, b"HG10GZ" + os.urandom(2000), b"invalid push bundle"),
        ({"heads": "666f726365"}, b"HG10BZ" + os.urandom(2000), b"invalid push bundle"),
    ]
    watch.new()
    for args, payload, named in pushes:
        status, media, body = v1(server, "unbundle", args, body=payload, headers=ALICE)
        assert (status, media) == (200, "application/hg-error") and named in body, body
        assert_one_bad_input_line(watch.new(), "v1 r unbundle from 127.0.0.1", named)
    assert rb.repo_summary(repo) == before
    assert "critical" not in server.log() and "Traceback" not in server.log()


def test_bad_pushkeys_are_errors_naming_them(served: tuple[RunningServer, Path]) -> None:
    """pushkey by a writer with a bookmark target that is no node (a ProgrammingError
    upstream), a phase that is no number, a secret changeset's phase, a bookmark name
    with a newline, empty obsolescence data: over v1 and over the v2 HTTP API an error
    naming the argument, one info line, nothing changed."""
    server, repo = served
    secret = rb.log_nodes(repo, "secret()")[0]
    public = rb.log_nodes(repo, "max(public())")[0]
    cases = [
        ({"namespace": "bookmarks", "key": "fz", "old": "", "new": "\xc2\xc2F"}, b"new"),
        ({"namespace": "bookmarks", "key": "a\nb", "old": "", "new": public}, b"key"),
        ({"namespace": "phases", "key": public, "old": "x", "new": "0"}, b"old"),
        ({"namespace": "phases", "key": secret, "old": "2", "new": "0"}, b"key"),
        ({"namespace": "obsolete", "key": "dump0", "old": "", "new": ""}, b"new"),
    ]
    before = rb.repo_summary(repo)
    watch = LogWatch(server)
    for args, named in cases:
        status, media, body = v1(server, "pushkey", args, headers=ALICE)
        assert (status, media) == (200, "application/hg-error"), (args, body)
        assert b"invalid argument " + named in body or b"argument " + named in body, body
        assert_one_bad_input_line(watch.new(), "v1 r pushkey from 127.0.0.1", named)
        if secret in args.values():  # the same words as for a node that never existed
            unknown = {**args, "key": "1" * 40}
            _, _, other = v1(server, "pushkey", unknown, headers=ALICE)
            assert body.replace(secret.encode(), b"1" * 40) == other, (body, other)
            watch.new()

        client = ClientFrameReactor(encodings=(b"identity",))
        frames, ids = _call_all(
            client, [(b"pushkey", {k.encode(): v.encode() for k, v in args.items()})]
        )
        status, _, data = post_frames(
            server, "r/api/exp-http-v2-0003/rw/pushkey", frames, headers=ALICE
        )
        assert status == 200
        answer = _answers(client, data, ids)[ids[0]]
        assert isinstance(answer, tuple) and answer[0] == "error", (args, answer)
        assert b"argument " + named in answer[1] % tuple(answer[2]), answer
        assert_one_bad_input_line(watch.new(), "v2 r pushkey:", named)
    assert rb.repo_summary(repo) == before


def v2_cases(repo: Path) -> list[tuple[bytes, dict[bytes, object], bytes]]:
    """manifestdata tree=../.. (an AssertionError upstream), an ambiguous lookup, a
    200 KB path and a 200 KB path filter, with the words the error must contain."""
    manifest = bytes.fromhex(rb.hg_out("log", "-r", "0", "-T", "{manifest.node}", cwd=repo))
    long_path = b"a/" * 100_000
    return [
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


def test_bad_v2_arguments_are_command_errors(served: tuple[RunningServer, Path]) -> None:
    """Over HTTP: command errors naming them, one info line each in the log."""
    server, repo = served
    watch = LogWatch(server)
    for name, args, named in v2_cases(repo):
        answer = v2(server, name, args)
        assert isinstance(answer, tuple) and answer[0] == "error", (name, answer)
        message = answer[1] % tuple(answer[2]) if answer[2] else answer[1]
        assert named in message, (name, message)
        assert_one_bad_input_line(watch.new(), f"v2 r {name.decode()}:", named)
    assert "critical" not in server.log() and "Traceback" not in server.log()


class TCPSession:
    """One raw TCP v2 connection (``hgwire-v2 r``), commands sent one at a time."""

    def __init__(self, server: RunningServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.ports["tcp"][0]), timeout=30)
        self.sock.sendall(encode_request("r"))
        self.client = ClientFrameReactor(encodings=(b"identity",))
        ok = encode_ok()
        head = b""
        while len(head) < len(ok):
            chunk = self.sock.recv(len(ok) - len(head))
            assert chunk, head
            head += chunk
        assert head == ok

    def call(self, name: bytes, args: dict[bytes, object]) -> object:
        """The objects of the answer, ``("error", message, args)``, or ``("closed",
        message)`` when the server ended the connection (cleanly, with a reason)."""
        request_id, actions = self.client.call_command(name, args)
        self.sock.sendall(b"".join(a.data for a in actions))  # type: ignore[attr-defined]
        objects: list[object] = []
        while True:
            data = self.sock.recv(65536)
            events = self.client.receive_data(data) if data else self.client.end_of_input()
            for event in events:
                if isinstance(event, ResponseObjects) and event.request_id == request_id:
                    objects.extend(event.objects)
                elif isinstance(event, ResponseFinished) and event.request_id == request_id:
                    return objects
                elif isinstance(event, ResponseError) and event.request_id == request_id:
                    return ("error", event.message, event.args)
                elif isinstance(event, ProtocolFailure):
                    return ("closed", event.message)
            if not data:
                return ("closed", "end of input")


def test_bad_v2_arguments_over_raw_tcp(served: tuple[RunningServer, Path]) -> None:
    """The same probes on one raw TCP connection: each a command error naming the
    argument, one info line each; the connection then still answers ``heads``."""
    server, repo = served
    watch = LogWatch(server)
    session = TCPSession(server)
    try:
        for name, args, named in v2_cases(repo):
            answer = session.call(name, args)
            assert isinstance(answer, tuple) and answer[0] == "error", (name, answer)
            message = answer[1] % tuple(answer[2]) if answer[2] else answer[1]
            assert named in message, (name, message)
            assert_one_bad_input_line(watch.new(), f"v2 r {name.decode()}:", named)
        heads = session.call(b"heads", {})
        want = {bytes.fromhex(n) for n in rb.log_nodes(repo, "heads(not secret())")}
        assert isinstance(heads, list) and set(heads[0]) == want, heads
    finally:
        session.sock.close()
    assert "critical" not in server.log() and "Traceback" not in server.log()


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
