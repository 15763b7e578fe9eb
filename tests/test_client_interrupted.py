"""Interrupted clones and pulls over a real connection cut, then completed by a re-run.

A TCP proxy in the test forwards ``hgwire://`` traffic to the real service and, for the
connections it is told to, closes both sides after N bytes of the server's answer. The
local repository must then hold nothing of the interrupted transfer (same changesets,
``hg verify`` clean, no transaction journal) and the same command run again must
complete it.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import threading
from pathlib import Path

import pytest

from tests.repobuilders import hg, make_bench_repo, repo_summary, verify
from tests.servers import running_server
from tests.test_client_http import added, hgwire

pytestmark = pytest.mark.timeout(300)


class CuttingProxy:
    """Forwards TCP connections to ``127.0.0.1:upstream``; connection number *i* is cut
    after ``cuts[i]`` bytes from the server (None or past the list: never cut)."""

    def __init__(self, upstream: int, cuts: list[int | None] | None = None) -> None:
        self.upstream = upstream
        self.cuts = list(cuts or [])
        self.sent: list[int] = []  # server→client bytes per connection
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            index = len(self.sent)
            self.sent.append(0)
            cut = self.cuts[index] if index < len(self.cuts) else None
            t = threading.Thread(target=self._relay, args=(client, index, cut), daemon=True)
            t.start()
            self._threads.append(t)

    def _relay(self, client: socket.socket, index: int, cut: int | None) -> None:
        server = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, server], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is server:
                        if cut is not None and self.sent[index] + len(data) >= cut:
                            client.sendall(data[: cut - self.sent[index]])
                            self.sent[index] = cut
                            return  # the cut: both sides closed mid-answer
                        self.sent[index] += len(data)
                        client.sendall(data)
                    else:
                        server.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def url(self, name: str) -> str:
        return f"hgwire://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for t in self._threads:
            t.join(10)


def assert_untouched(dest: Path, before: dict[str, object]) -> None:
    """Nothing of an aborted transfer is left in ``dest``."""
    assert repo_summary(dest) == before
    verify(dest)
    assert not (dest / ".hg" / "store" / "journal").exists()
    recover = hg("recover", cwd=dest, check=False)
    assert b"no interrupted transaction" in recover.stderr + recover.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository whose clone is a few hundred KiB (many changesets, files, a merge)."""
    return make_bench_repo(tmp_path_factory.mktemp("cut") / "src", commits=300, files=40)


def test_cut_clone_leaves_nothing_and_rerun_completes(source: Path, tmp_path: Path) -> None:
    """Clones cut at 25 %, 60 % and 95 % of the answer fail cleanly; the same command
    then clones everything."""
    hg("clone", "-q", "-U", "--pull", source, tmp_path / "ref")
    expected = repo_summary(tmp_path / "ref")
    with running_server(tmp_path, "--repo", f"src={source}", "--tcp", "tcp:0") as server:
        proxy = CuttingProxy(server.ports["tcp"][0])
        try:
            whole = hgwire("clone", "-q", proxy.url("src"), tmp_path / "whole")
            assert whole.returncode == 0, whole.stderr
            total = proxy.sent[0]
            assert total > 100_000, total
            for i, fraction in enumerate((0.25, 0.6, 0.95)):
                proxy.cuts = [None] * len(proxy.sent) + [int(total * fraction)]
                dest = tmp_path / f"cut{i}"
                cut = hgwire("clone", proxy.url("src"), dest)
                assert cut.returncode == 1, cut.stdout
                assert "abort" in cut.stderr
                # A transaction either commits whole or not at all: nothing is left.
                assert not dest.exists()
                again = hgwire("clone", proxy.url("src"), dest)
                assert again.returncode == 0, again.stderr
                assert added(again.stdout) == len(expected["nodes"])  # type: ignore[arg-type]
                assert repo_summary(dest) == expected
                verify(dest)
        finally:
            proxy.close()


def test_cut_pull_leaves_nothing_and_rerun_completes(source: Path, tmp_path: Path) -> None:
    """A pull of new commits (with a merge and a bookmark move) cut mid-answer leaves the
    repository as it was; pulling again brings exactly the new changesets."""
    src = tmp_path / "src"
    hg("clone", "-q", source, src)
    with running_server(tmp_path, "--repo", f"src={src}", "--tcp", "tcp:0") as server:
        proxy = CuttingProxy(server.ports["tcp"][0])
        try:
            dest = tmp_path / "clone"
            assert hgwire("clone", "-q", proxy.url("src"), dest).returncode == 0
            hg("update", "-q", "-r", "tip", cwd=src)
            hg("branch", "-q", "-f", "side", cwd=src)
            for n in range(30):
                (src / f"side{n}.txt").write_bytes(os.urandom(10_000 + 100 * n))
                hg("commit", "-A", "-q", "-m", f"side {n}", cwd=src)
            hg("update", "-q", "-r", "default", cwd=src)
            hg("merge", "-q", "-r", "side", cwd=src)
            hg("commit", "-q", "-m", "merge side", cwd=src)
            hg("bookmark", "-q", "-f", "-r", ".", "mark", cwd=src)
            before = repo_summary(dest)

            # How big is the answer to this pull? Pull into a copy to measure it.
            shutil.copytree(dest, tmp_path / "copy", symlinks=True)
            assert hgwire("pull", "-q", "-R", tmp_path / "copy").returncode == 0
            answer = proxy.sent[-1]
            assert answer > 200_000, answer
            proxy.cuts = [None] * len(proxy.sent) + [answer // 2]
            cut = hgwire("pull", "-R", dest)
            assert cut.returncode == 1 and "abort" in cut.stderr, cut.stdout
            assert_untouched(dest, before)

            again = hgwire("pull", "-R", dest)
            assert again.returncode == 0, again.stderr
            assert added(again.stdout) == 31
        finally:
            proxy.close()
    hg("clone", "-q", "-U", "--pull", src, tmp_path / "ref")
    assert repo_summary(dest) == repo_summary(tmp_path / "ref")
    verify(dest)
