"""/metrics against the real service and real clients: response cache hits (repeated v1
getbundle, memory cache), content redirects (Mercurial 6.0.3's v2 clones with
--redirects), SSH clones and pushes (``hg`` through OpenSSH to the Conch server, a key in
the access file) and the push threads' queue series.

One server serves them all; every test compares a scrape taken before its clients ran
with one taken after, so they do not depend on each other's order.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import repobuilders as rb
from tests.repobuilders import HG_603, hg
from tests.servers import RunningServer, running_server
from tests.sshclient import SSH, SSH_LISTEN, keygen, public_key, ssh_argv
from tests.test_web_integration import samples, value

pytestmark = pytest.mark.timeout(180)

V2 = ["--config", "experimental.httppeer.advertise-v2=true"]


@dataclass
class Site:
    server: RunningServer
    repo: Path
    key: Path

    def ssh_url(self) -> str:
        return f"ssh://alice@127.0.0.1:{self.server.ports['ssh'][0]}/r"

    def hg_ssh(self) -> str:
        return " ".join(ssh_argv(self.key))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, rich_repo_template: Path) -> Iterator[Site]:
    """``r`` (a rich repository) over HTTP and SSH, memory cache (the default) and
    --redirects; alice's SSH key may push, anyone may read."""
    tmp = tmp_path_factory.mktemp("metrics")
    repo = tmp / "r"
    shutil.copytree(rich_repo_template, repo, symlinks=True)
    key = keygen(tmp / "alice")
    access = tmp / "access.toml"
    access.write_text(
        f'[users.alice]\nkeys = ["{public_key(key)}"]\n'
        '[[rules]]\nrepos = "*"\nread = ["anonymous", "*"]\nwrite = ["alice"]\n',
        encoding="utf-8",
    )
    args = ["--repo", f"r={repo}", "--access", str(access), *SSH_LISTEN, "--redirects"]
    with running_server(tmp, *args) as server:
        yield Site(server, repo, key)


def deltas(before: dict, after: dict):  # type: ignore[no-untyped-def]
    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    return delta


def test_repeated_v1_getbundle_is_a_cache_hit(site: Site, tmp_path: Path) -> None:
    """Two hg clones over HTTP: the second getbundle is answered from the memory cache,
    and hgwire_cache_hits_total says so (the log line is the server's own witness)."""
    hits = r"v1 cache hit getbundle"
    logged = len(re.findall(hits, site.server.log()))
    before = samples(site.server)
    for name in ("c1", "c2"):
        hg("clone", "-q", "-U", site.server.url("r"), tmp_path / name)
    after = samples(site.server)
    delta = deltas(before, after)
    assert delta("hgwire_cache_hits_total") == 1
    assert delta("hgwire_cache_misses_total") >= 1
    assert len(re.findall(hits, site.server.log())) == logged + 1
    assert delta("hgwire_clones_total", repo="r", transport="http") == 2
    assert rb.log_nodes(tmp_path / "c2") == rb.log_nodes(tmp_path / "c1")


@pytest.mark.skipif(not os.path.exists(HG_603), reason="Mercurial 6.0.3 not installed")
def test_v2_redirects_are_counted(site: Site, tmp_path: Path) -> None:
    """Mercurial 6.0.3 clones over HTTP v2 twice: the second follows content redirects,
    one per cached data command, and hgwire_redirects_total counts exactly those."""
    redirects = r"v2 cache redirect (changesetdata|manifestdata|filesdata)"
    logged = len(re.findall(redirects, site.server.log()))
    before = samples(site.server)
    outputs = []
    for name in ("v1", "v2"):
        out = hg(*V2, "--debug", "clone", "-U", site.server.url("r"), tmp_path / name, exe=HG_603)
        outputs.append(out.stdout.decode() + out.stderr.decode())
    after = samples(site.server)
    assert "following redirect to" not in outputs[0] and "following redirect to" in outputs[1]
    followed = len(re.findall(redirects, site.server.log())) - logged
    assert followed >= 3  # changesets, manifests and files of the second clone
    assert deltas(before, after)("hgwire_redirects_total") == followed
    assert rb.log_nodes(tmp_path / "v2") == rb.log_nodes(tmp_path / "v1")


@pytest.mark.skipif(not os.path.exists(SSH), reason="OpenSSH client not installed")
def test_ssh_clone_and_push_are_counted(site: Site, tmp_path: Path) -> None:
    """hg clone and push over ssh:// count as a clone and a push with transport="ssh",
    with the SSH connections and bytes; the push threads have their queue series."""
    before = samples(site.server)
    work = tmp_path / "work"
    hg("clone", "-q", "--ssh", site.hg_ssh(), site.ssh_url(), work, timeout=90)
    (work / "counted.txt").write_text("counted\n")
    hg("commit", "-A", "-q", "-u", "alice", "-m", "counted", cwd=work)
    hg("push", "-q", "--ssh", site.hg_ssh(), site.ssh_url(), cwd=work, timeout=90)
    after = samples(site.server)
    delta = deltas(before, after)
    assert delta("hgwire_clones_total", repo="r", transport="ssh") == 1
    assert delta("hgwire_clones_total", repo="r", transport="http") == 0
    assert delta("hgwire_pushes_total", repo="r", transport="ssh") == 1
    assert delta("hgwire_connections_total", transport="ssh") >= 2
    assert delta("hgwire_bytes_sent_total", transport="ssh") > 0
    getbundle = {"transport": "ssh", "protocol": "v1", "command": "getbundle"}
    assert delta("hgwire_request_duration_seconds_count", **getbundle) == 1
    for pool in ("repo", "write", "web", "reactor"):
        assert ("hgwire_threadpool_queue_depth", frozenset({("pool", pool)})) in after, pool
    assert rb.log_nodes(site.repo, "tip") == rb.log_nodes(work, "tip")
