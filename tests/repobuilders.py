"""Build real Mercurial repositories for tests, with Mercurial's own command line.

Every builder runs the ``hg`` of the test virtualenv with a clean environment (no user
hgrc), so repositories are the same on every machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HG = str(Path(sys.executable).with_name("hg"))
HG_603 = os.environ.get(
    "HGWIRE_HG603", str(Path(__file__).resolve().parent.parent / ".venv-hg603" / "bin" / "hg")
)


def hg_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which ``hg`` reads no user or system configuration."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HG") and k not in ("PYTHONPATH", "PYTHONHOME")
    }
    env.update(
        HGRCPATH="",
        HGPLAIN="1",
        HGUSER="test <test@example.com>",
        HGENCODING="utf-8",
        LANG="C.UTF-8",
        TZ="UTC",
    )
    if extra:
        env.update(extra)
    return env


def hg(
    *args: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
    exe: str = HG,
    check: bool = True,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``hg`` and return the completed process (stdout/stderr as bytes)."""
    proc = subprocess.run(
        [exe, *map(str, args)],
        cwd=cwd,
        input=input,
        capture_output=True,
        env=hg_env(env),
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"hg {' '.join(map(str, args))} failed ({proc.returncode}):\n"
            f"{proc.stdout.decode(errors='replace')}\n{proc.stderr.decode(errors='replace')}"
        )
    return proc


def hg_out(
    *args: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None, exe: str = HG
) -> str:
    """Run ``hg`` and return its standard output as text."""
    return hg(*args, cwd=cwd, exe=exe).stdout.decode("utf-8")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _commit(repo: Path, message: str, date: int) -> None:
    hg("commit", "-A", "-q", "-m", message, "-d", f"{date} 0", cwd=repo)


def init_repo(path: Path) -> Path:
    """An empty repository at ``path``."""
    hg("init", path)
    return path


def make_linear_repo(path: Path, commits: int = 5) -> Path:
    """A repository with ``commits`` changesets on one line, each editing two files."""
    init_repo(path)
    for i in range(commits):
        _write(path / "a.txt", b"".join(b"line %d of rev %d\n" % (j, i) for j in range(20)))
        _write(path / "dir" / f"f{i % 3}.txt", b"content %d\n" % i)
        _commit(path, f"commit {i}", 1_600_000_000 + i)
    return path


def make_rich_repo(path: Path) -> Path:
    """A repository exercising what a server must get right.

    Linear history, a named branch, an anonymous branch merged back, a bookmark on each
    head, copies and renames, a removal, binary and empty files, and changesets in the
    public, draft and secret phases.
    """
    init_repo(path)
    t = 1_600_000_000
    _write(path / "README", b"hello\n")
    _write(path / "empty", b"")
    _write(path / "bin.dat", bytes(range(256)) * 8 + b"\0\0\xff")
    _write(path / "src" / "main.py", b"print('hi')\n" * 50)
    _commit(path, "initial", t)
    _write(path / "src" / "main.py", b"print('hi')\n" * 49 + b"print('bye')\n")
    _write(path / "src" / "util.py", b"def f():\n    return 1\n")
    _commit(path, "add util", t + 1)
    hg("copy", "src/util.py", "src/util2.py", cwd=path)
    _commit(path, "copy util", t + 2)
    hg("rename", "README", "README.txt", cwd=path)
    _commit(path, "rename readme", t + 3)
    hg("remove", "empty", cwd=path)
    _commit(path, "remove empty", t + 4)
    # named branch
    hg("branch", "-q", "stable", cwd=path)
    _write(path / "stable.txt", b"stable 1\n")
    _commit(path, "stable work", t + 5)
    hg("bookmark", "stable-bm", cwd=path)
    # back to default, anonymous branch then merge
    hg("update", "-q", "default", cwd=path)
    _write(path / "src" / "left.py", b"left\n")
    _commit(path, "left side", t + 6)
    hg("update", "-q", "-r", "3", cwd=path)
    _write(path / "src" / "right.py", b"right\n")
    _write(path / "bin.dat", bytes(range(255, -1, -1)) * 8)
    _commit(path, "right side", t + 7)
    hg("merge", "-q", "-r", "6", cwd=path)
    _commit(path, "merge left and right", t + 8)
    hg("bookmark", "main", cwd=path)
    hg("bookmark", "--inactive", cwd=path)
    # everything so far public; then a draft and a secret changeset
    hg("phase", "--public", "-r", ".", cwd=path)
    hg("phase", "--public", "-r", "stable", cwd=path)
    _write(path / "draft.txt", b"draft\n")
    _commit(path, "draft work", t + 9)
    _write(path / "secret.txt", b"secret\n")
    _commit(path, "secret work", t + 10)
    hg("phase", "--force", "--secret", "-r", ".", cwd=path)
    hg("update", "-q", "null", cwd=path)
    return path


def make_bench_repo(path: Path, commits: int = 2000, files: int = 200) -> Path:
    """A larger, realistic repository for benchmarks, built fast with Mercurial's API.

    Text files in ten directories edited a few lines at a time, files added over time, a
    branch merged back every 100 changesets, and a binary file rewritten now and then.
    The result is an ordinary repository (``hg verify`` clean); it is deterministic.
    """
    import random

    from mercurial import context
    from mercurial import hg as hgmod
    from mercurial import ui as uimod

    rnd = random.Random(1234)
    init_repo(path)
    u = uimod.ui.load()
    u.setconfig(b"ui", b"quiet", b"true")
    repo = hgmod.repository(u, str(path).encode())
    words = [
        b"alpha",
        b"beta",
        b"gamma",
        b"delta",
        b"hgwire",
        b"twisted",
        b"frame",
        b"node",
        b"changeset",
        b"manifest",
        b"revlog",
        b"bundle",
        b"stream",
        b"reactor",
    ]

    def line() -> bytes:
        return b" ".join(rnd.choice(words) for _ in range(rnd.randint(4, 12))) + b"\n"

    contents: dict[bytes, list[bytes]] = {}
    start_files = max(1, files // 2)
    for i in range(start_files):
        contents[b"d%d/file%d.txt" % (i % 10, i)] = [line() for _ in range(rnd.randint(20, 120))]
    binary = bytes(rnd.getrandbits(8) for _ in range(4096))
    contents[b"assets/blob.bin"] = [binary]
    next_file = start_files

    def commit(parents: tuple[bytes, bytes], changed: dict[bytes, bytes], n: int) -> bytes:
        def filectx(repo_: object, mctx: object, fname: bytes) -> context.memfilectx:
            return context.memfilectx(repo, mctx, fname, changed[fname])

        mctx = context.memctx(
            repo,
            parents,
            b"change %d" % n,
            sorted(changed),
            filectx,
            user=b"bench <bench@example.com>",
            date=(1_600_000_000 + n, 0),
        )
        return mctx.commit()

    with repo.wlock(), repo.lock():
        null = repo.nullid
        tip = commit((null, null), {k: b"".join(v) for k, v in contents.items()}, 0)
        side: bytes | None = None
        for c in range(1, commits):
            changed: dict[bytes, bytes] = {}
            for _ in range(rnd.randint(1, 4)):
                name = rnd.choice(sorted(k for k in contents if k.endswith(b".txt")))
                lines = contents[name]
                lines[rnd.randrange(len(lines))] = line()
                if rnd.random() < 0.3:
                    lines.insert(rnd.randrange(len(lines)), line())
                changed[name] = b"".join(lines)
            if next_file < files and rnd.random() < 0.05:
                name = b"d%d/file%d.txt" % (next_file % 10, next_file)
                contents[name] = [line() for _ in range(30)]
                changed[name] = b"".join(contents[name])
                next_file += 1
            if rnd.random() < 0.01:
                blob = bytearray(binary)
                for _ in range(64):
                    blob[rnd.randrange(len(blob))] = rnd.getrandbits(8)
                binary = bytes(blob)
                contents[b"assets/blob.bin"] = [binary]
                changed[b"assets/blob.bin"] = binary
            if c % 100 == 50:
                side = tip  # fork: the next commits alternate between two heads
            if side is not None and c % 100 == 99:
                tip = commit((tip, side), changed, c)  # merge back
                side = None
            elif side is not None and c % 2:
                side = commit((side, null), changed, c)
            else:
                tip = commit((tip, null), changed, c)
    return path


def advance_rich_repo(repo: Path) -> None:
    """Grow a rich repository by two changesets: a commit on ``main``, its merge with
    ``stable``, and a move of bookmark ``stable-bm`` to the merge."""
    hg("update", "-q", "-r", "main", cwd=repo)
    (repo / "new.txt").write_text("new\n")
    hg("commit", "-A", "-q", "-m", "new", cwd=repo)
    hg("merge", "-q", "-r", "stable", cwd=repo)
    hg("commit", "-q", "-m", "merge stable", cwd=repo)
    hg("bookmark", "-f", "-r", ".", "stable-bm", cwd=repo)


def log_nodes(repo: Path, rev: str = "all()", exe: str = HG) -> list[str]:
    """Hex nodes of ``rev`` in revision order."""
    out = hg_out("log", "-r", rev, "-T", "{node}\n", cwd=repo, exe=exe)
    return out.split()


def repo_summary(repo: Path, exe: str = HG) -> dict[str, object]:
    """What must be equal between a source and a faithful clone."""
    return {
        "nodes": sorted(log_nodes(repo, "all()", exe)),
        "phases": hg_out("log", "-r", "all()", "-T", "{node} {phase}\n", cwd=repo, exe=exe),
        "bookmarks": hg_out("bookmarks", "-T", "{bookmark} {node}\n", cwd=repo, exe=exe),
        "heads": sorted(hg_out("heads", "-T", "{node}\n", cwd=repo, exe=exe).split()),
    }


def verify(repo: Path, exe: str = HG) -> None:
    """``hg verify`` must be clean."""
    hg("verify", "-q", cwd=repo, exe=exe)


def touched(repo: Path, revs: Sequence[str]) -> None:  # pragma: no cover - helper for debugging
    for r in revs:
        print(hg_out("log", "-r", r, "--stat", cwd=repo))
