"""hgwire clone/pull of a private repository over HTTPS: credentials in the URL,
--user with [auth], --cacerts or [web] cacerts, clear TLS and login errors, a checked-out
working copy; and one default port for hgwire:// on both sides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hgwire_tw.access import hash_password
from tests.repobuilders import hg, hg_env, make_linear_repo
from tests.servers import RunningServer, running_server
from tests.test_daemon import _self_signed

PRIVATE = '[[rules]]\nrepos = "*"\nread = ["alice"]\n'


def hgwire(*args: str, hgrc: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = hg_env({"HGRCPATH": str(hgrc)} if hgrc else None)
    return subprocess.run(
        [sys.executable, "-m", "hgwire_tw", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=180,
    )


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunningServer, Path, Path]:
    """A private repository served over HTTPS with a self-signed certificate."""
    tmp = tmp_path_factory.mktemp("https")
    repo = make_linear_repo(tmp / "secret", commits=3)
    hg("bookmark", "-r", "1", "@", cwd=repo)
    key, cert, _ = _self_signed(tmp, "localhost")
    access = tmp / "access.toml"
    access.write_text(
        f'[users.alice]\npassword = "{hash_password("s3cret")}"\n' + PRIVATE, encoding="utf-8"
    )
    endpoint = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    with running_server(
        tmp, "--repo", f"secret={repo}", "--access", str(access), http=endpoint
    ) as s:
        yield s, repo, cert


def _url(server: RunningServer, login: str = "") -> str:
    return f"https://{login}127.0.0.1:{server.http_port}/secret"


def test_credentials_in_url_and_cacerts(
    https: tuple[RunningServer, Path, Path], tmp_path: Path
) -> None:
    """https://alice:PASSWORD@host/... with --cacerts clones and checks out the working
    copy at the @ bookmark, like hg clone; the password is not stored in .hg/hgrc."""
    server, repo, cert = https
    dest = tmp_path / "c"
    proc = hgwire("clone", "-q", "--cacerts", str(cert), _url(server, "alice:s3cret@"), str(dest))
    assert proc.returncode == 0, proc.stderr
    hg("verify", "-q", cwd=dest)
    parent = hg("log", "-r", ".", "-T", "{rev} {activebookmark}", cwd=dest).stdout
    assert parent == b"1 @"
    assert (dest / "a.txt").read_bytes() == hg("cat", "-r", "1", "a.txt", cwd=repo).stdout
    hgrc = (dest / ".hg" / "hgrc").read_text()
    assert "s3cret" not in hgrc and f"alice@127.0.0.1:{server.http_port}" in hgrc
    assert server.log().count('alice "POST /secret/api/') >= 1  # logged in on the v2 API


def test_user_and_auth_section_and_web_cacerts(
    https: tuple[RunningServer, Path, Path], tmp_path: Path
) -> None:
    """--user alice takes the password from [auth] (matched by prefix, as hg does), the
    CA from [web] cacerts; -U leaves no working copy; pull uses the same login."""
    server, repo, cert = https
    hgrc = tmp_path / "hgrc"
    hgrc.write_text(
        f"[auth]\nlab.prefix = https://127.0.0.1:{server.http_port}/\n"
        "lab.username = alice\nlab.password = s3cret\n"
        f"[web]\ncacerts = {cert}\n",
        encoding="utf-8",
    )
    dest = tmp_path / "u"
    proc = hgwire("clone", "-q", "-U", "--user", "alice", _url(server), str(dest), hgrc=hgrc)
    assert proc.returncode == 0, proc.stderr
    assert not (dest / "a.txt").exists()
    assert (
        hg("log", "-r", "tip", "-T", "{node}", cwd=dest).stdout
        == hg("log", "-r", "tip", "-T", "{node}", cwd=repo).stdout
    )
    proc = hgwire("pull", "-q", "-R", str(dest), hgrc=hgrc)  # [auth] alone finds alice
    assert proc.returncode == 0, proc.stderr


def test_clear_errors_for_untrusted_certificate_and_missing_login(
    https: tuple[RunningServer, Path, Path], tmp_path: Path
) -> None:
    server, _, cert = https
    proc = hgwire("clone", _url(server, "alice:s3cret@"), str(tmp_path / "x"))
    assert proc.returncode == 1
    assert "TLS: cannot verify the certificate of https://127.0.0.1:" in proc.stderr
    assert "--cacerts FILE" in proc.stderr and "Failure" not in proc.stderr
    assert "s3cret" not in proc.stderr
    proc = hgwire("clone", "--cacerts", str(cert), _url(server), str(tmp_path / "y"))
    assert proc.returncode == 1
    # Anonymous: a private repository answers 401, and the client says how to log in.
    assert (
        f"{_url(server)} asks for a login: give it in the URL (https://USER:PASSWORD@...), "
        "with --user, or in the [auth] section of ~/.hgrc"
    ) in proc.stderr, proc.stderr
    assert not (tmp_path / "y").exists()
    proc = hgwire(
        "clone", "--cacerts", str(cert), _url(server, "alice:wrong@"), str(tmp_path / "z")
    )
    assert proc.returncode == 1
    assert f"{_url(server)} refused the login of 'alice' (HTTP 401)" in proc.stderr, proc.stderr
    assert "wrong" not in proc.stderr and not (tmp_path / "z").exists()


def test_password_prompt_on_a_terminal(
    https: tuple[RunningServer, Path, Path], tmp_path: Path
) -> None:
    """hgwire clone --user alice on a terminal with no password anywhere: it asks
    'password for alice at HOST: ' without echoing what is typed, and that password
    logs in."""
    import os
    import pty
    import select
    import time

    server, repo, cert = https
    dest = tmp_path / "t"
    argv = [sys.executable, "-m", "hgwire_tw", "clone", "-q", "-U", "--cacerts", str(cert),
            "--user", "alice", _url(server), str(dest)]  # fmt: skip
    env = hg_env()
    pid, fd = pty.fork()
    if pid == 0:  # the child, on the new terminal
        try:
            os.execve(sys.executable, argv, env)
        finally:
            os._exit(127)
    shown = b""
    typed = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if not typed and b"password for alice at 127.0.0.1: " in shown:
                os.write(fd, b"s3cret\n")
                typed = True
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
    assert typed, shown
    assert os.waitstatus_to_exitcode(status) == 0, shown
    assert b"s3cret" not in shown  # getpass turned echo off
    tip = hg("log", "-r", "tip", "-T", "{node}", cwd=dest).stdout
    assert tip == hg("log", "-r", "tip", "-T", "{node}", cwd=repo).stdout


def test_hgwire_url_default_port_is_the_servers() -> None:
    """hgwire://host/repo without a port reaches the server's default --tcp port."""
    from hgwire_tw.app.settings import DEFAULT_TCP
    from hgwire_tw.client.peer import DEFAULT_TCP_PORT, PEER_FACTORIES, ClientOptions, parse_url
    from hgwire_tw.core.preamble import DEFAULT_PORT

    assert DEFAULT_TCP == f"tcp:{DEFAULT_PORT}:interface=127.0.0.1"
    assert DEFAULT_TCP_PORT == DEFAULT_PORT
    peer = PEER_FACTORIES["hgwire"](None, parse_url("hgwire://example.org/r"), ClientOptions())
    assert peer.url == f"hgwire://example.org:{DEFAULT_PORT}/r"
