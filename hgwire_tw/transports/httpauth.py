"""HTTP Basic authentication and repository access decisions for the HTTP transport.

Password hashes are slow on purpose, so a check that is not already cached runs on a
worker thread; the reactor thread only ever does the cheap cached comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.web.iweb import IRequest

from hgwire_tw.context import ServerContext
from hgwire_tw.transports.httpreplies import TEXT, finish, is_gone, plain


@dataclass(frozen=True, slots=True)
class HTTPDenied(Exception):
    """A request is refused: the HTTP status, the message, and whether to ask for a login."""

    status: int
    message: str
    ask_login: bool = False


def authenticate(ctx: ServerContext, request: IRequest) -> Deferred[str | None]:
    """The logged-in user (None for anonymous); fails with ``HTTPDenied(401)`` on bad
    credentials."""
    if not request.getHeader(b"authorization"):
        return succeed(None)
    user = request.getUser().decode("utf-8", "replace")  # type: ignore[attr-defined]
    password = request.getPassword().decode("utf-8", "replace")  # type: ignore[attr-defined]
    if not user:
        return succeed(None)
    cached = ctx.access.cached_login(user, password)
    if cached is not None:
        return succeed(user) if cached else _bad_login()

    def check() -> bool:
        return ctx.access.authenticate_password(user, password)

    def checked(ok: bool) -> Deferred[str | None]:
        ctx.access.remember_login(user, password, ok)
        return succeed(user) if ok else _bad_login()

    pool = ctx.reactor.getThreadPool()
    return deferToThreadPool(ctx.reactor, pool, check).addCallback(checked)


def _bad_login() -> Deferred[str | None]:
    d: Deferred[str | None] = Deferred()
    d.errback(HTTPDenied(401, "authorization failed", ask_login=True))
    return d


def is_secure(request: IRequest) -> bool:
    """Whether the request came over TLS."""
    return bool(request.isSecure())


def check_access(
    ctx: ServerContext, request: IRequest, repo_name: str, user: str | None, *, write: bool
) -> None:
    """Raise ``HTTPDenied`` unless ``user`` may pull (or push, with ``write``) here.

    Statuses follow hgweb: 401 when logging in could help, 403 when it cannot (including
    a push over plain HTTP when that is not allowed).
    """
    access = ctx.access
    if not access.can_read(user, repo_name):
        if user is None and access.requires_login(repo_name):
            raise HTTPDenied(401, "read not authorized", ask_login=True)
        raise HTTPDenied(403, "read not authorized")
    if not write:
        return
    if not is_secure(request) and not ctx.settings.allow_push_over_http:
        raise HTTPDenied(403, "ssl required")
    if not access.can_write(user, repo_name):
        # Ask for a login only when some user could push here; otherwise 403 is the truth.
        could_login = user is None and any(
            access.can_write(name, repo_name) for name in access.users
        )
        raise HTTPDenied(401 if could_login else 403, "push not authorized", ask_login=could_login)


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
