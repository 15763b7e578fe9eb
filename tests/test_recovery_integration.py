"""Abandoned transactions, held locks and failing pushes, end to end with real processes:
the service on 127.0.0.1 (HTTPS and SSH), real ``hg`` pushing through it, and helper
processes that hold a repository lock or die inside a transaction."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import (
    Writers,
    abandon_transaction,
    hold_lock,
    journal_entries,
    lock_files,
    make_writers,
    wait_until,
)
from tests.repobuilders import hg, log_nodes, make_linear_repo, verify
from tests.servers import RunningServer, running_server

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/usr/bin/ssh"), reason="OpenSSH client not installed"),
    pytest.mark.timeout(180),
]

TRANSPORTS = ("https", "ssh")
ROLLED_BACK = "rolled back abandoned transaction"


@pytest.fixture(scope="module")
def writers(tmp_path_factory: pytest.TempPathFactory) -> Writers:
    return make_writers(tmp_path_factory.mktemp("writers"))


@pytest.fixture(scope="module")
def base_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_linear_repo(tmp_path_factory.mktemp("base") / "repo", commits=3)


@pytest.fixture
def served_repo(base_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the base repository, to serve and break."""
    dest = tmp_path / "served"
    shutil.copytree(base_repo, dest, symlinks=True)
    return dest


@pytest.fixture
def client(base_repo: Path, tmp_path: Path) -> Path:
    """A clone of the base repository with one new changeset to push."""
    dest = tmp_path / "client"
    hg("clone", "-q", base_repo, dest)
    (dest / "new.txt").write_text("pushed\n")
    hg("commit", "-A", "-q", "-m", "to push", cwd=dest)
    return dest


@pytest.fixture
def server(writers: Writers, served_repo: Path, tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(
        tmp_path, *writers.server_args("--repo", f"r={served_repo}"), http=None
    ) as s:
        yield s


def push(
    writers: Writers,
    server: RunningServer,
    transport: str,
    src: Path,
    *extra: str,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """``hg push`` over ``transport``; not ending within ``timeout`` s fails the test."""
    return hg(
        "push",
        *writers.client_args(),
        *extra,
        writers.url(server, transport, "r"),
        cwd=src,
        check=False,
        timeout=timeout,
    )


def output(proc: subprocess.CompletedProcess[bytes]) -> str:
    return (proc.stdout + proc.stderr).decode("utf-8", "replace")


def test_start_up_rolls_back_an_abandoned_transaction_and_breaks_dead_locks(
    writers: Writers, served_repo: Path, tmp_path: Path
) -> None:
    """A repository left mid-transaction by a dead process is rolled back when the
    server starts (one warning naming it and the transaction); no lock is left."""
    abandon_transaction(served_repo)
    with running_server(
        tmp_path, *writers.server_args("--repo", f"r={served_repo}"), http=None
    ) as server:
        wait_until("the start-up recovery", lambda: ROLLED_BACK in server.log(), timeout=30)
        wait_until("the locks to go", lambda: not lock_files(served_repo), timeout=30)
        lines = [line for line in server.log().splitlines() if ROLLED_BACK in line]
    assert len(lines) == 1, lines
    assert "'abandoned-by-test'" in lines[0] and str(served_repo) in lines[0]
    assert "#warn" in lines[0]
    assert journal_entries(served_repo) is None
    verify(served_repo)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_first_write_rolls_back_a_transaction_abandoned_while_serving(
    writers: Writers, server: RunningServer, served_repo: Path, client: Path, transport: str
) -> None:
    """A transaction abandoned after start-up (another process died in it) is rolled
    back before the next push, which then succeeds (it used to get HTTP 500)."""
    abandon_transaction(served_repo)
    result = push(writers, server, transport, client)
    assert result.returncode == 0, output(result)
    assert log_nodes(served_repo) == log_nodes(client)
    assert sum(ROLLED_BACK in line for line in server.log().splitlines()) == 1
    assert not lock_files(served_repo)
    verify(served_repo)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_live_lock_holder_is_waited_for_then_refused_never_broken(
    writers: Writers, served_repo: Path, client: Path, tmp_path: Path, transport: str
) -> None:
    """A live process inside a transaction keeps its lock: the push waits --lock-timeout
    seconds, fails with a message naming the holder, and the holder's transaction is
    untouched; once it is done the push goes through."""
    with running_server(
        tmp_path,
        *writers.server_args("--repo", f"r={served_repo}", "--lock-timeout", "1"),
        http=None,
    ) as server:
        holder = hold_lock(served_repo, journal=True)
        try:
            result = push(writers, server, transport, client)
            assert result.returncode != 0
            assert f"locked by process {holder.pid} on host" in output(result), output(result)
            assert holder.poll() is None and journal_entries(served_repo) is not None
            assert ROLLED_BACK not in server.log()
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            assert holder.wait(30) == 0  # its own transaction still closed cleanly
        result = push(writers, server, transport, client)
        assert result.returncode == 0, output(result)
        assert "Traceback" not in server.log()
    verify(served_repo)


BOOM = """
def boom(**kwargs):
    raise RuntimeError("injected unbundle failure")
"""


@pytest.mark.parametrize("bundle", ["bundle2", "bundle1"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_unexpected_unbundle_failure_ends_the_push_with_an_error(
    writers: Writers,
    server: RunningServer,
    served_repo: Path,
    client: Path,
    tmp_path: Path,
    transport: str,
    bundle: str,
) -> None:
    """unbundle raising something Mercurial does not catch ends the push within 10 s
    with an error the client prints (bundle2 error part, HTTP out-of-band error or the
    SSH failed-push frame), never a hang or an HTTP 500; the traceback is logged once;
    the repository is unchanged and the server keeps serving."""
    hook = tmp_path / "boom.py"
    hook.write_text(BOOM)
    with open(served_repo / ".hg" / "hgrc", "a") as f:
        f.write(f"[hooks]\npretxnchangegroup.boom = python:{hook}:boom\n")
    before = log_nodes(served_repo)
    extra = ("--config", "devel.legacy.exchange=bundle1") if bundle == "bundle1" else ()
    result = push(writers, server, transport, client, *extra, timeout=10)
    text = output(result)
    assert result.returncode != 0, text
    assert "internal server error (incident " in text, text
    assert "500" not in text
    incident = text.split("internal server error (incident ", 1)[1].split(" ", 1)[0]
    log = server.log()
    assert log.count("RuntimeError: injected unbundle failure") == 1, log
    assert f"incident {incident}" in log
    assert log_nodes(served_repo) == before
    verify(served_repo)
    clone = tmp_path / "after"
    hg("clone", "-q", *writers.client_args(), writers.url(server, transport, "r"), clone)
    assert log_nodes(clone) == before
