"""The ``hgwire`` command: ``serve`` (the same service as ``twistd -n hgwire``) and
``passwd`` (make a password hash for the access file)."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Sequence

USAGE = """\
usage: hgwire COMMAND [options]

commands:
  serve [options]   serve repositories (same options as `twistd -n hgwire`; see --help)
  passwd [--stdin]  print a password hash for the access file
  clone URL DEST    clone a repository over wire protocol v2 (http://, hgwire://, ssh://)
  pull [-R DEST] [URL]
                    pull new changesets over wire protocol v2
  mirror URL DEST [--every SECONDS]
                    keep a read-only mirror in sync (pull now, then on a schedule)
"""


def _serve(argv: Sequence[str]) -> int:
    from twisted.application import app
    from twisted.application.service import ServiceMaker
    from twisted.scripts import twistd

    maker = ServiceMaker("hgwire", "hgwire_tw.tap", "Mercurial repository server", "hgwire")

    class ServeOptions(twistd.ServerOptions):  # type: ignore[misc]
        # Offer our service maker directly, so `hgwire serve` works even where Twisted's
        # plugin discovery cannot see twisted/plugins (some editable installs).
        @property
        def subCommands(self):  # type: ignore[no-untyped-def]
            # twistd looks the chosen subcommand's service maker up in loadedPlugins.
            self.loadedPlugins = {maker.tapname: maker}
            return [(maker.tapname, None, maker.options, maker.description)]

    # `hgwire serve` is exactly `twistd -n hgwire`: one set of options, one service.
    sys.argv = ["hgwire serve", "--nodaemon", "--pidfile=", "--logfile=-", "hgwire", *argv]
    app.run(twistd.runApp, ServeOptions)
    return 0


def _passwd(argv: Sequence[str]) -> int:
    from hgwire_tw.access import hash_password

    if list(argv) == ["--stdin"]:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not argv:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("hgwire passwd: passwords differ", file=sys.stderr)
            return 1
    else:
        print("usage: hgwire passwd [--stdin]", file=sys.stderr)
        return 2
    if not password:
        print("hgwire passwd: empty password refused", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hgwire`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        return _serve(rest)
    if command == "passwd":
        return _passwd(rest)
    if command in ("clone", "pull", "mirror"):
        from hgwire_tw.client.main import clone_main, mirror_main, pull_main

        run = {"clone": clone_main, "pull": pull_main, "mirror": mirror_main}[command]
        return run(rest)
    print(f"hgwire: unknown command {command!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
