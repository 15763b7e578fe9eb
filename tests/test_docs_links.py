"""README.md and docs/*.md stand alone: every relative link stays inside the repository
and names a file that exists, and nothing points at ../shared (material outside the
repository that readers of the project do not have)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target "title"), ![alt](target), <target> autolinks, [ref]: target definitions
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]+)>")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def links(text: str) -> list[str]:
    """Every link target of a Markdown text, code blocks and code spans left out."""
    prose = _FENCE.sub("", text)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    found = _INLINE.findall(prose) + _AUTOLINK.findall(prose) + _REFERENCE.findall(prose)
    return [t for t in found if t]


def test_the_link_finder_sees_every_form() -> None:
    text = (
        '[a](docs/a.md) ![b](img.png "t") <https://x.org/y> `[no](code.md)`\n'
        "[r]: ../shared/z.md\n```\n[no](fenced.md)\n```\n"
    )
    assert links(text) == ["docs/a.md", "img.png", "https://x.org/y", "../shared/z.md"]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_links_stay_inside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    assert "../shared" not in text, f"{doc.name} refers to ../shared"
    for target in links(text):
        if _SCHEME.match(target):
            scheme = target.split(":", 1)[0].lower()
            assert scheme in ("http", "https", "mailto"), f"{doc.name}: {target}"
            continue
        path = target.split("#", 1)[0]
        if not path:
            continue  # an anchor in the same page
        assert not path.startswith("/"), f"{doc.name}: absolute path {target}"
        resolved = (doc.parent / path).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} is outside the repository"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"
