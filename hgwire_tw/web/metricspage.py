"""``/metrics``: the service's Prometheus metrics over HTTP.

With ``--metrics http`` (the default) ``HgResource`` answers ``GET /metrics`` (no
query) from ``render_metrics``: a client on this machine (127.0.0.0/8, ::1) may always
read it; anyone else only as a principal the access file's top-level ``metrics = [...]``
names (``"anonymous"``, ``"*"`` or users, logged in with HTTP Basic). A repository named
``metrics`` keeps its wire protocol (``/metrics?cmd=...``) and its pages under
``/metrics/``.

With ``--metrics ENDPOINT`` the metrics get a listener of their own (``MetricsResource``
in a plain ``Site``), readable by whoever can connect: choose the interface accordingly.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from hgwire_tw.context import ServerContext
from hgwire_tw.metrics import CONTENT_TYPE, is_loopback
from hgwire_tw.transports.httpauth import HTTPDenied, authenticate, refuse
from hgwire_tw.transports.httpreplies import fail, finish, plain

__all__ = ["METRICS_PATH", "MetricsResource", "is_metrics_request", "render_metrics"]

log = Logger()

METRICS_PATH = b"/metrics"


def is_metrics_request(ctx: ServerContext, request: IRequest) -> bool:
    """Whether ``request`` is a scrape of ``/metrics`` on the HTTP listener."""
    return (
        ctx.settings.metrics == "http" and request.path == METRICS_PATH and b"?" not in request.uri
    )


def _answer(ctx: ServerContext, request: IRequest) -> bytes:
    if request.method not in (b"GET", b"HEAD"):
        request.setHeader(b"Allow", b"GET, HEAD")
        return plain(request, 405, "metrics take GET or HEAD\n")
    body = ctx.metrics.exposition()
    plain(request, 200, body, content_type=CONTENT_TYPE)
    request.setHeader(b"Cache-Control", b"no-store")
    return b"" if request.method == b"HEAD" else body


def _decide(ctx: ServerContext, user: str | None) -> None:
    access = ctx.access
    if access.can_read_metrics(user):
        return
    could_login = user is None and any(access.can_read_metrics(name) for name in access.users)
    raise HTTPDenied(401 if could_login else 403, "metrics not authorized", could_login)


def render_metrics(ctx: ServerContext, request: IRequest) -> bytes | int:
    """Answer ``/metrics`` on the HTTP listener (access as in the module docs)."""
    if is_loopback(str(getattr(request.getClientAddress(), "host", ""))):
        return _answer(ctx, request)
    d: Deferred[str | None] = authenticate(ctx, request)

    def allowed(user: str | None) -> None:
        _decide(ctx, user)
        finish(request, _answer(ctx, request))

    def refused(f: Failure) -> None:
        f.trap(HTTPDenied)
        refuse(ctx, request, f.value)  # type: ignore[arg-type]

    def failed(f: Failure) -> None:
        log.failure("/metrics failed", f)
        fail(request)

    d.addCallback(allowed).addErrback(refused).addErrback(failed)
    return NOT_DONE_YET


class MetricsResource(Resource):
    """The root of a ``--metrics ENDPOINT`` listener: ``/metrics`` (and ``/``)."""

    isLeaf = True

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__()
        self.ctx = ctx

    def render(self, request: IRequest) -> bytes:
        """The exposition for ``/`` and ``/metrics``; 404 elsewhere."""
        if request.path not in (b"/", METRICS_PATH):
            return plain(request, 404, "Not Found: metrics are at /metrics\n")
        return _answer(self.ctx, request)
