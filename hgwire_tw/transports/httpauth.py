"""HTTP Basic authentication, and access refusals in HTTP's form, for the HTTP transport.

Password hashes are slow on purpose, so a check that is not already cached runs on a
worker thread (``LoginGuard.verify``); the reactor thread only ever does the cheap
cached comparison. Credentials longer than ``MAX_USER``/``MAX_PASSWORD`` are refused
without hashing, and ``LoginGuard`` rate-limits failed logins per client address: every
failed attempt counts, whether it was hashed, refused unhashed or answered from a cache.

Access itself is decided by ``AccessPolicy.authorize``; ``refusal`` only says how HTTP
answers what a ``Grant`` refuses (and adds HTTP's own rule: no push over plain HTTP
unless allowed).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred, DeferredSemaphore, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from hgwire_tw.access import Grant
from hgwire_tw.context import ServerContext
from hgwire_tw.transports.httpreplies import TEXT, finish, is_gone, plain

log = Logger()


@dataclass(frozen=True, slots=True)
class HTTPDenied(Exception):
    """A request is refused: the HTTP status, the message, and whether to ask for a login."""

    status: int
    message: str
    ask_login: bool = False


#: Longest user name and password checked (bytes); longer credentials are wrong
#: without spending a password hash on them.
MAX_USER = 256
MAX_PASSWORD = 1024
#: Slow password checks running at once for one client address.
CHECKS_PER_ADDRESS = 2


class LoginGuard:
    """Failed HTTP logins per client address: a rate limit and a bound on slow checks.

    An address with ``max_failures`` failed logins within ``window`` seconds is
    refused (``429``, no password is checked) until the oldest failure ages out, and at
    most ``CHECKS_PER_ADDRESS`` uncached password checks run at once per address (the
    rest wait their turn), so many bad logins from one address cannot occupy the
    thread pool a valid login from elsewhere needs. Reactor thread only.

    ``verify(user, password)`` is the slow check itself (``login_guard`` makes one that
    hashes on the reactor's thread pool); it is only called through ``check``.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        max_failures: int = 10,
        window: float = 60.0,
        verify: Callable[[str, str], Deferred[bool]] | None = None,
    ) -> None:
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self.verify = verify
        self._failures: dict[str, deque[float]] = {}
        self._slots: dict[str, DeferredSemaphore] = {}

    def _recent(self, address: str) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        horizon = self.clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def locked(self, address: str) -> bool:
        """Whether ``address`` has used up its failed logins for now."""
        failures = self._recent(address)
        return failures is not None and len(failures) >= self.max_failures

    def failed(self, address: str) -> None:
        """Record a failed login from ``address``."""
        if len(self._failures) >= 65536 and address not in self._failures:
            # Bounded memory: forget the address seen longest ago.
            del self._failures[next(iter(self._failures))]
        self._failures.setdefault(address, deque(maxlen=self.max_failures)).append(self.clock())

    def check(self, address: str, run: Callable[[], Deferred[bool]]) -> Deferred[bool | None]:
        """Run the slow check ``run`` when ``address`` has a free slot; None (nothing
        checked) if the address got locked out while this check waited its turn."""
        slots = self._slots.get(address)
        if slots is None:
            slots = self._slots[address] = DeferredSemaphore(CHECKS_PER_ADDRESS)

        def turn() -> Deferred[bool | None]:
            if self.locked(address):
                return succeed(None)
            return run()  # type: ignore[return-value]

        def release(result: object) -> object:
            if slots.tokens == slots.limit and not slots.waiting:
                self._slots.pop(address, None)
            return result

        d: Deferred[bool | None] = slots.run(turn)
        return d.addBoth(release)


def login_guard(ctx: ServerContext) -> LoginGuard:
    """The service's ``LoginGuard`` (made on first use, with the HTTP limits)."""
    guard: LoginGuard | None = ctx.http_logins
    if guard is None:
        limits = ctx.settings.http_limits
        reactor = ctx.reactor
        clock = reactor.seconds if reactor is not None else time.monotonic

        def verify(user: str, password: str) -> Deferred[bool]:
            # ctx.access at call time: a reloaded access file applies at once.
            return deferToThreadPool(
                ctx.reactor,
                ctx.reactor.getThreadPool(),
                ctx.access.authenticate_password,
                user,
                password,
            )

        guard = LoginGuard(
            clock,
            max_failures=limits.login_failures if limits else 10,
            window=limits.login_window if limits else 60.0,
            verify=verify,
        )
        ctx.http_logins = guard
    return guard


def authenticate(ctx: ServerContext, request: IRequest) -> Deferred[str | None]:
    """The logged-in user (None for anonymous); fails with ``HTTPDenied`` on bad
    credentials (401) or when the client's address made too many failed logins (429).

    A request the site already authenticated (``HgRequest.hg_login``, before its body
    was read) gets that outcome again at once. A user who logged in is also remembered
    as ``request.hgwire_user`` for the access log.
    """
    known = getattr(request, "hg_login", None)
    if known is not None:
        user, denied = known
        outcome = fail(denied) if denied is not None else succeed(user)
    else:
        outcome = _authenticate(ctx, request)
    return outcome.addCallback(_remember, request)


def _remember(user: str | None, request: IRequest) -> str | None:
    if user is not None:
        request.hgwire_user = user  # type: ignore[attr-defined]
    return user


def _authenticate(ctx: ServerContext, request: IRequest) -> Deferred[str | None]:
    if not request.getHeader(b"authorization"):
        return succeed(None)
    raw_user: bytes = request.getUser()  # type: ignore[attr-defined]
    raw_password: bytes = request.getPassword()  # type: ignore[attr-defined]
    if not raw_user:
        return succeed(None)
    address = str(getattr(request.getClientAddress(), "host", ""))
    guard = login_guard(ctx)
    if guard.locked(address):
        return _locked_out(address)
    if len(raw_user) > MAX_USER or len(raw_password) > MAX_PASSWORD:
        return _failed_login(guard, address, "credentials too long", None)
    user = raw_user.decode("utf-8", "replace")
    password = raw_password.decode("utf-8", "replace")
    cached = ctx.access.cached_login(user, password)
    if cached is not None:
        # A cached failure counts like a checked one: repeating the same wrong password
        # must not be a free way around the lock-out.
        return succeed(user) if cached else _failed_login(guard, address, "cached", user)
    verify = guard.verify
    if verify is None:
        raise RuntimeError("LoginGuard without a password check")

    def checked(ok: bool | None) -> Deferred[str | None]:
        if ok is None:
            return _locked_out(address)
        ctx.access.remember_login(user, password, ok)
        if ok:
            return succeed(user)
        return _failed_login(guard, address, "wrong password", user)

    return guard.check(address, lambda: verify(user, password)).addCallback(checked)


def _failed_login(
    guard: LoginGuard, address: str, why: str, user: str | None
) -> Deferred[str | None]:
    guard.failed(address)
    log.info(
        "HTTP login failed for {user!r} from {address}: {why}",
        user=(user or "")[:100],
        address=address,
        why=why,
    )
    return _bad_login()


def _locked_out(address: str) -> Deferred[str | None]:
    log.info("HTTP login from {address} refused: too many failures", address=address)
    return fail(HTTPDenied(429, "too many failed logins, try again later"))


def _bad_login() -> Deferred[str | None]:
    return fail(HTTPDenied(401, "authorization failed", ask_login=True))


def is_secure(request: IRequest) -> bool:
    """Whether the request came over TLS."""
    return bool(request.isSecure())


def refusal(
    ctx: ServerContext,
    request: IRequest,
    repo_name: str,
    user: str | None,
    grant: Grant,
    *,
    write: bool,
) -> HTTPDenied | None:
    """How HTTP refuses ``user`` pulling (or pushing, with ``write``) ``repo_name`` when
    ``grant`` (``AccessPolicy.authorize``'s answer) does not allow it; None if it does.

    Statuses follow hgweb: 401 when logging in could help, 403 when it cannot (including
    a push over plain HTTP when that is not allowed).
    """
    access = ctx.access
    if not grant.read:
        if user is None and access.login_could_grant(repo_name):
            return HTTPDenied(401, "read not authorized", ask_login=True)
        return HTTPDenied(403, "read not authorized")
    if not write:
        return None
    if not is_secure(request) and not ctx.settings.allow_push_over_http:
        return HTTPDenied(403, "ssl required")
    if not grant.write:
        # Ask for a login only when some user could push here; otherwise 403 is the truth.
        could_login = user is None and access.login_could_grant(repo_name, write=True)
        return HTTPDenied(401 if could_login else 403, "push not authorized", could_login)
    return None


def check_access(
    ctx: ServerContext, request: IRequest, repo_name: str, user: str | None, *, write: bool
) -> None:
    """Raise ``HTTPDenied`` unless ``user`` may pull (or push, with ``write``) here."""
    grant = ctx.access.authorize(user, repo_name)
    denied = refusal(ctx, request, repo_name, user, grant, write=write)
    if denied is not None:
        raise denied


def deny(ctx: ServerContext, request: IRequest, denied: HTTPDenied, body: bytes) -> bytes:
    """Set the status and headers for a refusal; returns ``body`` to send."""
    if denied.ask_login:
        realm = ctx.settings.realm.replace('"', "")
        request.setHeader(b"WWW-Authenticate", f'Basic realm="{realm}"'.encode())
    return plain(request, denied.status, body, reason=denied.message.encode(), content_type=TEXT)


def refuse(ctx: ServerContext, request: IRequest, denied: HTTPDenied) -> None:
    """Answer and finish a refused request (``deny`` with the message as the body)."""
    if not is_gone(request):
        finish(request, deny(ctx, request, denied, denied.message.encode() + b"\n"))
