"""What the server logs: one access line per HTTP request naming the logged-in user,
refused pushes, debug lines only with --log-level debug."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hgwire_tw.access import hash_password
from tests.repobuilders import hg, hg_env, make_linear_repo
from tests.servers import running_server
from tests.test_daemon import wait_for_log


def _get(url: str, user: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user:
        token = base64.b64encode(f"{user}:secret".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_one_access_line_per_request_with_the_user_and_refused_pushes(tmp_path: Path) -> None:
    repo = make_linear_repo(tmp_path / "r", commits=2)
    access = tmp_path / "access.toml"
    access.write_text(
        f'[users.alice]\npassword = "{hash_password("secret")}"\n'
        '[[rules]]\nrepos = "*"\nread = ["*", "anonymous"]\nwrite = ["alice"]\n',
        encoding="utf-8",
    )
    args = ["--repo", f"r={repo}", "--access", str(access), "--log-level", "info"]
    with running_server(tmp_path, *args) as server:
        assert _get(server.url("r") + "?cmd=heads") == 200
        assert _get(server.url("r") + "?cmd=heads&x=alice", user="alice") == 200
        # Anonymous callers get 401 for a missing repository (like a private one).
        assert _get(server.url("nope") + "?cmd=heads", user="alice") == 404
        work = tmp_path / "work"
        hg("clone", "-q", server.url("r"), work)
        (work / "new.txt").write_text("new\n")
        hg("commit", "-A", "-q", "-m", "new", cwd=work)
        push = hg("push", server.url("r"), cwd=work, check=False)
        assert push.returncode != 0
        log = wait_for_log(server, "push to r refused")
    lines = [line for line in log.splitlines() if '"GET /r?cmd=heads' in line]
    assert len(lines) == 2, log  # exactly one line per request (no combined-log copy)
    assert ' - "GET /r?cmd=heads HTTP/1.1" 200 ' in lines[0]
    assert ' alice "GET /r?cmd=heads&x=alice HTTP/1.1" 200 ' in lines[1]
    assert 'alice "GET /nope?cmd=heads HTTP/1.1" 404' in log
    assert "push to r refused for anonymous over HTTP" in log
    assert " v1 r heads " not in log  # the per-command detail is a debug line


#: Requests of every kind the HTTP listener answers: wire protocol, web pages (a
#: repository's, the index, a static file), a refusal, /metrics.
DEFAULT_LEVEL_PATHS = (
    "/r?cmd=heads",
    "/r/shortlog",
    "/",
    "/static/style-paper.css",
    "/nope/shortlog",
    "/metrics",
)


def test_default_level_one_access_line_per_request_and_no_debug(tmp_path: Path) -> None:
    """With --log-level left at its default: each request is one access line (a web page
    has no second line of its own) and nothing below info is written."""
    repo = make_linear_repo(tmp_path / "r", commits=1)
    with running_server(tmp_path, "--repo", f"r={repo}", log_level=None) as server:
        for path in DEFAULT_LEVEL_PATHS:
            _get(server.http_url + path)
        log = wait_for_log(server, '"GET /metrics HTTP/1.1" 200')
    assert "--log-level" not in " ".join(server.proc.args)  # type: ignore[arg-type]
    for path in DEFAULT_LEVEL_PATHS:
        lines = [line for line in log.splitlines() if f" {path} " in line or f" {path}?" in line]
        assert len(lines) == 1 and f'"GET {path} HTTP/1.1" ' in lines[0], (path, log)
    assert '"GET /nope/shortlog HTTP/1.1" 404' in log
    assert "#debug]" not in log and " v1 r heads " not in log, log
    assert "#info]" in log  # the level marker the line above looks for


def test_debug_level_adds_command_and_page_lines(tmp_path: Path) -> None:
    repo = make_linear_repo(tmp_path / "r", commits=1)
    with running_server(tmp_path, "--repo", f"r={repo}", "--log-level", "debug") as server:
        assert _get(server.url("r") + "?cmd=heads") == 200
        assert _get(server.url("r") + "/shortlog") == 200
        log = wait_for_log(server, '"GET /r/shortlog HTTP/1.1" 200')
    assert "v1 r heads 200" in log and '"GET /r?cmd=heads HTTP/1.1" 200' in log
    (page,) = [line for line in log.splitlines() if "web 200 GET /r/shortlog " in line]
    assert "#debug]" in page


@pytest.mark.parametrize("scheme", ["hgwire", "http", "ssh"])
def test_mirror_of_a_dead_upstream_logs_only_its_retries(tmp_path: Path, scheme: str) -> None:
    """`hgwire mirror` against an upstream that refuses connections: one warning per
    failed pull, no "Starting factory" noise, no "Unhandled error in Deferred" (not on
    retries, not at shutdown); SIGINT ends it with status 0."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    url = f"{scheme}://{'u@' if scheme == 'ssh' else ''}127.0.0.1:{port}/r"
    log_path = tmp_path / "mirror.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hgwire_tw", "mirror", url, str(tmp_path / "m"), "--every", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=hg_env({"HOME": str(tmp_path)}),
        )
    try:
        deadline = time.monotonic() + 60
        while log_path.read_text().count("pull failed") < 3:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    log = log_path.read_text()
    assert proc.returncode == 0, log
    assert "Unhandled" not in log and "Traceback" not in log, log
    assert "Starting factory" not in log and "Stopping factory" not in log, log
