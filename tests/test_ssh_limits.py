"""The SSH server before the login, in process: the login deadline, the failed-attempt
limit, one service request after the key exchange, the connection caps and the
``server-sig-algs`` clients are told.

A real Conch client talks to our transport through ``iosim`` (a real key exchange, no
sockets), the server's timers run on a ``Clock``; connections that never get as far as
a key exchange talk to a ``StringTransport``.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import connection, keys, transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from hgwire_tw.transports.ssh import HgwireSSHFactory, make_ssh_factory
from hgwire_tw.transports.ssh_limits import (
    REFUSAL_LINGER,
    TOO_MANY,
    TOO_MANY_FROM_ADDRESS,
    SSHLimits,
)
from tests.test_ssh_units import _context

MSG_USERAUTH_REQUEST = 50
MSG_USERAUTH_FAILURE = 51
MSG_USERAUTH_SUCCESS = 52


def _address(host: str, port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


class Client(transport.SSHClientTransport):
    """A Conch client trusting any host key; records the messages it gets and the
    server's disconnect."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.disconnect: tuple[int, bytes] | None = None
        self.secure = False

    def verifyHostKey(self, pubKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.secure = True

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.disconnect = (reasonCode, description)

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self.received.append(messageNum)
        if getattr(self, "instance", None) is None and (
            messageNum == transport.MSG_SERVICE_ACCEPT or messageNum >= MSG_USERAUTH_REQUEST
        ):
            return  # a test sending raw requests reads the answers from ``received``
        super().dispatchMessage(messageNum, payload)

    def failures(self) -> int:
        return self.received.count(MSG_USERAUTH_FAILURE)


class KeyLogin(userauth.SSHUserAuthClient):
    """Conch's user authentication with one key, then the connection service."""

    def __init__(self, user: bytes, key: keys.Key) -> None:
        super().__init__(user, connection.SSHConnection())
        self.key: keys.Key | None = key
        self.private = key

    def getPublicKey(self) -> keys.Key | None:
        key, self.key = self.key, None
        return key.public() if key is not None else None

    def getPrivateKey(self) -> defer.Deferred[keys.Key]:
        return defer.succeed(self.private)


def _unsigned_key_request(user: bytes, key: Any) -> bytes:
    """A publickey request without signature ("would this key do?")."""
    blob = keys.Key(key).public().blob()
    return (
        NS(user) + NS(b"ssh-connection") + NS(b"publickey") + b"\0" + NS(b"ssh-ed25519") + NS(blob)
    )


def _none_request(user: bytes) -> bytes:
    return NS(user) + NS(b"ssh-connection") + NS(b"none")


def _plain_packet(number: int, payload: bytes) -> bytes:
    """An unencrypted binary packet, as before the first key exchange."""
    body = bytes((number,)) + payload
    padding = 8 - (5 + len(body)) % 8
    padding += 8 if padding < 4 else 0
    return struct.pack(">LB", 1 + len(body) + padding, padding) + body + bytes(padding)


def _disconnect_of(data: bytes) -> tuple[int, bytes]:
    """The (code, description) of the unencrypted disconnect packet ending ``data``."""
    at = data.rindex(b"\r\n") + 2
    length, padding = struct.unpack(">LB", data[at : at + 5])
    payload = data[at + 5 : at + 4 + length - padding]
    assert payload[0] == transport.MSG_DISCONNECT, payload
    (code,) = struct.unpack(">L", payload[1:5])
    return code, getNS(payload[5:])[0]


class HalfClosingTransport(StringTransport):
    """A ``StringTransport`` that can be shut for writing, like a TCP socket."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class LoginLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.clock = Clock()
        self.ctx = _context(self.tmp, reactor=self.clock)
        self.ctx.settings.ssh_limits = SSHLimits(login_timeout=30.0, login_attempts=3)
        self.factory = make_ssh_factory(self.ctx, self.tmp / "state")
        self.factory.startFactory()

    def _connect(self, host: str = "192.0.2.7") -> tuple[Any, Client, iosim.IOPump]:
        server = self.factory.buildProtocol(_address(host))
        client = Client()
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True, peerAddress=_address(host)),
            client,
            iosim.FakeTransport(client, isServer=False),
        )
        self.assertTrue(client.secure)  # the key exchange is done
        return server, client, pump

    def _send(self, client: Client, pump: iosim.IOPump, number: int, payload: bytes) -> None:
        client.sendPacket(number, payload)
        pump.flush()

    def test_deadline_covers_the_whole_login(self) -> None:
        """The deadline runs from the connection: a user-authentication service begun
        later, and packets sent meanwhile, do not move it."""
        _, client, pump = self._connect()
        self.clock.advance(20)
        self._send(client, pump, transport.MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
        self._send(client, pump, MSG_USERAUTH_REQUEST, _none_request(b"bob"))
        self.assertIn(transport.MSG_SERVICE_ACCEPT, client.received)
        self.clock.advance(9.9)
        pump.flush()
        self.assertIsNone(client.disconnect)
        self.clock.advance(0.1)
        pump.flush()
        assert client.disconnect is not None
        self.assertEqual(client.disconnect[0], transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE)
        self.assertIn(b"login timeout", client.disconnect[1])
        self.assertEqual(self.factory.connections.total, 0)

    def test_deadline_before_any_key_exchange(self) -> None:
        """A client that sends only its version line is disconnected at the deadline."""
        server = self.factory.buildProtocol(_address("192.0.2.8"))
        wire = StringTransport(peerAddress=_address("192.0.2.8"))
        server.makeConnection(wire)
        server.dataReceived(b"SSH-2.0-probe\r\n")
        self.clock.advance(29.5)
        self.assertFalse(wire.disconnecting)
        self.clock.advance(0.5)
        self.assertTrue(wire.disconnecting)
        self.assertIn(b"login timeout", wire.value())

    def test_logged_in_connection_has_no_deadline(self) -> None:
        """A login ends the deadline: the connection outlives it."""
        _, client, pump = self._connect("127.0.0.1")
        bob = keys.Key(self.ctx.test_keys["bob"])  # type: ignore[attr-defined]
        client.requestService(KeyLogin(b"bob", bob))
        pump.flush()
        self.assertIn(MSG_USERAUTH_SUCCESS, client.received)
        self.clock.advance(300)
        pump.flush()
        self.assertIsNone(client.disconnect)

    def test_failed_attempts_end_the_connection(self) -> None:
        """At the limit the server disconnects; the first "none" request is free."""
        _, client, pump = self._connect()
        self._send(client, pump, transport.MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
        self._send(client, pump, MSG_USERAUTH_REQUEST, _none_request(b"bob"))
        for _ in range(2):
            stranger = ed25519.Ed25519PrivateKey.generate()
            self._send(client, pump, MSG_USERAUTH_REQUEST, _unsigned_key_request(b"bob", stranger))
        self.assertEqual((client.failures(), client.disconnect), (3, None))
        stranger = ed25519.Ed25519PrivateKey.generate()
        self._send(client, pump, MSG_USERAUTH_REQUEST, _unsigned_key_request(b"bob", stranger))
        self.assertEqual(client.failures(), 3)  # no failure answer after the disconnect
        assert client.disconnect is not None
        self.assertEqual(client.disconnect[0], transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE)
        self.assertIn(b"too many failed login attempts", client.disconnect[1])

    def test_new_service_request_resets_nothing(self) -> None:
        """Two service requests and more refused keys than the limit: disconnected (a
        second userauth service would have started its counts afresh)."""
        _, client, pump = self._connect()
        for _ in range(2):
            self._send(client, pump, transport.MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
            for _ in range(2):
                stranger = ed25519.Ed25519PrivateKey.generate()
                request = _unsigned_key_request(b"bob", stranger)
                self._send(client, pump, MSG_USERAUTH_REQUEST, request)
        self.assertIsNotNone(client.disconnect)
        self.assertLessEqual(client.failures(), 2)

    def test_malformed_login_messages_log_one_line_each(self) -> None:
        """A key that is no key, under an algorithm name that is not ASCII or holds a
        newline, is one refused attempt; a truncated request ends the connection. No
        exception escapes, nothing is logged above info, and no client text starts a
        line of its own."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        _, client, pump = self._connect()
        self._send(client, pump, transport.MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
        for algorithm in (b"\xffkey", b"ssh-ed25519\nforged line"):
            request = NS(b"bob") + NS(b"ssh-connection") + NS(b"publickey") + b"\0"
            self._send(client, pump, MSG_USERAUTH_REQUEST, request + NS(algorithm) + NS(b"junk"))
        self.assertEqual((client.failures(), client.disconnect), (2, None))
        self._send(client, pump, MSG_USERAUTH_REQUEST, b"\0\0")
        assert client.disconnect is not None
        self.assertEqual(
            client.disconnect, (transport.DISCONNECT_PROTOCOL_ERROR, b"malformed message")
        )
        # the traceback is kept, at debug
        self.assertEqual(len(self.flushLoggedErrors(struct.error)), 1)
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual([e["log_level"] for e in failures], [LogLevel.debug])
        loud = [e for e in events if e["log_level"] > LogLevel.info]
        self.assertEqual(loud, [])
        text = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info]
        self.assertFalse([line for line in text if "\n" in line], text)

    def test_service_request_before_key_exchange_refused(self) -> None:
        """Nothing but key exchange until it is done: no user authentication in clear."""
        server = self.factory.buildProtocol(_address("192.0.2.9"))
        wire = StringTransport(peerAddress=_address("192.0.2.9"))
        server.makeConnection(wire)
        server.dataReceived(
            b"SSH-2.0-probe\r\n"
            + _plain_packet(transport.MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
            + _plain_packet(MSG_USERAUTH_REQUEST, _none_request(b"bob"))
        )
        self.assertTrue(wire.disconnecting)
        self.assertIn(b"key exchange first", wire.value())
        self.assertIsNone(server.service)

    def test_clients_told_the_user_key_signatures(self) -> None:
        """server-sig-algs lists the SHA-2 RSA signatures (OpenSSH signs with an RSA key
        only in an algorithm listed there), never SHA-1 ssh-rsa or DSA."""
        _, client, _ = self._connect()
        listed = client.peerExtensions[b"server-sig-algs"].split(b",")
        self.assertIn(b"rsa-sha2-512", listed)
        self.assertIn(b"rsa-sha2-256", listed)
        self.assertIn(b"ssh-ed25519", listed)
        self.assertIn(b"ecdsa-sha2-nistp256", listed)
        self.assertNotIn(b"ssh-rsa", listed)
        self.assertNotIn(b"ssh-dss", listed)


class ConnectionCapTests(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = Path(tempfile.mkdtemp())
        self.clock = Clock()
        ctx = _context(tmp, reactor=self.clock)
        ctx.settings.ssh_limits = SSHLimits(max_connections=3, max_per_address=2)
        self.factory: HgwireSSHFactory = make_ssh_factory(ctx, tmp / "state")
        self.factory.startFactory()

    def _open(self, host: str) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(_address(host))
        wire = HalfClosingTransport(peerAddress=_address(host))
        protocol.makeConnection(wire)
        return protocol, wire

    def test_caps_per_address_and_in_total(self) -> None:
        """Past a cap a connection gets the version line and a disconnect naming the
        cap, is shut for writing and cut after a short linger; the open connections are
        untouched, and a place freed is taken again."""
        a1, a1_wire = self._open("192.0.2.1")
        self._open("192.0.2.1")
        refused, wire = self._open("192.0.2.1")
        self.assertTrue(wire.value().startswith(b"SSH-2.0-hgwire\r\n"))
        self.assertEqual(
            _disconnect_of(wire.value()),
            (transport.DISCONNECT_TOO_MANY_CONNECTIONS, TOO_MANY_FROM_ADDRESS.encode()),
        )
        self.assertTrue(wire.write_closed)
        self.assertFalse(wire.disconnecting)
        self.clock.advance(REFUSAL_LINGER)
        self.assertTrue(wire.disconnecting)
        refused.connectionLost(None)

        self._open("192.0.2.2")
        _, wire = self._open("192.0.2.3")
        self.assertEqual(_disconnect_of(wire.value())[1], TOO_MANY.encode())
        self.assertFalse(a1_wire.disconnecting)
        self.assertEqual(self.factory.connections.total, 3)

        a1.connectionLost(None)
        _, wire = self._open("192.0.2.1")
        self.assertNotIn(b"too many", wire.value())
        self.assertEqual(self.factory.connections.per_address["192.0.2.1"], 2)
