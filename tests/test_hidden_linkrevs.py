"""Manifest and file revisions whose linkrev points at a hidden changeset.

``hg commit --amend -m`` with evolution on makes a new changeset that reuses the
manifest and file revisions of the one it obsoletes; their linkrevs stay on the now
hidden predecessor. The served changeset still references them, so ``manifestdata``,
``filedata`` and ``filesdata`` must serve them (Mercurial 6.0.3's v2 clone and our own
revision path ask for exactly those nodes), while a node only a secret changeset
references keeps answering exactly like one that does not exist.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hgwire_tw.core.reactor import ClientFrameReactor
from tests.repobuilders import HG_603, hg, hg_out, init_repo, repo_summary, verify
from tests.servers import RunningServer, running_server
from tests.sshclient import run_hgwire
from tests.test_http_v2_integration import post_frames
from tests.test_ssh_integration import _answers, _call_all

pytestmark = pytest.mark.timeout(300)

EVOLUTION = "[experimental]\nevolution = all\n[phases]\npublish = false\n"


@dataclass
class Site:
    server: RunningServer
    src: Path
    ref: Path
    amended: str  # the served changeset made by the amend
    only_file: bytes  # the single revision of "c", linked to the hidden predecessor
    secret_manifest: bytes


def _commit(repo: Path, message: str, *extra: str) -> None:
    hg("commit", "-q", "-A", "-m", message, "-d", "0 0", *extra, cwd=repo)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("linkrevs")
    src = init_repo(tmp / "src")
    with open(src / ".hg" / "hgrc", "a", encoding="utf-8") as f:
        f.write(EVOLUTION)
    (src / "a").write_text("a\n")
    _commit(src, "one")
    (src / "a").write_text("a\nb\n")
    (src / "b").write_text("b\n")
    (src / "c").write_text("only ever in the amended changeset\n")
    _commit(src, "two")
    hg("commit", "-q", "--amend", "-m", "two, reworded", cwd=src)
    amended = hg_out("log", "-r", ".", "-T", "{node}", cwd=src)
    (src / "b").write_text("b\nb\n")
    _commit(src, "three")
    (src / "s").write_text("secret\n")
    _commit(src, "secret", "--secret")
    secret_manifest = hg_out("log", "-r", ".", "-T", '{manifest % "{node}"}', cwd=src)
    only_file = hg_out("debugdata", "-m", secret_manifest, cwd=src)
    c_node = next(line for line in only_file.splitlines() if line.startswith("c\0"))[2:42]
    ref = tmp / "ref"
    hg("clone", "-q", "-U", "--pull", src, ref)
    with running_server(
        tmp, "--repo", f"src={src}", "--tcp", "tcp:0:interface=127.0.0.1"
    ) as server:
        yield Site(server, src, ref, amended, bytes.fromhex(c_node), bytes.fromhex(secret_manifest))


def _v2(site: Site, commands: list[tuple[bytes, dict[bytes, object]]]) -> list[object]:
    client = ClientFrameReactor(encodings=(b"identity",))
    body, ids = _call_all(client, commands)
    status, _, data = post_frames(site.server, "src/api/exp-http-v2-0003/ro/multirequest", body)
    assert status == 200
    answers = _answers(client, data, ids)
    return [answers[i] for i in ids]


def test_linkrevs_point_at_the_hidden_predecessor(site: Site) -> None:
    """The premise: the amend left the manifest's and c's linkrev on a hidden changeset."""
    hidden = hg_out("log", "--hidden", "-r", "hidden()", "-T", "{rev}", cwd=site.src)
    index = hg_out("debugindex", "c", "-T", "{linkrev}", cwd=site.src)
    manifest = hg_out("debugindex", "-m", "-T", "{linkrev} ", cwd=site.src)
    assert hidden and index == hidden and manifest.split()[1] == hidden


@pytest.mark.skipif(not os.path.exists(HG_603), reason=f"Mercurial 6.0.3 not at {HG_603}")
def test_hg603_v2_clone_and_revision_path_equal_the_source(site: Site, tmp_path: Path) -> None:
    """Mercurial 6.0.3's v2 clone over HTTP and ``hgwire clone --no-stream`` over TCP
    both succeed, equal ``hg clone --pull`` of the source and verify clean."""
    expected = repo_summary(site.ref)
    hg(
        "--config", "experimental.httppeer.advertise-v2=true",
        "clone", "-U", site.server.url("src"), tmp_path / "hg603", exe=HG_603,
    )  # fmt: skip
    assert repo_summary(tmp_path / "hg603") == expected
    verify(tmp_path / "hg603")
    url = f"hgwire://127.0.0.1:{site.server.ports['tcp'][0]}/src"
    result = run_hgwire(tmp_path / "home", "clone", "-U", "--no-stream", url, tmp_path / "ours")
    assert result.returncode == 0, result.stderr
    assert repo_summary(tmp_path / "ours") == expected
    verify(tmp_path / "ours")


def test_filedata_links_to_the_served_changeset(site: Site) -> None:
    """``c`` has one revision, linked to the hidden changeset: filedata serves it with the
    served changeset that references it as its linknode."""
    [answer] = _v2(
        site,
        [(b"filedata", {b"path": b"c", b"nodes": [site.only_file], b"fields": {b"linknode"}})],
    )
    assert answer == [
        {b"totalitems": 1},
        {b"node": site.only_file, b"linknode": bytes.fromhex(site.amended)},
    ]


def test_secret_manifest_still_answers_like_an_unknown_node(site: Site) -> None:
    """Only the secret changeset references its manifest: the answer is the one a node
    that exists nowhere gets, with that node in it."""
    unknown = bytes(range(20))
    args = {b"tree": b"", b"fields": {b"revision"}}
    secret, nowhere = _v2(
        site,
        [
            (b"manifestdata", {**args, b"nodes": [site.secret_manifest]}),
            (b"manifestdata", {**args, b"nodes": [unknown]}),
        ],
    )
    assert nowhere == ("error", b"unknown node: %s", (unknown,))
    assert secret == ("error", b"unknown node: %s", (site.secret_manifest,))
