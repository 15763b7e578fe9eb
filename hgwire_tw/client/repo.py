"""Opening (or creating) the local repository a clone or pull writes into."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["checkout", "default_path", "open_or_create", "set_default_path"]


def _ui() -> Any:
    from mercurial import ui as uimod

    from hgwire_tw.repo.ui import make_ui

    try:
        return make_ui()
    except Exception:  # pragma: no cover - make_ui is the norm
        return uimod.ui.load()


def open_or_create(path: Path, *, create: bool = False) -> Any:
    """The Mercurial repository at ``path``; created (empty) when ``create``.

    Call on the thread that will use the repository: Mercurial objects are not
    thread-safe.
    """
    from mercurial import hg

    return hg.repository(_ui(), str(path).encode(), create=create)


def set_default_path(path: Path, url: str) -> None:
    """Write ``[paths] default = url`` into ``path/.hg/hgrc`` (as ``hg clone`` does)."""
    hgrc = path / ".hg" / "hgrc"
    text = hgrc.read_text(encoding="utf-8") if hgrc.exists() else ""
    text += f"[paths]\ndefault = {url}\n"
    hgrc.write_text(text, encoding="utf-8")


def default_path(path: Path) -> str | None:
    """``paths.default`` of the repository at ``path``, if any."""
    repo = open_or_create(path)
    value = repo.ui.config(b"paths", b"default")
    return value.decode("utf-8") if value else None


def checkout(path: Path, *, quiet: bool = False) -> str | None:
    """Update the working copy of a fresh clone the way ``hg clone`` does: to the ``@``
    bookmark (made active) if there is one, else the tip of the ``default`` branch,
    else the tip. Returns the short hash checked out (None: nothing to check out)."""
    from mercurial import bookmarks, error, hg
    from mercurial.node import short

    repo = open_or_create(path)
    if quiet:
        repo.ui.quiet = True
    if not len(repo):
        return None
    marks = repo._bookmarks
    if b"@" in marks:
        node, active = marks[b"@"], b"@"
    else:
        active = None
        try:
            node = repo.branchtip(b"default")
        except error.RepoLookupError:
            node = repo[b"tip"].node()
    with repo.wlock():
        hg.update(repo, node)
        if active is not None:
            bookmarks.activate(repo, active)
    return str(short(node).decode("ascii"))
