"""Crash recovery units: ``hgwire_tw.repo.recovery`` on real repositories left behind by
real (killed or live) processes, the pool's use of it, and the push failure answers of
``hgwire_tw.v1.dispatch`` (``hgwire_tw.v1.failures``)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from mercurial import bundle2, hg
from mercurial import error as hgerror

from hgwire_tw.access import Grant
from hgwire_tw.repo import recovery
from hgwire_tw.repo.pool import RepositoryPool
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.repo.ui import make_ui
from hgwire_tw.v1 import dispatch, failures
from hgwire_tw.v1.protocol import ProtocolFacts, SpooledPayload, V1Protocol
from hgwire_tw.v1.results import (
    V1LegacyStream,
    V1OutOfBandError,
    V1PushError,
    V1PushResult,
    V1Result,
)
from tests.faults import abandon_transaction, hold_lock, journal_entries, lock_files
from tests.repobuilders import hg as run_hg
from tests.repobuilders import log_nodes, make_linear_repo, verify


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_linear_repo(tmp_path_factory.mktemp("base") / "repo", commits=3)


@pytest.fixture
def repo_path(base: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "repo"
    shutil.copytree(base, dest, symlinks=True)
    return dest


def _open(path: Path) -> Any:
    return hg.repository(make_ui(), os.fsencode(path))


def test_a_clean_repository_needs_nothing(repo_path: Path) -> None:
    """No journal, no lock: nothing to do, and no lock left by looking."""
    assert not recovery.needs_attention(repo_path)
    assert recovery.recover_abandoned(_open(repo_path), timeout=0) is None
    assert not lock_files(repo_path)


def test_an_abandoned_transaction_is_rolled_back_and_dead_locks_broken(repo_path: Path) -> None:
    """A dead process's transaction: rolled back with Mercurial's recover() (the garbage
    it appended is cut, the file it created removed), its locks broken, verify clean."""
    abandon_transaction(repo_path)
    assert recovery.needs_attention(repo_path) and recovery.has_journal(repo_path)
    outcome = recovery.recover_abandoned(_open(repo_path), timeout=0)
    assert outcome == recovery.Recovered(
        repository=str(repo_path),
        transaction="abandoned-by-test",
        files=2,
        truncated_bytes=len(b"garbage past the journal's offset")
        + len(b"a store file the rollback must remove"),
    )
    assert "abandoned-by-test" in outcome.summary() and str(repo_path) in outcome.summary()
    assert not recovery.needs_attention(repo_path)
    assert not (repo_path / ".hg" / "store" / "data" / "ghost.i").exists()
    verify(repo_path)


def test_a_live_transaction_is_not_abandoned(repo_path: Path) -> None:
    """A live process inside a transaction: waited for, then refused naming it; its
    journal and lock are left alone."""
    holder = hold_lock(repo_path, journal=True)
    try:
        with pytest.raises(recovery.RepositoryLocked) as info:
            recovery.recover_abandoned(_open(repo_path), timeout=1)
        assert f"locked by process {holder.pid} on host" in str(info.value)
        assert "waiting 1 s" in str(info.value)
        assert journal_entries(repo_path) is not None and holder.poll() is None
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(30) == 0
    assert recovery.recover_abandoned(_open(repo_path), timeout=0) is None
    verify(repo_path)


def test_the_pool_recovers_before_jobs_and_waits_only_for_writes(
    repo_path: Path, pump_reactor: Any
) -> None:
    """pool.repository() rolls an abandoned journal back; with a live writer it serves
    reads at once, and refuses a write after lock_timeout."""
    pool = RepositoryPool(pump_reactor, size=1, lock_timeout=1)
    served = ServedRepository("r", repo_path)
    abandon_transaction(repo_path)
    repo = pool.repository(served)
    assert not recovery.needs_attention(repo_path)
    assert len(repo) == 3
    assert repo.ui.configint(b"ui", b"timeout") == 1
    holder = hold_lock(repo_path, journal=True)
    try:
        assert len(pool.repository(served)) == 3
        with pytest.raises(recovery.RepositoryLocked):
            pool.repository(served, write=True)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)


def test_recover_all_reports_what_it_rolled_back(
    repo_path: Path, base: Path, tmp_path: Path, pump_reactor: Any
) -> None:
    """The start-up pass goes through every repository; the broken one is recovered,
    the clean one untouched."""
    clean = tmp_path / "clean"
    shutil.copytree(base, clean, symlinks=True)
    abandon_transaction(repo_path)
    pool = RepositoryPool(pump_reactor, size=1, lock_timeout=1)
    pool.start()
    try:
        repos = [ServedRepository("clean", clean), ServedRepository("r", repo_path)]
        done = pump_reactor.result_of(pool.recover_all(lambda: repos))
    finally:
        pool.stop()
    assert [d.repository for d in done] == [str(repo_path)]
    assert not lock_files(repo_path) and not lock_files(clean)


def _bundle(path: Path, base: Path, tmp_path: Path, kind: str) -> bytes:
    """A bundle of one new changeset on top of ``base``."""
    client = tmp_path / f"client-{kind}"
    run_hg("clone", "-q", base, client)
    (client / "new.txt").write_text("new\n")
    run_hg("commit", "-A", "-q", "-m", "new", cwd=client)
    out = tmp_path / f"{kind}.hg"
    run_hg("bundle", "-q", "-t", kind, "-r", "tip", "--base", "tip^", out, cwd=client)
    return out.read_bytes()


#: Everything granted: these tests are about failures, not permissions.
EVERYTHING = Grant(read=True, write=True)


class _Split:
    """A payload that arrives in two pieces, split after its first two bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def pieces(self) -> Any:
        return iter([self.data[:2], self.data[2:]])


def _proto(transport: str, payload: bytes) -> V1Protocol:
    return V1Protocol(
        ProtocolFacts(
            transport=transport,  # type: ignore[arg-type]
            grant=EVERYTHING,
            payload=_Split(payload),
        )
    )


def _parts(reply: V1Result) -> list[tuple[bytes, dict[bytes, bytes]]]:
    assert isinstance(reply, V1LegacyStream)
    unbundler = bundle2.getunbundler(make_ui(), io.BytesIO(b"".join(reply.chunks)))
    return [(p.type, dict(p.params)) for p in unbundler.iterparts()]


def test_unbundle_into_a_freshly_abandoned_journal_recovers_and_retries(
    repo_path: Path, base: Path, tmp_path: Path
) -> None:
    """The journal appeared after the pool's check (its writer died while we waited
    for the lock): unbundle rolls it back and applies the push."""
    payload = _bundle(repo_path, base, tmp_path, "v2")
    repo = _open(repo_path)
    abandon_transaction(repo_path)
    heads = b"666f726365"  # hex("force")
    reply = dispatch.run_v1_command(repo, b"unbundle", {b"heads": heads}, _proto("ssh", payload))
    # ``hg bundle`` files carry no replycaps part: the push asks for no bundle2 reply
    assert reply == V1PushResult(result=0)
    assert len(log_nodes(repo_path)) == 4
    verify(repo_path)


@pytest.mark.parametrize(
    ("transport", "kind", "expected"),
    [
        ("ssh", "v2", "bundle2"),
        ("https", "v2", "bundle2"),
        ("ssh", "v1", V1PushError),
        ("http", "v1", V1OutOfBandError),
    ],
)
def test_an_unbundle_that_raises_is_answered_in_the_clients_form(
    repo_path: Path, base: Path, tmp_path: Path, transport: str, kind: str, expected: object
) -> None:
    """A hook raising a plain exception: bundle2 pushes get an error:abort reply, bundle1
    pushes the transport's failed-push form; the text names an incident, not the bug."""
    payload = _bundle(repo_path, base, tmp_path, "v2" if kind == "v2" else "gzip-v1")
    hook = tmp_path / "boom.py"
    hook.write_text("def boom(**kw):\n    raise ValueError('secret detail')\n")
    with open(repo_path / ".hg" / "hgrc", "a") as f:
        f.write(f"[hooks]\npretxnchangegroup.boom = python:{hook}:boom\n")
    repo = _open(repo_path)
    proto = _proto(transport, payload)
    reply = dispatch.run_v1_command(repo, b"unbundle", {b"heads": b"666f726365"}, proto)
    if expected == "bundle2":
        ((ptype, params),) = _parts(reply)
        assert ptype == b"error:abort"
        text = params[b"message"]
    else:
        assert isinstance(reply, expected)  # type: ignore[arg-type]
        text = reply.message  # type: ignore[union-attr]
    assert text.startswith(b"internal server error (incident ")
    assert b"secret detail" not in text
    assert len(log_nodes(repo_path)) == 3


def test_failure_texts() -> None:
    """Mercurial's errors keep their text (and hint); a held lock names its holder;
    anything else is an incident; bundle2 parameters are clipped to 255 bytes."""
    msg, hint = failures.describe_failure(hgerror.RepoError(b"bad", hint=b"do x"))
    assert (msg, hint) == (b"bad", b"do x")
    held = hgerror.LockHeld(11, b"/r/.hg/store/lock", b"repo", b"box/4026531836:4242")
    assert failures.describe_failure(held)[0].startswith(
        b"the repository is locked by process 4242 on host box;"
    )
    assert failures.describe_failure(KeyError("x"))[0].startswith(b"internal server error")
    reply = failures.push_failure(b"x" * 1000, b"h", transport="ssh", bundle2=True)
    ((_, params),) = _parts(reply)
    assert len(params[b"message"]) == 255 and params[b"hint"] == b"h"


def test_payload_kind() -> None:
    """The spooled payload's magic tells bundle2 from bundle1 (split across pieces)."""
    assert _proto("ssh", b"HG20\0\0\0\0").payload_is_bundle2()
    assert not _proto("ssh", b"HG10GZxxxx").payload_is_bundle2()
    assert not _proto("ssh", b"").payload_is_bundle2()


def test_a_push_whose_client_went_away_is_not_a_bug(repo_path: Path) -> None:
    """The transport closed the spooled payload (the client disconnected): reading it
    says so (ConnectionAbortedError, not a closed-file ValueError), and unbundle ends
    quietly without a traceback, applying nothing."""
    import tempfile

    from twisted.logger import globalLogPublisher

    from hgwire_tw.v1.protocol import file_payload

    spool = tempfile.TemporaryFile()
    spool.write(b"HG20" + b"\0" * 100)
    spool.close()
    with pytest.raises(ConnectionAbortedError):
        list(file_payload(spool))
    proto = V1Protocol(
        ProtocolFacts(transport="https", grant=EVERYTHING, payload=SpooledPayload(fileobj=spool))
    )
    critical: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            critical.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        reply = dispatch.run_v1_command(
            _open(repo_path), b"unbundle", {b"heads": b"666f726365"}, proto
        )
    finally:
        globalLogPublisher.removeObserver(observe)
    assert isinstance(reply, V1OutOfBandError)
    assert critical == []
    assert len(log_nodes(repo_path)) == 3
