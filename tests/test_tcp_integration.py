"""``hgwire clone hgwire://…`` against the real service's raw TCP port."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.repobuilders import hg, repo_summary, verify
from tests.servers import running_server
from tests.test_client_http import added, hgwire

TCP = "tcp:0:interface=127.0.0.1"


def test_clone_over_tcp_equals_source_despite_bad_clients(rich_repo: Path, tmp_path: Path) -> None:
    """A TCP clone equals hg's own clone while garbage, slow and vanishing clients connect."""
    ref = tmp_path / "ref"
    hg("clone", "-q", "-U", "--pull", rich_repo, ref)
    with running_server(tmp_path, "--repo", f"rich={rich_repo}", "--tcp", TCP) as server:
        port = server.ports["tcp"][0]
        bad: list[socket.socket] = []
        try:
            for payload in (
                b"GET / HTTP/1.0\r\n\r\n",  # garbage preamble
                b"hgwire-v2 rich\n\x01\x02\x03\x04\x05\x06\x07\x08\x09",  # garbage frames
                b"hgwire-v2 rich\n\x10\x00\x00",  # truncated frame, then silence
                b"hgwire-v",  # slow loris
            ):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(payload)
                bad.append(s)
            vanishing = socket.create_connection(("127.0.0.1", port), timeout=10)
            vanishing.sendall(b"hgwire-v2 rich\n")
            vanishing.close()
            result = hgwire("clone", f"hgwire://127.0.0.1:{port}/rich", tmp_path / "clone")
            assert result.returncode == 0, result.stderr
            assert added(result.stdout) == len(repo_summary(ref)["nodes"])  # type: ignore[arg-type]
            refused = hgwire("clone", f"hgwire://127.0.0.1:{port}/nope", tmp_path / "nope")
            assert refused.returncode == 1 and "not found" in refused.stderr
            # the garbage client got an error line and was closed
            bad[0].settimeout(10)
            assert bad[0].recv(1024).startswith(b"error ")
        finally:
            for s in bad:
                s.close()
    assert repo_summary(tmp_path / "clone") == repo_summary(ref)
    verify(tmp_path / "clone")
