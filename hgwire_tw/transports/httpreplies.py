"""Small plain-text HTTP replies shared by the v1 and v2 HTTP resources, and the one
answer to a bug (``internal_error``)."""

from __future__ import annotations

import secrets

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

log = Logger()

#: The media type of Mercurial's out-of-band errors (``abort: remote error``).
HG_ERROR = b"application/hg-error"

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


def incident_message() -> bytes:
    """The text a client gets for a bug: a fresh incident id to find in the server log,
    and nothing of the bug itself."""
    incident = secrets.token_hex(4).encode("ascii")
    return b"internal server error (incident %s in the server log)" % incident


def internal_error(
    request: IRequest, failure: Failure, what: str, *, hg_error: bool
) -> bytes | None:
    """A bug while serving ``request``: its traceback logged once, with an incident id
    that the answer names. Returns the body to write when nothing was sent yet: with
    ``hg_error`` (a v1 command, whose client prints out-of-band errors as ``abort: remote
    error``) a ``200`` ``application/hg-error``, else a ``500`` (its reason phrase names
    the incident too, for clients that show only that). A response already under way is
    cut instead (None), so it cannot look complete."""
    message = incident_message()
    log.failure(
        "{what} failed: {message}",
        failure,
        what=what,
        message=message.decode("ascii"),
    )
    if is_gone(request):
        return None
    if getattr(request, "startedWriting", False):
        request.loseConnection()
        return None
    if hg_error:
        return plain(
            request, 200, message + b"\n", reason=b"Script output follows", content_type=HG_ERROR
        )
    incident = message[message.index(b"(") + 1 : message.index(b" in ")]
    return plain(request, 500, message + b"\n", reason=b"Internal Server Error (%s)" % incident)
