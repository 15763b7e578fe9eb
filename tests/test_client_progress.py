"""``hgwire clone`` shows progress on a terminal, on the store path and the revision path,
and prints only its summary when its output is not a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.repobuilders import hg_env, make_linear_repo
from tests.servers import RunningServer, running_server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("progress")
    repo = make_linear_repo(tmp / "src", commits=30)
    with running_server(
        tmp, "--repo", f"src={repo}", "--tcp", "tcp:0:interface=127.0.0.1"
    ) as running:
        yield running


def _on_terminal(argv: list[str]) -> tuple[int, bytes]:
    """Run ``argv`` with a pseudo-terminal as its stdin, stdout and stderr."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child, on the new terminal
        try:
            os.execve(sys.executable, argv, hg_env())
        finally:
            os._exit(127)
    shown = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown


@pytest.mark.parametrize(
    ("extra", "topic", "summary"),
    [
        ([], (b"store files: ",), b"added 30 changesets by copying"),
        # Updates come at most ten a second: a small clone shows its first phase and the
        # closing one, whose counts tell what arrived.
        (["--no-stream"], (b"discovery: ",), b"added 30 changesets with"),
    ],
)
def test_progress_on_a_terminal_only(
    server: RunningServer,
    tmp_path: Path,
    extra: list[str],
    topic: tuple[bytes, ...],
    summary: bytes,
) -> None:
    url = f"hgwire://127.0.0.1:{server.ports['tcp'][0]}/src"
    argv = [sys.executable, "-m", "hgwire_tw", "clone", "-U", *extra, url]
    status, shown = _on_terminal([*argv, str(tmp_path / "tty")])
    assert status == 0, shown
    lines = shown.split(b"\r")
    assert any(line.startswith(topic) for line in lines), shown
    assert any(line.startswith(b"closing transaction: ") for line in lines), shown
    # The status line is wiped (overwritten with blanks) before the summary is printed.
    [at] = [i for i, line in enumerate(lines) if line.startswith(summary)]
    assert lines[at - 1].strip(b" ") == b"" and lines[at - 1], shown
    piped = subprocess.run(
        [*argv, str(tmp_path / "pipe")], capture_output=True, env=hg_env(), timeout=120
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith(summary) and b"\r" not in piped.stdout, piped.stdout
    assert piped.stdout.count(b"\n") == 1 and piped.stderr == b""
