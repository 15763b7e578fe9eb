"""Small plain-text HTTP replies shared by the v1 and v2 HTTP resources."""

from __future__ import annotations

from twisted.web.iweb import IRequest

#: The media type of v1 error bodies (hgweb's); v2 answers exactly ``text/plain``.
TEXT_UTF8 = b"text/plain; charset=utf-8"
TEXT = b"text/plain"


def plain(
    request: IRequest,
    status: int,
    message: str | bytes,
    *,
    reason: bytes | None = None,
    content_type: bytes = TEXT_UTF8,
) -> bytes:
    """Set a status and text headers for ``message``; returns the body to write."""
    body = message.encode("utf-8") if isinstance(message, str) else message
    if reason is None:
        request.setResponseCode(status)
    else:
        request.setResponseCode(status, reason)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def is_gone(request: IRequest) -> bool:
    """Whether the request already finished or its client disconnected."""
    return bool(getattr(request, "_disconnected", False) or getattr(request, "finished", False))


def finish(request: IRequest, body: bytes) -> None:
    """Write ``body`` and finish, unless nobody is listening any more."""
    if is_gone(request):
        return
    request.write(body)
    request.finish()


def fail(request: IRequest) -> None:
    """After an internal error: a 500 if nothing was sent yet, else cut the connection
    (a response that broke half-way must not look complete)."""
    if is_gone(request):
        return
    if not getattr(request, "startedWriting", False):
        finish(request, plain(request, 500, "internal server error\n"))
    else:
        request.loseConnection()
