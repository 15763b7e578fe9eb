"""What a v1 command run hands back to its transport: small frozen records, nothing else.

A run on a worker thread (``hgwire_tw.v1.runner``) yields these objects, which the pool
delivers to the transport on the reactor thread; the transport formats them for its
wire. ``V1Result`` is a command's own answer. A stream answer is yielded as a
``V1StreamStart`` followed by ``bytes`` pieces of its body. Two records carry what the
command did besides answering, for the SSH session to keep: ``V1RemoteOutput`` (text the
command printed, which the client shows as ``remote:`` lines) and ``V1ProtoCaps`` (the
capabilities the client announced with ``protocaps``, which later commands of the
session depend on).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "V1Bytes",
    "V1LegacyStream",
    "V1OutOfBandError",
    "V1ProtoCaps",
    "V1PushError",
    "V1PushResult",
    "V1RemoteOutput",
    "V1Result",
    "V1Stream",
    "V1StreamStart",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class V1Bytes:
    """A string response (``application/mercurial-0.1``, raw)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class V1Stream:
    """A compressible stream response; ``chunks`` must be read on the worker thread."""

    chunks: Iterator[bytes]
    prefer_uncompressed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class V1LegacyStream:
    """A stream always sent as raw 0.1 (``stream_out``, a bundle2 push reply)."""

    chunks: Iterator[bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class V1PushResult:
    """A bundle1 push outcome: Mercurial's integer result and the captured output."""

    result: int
    output: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class V1PushError:
    """A push refused before it started (e.g. the remote heads changed)."""

    message: bytes
    output: bytes = b""
    #: Refused for the client's bad input (a malformed argument, a corrupt bundle),
    #: which the transport logs; Mercurial's own refusals and logged failures are not.
    bad_input: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class V1OutOfBandError:
    """An error reported outside the command's response format (``application/hg-error``)."""

    message: bytes


V1Result = V1Bytes | V1Stream | V1LegacyStream | V1PushResult | V1PushError | V1OutOfBandError


@dataclass(frozen=True, slots=True, kw_only=True)
class V1StreamStart:
    """First item of a streamed response: how the body that follows is encoded.

    For a legacy stream ``media_type`` is 0.1 and ``engine`` is ``"none"``.
    """

    media_type: bytes
    engine: str
    legacy: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class V1RemoteOutput:
    """What the command printed over SSH (Mercurial returns no output object there):
    the transport sends it on stderr, where the client shows it as ``remote:`` lines."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class V1ProtoCaps:
    """The client's capability tokens as Mercurial's ``protocaps`` command recorded them
    (space-separated): the SSH session passes them to every later call."""

    value: bytes
