"""A tiny frame DSL for tests: build frames by name, feed bytes in arbitrary splits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hgwire_tw.core import cbor
from hgwire_tw.core.frames import Frame, FrameType, StreamFlag, encode_frame
from hgwire_tw.core.reactor import SendFrames

__all__ = ["f", "frames_of", "join", "request_frame", "settings_frame", "splits"]


def f(
    rid: int,
    sid: int,
    sflags: int,
    kind: FrameType,
    flags: int,
    payload: bytes | object = b"",
) -> Frame:
    """One frame; a non-bytes payload is CBOR-encoded first."""
    if not isinstance(payload, bytes):
        payload = cbor.dumps(payload)
    return Frame(
        request_id=rid,
        stream_id=sid,
        stream_flags=StreamFlag(sflags),
        type=kind,
        flags=flags,
        payload=payload,
    )


def settings_frame(encodings: Sequence[bytes] = (b"identity",), rid: int = 1) -> Frame:
    """The client's sender-protocol-settings frame, first on stream 1."""
    return f(
        rid, 1, 1, FrameType.SENDER_PROTOCOL_SETTINGS, 2, {b"contentencodings": list(encodings)}
    )


def request_frame(
    rid: int,
    name: bytes,
    args: dict[bytes, object] | None = None,
    *,
    flags: int = 1,
    sflags: int = 0,
    sid: int = 1,
) -> Frame:
    """A one-frame command request."""
    body: dict[bytes, object] = {b"name": name}
    if args:
        body[b"args"] = args
    return f(rid, sid, sflags, FrameType.COMMAND_REQUEST, flags, body)


def join(frames: Iterable[Frame]) -> bytes:
    """Wire bytes of ``frames``."""
    return b"".join(encode_frame(fr) for fr in frames)


def frames_of(actions: Iterable[object]) -> list[Frame]:
    """The frames of every SendFrames among ``actions``."""
    out: list[Frame] = []
    for action in actions:
        if isinstance(action, SendFrames):
            out.extend(action.frames)
    return out


def splits(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given (sorted, deduplicated) offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = []
    last = 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces
