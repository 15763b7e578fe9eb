"""The repository preamble of hgwire's stream transports (SSH subsystem, raw TCP).

Before any v2 frame, a client on a byte stream names the repository it wants::

    client → server:   hgwire-v2 SP <name> LF          e.g. b"hgwire-v2 team/proj\\n"
    server → client:   ok LF                            then frames, both ways
               or:     error SP <message> LF            then the server closes

``<name>`` is the registry name (UTF-8, ``/``-separated, ``""`` for the root
repository), not a path; the server only looks it up. The whole request line, newline
included, is at most ``MAX_PREAMBLE`` bytes, and may contain no control characters.
Frames may follow the request line immediately (the client need not wait for ``ok``);
bytes after the line are handed back as ``rest``. The reply line is bounded the same
way. ``docs/preamble.md`` is the prose version of this module.

Everything here is sans-IO: parsers take bytes and return values; malformed input raises
``RemoteProtocolError`` and leaves the parser unusable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from hgwire_tw.core.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_PORT",
    "MAGIC",
    "MAX_PREAMBLE",
    "PreambleAccepted",
    "PreambleParser",
    "PreambleRefused",
    "PreambleReplyParser",
    "PreambleRequest",
    "encode_error",
    "encode_ok",
    "encode_request",
]

#: TCP port of ``hgwire://host/repo`` when the URL names none, and of the server's
#: default ``--tcp`` listener: one constant for both sides.
DEFAULT_PORT: Final = 8023
#: First word of the request line: names the protocol spoken after it.
MAGIC: Final = b"hgwire-v2"
#: Longest request or reply line, newline included.
MAX_PREAMBLE: Final = 1024

_OK: Final = b"ok"
_ERROR: Final = b"error "


@dataclass(frozen=True, slots=True, kw_only=True)
class PreambleRequest:
    """A complete request line: the repository ``name`` and the bytes after the line."""

    name: str
    rest: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class PreambleAccepted:
    """The server answered ``ok``; ``rest`` is the first frame data after it."""

    rest: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class PreambleRefused:
    """The server answered ``error <message>`` and will close."""

    message: str


def _check_line_text(line: bytes, what: str) -> str:
    if any(c < 0x20 or c == 0x7F for c in line):
        raise RemoteProtocolError(f"control character in the {what}")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"the {what} is not UTF-8") from None


def encode_request(name: str) -> bytes:
    """The client's request line for repository ``name``."""
    line = MAGIC + b" " + name.encode("utf-8") + b"\n"
    if len(line) > MAX_PREAMBLE or any(c < 0x20 or c == 0x7F for c in line[:-1]):
        raise LocalProtocolError(f"cannot send repository name {name!r} in a preamble")
    return line


def encode_ok() -> bytes:
    """The server's acceptance line."""
    return _OK + b"\n"


def encode_error(message: str) -> bytes:
    """The server's refusal line; the message is cleaned and cut to fit."""
    text = "".join(ch if ch.isprintable() else " " for ch in message).strip() or "refused"
    data = text.encode("utf-8")
    limit = MAX_PREAMBLE - len(_ERROR) - 1
    if len(data) > limit:
        data = data[:limit].decode("utf-8", "ignore").encode("utf-8")
    return _ERROR + data + b"\n"


class _LineReader:
    """Collects one bounded line."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._buf = bytearray()
        self._done = False
        self._broken = False

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        if self._broken:
            raise RemoteProtocolError(f"the {self._what} was already malformed")
        if self._done:
            raise LocalProtocolError(f"the {self._what} is complete; feed frames elsewhere")
        self._buf += data
        end = self._buf.find(b"\n", 0, MAX_PREAMBLE)
        if end < 0:
            if len(self._buf) >= MAX_PREAMBLE:
                self._broken = True
                raise RemoteProtocolError(f"{self._what} longer than {MAX_PREAMBLE} bytes")
            return None
        self._done = True
        line, rest = bytes(self._buf[:end]), bytes(self._buf[end + 1 :])
        self._buf.clear()
        return line, rest

    def fail(self, message: str) -> RemoteProtocolError:
        self._broken = True
        return RemoteProtocolError(message)


class PreambleParser:
    """Server side: parses the request line."""

    def __init__(self) -> None:
        self._reader = _LineReader("preamble")

    def feed(self, data: bytes) -> PreambleRequest | None:
        """The request once its line is complete (None until then)."""
        got = self._reader.feed(data)
        if got is None:
            return None
        line, rest = got
        magic, sep, name = line.partition(b" ")
        if magic != MAGIC or not sep:
            raise self._reader.fail(f"expected '{MAGIC.decode()} <repository>' first")
        try:
            text = _check_line_text(name, "repository name")
        except RemoteProtocolError as e:
            raise self._reader.fail(str(e)) from None
        return PreambleRequest(name=text, rest=rest)


class PreambleReplyParser:
    """Client side: parses the server's reply line."""

    def __init__(self) -> None:
        self._reader = _LineReader("preamble reply")

    def feed(self, data: bytes) -> PreambleAccepted | PreambleRefused | None:
        """The reply once its line is complete (None until then)."""
        got = self._reader.feed(data)
        if got is None:
            return None
        line, rest = got
        if line == _OK:
            return PreambleAccepted(rest=rest)
        if line.startswith(_ERROR):
            return PreambleRefused(message=line[len(_ERROR) :].decode("utf-8", "replace"))
        raise self._reader.fail(f"unexpected preamble reply {line[:40]!r}")
