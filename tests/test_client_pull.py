"""The client's pull logic against the server's own command handlers, in process.

No network: ``LocalRemote`` runs the v2 handlers on the source repository and passes
every object through CBOR, so what the pull logic sees is what a server would send.
The reference result is Mercurial's own ``clone -U --pull`` of the same source.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from hgwire_tw.client.pull import PullStats, pull
from hgwire_tw.client.repo import open_or_create
from hgwire_tw.commands.common import served_view
from hgwire_tw.commands.registry import COMMANDS, capabilities_descriptor, normalize_args
from hgwire_tw.core import cbor
from hgwire_tw.core.cbor import EncodedCBOR
from hgwire_tw.repo.ui import make_ui
from tests.repobuilders import advance_rich_repo, hg, repo_summary, verify


class InjectedFailure(Exception):
    """Raised by LocalRemote to simulate a connection dropping mid-transfer."""


class LocalRemote:
    """A ``Remote`` answering from a repository on disk through the command handlers."""

    def __init__(self, path: Path, fail_after: dict[bytes, int] | None = None) -> None:
        from mercurial import hg as hgmod

        self.url = f"local:{path}"
        self.repo = hgmod.repository(make_ui(), str(path).encode())
        self.fail_after = dict(fail_after or {})
        self.calls: list[bytes] = []

    def capabilities(self) -> dict[bytes, Any]:
        caps = cbor.loads(cbor.dumps(capabilities_descriptor(self.repo)))
        assert isinstance(caps, dict)
        return caps

    def call(
        self, name: bytes, args: Mapping[bytes, object], *, after: object = None
    ) -> Iterator[object]:
        # ``after`` (pipelining) changes nothing here: answers are made as they are read.
        self.calls.append(name)
        spec = COMMANDS[name]
        normalized = normalize_args(spec, cbor.loads(cbor.dumps(dict(args))))  # type: ignore[arg-type]
        limit = self.fail_after.get(name)
        count = 0
        # One decoder for the whole response: a streamed bytestring spans many objects.
        decoder = cbor.CBORSequenceDecoder()
        for obj in spec.handler(served_view(self.repo.unfiltered()), normalized):
            data = bytes(obj) if isinstance(obj, EncodedCBOR) else cbor.dumps(obj)
            for value in decoder.feed(data):
                if limit is not None and count >= limit:
                    raise InjectedFailure(f"{name!r} dropped after {count} objects")
                count += 1
                yield value

    def call_many(
        self, commands: Sequence[tuple[bytes, Mapping[bytes, object]]]
    ) -> list[Iterator[object]]:
        return [iter(list(self.call(n, a))) for n, a in commands]


def local_pull(dest: Path, src: Path, **kw: Any) -> PullStats:
    remote = LocalRemote(src, **kw)
    repo = open_or_create(dest, create=not dest.exists())
    return pull(repo, remote)


def test_clone_equals_reference(rich_repo: Path, tmp_path: Path) -> None:
    """A pull into an empty repository equals hg's own clone --pull and verifies."""
    hg("clone", "-q", "-U", "--pull", rich_repo, tmp_path / "ref")
    stats = local_pull(tmp_path / "dest", rich_repo)
    assert repo_summary(tmp_path / "dest") == repo_summary(tmp_path / "ref")
    verify(tmp_path / "dest")
    assert stats.changesets == len(repo_summary(tmp_path / "ref")["nodes"])  # type: ignore[arg-type]


def test_drafts_stay_draft_on_non_publishing(rich_repo: Path, tmp_path: Path) -> None:
    """From a non-publishing source, drafts arrive draft and secrets never arrive."""
    with open(rich_repo / ".hg" / "hgrc", "a", encoding="utf-8") as f:
        f.write("[phases]\npublish = false\n")
    local_pull(tmp_path / "dest", rich_repo)
    phases = hg("log", "-r", "all()", "-T", "{phase}\n", cwd=tmp_path / "dest").stdout.split()
    assert b"draft" in phases and b"secret" not in phases
    verify(tmp_path / "dest")


def test_incremental_pull_fetches_only_new(rich_repo: Path, tmp_path: Path) -> None:
    """A second pull after a commit, a merge and a bookmark move brings exactly those."""
    dest = tmp_path / "dest"
    local_pull(dest, rich_repo)
    advance_rich_repo(rich_repo)
    stats = local_pull(dest, rich_repo)
    assert stats.changesets == 2
    assert stats.bookmarks == 2  # "main" (active, moved by the commits) and "stable-bm"
    hg("clone", "-q", "-U", "--pull", rich_repo, tmp_path / "ref")
    assert repo_summary(dest) == repo_summary(tmp_path / "ref")
    verify(dest)
    again = local_pull(dest, rich_repo)
    assert (again.changesets, again.manifests, again.files) == (0, 0, 0)


@pytest.mark.parametrize("command", [b"changesetdata", b"manifestdata", b"filesdata"])
def test_interrupted_pull_leaves_nothing_and_rerun_completes(
    rich_repo: Path, tmp_path: Path, command: bytes
) -> None:
    """A failure mid-transfer aborts the transaction; running the pull again completes."""
    dest = tmp_path / "dest"
    with pytest.raises(InjectedFailure):
        local_pull(dest, rich_repo, fail_after={command: 5})
    assert hg("log", "-r", "all()", "-T", "x", cwd=dest).stdout == b""
    verify(dest)
    local_pull(dest, rich_repo)
    hg("clone", "-q", "-U", "--pull", rich_repo, tmp_path / "ref")
    assert repo_summary(dest) == repo_summary(tmp_path / "ref")
    verify(dest)


# ---------------------------------------------------------------- the store path


def _streamable(rich_repo: Path, *, publishing: bool) -> Path:
    """The rich repository without its secret changeset (made draft), so the server may
    serve its store; optionally non-publishing, so drafts must stay draft."""
    hg("phase", "--draft", "--force", "-r", "secret()", cwd=rich_repo)
    if not publishing:
        with open(rich_repo / ".hg" / "hgrc", "a", encoding="utf-8") as f:
            f.write("[phases]\npublish = false\n")
    return rich_repo


def _reference(src: Path, dest: Path) -> dict[str, object]:
    hg("clone", "-q", "-U", "--pull", src, dest)
    return repo_summary(dest)


@pytest.mark.parametrize("publishing", [True, False], ids=["publishing", "non-publishing"])
def test_store_clone_equals_reference(rich_repo: Path, tmp_path: Path, publishing: bool) -> None:
    """An empty destination gets the store files in one command, then the ordinary pull
    (bookmarks; nothing newer here): same changesets, phases, bookmarks, heads as
    ``hg clone --pull``, and ``hg verify`` clean."""
    src = _streamable(rich_repo, publishing=publishing)
    remote = LocalRemote(src)
    dest = tmp_path / "dest"
    stats = pull(open_or_create(dest, create=True), remote)
    assert b"rawstorefiledata" in remote.calls
    assert b"manifestdata" not in remote.calls and b"filesdata" not in remote.calls
    assert stats.extra["store files"] > 3
    assert repo_summary(dest) == _reference(src, tmp_path / "ref")
    phases = hg("log", "-r", "all()", "-T", "{phase}\n", cwd=dest).stdout.split()
    assert (b"draft" in phases) is (not publishing)
    verify(dest)
    # A later pull is the ordinary incremental one.
    advance_rich_repo(src)
    assert local_pull(dest, src).changesets == 2
    assert repo_summary(dest) == _reference(src, tmp_path / "ref2")
    verify(dest)


def test_store_clone_like_mercurial_603(rich_repo: Path, tmp_path: Path) -> None:
    """From a server offering only upstream's file types, the changelog and manifests
    are copied and the file revisions fetched with filesdata."""
    src = _streamable(rich_repo, publishing=True)
    remote = LocalRemote(src)
    caps = remote.capabilities()
    del caps[b"commands"][b"rawstorefiledata"][b"filetypes"]
    remote.capabilities = lambda: caps  # type: ignore[method-assign]
    dest = tmp_path / "dest"
    stats = pull(open_or_create(dest, create=True), remote)
    assert remote.calls.count(b"rawstorefiledata") == 1 and b"filesdata" in remote.calls
    assert b"manifestdata" not in remote.calls
    assert stats.files > 0
    assert repo_summary(dest) == _reference(src, tmp_path / "ref")
    verify(dest)


def test_revision_path_when_forced_or_secret(rich_repo: Path, tmp_path: Path) -> None:
    """``stream=False`` and a server with secret changesets both take the revision path;
    the secret changeset never arrives."""
    remote = LocalRemote(rich_repo)
    assert b"rawstorefiledata" not in remote.capabilities()[b"commands"]
    pull(open_or_create(tmp_path / "secret", create=True), remote)
    assert b"rawstorefiledata" not in remote.calls
    assert (
        b"secret" not in hg("log", "-r", "all()", "-T", "{phase}\n", cwd=tmp_path / "secret").stdout
    )
    src = _streamable(rich_repo, publishing=True)
    remote = LocalRemote(src)
    pull(open_or_create(tmp_path / "forced", create=True), remote, stream=False)
    assert b"rawstorefiledata" not in remote.calls and b"filesdata" in remote.calls
    assert repo_summary(tmp_path / "forced") == _reference(src, tmp_path / "ref")
    verify(tmp_path / "forced")


@pytest.mark.parametrize("after", [3, 40])
def test_interrupted_store_clone_leaves_nothing(
    rich_repo: Path, tmp_path: Path, after: int
) -> None:
    """A store copy broken off mid-way leaves an empty repository without a single store
    file; the same pull run again completes it."""
    src = _streamable(rich_repo, publishing=True)
    dest = tmp_path / "dest"
    with pytest.raises(InjectedFailure):
        local_pull(dest, src, fail_after={b"rawstorefiledata": after})
    store = dest / ".hg" / "store"
    left = [p for p in store.rglob("*") if p.is_file() and p.name not in ("requires", "undo")]
    assert [p.name for p in left if p.suffix in (".i", ".d")] == []
    assert hg("log", "-r", "all()", "-T", "x", cwd=dest).stdout == b""
    verify(dest)
    local_pull(dest, src)
    assert repo_summary(dest) == _reference(src, tmp_path / "ref")
    verify(dest)


def test_obsolete_changesets_take_the_revision_path(rich_repo: Path, tmp_path: Path) -> None:
    """Obsolescence markers are not part of a store copy: a server with any offers no
    store files, and the hidden changeset stays hidden in the clone."""
    src = _streamable(rich_repo, publishing=False)
    with open(src / ".hg" / "hgrc", "a", encoding="utf-8") as f:
        f.write("[experimental]\nevolution = all\n")
    hg("debugobsolete", hg("log", "-r", "tip", "-T", "{node}", cwd=src).stdout.decode(), cwd=src)
    remote = LocalRemote(src)
    assert b"rawstorefiledata" not in remote.capabilities()[b"commands"]
    dest = tmp_path / "dest"
    pull(open_or_create(dest, create=True), remote)
    assert b"rawstorefiledata" not in remote.calls
    visible = hg("log", "-r", "all()", "-T", "{node}\n", cwd=src).stdout.split()
    assert sorted(hg("log", "-r", "all()", "-T", "{node}\n", cwd=dest).stdout.split()) == sorted(
        visible
    )
    verify(dest)
