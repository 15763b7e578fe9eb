"""Mirrors: a local repository kept in sync with an upstream server on a schedule.

:class:`MirrorSync` is a Twisted service (``hgwire mirror URL DEST`` runs one on its own;
``hgwire serve --mirror NAME=URL`` runs one per mirror inside the server, which also
serves the mirror on every transport). It pulls once when started, then ``every``
seconds after the previous pull ended. A failing pull (upstream down, network,
protocol error) aborts its transaction, so the mirror keeps exactly what it had, and is
retried after an exponential back-off (:class:`Backoff`: doubling from ``initial``,
capped, with jitter); the first success returns to the normal schedule. Pulls never
overlap. The reactor is injected, so tests drive the schedule with a ``Clock``.

A mirror repository is read-only for everyone but its sync: :func:`prepare_mirror`
writes into its ``.hg/hgrc``::

    [hgwire]
    mirror-of = URL
    [hooks]
    pretxnopen.hgwire-mirror = python:hgwire_tw.client.mirror.refuse_writes

and the sync opens the repository with ``hgwire.mirror-sync=yes`` set in memory, which
the hook lets through. Any other transaction (a push over any transport, a pushkey,
a local commit) is aborted with a message naming the upstream.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from hgwire_tw.client.peer import ClientOptions
from hgwire_tw.client.pull import PullStats
from hgwire_tw.repo.recovery import DEFAULT_LOCK_TIMEOUT

__all__ = [
    "DEFAULT_EVERY",
    "Backoff",
    "MirrorSync",
    "open_for_sync",
    "prepare_mirror",
    "pull_mirror",
    "refuse_writes",
]

log = Logger()

#: Seconds between two pulls of a healthy upstream, unless told otherwise.
DEFAULT_EVERY = 300.0

_HOOK = "pretxnopen.hgwire-mirror"


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Delays before retrying a failing upstream: ``initial * factor**(n-1)`` for the
    n-th failure in a row, at most ``cap``, minus up to ``jitter`` (a fraction) of it so
    that many mirrors of one server do not retry in step."""

    initial: float = 5.0
    factor: float = 2.0
    cap: float = 600.0
    jitter: float = 0.2

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after ``failures`` (≥ 1) consecutive failures."""
        base = min(self.cap, self.initial * self.factor ** max(0, failures - 1))
        return base * (1.0 - self.jitter * rand())

    @classmethod
    def for_interval(cls, every: float) -> Backoff:
        """A back-off suiting a schedule of ``every`` seconds: the first retry comes no
        later than the next regular pull would, the cap is at least ten minutes."""
        return cls(initial=min(every, 5.0), cap=max(every, 600.0))


class MirrorSync(service.Service):
    """Runs ``pull()`` now and on a schedule; see the module docs.

    ``pull`` starts one pull on the reactor thread and returns its Deferred
    (cancelling it must abort the pull); :func:`pull_mirror` makes one.
    """

    def __init__(
        self,
        name: str,
        pull: Callable[[], Deferred[PullStats]],
        *,
        reactor: Any,
        every: float = DEFAULT_EVERY,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self._pull = pull
        self._reactor = reactor
        self.every = every
        self.backoff = backoff or Backoff.for_interval(every)
        self._rand = rand
        self.failures = 0
        self.pulls = 0
        self.last_stats: PullStats | None = None
        self.last_error: str | None = None
        self._next: Any = None  # the IDelayedCall of the next pull
        self._running: Deferred[PullStats] | None = None

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self) -> None:
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        running, self._running = self._running, None
        if running is not None:
            running.cancel()

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._next = self._reactor.callLater(delay, self._start)

    def _start(self) -> None:
        self._next = None
        if not self.running or self._running is not None:
            return
        self.pulls += 1
        try:
            d = self._pull()
        except Exception:
            d = Deferred()
            d.errback(Failure())
        self._running = d
        d.addBoth(self._ended, d)

    def _ended(self, outcome: PullStats | Failure, d: Deferred[PullStats]) -> None:
        if self._running is d:
            self._running = None
        if isinstance(outcome, Failure) and outcome.check(CancelledError):
            return  # stopped
        if isinstance(outcome, Failure):
            self.failures += 1
            self.last_error = outcome.getErrorMessage() or outcome.type.__name__
            delay = self.backoff.delay(self.failures, self._rand)
            log.warn(
                "mirror {name}: pull failed ({error}); retry {n} in {delay:.1f}s, "
                "the mirror keeps what it has",
                name=self.name,
                error=self.last_error,
                n=self.failures,
                delay=delay,
            )
            self._schedule(delay)
            return
        if self.failures:
            log.info("mirror {name}: upstream is back", name=self.name)
        self.failures = 0
        self.last_error = None
        self.last_stats = outcome
        if outcome.changesets or outcome.bookmarks:
            log.info("mirror {name}: {summary}", name=self.name, summary=outcome.summary())
        self._schedule(self.every)


# -- the mirror repository ----------------------------------------------------------------


def prepare_mirror(dest: Path, url: str) -> None:
    """Create the mirror repository at ``dest`` if missing and mark it read-only.

    Idempotent; an existing repository gets the marks (and ``paths.default``) if it
    lacks them. Runs Mercurial and writes files: call it off the reactor thread or
    before the reactor runs.
    """
    from hgwire_tw.client.credentials import strip_userinfo
    from hgwire_tw.client.repo import open_or_create

    url = strip_userinfo(url, keep_user=True)  # no password in .hg/hgrc
    if not (dest / ".hg").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        open_or_create(dest, create=True)
    hgrc = dest / ".hg" / "hgrc"
    text = hgrc.read_text(encoding="utf-8") if hgrc.exists() else ""
    if _HOOK not in text:
        text += (
            f"\n# written by hgwire: this repository mirrors {url}\n"
            f"[paths]\ndefault = {url}\n"
            f"[hgwire]\nmirror-of = {url}\n"
            f"[hooks]\n{_HOOK} = python:hgwire_tw.client.mirror.refuse_writes\n"
        )
        hgrc.write_text(text, encoding="utf-8")


def open_for_sync(dest: Path, *, lock_timeout: int = DEFAULT_LOCK_TIMEOUT) -> Any:
    """The mirror repository, opened so that its read-only hook lets this pull write.

    A transaction abandoned by an earlier sync that was killed is rolled back first
    (``hgwire_tw.repo.recovery``: one warning line), so the pull does not fail on it;
    a live lock holder is waited for at most ``lock_timeout`` seconds. Worker thread
    (the one that will pull)."""
    from hgwire_tw.client.repo import open_or_create
    from hgwire_tw.repo.recovery import has_journal, recover_abandoned

    repo = open_or_create(dest)
    repo.ui.setconfig(b"hgwire", b"mirror-sync", b"yes", b"hgwire mirror")
    repo.ui.setconfig(b"ui", b"timeout", b"%d" % lock_timeout, b"hgwire mirror")
    if has_journal(dest):
        recover_abandoned(repo, timeout=lock_timeout)
    return repo


def refuse_writes(ui: Any, repo: Any, hooktype: bytes, **kwargs: Any) -> bool:
    """``pretxnopen`` hook of a mirror: only the mirror's own sync may write."""
    from mercurial import error

    if repo.ui.configbool(b"hgwire", b"mirror-sync"):
        return False
    upstream = repo.ui.config(b"hgwire", b"mirror-of") or b"its upstream"
    raise error.Abort(b"this repository is a read-only mirror of %s; push there instead" % upstream)


def pull_mirror(
    reactor: Any,
    url: str,
    dest: Path,
    *,
    options: ClientOptions | None = None,
    threadpool: Any = None,
    lock_timeout: int = DEFAULT_LOCK_TIMEOUT,
) -> Callable[[], Deferred[PullStats]]:
    """A ``pull`` for :class:`MirrorSync`: each call pulls ``url`` into ``dest``, waiting
    at most ``lock_timeout`` seconds for a live lock holder (``open_for_sync``)."""
    from hgwire_tw.client.job import start_pull

    def pull() -> Deferred[PullStats]:
        return start_pull(
            reactor,
            url,
            lambda: open_for_sync(dest, lock_timeout=lock_timeout),
            options=options,
            threadpool=threadpool,
        )

    return pull
