"""SSH public-key authentication against the access file.

Only ``publickey`` authentication is offered. Keys come from ``AccessPolicy`` (which
parses ``authorized_keys`` lines itself, options included, because Conch's reader drops
lines that carry options); a key's ``from="..."`` patterns are matched against the
client's address, which a ``twisted.cred`` checker never sees. So instead of a checker
this module has a small portal, bound to the client address for each connection by
``HgwireUserAuthServer``.

Who logs in: when the SSH login name is a user of the access file, the key must be one
of that user's keys. Any other login name (e.g. ``hg@host``, as hosting services do) is
a generic login: the key alone names the user. With no access file there are no users
and no keys, so nobody gets in over SSH. The avatar also carries the key's hg-ssh
``KeyScope`` (``command="hg-ssh ..."``), which narrows every permission of the session.

The portal reads the server's current access policy at each login, so a reload (SIGHUP)
adds and removes keys for new connections.

Signatures are accepted in the algorithms of ``ssh_keys.USER_SIGNATURE_ALGORITHMS``
only. Failed attempts are counted by the transport, for the whole connection
(``ssh_limits``); the login deadline is the transport's too.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from twisted.conch import error as conch_error
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import keys, userauth
from twisted.conch.ssh.common import getNS
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from hgwire_tw.access import AccessPolicy
from hgwire_tw.authorized_keys import AuthorizedKey, KeyScope
from hgwire_tw.transports.ssh_keys import USER_SIGNATURE_ALGORITHMS

__all__ = ["AvatarFactory", "HgwireUserAuthServer", "PublicKeyPortal", "find_key"]

log = Logger()

#: Builds the avatar of an authenticated user:
#: ``(user, client address, the key's hg-ssh scope or None) -> IConchUser``.
AvatarFactory = Callable[[str, str, KeyScope | None], Any]


def find_key(access: AccessPolicy, login: str, blob: bytes) -> tuple[str, AuthorizedKey] | None:
    """The user ``login``/``blob`` authenticates as and the matching key, or None."""
    candidates = access.keys_for(login)
    user = login
    if not candidates:
        owner = access.user_for_key(blob)
        if owner is None:
            return None
        user, candidates = owner, access.keys_for(owner)
    for key in candidates:
        if hmac.compare_digest(key.blob, blob):
            return user, key
    return None


class PublicKeyPortal:
    """A ``twisted.cred`` portal look-alike that checks SSH keys for one client address.

    ``login`` follows ``Portal.login``: it returns a Deferred firing with
    ``(IConchUser, avatar, logout)`` or failing with ``UnauthorizedLogin`` (or with
    Conch's ``ValidPublicKey`` when a key without signature would be accepted, which
    makes Conch answer ``PK_OK``).
    """

    def __init__(
        self, policy: Callable[[], AccessPolicy], make_avatar: AvatarFactory, address: str = ""
    ) -> None:
        self.policy = policy
        self.make_avatar = make_avatar
        self.address = address

    def for_address(self, address: str) -> PublicKeyPortal:
        """The same portal, checking ``from=`` patterns against ``address``."""
        return PublicKeyPortal(self.policy, self.make_avatar, address)

    def listCredentialsInterfaces(self) -> list[Any]:
        """Only public keys: the userauth service offers ``publickey`` and nothing else."""
        return [ISSHPrivateKey]

    def login(self, credentials: Any, mind: object, *interfaces: Any) -> defer.Deferred[Any]:
        """Authenticate ``credentials`` (an ``ISSHPrivateKey``) and build the avatar."""
        return defer.maybeDeferred(self._login, credentials, interfaces)

    def _login(self, credentials: Any, interfaces: tuple[Any, ...]) -> Any:
        if IConchUser not in interfaces or not ISSHPrivateKey.providedBy(credentials):
            raise UnauthorizedLogin("only SSH public keys are accepted")
        try:
            login = credentials.username.decode("utf-8")
        except UnicodeDecodeError:
            raise UnauthorizedLogin("login name is not UTF-8") from None
        found = find_key(self.policy(), login, credentials.blob)
        if found is None:
            log.info(
                "SSH key refused for {login!r} from {address}", login=login, address=self.address
            )
            raise UnauthorizedLogin("unknown key")
        user, authorized = found
        if not authorized.allows_address(self.address):
            log.info(
                "SSH key of {user} refused from {address} (from= patterns)",
                user=user,
                address=self.address,
            )
            raise UnauthorizedLogin("key not allowed from this address")
        try:
            public = keys.Key.fromString(credentials.blob)
        except keys.BadKeyError:
            raise UnauthorizedLogin("unreadable key") from None
        if public.type() == "DSA":
            raise UnauthorizedLogin("DSA keys are not accepted")
        if not credentials.signature:
            # The client asks whether this key would do; it signs only if we say yes.
            raise conch_error.ValidPublicKey()
        signature_type = getNS(credentials.signature)[0]
        if signature_type not in USER_SIGNATURE_ALGORITHMS:
            log.info(
                "SSH key of {user} refused from {address}: signature algorithm {algorithm!r} "
                "is not accepted",
                user=user,
                address=self.address,
                algorithm=signature_type[:64].decode("ascii", "replace"),
            )
            raise UnauthorizedLogin("signature algorithm not accepted")
        if not public.verify(credentials.signature, credentials.sigData):
            raise UnauthorizedLogin("bad signature")
        log.info("SSH login: {user} from {address}", user=user, address=self.address)
        avatar = self.make_avatar(user, self.address, authorized.scope)
        return IConchUser, avatar, getattr(avatar, "logout", lambda: None)


class HgwireUserAuthServer(userauth.SSHUserAuthServer):
    """Conch's userauth service, with the factory's reactor and a per-address portal;
    failed attempts are counted by the transport (``HgwireTransport.failed_login``)."""

    def serviceStarted(self) -> None:
        factory = self.transport.factory  # type: ignore[union-attr]
        self.clock = factory.reactor
        # The transport's deadline and count apply to the connection as a whole and end
        # it first; Conch's own (per service) are kept as they are, only never sooner.
        self.loginTimeout = factory.limits.login_timeout
        self.attemptsBeforeDisconnect = factory.limits.login_attempts
        super().serviceStarted()
        peer = self.transport.getPeer().address  # type: ignore[union-attr]
        self.portal = factory.portal.for_address(str(getattr(peer, "host", "")))

    def auth_publickey(self, packet: bytes) -> defer.Deferred[Any]:
        """Conch's ``publickey`` method, once the key in ``packet`` reads as a key.

        Conch logs a key it cannot read at ``error`` level, with the client's algorithm
        name in the line (newlines included), and fails outright on a name that is not
        ASCII: anyone who connects could write the log.
        """
        try:
            keys.Key.fromString(getNS(packet[1:], 2)[1])
        except Exception:  # whatever fails to parse, the client sent no key we know
            log.info("SSH login from {address}: unreadable public key", address=self.portal.address)
            return defer.fail(UnauthorizedLogin("unreadable key"))
        return super().auth_publickey(packet)

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> defer.Deferred[Any]:
        """Conch's attempt, its failure counted by the transport."""
        return super().tryAuth(kind, user, data).addErrback(self._attempt_failed, kind)

    def _attempt_failed(self, reason: Failure, kind: bytes) -> Failure:
        if reason.check(conch_error.IgnoreAuthentication):
            return reason  # answered already (PK_OK for a key we would accept)
        if self.transport.failed_login(kind):  # type: ignore[union-attr]
            # the connection is being closed: no USERAUTH_FAILURE after the disconnect
            return Failure(conch_error.IgnoreAuthentication())
        return reason
