"""Clone bundles: real ``hg clone`` (7.x) takes the bundle from our blob store, gets the
rest by pulling, and hg's own fallback rules apply when the bundle URL fails."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from mercurial import hg as hgmod

from hgwire_tw.access import hash_password
from hgwire_tw.blobstore import BlobStore
from hgwire_tw.clonebundles import BUNDLESPEC, CloneBundleMode, CloneBundles, CloneBundleSource
from hgwire_tw.repo.registry import RepositoryRegistry
from hgwire_tw.repo.ui import make_ui
from tests import repobuilders as rb
from tests.servers import RunningServer, running_server

ON_DEMAND = ("--clonebundles", "on-demand", "--clonebundles-every", "0")


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def indexed(server: RunningServer, name: str = "r") -> list[dict[str, object]]:
    path = server.state_dir / "clonebundles.json"
    if not path.exists():
        return []
    entries: list[dict[str, object]] = json.loads(path.read_text()).get(name, [])
    return entries


def bundle_for_heads(server: RunningServer, repo: Path) -> str:
    """Wait until the server indexed a bundle of ``repo``'s current served heads."""
    heads = sorted(rb.log_nodes(repo, "heads(not secret())"))

    def ready() -> bool:
        return any(sorted(e["heads"]) == heads for e in indexed(server))  # type: ignore[call-overload]

    wait_for(ready, "a clone bundle of the current heads")
    return str([e for e in indexed(server) if sorted(e["heads"]) == heads][-1]["blob"])  # type: ignore[call-overload]


def reference(source: Path, tmp_path: Path) -> dict[str, object]:
    """What hg's own pull-clone of ``source`` looks like (secret changesets stay home)."""
    ref = tmp_path / f"ref-{time.monotonic_ns()}"
    rb.hg("clone", "-q", "-U", "--pull", source, ref)
    return rb.repo_summary(ref)


def clone(server: RunningServer, dest: Path, *extra: str, check: bool = True) -> str:
    proc = rb.hg("clone", *extra, server.url("r"), dest, check=check)
    return (proc.stdout + proc.stderr).decode("utf-8", "replace")


def test_hg_clone_uses_the_bundle_and_equals_the_source(rich_repo: Path, tmp_path: Path) -> None:
    """The first request makes a bundle; the next hg clone applies it from our blob URL."""
    with running_server(tmp_path, "--repo", f"r={rich_repo}", *ON_DEMAND) as server:
        first = clone(server, tmp_path / "c1", "-U")
        assert "applying clone bundle" not in first  # nothing to advertise yet
        blob = bundle_for_heads(server, rich_repo)
        out = clone(server, tmp_path / "c2")
        assert f"applying clone bundle from {server.http_url}/.hgwire/blobs/{blob}" in out
        assert "finished applying clone bundle" in out
        assert f'GET /.hgwire/blobs/{blob} HTTP/1.1" 200' in server.log()
    assert rb.repo_summary(tmp_path / "c2") == reference(rich_repo, tmp_path)
    rb.verify(tmp_path / "c2")


def test_commits_after_the_bundle_are_pulled(rich_repo: Path, tmp_path: Path) -> None:
    """An older bundle is still advertised; the clone pulls the newer changesets after it."""
    args = ("--clonebundles", "on-demand", "--clonebundles-every", "3600")
    with running_server(tmp_path, "--repo", f"r={rich_repo}", *args) as server:
        clone(server, tmp_path / "c1", "-U")
        old_blob = bundle_for_heads(server, rich_repo)
        rb.hg("update", "-q", "-r", "max(not secret())", cwd=rich_repo)
        (rich_repo / "new.txt").write_text("after the bundle\n")
        rb.hg("commit", "-A", "-q", "-m", "after bundle", cwd=rich_repo)
        out = clone(server, tmp_path / "c2")
        assert f"applying clone bundle from {server.http_url}/.hgwire/blobs/{old_blob}" in out
        assert "added 1 changesets" in out  # the incremental pull after the bundle
        assert len(indexed(server)) == 1  # re-bundling waits for --clonebundles-every
    assert rb.repo_summary(tmp_path / "c2") == reference(rich_repo, tmp_path)
    rb.verify(tmp_path / "c2")


def test_rebundles_when_heads_move_and_expires_the_old_bundle(
    rich_repo: Path, tmp_path: Path
) -> None:
    """With every=0 and grace=0 a push leads to a new bundle and the old blob is deleted."""
    args = (*ON_DEMAND, "--clonebundles-grace", "0")
    with running_server(tmp_path, "--repo", f"r={rich_repo}", *args) as server:
        clone(server, tmp_path / "c1", "-U")
        old_blob = bundle_for_heads(server, rich_repo)
        rb.hg("update", "-q", "-r", "max(not secret())", cwd=rich_repo)
        (rich_repo / "new.txt").write_text("moves the heads\n")
        rb.hg("commit", "-A", "-q", "-m", "new head", cwd=rich_repo)
        clone(server, tmp_path / "c2", "-U")  # its capabilities request asks for a bundle
        new_blob = bundle_for_heads(server, rich_repo)
        assert new_blob != old_blob
        blobs = server.state_dir / "blobs"
        wait_for(lambda: not (blobs / old_blob).exists(), "the superseded bundle to go")
        assert (blobs / new_blob).exists()
        out = clone(server, tmp_path / "c3")
        assert new_blob in out
    assert rb.repo_summary(tmp_path / "c3") == reference(rich_repo, tmp_path)


def test_missing_blob_is_not_advertised(rich_repo: Path, tmp_path: Path) -> None:
    """A bundle whose blob vanished is not listed: hg clones normally, no 404 abort."""
    args = ("--clonebundles", "on-demand", "--clonebundles-every", "3600")
    with running_server(tmp_path, "--repo", f"r={rich_repo}", *args) as server:
        clone(server, tmp_path / "c1", "-U")
        blob = bundle_for_heads(server, rich_repo)
        (server.state_dir / "blobs" / blob).unlink()
        out = clone(server, tmp_path / "c2")
        assert "applying clone bundle" not in out
        # ... and the next request regenerates it (a missing blob never waits for `every`)
        wait_for(lambda: (server.state_dir / "blobs" / blob).exists(), "the bundle to return")
    assert rb.repo_summary(tmp_path / "c2") == reference(rich_repo, tmp_path)


def test_damaged_bundle_is_not_advertised_until_rebuilt(rich_repo: Path, tmp_path: Path) -> None:
    """A blob whose bytes changed after publishing is withheld (hg would abort on its
    DIGEST, even with ui.clonebundlefallback), re-checked, rebuilt, then used again."""
    args = ("--clonebundles", "on-demand", "--clonebundles-every", "3600")
    with running_server(tmp_path, "--repo", f"r={rich_repo}", *args) as server:
        clone(server, tmp_path / "c1", "-U")
        blob = bundle_for_heads(server, rich_repo)
        path = server.state_dir / "blobs" / blob
        good = path.read_bytes()
        data = bytearray(good)
        data[-10] ^= 0xFF
        path.write_bytes(bytes(data))
        out = clone(server, tmp_path / "c2")
        assert "applying clone bundle" not in out
        wait_for(lambda: path.exists() and path.read_bytes() == good, "the bundle to be rebuilt")
        wait_for(lambda: "is damaged" in server.log(), "the damage to be logged")
        out = clone(server, tmp_path / "c3")
        assert f"applying clone bundle from {server.http_url}/.hgwire/blobs/{blob}" in out
    assert rb.repo_summary(tmp_path / "c2") == reference(rich_repo, tmp_path)
    assert rb.repo_summary(tmp_path / "c3") == reference(rich_repo, tmp_path)
    rb.verify(tmp_path / "c3")


def test_dead_external_base_url_falls_back_when_configured(rich_repo: Path, tmp_path: Path) -> None:
    """--blob-base-url pointing at a server that is down: hg's fallback clones normally."""
    args = (*ON_DEMAND, "--blob-base-url", "http://127.0.0.1:9/cdn/")
    with running_server(tmp_path, "--repo", f"r={rich_repo}", *args) as server:
        clone(server, tmp_path / "c1", "-U")
        bundle_for_heads(server, rich_repo)
        out = clone(server, tmp_path / "c2", "--config", "ui.clonebundlefallback=true")
        assert "applying clone bundle from http://127.0.0.1:9/cdn/" in out
        assert "falling back to normal clone" in out
    assert rb.repo_summary(tmp_path / "c2") == reference(rich_repo, tmp_path)


def test_scheduled_mode_bundles_before_any_request(rich_repo: Path, tmp_path: Path) -> None:
    """--clonebundles scheduled makes the bundle at start: the very first clone uses it."""
    args = ("--clonebundles", "scheduled", "--clonebundles-every", "3600")
    with running_server(tmp_path, "--repo", f"r={rich_repo}", *args) as server:
        blob = bundle_for_heads(server, rich_repo)
        out = clone(server, tmp_path / "c1")
        assert blob in out and "finished applying clone bundle" in out
    assert rb.repo_summary(tmp_path / "c1") == reference(rich_repo, tmp_path)


def test_private_repositories_get_no_embedded_clone_bundles(
    rich_repo: Path, tmp_path: Path
) -> None:
    """When a repository needs a login the embedded blobs are not anonymous, so the
    capability is not advertised (hg would fetch the URL without credentials)."""
    access = tmp_path / "access.toml"
    access.write_text(
        f'[users.alice]\npassword = "{hash_password("pw")}"\n'
        '[[rules]]\nrepos = "secret"\nread = ["alice"]\n'
        '[[rules]]\nrepos = "*"\nread = ["anonymous"]\n',
        encoding="utf-8",
    )
    other = rb.make_linear_repo(tmp_path / "other", 2)
    args = ("--repo", f"r={rich_repo}", "--repo", f"secret={other}", "--access", str(access))
    with running_server(tmp_path, *args, *ON_DEMAND) as server:
        caps = rb.hg_out("debugcapabilities", server.url("r"))
        assert "clonebundles" not in caps
        out = clone(server, tmp_path / "c1")
        assert "applying clone bundle" not in out
        assert indexed(server) == []


# ---------------------------------------------------------------------------------------
# units: the index, the manifest and expiry, with a fake clock and no reactor


class _NoReactor:
    def __init__(self) -> None:
        self.requested: list[object] = []

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        self.requested.append(args[0])


def make_bundles(tmp_path: Path, repo: Path, now: list[float]) -> CloneBundles:
    return CloneBundles(
        reactor=_NoReactor(),
        blobs=BlobStore(tmp_path / "blobs"),
        registry=RepositoryRegistry({"r": repo}),
        index_path=tmp_path / "index.json",
        mode=CloneBundleMode.ON_DEMAND,
        every=0,
        grace=100,
        clock=lambda: now[0],
    )


def test_manifest_names_the_newest_bundle_and_expiry_respects_grace(tmp_path: Path) -> None:
    """The manifest line carries URL, BUNDLESPEC and DIGEST; a superseded bundle is
    deleted only after the grace period, the current one never."""
    repo_path = rb.make_linear_repo(tmp_path / "repo", 3)
    now = [1000.0]
    bundles = make_bundles(tmp_path, repo_path, now)
    served = bundles.registry.resolve("r")
    first = bundles._generate(served)
    assert first is not None and first.changesets == 3
    assert bundles._generate(served) is None  # heads unchanged: nothing to do
    repo = hgmod.repository(make_ui(), bytes(repo_path))
    source = CloneBundleSource(bundles, served, "http://h:1/.hgwire/blobs/")
    assert (
        source.manifest(repo)
        == (
            f"http://h:1/.hgwire/blobs/{first.blob} BUNDLESPEC={BUNDLESPEC} "
            f"DIGEST=sha256:{first.blob[:64]}\n"
        ).encode()
    )
    assert bundles.blobs.verify(first.blob)

    (repo_path / "more.txt").write_text("more\n")
    rb.hg("commit", "-A", "-q", "-m", "more", cwd=repo_path)
    repo = hgmod.repository(make_ui(), bytes(repo_path))
    assert source.advertise(repo)  # the old bundle is still good to clone from
    assert bundles.reactor.requested == [served]  # ...but a new one is wanted
    now[0] = 2000.0
    second = bundles._generate(served)
    assert second is not None and second.changesets == 4
    assert second.blob in source.manifest(repo).decode()
    now[0] = 2050.0
    assert bundles.collect() == []  # inside the grace period
    assert bundles.blobs.find(first.blob) is not None
    now[0] = 2100.0
    assert bundles.collect() == [first.blob]
    assert bundles.blobs.find(first.blob) is None
    assert bundles.blobs.find(second.blob) is not None
    now[0] = 10**9
    assert bundles.collect() == []  # the current bundle is never expired
    # the index survives a restart
    again = make_bundles(tmp_path, repo_path, now)
    assert again.bundles("r") == [second]
