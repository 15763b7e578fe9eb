"""Opening (or creating) the local repository a clone or pull writes into."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["open_or_create", "set_default_path"]


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
