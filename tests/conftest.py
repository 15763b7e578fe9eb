"""Shared pytest fixtures: real repositories built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import repobuilders


@pytest.fixture(scope="session")
def rich_repo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rich repository (see ``make_rich_repo``), built once; copy it before changing it."""
    return repobuilders.make_rich_repo(tmp_path_factory.mktemp("rich") / "repo")


@pytest.fixture
def rich_repo(rich_repo_template: Path, tmp_path: Path) -> Path:
    """A private copy of the rich repository, free to modify."""
    import shutil

    dest = tmp_path / "rich"
    shutil.copytree(rich_repo_template, dest, symlinks=True)
    return dest
