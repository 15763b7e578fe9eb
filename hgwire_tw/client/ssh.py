"""The v2 peer over SSH (``ssh://user@host:port/name``): the ``hgwire`` subsystem.

One Conch client connection per peer: TCP, key exchange, host key check against an
OpenSSH known-hosts file, public-key login (ssh-agent keys and key files), then one
``session`` channel with a ``subsystem hgwire`` request. On that channel the client
speaks exactly what it speaks on raw TCP (:class:`~hgwire_tw.client.tcp.FrameStreamProtocol`:
the preamble line, then frames both ways), so :class:`SSHPeer` is a
:class:`~hgwire_tw.client.tcp.StreamPeer` that only knows how to open the channel.

Host keys (like OpenSSH's ``StrictHostKeyChecking``): the server's key must be in the
known-hosts file under ``host`` (port 22) or ``[host]:port``. An unknown key is refused
with the line to add, unless ``accept_new_host_key`` records it (OpenSSH's
``accept-new``); a key that differs from the recorded one is always refused.

Flow control: the channel window is the only buffer the server can fill. While the peer
is paused, window adjustments are held back (:class:`_Connection.adjustWindow`), so at
most one window (``WINDOW`` bytes) arrives after a pause; resuming sends the whole
deficit in one adjustment.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.conch.client.knownhosts import HostKeyChanged, KnownHostsFile
from twisted.conch.ssh import agent, channel, common, connection, keys, transport, userauth
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from hgwire_tw.client.peer import ClientOptions, ConnectionFailed, PeerURL
from hgwire_tw.client.tcp import FrameStreamProtocol, StreamPeer

__all__ = [
    "DEFAULT_KEY_FILES",
    "DEFAULT_SSH_PORT",
    "SUBSYSTEM",
    "WINDOW",
    "HostKeyRefused",
    "SSHPeer",
    "known_hosts_name",
    "load_key_files",
]

DEFAULT_SSH_PORT = 22
#: The subsystem hgwire's SSH server runs v2 frames in (``transports/ssh_session.py``).
SUBSYSTEM = b"hgwire"
#: Receive window of the channel: the most the server may send before we ask for more.
WINDOW = 2 * 1024 * 1024
#: Tried in this order when no ``--ssh-key`` is given (as OpenSSH does).
DEFAULT_KEY_FILES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"

# ssh-agent sign-request flags (draft-miller-ssh-agent §4.5.1).
_AGENT_RSA_SHA2_256 = 2
_AGENT_RSA_SHA2_512 = 4


class HostKeyRefused(ConnectionFailed):
    """The server's host key is unknown or changed."""


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH names ``host:port`` in a known-hosts file."""
    return host if port == DEFAULT_SSH_PORT else f"[{host}]:{port}"


def load_key_files(paths: Sequence[str], *, explicit: bool) -> tuple[list[keys.Key], list[str]]:
    """Private keys from ``paths`` and notes about the ones skipped.

    Missing default files are skipped silently; a missing, unreadable or
    passphrase-protected *explicit* key (``--ssh-key``) raises ``ConnectionFailed``.
    """
    found: list[keys.Key] = []
    notes: list[str] = []
    for raw in paths:
        path = os.path.expanduser(raw)
        if not explicit and not os.path.exists(path):
            continue
        try:
            found.append(keys.Key.fromFile(path))
        except keys.EncryptedKeyError:
            message = f"{path} is passphrase-protected (load it into ssh-agent instead)"
            if explicit:
                raise ConnectionFailed(f"ssh: {message}") from None
            notes.append(message)
        except (OSError, keys.BadKeyError, ValueError) as e:
            if explicit:
                raise ConnectionFailed(f"ssh: cannot read key {path}: {e}") from None
            notes.append(f"{path}: {e}")
    return found, notes


def _describe(key: keys.Key) -> str:
    fingerprint = key.fingerprint(keys.FingerprintFormats.SHA256_BASE64)
    return f"{key.sshType().decode()} SHA256:{fingerprint}"


@dataclass
class _Attempt:
    """One connection attempt: what it needs and the first error it met."""

    reactor: Any
    url: PeerURL
    port: int
    options: ClientOptions
    file_keys: list[keys.Key]
    notes: list[str]
    ready: Deferred[FrameStreamProtocol] = field(default_factory=Deferred)
    error: str | None = None
    tried: list[str] = field(default_factory=list)
    ssh: _ClientTransport | None = None

    @property
    def where(self) -> str:
        return f"{self.url.user or ''}@{self.url.host}:{self.port}".lstrip("@")

    def fail(self, message: str, error: type[ConnectionFailed] = ConnectionFailed) -> None:
        """Record the first error and fail ``ready`` with it."""
        if self.error is None:
            self.error = message
        if not self.ready.called:
            self.ready.errback(error(message))


class _ClientTransport(transport.SSHClientTransport):
    """The SSH transport: host key check, then the user-auth service."""

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt
        self.auth: _UserAuth | None = None

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Deferred[bool]:
        a = self.attempt
        key = keys.Key.fromString(hostKey)
        name = known_hosts_name(a.url.host, a.port)
        path = os.path.expanduser(a.options.known_hosts or DEFAULT_KNOWN_HOSTS)
        known = KnownHostsFile.fromPath(FilePath(path))
        try:
            if known.hasHostKey(name.encode(), key):
                return succeed(True)
        except HostKeyChanged as e:
            where = f"{path} line {e.lineno}" if e.lineno else path
            message = (
                f"ssh: the host key of {name} has CHANGED: the server offers {_describe(key)}, "
                f"{where} records a different {key.sshType().decode()} key. Someone may be "
                f"intercepting the connection. If the change is expected, remove the old "
                f"entry (ssh-keygen -f {path} -R '{name}') and connect again."
            )
            a.fail(message, HostKeyRefused)
            return fail(HostKeyRefused(message))
        if a.options.accept_new_host_key:
            known.addHostKey(name.encode(), key)
            known.save()
            return succeed(True)
        line = f"{name} {key.toString('openssh').decode()}"
        message = (
            f"ssh: the host key of {name} is not known ({_describe(key)}); it is not in "
            f"{path}. If it is the right key, add this line to {path}:\n  {line}\n"
            f"or run again with --accept-new-host-key to record it."
        )
        a.fail(message, HostKeyRefused)
        return fail(HostKeyRefused(message))

    def connectionSecure(self) -> None:
        self.auth = _UserAuth(self.attempt)
        self.requestService(self.auth)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        text = description.decode("utf-8", "replace")
        self.attempt.fail(f"ssh: {self.attempt.where} disconnected: {text}")

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        a = self.attempt
        if self.auth is not None and self.auth.agent is not None:
            self.auth.agent.transport.loseConnection()
        if a.ready.called:
            return
        if self.auth is not None and not self.auth.succeeded:
            user = a.url.user or "(no user name in the URL)"
            if not a.tried:
                hint = "no SSH key to offer: give --ssh-key PATH, or start ssh-agent"
                if a.notes:
                    hint += f" ({'; '.join(a.notes)})"
                a.fail(f"ssh: login to {a.where} failed: {hint}")
            else:
                a.fail(
                    f"ssh: permission denied: {a.url.host}:{a.port} refused user {user!r} "
                    f"with every key offered ({', '.join(a.tried)})"
                )
            return
        why = reason.getErrorMessage() if reason is not None else "closed"
        a.fail(f"ssh: connection to {a.where} failed: {why}")


@dataclass
class _Offer:
    """A public key to offer, and who signs with it (a key file or the agent)."""

    public: keys.Key
    private: keys.Key | None


def _signature_algorithm(key: keys.Key) -> bytes:
    # SHA-1 RSA signatures (``ssh-rsa``) are refused by modern servers, ours included.
    return b"rsa-sha2-512" if key.type() == "RSA" else key.sshType()


class _UserAuth(userauth.SSHUserAuthClient):
    """Public-key login: agent keys and key files, RSA with SHA-2 signatures."""

    preferredOrder = [b"publickey"]

    def __init__(self, attempt: _Attempt) -> None:
        super().__init__(
            (attempt.url.user or os.environ.get("USER", "")).encode(), _Connection(attempt)
        )
        self.attempt = attempt
        self.agent: agent.SSHAgentClient | None = None
        self.offers: list[_Offer] = []
        self.current: _Offer | None = None
        self.succeeded = False

    def serviceStarted(self) -> None:
        a = self.attempt
        sock = os.environ.get("SSH_AUTH_SOCK") if a.options.ssh_agent else None
        file_offers = [_Offer(k.public(), k) for k in a.file_keys]
        if not sock:
            self.offers = file_offers
            super().serviceStarted()
            return
        factory = Factory.forProtocol(agent.SSHAgentClient)
        d = UNIXClientEndpoint(a.reactor, sock).connect(factory)

        def got_agent(client: agent.SSHAgentClient) -> Deferred[Any]:
            self.agent = client
            return client.requestIdentities()

        def got_keys(identities: list[tuple[bytes, bytes]]) -> None:
            agent_offers = [_Offer(keys.Key.fromString(blob), None) for blob, _ in identities]
            # Explicit key files first (the user chose them), then the agent's keys.
            self.offers = (
                file_offers + agent_offers if a.options.ssh_keys else agent_offers + file_offers
            )

        def no_agent(f: Failure) -> None:
            a.notes.append(f"ssh-agent at {sock}: {f.getErrorMessage()}")
            self.offers = file_offers

        d.addCallback(got_agent).addCallbacks(got_keys, no_agent)
        d.addBoth(lambda _: userauth.SSHUserAuthClient.serviceStarted(self))

    def auth_publickey(self) -> Deferred[bool]:
        if not self.offers:
            return succeed(False)
        self.current = self.offers.pop(0)
        key = self.current.public
        self.attempt.tried.append(_describe(key))
        self.lastPublicKey = key
        self.askForAuth(
            b"publickey", b"\x00" + common.NS(_signature_algorithm(key)) + common.NS(key.blob())
        )
        return succeed(True)

    def ssh_USERAUTH_PK_OK_publickey(self, packet: bytes) -> None:
        offer = self.current
        assert offer is not None
        algorithm = _signature_algorithm(offer.public)
        blob = offer.public.blob()
        signed = (
            common.NS(self.transport.sessionID)
            + bytes((userauth.MSG_USERAUTH_REQUEST,))
            + common.NS(self.user)
            + common.NS(self.instance.name)
            + common.NS(b"publickey")
            + b"\x01"
            + common.NS(algorithm)
            + common.NS(blob)
        )
        if offer.private is not None:
            d = succeed(offer.private.sign(signed, signatureType=algorithm))
        else:
            d = self._agent_sign(blob, signed, algorithm)

        def send(signature: bytes) -> None:
            self.askForAuth(
                b"publickey",
                b"\x01" + common.NS(algorithm) + common.NS(blob) + common.NS(signature),
            )

        d.addCallbacks(send, self._ebAuth)

    def _agent_sign(self, blob: bytes, data: bytes, algorithm: bytes) -> Deferred[bytes]:
        assert self.agent is not None
        flags = {b"rsa-sha2-512": _AGENT_RSA_SHA2_512, b"rsa-sha2-256": _AGENT_RSA_SHA2_256}
        request = common.NS(blob) + common.NS(data) + struct.pack(">L", flags.get(algorithm, 0))
        d: Deferred[bytes] = self.agent.sendRequest(agent.AGENTC_SIGN_REQUEST, request)
        return d.addCallback(self.agent._cbSignData)

    def ssh_USERAUTH_SUCCESS(self, packet: bytes) -> None:
        self.succeeded = True
        super().ssh_USERAUTH_SUCCESS(packet)


class _Connection(connection.SSHConnection):
    """The connection service: opens the subsystem channel; holds window adjustments
    of a paused channel."""

    def __init__(self, attempt: _Attempt) -> None:
        super().__init__()
        self.attempt = attempt

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.openChannel(_SubsystemChannel(self.attempt, conn=self))

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        if getattr(channel, "paused", False):
            channel.window_owed = True
            return
        super().adjustWindow(channel, bytesToAdd)


class _SubsystemChannel(channel.SSHChannel):
    """A ``session`` channel running the ``hgwire`` subsystem; it is the byte transport
    of a :class:`FrameStreamProtocol`."""

    name = b"session"

    def __init__(self, attempt: _Attempt, conn: _Connection) -> None:
        super().__init__(localWindow=WINDOW, conn=conn)
        self.attempt = attempt
        self.protocol: FrameStreamProtocol | None = None
        self.paused = False
        self.window_owed = False
        self.exit_status: int | None = None

    def openFailed(self, reason: Any) -> None:
        self.attempt.fail(f"ssh: {self.attempt.where} refused a session channel: {reason}")
        self.conn.transport.loseConnection()

    def channelOpen(self, specificData: bytes) -> None:
        d = self.conn.sendRequest(self, b"subsystem", common.NS(SUBSYSTEM), wantReply=True)
        d.addCallbacks(self._subsystem_started, self._subsystem_refused)

    def _subsystem_started(self, _: object) -> None:
        protocol = FrameStreamProtocol(self.attempt.url.path, self.attempt.reactor)
        self.protocol = protocol
        protocol.ready.addCallbacks(self._accepted, self._preamble_failed)
        protocol.makeConnection(self)

    def _accepted(self, protocol: FrameStreamProtocol) -> FrameStreamProtocol:
        if not self.attempt.ready.called:
            self.attempt.ready.callback(protocol)
        return protocol

    def _preamble_failed(self, f: Failure) -> None:
        self.attempt.fail(f"ssh: {f.getErrorMessage()}")

    def _subsystem_refused(self, f: Failure) -> None:
        self.attempt.fail(
            f"ssh: {self.attempt.where} refused the {SUBSYSTEM.decode()!r} subsystem "
            f"(is it an hgwire server?)"
        )
        self.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.protocol is not None:
            self.protocol.dataReceived(data)

    def request_exit_status(self, data: bytes) -> int:
        (self.exit_status,) = struct.unpack(">L", data[:4])
        return 1

    def closed(self) -> None:
        if self.protocol is not None:
            status = "" if self.exit_status is None else f" (exit status {self.exit_status})"
            self.protocol.connectionLost(Failure(ConnectionFailed(f"ssh channel closed{status}")))
        else:
            self.attempt.fail(f"ssh: {self.attempt.where} closed the channel")
        self.conn.transport.loseConnection()

    # -- the transport FrameStreamProtocol sees -------------------------------------------

    def pauseProducing(self) -> None:
        """Stop granting window: the server stops once the current window is used."""
        self.paused = True

    def resumeProducing(self) -> None:
        """Grant the whole window again."""
        self.paused = False
        if self.window_owed and not self.localClosed:
            self.window_owed = False
            deficit = self.localWindowSize - self.localWindowLeft
            if deficit > 0:
                self.conn.adjustWindow(self, deficit)


class SSHPeer(StreamPeer):
    """A v2 server over the ``hgwire`` SSH subsystem (see the module docs)."""

    def __init__(self, reactor: Any, url: PeerURL, options: ClientOptions | None = None) -> None:
        super().__init__(reactor)
        self._url = url
        self._port = url.port or DEFAULT_SSH_PORT
        self._options = options or ClientOptions()
        user = f"{url.user}@" if url.user else ""
        self.url = f"ssh://{user}{url.host}:{self._port}/{url.path}"
        self._attempt: _Attempt | None = None

    def _open(self) -> Deferred[FrameStreamProtocol]:
        options = self._options
        try:
            if options.ssh_keys:
                file_keys, notes = load_key_files(options.ssh_keys, explicit=True)
            else:
                file_keys, notes = load_key_files(DEFAULT_KEY_FILES, explicit=False)
        except ConnectionFailed as e:
            return fail(e)
        attempt = _Attempt(
            reactor=self._reactor,
            url=self._url,
            port=self._port,
            options=options,
            file_keys=file_keys,
            notes=notes,
        )
        self._attempt = attempt
        ssh = _ClientTransport(attempt)
        attempt.ssh = ssh
        endpoint = TCP4ClientEndpoint(self._reactor, self._url.host, self._port, timeout=30)

        def no_tcp(f: Failure) -> None:
            attempt.fail(f"ssh: cannot connect to {attempt.where}: {f.getErrorMessage()}")

        # Not connectProtocol: its factory logs "Starting factory" on every mirror pull.
        factory = Factory.forProtocol(lambda: ssh)
        factory.noisy = False
        endpoint.connect(factory).addErrback(no_tcp)
        return attempt.ready

    def close(self) -> None:
        super().close()
        attempt = self._attempt
        if attempt is not None and attempt.ssh is not None and attempt.ssh.transport is not None:
            attempt.fail("ssh: connection closed by the client")
            attempt.ssh.transport.loseConnection()
