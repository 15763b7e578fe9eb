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
* ``ssh_log``: the access line per command and the line per connection;
* ``ssh_limits``: connection caps, the login deadline and the failed-attempt limit.

This module adds the connection-level pieces: ``HgwireSSHFactory`` refuses connections
past the caps; ``HgwireTransport`` enforces the login deadline and counts failed
authentication attempts (both for the connection as a whole), takes one service
request and only once the key exchange is done, tells clients which signature
algorithms their keys may use, and logs one line when a connection ends (user,
repositories, duration, bytes sent; at ``info`` for a client that said "disconnected
by user"); ``HgwireConnection`` counts the channel bytes sent.

``docs/ssh.md`` describes the behaviour for administrators and client users.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.conch.ssh import connection, factory, transport
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from hgwire_tw.context import ServerContext
from hgwire_tw.transports.ssh_auth import HgwireUserAuthServer, PublicKeyPortal
from hgwire_tw.transports.ssh_keys import (
    USER_SIGNATURE_ALGORITHMS,
    HgwireServerTransport,
    host_key_algorithms,
    load_host_keys,
)
from hgwire_tw.transports.ssh_limits import (
    REFUSAL_LINGER,
    ConnectionCounts,
    RefusedConnection,
    SSHLimits,
)
from hgwire_tw.transports.ssh_log import DISCONNECT_BY_APPLICATION, ConchChatter, connection_line
from hgwire_tw.transports.ssh_session import HgwireAvatar

__all__ = ["HgwireConnection", "HgwireSSHFactory", "HgwireTransport", "make_ssh_factory"]

log = Logger()

#: Seconds a connection we disconnected may take to go; a client that does not read
#: what we sent would otherwise hold it (and its place under the caps) for ever.
DISCONNECT_LINGER = 5.0
#: Seconds between two ``info`` lines about refused connections (the others: ``debug``).
REFUSAL_LOG_EVERY = 60.0
#: Message numbers from here on belong to services (user authentication, connection).
_FIRST_SERVICE_MESSAGE = 50


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
    """Our SSH transport: login deadline, attempt count, one line per connection."""

    _log = ConchChatter()
    _started: float | None = None
    #: the client's SSH_MSG_DISCONNECT (code, description), if it sent one
    _disconnect: tuple[int, bytes] | None = None
    #: why we ended the connection ourselves, if we did
    _ended_by: str | None = None
    #: the client address ``HgwireSSHFactory`` counted this connection under
    counted_host: str | None = None
    #: failed authentication attempts so far (see ``failed_login``)
    login_failures = 0
    _none_tried = False
    _service_requested = False
    _closing = False
    _login_timer: IDelayedCall | None = None
    _linger_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        clock = self.factory.reactor
        self._started = clock.seconds()
        self._login_timer = clock.callLater(
            self.factory.limits.login_timeout, self._login_timed_out
        )
        super().connectionMade()

    @property
    def peer_host(self) -> str:
        """The client's address (``""`` when the transport has none)."""
        return str(getattr(self.transport.getPeer(), "host", ""))

    # -- before the login ----------------------------------------------------------------

    def _login_timed_out(self) -> None:
        self._login_timer = None
        seconds = self.factory.limits.login_timeout
        log.info(
            "SSH login timeout: {address} did not log in within {seconds:g}s",
            address=self.peer_host or "-",
            seconds=seconds,
        )
        self._ended_by = "login timeout"
        self.sendDisconnect(
            transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
            b"login timeout: not logged in within %g seconds" % seconds,
        )

    def failed_login(self, method: bytes) -> bool:
        """Count a failed authentication attempt with ``method``; at the limit the
        connection is ended and this returns True (nothing more is to be answered)."""
        if self._closing:
            return True
        if method == b"none" and not self._none_tried:
            # every client opens with "none" to learn the methods: not an attempt
            self._none_tried = True
            return False
        self.login_failures += 1
        limit = self.factory.limits.login_attempts
        if self.login_failures < limit:
            return False
        log.info(
            "SSH login from {address}: {count} failed attempts, disconnected",
            address=self.peer_host or "-",
            count=self.login_failures,
        )
        self._ended_by = "too many failed login attempts"
        self.sendDisconnect(
            transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"too many failed login attempts"
        )
        return True

    def ssh_SERVICE_REQUEST(self, packet: bytes) -> None:
        """One service request per connection (as OpenSSH's server): a second one would
        start a fresh user-authentication service, or replace the logged-in session."""
        if self._service_requested:
            self.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR, b"only one service request is accepted"
            )
            return
        self._service_requested = True
        super().ssh_SERVICE_REQUEST(packet)

    def setService(self, service: Any) -> None:
        """Start ``service``; the connection service after a login ends the deadline."""
        if getattr(self, "avatar", None) is not None:
            self._cancel_login_timer()
        super().setService(service)

    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        """RFC 8308 extensions. Conch advertises its host-key algorithms as
        ``server-sig-algs``, but clients read that list as the signatures the server
        verifies for *their* keys: OpenSSH signs with an RSA key only in an algorithm
        listed there, and falls back to SHA-1 ``ssh-rsa``, which we refuse. So the list
        is the user-key algorithms we accept."""
        listed = b",".join(USER_SIGNATURE_ALGORITHMS)
        super().sendExtInfo(
            [(name, listed if name == b"server-sig-algs" else value) for name, value in extensions]
        )

    # -- ending --------------------------------------------------------------------------

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        """Send a disconnect and close; a client that does not read it is cut after
        ``DISCONNECT_LINGER`` seconds."""
        if self._closing:
            return
        self._closing = True
        self._cancel_login_timer()
        super().sendDisconnect(reason, desc)
        self._linger_timer = self.factory.reactor.callLater(DISCONNECT_LINGER, self._cut)

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        # What arrives after our disconnect (e.g. the rest of a burst of login
        # attempts) is not acted upon.
        if self._closing:
            return
        if not self.isEncrypted("in") and (
            messageNum in (transport.MSG_SERVICE_REQUEST, transport.MSG_SERVICE_ACCEPT)
            or messageNum >= _FIRST_SERVICE_MESSAGE
        ):
            # Conch would start user authentication on an unencrypted connection, whose
            # signatures then bind no session. RFC 4253 (7.1) allows only transport and
            # key-exchange messages until the key exchange is done.
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"key exchange first")
            return
        try:
            super().dispatchMessage(messageNum, payload)
        except Exception:
            if getattr(self, "avatar", None) is not None:
                raise
            # Before a login this is a message Conch could not parse (it reads lengths
            # without checking them): anyone may send one, so one line and no traceback
            # (that goes to debug).
            log.failure("SSH message {n} before login", level=LogLevel.debug, n=messageNum)
            log.info(
                "SSH message {number} from {address} before login is malformed; disconnected",
                number=messageNum,
                address=self.peer_host or "-",
            )
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"malformed message")

    def _cut(self) -> None:
        self._linger_timer = None
        self.transport.abortConnection()

    def _cancel_login_timer(self) -> None:
        timer, self._login_timer = self._login_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        """The client's disconnect message: kept for the connection's line (Conch would
        log every one, "disconnected by user" included, as an error)."""
        self._disconnect = (reasonCode, description)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancel_login_timer()
        linger, self._linger_timer = self._linger_timer, None
        if linger is not None and linger.active():
            linger.cancel()
        if self.counted_host is not None:
            self.factory.connections.forget(self.counted_host)
            self.counted_host = None
        super().connectionLost(reason)
        avatar = getattr(self, "avatar", None)
        service = self.service
        started = self._started
        line = connection_line(
            address=self.peer_host,
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
        if self._ended_by is not None:
            return self._ended_by
        if self._disconnect is None:
            return "connection closed"
        code, description = self._disconnect
        text = description.decode("utf-8", "replace")[:200]
        if code == DISCONNECT_BY_APPLICATION:
            return text or "disconnected by user"
        return f"disconnect code {code}: {text}"


class HgwireSSHFactory(factory.SSHFactory):
    """Conch's server factory with our host keys, algorithms, portal, services and
    connection caps."""

    protocol = HgwireTransport
    _log = ConchChatter()
    services = {
        b"ssh-userauth": HgwireUserAuthServer,
        b"ssh-connection": HgwireConnection,
    }

    def __init__(
        self, ctx: ServerContext, host_keys: list[Any], limits: SSHLimits | None = None
    ) -> None:
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.limits = limits or ctx.settings.ssh_limits or SSHLimits()
        self.connections = ConnectionCounts(self.limits)
        self._refusal_logged: float | None = None
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
        host = str(getattr(addr, "host", ""))
        refusal = self.connections.admit(host)
        if refusal is not None:
            self._log_refusal(host, refusal)
            return RefusedConnection(
                HgwireTransport.ourVersionString, refusal, self.reactor, REFUSAL_LINGER
            )
        t = super().buildProtocol(addr)
        t.counted_host = host
        # Conch derives these from the keys, including SHA-1 ``ssh-rsa``: filter.
        t.supportedPublicKeys = host_key_algorithms(self.privateKeys.values())
        return t

    def _log_refusal(self, host: str, reason: str) -> None:
        # A flood of connections must not become a flood of log lines: one at info per
        # REFUSAL_LOG_EVERY seconds, the rest at debug.
        now = self.reactor.seconds()
        last = self._refusal_logged
        if last is None or now - last >= REFUSAL_LOG_EVERY:
            self._refusal_logged = now
            log.info(
                "SSH connection from {host} refused: {reason} (more refusals within "
                "{every:g}s are logged at debug)",
                host=host or "-",
                reason=reason,
                every=REFUSAL_LOG_EVERY,
            )
        else:
            log.debug("SSH connection from {host} refused: {reason}", host=host, reason=reason)


def make_ssh_factory(ctx: ServerContext, state_dir: Path) -> HgwireSSHFactory:
    """The SSH server factory for ``ctx``; creates the host key in ``state_dir`` if needed."""
    return HgwireSSHFactory(ctx, load_host_keys(Path(state_dir), ctx.settings.ssh_host_keys))
