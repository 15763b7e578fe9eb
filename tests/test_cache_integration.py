"""Caching and redirects end to end: real hg clients against the real service.

* Mercurial 6.0.3 clones over HTTP v2 with redirects on: the second clone follows
  redirects to the embedded blob store and equals the source.
* ``hg clone`` (7.x, v1) twice: the second ``getbundle`` is a cache hit; after a push
  the key changes (the next clone has the pushed changeset); the disk cache is still
  warm after a restart.
* The hgwire client over HTTP v2, raw TCP and the SSH subsystem, and SSH v1 (``hg clone``
  through OpenSSH) hit the cache too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests import repobuilders as rb
from tests.clientsites import TRANSPORTS, client_site
from tests.repobuilders import HG_603, hg, repo_summary, verify
from tests.servers import RunningServer, running_server
from tests.test_http_v1_integration import commit, write_access
from tests.test_ssh_integration import SSH, Site, _clone, expected_clone, site, summary

__all__ = ["site"]  # the SSH test site fixture, shared with test_ssh_integration

V2 = ["--config", "experimental.httppeer.advertise-v2=true"]


def reference_clone(src: Path, dest: Path) -> dict[str, object]:
    """What Mercurial itself makes of ``src`` (the oracle)."""
    hg("clone", "-q", "-U", "--pull", src, dest)
    return repo_summary(dest)


def count(server: RunningServer, pattern: str) -> int:
    """How many server log lines match ``pattern``."""
    return len(re.findall(pattern, server.log()))


@pytest.mark.skipif(not os.path.exists(HG_603), reason="Mercurial 6.0.3 not installed")
@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_hg603_follows_redirects_and_clones_equal(
    rich_repo: Path, tmp_path: Path, cache: str
) -> None:
    """With --redirects the 2nd and 3rd v2 clones come from blobs; all equal the source."""
    ref = reference_clone(rich_repo, tmp_path / "ref")
    with running_server(
        tmp_path, "--repo", f"rich={rich_repo}", "--redirects", "--cache", cache
    ) as server:
        for i in range(3):
            out = hg(
                *V2, "--debug", "clone", "-U", server.url("rich"), tmp_path / f"c{i}", exe=HG_603
            )
            followed = out.stdout.decode() + out.stderr.decode()
            assert ("following redirect to" in followed) == (i > 0)
        redirects = count(server, r"v2 cache redirect (changesetdata|manifestdata|filesdata)")
        blob_gets = count(server, r'"GET /\.hgwire/blobs/[0-9a-f]{64}\.cbor HTTP/1\.1" 200')
    assert redirects == 6 and blob_gets == 6
    for i in range(3):
        assert repo_summary(tmp_path / f"c{i}") == ref
        verify(tmp_path / f"c{i}", exe=HG_603)
    verify(tmp_path / "c2")


def test_v1_getbundle_cache_push_and_restart(tmp_path: Path) -> None:
    """Repeated v1 clones hit; a push changes the key; the disk cache survives a restart."""
    src = rb.make_rich_repo(tmp_path / "src")
    access = write_access(tmp_path / "access.toml", write="alice")
    args = ["--repo", f"r={src}", "--access", str(access), "--allow-push-over-http"]
    args += ["--cache", "disk"]
    hits = r"v1 cache hit getbundle"
    with running_server(tmp_path, *args) as server:
        hg("clone", "-q", "-U", server.url("r"), tmp_path / "c1")
        hg("clone", "-q", "-U", server.url("r"), tmp_path / "c2")
        assert count(server, hits) == 1
        assert repo_summary(tmp_path / "c1") == repo_summary(tmp_path / "c2")
        assert repo_summary(tmp_path / "c2") == reference_clone(src, tmp_path / "ref1")

        work = tmp_path / "work"
        hg("clone", "-q", server.url("r"), work)
        commit(work, "pushed.txt", b"pushed\n")
        url = server.url("r").replace("http://", "http://alice:secret@")
        hg("push", "-q", url, cwd=work)
        before = count(server, hits)
        hg("clone", "-q", "-U", server.url("r"), tmp_path / "c3")
        assert count(server, hits) == before  # new state: a miss, not stale data
        expected = reference_clone(src, tmp_path / "ref2")
        assert repo_summary(tmp_path / "c3") == expected
        assert rb.log_nodes(work, "tip")[0] in rb.log_nodes(tmp_path / "c3")
        old_cache = server.state_dir / "cache"
    with running_server(tmp_path, *args) as server:
        # The new process's state directory gets what the old one left (the store is
        # read lazily, on the first request).
        old_cache.rename(server.state_dir / "cache")
        hg("clone", "-q", "-U", server.url("r"), tmp_path / "c4")
        assert count(server, hits) == 1  # the entry stored before the restart
    assert repo_summary(tmp_path / "c4") == expected
    verify(tmp_path / "c4")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hgwire_v2_clones_hit_the_cache(rich_repo: Path, tmp_path: Path, transport: str) -> None:
    """Over HTTP v2, raw TCP and the SSH subsystem the second hgwire clone is served from
    the cache (every data command a hit) and equals the first and the source."""
    ref = reference_clone(rich_repo, tmp_path / "ref")
    hits = r"v2 cache hit (changesetdata|manifestdata|filesdata)"
    with client_site(tmp_path, rich_repo, transport) as site:
        site.clone(tmp_path / "c0")
        assert count(site.server, hits) == 0
        site.clone(tmp_path / "c1")
        assert count(site.server, hits) >= 3
    for i in range(2):
        assert repo_summary(tmp_path / f"c{i}") == ref
    verify(tmp_path / "c1")


@pytest.mark.skipif(not os.path.exists(SSH), reason="OpenSSH client not installed")
def test_ssh_v1_clones_hit_the_cache(site: Site, tmp_path: Path) -> None:
    """hg clone over SSH (v1, raw bundle stream) twice: the second getbundle is a hit."""
    before = count(site.server, r"v1 cache hit getbundle")
    _clone(site, "bob", "team/rich", tmp_path / "c1")
    _clone(site, "bob", "team/rich", tmp_path / "c2")
    assert count(site.server, r"v1 cache hit getbundle") == before + 1
    assert summary(tmp_path / "c2") == expected_clone(site.rich) == summary(tmp_path / "c1")
    verify(tmp_path / "c2")
