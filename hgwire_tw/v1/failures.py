"""How a failed v1 command is told to its client, and how it is logged.

``describe_failure`` turns an exception into the text a client may see (Mercurial's own
errors keep their words; a bug names an incident id the server log holds).
``push_failure`` shapes a failed push's answer as the client waits for it: a bundle2
reply holding an ``error:abort`` part for a bundle2 push (``bundle2_abort_reply``), else
an out-of-band error over HTTP or the non-empty reply frame of a failed push over SSH.

Bad input. An error answer refusing the client's own input is logged by the transport
that sends it, in one ``info`` line (``one_line`` keeps it short); answers whose cause
was logged where it happened start with one of ``LOGGED_FAILURES``.
"""

from __future__ import annotations

import secrets
from typing import Any

from mercurial import error as hgerror

from hgwire_tw.core.errors import CommandError
from hgwire_tw.repo import recovery
from hgwire_tw.v1.results import V1LegacyStream, V1OutOfBandError, V1PushError, V1Result

__all__ = [
    "LOGGED_FAILURES",
    "MAX_LOGGED_ERROR",
    "bundle2_abort_reply",
    "describe_failure",
    "one_line",
    "push_failure",
]

#: Beginnings of error answers whose cause was logged where it happened (a bug, with
#: its incident id; a lock held past the timeout): these are no bad input.
LOGGED_FAILURES = (b"internal server error (incident ", b"the repository is locked by ")

#: Longest error text written in a log line about bad input.
MAX_LOGGED_ERROR = 300


def one_line(text: str | bytes, limit: int = MAX_LOGGED_ERROR) -> str:
    """``text`` on one line, at most ``limit`` characters (a client chose it)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def describe_failure(exc: BaseException, repo: Any = None) -> tuple[bytes, bytes | None]:
    """``(message, hint)`` telling a client why a command failed with ``exc``.

    Mercurial's own errors carry text meant for users; anything else is a bug whose
    details stay in the server log (the message names an incident id found there).
    """
    from mercurial.utils import stringutil

    if isinstance(exc, hgerror.LockHeld):
        timeout = repo.ui.configint(b"ui", b"timeout") if repo is not None else 0
        return recovery.locked_message(exc, timeout).encode("utf-8"), None
    if isinstance(exc, CommandError):
        return exc.render().encode("utf-8"), None
    if isinstance(exc, (hgerror.Error, hgerror.RepoError)):
        return stringutil.forcebytestr(exc), getattr(exc, "hint", None)
    incident = secrets.token_hex(4).encode("ascii")
    return (
        b"internal server error (incident %s in the server log)" % incident,
        None,
    )


def bundle2_abort_reply(message: bytes, hint: bytes | None = None) -> bytes:
    """A whole bundle2 reply holding one ``error:abort`` part (what a Mercurial server
    answers a failed bundle2 push with; the client prints ``abort: MESSAGE``)."""
    from mercurial import bundle2

    from hgwire_tw.repo.ui import make_ui

    # Part parameter values are at most 255 bytes long.
    params = [(b"message", _clip(message))]
    advisory = [(b"hint", _clip(hint))] if hint else []
    bundler = bundle2.bundle20(make_ui())
    bundler.addpart(bundle2.bundlepart(b"error:abort", params, advisory))
    return b"".join(bundler.getchunks())


def _clip(text: bytes, limit: int = 255) -> bytes:
    text = text.rstrip(b"\n")
    return text if len(text) <= limit else text[: limit - 3] + b"..."


def push_failure(
    message: bytes,
    hint: bytes | None = None,
    *,
    transport: str,
    bundle2: bool,
    bad_input: bool = False,
) -> V1Result:
    """The answer to a push that failed with ``message``, in the form the client reads:
    a bundle2 ``error:abort`` reply to a bundle2 push; else an out-of-band error over
    HTTP, or the non-empty reply frame of a failed push over SSH (``bad_input`` marks
    it for the transport's log)."""
    if bundle2:
        return V1LegacyStream(chunks=iter([bundle2_abort_reply(message, hint)]))
    text = message.rstrip(b"\n") + b"\n"
    if hint:
        text += b"(%s)\n" % hint
    if transport == "ssh":
        return V1PushError(message=text, bad_input=bad_input)
    return V1OutOfBandError(message=text)
