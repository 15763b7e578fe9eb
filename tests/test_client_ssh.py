"""``hgwire clone``/``pull`` over ``ssh://`` (the ``hgwire`` subsystem) against the real
service, and the SSH peer's window handling on Conch objects.

One server per module serves a rich repository (changed by the incremental-pull test)
and one with a 3 MiB incompressible file (more than a channel window) to alice; carol's
key is in no access file. Every client runs with ``HOME`` in a temporary directory and
no ``SSH_AUTH_SOCK``, so nothing from the machine's own ``~/.ssh`` or agent is used.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from twisted.conch.ssh import common

from hgwire_tw.client.peer import ClientOptions, parse_url
from hgwire_tw.client.ssh import WINDOW, _Attempt, _Connection, _SubsystemChannel
from tests.repobuilders import advance_rich_repo, hg, hg_env, make_rich_repo, repo_summary, verify
from tests.servers import RunningServer, running_server
from tests.sshclient import (
    SSH_KEYGEN,
    SSH_LISTEN,
    host_key_line,
    keygen,
    run_hgwire,
    write_key_access,
    write_known_hosts,
)

SSH_AGENT = shutil.which("ssh-agent") or "/usr/bin/ssh-agent"
SSH_ADD = shutil.which("ssh-add") or "/usr/bin/ssh-add"

pytestmark = [
    pytest.mark.skipif(not os.path.exists(SSH_KEYGEN), reason="ssh-keygen not installed"),
    pytest.mark.timeout(180),
]


@dataclass
class Site:
    """The running server, its users' keys and a known-hosts file naming it."""

    server: RunningServer
    tmp: Path
    rich: Path
    big: Path
    keys: dict[str, Path]
    known_hosts: Path

    @property
    def port(self) -> int:
        return self.server.ports["ssh"][0]

    def url(self, repo: str, user: str = "alice") -> str:
        return f"ssh://{user}@127.0.0.1:{self.port}/{repo}"


def hgwire_ssh(
    site: Site, *args: str | Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ``hgwire`` command line with an empty HOME and no ssh-agent."""
    return run_hgwire(site.tmp / "home", *args, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("sshclient")
    keys = {"alice": keygen(tmp / "alice"), "carol": keygen(tmp / "carol")}
    keys["alice_rsa"] = keygen(tmp / "alice_rsa", "rsa")
    rich = make_rich_repo(tmp / "rich")
    big = tmp / "big"
    hg("init", big)
    (big / "random.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    hg("commit", "-A", "-q", "-m", "big", cwd=big)
    access = write_key_access(
        tmp / "access.toml", {"alice": [keys["alice"], keys["alice_rsa"]]}, read='"*"'
    )
    with running_server(
        tmp,
        "--repo",
        f"rich={rich}",
        "--repo",
        f"big={big}",
        *SSH_LISTEN,
        "--access",
        str(access),
        http="none",  # not the default 8000: it may be taken, and a busy port stops the server
    ) as server:
        known = write_known_hosts(server, tmp / "known_hosts")
        yield Site(server=server, tmp=tmp, rich=rich, big=big, keys=keys, known_hosts=known)


def _auth(site: Site, who: str = "alice") -> list[str]:
    return ["--ssh-key", str(site.keys[who]), "--known-hosts", str(site.known_hosts)]


def test_clone_and_incremental_pull_over_ssh(site: Site, tmp_path: Path) -> None:
    """An ssh:// clone equals hg's own clone; a pull after a merge and a bookmark move
    brings exactly the two new changesets and both bookmarks."""
    dest = tmp_path / "clone"
    result = hgwire_ssh(site, "clone", site.url("rich"), dest, *_auth(site))
    assert result.returncode == 0, result.stderr
    hg("clone", "-q", "-U", "--pull", site.rich, tmp_path / "ref")
    assert repo_summary(dest) == repo_summary(tmp_path / "ref")
    verify(dest)

    advance_rich_repo(site.rich)
    result = hgwire_ssh(site, "pull", "-R", dest, *_auth(site))  # URL from paths.default
    assert result.returncode == 0, result.stderr
    assert "added 2 changesets" in result.stdout
    assert "updated 2 bookmarks" in result.stdout
    again = hgwire_ssh(site, "pull", "-R", dest, *_auth(site))
    assert "added 0 changesets" in again.stdout, again.stderr
    hg("clone", "-q", "-U", "--pull", site.rich, tmp_path / "ref2")
    assert repo_summary(dest) == repo_summary(tmp_path / "ref2")
    verify(dest)


def test_response_larger_than_the_window(site: Site, tmp_path: Path) -> None:
    """A 3 MiB file (more than the 2 MiB channel window) arrives whole, via an RSA key
    (signed with rsa-sha2-512: the server refuses SHA-1 signatures)."""
    dest = tmp_path / "big"
    result = hgwire_ssh(site, "clone", site.url("big"), dest, *_auth(site, "alice_rsa"))
    assert result.returncode == 0, result.stderr
    verify(dest)
    hg("update", "-q", "-R", dest, "tip")
    assert (dest / "random.bin").read_bytes() == (site.big / "random.bin").read_bytes()


def test_unknown_host_key_is_refused_then_accepted_on_request(site: Site, tmp_path: Path) -> None:
    """A server missing from known_hosts is refused with the line to add; with
    --accept-new-host-key the key is recorded and later clones need no flag."""
    known = tmp_path / "known_hosts"
    known.write_text("", encoding="utf-8")
    args = ["--ssh-key", str(site.keys["alice"]), "--known-hosts", str(known)]
    refused = hgwire_ssh(site, "clone", site.url("rich"), tmp_path / "a", *args)
    assert refused.returncode == 1
    assert f"host key of [127.0.0.1]:{site.port} is not known" in refused.stderr
    assert host_key_line(site.server, site.port).strip() in refused.stderr
    assert str(known) in refused.stderr and "--accept-new-host-key" in refused.stderr
    assert not (tmp_path / "a").exists()
    assert known.read_text() == ""

    accepted = hgwire_ssh(
        site, "clone", site.url("rich"), tmp_path / "b", *args, "--accept-new-host-key"
    )
    assert accepted.returncode == 0, accepted.stderr
    assert known.read_text().count("ssh-ed25519") == 1
    later = hgwire_ssh(site, "clone", site.url("rich"), tmp_path / "c", *args)
    assert later.returncode == 0, later.stderr


def test_changed_host_key_is_refused_even_with_accept_new(site: Site, tmp_path: Path) -> None:
    """A known_hosts entry with another key for the server is refused, naming the line."""
    other = keygen(tmp_path / "other").with_suffix(".pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{site.port} {other[0]} {other[1]}\n", encoding="utf-8")
    args = ["--ssh-key", str(site.keys["alice"]), "--known-hosts", str(known)]
    refused = hgwire_ssh(
        site, "clone", site.url("rich"), tmp_path / "a", *args, "--accept-new-host-key"
    )
    assert refused.returncode == 1
    assert "has CHANGED" in refused.stderr and f"{known} line 1" in refused.stderr
    assert not (tmp_path / "a").exists()


def test_wrong_user_key_is_refused(site: Site, tmp_path: Path) -> None:
    """carol's key is not alice's: permission denied, naming the user and the key."""
    refused = hgwire_ssh(site, "clone", site.url("rich"), tmp_path / "a", *_auth(site, "carol"))
    assert refused.returncode == 1
    assert "permission denied" in refused.stderr and "'alice'" in refused.stderr
    assert "ssh-ed25519 SHA256:" in refused.stderr
    assert not (tmp_path / "a").exists()
    none = hgwire_ssh(
        site, "clone", site.url("rich"), tmp_path / "b", "--known-hosts", str(site.known_hosts)
    )
    assert none.returncode == 1 and "no SSH key to offer" in none.stderr


def test_unknown_repository_is_refused(site: Site, tmp_path: Path) -> None:
    """The server's preamble refusal is shown as is."""
    refused = hgwire_ssh(site, "clone", site.url("nope"), tmp_path / "a", *_auth(site))
    assert refused.returncode == 1 and "'nope' not found" in refused.stderr


@pytest.mark.skipif(not os.path.exists(SSH_AGENT), reason="ssh-agent not installed")
def test_keys_from_ssh_agent(site: Site, tmp_path: Path) -> None:
    """With no key file, the agent at SSH_AUTH_SOCK signs (an RSA key: SHA-2 flags)."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen([SSH_AGENT, "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert time.monotonic() < deadline and agent.poll() is None, "ssh-agent did not start"
            time.sleep(0.05)
        env = {"SSH_AUTH_SOCK": str(sock)}
        subprocess.run(
            [SSH_ADD, "-q", str(site.keys["alice_rsa"])],
            check=True,
            env={**hg_env(), **env},
            timeout=30,
            capture_output=True,
        )
        result = hgwire_ssh(
            site,
            "clone",
            site.url("rich"),
            tmp_path / "a",
            "--known-hosts",
            str(site.known_hosts),
            env=env,
        )
        assert result.returncode == 0, result.stderr
        verify(tmp_path / "a")
    finally:
        agent.terminate()
        agent.wait(30)


# -- window handling, on Conch's own connection and channel classes ----------------------


class _PacketRecorder:
    """The SSH transport as the connection service sees it: records sent packets."""

    def __init__(self) -> None:
        self.packets: list[tuple[int, bytes]] = []

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.packets.append((kind, payload))


class _Bytes:
    """Collects what the channel delivers."""

    def __init__(self) -> None:
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)


def _open_channel() -> tuple[_Connection, _SubsystemChannel, _PacketRecorder, _Bytes]:
    url = parse_url("ssh://alice@127.0.0.1:22/rich")
    attempt = _Attempt(
        reactor=None, url=url, port=22, options=ClientOptions(), file_keys=[], notes=[]
    )
    conn = _Connection(attempt)
    recorder = _PacketRecorder()
    conn.transport = recorder  # type: ignore[assignment]
    chan = _SubsystemChannel(attempt, conn)
    chan.id = 0
    conn.channels[0] = chan
    conn.localToRemoteChannel[0] = 7
    conn.channelsToRemoteChannel[chan] = 7
    sink = _Bytes()
    chan.protocol = sink  # type: ignore[assignment]
    return conn, chan, recorder, sink


def _adjustments(recorder: _PacketRecorder) -> list[int]:
    from twisted.conch.ssh.connection import MSG_CHANNEL_WINDOW_ADJUST

    return [
        struct.unpack(">2L", payload)[1]
        for kind, payload in recorder.packets
        if kind == MSG_CHANNEL_WINDOW_ADJUST
    ]


def _data(conn: _Connection, size: int) -> None:
    conn.ssh_CHANNEL_DATA(struct.pack(">L", 0) + common.NS(b"x" * size))


def test_paused_channel_grants_no_window_until_resumed() -> None:
    """While paused the server can send at most one window; resuming refills it once."""
    conn, chan, recorder, sink = _open_channel()
    chan.pauseProducing()
    packet = 32768
    for _ in range(WINDOW // packet):
        _data(conn, packet)
    assert sink.received == WINDOW and chan.localWindowLeft == 0
    assert _adjustments(recorder) == []
    # A server ignoring the window is cut off, not buffered.
    _data(conn, packet)
    assert sink.received == WINDOW and chan.localClosed
    chan.localClosed = False  # (undo the cut-off to see what resuming sends)
    chan.resumeProducing()
    assert _adjustments(recorder) == [WINDOW]


def test_running_channel_keeps_the_window_open() -> None:
    """Unpaused, the window is topped up as soon as half of it is used."""
    conn, chan, recorder, sink = _open_channel()
    for _ in range(WINDOW // 32768):
        _data(conn, 32768)
    assert sink.received == WINDOW
    assert _adjustments(recorder), "no window adjustment was sent"
    assert chan.localWindowLeft >= WINDOW // 2
