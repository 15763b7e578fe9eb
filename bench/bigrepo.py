"""A large repository for benchmarks: a long history replayed from real source files.

    .venv/bin/python bench/bigrepo.py [--commits 24000] [DEST]

No real version-control history of 20,000+ changesets can be fetched on the benchmark
machines (they reach package registries only), so this builds the next best thing, fast,
with Mercurial's API: the text of a real project — the Python standard library the
benchmark runs on, tests excluded — grown into a repository one changeset at a time the
way projects grow.

* Files arrive over time: a file enters with the first part of its real text, and later
  changesets bring in more of it, so most changes are small hunks of real code.
* Edits favour recently touched files (a changeset touches 1-4 of them); some hunks delete
  or rewrite a few lines, and now and then a file is removed.
* About 40 authors with increasing dates; messages are comment lines from the corpus.
* A side line of work forks every ~150 changesets and is merged back; a ``stable`` named
  branch receives a change and is merged into ``default`` every ~400; ``.hgtags`` gets a
  release tag every ~1,000; a few bookmarks; everything is public.

The result is an ordinary repository (``hg verify`` clean) and deterministic for a given
Python version: the first line printed names the corpus. ``big_repo(commits)`` builds it
once into ``bench/out/big-<commits>`` and returns the path.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"

__all__ = ["big_repo", "build_big_repo", "corpus_files"]

#: Where real text comes from, and what of it is left out (tests are mostly data).
_SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def corpus_files() -> list[Path]:
    """The standard library's Python modules, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p
        for p in stdlib.rglob("*.py")
        if not _SKIP_PARTS.intersection(p.relative_to(stdlib).parts) and p.stat().st_size > 200
    ]
    return sorted(files, key=lambda p: str(p.relative_to(stdlib)))


def _corpus() -> tuple[Path, list[tuple[bytes, list[bytes]]]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in corpus_files():
        lines = p.read_bytes().splitlines(keepends=True)
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\n"
        out.append((str(p.relative_to(stdlib)).encode(), lines))
    return stdlib, out


def _comment_lines(corpus: list[tuple[bytes, list[bytes]]]) -> list[bytes]:
    msgs = []
    for _, lines in corpus:
        for line in lines:
            s = line.strip()
            if s.startswith(b"# ") and 20 <= len(s) <= 90:
                msgs.append(s[2:])
    return msgs or [b"update"]


class _File:
    """A file of the repository: the real text it grows toward and what it holds now."""

    __slots__ = ("lines", "real", "taken")

    def __init__(self, real: list[bytes], rnd: random.Random) -> None:
        self.real = real
        self.taken = max(1, len(real) * rnd.randint(20, 60) // 100)
        self.lines = list(real[: self.taken])

    def edit(self, rnd: random.Random, words: list[bytes]) -> None:
        lines = self.lines
        kind = rnd.random()
        if self.taken < len(self.real) and kind < 0.6:
            # bring in the next piece of the real text, where it belongs
            n = rnd.randint(3, 40)
            piece = self.real[self.taken : self.taken + n]
            self.taken += len(piece)
            at = min(len(lines), max(0, len(lines) - rnd.randint(0, 5)))
            lines[at:at] = piece
        elif kind < 0.8 and len(lines) > 10:
            # rewrite a few lines in place (a rename, a changed constant)
            at = rnd.randrange(len(lines))
            for i in range(at, min(len(lines), at + rnd.randint(1, 3))):
                old = lines[i]
                word = rnd.choice(words)
                cut = rnd.randrange(len(old)) if len(old) > 1 else 0
                lines[i] = old[:cut].rstrip(b"\n") + b" " + word + b"\n"
        elif len(lines) > 30:
            # delete a small block
            at = rnd.randrange(len(lines) - 5)
            del lines[at : at + rnd.randint(1, 5)]
        else:
            at = rnd.randrange(len(lines) + 1)
            lines[at:at] = self.real[: rnd.randint(1, 4)]

    def text(self) -> bytes:
        return b"".join(self.lines)


def _words(corpus: list[tuple[bytes, list[bytes]]], rnd: random.Random) -> list[bytes]:
    pool = set()
    for _, lines in corpus[:200]:
        for line in lines[:50]:
            for w in line.split():
                if w.decode("latin-1").isidentifier():
                    pool.add(w)
    words = sorted(pool)
    rnd.shuffle(words)
    return words[:5000] or [b"x"]


def build_big_repo(path: Path, commits: int = 24000, seed: int = 20261207) -> Path:
    """Build the repository at ``path`` (which must not exist) with ``commits`` changesets."""
    from mercurial import context
    from mercurial import hg as hgmod
    from mercurial import ui as uimod

    rnd = random.Random(seed)
    stdlib, corpus = _corpus()
    print(f"corpus: {len(corpus)} files of {stdlib} (Python {sys.version.split()[0]})")
    messages = _comment_lines(corpus)
    words = _words(corpus, rnd)
    authors = [
        b"%s <%s@example.org>" % (rnd.choice(words), rnd.choice(words).lower()) for _ in range(40)
    ]

    u = uimod.ui.load()
    u.setconfig(b"ui", b"quiet", b"true")
    u.setconfig(b"phases", b"new-commit", b"public")
    repo = hgmod.repository(u, str(path).encode(), create=True)

    pending = iter(corpus)
    files: dict[bytes, _File] = {}
    recent: list[bytes] = []
    date = 1_000_000_000
    tags: list[tuple[bytes, bytes]] = []

    def add_file() -> bytes | None:
        for name, real in pending:
            files[name] = _File(real, rnd)
            return name
        return None

    def commit(parents: tuple[bytes, bytes], changed: dict[bytes, bytes | None], n: int,
               branch: bytes = b"default") -> bytes:  # fmt: skip
        nonlocal date
        date += rnd.randint(60, 36 * 3600)

        def filectx(repo_: object, mctx: object, fname: bytes) -> context.memfilectx | None:
            data = changed[fname]
            if data is None:
                return None  # removed
            return context.memfilectx(repo, mctx, fname, data)

        message = b"%s\n\nchange %d" % (rnd.choice(messages), n)
        mctx = context.memctx(
            repo,
            parents,
            message,
            sorted(changed),
            filectx,
            user=rnd.choice(authors),
            date=(date, 0),
            extra={b"branch": branch},
        )
        return mctx.commit()

    def some_change(n: int) -> dict[bytes, bytes | None]:
        changed: dict[bytes, bytes | None] = {}
        if rnd.random() < 0.04 or len(files) < 40:
            name = add_file()
            if name is not None:
                changed[name] = files[name].text()
                recent.append(name)
        for _ in range(rnd.randint(1, 4)):
            # mostly what was touched lately, as real work goes; sometimes anything
            if recent and rnd.random() < 0.7:
                name = rnd.choice(recent[-30:])
            else:
                name = rnd.choice(list(files))
            if name not in files:
                continue  # removed meanwhile
            files[name].edit(rnd, words)
            changed[name] = files[name].text()
            recent.append(name)
        if len(files) > 200 and rnd.random() < 0.003:
            gone = rnd.choice(sorted(files))
            del files[gone]
            changed[gone] = None
        del recent[:-200]
        return changed

    null = repo.nullid
    started = time.monotonic()
    with repo.wlock(), repo.lock():
        first = {}
        for _ in range(40):
            name = add_file()
            assert name is not None
            first[name] = files[name].text()
        tip = commit((null, null), dict(first), 0)
        side: bytes | None = None
        stable: bytes | None = None
        n = 1
        while n < commits:
            if n % 150 == 70:
                side = tip
            if stable is None and n > 300:
                stable = commit((tip, null), some_change(n), n, b"stable")
                n += 1
                continue
            if side is not None and n % 150 == 140:
                tip = commit((tip, side), some_change(n), n)
                side = None
            elif stable is not None and n % 400 == 0:
                stable = commit((stable, null), some_change(n), n, b"stable")
            elif stable is not None and n % 400 == 1:
                tip = commit((tip, stable), {}, n)
            elif side is not None and n % 3 == 0:
                side = commit((side, null), some_change(n), n)
            elif n % 1000 == 999:
                tags.append((repo[tip].hex(), b"v%d.%d" % (n // 10000, n // 1000 % 10)))
                text = b"".join(b"%s %s\n" % t for t in tags)
                tip = commit((tip, null), {b".hgtags": text}, n)
            else:
                tip = commit((tip, null), some_change(n), n)
            n += 1
            if n % 2000 == 0:
                print(f"  {n} changesets, {time.monotonic() - started:.0f}s", file=sys.stderr)
        with repo.transaction(b"bookmarks") as tr:
            changes = [(b"main", tip), (b"release", stable or tip)]
            if side is not None:
                changes.append((b"feature", side))
            repo._bookmarks.applychanges(repo, tr, changes)
    return path


def big_repo(commits: int = 24000) -> Path:
    """The benchmark's big repository, built once into ``bench/out/big-<commits>``."""
    path = OUT / f"big-{commits}"
    if not (path / ".hg" / "store" / "00changelog.i").is_file():
        shutil.rmtree(path, ignore_errors=True)
        OUT.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        build_big_repo(path, commits)
        print(f"built {path} in {time.monotonic() - t:.0f}s", file=sys.stderr)
    return path


def _iter_sizes(path: Path) -> Iterator[int]:
    for p in (path / ".hg" / "store").rglob("*"):
        if p.is_file():
            yield p.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=24000)
    ap.add_argument("dest", nargs="?", help="build here instead of bench/out/big-COMMITS")
    opts = ap.parse_args()
    if opts.dest:
        path = build_big_repo(Path(opts.dest), opts.commits)
    else:
        path = big_repo(opts.commits)
    print(f"{path}: store {sum(_iter_sizes(path)) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
