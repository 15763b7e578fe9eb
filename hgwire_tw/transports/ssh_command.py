"""Which ``exec`` commands the SSH server runs, and how their path names a repository.

The only command accepted is what Mercurial's SSH client sends::

    <remotecmd> -R <path> serve --stdio

split with ``shlex`` (POSIX rules, so the client's shell quoting of odd paths is
honoured), where ``<remotecmd>``'s basename is ``hg`` (``ui.remotecmd`` may be a full
path). Nothing else runs: no other arguments, no other flags, no shell.

``<path>`` is the path of the ``ssh://`` URL as the client sends it: ``ssh://host/team/proj``
sends ``team/proj`` and ``ssh://host//team/proj`` sends ``/team/proj``; ``ssh://host`` sends
``.``. ``repository_name`` turns it into a registry name by dropping **one** leading ``/``
and any trailing ``/``, with ``.`` and the empty path meaning the root repository ``""``.
So both URL spellings reach the same repository, and an "absolute" path such as
``/etc`` is just the name ``etc``, which exists only if the configuration says so. The
name is then only ever *looked up* by ``RepositoryRegistry.resolve``, which refuses
``..``, empty segments, leading slashes (``//x`` after our one strip) and unknown names.
"""

from __future__ import annotations

import posixpath
import shlex

__all__ = ["ExecRefused", "parse_exec_command", "repository_name"]

#: Longest ``exec`` command accepted (a path plus a few words).
MAX_COMMAND = 4096


class ExecRefused(Exception):
    """An ``exec`` request the server will not run; ``str(e)`` is shown on stderr."""


def parse_exec_command(command: bytes) -> str:
    """The ``<path>`` of an ``hg -R <path> serve --stdio`` command, else ``ExecRefused``."""
    if len(command) > MAX_COMMAND:
        raise ExecRefused("command too long")
    try:
        text = command.decode("utf-8")
    except UnicodeDecodeError:
        raise ExecRefused("command is not UTF-8") from None
    if "\0" in text:
        raise ExecRefused("command contains a NUL byte")
    try:
        argv = shlex.split(text, comments=False, posix=True)
    except ValueError as e:
        raise ExecRefused(f"cannot parse command: {e}") from None
    if not argv:
        raise ExecRefused("empty command")
    if posixpath.basename(argv[0]) != "hg":
        raise ExecRefused(
            f"command {argv[0]!r} is not available; this server only runs "
            "'hg -R <repository> serve --stdio'"
        )
    if len(argv) != 5 or argv[1] != "-R" or argv[3:] != ["serve", "--stdio"]:
        raise ExecRefused("only 'hg -R <repository> serve --stdio' is available on this server")
    return argv[2]


def repository_name(path: str) -> str:
    """The registry name for the ``-R`` path a client sent (see the module docstring)."""
    if path.startswith("/"):
        path = path[1:]
    path = path.rstrip("/")
    return "" if path == "." else path
