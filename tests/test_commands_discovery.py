"""v2 discovery commands against real repositories, checked against hg's own view."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from mercurial.node import bin, hex

from hgwire_tw.core.errors import CommandError
from tests import repobuilders
from tests.repobuilders import hg_out

NULL = b"\0" * 20


def nodes_of(repo: Path, revset: str) -> list[bytes]:
    """Binary nodes of ``revset`` in its order, as ``hg log -r`` sees them (in-process:
    spawning hg costs about a second per call here)."""
    from mercurial import hg as hgmod

    from hgwire_tw.repo.ui import make_ui

    r = hgmod.repository(make_ui(), os.fsencode(repo))
    return [r.changelog.node(rev) for rev in r.revs(revset.encode())]


def test_heads_equal_served_heads(rich_repo_template: Path, call: Any) -> None:
    """heads == the heads of the non-secret changesets; the secret tip is absent."""
    (heads,) = call(rich_repo_template, b"heads")
    assert sorted(heads) == sorted(nodes_of(rich_repo_template, "heads(not secret())"))
    secret = nodes_of(rich_repo_template, "secret()")
    assert secret and not set(secret) & set(heads)


def test_heads_publiconly(rich_repo_template: Path, call: Any) -> None:
    """publiconly gives the heads of the public DAG."""
    (heads,) = call(rich_repo_template, b"heads", {b"publiconly": True})
    assert sorted(heads) == sorted(nodes_of(rich_repo_template, "heads(public())"))


def test_heads_empty_repo(tmp_path: Path, call: Any) -> None:
    """An empty repository answers [nullid]."""
    assert call(repobuilders.init_repo(tmp_path / "e"), b"heads") == [[NULL]]


def test_known(rich_repo_template: Path, call: Any) -> None:
    """known: 1 for visible changesets, 0 for secret and unknown ones; b'' for no nodes."""
    public = nodes_of(rich_repo_template, "0 + max(not secret())")
    secret = nodes_of(rich_repo_template, "secret()")
    (answer,) = call(rich_repo_template, b"known", {b"nodes": [*public, *secret, b"\x11" * 20]})
    assert answer == b"1" * len(public) + b"0" * len(secret) + b"0"
    assert call(rich_repo_template, b"known") == [b""]


def test_known_rejects_non_nodes(rich_repo_template: Path, call: Any) -> None:
    """known with something other than 20-byte nodes is a clean argument error."""
    with pytest.raises(CommandError, match="20-byte"):
        call(rich_repo_template, b"known", {b"nodes": [b"abc"]})


def test_branchmap(rich_repo_template: Path, call: Any) -> None:
    """branchmap == per-branch heads of the served view."""
    (bmap,) = call(rich_repo_template, b"branchmap")
    assert set(bmap) == {b"default", b"stable"}
    for branch, heads in bmap.items():
        # head() is computed by the CLI on the unfiltered repo: take heads of the view.
        expected = nodes_of(rich_repo_template, f"heads(branch({branch.decode()}) - secret())")
        assert sorted(heads) == sorted(expected)


def test_listkeys(rich_repo_template: Path, call: Any) -> None:
    """listkeys gives bookmarks as hex, phases and namespaces like v1."""
    (marks,) = call(rich_repo_template, b"listkeys", {b"namespace": b"bookmarks"})
    out = hg_out("bookmarks", "-T", "{bookmark} {node}\n", cwd=rich_repo_template)
    assert marks == {k.encode(): v.encode() for k, v in (line.split() for line in out.splitlines())}
    (phases,) = call(rich_repo_template, b"listkeys", {b"namespace": b"phases"})
    assert phases[b"publishing"] == b"True"
    (spaces,) = call(rich_repo_template, b"listkeys", {b"namespace": b"namespaces"})
    assert {b"bookmarks", b"phases", b"namespaces"} <= set(spaces)
    assert call(rich_repo_template, b"listkeys", {b"namespace": b"nope"}) == [{}]


@pytest.mark.parametrize("key", ["tip", "0", "stable", "main", "default", "PREFIX"])
def test_lookup(rich_repo_template: Path, call: Any, key: str) -> None:
    """lookup resolves like `hg log -r KEY` on the served view."""
    if key == "PREFIX":
        key = repobuilders.log_nodes(rich_repo_template, "2")[0][:10]
    # The CLI sees the secret changeset; the server resolves names on the served view.
    revset = {"tip": "max(not secret())", "default": "max(branch(default) - secret())"}.get(
        key, key
    )
    assert call(rich_repo_template, b"lookup", {b"key": key.encode()}) == nodes_of(
        rich_repo_template, revset
    )


@pytest.mark.parametrize("key", [b"nope", b"SECRET"])
def test_lookup_unknown(rich_repo_template: Path, call: Any, key: bytes) -> None:
    """Unknown keys and secret changesets give the same CommandError."""
    if key == b"SECRET":
        key = repobuilders.log_nodes(rich_repo_template, "secret()")[0].encode()
    with pytest.raises(CommandError) as info:
        call(rich_repo_template, b"lookup", {b"key": key})
    assert info.value.message == b"unknown revision '%s'"
    assert info.value.args_ == (key,)


def test_pushkey_moves_bookmark(rich_repo: Path, call: Any) -> None:
    """pushkey really moves a bookmark (checked with hg), and a stale old value fails."""
    (marks,) = call(rich_repo, b"listkeys", {b"namespace": b"bookmarks"})
    target = repobuilders.log_nodes(rich_repo, "0")[0].encode()
    args = {b"namespace": b"bookmarks", b"key": b"main", b"old": marks[b"main"], b"new": target}
    assert call(rich_repo, b"pushkey", args) == [True]
    out = hg_out("log", "-r", "main", "-T", "{node}", cwd=rich_repo)
    assert out.encode() == target
    stale = {**args, b"new": repobuilders.log_nodes(rich_repo, "1")[0].encode()}
    assert call(rich_repo, b"pushkey", stale) == [False]  # old value no longer matches
    created = {b"namespace": b"bookmarks", b"key": b"new-bm", b"old": b"", b"new": target}
    assert call(rich_repo, b"pushkey", created) == [True]
    assert "new-bm" in hg_out("bookmarks", cwd=rich_repo)


def test_pushkey_moves_phase(rich_repo: Path, call: Any) -> None:
    """pushkey on the phases namespace turns a draft changeset public."""
    draft = repobuilders.log_nodes(rich_repo, "draft()")[0]
    args = {b"namespace": b"phases", b"key": draft.encode(), b"old": b"1", b"new": b"0"}
    assert call(rich_repo, b"pushkey", args) == [True]
    assert hg_out("log", "-r", draft, "-T", "{phase}", cwd=rich_repo) == "public"


def test_pushkey_bookmark_to_secret_is_refused(rich_repo: Path, call: Any) -> None:
    """A bookmark cannot be pointed at a changeset outside the served view."""
    secret = repobuilders.log_nodes(rich_repo, "secret()")[0].encode()
    args = {b"namespace": b"bookmarks", b"key": b"x", b"old": b"", b"new": secret}
    assert call(rich_repo, b"pushkey", args) == [False]
    assert " x " not in hg_out("bookmarks", cwd=rich_repo)


def test_hex_helper_roundtrip() -> None:
    """(sanity) hex/bin helpers used by these tests agree."""
    assert bin(hex(b"\x01" * 20)) == b"\x01" * 20
