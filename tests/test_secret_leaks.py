"""Secret changesets are indistinguishable from changesets that do not exist.

One server serves ``pub`` (the rich repository with its working directory on a secret
changeset, a second secret head and a bookmark on a secret changeset) and ``oracle``
(``hg clone --pull`` of it: the same served changesets, same revision numbers, no secret
ones at all). Every probe of a secret changeset — by ``.``, full node, hash prefix,
revision number, bookmark, manifest node, file node or file name — must get byte for
byte the answer the oracle gives, over v1 (real ``hg identify`` over HTTP and OpenSSH,
raw v1 requests over HTTP and SSH) and v2 (HTTP, raw TCP, the SSH subsystem).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mercurial import hg as hgmod

from hgwire_tw.core.preamble import encode_ok, encode_request
from hgwire_tw.core.reactor import ClientFrameReactor
from hgwire_tw.repo.ui import make_ui
from tests.clientsites import TCP_LISTEN
from tests.repobuilders import hg, hg_env
from tests.servers import RunningServer, running_server
from tests.sshclient import SSH_KEYGEN, SSH_LISTEN, keygen, write_key_access
from tests.test_http_v1_integration import raw
from tests.test_http_v2_integration import post_frames
from tests.test_ssh_integration import SSH, _answers, _call_all

pytestmark = pytest.mark.skipif(not os.path.exists(SSH_KEYGEN), reason="no ssh-keygen")

HEX = "0123456789abcdef"


@dataclass
class LeakSite:
    """The server, alice's key, and what the probes ask about."""

    server: RunningServer
    key: Path
    secret: str  # the working directory's parent, secret
    served: list[str]
    secret_manifest: bytes
    secret_filenode: bytes
    shared_prefix: str  # a prefix of the secret node that exactly one served node has

    def ssh(self) -> list[str]:
        return [
            SSH,
            *("-i", str(self.key), "-F", "/dev/null", "-o", "IdentitiesOnly=yes"),
            *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
            *("-o", "BatchMode=yes", "-o", "LogLevel=ERROR"),
            *("-p", str(self.server.ports["ssh"][0])),
        ]


def _shared_prefix(secret: str, served: list[str]) -> str:
    for length in range(1, 12):
        prefix = secret[:length]
        if prefix.isdigit() or ("f" * 40).startswith(prefix):
            continue  # a revision number, or ambiguous with the working directory
        if sum(n.startswith(prefix) for n in served) == 1:
            return prefix
    raise AssertionError("no prefix shared by the secret node and one served node")


def _grow(repo_path: Path, parent: bytes, name: bytes, count: int, date: int) -> None:
    """``count`` changesets on top of revset ``parent``, each rewriting file ``name``
    (in-process: one hg command per changeset would take seconds)."""
    from mercurial import context

    repo = hgmod.repository(make_ui(), bytes(repo_path))
    with repo.wlock(), repo.lock():
        node = repo[repo.revs(parent).last()].node()
        for i in range(count):
            ctx = context.memctx(
                repo,
                (node, repo.nullid),
                b"more %s %d" % (name, i),
                [name],
                lambda repo_, mctx, path, i=i: context.memfilectx(
                    repo, mctx, path, b"%s %d\n" % (name, i)
                ),
                user=b"test <test@example.com>",
                date=(date + i, 0),
            )
            node = ctx.commit()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, rich_repo_template: Path) -> Iterator[LeakSite]:
    tmp = tmp_path_factory.mktemp("leaks")
    pub = tmp / "pub"
    shutil.copytree(rich_repo_template, pub, symlinks=True)
    # More public and secret changesets (fixed dates: the same nodes every run), so that
    # a secret one shares a hash prefix with exactly one served node.
    _grow(pub, b"draft()", b"draft.txt", 16, 1_600_000_050)
    _grow(pub, b"max(secret())", b"secret.txt", 12, 1_600_000_100)
    hg("update", "-q", "-r", "max(secret())", cwd=pub)
    hg("phase", "--force", "--secret", "-r", "secret()", cwd=pub)
    hg("bookmark", "-r", ".", "hidden-bm", cwd=pub)
    oracle = tmp / "oracle"
    hg("clone", "-q", "-U", "--pull", pub, oracle)
    repo = hgmod.repository(make_ui(), bytes(pub))
    served = [repo[r].hex().decode() for r in repo.revs(b"not secret()")]
    shared = {}
    for rev in repo.revs(b"secret()"):
        try:
            shared[rev] = _shared_prefix(repo[rev].hex().decode(), served)
        except AssertionError:
            continue
    probe = repo[min(shared)]
    wd = repo[b"."]
    assert wd.phasestr() == b"secret"
    key = keygen(tmp / "alice")
    access = write_key_access(tmp / "access.toml", {"alice": [key]}, '"*", "anonymous"')
    with running_server(
        tmp,
        *("--repo", f"pub={pub}", "--repo", f"oracle={oracle}"),
        *TCP_LISTEN,
        *SSH_LISTEN,
        *("--access", str(access)),
    ) as server:
        yield LeakSite(
            server=server,
            key=key,
            secret=wd.hex().decode(),
            served=served,
            secret_manifest=probe.manifestnode(),
            secret_filenode=wd.filenode(b"secret.txt"),
            shared_prefix=shared[probe.rev()],
        )


def _keys(site: LeakSite) -> list[str]:
    secret = site.secret
    return [
        secret,  # the full node
        secret[:6],  # a prefix only a secret node has
        site.shared_prefix,  # shared with one served node: must resolve to it
        "x" + site.shared_prefix,
        "hidden-bm",  # a bookmark on a secret changeset
        "",  # the empty prefix: ambiguous, as everywhere (it once raised: a 500)
    ]


#: Keys compared with a key naming nothing ("~") instead of with the oracle: the
#: oracle's "." is its null working directory, and its revision numbers are the served
#: ones renumbered (revision 10 is secret here).
NOTHING_LIKE = (".", "10")


def _nothing(key: str) -> str:
    """A key of the same length as ``key`` that names nothing."""
    return "~" * len(key)


def _like_nothing(answer: bytes, key: str) -> bytes:
    return answer.replace(f"'{_nothing(key)}'".encode(), f"'{key}'".encode())


# -- v1 ---------------------------------------------------------------------------------


def _identify(site: LeakSite, url: str, key: str) -> bytes:
    # --debug prints the full node; its transport chatter names the URL and byte counts
    proc = hg("identify", "--debug", "-r", key, url, "--ssh", " ".join(site.ssh()), check=False)
    chatter = (b"using ", b"sending ", b"(sent ", b"running ", b"protocol caps", b"remote: ")
    lines = [
        line for line in (proc.stdout + proc.stderr).splitlines() if not line.startswith(chatter)
    ]
    return b"%d\n%s" % (proc.returncode, b"\n".join(lines))


def test_hg_identify_over_http_and_ssh_never_names_a_secret_changeset(site: LeakSite) -> None:
    """Real hg resolves every key exactly as against the oracle, over HTTP and SSH."""
    port = site.server.ports["ssh"][0]
    ssh = f"ssh://alice@127.0.0.1:{port}"
    for base, keys in ((site.server.http_url, _keys(site)), (ssh, [site.shared_prefix])):
        # (over SSH hg takes the same lookup path: a few keys, the raw test does them all)
        for key in keys:
            ours = _identify(site, f"{base}/pub", key)
            assert site.secret in key or site.secret.encode() not in ours
            assert ours == _identify(site, f"{base}/oracle", key), (base, key)
        for key in NOTHING_LIKE:
            nothing = _identify(site, f"{base}/pub", _nothing(key))
            assert _identify(site, f"{base}/pub", key) == _like_nothing(nothing, key), (base, key)
    # the shared prefix names the one served changeset, as if the secret did not exist
    out = _identify(site, f"{site.server.http_url}/pub", site.shared_prefix)
    assert out.startswith(b"0\n") and any(n.encode() in out for n in site.served)


def _v1_requests(site: LeakSite) -> list[tuple[str, dict[str, str]]]:
    secret, public = site.secret, site.served[-1]
    null = "0" * 40
    caps = "HG20,bundle2=" + urllib.parse.quote("HG20\nchangegroup=01,02")
    out = [("lookup", {"key": k}) for k in _keys(site)]
    out += [
        ("branches", {"nodes": secret}),
        ("between", {"pairs": f"{secret}-{null}"}),
        ("known", {"nodes": f"{secret} {public}"}),
        ("getbundle", {"bundlecaps": caps, "heads": secret, "common": null}),
        ("changegroupsubset", {"bases": secret, "heads": public}),
        ("batch", {"cmds": "lookup key=hidden-bm;lookup key=" + secret[:6]}),
    ]
    return out


def _http_v1(site: LeakSite, repo: str, cmd: str, args: dict[str, str]) -> bytes:
    query = urllib.parse.urlencode(args)
    status, headers, body = raw(f"{site.server.http_url}/{repo}?cmd={cmd}&{query}")
    return b"%d %s\n%s" % (status, headers.get("Content-Type", "").encode(), body)


#: v1 commands whose spec ends in ``*`` (the named arguments first, then ``* N`` pairs).
_STAR = {"known": ("nodes",), "getbundle": (), "batch": ("cmds",)}


def _ssh_v1(site: LeakSite, repo: str, cmd: str, args: dict[str, str]) -> bytes:
    def pair(name: str, value: str) -> bytes:
        return b"%s %d\n%s" % (name.encode(), len(value), value.encode())

    named = _STAR.get(cmd, tuple(args))
    lines = [cmd.encode() + b"\n"] + [pair(n, args[n]) for n in named]
    if cmd in _STAR:
        rest = [n for n in args if n not in named]
        lines += [b"* %d\n" % len(rest)] + [pair(n, args[n]) for n in rest]
    argv = [*site.ssh(), "-T", "alice@127.0.0.1", f"hg -R {repo} serve --stdio"]
    proc = subprocess.run(
        argv, input=b"".join(lines), capture_output=True, timeout=60, env=hg_env()
    )
    return proc.stdout + b"\n--\n" + proc.stderr


def test_raw_v1_answers_for_secret_nodes_equal_unknown_ones(site: LeakSite) -> None:
    """lookup/branches/between/known/getbundle/changegroupsubset/batch: pub == oracle,
    over HTTP and SSH, and nothing names the secret node except where the client did."""
    for cmd, args in _v1_requests(site):
        for ask in (_http_v1, _ssh_v1):
            ours, theirs = ask(site, "pub", cmd, args), ask(site, "oracle", cmd, args)
            assert ours == theirs, (ask.__name__, cmd, args)
            assert b"filtered" not in ours
    for ask in (_http_v1, _ssh_v1):
        for key in NOTHING_LIKE:
            nothing = ask(site, "pub", "lookup", {"key": _nothing(key)})
            ours = ask(site, "pub", "lookup", {"key": key})
            assert ours == _like_nothing(nothing, key), (ask.__name__, key)
    assert b"critical" not in site.server.log().encode()


# -- v2 ---------------------------------------------------------------------------------


def _v2_commands(site: LeakSite) -> list[tuple[bytes, dict[bytes, object]]]:
    secret = bytes.fromhex(site.secret)
    spec = [{b"type": b"changesetexplicit", b"nodes": [secret]}]
    out: list[tuple[bytes, dict[bytes, object]]] = [
        (b"lookup", {b"key": k.encode()}) for k in _keys(site)
    ]
    out += [
        (
            b"manifestdata",
            {b"tree": b"", b"nodes": [site.secret_manifest], b"fields": {b"revision"}},
        ),
        (b"filedata", {b"path": b"secret.txt", b"nodes": [site.secret_filenode], b"fields": set()}),
        (b"changesetdata", {b"revisions": spec, b"fields": {b"revision"}}),
        (b"filesdata", {b"revisions": spec, b"fields": {b"revision"}}),
        (b"known", {b"nodes": [secret]}),
    ]
    return out


def _v2_http(site: LeakSite, repo: str, commands: list[Any]) -> list[object]:
    client = ClientFrameReactor(encodings=(b"identity",))
    body, ids = _call_all(client, commands)
    status, _, data = post_frames(site.server, f"{repo}/api/exp-http-v2-0003/ro/multirequest", body)
    assert status == 200
    answers = _answers(client, data, ids)
    return [answers[i] for i in ids]


def _v2_stream(site: LeakSite, repo: str, commands: list[Any], transport: str) -> list[object]:
    client = ClientFrameReactor(encodings=(b"identity",))
    frames, ids = _call_all(client, commands)
    request = encode_request(repo) + frames
    if transport == "tcp":
        with socket.create_connection(("127.0.0.1", site.server.ports["tcp"][0]), 30) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            out = b"".join(iter(lambda: s.recv(65536), b""))
    else:
        argv = [*site.ssh(), "-T", "-s", "alice@127.0.0.1", "hgwire"]
        out = subprocess.run(
            argv, input=request, capture_output=True, timeout=60, env=hg_env()
        ).stdout
    assert out.startswith(encode_ok())
    answers = _answers(client, out[len(encode_ok()) :], ids)
    return [answers[i] for i in ids]


@pytest.mark.parametrize("transport", ["http", "tcp", "ssh"])
def test_v2_answers_for_secret_changesets_equal_unknown_ones(
    site: LeakSite, transport: str
) -> None:
    """lookup (., prefixes, numbers, bookmarks), manifestdata/filedata/changesetdata/
    filesdata of secret nodes: the oracle's answers, byte for byte, on every transport."""
    commands = _v2_commands(site)
    if transport == "http":
        ours, theirs = _v2_http(site, "pub", commands), _v2_http(site, "oracle", commands)
    else:
        ours = _v2_stream(site, "pub", commands, transport)
        theirs = _v2_stream(site, "oracle", commands, transport)
    for command, a, b in zip(commands, ours, theirs, strict=True):
        assert a == b, (transport, command[0], command[1])
    ask = _v2_http if transport == "http" else lambda *a: _v2_stream(*a, transport)
    keys = [b"~", *(k.encode() for k in NOTHING_LIKE)]
    nothing, *answers = ask(site, "pub", [(b"lookup", {b"key": k}) for k in keys])
    assert nothing == ("error", b"unknown revision '%s'", (b"~",))
    for key, answer in zip(NOTHING_LIKE, answers, strict=True):
        assert answer == ("error", b"unknown revision '%s'", (key.encode(),))
    lookups = ours[: len(_keys(site))]
    assert bytes.fromhex(site.secret) not in repr(lookups).encode()
    assert b"critical" not in site.server.log().encode()
