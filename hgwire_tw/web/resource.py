"""The reactor side of the web pages: access decisions, then hgweb on the web pool.

``HgResource`` (``transports/http.py``) hands every request that is not wire protocol
to ``WebFrontEnd.render`` (``is_web_request`` says which): no ``?cmd=`` naming a wire
command, not ``<repo>/api/...``, not under ``/.hgwire/``. Here, on the reactor thread:

1. only ``GET``/``HEAD`` (405 otherwise: pushes never go through hgweb);
2. at most ``threads + max_waiting`` pages at once (503 beyond: a flood of page
   requests queues in bounded memory and never reaches the repository workers);
3. HTTP Basic authentication (``httpauth.authenticate``), then for a repository page
   our access rules (``httpauth.check_access``, the same decision as a pull: 401 with a
   challenge for anonymous, 403 for a user who may not read), and archives refused
   (403) unless the service enables them. The index needs no permission: it lists only
   what the caller may read;
4. the page is rendered by ``app.HgwebApplication`` through ``twisted.web.wsgi``'s
   ``WSGIResource`` on the web thread pool (its own ``ThreadPool``, never the repository
   workers, so a slow page never delays a clone). A push producer registered on the
   request pauses the web thread while the client is not reading.

Each page ends with a metrics observation (``ServerMetrics.page``) and a debug line
``web <status> <method> <path> <secs>`` (the HTTP access line, at info, already says
what was asked and answered; this one adds the page's own time).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl

from mercurial.hgweb import webcommands
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.wsgi import WSGIResource
from zope.interface import implementer

from hgwire_tw.context import ServerContext
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.transports.httpauth import HTTPDenied, authenticate, check_access, refuse
from hgwire_tw.transports.httpreplies import fail, is_gone, plain
from hgwire_tw.v1.dispatch import is_command
from hgwire_tw.web.app import HgwebApplication, Route, WireFirst, WriteGate

__all__ = ["DEFAULT_MAX_WAITING", "WebFrontEnd", "is_web_request", "page_name"]

log = Logger()

#: Pages waiting for a web thread before new ones are refused with 503.
DEFAULT_MAX_WAITING = 32
_WEB_COMMANDS = frozenset(webcommands.__all__)
#: Paths of hgwire_tw's own endpoints (blobs), never pages.
HGWIRE_PREFIX = b"/.hgwire/"


def _query_cmds(request: IRequest) -> list[bytes]:
    """Every ``cmd`` value of the query string (hgweb acts on the last one)."""
    _, _, query = request.uri.partition(b"?")
    if b"cmd" not in query:
        return []
    # Loose parsing, as hgweb's: this only decides the route; the v1 path parses strictly.
    # Latin-1 maps every byte to one character and back, so any %XX escape is harmless.
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    return [value.encode("latin-1") for key, value in pairs if key == "cmd"]


def _hgweb_parses_query(request: IRequest) -> bool:
    """Whether hgweb can read the query string: it parses it as ASCII bytes, and a
    ``%XX`` escape of a non-ASCII byte (or a raw one) makes it raise, which would be a
    500 with a critical traceback instead of the client's error."""
    _, _, query = request.uri.partition(b"?")
    try:
        parse_qsl(query, keep_blank_values=True)
    except UnicodeError:
        return False
    return True


def is_web_request(request: IRequest) -> bool:
    """Whether a request (already known not to be ``<repo>/api/...`` nor a blob) is a
    page: every ``cmd`` query parameter, if any, names an hgweb command that is not also
    a wire command (``?cmd=branches`` is the wire command, as in hgweb), and it is not
    under ``/.hgwire/`` (our own endpoints). hgweb itself would answer wire commands,
    with its own rules: it never sees one."""
    if request.path.startswith(HGWIRE_PREFIX):
        return False
    return all(
        cmd.decode("latin-1") in _WEB_COMMANDS and not is_command(cmd)
        for cmd in _query_cmds(request)
    )


def page_name(
    served: ServedRepository | None, rest: Sequence[str], cmd: bytes | None = None
) -> str:
    """The hgweb command a URL names (a bounded label for logs and metrics); ``cmd`` is
    the old-style ``?cmd=`` parameter, if any."""
    if cmd is not None and cmd.decode("latin-1") in _WEB_COMMANDS:
        return cmd.decode("latin-1")
    if served is None:
        return "static" if rest and rest[0] == "static" else "index"
    if not rest:
        return "summary"
    first = rest[0].rpartition("-")[2]  # hgweb's STYLE-COMMAND form
    return first if first in _WEB_COMMANDS else "other"


@implementer(IPushProducer)
class _GateProducer:
    """The request's push producer: the transport's pause/resume reach the web thread."""

    def __init__(self, gate: WriteGate) -> None:
        self.gate = gate

    def pauseProducing(self) -> None:
        self.gate.pause()

    def resumeProducing(self) -> None:
        self.gate.resume()

    def stopProducing(self) -> None:
        self.gate.close()


class WebFrontEnd:
    """hgweb for one service: its thread pool, its WSGI application, its decisions."""

    def __init__(
        self,
        ctx: ServerContext,
        *,
        threadpool: ThreadPool | None = None,
        max_waiting: int = DEFAULT_MAX_WAITING,
    ) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.threadpool = threadpool or ThreadPool(
            minthreads=0, maxthreads=settings.web_threads, name="hgwire-web"
        )
        self.app = HgwebApplication(
            ctx.pool,
            ctx.registry,
            # Read at each request: ``HgwireService.reload`` replaces ``ctx.access``.
            lambda: ctx.access,
            style=settings.web_style,
            archives=settings.web_archives,
            wire_first=WireFirst(
                self._wire_busy, settings.web_cpu_share / max(1, settings.web_threads)
            ),
        )
        self.max_pages = self.threadpool.max + max_waiting
        #: Pages accepted and not finished yet.
        self.pages = 0
        self._gates: set[WriteGate] = set()
        self._wire_pools: list[ThreadPool] = []

    def _wire_busy(self) -> bool:
        # A thread of the repository pool or of the reactor's pool (v2 encoding jobs) is
        # running: a clone or pull is in progress. Read from web threads: plain attribute
        # reads, approximate by nature.
        return any(pool.working for pool in self._wire_pools)

    def start(self) -> None:
        """Start the web threads."""
        pools = [getattr(self.ctx.pool, "threadpool", None)]
        get_pool = getattr(self.ctx.reactor, "getThreadPool", None)
        if get_pool is not None:
            pools.append(get_pool())
        self._wire_pools = [p for p in pools if p is not None]
        self.threadpool.start()

    def stop(self) -> None:
        """Wake every paused page (their clients will not read any more), then join."""
        for gate in list(self._gates):
            gate.close()
        self.threadpool.stop()

    # -- reactor thread -----------------------------------------------------------------

    def render(
        self,
        request: IRequest,
        segments: Sequence[str],
        served: ServedRepository | None,
        rest: Sequence[str],
    ) -> bytes | int:
        """Answer a page request (see the module docs); ``served``/``rest`` are the
        registry's match of ``segments`` (None and ``segments`` when nothing matched)."""
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return plain(request, 405, "web pages take GET or HEAD\n")
        if self.pages >= self.max_pages:
            request.setHeader(b"Retry-After", b"1")
            return plain(request, 503, "too many web pages in progress, try again\n")
        if not _hgweb_parses_query(request):
            return plain(request, 400, "malformed query string: escapes must decode to ASCII\n")
        started = time.monotonic()
        cmds = _query_cmds(request)
        page = page_name(served, rest, cmds[-1] if cmds else None)
        d = authenticate(self.ctx, request)
        d.addCallback(self._authorized, request, segments, served, rest, page, started)
        d.addErrback(self._refused, request, page, started)
        d.addErrback(self._internal_error, request)
        return NOT_DONE_YET

    def _authorized(
        self,
        user: str | None,
        request: IRequest,
        segments: Sequence[str],
        served: ServedRepository | None,
        rest: Sequence[str],
        page: str,
        started: float,
    ) -> None:
        if served is not None:
            check_access(self.ctx, request, served.name, user, write=False)
            if page == "archive" and not self.ctx.settings.web_archives:
                raise HTTPDenied(403, "archives are disabled on this server")
        if is_gone(request):
            return
        gate = WriteGate()
        producer = _GateProducer(gate)
        self.pages += 1
        self._gates.add(gate)
        request.notifyFinish().addBoth(self._finished, request, gate, page, started)
        request.registerProducer(producer, True)
        # HTTPChannel does not pause a producer registered while the transport is
        # already full (e.g. after an earlier response on this connection).
        if getattr(getattr(request, "channel", None), "_waitingForTransport", False):
            gate.pause()
        route = Route(served=served, segments=tuple(segments), user=user)
        app = functools.partial(self._application, route, gate, request)
        WSGIResource(self.ctx.reactor, self.threadpool, app).render(request)

    def _application(
        self,
        route: Route,
        gate: WriteGate,
        request: IRequest,
        environ: dict[str, Any],
        start_response: Any,
    ) -> Iterator[bytes]:
        # web thread
        try:
            if not gate.gone:
                yield from self.app.serve(route, gate, environ, start_response)
        finally:
            # Queued before the WSGI response's own finish, so the producer is gone
            # before the request ends.
            self.ctx.reactor.callFromThread(self._release, request, gate)

    def _release(self, request: IRequest, gate: WriteGate) -> None:
        if getattr(request, "channel", None) is not None and isinstance(
            getattr(request, "producer", None), _GateProducer
        ):
            request.unregisterProducer()

    def _finished(
        self, result: object, request: IRequest, gate: WriteGate, page: str, started: float
    ) -> None:
        gate.close()
        self._gates.discard(gate)
        self.pages -= 1
        self._done(request, page, started)

    def _done(self, request: IRequest, page: str, started: float) -> None:
        status = int(getattr(request, "code", 200))
        secs = time.monotonic() - started
        self.ctx.metrics.page(page, status, secs)
        log.debug(
            "web {status} {method} {path} {secs:.3f}s",
            status=status,
            method=request.method.decode("latin-1"),
            path=request.uri.decode("latin-1"),
            secs=secs,
        )

    def _refused(self, f: Failure, request: IRequest, page: str, started: float) -> None:
        f.trap(HTTPDenied)
        if is_gone(request):
            return
        refuse(self.ctx, request, f.value)  # type: ignore[arg-type]
        self._done(request, page, started)

    def _internal_error(self, f: Failure, request: IRequest) -> None:
        log.failure("web page failed", f)
        fail(request)
