"""Limits of the SSH server around logins: connection caps, the login deadline and the
number of failed authentication attempts.

``SSHLimits`` holds the values (``--ssh-*`` settings). What they mean:

* ``max_connections`` and ``max_per_address`` cap the connections open at once on one
  SSH listener, in total and from one client address. A connection past a cap gets the
  server's version line and an SSH disconnect message naming the cap ("too many
  connections from your address"; OpenSSH prints it as ``Received disconnect from
  ...``) and is closed as soon as the client has read it (within ``REFUSAL_LINGER``
  seconds); the connections already open are not touched. Only connections that are
  let in count.
* ``login_timeout`` covers everything before a successful login as a whole: the
  version exchange, the key exchange and user authentication, however many requests
  the client sends. A client that has not logged in by then is disconnected. (Conch's
  own timer starts only with the user-authentication service and restarts with each
  new one.)
* ``login_attempts`` bounds the failed authentication attempts of one connection
  (refused keys, unsupported methods; the first ``none`` request, which every client
  sends to learn the methods, is free). The count belongs to the connection, not to
  Conch's user-authentication service, so nothing the client sends resets it; and a
  connection takes one service request only, as OpenSSH's server does.

The counting of connections is ``ConnectionCounts``; a connection past a cap is served
by ``RefusedConnection``. The deadline and the attempt count live on the transport
(``ssh.HgwireTransport``) and the user-authentication service (``ssh_auth``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from twisted.conch.ssh.common import NS
from twisted.conch.ssh.transport import DISCONNECT_TOO_MANY_CONNECTIONS, MSG_DISCONNECT
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

__all__ = [
    "REFUSAL_LINGER",
    "TOO_MANY",
    "TOO_MANY_FROM_ADDRESS",
    "ConnectionCounts",
    "RefusedConnection",
    "SSHLimits",
    "disconnect_packet",
]

#: Longest a refused connection stays open for its client to read why.
REFUSAL_LINGER = 2.0
#: Why a connection past ``max_connections`` is refused.
TOO_MANY = "too many connections"
#: Why a connection past ``max_per_address`` is refused.
TOO_MANY_FROM_ADDRESS = "too many connections from your address"


@dataclass(frozen=True)
class SSHLimits:
    """Per-listener limits of the SSH server (see the module docs)."""

    max_connections: int = 256
    max_per_address: int = 16
    #: Seconds from the TCP connection to a successful login.
    login_timeout: float = 30.0
    #: Failed authentication attempts after which a connection is closed.
    login_attempts: int = 6


class ConnectionCounts:
    """The connections open on one listener, in total and per client address."""

    def __init__(self, limits: SSHLimits) -> None:
        self.limits = limits
        self.total = 0
        self.per_address: dict[str, int] = {}

    def admit(self, host: str) -> str | None:
        """Count a new connection from ``host``; or, past a cap, why it is refused (it
        is then not counted)."""
        if self.total >= self.limits.max_connections:
            return TOO_MANY
        if self.per_address.get(host, 0) >= self.limits.max_per_address:
            return TOO_MANY_FROM_ADDRESS
        self.total += 1
        self.per_address[host] = self.per_address.get(host, 0) + 1
        return None

    def forget(self, host: str) -> None:
        """A connection ``admit`` counted has ended."""
        self.total -= 1
        left = self.per_address.get(host, 1) - 1
        if left:
            self.per_address[host] = left
        else:
            self.per_address.pop(host, None)


def disconnect_packet(code: int, description: str) -> bytes:
    """An SSH_MSG_DISCONNECT as the first binary packet of a connection: no cipher, no
    MAC, padded to the 8-byte block of the unencrypted transport (RFC 4253, 6)."""
    payload = bytes((MSG_DISCONNECT,)) + struct.pack(">L", code)
    payload += NS(description.encode("utf-8")) + NS(b"")
    padding = 8 - (5 + len(payload)) % 8
    if padding < 4:
        padding += 8
    return struct.pack(">LB", 1 + len(payload) + padding, padding) + payload + bytes(padding)


class RefusedConnection(Protocol):
    """A connection past a cap: the version line and a disconnect naming the cap.

    Our side is then shut for writing, and the connection closed when the client has
    gone (it leaves once it has read the disconnect) or ``linger`` seconds after, which
    ever comes first. Closing at once would not do: the client sends its key exchange
    right after our version line, and writing into a closed connection it would see
    "broken pipe" instead of our reason. What the client sends is read and dropped.
    """

    def __init__(self, version: bytes, reason: str, clock: IReactorTime, linger: float) -> None:
        self.data = version + b"\r\n" + disconnect_packet(DISCONNECT_TOO_MANY_CONNECTIONS, reason)
        self.clock = clock
        self.linger = linger
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.data)  # type: ignore[union-attr]
        self.transport.loseWriteConnection()  # type: ignore[union-attr]
        self._timer = self.clock.callLater(self.linger, self._cut)

    def dataReceived(self, data: bytes) -> None:
        """Dropped: nothing the client says changes the answer."""

    def _cut(self) -> None:
        self._timer = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
