"""``hgwire clone`` / ``hgwire pull`` over HTTP v2 against the real service (subprocesses)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.repobuilders import advance_rich_repo, hg, hg_env, repo_summary, verify
from tests.servers import running_server


def hgwire(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``hgwire`` command line in a clean environment."""
    return subprocess.run(
        [sys.executable, "-m", "hgwire_tw", *map(str, args)],
        capture_output=True,
        text=True,
        env=hg_env(),
        timeout=timeout,
    )


def added(out: str) -> int:
    """Changesets reported added by the summary line."""
    match = re.search(r"added (\d+) changesets", out)
    assert match, out
    return int(match.group(1))


def test_clone_and_incremental_pull_over_http(rich_repo: Path, tmp_path: Path) -> None:
    """Clone equals hg's own clone; a later pull fetches only the new merge and commit."""
    ref = tmp_path / "ref"
    hg("clone", "-q", "-U", "--pull", rich_repo, ref)
    dest = tmp_path / "clone"
    with running_server(tmp_path, "--repo", f"rich={rich_repo}") as server:
        url = f"{server.http_url}/rich"
        result = hgwire("clone", url, dest)
        assert result.returncode == 0, result.stderr
        assert added(result.stdout) == len(repo_summary(ref)["nodes"])  # type: ignore[arg-type]
        assert repo_summary(dest) == repo_summary(ref)
        verify(dest)

        advance_rich_repo(rich_repo)
        result = hgwire("pull", "-R", dest)  # URL from paths.default
        assert result.returncode == 0, result.stderr
        assert added(result.stdout) == 2
        again = hgwire("pull", "-R", dest)
        assert added(again.stdout) == 0
    hg("clone", "-q", "-U", "--pull", rich_repo, tmp_path / "ref2")
    assert repo_summary(dest) == repo_summary(tmp_path / "ref2")
    verify(dest)


def test_clone_from_dead_server_fails_cleanly_and_resumes(rich_repo: Path, tmp_path: Path) -> None:
    """A clone whose server vanishes aborts with a message; re-running it completes."""
    dest = tmp_path / "clone"
    with running_server(tmp_path, "--repo", f"rich={rich_repo}") as server:
        url = f"{server.http_url}/rich"
    result = hgwire("clone", url, dest, timeout=60)
    assert result.returncode != 0 and "abort" in result.stderr
    assert not dest.exists() or hg("log", "-T", "x", cwd=dest).stdout == b""


def test_unknown_scheme_is_refused(tmp_path: Path) -> None:
    """An unsupported URL scheme is refused before anything is created."""
    result = hgwire("clone", "ftp://127.0.0.1/x", tmp_path / "d")
    assert result.returncode == 1 and "unsupported URL scheme" in result.stderr
    assert not (tmp_path / "d").exists()
