"""Raw TCP port under abuse, with real sockets: stalled and vanishing clients mid-response,
a slow loris timed out by --tcp-handshake-timeout, while real clones keep working."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

from hgwire_tw.core.reactor import ClientFrameReactor
from tests.repobuilders import hg, hg_out, init_repo, repo_summary, verify
from tests.servers import running_server
from tests.test_client_http import hgwire

TCP = "tcp:0:interface=127.0.0.1"


def _big_repo(path: Path) -> str:
    """One changeset with an incompressible 6 MB file; returns its node (hex)."""
    init_repo(path)
    (path / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    hg("commit", "-q", "-A", "-m", "big", "-u", "test", "-d", "0 0", cwd=path)
    hg("phase", "--public", "-r", "tip", cwd=path)  # a clone from a server is public
    return hg_out("log", "-r", "tip", "-T", "{node}", cwd=path).strip()


def _request_big_response(port: int, node: str) -> socket.socket:
    """Open a connection asking for the big file's contents; nothing is read yet."""
    client = ClientFrameReactor()
    _, actions = client.call_command(
        b"filesdata",
        {
            b"revisions": [{b"type": b"changesetexplicit", b"nodes": [bytes.fromhex(node)]}],
            b"fields": {b"revision"},
        },
    )
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"hgwire-v2 big\n" + actions[0].data)
    return s


def _reset(s: socket.socket) -> None:
    """Vanish abruptly: close with a TCP reset instead of a clean FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_stalled_vanishing_and_slow_clients_never_disturb_a_clone(tmp_path: Path) -> None:
    """Clones succeed while other clients stall mid-response, vanish mid-response and dawdle."""
    node = _big_repo(tmp_path / "big")
    with running_server(
        tmp_path,
        "--repo", f"big={tmp_path / 'big'}",
        "--tcp", TCP,
        "--tcp-streams", "3",
        "--tcp-handshake-timeout", "2",
    ) as server:  # fmt: skip
        port = server.ports["tcp"][0]
        url = f"hgwire://127.0.0.1:{port}/big"
        stalled = _request_big_response(port, node)  # asks, then never reads
        loris = socket.create_connection(("127.0.0.1", port), timeout=30)
        loris.sendall(b"hgwire-v")
        vanishing = []
        for _ in range(3):
            s = _request_big_response(port, node)
            got = b""
            while len(got) < 100_000:  # well inside the 6 MB response
                chunk = s.recv(65536)
                assert chunk, "server closed early"
                got += chunk
            assert got.startswith(b"ok\n")
            vanishing.append(s)
        for s in vanishing:
            _reset(s)
        try:
            first = hgwire("clone", url, tmp_path / "first")
            assert first.returncode == 0, first.stderr
            # the slow loris was answered and closed by the handshake timeout
            answer = b""
            while chunk := loris.recv(1024):
                answer += chunk
            assert answer == b"error handshake timeout\n"
        finally:
            loris.close()
            _reset(stalled)
        second = hgwire("clone", url, tmp_path / "second")
        assert second.returncode == 0, second.stderr
        log = server.log()
    want = repo_summary(tmp_path / "big")
    for name in ("first", "second"):
        assert repo_summary(tmp_path / name) == want
        verify(tmp_path / name)
    assert "Traceback" not in log and "Unhandled" not in log, log
