"""The SSH transport on Twisted Conch: ``make_ssh_factory(ctx, state_dir)``.

The pieces, each in its own module:

* ``ssh_keys``: the host key (ed25519, generated once into the state directory) and the
  modern-only algorithm lists;
* ``ssh_auth``: public-key authentication against the access file (``from=`` included);
* ``ssh_session``: the avatar and its ``session`` channels (exec / subsystem / refusals,
  flow control, exit status);
* ``ssh_command``: which ``exec`` commands run and how their path names a repository;
* ``ssh_v1``: ``hg -R <repo> serve --stdio`` (wire protocol v1);
* ``ssh_subsystem``: the ``hgwire`` subsystem (v2 frames through the frame reactor).

``docs/ssh.md`` describes the behaviour for administrators and client users.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.conch.ssh import connection, factory

from hgwire_tw.context import ServerContext
from hgwire_tw.transports.ssh_auth import HgwireUserAuthServer, PublicKeyPortal
from hgwire_tw.transports.ssh_keys import (
    HgwireServerTransport,
    host_key_algorithms,
    load_host_keys,
)
from hgwire_tw.transports.ssh_session import HgwireAvatar

__all__ = ["HgwireSSHFactory", "make_ssh_factory"]


class HgwireSSHFactory(factory.SSHFactory):
    """Conch's server factory with our host keys, algorithms, portal and services."""

    protocol = HgwireServerTransport
    services = {
        b"ssh-userauth": HgwireUserAuthServer,
        b"ssh-connection": connection.SSHConnection,
    }

    def __init__(self, ctx: ServerContext, host_keys: list[Any]) -> None:
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.privateKeys = {key.sshType(): key for key in host_keys}
        self.publicKeys = {key.sshType(): key.public() for key in host_keys}
        # No moduli file: group-exchange key exchanges are not offered at all.
        self.primes = None
        self.portal = PublicKeyPortal(ctx.access, lambda user, host: HgwireAvatar(ctx, user, host))

    def buildProtocol(self, addr: Any) -> Any:
        t = super().buildProtocol(addr)
        # Conch derives these from the keys, including SHA-1 ``ssh-rsa``: filter.
        t.supportedPublicKeys = host_key_algorithms(self.privateKeys.values())
        return t


def make_ssh_factory(ctx: ServerContext, state_dir: Path) -> HgwireSSHFactory:
    """The SSH server factory for ``ctx``; creates the host key in ``state_dir`` if needed."""
    return HgwireSSHFactory(ctx, load_host_keys(Path(state_dir), ctx.settings.ssh_host_keys))
