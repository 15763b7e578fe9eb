"""Roll back transactions abandoned by a crash, with Mercurial's own recovery.

A Mercurial write (a push, a pushkey, a mirror's pull) runs in a transaction whose
journal (``.hg/store/journal``) lists every store file it appended to, with the length
each had before. The transaction removes the journal when it commits or aborts; a
process killed in between leaves it behind, together with its ``lock``/``wlock``
symlinks (``host:pid``). Every later transaction then fails with "abandoned transaction
found" until someone runs ``hg recover``. This module does that without a human:

* ``needs_attention(path)`` is the cheap test (a few ``lstat`` calls, no repository
  opened): a journal, or a lock file, exists.
* ``recover_abandoned(repo)`` takes the repository's ``wlock`` and ``lock`` the way
  Mercurial does — a lock whose holder is a dead process on this host (same host name
  and pid namespace in the lock file) is broken; a live holder, or one on another host,
  is waited for at most ``timeout`` seconds and then refused with ``RepositoryLocked``,
  never broken — and, if the journal is still there once the locks are held, rolls it
  back with ``localrepository.recover()`` (``mercurial.transaction.rollback``). A
  journal seen while a live process holds the lock is a transaction in progress, not an
  abandoned one: waiting for the lock is what tells the two apart.

One warning line is logged per rollback, naming the repository, the transaction
(``journal.desc``) and how much it had written. Everything here does file I/O and may
wait: call it on a worker thread (``RepositoryPool`` does, before each write and for
every repository at start-up), never on the reactor thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mercurial import error as hgerror
from twisted.logger import Logger

from hgwire_tw.core.errors import CommandError

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "Recovered",
    "RepositoryLocked",
    "has_journal",
    "is_abandoned_transaction_error",
    "locked_message",
    "needs_attention",
    "recover_abandoned",
    "served_repositories",
]

log = Logger()

#: Seconds a write (or a recovery) waits for a repository lock held by a live process.
DEFAULT_LOCK_TIMEOUT = 30

# Relative to .hg/: the journal of a store repository, then of a pre-store one.
_JOURNALS = ("store/journal", "journal")
_LOCKS = ("store/lock", "wlock", "lock")


class RepositoryLocked(CommandError):
    """A live process held the repository lock for longer than we may wait."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovered:
    """What ``recover_abandoned`` rolled back."""

    #: The repository's root, as Mercurial names it.
    repository: str
    #: The transaction's description (``push``, ``serve``, ``pull``...), from journal.desc.
    transaction: str
    #: Store files the transaction had appended to or created.
    files: int
    #: Bytes cut off those files (or removed with them).
    truncated_bytes: int

    def summary(self) -> str:
        """One human line: what was rolled back."""
        return (
            f"rolled back abandoned transaction {self.transaction!r} in {self.repository} "
            f"({self.files} store files, {self.truncated_bytes} bytes truncated)"
        )


def needs_attention(path: os.PathLike[str] | str) -> bool:
    """Whether the repository at ``path`` has a journal or a lock file (cheap: lstat)."""
    hgdir = os.path.join(os.fspath(path), ".hg")
    return any(os.path.lexists(os.path.join(hgdir, name)) for name in _JOURNALS + _LOCKS)


def served_repositories(registry: Any) -> Iterator[Any]:
    """Every repository ``registry`` (a ``RepositoryRegistry``) serves, skipping names
    that vanished since they were listed (worker thread: the registry scans the disk)."""
    from hgwire_tw.core.errors import UnknownRepository

    for name in registry.names():
        try:
            yield registry.resolve(name)
        except UnknownRepository:
            continue


def has_journal(path: os.PathLike[str] | str) -> bool:
    """Whether the repository at ``path`` has a transaction journal (cheap: lstat)."""
    hgdir = os.path.join(os.fspath(path), ".hg")
    return any(os.path.lexists(os.path.join(hgdir, name)) for name in _JOURNALS)


def is_abandoned_transaction_error(exc: BaseException) -> bool:
    """Whether ``exc`` is Mercurial refusing to open a transaction over a journal."""
    return isinstance(exc, hgerror.RepoError) and b"abandoned transaction" in bytes(exc)


def locked_message(exc: hgerror.LockHeld, timeout: int) -> str:
    """The client-facing text for a lock we waited ``timeout`` seconds for in vain (the
    repository's path stays in the server log)."""
    locker = exc.locker
    if isinstance(locker, bytes):
        locker = locker.decode("utf-8", "replace")
    holder = "another process"
    if locker and ":" in locker:
        host, pid = locker.rsplit(":", 1)
        holder = f"process {pid} on host {host.split('/', 1)[0]}"
    return (
        f"the repository is locked by {holder}; gave up after waiting {timeout} s (try again later)"
    )


def _journal_summary(repo: Any) -> tuple[str, int, int]:
    """(description, files, bytes to truncate) of ``repo``'s journal, best effort."""
    desc = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        lines = repo.vfs.read(b"journal.desc").splitlines()
        desc = lines[1].decode("utf-8", "replace")
    files = truncated = 0
    with contextlib.suppress(OSError):
        for line in repo.svfs.read(b"journal").splitlines():
            name, sep, offset = line.partition(b"\0")
            if not sep:
                continue
            files += 1
            with contextlib.suppress(OSError, ValueError):
                truncated += max(0, repo.svfs.stat(name).st_size - int(offset))
    return desc, files, truncated


@contextlib.contextmanager
def _locks(repo: Any, timeout: int) -> Iterator[None]:
    """Hold ``wlock`` then ``lock`` (Mercurial's order), waiting at most ``timeout`` s.

    Mercurial's lock code breaks a lock of a dead process on this host and waits for any
    other holder; ``ui.timeout`` bounds the wait.
    """
    with repo.ui.configoverride({(b"ui", b"timeout"): b"%d" % timeout}, b"hgwire-recovery"):
        with repo.wlock(), repo.lock():
            yield


def recover_abandoned(repo: Any, *, timeout: int = DEFAULT_LOCK_TIMEOUT) -> Recovered | None:
    """Roll back ``repo``'s abandoned transaction, if it has one (worker thread).

    Returns what was rolled back, or None when there was nothing to do (no journal, or
    the transaction it belonged to finished while we waited for the lock). Stale lock
    files of dead processes are removed on the way. Raises ``RepositoryLocked`` when a
    live process keeps the lock for ``timeout`` seconds.
    """
    repo = repo.unfiltered()
    root = os.fsdecode(repo.root)
    try:
        with _locks(repo, timeout):
            if not repo.svfs.exists(b"journal"):
                return None
            desc, files, truncated = _journal_summary(repo)
            repo.recover()
    except hgerror.LockHeld as e:
        raise RepositoryLocked(locked_message(e, timeout)) from e
    except hgerror.LockUnavailable as e:
        # e.g. a read-only file system: nothing we can do, and nothing a client can fix
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise RepositoryLocked(f"the repository cannot be locked: {e.strerror}") from e
        raise
    outcome = Recovered(repository=root, transaction=desc, files=files, truncated_bytes=truncated)
    log.warn("{summary}", summary=outcome.summary())
    return outcome
