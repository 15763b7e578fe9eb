"""A real browser on the hgweb pages: headless Chromium (Debian's ``chromium``).

Chromium loads the index and a changeset page from the real server, dumps the DOM after
the page's load event (stylesheet, images and ``mercurial.js`` fetched and run) and
saves a screenshot. The test checks the title and the changeset hash in the DOM, that
``mercurial.js`` ran (it rewrites dates as "DATE (YYYY-MM-DD)"), and, from the server's
``web <status> <method> <path>`` log lines, that every static asset the browser asked
for was served with 200. Screenshots stay in the test's temporary directory (printed).

Chromium is required, not optional: ``bash .ci/run`` installs it (``apt-get install
chromium``); without it this test fails with that instruction.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests import repobuilders as rb
from tests.servers import RunningServer, running_server

pytestmark = pytest.mark.timeout(240)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
WEB_LINE = re.compile(r"\] web (\d{3}) (\w+) (\S+) ")


def chromium() -> str:
    """The chromium executable (fails, with the fix, when it is missing)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed: apt-get install -y chromium (bash .ci/run does)")


def load(url: str, screenshot: Path, profile: Path) -> str:
    """Load ``url`` in a fresh headless Chromium; returns the DOM after the load event."""
    proc = subprocess.Popen(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its renderer processes go with it on a timeout
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode("utf-8")


def web_requests(server: RunningServer) -> list[tuple[int, str, str]]:
    """(status, method, path) of every page the server logged."""
    return [(int(s), m, p) for s, m, p in WEB_LINE.findall(server.log())]


def assert_screenshot(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000  # not a blank page


def test_chromium_renders_the_index_and_a_changeset(rich_repo: Path, tmp_path: Path) -> None:
    """Index and changeset page render in Chromium: titles, the hash in the DOM, the
    script ran, every static asset answered 200; screenshots kept."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    node = rb.hg_out("log", "-r", "max(merge())", "-T", "{node}", cwd=rich_repo)
    with running_server(tmp_path, "--repo", f"rich={rich_repo}") as server:
        dom = load(server.http_url + "/", shots / "index.png", tmp_path / "profile-index")
        assert "<title>Mercurial repositories index</title>" in dom
        assert 'href="/rich/"' in dom
        dom = load(f"{server.url('rich')}/rev/{node}", shots / "rev.png", tmp_path / "profile-rev")
        assert f"<title>rich: {node[:12]}</title>" in dom
        assert node in dom and "merge left and right" in dom
        # mercurial.js ran: it turned the RFC 822 dates into "DATE (YYYY-MM-DD)"
        assert re.search(r"\+0000 \(\d{4}-\d\d-\d\d\)", dom)
        requests = web_requests(server)
    print(f"screenshots: {shots}")
    assert_screenshot(shots / "index.png")
    assert_screenshot(shots / "rev.png")
    pages = [(s, p) for s, m, p in requests if "/static/" not in p]
    assets = [(s, p) for s, m, p in requests if "/static/" in p]
    assert (200, "/") in pages and (200, f"/rich/rev/{node}") in pages
    requested = {p.rsplit("/", 1)[1] for _, p in assets}
    assert {"style-paper.css", "mercurial.js", "hglogo.png"} <= requested
    assert all(status == 200 for status, _ in assets), assets
