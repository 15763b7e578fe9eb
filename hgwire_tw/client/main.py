"""``hgwire clone URL DEST`` and ``hgwire pull [-R DEST] [URL]``.

The Twisted reactor runs on the main thread and carries the network; the pull itself
(:func:`hgwire_tw.client.pull.pull`) runs on one worker thread that owns the Mercurial
repository. Ctrl-C or a broken connection aborts the transaction; the repository stays
as it was and the same command (or ``hgwire pull -R DEST``) completes it later.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hgwire_tw.client.bridge import ThreadedRemote
from hgwire_tw.client.peer import make_peer, parse_url
from hgwire_tw.client.progress import TerminalProgress
from hgwire_tw.client.pull import PullStats, pull
from hgwire_tw.client.repo import default_path, open_or_create, set_default_path

__all__ = ["clone_main", "pull_main", "run_pull"]


def run_pull(url: str, dest: Path, *, create: bool, quiet: bool = False) -> PullStats:
    """Pull ``url`` into ``dest`` (created empty first when ``create``); runs the reactor.

    Raises whatever stopped the pull. Uses (and stops) the global Twisted reactor, so it
    can run once per process.
    """
    from twisted.internet import reactor as global_reactor
    from twisted.internet.threads import deferToThread

    reactor: Any = global_reactor
    progress = TerminalProgress(sys.stdout)
    peer = make_peer(reactor, url)
    remote = ThreadedRemote(reactor, peer)
    outcome: dict[str, Any] = {}

    def work() -> PullStats:
        repo = open_or_create(dest, create=create)
        if create:
            set_default_path(dest, url)
        return pull(repo, remote, progress if not quiet else lambda _: None)

    def done(result: object) -> None:
        outcome["result"] = result
        peer.close()
        if reactor.running:
            reactor.stop()

    def start() -> None:
        deferToThread(work).addBoth(done)

    # Ctrl-C stops the reactor: fail the outstanding commands so the worker's
    # transaction aborts (and the thread pool can be joined).
    reactor.addSystemEventTrigger("before", "shutdown", remote.abort)
    reactor.callWhenRunning(start)
    reactor.run()
    progress.clear()
    result = outcome.get("result")
    if isinstance(result, PullStats):
        if remote.redirects_followed or remote.redirects_failed:
            result.extra["redirects followed"] = remote.redirects_followed
            result.extra["redirects fallen back"] = remote.redirects_failed
        return result
    if result is None:
        raise KeyboardInterrupt("interrupted")
    from twisted.python.failure import Failure

    assert isinstance(result, Failure)
    result.raiseException()
    raise AssertionError("unreachable")  # pragma: no cover


def _report(stats: PullStats, quiet: bool) -> None:
    if not quiet:
        print(stats.summary())
        if stats.bookmarks:
            print(f"updated {stats.bookmarks} bookmarks")
        for what in ("redirects followed", "redirects fallen back"):
            if what in stats.extra:
                print(f"{stats.extra[what]} {what}")


def _fail(command: str, exc: BaseException) -> int:
    message = str(exc) or type(exc).__name__
    print(f"hgwire {command}: abort: {message}", file=sys.stderr)
    return 255 if isinstance(exc, KeyboardInterrupt) else 1


def clone_main(argv: Sequence[str]) -> int:
    """``hgwire clone [-q] URL DEST``."""
    parser = argparse.ArgumentParser(prog="hgwire clone", description="clone over wire v2")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    parser.add_argument("url", help="http(s)://host/repo or hgwire://host:port/repo")
    parser.add_argument("dest", type=Path, help="directory to create")
    args = parser.parse_args(list(argv))
    try:
        parse_url(args.url)
    except ValueError as exc:
        return _fail("clone", exc)
    dest: Path = args.dest
    create = True
    if (dest / ".hg").exists():
        # The remains of an interrupted clone of the same URL are resumed.
        if default_path(dest) != args.url:
            return _fail("clone", FileExistsError(f"destination {dest} already exists"))
        create = False
    elif dest.exists() and any(dest.iterdir()):
        return _fail("clone", FileExistsError(f"destination {dest} is not empty"))
    try:
        stats = run_pull(args.url, dest, create=create, quiet=args.quiet)
    except BaseException as exc:
        if (dest / ".hg").exists():
            print(f"(resume with: hgwire pull -R {dest})", file=sys.stderr)
        return _fail("clone", exc)
    _report(stats, args.quiet)
    return 0


def pull_main(argv: Sequence[str]) -> int:
    """``hgwire pull [-q] [-R DEST] [URL]``."""
    parser = argparse.ArgumentParser(prog="hgwire pull", description="pull over wire v2")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    parser.add_argument("-R", "--repository", type=Path, default=Path("."), help="local repo")
    parser.add_argument("url", nargs="?", help="defaults to paths.default of the repository")
    args = parser.parse_args(list(argv))
    dest: Path = args.repository
    if not (dest / ".hg").is_dir():
        return _fail("pull", FileNotFoundError(f"no repository at {dest}"))
    url = args.url or default_path(dest)
    if not url:
        return _fail("pull", ValueError("no URL given and no paths.default"))
    try:
        parse_url(url)
        stats = run_pull(url, dest, create=False, quiet=args.quiet)
    except BaseException as exc:
        return _fail("pull", exc)
    _report(stats, args.quiet)
    return 0
