"""One pull as a Deferred on the reactor thread (used by the CLI and by mirrors).

:func:`start_pull` makes the peer and its :class:`~hgwire_tw.client.bridge.ThreadedRemote`
on the reactor thread and runs the whole pull (opening the repository, the
transaction) on one worker thread of ``threadpool``, the only thread that touches the
Mercurial objects. Cancelling the Deferred closes the peer: the worker's next wait on
the server fails, its transaction aborts and the repository stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from hgwire_tw.client.bridge import ThreadedRemote
from hgwire_tw.client.peer import ClientOptions, make_peer
from hgwire_tw.client.pull import ProgressFn, PullStats, pull

__all__ = ["start_pull"]


def _nothing(stats: PullStats) -> None:
    pass


def start_pull(
    reactor: Any,
    url: str,
    open_repo: Callable[[], Any],
    *,
    options: ClientOptions | None = None,
    progress: ProgressFn = _nothing,
    threadpool: Any = None,
    stream: bool = True,
) -> Deferred[PullStats]:
    """Pull ``url`` into the repository ``open_repo()`` returns (called on the worker).

    Reactor thread only. ``threadpool`` defaults to the reactor's. The result fires with
    the ``PullStats``, or fails with what stopped the pull (``CancelledError`` once
    cancelled; the worker then still finishes aborting its transaction in the
    background). ``stream``: an empty repository may be filled from the server's store
    files (see ``pull``).
    """
    peer = make_peer(reactor, url, options)
    remote = ThreadedRemote(reactor, peer)

    def cancel(_: Deferred[PullStats]) -> None:
        remote.abort()

    result: Deferred[PullStats] = Deferred(cancel)

    def work() -> PullStats:
        return pull(open_repo(), remote, progress, stream=stream)

    def done(outcome: PullStats | Failure) -> None:
        peer.close()
        if result.called:
            return  # cancelled: the worker has now finished aborting
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            if remote.redirects_followed or remote.redirects_failed:
                outcome.extra["redirects followed"] = remote.redirects_followed
                outcome.extra["redirects fallen back"] = remote.redirects_failed
            result.callback(outcome)

    pool = threadpool if threadpool is not None else reactor.getThreadPool()
    deferToThreadPool(reactor, pool, work).addBoth(done)
    return result
