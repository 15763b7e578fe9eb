"""SSH logins with real OpenSSH and real ``hg`` over real sockets: RSA user keys, the
per-address connection cap and the login deadline.

One server serves a small repository to rita (an RSA key made by ``ssh-keygen -t rsa -b
3072``) with at most three connections per address; the deadline test starts its own
server with a one-second login deadline.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.repobuilders import hg, init_repo, log_nodes, make_linear_repo
from tests.servers import RunningServer, running_server
from tests.sshclient import SSH, keygen, public_key, ssh_argv

pytestmark = [
    pytest.mark.skipif(not os.path.exists(SSH), reason="OpenSSH client not installed"),
    pytest.mark.timeout(120),
]

#: ``--ssh-max-per-address`` of the module's server.
PER_ADDRESS = 3


@dataclass
class Site:
    server: RunningServer
    key: Path
    repo: Path

    @property
    def port(self) -> int:
        return self.server.ports["ssh"][0]

    def url(self) -> str:
        return f"ssh://rita@127.0.0.1:{self.port}/r"

    def ssh(self, *options: str) -> list[str]:
        """ssh with rita's key and OpenSSH's own log level (so that it prints why the
        server disconnected), plus ``options``."""
        argv = ssh_argv(self.key)
        quiet = argv.index("LogLevel=ERROR")
        del argv[quiet - 1 : quiet + 1]
        return [*argv, *(a for o in options for a in ("-o", o)), "-p", str(self.port)]


def _access(path: Path, key: Path) -> Path:
    path.write_text(
        f'[users.rita]\nkeys = ["{public_key(key)}"]\n[[rules]]\nrepos = "*"\nread = ["*"]\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("sshlogin")
    key = keygen(tmp / "rita", "rsa", bits=3072)
    repo = make_linear_repo(tmp / "r", commits=2)
    with running_server(
        tmp,
        "--repo",
        f"r={repo}",
        "--ssh",
        "tcp:0:interface=127.0.0.1",
        "--access",
        str(_access(tmp / "access.toml", key)),
        "--ssh-max-per-address",
        str(PER_ADDRESS),
        "--log-level",
        "info",
        http="none",
    ) as server:
        yield Site(server=server, key=key, repo=repo)


def _clone(site: Site, dest: Path, *options: str) -> subprocess.CompletedProcess[bytes]:
    ssh = " ".join(site.ssh(*options))
    return hg("clone", "-q", "--ssh", ssh, site.url(), dest, check=False, timeout=60)


def test_rsa_key_clones_and_sha1_signatures_stay_refused(site: Site, tmp_path: Path) -> None:
    """An OpenSSH RSA key logs in (rsa-sha2-*: the server now lists them in
    server-sig-algs) and hg clone works; asked to sign with SHA-1 ssh-rsa only, ssh
    finds no algorithm the server accepts and the login is refused."""
    cloned = _clone(site, tmp_path / "clone")
    assert cloned.returncode == 0, cloned.stderr
    assert log_nodes(tmp_path / "clone") == log_nodes(site.repo)
    assert "SSH login: rita from 127.0.0.1" in site.server.log()
    sha1 = subprocess.run(
        [*site.ssh("PubkeyAcceptedAlgorithms=ssh-rsa"), "-T", "rita@127.0.0.1", "true"],
        capture_output=True,
        timeout=30,
    )
    assert sha1.returncode == 255 and b"Permission denied (publickey)" in sha1.stderr, sha1


def _hold(site: Site) -> socket.socket:
    """A connection that sent its version line and is admitted (the server's version
    line and key exchange came back, no disconnect), left idle."""
    sock = socket.create_connection(("127.0.0.1", site.port), timeout=10)
    sock.sendall(b"SSH-2.0-idle\r\n")
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return sock


def _still_open(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        while sock.recv(65536):  # what the server sent before (its key exchange offer)
            pass
    except TimeoutError:
        return True
    return False  # end of input: closed


def _admitted(site: Site) -> bool:
    """Whether a new connection is let in (a refused one ends right after the version
    line and the disconnect)."""
    with socket.create_connection(("127.0.0.1", site.port), timeout=5) as sock:
        sock.sendall(b"SSH-2.0-probe\r\n")
        sock.settimeout(0.5)
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            return True
        return False


def test_per_address_cap_refuses_with_a_reason(site: Site, tmp_path: Path) -> None:
    """With PER_ADDRESS idle connections held, hg clone from the same address is refused
    and says why; the held connections stay open; once they are gone the clone works."""
    held = [_hold(site) for _ in range(PER_ADDRESS)]
    try:
        refused = _clone(site, tmp_path / "refused")
        assert refused.returncode != 0
        assert b"too many connections from your address" in refused.stderr, refused.stderr
        assert not (tmp_path / "refused").exists()
        assert all(_still_open(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while not _admitted(site):  # the server has seen the closes
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cloned = _clone(site, tmp_path / "clone")
    assert cloned.returncode == 0, cloned.stderr
    assert "refused: too many connections from your address" in site.server.log()


def _read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_login_deadline_closes_idle_connections(tmp_path: Path) -> None:
    """With --ssh-login-timeout 1: a connection that sends only its version line, and
    one that sends nothing, are both disconnected at the deadline."""
    key = keygen(tmp_path / "k")
    with running_server(
        tmp_path,
        "--repo",
        str(init_repo(tmp_path / "r")),
        "--ssh",
        "tcp:0:interface=127.0.0.1",
        "--access",
        str(_access(tmp_path / "access.toml", key)),
        "--ssh-login-timeout",
        "1",
        "--log-level",
        "info",
        http="none",
    ) as server:
        port = server.ports["ssh"][0]
        started = time.monotonic()
        banner = socket.create_connection(("127.0.0.1", port), timeout=15)
        silent = socket.create_connection(("127.0.0.1", port), timeout=15)
        with banner, silent:
            banner.sendall(b"SSH-2.0-banner-only\r\n")
            answers = [_read_to_end(banner), _read_to_end(silent)]
            elapsed = time.monotonic() - started
        assert all(b"login timeout" in data for data in answers), answers
        assert 0.9 <= elapsed < 10, elapsed
        assert server.log().count("SSH login timeout: 127.0.0.1") == 2
