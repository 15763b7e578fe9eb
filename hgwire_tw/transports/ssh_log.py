"""What the SSH server writes to the log: one line per command, one per connection.

An operator reading the log at ``info`` sees, for each SSH connection:

* ``SSH login: USER from ADDRESS`` (``ssh_auth``);
* one access line per v1 command, like the HTTP access log::

      127.0.0.1 alice "ssh team/proj getbundle" ok zstd 1834201 0.412s

  address, user, repository (``/`` for the root), command, outcome (``ok``, ``error``
  for an error answer, ``denied``, ``gone`` when the client left first), the engine the
  response was compressed with (``-`` for answers that are not streams), bytes sent
  for it (stdout and stderr) and seconds;
* one line when the connection ends, with the user, the repositories it used, how long
  it lasted and the bytes sent. A client that ends the connection normally (OpenSSH
  sends "disconnected by user", code 11, after every ``hg`` command) is not an error:
  that line is at ``info``. Any other disconnect code is a ``warn`` line.

Conch itself narrates every connection at ``info`` ("channel open", "remote close",
"sending close 0", "connection lost", the missing moduli file...): those lines say
nothing the lines above do not, so our Conch subclasses log them at ``debug``
(``ConchChatter``). Conch's warnings and errors keep their level.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

__all__ = ["DISCONNECT_BY_APPLICATION", "ConchChatter", "command_line", "connection_line"]

#: SSH_DISCONNECT_BY_APPLICATION: what OpenSSH sends when its command is done.
DISCONNECT_BY_APPLICATION = 11


class ConchChatter(Logger):
    """A ``Logger`` for Conch's classes that writes their ``info`` lines at ``debug``.

    Set as the ``_log`` class attribute of a Conch subclass; ``Logger`` is a descriptor,
    so each instance gets one of these bound to it.
    """

    def info(self, format: str | None = None, **kwargs: Any) -> None:
        """Conch's routine narration: debug."""
        self.debug(format, **kwargs)


def command_line(
    *,
    address: str,
    user: str,
    repo: str,
    command: str,
    outcome: str,
    engine: str,
    sent: int,
    seconds: float,
) -> str:
    """The access line of one SSH command (see the module docstring)."""
    return (
        f'{address or "-"} {user or "-"} "ssh {repo or "/"} {command}" {outcome} '
        f"{engine or '-'} {sent} {seconds:.3f}s"
    )


def connection_line(
    *,
    address: str,
    user: str | None,
    repos: list[str],
    seconds: float,
    sent: int,
    how: str,
) -> str:
    """The line logged when an SSH connection ends."""
    used = ",".join(r or "/" for r in repos) or "-"
    return (
        f"SSH connection of {user or '-'} from {address or '-'} ended ({how}): "
        f"repository {used}, {seconds:.3f}s, {sent} bytes sent"
    )
