"""What the client needs from a connection to a v2 server, whatever carries it.

A *peer* runs v2 commands and hands each command's output objects to a
:class:`ResponseSink` as they are decoded, on the reactor thread. Transports:

- ``http://`` / ``https://``: :class:`hgwire_tw.client.http.HTTPPeer` (capabilities
  upgrade, then one POST per batch of commands);
- ``hgwire://host:port/repo``: :class:`hgwire_tw.client.tcp.TCPPeer` (preamble, then
  full-duplex frames on one connection, several commands in flight);
- ``ssh://user@host:port/repo``: :class:`hgwire_tw.client.ssh.SSHPeer` (a Conch
  connection, the ``hgwire`` subsystem on one channel, then exactly what ``TCPPeer``
  does on the channel's bytes).

Transports are looked up in :data:`PEER_FACTORIES` by URL scheme; each factory gets the
reactor, the parsed URL and the :class:`ClientOptions` (keys, known hosts, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred

from hgwire_tw.core.errors import HgWireError
from hgwire_tw.core.preamble import DEFAULT_PORT

__all__ = [
    "PEER_FACTORIES",
    "ClientOptions",
    "Command",
    "CommandFailed",
    "ConnectionFailed",
    "Peer",
    "PeerURL",
    "ResponseSink",
    "make_peer",
    "parse_url",
]


class ConnectionFailed(HgWireError):
    """The connection to the server failed or broke (the pull is aborted)."""


class CommandFailed(HgWireError):
    """The server answered a command with an error."""

    def __init__(self, name: bytes, message: bytes, args: Sequence[bytes] = ()) -> None:
        try:
            text = message % tuple(args) if args else message
        except (TypeError, ValueError):
            text = message + b" " + b" ".join(args)
        super().__init__(f"{name.decode('utf-8', 'replace')}: {text.decode('utf-8', 'replace')}")
        self.name = name
        self.message = message
        self.args_ = tuple(args)


class ResponseSink(Protocol):
    """Receives one command's outcome on the reactor thread.

    ``objects`` may be called any number of times, then exactly one of ``finished`` or
    ``failed``.
    """

    def objects(self, objs: Sequence[object]) -> None:
        """Decoded output objects, in order."""

    def finished(self) -> None:
        """The response ended normally."""

    def failed(self, error: Exception) -> None:
        """The command or the connection failed (``CommandFailed``/``ConnectionFailed``)."""


@dataclass(frozen=True, slots=True)
class Command:
    """One v2 command to run: name, arguments, where its output goes.

    ``redirect`` is the ``{targets, hashes}`` map sent with the request (None: none).
    A sink with a ``redirected(location)`` method receives content redirects
    (``hgwire_tw.client.redirects.RedirectingSink``); any other sink fails on one.
    """

    name: bytes
    args: Mapping[bytes, object]
    sink: ResponseSink
    redirect: Mapping[bytes, object] | None = None


class Peer(Protocol):
    """A v2 server seen from the client (every method on the reactor thread)."""

    url: str

    def capabilities(self) -> Deferred[dict[bytes, Any]]:
        """The server's v2 capabilities descriptor (wire-protocol §4)."""

    def call(self, commands: Sequence[Command]) -> None:
        """Start ``commands``; each one's outcome goes to its sink."""

    def pauseProducing(self) -> None:
        """Stop reading from the server (the consumer is behind)."""

    def resumeProducing(self) -> None:
        """Read again."""

    def close(self) -> None:
        """Drop the connection(s); outstanding commands fail."""


@dataclass(frozen=True, slots=True)
class PeerURL:
    """A parsed server URL."""

    scheme: str
    host: str
    port: int | None
    user: str | None
    path: str
    raw: str


def parse_url(url: str) -> PeerURL:
    """Split ``url``; unknown schemes raise ``ValueError``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in PEER_FACTORIES:
        known = ", ".join(sorted(PEER_FACTORIES))
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r} (known: {known})")
    if not parts.hostname:
        raise ValueError(f"no host in URL {url!r}")
    return PeerURL(
        scheme=scheme,
        host=parts.hostname,
        port=parts.port,
        user=parts.username,
        path=parts.path.strip("/"),
        raw=url,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOptions:
    """How to reach servers, beyond the URL (only SSH uses any of it so far)."""

    #: Private key files to offer (``--ssh-key``); empty: ssh-agent, then the usual
    #: ``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa``.
    ssh_keys: tuple[str, ...] = ()
    #: OpenSSH known-hosts file (``--known-hosts``); None: ``~/.ssh/known_hosts``.
    known_hosts: str | None = None
    #: Record an unknown host key instead of refusing it (never a changed one).
    accept_new_host_key: bool = False
    #: Ask the agent at ``$SSH_AUTH_SOCK`` for keys, if there is one.
    ssh_agent: bool = True
    #: ``http(s)://``: the login (``hgwire_tw.client.credentials.HTTPLogin``) to send;
    #: None: found from the URL, ``http_user`` and ``[auth]`` when the peer is made.
    http_login: Any = None
    #: ``http(s)://``: the user to log in as (``--user``), if the URL names none.
    http_user: str | None = None
    #: ``https://``: PEM file of the CAs to trust (``--cacerts``); None: ``[web] cacerts``
    #: of the hgrc, else the system's.
    cacerts: str | None = None


def _http_peer(reactor: Any, url: PeerURL, options: ClientOptions) -> Peer:
    from hgwire_tw.client.credentials import login_for, trusted_cacerts
    from hgwire_tw.client.http import HTTPPeer

    login = options.http_login
    if login is None:
        login = login_for(url.raw, user=options.http_user, prompt=lambda _: None)
    cacerts = trusted_cacerts(options.cacerts) if url.scheme == "https" else None
    return HTTPPeer(reactor, url.raw, login=login, cacerts=cacerts)


def _tcp_peer(reactor: Any, url: PeerURL, options: ClientOptions) -> Peer:
    from hgwire_tw.client.tcp import TCPPeer

    return TCPPeer(reactor, url.host, url.port or DEFAULT_TCP_PORT, url.path)


def _ssh_peer(reactor: Any, url: PeerURL, options: ClientOptions) -> Peer:
    from hgwire_tw.client.ssh import SSHPeer

    return SSHPeer(reactor, url, options)


#: Default port of the raw TCP transport (``hgwire://``), the server's default too.
DEFAULT_TCP_PORT = DEFAULT_PORT

#: scheme -> factory(reactor, PeerURL, ClientOptions) -> Peer.
PEER_FACTORIES: dict[str, Callable[[Any, PeerURL, ClientOptions], Peer]] = {
    "http": _http_peer,
    "https": _http_peer,
    "hgwire": _tcp_peer,
    "ssh": _ssh_peer,
}


def make_peer(reactor: Any, url: str, options: ClientOptions | None = None) -> Peer:
    """A peer for ``url`` (scheme chooses the transport)."""
    parsed = parse_url(url)
    return PEER_FACTORIES[parsed.scheme](reactor, parsed, options or ClientOptions())
