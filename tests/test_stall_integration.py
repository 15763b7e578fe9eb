"""Clients that stop reading cannot starve the server (real sockets, real ``hg``).

With ``--workers 2``, two clients start a large ``getbundle`` and never read its
response. Before the quick lane and the stall timeout they held both workers for as
long as they kept their connections open, and every other client (even its
``capabilities``) queued behind them. Now another client's ``hg clone`` completes: its
handshake and discovery run on the quick lane at once, its ``getbundle`` gets a transfer
worker once ``--stall-timeout`` has cut the stalled transfers, and those are closed and
logged. Timing bounds are generous (a loaded shared machine).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from tests import repobuilders as rb
from tests.servers import RunningServer, running_server

STALLER = "127.0.0.2"
STALL_TIMEOUT = 4
#: Incompressible bytes in the big repository: far more than the loopback socket
#: buffers (a few MiB) take while the client reads nothing.
BIG_BYTES = 24 * 1024 * 1024


def big_repo(path: Path) -> Path:
    """One changeset of random files (the getbundle response is about BIG_BYTES)."""
    rb.init_repo(path)
    for i in range(3):
        (path / f"blob{i}").write_bytes(os.urandom(BIG_BYTES // 3))
    rb.hg("commit", "-A", "-q", "-m", "big", "-d", "0 0", cwd=path)
    return path


def start_stalled_getbundle(server: RunningServer, heads: str) -> socket.socket:
    """A connection that asks for the whole repository and never reads the answer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive window: the server's writes block after a few socket buffers.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind((STALLER, 0))
    s.settimeout(30)
    s.connect(("127.0.0.1", server.http_port))
    args = f"common={'0' * 40}&heads={heads}"
    s.sendall(
        (
            "GET /big?cmd=getbundle HTTP/1.1\r\nHost: test\r\n"
            f"X-HgArg-1: {args}\r\nX-HgProto-1: 0.1 0.2 comp=none\r\n\r\n"
        ).encode()
    )
    return s


def read_until_closed(s: socket.socket, timeout: float) -> tuple[int, bool]:
    """Read everything until the server closes or resets; (bytes, whether it closed)."""
    s.settimeout(timeout)
    got = 0
    try:
        while chunk := s.recv(1 << 20):
            got += len(chunk)
    except (ConnectionResetError, BrokenPipeError):
        return got, True
    except TimeoutError:
        return got, False
    return got, True


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("protocol", ["clone", "pull"])
def test_stalled_getbundles_are_cut_and_others_are_served(tmp_path: Path, protocol: str) -> None:
    big = big_repo(tmp_path / "big")
    small = rb.make_linear_repo(tmp_path / "small", commits=3)
    heads = rb.hg_out("log", "-r", "tip", "-T", "{node}", cwd=big).strip()
    args = (
        *("--repo", f"big={big}", "--repo", f"small={small}"),
        *("--workers", "2", "--stall-timeout", str(STALL_TIMEOUT)),
    )
    with running_server(tmp_path, *args) as server:
        stalled = [start_stalled_getbundle(server, heads) for _ in range(2)]
        try:
            # Both transfer workers are in their streams (the headers went out).
            wait_for(lambda: server.log().count("v1 big getbundle 200") == 2, 60, "both streams")
            started = time.monotonic()
            dest = tmp_path / "copy"
            if protocol == "clone":
                rb.hg("clone", "-q", server.url("small"), str(dest), cwd=tmp_path)
            else:
                rb.hg("init", str(dest), cwd=tmp_path)
                rb.hg("pull", "-q", server.url("small"), cwd=dest)
            took = time.monotonic() - started
            assert rb.log_nodes(dest) == rb.log_nodes(small)
            # It needed a transfer worker, so it waited for a cut; but not for long.
            assert took < STALL_TIMEOUT + 60

            outcomes = [read_until_closed(s, 60) for s in stalled]
            for got, closed in outcomes:
                assert closed, "the stalled transfer was not closed"
                assert got < BIG_BYTES, "the stalled transfer was not cut"
        finally:
            for s in stalled:
                s.close()
        log = server.log()
    cut = [line for line in log.splitlines() if "transfer cut" in line]
    assert len(cut) == 2, log
    for line in cut:
        assert "v1 big getbundle for anonymous from 127.0.0.2 over http" in line
        assert f"took nothing for {STALL_TIMEOUT} seconds" in line
    assert "Traceback" not in log
