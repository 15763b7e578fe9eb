"""Tests for hgwire_tw.repo.registry: safe name → repository mapping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hgwire_tw.core.errors import UnknownRepository
from hgwire_tw.repo.registry import RepositoryRegistry, ServedRepository
from tests import repobuilders


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repos dir: a, team/proj, team/other, a symlink out of the root and one inside."""
    base = tmp_path_factory.mktemp("tree")
    root = base / "root"
    root.mkdir()
    for name in ("a", "team/proj", "team/other"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        repobuilders.init_repo(root / name)
    outside = repobuilders.init_repo(base / "outside")
    (root / "escape").symlink_to(outside)
    (root / "team" / "alias").symlink_to(root / "a")
    (root / "plain").mkdir()
    return root


def test_discovers_repositories_by_relative_path(tree: Path) -> None:
    """Every repository below the root is served under its relative path."""
    reg = RepositoryRegistry(repos_dir=tree)
    assert reg.names() == ["a", "team/alias", "team/other", "team/proj"]
    found = reg.resolve("team/proj")
    assert found == ServedRepository("team/proj", Path(os.path.realpath(tree / "team/proj")))


def test_symlink_leaving_root_is_not_served(tree: Path) -> None:
    """A symlink to a repository outside the root is neither listed nor resolvable."""
    reg = RepositoryRegistry(repos_dir=tree)
    assert "escape" not in reg.names()
    with pytest.raises(UnknownRepository):
        reg.resolve("escape")


@pytest.mark.parametrize(
    "name",
    [
        "..",
        "../outside",
        "a/..",
        "/etc",
        "/etc/passwd",
        "a\\b",
        "a\0b",
        "a//b",
        "team/",
        "./a",
        "team/./proj",
        "plain",
        "nope",
        "team",
    ],
)
def test_bad_or_unknown_names_are_refused(tree: Path, name: str) -> None:
    """Path tricks and unknown names give UnknownRepository, never a filesystem path."""
    reg = RepositoryRegistry(repos_dir=tree)
    with pytest.raises(UnknownRepository) as info:
        reg.resolve(name)
    assert str(info.value)


def test_repository_created_later_becomes_visible(tmp_path: Path) -> None:
    """A lookup miss rescans (rate-limited), so new repositories are found."""
    now = [0.0]
    reg = RepositoryRegistry(
        repos_dir=tmp_path, ttl=60, miss_rescan_interval=1, clock=lambda: now[0]
    )
    assert reg.names() == []
    repobuilders.init_repo(tmp_path / "new")
    with pytest.raises(UnknownRepository):
        reg.resolve("new")  # within the rescan interval: still unknown
    now[0] = 2.0
    assert reg.resolve("new").name == "new"


def test_removed_repository_disappears(tmp_path: Path) -> None:
    """A repository deleted after the scan is not resolved from the stale table."""
    import shutil

    repobuilders.init_repo(tmp_path / "gone")
    reg = RepositoryRegistry(repos_dir=tmp_path)
    assert reg.resolve("gone").name == "gone"
    shutil.rmtree(tmp_path / "gone")
    with pytest.raises(UnknownRepository):
        reg.resolve("gone")


def test_explicit_entries_and_root_name(tree: Path) -> None:
    """``--repo NAME=PATH`` entries, including the root name ``""``."""
    reg = RepositoryRegistry({"": tree / "a", "x/y": tree / "team/proj"})
    assert reg.names() == ["", "x/y"]
    assert reg.resolve("").path == Path(os.path.realpath(tree / "a"))
    assert reg.resolve("x/y").name == "x/y"
    with pytest.raises(UnknownRepository):
        reg.resolve("x")


def test_bad_explicit_name_is_a_configuration_error(tree: Path) -> None:
    """A malformed configured name fails loudly at start-up."""
    with pytest.raises(ValueError):
        RepositoryRegistry({"../x": tree / "a"})


def test_match_longest_prefix(tree: Path) -> None:
    """URL segments split into the repository and the rest."""
    reg = RepositoryRegistry(repos_dir=tree)
    repo, rest = reg.match(["team", "proj", "api", "exp-http-v2-0003", "ro", "heads"])
    assert repo.name == "team/proj"
    assert rest == ["api", "exp-http-v2-0003", "ro", "heads"]
    repo, rest = reg.match(["a"])
    assert (repo.name, rest) == ("a", [])


def test_match_root_repository(tree: Path) -> None:
    """With a root repository, unknown prefixes fall through to it."""
    reg = RepositoryRegistry({"": tree / "a"})
    repo, rest = reg.match(["api", "x"])
    assert (repo.name, rest) == ("", ["api", "x"])


@pytest.mark.parametrize(
    "segments",
    [["..", "outside"], ["team", "..", "a"], ["a", ""], ["a\\b"], ["escape"], ["nope", "api"]],
)
def test_match_refuses_tricks(tree: Path, segments: list[str]) -> None:
    """``..``, empty segments, backslashes, escaping symlinks, unknown names."""
    reg = RepositoryRegistry(repos_dir=tree)
    with pytest.raises(UnknownRepository):
        reg.match(segments)


def test_ui_reads_no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """make_ui ignores HGRCPATH/user config but repositories still read .hg/hgrc."""
    from mercurial import hg

    from hgwire_tw.repo.ui import make_ui

    rc = tmp_path / "user.rc"
    rc.write_text("[ui]\nusername = leaked\n[hgwire]\nsource = user\n")
    monkeypatch.setenv("HGRCPATH", str(rc))
    ui = make_ui()
    assert ui.config(b"hgwire", b"source") is None
    assert ui.configbool(b"ui", b"quiet")
    assert not ui.configbool(b"ui", b"interactive")
    repo_path = repobuilders.init_repo(tmp_path / "r")
    (repo_path / ".hg" / "hgrc").write_text("[hgwire]\nsource = repo\n")
    repo = hg.repository(make_ui(), os.fsencode(repo_path))
    assert repo.ui.config(b"hgwire", b"source") == b"repo"
    ui.pushbuffer()
    ui.status(b"x")
    ui.write(b"captured")
    assert ui.popbuffer() == b"captured"
