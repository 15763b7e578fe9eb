"""The README's SSH example, run as written: its own commands (ssh-keygen, the printf that
writes access.toml, the known_hosts line, hg clone and push with `-e "ssh ..."`, hgwire
clone over the SSH subsystem) in a temporary directory with its own HOME, against the
server its serve line starts.

Only what cannot be kept is adapted, and each adaptation must apply exactly as expected
(so a change of the README's commands shows up here): the server listens on an
OS-chosen port instead of 8022 (and not on HTTP or raw TCP), and OpenSSH is pointed at
$HOME/.ssh/known_hosts, since it finds `~` through the password database, not $HOME.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.repobuilders import hg, hg_env

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(
        not (shutil.which("ssh") and shutil.which("ssh-keygen")), reason="OpenSSH not installed"
    ),
    pytest.mark.timeout(180),
]


def readme_ssh_block() -> list[str]:
    """The README's shell block with the SSH example, as lines."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "ssh-keygen" in b]
    return block.splitlines(keepends=True)


def split_block(lines: list[str]) -> tuple[str, str, str]:
    """(commands before the server, the serve line, commands after it)."""
    (serve,) = [i for i, line in enumerate(lines) if " serve " in line]
    return "".join(lines[:serve]), lines[serve], "".join(lines[serve + 1 :])


def adapt(script: str, old: str, new: str, count: int) -> str:
    assert script.count(old) == count, (old, count, script)
    return script.replace(old, new)


def test_the_readme_ssh_example_works_as_written(tmp_path: Path) -> None:
    before, serve, after = split_block(readme_ssh_block())
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    # The README runs from the checkout: .venv/bin/... is this test's interpreter's venv.
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    hg("init", work / "demo")  # the set-up's demo repository
    env = hg_env({"HOME": str(home)})
    for name in ("XDG_STATE_HOME", "SSH_AUTH_SOCK", "SSH_AGENT_PID"):
        env.pop(name, None)

    def bash(script: str) -> str:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, (script, proc.stdout, proc.stderr)
        return proc.stdout

    bash(before)
    assert (work / "access.toml").read_text().startswith('[users.alice]\nkeys = ["ssh-ed25519 ')

    serve = adapt(serve, " --access access.toml", " --access access.toml "
                  "--ssh tcp:0:interface=127.0.0.1 --http none --tcp none", 1)  # fmt: skip
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        ["bash", "-c", "exec " + serve.strip()], cwd=work, env=env, stdout=log, stderr=log
    )
    try:
        listening = home / ".local" / "state" / "hgwire" / "listening.json"
        deadline = time.monotonic() + 60
        while not listening.exists():
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.05)
        (port,) = json.loads(listening.read_text())["ssh"]
        script = adapt(after, ":8022", f":{port}", 3)
        script = adapt(
            script,
            '-o IdentitiesOnly=yes"',
            "-o IdentitiesOnly=yes -o UserKnownHostsFile=$HOME/.ssh/known_hosts"
            ' -o StrictHostKeyChecking=yes -o BatchMode=yes"',
            2,
        )
        bash(script)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        log.close()
    assert server.returncode == 0, (tmp_path / "server.log").read_text()
    assert (home / ".ssh" / "known_hosts").read_text().startswith(f"[127.0.0.1]:{port} ssh-")
    tip = hg("log", "-r", "tip", "-T", "{desc} {author}", cwd=work / "demo").stdout
    assert tip == b"hello alice"  # the push arrived
    for clone in ("work-ssh", "via-ssh"):
        assert hg("log", "-r", "tip", "-T", "{desc}", cwd=work / clone).stdout == b"hello"
    assert os.path.exists(work / "via-ssh" / "hello.txt")
