"""The embedded blob resource: ``GET``/``HEAD`` ``BLOBS_PATH<name>`` from ``ctx.blobs``.

Redirects and clone bundles name blobs by URL; unless ``--blob-base-url`` points them at
an external static server, that URL is this listener. A blob is served only if its name
is exactly a blob file name (``BlobStore.valid_name``: 64 hex digits and a known suffix),
so no path segment, percent-escape or dot can reach outside the blob directory; anything
else is a plain 404.

Access: a blob does not know which repository it came from, so a blob may be served
to a client only if that client may pull from *every* served repository — unless the
URL is scoped to one repository (``?repo=NAME&scope=TOKEN``, made by
``Redirector.scoped_url`` when it redirects a client of a public repository): a valid
token proves the blob was published for that repository, and the blob is then served
to anyone while that repository is anonymously readable. With no access
file (or rules that let ``anonymous`` read everything) that is anyone, which is what
makes anonymous, cacheable blob URLs safe: they are unguessable content hashes of data
the server would hand out anyway. When some repository needs a login, the blob resource
asks for the same HTTP Basic login pull does and refuses users who cannot read every
repository (401 when logging in could help, 403 otherwise) — a private repository's
bundle is never served anonymously.

The file is streamed by a pull producer reading ``CHUNK`` bytes per call: small, bounded
reads on the reactor thread (the same trade ``twisted.web.static`` makes), never the
whole file in memory.
"""

from __future__ import annotations

from typing import BinaryIO

from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from hgwire_tw.blobstore import MEDIA_TYPES, BlobStore
from hgwire_tw.context import BLOBS_PATH, ServerContext
from hgwire_tw.transports.httpauth import HTTPDenied, authenticate, refuse
from hgwire_tw.transports.httpreplies import fail, finish, is_gone, plain

__all__ = [
    "BLOBS_PREFIX",
    "CHUNK",
    "blob_access",
    "is_blob_request",
    "render_blob",
    "scoped_to_public_repository",
]

log = Logger()

BLOBS_PREFIX = BLOBS_PATH.encode("ascii")
#: Bytes read from disk per producer step.
CHUNK = 64 * 1024


def is_blob_request(request: IRequest) -> bool:
    """Whether ``request`` addresses the blob resource (its path starts with ``BLOBS_PATH``)."""
    return bool(request.path.startswith(BLOBS_PREFIX))


def blob_access(ctx: ServerContext, user: str | None) -> HTTPDenied | None:
    """Why ``user`` (None: anonymous) may not fetch blobs, or None if they may.

    Allowed only when the user may read every served repository (see the module
    docstring); also the rule the clone-bundle manifest uses to decide whether embedded
    blob URLs are worth advertising.
    """
    access = ctx.access
    closed = [n for n in ctx.registry.names() if not access.authorize(user, n).read]
    if not closed:
        return None
    if user is None and access.users:
        return HTTPDenied(401, "blob access requires login", ask_login=True)
    return HTTPDenied(403, "blob access not authorized")


def scoped_to_public_repository(ctx: ServerContext, request: IRequest, name: str) -> bool:
    """Whether the request carries a valid ``?repo=&scope=`` for ``name`` (made by
    ``Redirector.scoped_url`` for a redirect) naming a repository anyone may read."""
    args = getattr(request, "args", None) or {}
    repos, tokens = args.get(b"repo", []), args.get(b"scope", [])
    redirector = getattr(ctx.runner, "redirector", None)
    if len(repos) != 1 or len(tokens) != 1 or redirector is None:
        return False
    repo = repos[0].decode("utf-8", "replace")
    if not redirector.in_scope(repo, name, tokens[0].decode("ascii", "replace")):
        return False
    return repo in ctx.registry.names() and ctx.access.authorize(None, repo).read


def render_blob(ctx: ServerContext, request: IRequest) -> bytes | int:
    """Answer one request under ``BLOBS_PATH``."""
    if request.method not in (b"GET", b"HEAD"):
        request.setHeader(b"Allow", b"GET, HEAD")
        return plain(request, 405, "method not allowed\n")
    store = ctx.blobs
    name = request.path[len(BLOBS_PREFIX) :].decode("latin-1")
    if store is None or not BlobStore.valid_name(name):
        return plain(request, 404, "no such blob\n")

    if scoped_to_public_repository(ctx, request, name):
        _serve(store, name, request, public=True)
        return NOT_DONE_YET

    def authorized(user: str | None) -> None:
        denied = blob_access(ctx, user)
        if denied is not None:
            raise denied
        _serve(store, name, request, public=user is None)

    def refused(f: Failure) -> None:
        f.trap(HTTPDenied)
        refuse(ctx, request, f.value)  # type: ignore[arg-type]

    def failed(f: Failure) -> None:
        log.failure("serving blob {name} failed", f, name=name)
        fail(request)

    d = authenticate(ctx, request)
    d.addCallback(authorized)
    d.addErrback(refused)
    d.addErrback(failed)
    return NOT_DONE_YET


def _serve(store: BlobStore, name: str, request: IRequest, *, public: bool) -> None:
    if is_gone(request):
        return
    f = store.open(name)
    if f is None:
        finish(request, plain(request, 404, "no such blob\n"))
        return
    try:
        size = _size(f)
    except OSError:
        f.close()
        raise
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", MEDIA_TYPES[name[64:]].encode("ascii"))
    request.setHeader(b"Content-Length", b"%d" % size)
    request.setHeader(b"ETag", b'"%s"' % name[:64].encode("ascii"))
    # A blob never changes; only a private one must stay out of shared caches.
    scope = b"public" if public else b"private"
    request.setHeader(b"Cache-Control", scope + b", max-age=31536000, immutable")
    if request.method == b"HEAD" or size == 0:
        f.close()
        request.finish()
        return
    _BlobProducer(f, request, size).start()


def _size(f: BinaryIO) -> int:
    f.seek(0, 2)
    size = f.tell()
    f.seek(0)
    return size


@implementer(IPullProducer)
class _BlobProducer:
    """Writes an open blob file to a request, one ``CHUNK`` per ``resumeProducing``."""

    def __init__(self, f: BinaryIO, request: IRequest, size: int) -> None:
        self.file: BinaryIO | None = f
        self.request = request
        self.remaining = size
        request.notifyFinish().addErrback(lambda _: self._close())

    def start(self) -> None:
        self.request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.file is None:
            return
        data = self.file.read(min(CHUNK, self.remaining))
        if not data:
            # The file shrank under us (it must not: blobs are immutable). Cut the
            # connection so the client sees a short body, never a complete-looking one.
            log.error("blob file shorter than its announced length")
            self._close()
            self.request.unregisterProducer()
            self.request.loseConnection()
            return
        self.remaining -= len(data)
        self.request.write(data)
        if self.remaining <= 0:
            self._close()
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
