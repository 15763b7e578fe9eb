"""The logged-in SSH user and their ``session`` channels.

``HgwireAvatar`` is what authentication produces: it carries the user name, the hg-ssh
scope of the key they logged in with (every ``AccessPolicy.authorize`` of the connection
is given it) and the repositories the connection opened (for the line logged when
it ends), and lets the client open ``session`` channels only (no port forwarding, no
other channel types, no global requests). ``HgSessionChannel`` accepts, per channel, exactly one of:

* ``exec`` of ``hg -R <repo> serve --stdio`` (see ``ssh_command``) → ``V1SSHSession``;
* ``subsystem hgwire`` → v2 frames through the frame reactor (``ssh_subsystem``).

Anything else is refused. A refused ``exec`` or ``shell`` is *accepted* at the SSH level
and then answered with a message on stderr and exit status 1, so OpenSSH shows the
message instead of a bare "exec request failed"; ``pty-req``, ``env``, ``x11-req``,
agent forwarding and unknown subsystems simply get a failure reply.

Flow control (see "Things that bite"): the channel advertises a receive window of
``Settings.ssh_window`` bytes. Output beyond the client's window stays in Conch's
channel buffer; ``drained()`` hands the session a Deferred that fires once that buffer
is empty, which the session returns to the worker pool so the producer waits. Conch
calls ``startWriting`` from ``addWindowBytes`` *before* flushing its buffer, so the
check for an empty buffer is made in a ``callLater(0, ...)``. The exit status is sent
only after all output has left the buffer, then EOF and close.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.conch.avatar import ConchUser
from twisted.conch.ssh import channel, connection
from twisted.conch.ssh.common import getNS
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from hgwire_tw.access import Grant
from hgwire_tw.authorized_keys import KeyScope
from hgwire_tw.context import ServerContext
from hgwire_tw.core.errors import UnknownRepository
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.transports.ssh_command import ExecRefused, parse_exec_command, repository_name
from hgwire_tw.transports.ssh_log import ConchChatter

__all__ = ["SUBSYSTEM_NAME", "HgSessionChannel", "HgwireAvatar", "open_repository"]

log = Logger()

#: The SSH subsystem carrying v2 frames (``ssh -s host hgwire``).
SUBSYSTEM_NAME = b"hgwire"


def open_repository(
    ctx: ServerContext, user: str, path: str, scope: KeyScope | None = None
) -> tuple[ServedRepository, Grant]:
    """The repository ``path`` names for ``user`` (logged in with a key of ``scope``) and
    what they may do with it, or ``ExecRefused``.

    An unknown repository and one the user may not read get the same answer, so the
    reply does not tell which names exist.
    """
    name = repository_name(path)
    try:
        served = ctx.registry.resolve(name)
    except UnknownRepository:
        pass
    else:
        grant = ctx.access.authorize(user, served.name, scope)
        if grant.read:
            return served, grant
    raise ExecRefused(f"repository {path!r} not found (or access denied)")


class HgwireAvatar(ConchUser):
    """An authenticated SSH user: a name from the access file, where they came from and
    the hg-ssh scope of their key."""

    def __init__(
        self, ctx: ServerContext, user: str, peer_host: str, scope: KeyScope | None = None
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.user = user
        self.peer_host = peer_host
        self.scope = scope
        #: Registry names of the repositories opened, in order, each once.
        self.repos: list[str] = []
        self.channelLookup[b"session"] = HgSessionChannel

    def opened(self, name: str) -> None:
        """A session of this connection opened repository ``name``."""
        if name not in self.repos:
            self.repos.append(name)

    def logout(self) -> None:
        """Nothing to release: channels clean up when the connection goes."""


class HgSessionChannel(channel.SSHChannel):
    """A ``session`` channel running one hg session (v1 exec or the v2 subsystem)."""

    name = b"session"
    _log = ConchChatter()
    hg_avatar: HgwireAvatar
    ctx: ServerContext
    reactor: Any
    session: Any
    _started: bool
    _finished: bool
    _closed: bool
    _drain_waiters: list[Deferred[None]]
    _exit_status: int | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        avatar = self.avatar
        assert isinstance(avatar, HgwireAvatar)
        self.hg_avatar = avatar
        self.ctx = avatar.ctx
        self.reactor = avatar.ctx.reactor
        window = max(int(self.ctx.settings.ssh_window), 32 * 1024)
        self.localWindowSize = window
        self.localWindowLeft = window
        self.session = None
        self._started = False
        self._finished = False
        self._closed = False
        self._drain_waiters = []
        self._exit_status = None

    # -- requests -----------------------------------------------------------------------

    def request_exec(self, data: bytes) -> int:
        """Run ``hg -R <repo> serve --stdio``, or explain on stderr why not."""
        if self._started:
            return 0
        self._started = True
        command = getNS(data)[0]
        try:
            path = parse_exec_command(command)
            served, _ = open_repository(self.ctx, self.hg_avatar.user, path, self.hg_avatar.scope)
        except ExecRefused as e:
            log.info(
                "SSH exec refused for {user}: {command!r}: {why}",
                user=self.hg_avatar.user,
                command=command[:200],
                why=str(e),
            )
            self._refuse_soon(str(e))
            return 1
        from hgwire_tw.transports.ssh_v1 import V1SSHSession

        log.debug("SSH v1 session: {user} on {repo!r}", user=self.hg_avatar.user, repo=served.name)
        self.hg_avatar.opened(served.name)
        avatar = self.hg_avatar
        self.session = V1SSHSession(
            self.ctx, self, served, avatar.user, avatar.peer_host, scope=avatar.scope
        )
        return 1

    def request_shell(self, data: bytes) -> int:
        """No shells: say what is available instead."""
        if self._started:
            return 0
        self._started = True
        self._refuse_soon(
            f"hi {self.hg_avatar.user}! This server has no shell; use hg with an ssh:// URL."
        )
        return 1

    def request_subsystem(self, data: bytes) -> int:
        """The ``hgwire`` subsystem speaks v2 frames; other subsystems do not exist."""
        if self._started:
            return 0
        name = getNS(data)[0]
        if name != SUBSYSTEM_NAME:
            return 0
        from hgwire_tw.transports.ssh_subsystem import FrameSubsystemSession

        self._started = True
        avatar = self.hg_avatar
        self.session = FrameSubsystemSession(
            self.ctx, self, avatar.user, avatar.peer_host, scope=avatar.scope, opened=avatar.opened
        )
        return 1

    def request_pty_req(self, data: bytes) -> int:
        """Refused: nothing here is interactive."""
        return 0

    def request_env(self, data: bytes) -> int:
        """Refused (silently, as OpenSSH servers do for variables they do not accept)."""
        return 0

    def _refuse_soon(self, message: str) -> None:
        # After the request's success reply has gone out.
        self.reactor.callLater(0, self._refuse, message)

    def _refuse(self, message: str) -> None:
        if self._closed:
            return
        self.write_stderr(f"hgwire: {message}\n".encode())
        self.finish(1)

    # -- data from the client -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.session is not None:
            self.session.dataReceived(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        """Clients have no business sending extended data; ignore it."""

    def eofReceived(self) -> None:
        if self.session is not None:
            self.session.eofReceived()
        elif not self._started:
            self.finish(1)

    def closed(self) -> None:
        self._closed = True
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.cancel()
        if self.session is not None:
            self.session.connectionLost()

    # -- SessionOutput ------------------------------------------------------------------

    def write_stderr(self, data: bytes) -> None:
        """Send ``data`` as stderr (extended data type 1)."""
        if not self._closed and not self._finished and data:
            self.writeExtended(connection.EXTENDED_DATA_STDERR, data)

    def write(self, data: bytes) -> None:
        # Conch's addWindowBytes flushes its buffer through here too, also after finish().
        if not self._closed and data:
            super().write(data)

    def _pending(self) -> bool:
        return bool(self.buf or self.extBuf)

    def drained(self) -> Deferred[None] | None:
        """None if all output is sent; else a Deferred firing once it is."""
        if self._closed:
            d: Deferred[None] = Deferred()
            d.cancel()
            return d
        if not self._pending():
            return None
        d = Deferred()
        self._drain_waiters.append(d)
        return d

    def startWriting(self) -> None:
        # Called by addWindowBytes *before* it flushes the buffer: look afterwards.
        self.reactor.callLater(0, self._window_opened)

    def _window_opened(self) -> None:
        if self._closed or self._pending():
            return
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.callback(None)
        if self._exit_status is not None:
            self._send_exit(self._exit_status)

    def finish(self, status: int) -> None:
        """Exit status after the buffered output, then EOF and close."""
        if self._finished or self._closed:
            return
        self._finished = True
        if self._pending():
            self._exit_status = status
        else:
            self._send_exit(status)

    def abort(self) -> None:
        """Cut the whole SSH connection now: its client stopped reading, so anything
        still buffered (on this channel or beneath it) would never leave."""
        conn = self.conn
        ssh_transport = getattr(conn, "transport", None)
        tcp = getattr(ssh_transport, "transport", None)
        if tcp is not None:
            tcp.abortConnection()

    def _send_exit(self, status: int) -> None:
        self._exit_status = None
        if self._closed:
            return
        conn = self.conn
        assert conn is not None
        conn.sendRequest(self, b"exit-status", struct.pack(">L", status))
        conn.sendEOF(self)
        self.loseConnection()
