"""Mirrors end to end: ``hgwire serve --mirror`` against a real upstream service, read by
real ``hg``; and ``hgwire mirror`` on its own.

Waiting for the schedule is a bounded poll (the mirror pulls every second here); no test
asserts how long anything took.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.repobuilders import hg, hg_env, log_nodes, repo_summary, verify
from tests.servers import RunningServer, running_server
from tests.test_client_http import hgwire

pytestmark = pytest.mark.timeout(300)

TCP = "tcp:0:interface=127.0.0.1"


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def expected(src: Path, tmp: Path, name: str) -> dict[str, object]:
    """What a faithful pull of ``src`` holds (hg's own clone --pull)."""
    ref = tmp / name
    hg("clone", "-q", "-U", "--pull", src, ref)
    return repo_summary(ref)


def _same_nodes(mirror: Path, src: Path) -> Callable[[], bool]:
    def check() -> bool:
        if not (mirror / ".hg" / "store").exists():
            return False
        return sorted(log_nodes(mirror)) == sorted(log_nodes(src, "not secret()"))

    return check


def _new_commit_and_bookmark(src: Path, n: int) -> None:
    hg("update", "-q", "-r", "main", cwd=src)
    (src / f"mirror{n}.txt").write_text(f"{n}\n")
    hg("commit", "-A", "-q", "-m", f"for the mirror {n}", cwd=src)
    hg("bookmark", "-q", "-f", "-r", ".", "mirrored", cwd=src)


def test_served_mirror_follows_upstream_refuses_pushes_and_survives_its_death(
    rich_repo: Path, tmp_path: Path
) -> None:
    """A --mirror is cloned by real hg over HTTP equal to upstream, picks up new commits
    and bookmark moves on its schedule, refuses pushes, and keeps serving (and logging
    retries) once upstream is gone."""
    access = tmp_path / "access.toml"
    access.write_text('[[rules]]\nrepos = "*"\nread = ["anonymous"]\nwrite = ["anonymous"]\n')
    upstream_cm = running_server(tmp_path, "--repo", f"rich={rich_repo}", "--tcp", TCP)
    upstream: RunningServer = upstream_cm.__enter__()
    upstream_running = True
    try:
        url = f"hgwire://127.0.0.1:{upstream.ports['tcp'][0]}/rich"
        with running_server(
            tmp_path,
            "--mirror",
            f"team/rich={url}",
            "--mirror-every",
            "1",
            "--access",
            str(access),
            "--allow-push-over-http",
            "--tcp",
            TCP,
        ) as mirror_server:
            mirror = mirror_server.state_dir / "mirrors" / "team" / "rich"
            wait_for("the first sync", _same_nodes(mirror, rich_repo))
            clone = tmp_path / "clone"
            hg("clone", "-q", f"{mirror_server.http_url}/team/rich", clone)
            assert repo_summary(clone) == expected(rich_repo, tmp_path, "ref1")
            verify(clone)
            # ... and over the other transports too (here: raw TCP with our client).
            tcp_url = f"hgwire://127.0.0.1:{mirror_server.ports['tcp'][0]}/team/rich"
            by_tcp = hgwire("clone", "-q", tcp_url, tmp_path / "by-tcp")
            assert by_tcp.returncode == 0, by_tcp.stderr
            assert repo_summary(tmp_path / "by-tcp") == repo_summary(clone)

            _new_commit_and_bookmark(rich_repo, 1)
            hg("merge", "-q", "-r", "stable", cwd=rich_repo)
            hg("commit", "-q", "-m", "merge stable", cwd=rich_repo)
            wait_for("the new commits", _same_nodes(mirror, rich_repo))
            wait_for(
                "the bookmark",
                lambda: b"mirrored" in hg("bookmarks", cwd=mirror).stdout,
            )
            hg("pull", "-q", "-R", clone, f"{mirror_server.http_url}/team/rich")
            assert repo_summary(clone) == expected(rich_repo, tmp_path, "ref2")
            verify(clone)

            # Pushes are refused by the mirror itself, whatever the access file allows.
            hg("update", "-q", "-r", "tip", cwd=clone)
            (clone / "pushed.txt").write_text("no\n")
            hg("commit", "-A", "-q", "-m", "push me", cwd=clone)
            push = hg(
                "push", "-r", ".", f"{mirror_server.http_url}/team/rich", cwd=clone, check=False
            )
            assert push.returncode != 0
            assert b"read-only mirror of " + url.encode() in push.stdout + push.stderr
            assert sorted(log_nodes(mirror)) == sorted(log_nodes(rich_repo, "not secret()"))

            before = repo_summary(mirror)
            upstream_running = False
            upstream_cm.__exit__(None, None, None)
            wait_for(
                "two logged retries",
                lambda: "retry 2 in" in mirror_server.log(),
            )
            assert "mirror team/rich: pull failed" in mirror_server.log()
            assert repo_summary(mirror) == before
            again = tmp_path / "again"
            hg("clone", "-q", f"{mirror_server.http_url}/team/rich", again)
            assert repo_summary(again) == expected(rich_repo, tmp_path, "ref3")
    finally:
        if upstream_running:
            upstream_cm.__exit__(None, None, None)


def test_hgwire_mirror_command_keeps_a_local_mirror(rich_repo: Path, tmp_path: Path) -> None:
    """``hgwire mirror URL DEST --every 1`` creates DEST, follows upstream, and stops
    cleanly on SIGTERM."""
    with running_server(tmp_path, "--repo", f"rich={rich_repo}") as upstream:
        dest = tmp_path / "mirror"
        log = tmp_path / "mirror.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hgwire_tw",
                    "mirror",
                    "--every",
                    "1",
                    f"{upstream.http_url}/rich",
                    str(dest),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=hg_env(),
            )
        try:
            wait_for("the first sync", _same_nodes(dest, rich_repo))
            _new_commit_and_bookmark(rich_repo, 2)
            wait_for("the new commit", _same_nodes(dest, rich_repo))
            wait_for("the bookmark", lambda: b"mirrored" in hg("bookmarks", cwd=dest).stdout)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert repo_summary(dest) == expected(rich_repo, tmp_path, "ref")
    verify(dest)
    (dest / "local.txt").write_text("x\n")
    commit = hg("commit", "-A", "-q", "-m", "local", cwd=dest, check=False)
    assert commit.returncode != 0 and b"read-only mirror" in commit.stderr
