"""``hgwire clone URL DEST``, ``hgwire pull [-R DEST] [URL]`` and ``hgwire mirror URL DEST``.

The Twisted reactor runs on the main thread and carries the network; the pull itself
(:func:`hgwire_tw.client.pull.pull`) runs on one worker thread that owns the Mercurial
repository. Ctrl-C or a broken connection aborts the transaction; the repository stays
as it was and the same command (or ``hgwire pull -R DEST``) completes it later.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hgwire_tw.client.credentials import strip_userinfo
from hgwire_tw.client.job import start_pull
from hgwire_tw.client.peer import ClientOptions, parse_url
from hgwire_tw.client.progress import TerminalProgress
from hgwire_tw.client.pull import PullStats
from hgwire_tw.client.repo import checkout, default_path, open_or_create, set_default_path

__all__ = [
    "add_connection_options",
    "clone_main",
    "connection_options",
    "mirror_main",
    "pull_main",
    "run_pull",
]


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """The options saying how to reach a server (logins, CAs, SSH keys, known hosts)."""
    web = parser.add_argument_group("http(s):// URLs")
    web.add_argument(
        "--user",
        metavar="NAME",
        help="log in as NAME (the password comes from [auth] in ~/.hgrc or a prompt); "
        "default: the URL's user, else [auth]",
    )
    web.add_argument(
        "--cacerts",
        metavar="FILE",
        help="PEM file of the certificate authorities to trust for https:// "
        "(default: [web] cacerts in ~/.hgrc, else the system's)",
    )
    group = parser.add_argument_group("ssh:// URLs")
    group.add_argument(
        "--ssh-key",
        action="append",
        default=[],
        metavar="PATH",
        help="private key to log in with (repeatable; default: ssh-agent, then "
        "~/.ssh/id_ed25519, id_ecdsa, id_rsa)",
    )
    group.add_argument(
        "--known-hosts",
        metavar="PATH",
        help="OpenSSH known-hosts file checked for the server's host key "
        "(default ~/.ssh/known_hosts)",
    )
    group.add_argument(
        "--accept-new-host-key",
        action="store_true",
        help="record the host key of a server not yet in the known-hosts file "
        "(a changed key is still refused)",
    )
    group.add_argument("--no-ssh-agent", action="store_true", help="do not ask ssh-agent")


def connection_options(args: argparse.Namespace, url: str | None = None) -> ClientOptions:
    """The ``ClientOptions`` of parsed ``add_connection_options`` arguments; for an
    ``http(s)://`` ``url`` the login is found now (asking for a password on a terminal
    when [auth] has none), so a mirror does not ask again at every pull."""
    login = None
    if url is not None and urlsplit(url).scheme.lower() in ("http", "https"):
        from hgwire_tw.client.credentials import login_for

        login = login_for(url, user=args.user)
    return ClientOptions(
        ssh_keys=tuple(args.ssh_key),
        known_hosts=args.known_hosts,
        accept_new_host_key=bool(args.accept_new_host_key),
        ssh_agent=not args.no_ssh_agent,
        http_login=login,
        http_user=args.user,
        cacerts=args.cacerts,
    )


def run_pull(
    url: str,
    dest: Path,
    *,
    create: bool,
    quiet: bool = False,
    options: ClientOptions | None = None,
    stream: bool = True,
) -> PullStats:
    """Pull ``url`` into ``dest`` (created empty first when ``create``); runs the reactor.

    ``stream``: an empty ``dest`` may be filled by copying the server's store files.

    Raises whatever stopped the pull. Uses (and stops) the global Twisted reactor, so it
    can run once per process.
    """
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    progress = TerminalProgress(sys.stdout)
    outcome: dict[str, Any] = {}

    def open_repo() -> Any:
        repo = open_or_create(dest, create=create)
        if create:
            # Like hg clone: the password of a URL is not written into .hg/hgrc.
            set_default_path(dest, strip_userinfo(url, keep_user=True))
        return repo

    def done(result: object) -> None:
        outcome["result"] = result
        if reactor.running:
            reactor.stop()

    def start() -> None:
        d = start_pull(
            reactor,
            url,
            open_repo,
            options=options,
            progress=progress if not quiet else lambda _: None,
            stream=stream,
        )
        # Ctrl-C stops the reactor: cancelling closes the peer, so the worker's
        # transaction aborts (and the thread pool can be joined).
        reactor.addSystemEventTrigger("before", "shutdown", d.cancel)
        d.addBoth(done)

    reactor.callWhenRunning(start)
    reactor.run()
    progress.clear()
    result = outcome.get("result")
    if isinstance(result, PullStats):
        return result
    from twisted.internet.defer import CancelledError
    from twisted.python.failure import Failure

    if result is None or (isinstance(result, Failure) and result.check(CancelledError)):
        raise KeyboardInterrupt("interrupted")
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


def _holds_nothing(dest: Path) -> bool:
    """Whether ``dest`` is a repository without a single changeset."""
    if not (dest / ".hg").is_dir():
        return False
    try:
        return len(open_or_create(dest).unfiltered().changelog) == 0
    except Exception:
        return False


def _fail(command: str, exc: BaseException) -> int:
    message = str(exc) or type(exc).__name__
    print(f"hgwire {command}: abort: {message}", file=sys.stderr)
    return 255 if isinstance(exc, KeyboardInterrupt) else 1


def clone_main(argv: Sequence[str]) -> int:
    """``hgwire clone [-q] URL DEST``."""
    parser = argparse.ArgumentParser(
        prog="hgwire clone",
        description="clone over wire v2, then check out a working copy like hg clone",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    parser.add_argument(
        "-U", "--noupdate", action="store_true", help="do not check out a working copy"
    )
    parser.add_argument(
        "--no-stream",
        action="store_true",
        help="fetch revision by revision even where the server offers its store files",
    )
    parser.add_argument(
        "url", help="http(s)://host/repo, hgwire://host:port/repo or ssh://user@host:port/repo"
    )
    parser.add_argument("dest", type=Path, help="directory to create")
    add_connection_options(parser)
    args = parser.parse_args(list(argv))
    try:
        parse_url(args.url)
    except ValueError as exc:
        return _fail("clone", exc)
    dest: Path = args.dest
    create = True
    if (dest / ".hg").exists():
        # The remains of an interrupted clone of the same URL are resumed.
        if default_path(dest) != strip_userinfo(args.url, keep_user=True):
            return _fail("clone", FileExistsError(f"destination {dest} already exists"))
        create = False
    elif dest.exists() and any(dest.iterdir()):
        return _fail("clone", FileExistsError(f"destination {dest} is not empty"))
    existed = dest.exists()
    try:
        options = connection_options(args, args.url)
        stats = run_pull(
            args.url,
            dest,
            create=create,
            quiet=args.quiet,
            options=options,
            stream=not args.no_stream,
        )
    except BaseException as exc:
        if create and _holds_nothing(dest):
            # Nothing arrived (e.g. the server was unreachable): leave no empty clone.
            shutil.rmtree(dest / ".hg" if existed else dest, ignore_errors=True)
        elif (dest / ".hg").exists():
            print(f"(resume with: hgwire pull -R {dest})", file=sys.stderr)
        return _fail("clone", exc)
    _report(stats, args.quiet)
    if not args.noupdate:
        try:
            checkout(dest, quiet=args.quiet)
        except Exception as exc:
            print(f"(the repository is complete; check out with: hg -R {dest} update)",
                  file=sys.stderr)  # fmt: skip
            return _fail("clone", exc)
    return 0


def pull_main(argv: Sequence[str]) -> int:
    """``hgwire pull [-q] [-R DEST] [URL]``."""
    parser = argparse.ArgumentParser(prog="hgwire pull", description="pull over wire v2")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    parser.add_argument("-R", "--repository", type=Path, default=Path("."), help="local repo")
    parser.add_argument("url", nargs="?", help="defaults to paths.default of the repository")
    add_connection_options(parser)
    args = parser.parse_args(list(argv))
    dest: Path = args.repository
    if not (dest / ".hg").is_dir():
        return _fail("pull", FileNotFoundError(f"no repository at {dest}"))
    url = args.url or default_path(dest)
    if not url:
        return _fail("pull", ValueError("no URL given and no paths.default"))
    try:
        parse_url(url)
        options = connection_options(args, url)
        stats = run_pull(url, dest, create=False, quiet=args.quiet, options=options)
    except BaseException as exc:
        return _fail("pull", exc)
    _report(stats, args.quiet)
    return 0


def mirror_main(argv: Sequence[str]) -> int:
    """``hgwire mirror [-q] [--every SECONDS] URL DEST``: keep DEST in sync until stopped."""
    from hgwire_tw.client.mirror import DEFAULT_EVERY, MirrorSync, prepare_mirror, pull_mirror

    parser = argparse.ArgumentParser(
        prog="hgwire mirror",
        description="keep a local read-only mirror in sync (pull now, then on a schedule; "
        "a failing upstream is retried with exponential back-off)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    parser.add_argument(
        "--every",
        type=float,
        default=DEFAULT_EVERY,
        metavar="SECONDS",
        help=f"seconds between pulls (default {DEFAULT_EVERY:g})",
    )
    parser.add_argument("url", help="http(s)://, hgwire:// or ssh:// URL of the upstream")
    parser.add_argument("dest", type=Path, help="the mirror (created if missing)")
    add_connection_options(parser)
    args = parser.parse_args(list(argv))
    if args.every <= 0:
        return _fail("mirror", ValueError("--every must be positive"))
    try:
        parse_url(args.url)
    except ValueError as exc:
        return _fail("mirror", exc)
    dest: Path = args.dest
    if dest.exists() and not (dest / ".hg").is_dir() and any(dest.iterdir()):
        return _fail("mirror", FileExistsError(f"{dest} is not empty and not a repository"))
    prepare_mirror(dest, args.url)

    from twisted.internet import reactor as global_reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    reactor: Any = global_reactor
    level = LogLevel.warn if args.quiet else LogLevel.info
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    sync = MirrorSync(
        str(dest),
        pull_mirror(reactor, args.url, dest, options=connection_options(args, args.url)),
        reactor=reactor,
        every=args.every,
    )
    reactor.callWhenRunning(sync.startService)
    reactor.addSystemEventTrigger("before", "shutdown", sync.stopService)
    reactor.run()
    return 0
