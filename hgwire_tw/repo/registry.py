"""Map repository names from the network to repositories on disk, safely.

A name is a ``/``-separated relative path such as ``team/proj``; ``""`` names the
repository served at the root URL. Names that arrive over the network are only ever
*looked up* in a table built from the configuration; they are never joined onto a
filesystem path. Two sources fill the table:

* explicit entries (``--repo NAME=PATH``), and
* discovery below ``repos_dir`` (``--repos-dir``): every directory holding a ``.hg``
  directory, named by its path relative to the root. Discovery does not descend into
  repositories (their working copies can be huge), skips ``.hg`` directories, and only
  follows a symlink when its target stays inside the root. The table is rescanned when
  it is older than ``ttl`` seconds and, at most once per ``miss_rescan_interval``
  seconds, when a lookup misses, so a repository created later becomes visible without
  letting clients trigger a rescan per request.

Every successful lookup re-checks on disk that the path still resolves inside the root
(for discovered repositories) and still holds a ``.hg`` directory, because the
filesystem may have changed since the scan.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hgwire_tw.core.errors import UnknownRepository

__all__ = ["DEFAULT_MAX_DEPTH", "RepositoryRegistry", "ServedRepository", "check_name"]

#: Directory levels below ``repos_dir`` searched for repositories (``--repos-depth``).
DEFAULT_MAX_DEPTH = 8


@dataclass(frozen=True, slots=True)
class ServedRepository:
    """A repository the server may serve: its public ``name`` and resolved ``path``."""

    name: str
    path: Path


def _segment_problem(segment: str) -> str | None:
    """Why ``segment`` cannot be part of a repository name, or None if it can."""
    if segment == "":
        return "empty path segment"
    if segment in (".", ".."):
        return f"{segment!r} segment"
    if "\0" in segment:
        return "NUL byte"
    if "\\" in segment:
        return "backslash"
    if "/" in segment:
        return "slash inside a segment"
    return None


def check_name(name: str) -> None:
    """Raise ``UnknownRepository`` unless ``name`` is a well-formed repository name.

    ``""`` is well formed (the root repository). Otherwise: relative, ``/``-separated,
    no empty, ``.`` or ``..`` segments, no backslashes or NUL bytes.
    """
    if not isinstance(name, str):
        raise UnknownRepository(f"invalid repository name {name!r}: not a string")
    if name == "":
        return
    if name.startswith("/"):
        raise UnknownRepository(f"invalid repository name {name!r}: absolute path")
    for segment in name.split("/"):
        problem = _segment_problem(segment)
        if problem is not None:
            raise UnknownRepository(f"invalid repository name {name!r}: {problem}")


def _is_repo_dir(path: Path) -> bool:
    """Whether ``path`` is a directory holding a ``.hg`` directory."""
    return (path / ".hg").is_dir()


def _inside(path: str, root: str) -> bool:
    """Whether the (real) ``path`` is ``root`` or below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _subdirectories(real: str, root: str) -> list[tuple[str, str]]:
    """``(name, real path)`` of the directories in ``real`` a scan may enter, sorted:
    well-formed names, not ``.hg``, and (symlinks resolved) still inside ``root`` — a
    symlink, or a bind of one, that leaves the root is never served."""
    try:
        entries = sorted(os.scandir(real), key=lambda e: e.name)
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.name == ".hg" or _segment_problem(entry.name) is not None:
            continue
        try:
            if not entry.is_dir(follow_symlinks=True):
                continue
        except OSError:
            continue
        target = os.path.realpath(entry.path)
        if _inside(target, root):
            found.append((entry.name, target))
    return found


class RepositoryRegistry:
    """The table of served repositories (see the module docstring for the rules)."""

    def __init__(
        self,
        repos: Mapping[str, Path] | None = None,
        repos_dir: Path | None = None,
        *,
        ttl: float = 5.0,
        miss_rescan_interval: float = 1.0,
        max_depth: int = DEFAULT_MAX_DEPTH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``repos`` maps names to paths (``--repo``); ``repos_dir`` is scanned for more.

        Explicit entries win over discovered ones with the same name. Bad explicit names
        raise ``ValueError`` (a configuration mistake, not a client error).
        """
        self._explicit: dict[str, Path] = {}
        for name, path in (repos or {}).items():
            try:
                check_name(name)
            except UnknownRepository as exc:
                raise ValueError(str(exc)) from None
            self._explicit[name] = Path(os.path.realpath(path))
        self._root: str | None = os.path.realpath(repos_dir) if repos_dir is not None else None
        self._ttl = ttl
        self._miss_rescan_interval = miss_rescan_interval
        self._max_depth = max_depth
        self._clock = clock
        self._lock = threading.Lock()
        self._discovered: dict[str, Path] = {}
        self._scanned_at: float | None = None

    # -- discovery ------------------------------------------------------------------

    def _scan(self) -> dict[str, Path]:
        """Walk ``repos_dir`` and return ``{name: real path}`` of the repositories found."""
        assert self._root is not None
        root = self._root
        found: dict[str, Path] = {}
        visited: set[str] = set()

        def walk(real: str, segments: list[str]) -> None:
            if _is_repo_dir(Path(real)):
                found["/".join(segments)] = Path(real)
                return  # do not descend into a repository's working copy
            # Symlinks inside the root may form loops: descend into each directory once.
            if real in visited or len(segments) >= self._max_depth:
                return
            visited.add(real)
            for name, target in _subdirectories(real, root):
                walk(target, [*segments, name])

        walk(root, [])
        return found

    def skipped(self, *, extra_depth: int = 4, max_dirs: int = 100_000) -> list[tuple[str, str]]:
        """Repositories below ``repos_dir`` that are not served, each with why: inside
        another repository's working copy, or deeper than ``max_depth``.

        Unlike the scan, this walk descends into working copies, so it is bounded: at
        most ``extra_depth`` levels past ``max_depth`` and ``max_dirs`` directories.
        Filesystem I/O: call it off the reactor thread (it is meant for the start-up and
        reload logs, not for every rescan).
        """
        if self._root is None:
            return []
        root = self._root
        found: list[tuple[str, str]] = []
        visited: set[str] = set()
        budget = [max_dirs]

        def walk(real: str, segments: list[str], inside: str | None) -> None:
            if _is_repo_dir(Path(real)):
                name = "/".join(segments)
                if inside is not None:
                    found.append((name, f"inside the working copy of {inside or '/'!r}"))
                elif len(segments) > self._max_depth:
                    found.append(
                        (name, f"{len(segments)} levels deep, more than {self._max_depth}")
                    )
                else:
                    inside = name  # served; anything below is in its working copy
            if real in visited or len(segments) >= self._max_depth + extra_depth:
                return
            visited.add(real)
            budget[0] -= 1
            if budget[0] < 0:
                return
            for name, target in _subdirectories(real, root):
                walk(target, [*segments, name], inside)

        walk(root, [], None)
        return found

    def _refresh(self, *, force: bool) -> None:
        """Rescan if the table is stale (or on ``force``, rate-limited)."""
        if self._root is None:
            return
        now = self._clock()
        with self._lock:
            age = None if self._scanned_at is None else now - self._scanned_at
            if age is not None:
                if not force and age < self._ttl:
                    return
                if force and age < self._miss_rescan_interval:
                    return
            self._discovered = self._scan()
            self._scanned_at = now

    def refresh(self) -> None:
        """Rescan ``repos_dir`` now (e.g. after creating a repository)."""
        if self._root is None:
            return
        with self._lock:
            self._discovered = self._scan()
            self._scanned_at = self._clock()

    # -- lookups --------------------------------------------------------------------

    def _lookup(self, name: str) -> ServedRepository | None:
        """The repository called ``name`` (already well formed), or None."""
        path = self._explicit.get(name)
        if path is not None:
            return ServedRepository(name, path) if _is_repo_dir(path) else None
        path = self._discovered.get(name)
        if path is None:
            return None
        assert self._root is not None
        # The tree may have changed since the scan: re-resolve and re-check.
        real = os.path.realpath(path)
        if not _inside(real, self._root) or not _is_repo_dir(Path(real)):
            return None
        return ServedRepository(name, Path(real))

    def resolve(self, name: str) -> ServedRepository:
        """The repository called ``name``; ``UnknownRepository`` if there is none."""
        check_name(name)
        self._refresh(force=False)
        found = self._lookup(name)
        if found is None:
            self._refresh(force=True)
            found = self._lookup(name)
        if found is None:
            raise UnknownRepository(f"no repository named {name!r}")
        return found

    def match(self, segments: Sequence[str]) -> tuple[ServedRepository, list[str]]:
        """The longest prefix of URL path ``segments`` naming a repository, and the rest.

        Every segment must be well formed (a ``..`` anywhere is refused, even past the
        repository part), so ``/team/proj/api/...`` gives ``(team/proj, [api, ...])``.
        """
        segments = list(segments)
        for segment in segments:
            problem = _segment_problem(segment)
            if problem is not None:
                raise UnknownRepository(
                    f"invalid repository path {'/'.join(segments)!r}: {problem}"
                )
        self._refresh(force=False)
        for attempt in (0, 1):
            for cut in range(len(segments), -1, -1):
                found = self._lookup("/".join(segments[:cut]))
                if found is not None:
                    return found, segments[cut:]
            if attempt == 0:
                self._refresh(force=True)
        raise UnknownRepository(f"no repository at {'/'.join(segments)!r}")

    def names(self) -> list[str]:
        """Every served repository name, sorted."""
        self._refresh(force=False)
        names = {name for name, path in self._explicit.items() if _is_repo_dir(path)}
        names.update(self._discovered)
        return sorted(names)
