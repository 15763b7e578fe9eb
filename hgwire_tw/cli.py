"""The ``hgwire`` command: ``serve`` (the same service as ``twistd -n hgwire``) and
``passwd`` (make a password hash for the access file)."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Sequence

USAGE = """\
usage: hgwire COMMAND [options]

commands:
  serve [options]   serve repositories (same options as `twistd -n hgwire`; see serve -h)
  passwd [--stdin]  print a password hash for the access file
  clone URL DEST    clone a repository over wire protocol v2 (http://, hgwire://, ssh://)
  pull [-R DEST] [URL]
                    pull new changesets over wire protocol v2
  mirror URL DEST [--every SECONDS]
                    keep a read-only mirror in sync (pull now, then on a schedule)
  --version         print hgwire_tw's version
"""


def _serve(argv: Sequence[str]) -> int:
    # The same Options and makeService as `twistd -n hgwire`, run by hgwire_tw's own
    # runner: one-line errors, fail-fast listeners, graceful SIGTERM, SIGHUP reload.
    from hgwire_tw.app.serve import run

    return run(argv)


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
    if args[0] in ("--version", "version"):
        from hgwire_tw import __version__

        print(f"hgwire_tw {__version__}")
        return 0
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
