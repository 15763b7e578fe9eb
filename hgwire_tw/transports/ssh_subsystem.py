"""The ``hgwire`` SSH subsystem: v2 frames, full duplex, through the frame reactor.

``ssh -s host hgwire`` opens it. The client first names the repository with the
preamble of ``hgwire_tw.core.preamble`` (``hgwire-v2 <name>\\n`` → ``ok\\n``); the
repository must exist and be readable by the logged-in user, else the answer is
``error <message>\\n`` and exit status 1. After ``ok`` both sides exchange frames: each
command runs as soon as its request is complete, several at once (push commands only
for users who may write), and their frames are written as they are encoded (on worker
threads), each command's next batch waiting while the channel window is full.

The session is :class:`~hgwire_tw.transports.framesession.FrameSession` (shared with
raw TCP); this module only says who may open what. When the client sends EOF, commands
in flight still finish; then the session ends with exit status 0. A protocol failure
ends it with status 1 (after the reactor's error frame). If the channel goes away,
every running command is cancelled.
"""

from __future__ import annotations

from collections.abc import Callable

from hgwire_tw.authorized_keys import KeyScope
from hgwire_tw.context import ServerContext
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.transports.framesession import FrameSession, SessionRefused
from hgwire_tw.transports.ssh_command import ExecRefused
from hgwire_tw.transports.ssh_v1 import SessionOutput

__all__ = ["FrameSubsystemSession"]


class FrameSubsystemSession(FrameSession):
    """One ``hgwire`` subsystem session for ``user`` on an SSH channel."""

    transport = "ssh"

    def __init__(
        self,
        ctx: ServerContext,
        output: SessionOutput,
        user: str,
        peer_host: str = "",
        *,
        scope: KeyScope | None = None,
        opened: Callable[[str], None] | None = None,
    ) -> None:
        self.user = user
        self.peer_host = peer_host
        #: The hg-ssh scope of the key the user logged in with (narrows every check).
        self.scope = scope
        self._opened = opened
        super().__init__(ctx, output, self._open_for_user, label=f"SSH hgwire subsystem {user}")

    def _open_for_user(self, name: str) -> tuple[ServedRepository, bool]:
        from hgwire_tw.transports.ssh_session import open_repository

        try:
            served, grant = open_repository(self.ctx, self.user, name, self.scope)
        except ExecRefused as e:
            raise SessionRefused(str(e)) from None
        if self._opened is not None:
            self._opened(served.name)
        return served, grant.write
