"""The runnable service: defaults, listening.json, clean SIGTERM shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.repobuilders import hg, hg_env, init_repo, make_linear_repo
from tests.servers import running_server


def test_serves_current_directory_by_default(tmp_path: Path) -> None:
    """`hgwire serve` with no --repo serves the repository it is started in, at /."""
    repo = make_linear_repo(tmp_path / "here", commits=2)
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hgwire_tw",
            "serve",
            "--state-dir",
            str(state),
            "--http",
            "tcp:0:interface=127.0.0.1",
            "--ssh",
            "tcp:0:interface=127.0.0.1",
            "--tcp",
            "tcp:0:interface=127.0.0.1",
        ],
        cwd=repo,
        env=hg_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not (state / "listening.json").exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        listening = json.loads((state / "listening.json").read_text())
        assert len(listening["ssh"]) == len(listening["tcp"]) == 1
        key = state / "ssh_host_ed25519_key"
        assert key.exists() and key.stat().st_mode & 0o777 == 0o600  # generated, private
        port = listening["http"][0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?cmd=heads", timeout=30) as r:
            heads = r.read().split()
        expected = hg("heads", "-T", "{node}\n", cwd=repo).stdout.split()
        assert heads == expected
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    assert_clean_exit(proc.returncode, out)


def assert_clean_exit(returncode: int, log: str) -> None:
    """SIGTERM is a requested stop: every service shuts down, the exit status is 0 and
    nothing was logged as an unhandled error."""
    assert returncode == 0, log
    assert "received SIGTERM: shutting down" in log and "] stopped" in log, log
    assert "Traceback" not in log and "Unhandled" not in log, log


def test_sigterm_during_a_clone_leaves_no_lock(tmp_path: Path) -> None:
    """SIGTERM while a clone streams: the server exits cleanly and the repository is
    neither locked nor damaged."""
    repo = make_linear_repo(tmp_path / "src", commits=30)
    with running_server(tmp_path, "--repo", f"src={repo}") as server:
        clone = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("hg")),
                "clone",
                "-q",
                "-U",
                server.url("src"),
                str(tmp_path / "dst"),
            ],
            env=hg_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        assert_clean_exit(server.proc.wait(30), server.log())
        clone.wait(60)
    assert not (repo / ".hg" / "store" / "lock").exists()
    assert not (repo / ".hg" / "wlock").exists()
    hg("verify", "-q", cwd=repo)


def test_unknown_repository_is_404_and_refused_names(tmp_path: Path) -> None:
    """Unknown names and path tricks are 404s; the served repository still works."""
    init_repo(tmp_path / "r")
    with running_server(tmp_path, "--repo", f"r={tmp_path / 'r'}") as server:
        for path in (
            "nope?cmd=heads",
            "..%2Fr?cmd=heads",
            "r/../../etc?cmd=heads",
            "%2Fetc?cmd=heads",
        ):
            try:
                urllib.request.urlopen(f"{server.http_url}/{path}", timeout=10)
            except urllib.error.HTTPError as e:
                assert e.code == 404, (path, e.code)
            else:
                raise AssertionError(f"{path} was served")
        with urllib.request.urlopen(f"{server.url('r')}?cmd=heads", timeout=10) as r:
            assert r.read().strip() == b"0" * 40
