"""The SSH transport on Twisted Conch: ``make_ssh_factory(ctx, state_dir)``.

The pieces, each in its own module:

* ``ssh_keys``: the host key (ed25519, generated once into the state directory) and the
  modern-only algorithm lists;
* ``ssh_auth``: public-key authentication against the access file (``from=`` included);
* ``ssh_session``: the avatar and its ``session`` channels (exec / subsystem / refusals,
  flow control, exit status);
* ``ssh_command``: which ``exec`` commands run and how their path names a repository;
* ``ssh_v1``: ``hg -R <repo> serve --stdio`` (wire protocol v1);
* ``ssh_subsystem``: the ``hgwire`` subsystem (v2 frames through the frame reactor);
* ``ssh_log``: the access line per command and the line per connection.

This module adds the connection-level pieces: ``HgwireTransport`` logs one line when a
connection ends (user, repositories, duration, bytes sent; at ``info`` for a client that
said "disconnected by user"), and ``HgwireConnection`` counts the channel bytes sent.

``docs/ssh.md`` describes the behaviour for administrators and client users.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.conch.ssh import connection, factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from hgwire_tw.context import ServerContext
from hgwire_tw.transports.ssh_auth import HgwireUserAuthServer, PublicKeyPortal
from hgwire_tw.transports.ssh_keys import (
    HgwireServerTransport,
    host_key_algorithms,
    load_host_keys,
)
from hgwire_tw.transports.ssh_log import DISCONNECT_BY_APPLICATION, ConchChatter, connection_line
from hgwire_tw.transports.ssh_session import HgwireAvatar

__all__ = ["HgwireConnection", "HgwireSSHFactory", "HgwireTransport", "make_ssh_factory"]

log = Logger()


class HgwireConnection(connection.SSHConnection):
    """Conch's connection service, counting the channel bytes it sends."""

    _log = ConchChatter()
    #: stdout and stderr bytes of every channel, as handed to the transport
    sent = 0

    def sendData(self, channel: Any, data: bytes) -> None:
        self.sent += len(data)
        super().sendData(channel, data)

    def sendExtendedData(self, channel: Any, dataType: int, data: bytes) -> None:
        self.sent += len(data)
        super().sendExtendedData(channel, dataType, data)


class HgwireTransport(HgwireServerTransport):
    """Our SSH transport: one log line per connection, when it ends."""

    _log = ConchChatter()
    _started: float | None = None
    #: the client's SSH_MSG_DISCONNECT (code, description), if it sent one
    _disconnect: tuple[int, bytes] | None = None

    def connectionMade(self) -> None:
        self._started = self.factory.reactor.seconds()
        super().connectionMade()

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        """The client's disconnect message: kept for the connection's line (Conch would
        log every one, "disconnected by user" included, as an error)."""
        self._disconnect = (reasonCode, description)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        avatar = getattr(self, "avatar", None)
        service = self.service
        started = self._started
        line = connection_line(
            address=str(getattr(self.transport.getPeer(), "host", "")),
            user=getattr(avatar, "user", None),
            repos=list(getattr(avatar, "repos", [])),
            seconds=self.factory.reactor.seconds() - started if started is not None else 0.0,
            sent=service.sent if isinstance(service, HgwireConnection) else 0,
            how=self._how_it_ended(),
        )
        if avatar is None:
            log.debug("{line}", line=line)  # never logged in: the refusal was logged
        elif self._disconnect is None or self._disconnect[0] == DISCONNECT_BY_APPLICATION:
            log.info("{line}", line=line)
        else:
            log.warn("{line}", line=line)

    def _how_it_ended(self) -> str:
        if self._disconnect is None:
            return "connection closed"
        code, description = self._disconnect
        text = description.decode("utf-8", "replace")[:200]
        if code == DISCONNECT_BY_APPLICATION:
            return text or "disconnected by user"
        return f"disconnect code {code}: {text}"


class HgwireSSHFactory(factory.SSHFactory):
    """Conch's server factory with our host keys, algorithms, portal and services."""

    protocol = HgwireTransport
    _log = ConchChatter()
    services = {
        b"ssh-userauth": HgwireUserAuthServer,
        b"ssh-connection": HgwireConnection,
    }

    def __init__(self, ctx: ServerContext, host_keys: list[Any]) -> None:
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.privateKeys = {key.sshType(): key for key in host_keys}
        self.publicKeys = {key.sshType(): key.public() for key in host_keys}
        # No moduli file: group-exchange key exchanges are not offered at all.
        self.primes = None
        # ``ctx.access`` is replaced on reload: look it up at each login.
        self.portal = PublicKeyPortal(
            lambda: ctx.access,
            lambda user, host, scope: HgwireAvatar(ctx, user, host, scope),
        )

    def buildProtocol(self, addr: Any) -> Any:
        t = super().buildProtocol(addr)
        # Conch derives these from the keys, including SHA-1 ``ssh-rsa``: filter.
        t.supportedPublicKeys = host_key_algorithms(self.privateKeys.values())
        return t


def make_ssh_factory(ctx: ServerContext, state_dir: Path) -> HgwireSSHFactory:
    """The SSH server factory for ``ctx``; creates the host key in ``state_dir`` if needed."""
    return HgwireSSHFactory(ctx, load_host_keys(Path(state_dir), ctx.settings.ssh_host_keys))
