"""Frames of Mercurial's frame-based protocol ("hgrpc", wire protocol v2).

This module owns the 8-byte frame header and nothing above it: it knows frame types and
flags, writes frames, and cuts a byte stream into frames. Which frame may arrive when is
the reactor's business (``reactor.py``).

Header layout (wire-protocol.md §2.1)::

    0..2  payload length, unsigned 24-bit little-endian
    3..4  request id, uint16 little-endian
    5     stream id
    6     stream flags (StreamFlag)
    7     frame type << 4 | frame flags

Payloads are capped at :data:`DEFAULT_MAX_FRAME_SIZE` (32768) by default: Mercurial's
own parser computes the length as ``b0 + 256*b1 + 16384*b2`` and so misreads every
payload of 65536 bytes or more, and real hg never emits more than 32768.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from hgwire_tw.core.errors import FrameError, LocalProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_HEADER_SIZE",
    "FRAMING_MEDIA_TYPE",
    "HTTP_V2_API",
    "CommandDataFlag",
    "CommandRequestFlag",
    "CommandResponseFlag",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "NoFlag",
    "SettingsFlag",
    "StreamFlag",
    "encode_frame",
    "encode_frames",
    "flags_for",
]

#: Largest payload real hg emits, and our default limit both ways.
DEFAULT_MAX_FRAME_SIZE: Final = 32768
#: HTTP media type of a frame stream (request and response bodies).
FRAMING_MEDIA_TYPE: Final = b"application/mercurial-exp-framing-0006"
#: Name of the HTTP v2 API under ``/api/``.
HTTP_V2_API: Final = b"exp-http-v2-0003"
#: Size of the fixed frame header.
FRAME_HEADER_SIZE: Final = 8

_MAX_PAYLOAD_FIELD: Final = 0xFFFFFF
_HEADER: Final = struct.Struct("<HBBB")  # request id, stream id, stream flags, type|flags


class FrameType(enum.IntEnum):
    """Frame type, the high nibble of header byte 7."""

    COMMAND_REQUEST = 0x1
    COMMAND_DATA = 0x2
    COMMAND_RESPONSE = 0x3
    ERROR_RESPONSE = 0x5
    #: Human output side channel. A real 6.0.3 client crashes on it: never send it.
    TEXT_OUTPUT = 0x6
    #: Progress side channel. A real 6.0.3 client crashes on it: never send it.
    PROGRESS = 0x7
    SENDER_PROTOCOL_SETTINGS = 0x8
    STREAM_SETTINGS = 0x9


class CommandRequestFlag(enum.IntFlag):
    """Flags of a command-request frame."""

    NEW = 0x1
    CONTINUATION = 0x2
    #: More command-request frames of this request follow.
    MORE = 0x4
    #: Command-data frames follow; set on every request frame of the request.
    HAVE_DATA = 0x8


class CommandDataFlag(enum.IntFlag):
    """Flags of a command-data frame."""

    CONTINUATION = 0x1
    EOS = 0x2


class CommandResponseFlag(enum.IntFlag):
    """Flags of a command-response frame (exactly one is set)."""

    CONTINUATION = 0x1
    EOS = 0x2


class SettingsFlag(enum.IntFlag):
    """Flags of sender-protocol-settings and stream-settings frames (exactly one is set)."""

    CONTINUATION = 0x1
    EOS = 0x2


class NoFlag(enum.IntFlag):
    """Frame types that define no flags (error-response, text-output, progress)."""

    NONE = 0


class StreamFlag(enum.IntFlag):
    """Stream flags, header byte 6."""

    NONE = 0
    #: First frame of a stream; opens it.
    BEGIN = 0x1
    #: Last frame of a stream. Real hg never sends it.
    END = 0x2
    #: The payload went through the stream's content encoder.
    ENCODED = 0x4


_FLAG_TYPES: Final[dict[FrameType, type[enum.IntFlag]]] = {
    FrameType.COMMAND_REQUEST: CommandRequestFlag,
    FrameType.COMMAND_DATA: CommandDataFlag,
    FrameType.COMMAND_RESPONSE: CommandResponseFlag,
    FrameType.ERROR_RESPONSE: NoFlag,
    FrameType.TEXT_OUTPUT: NoFlag,
    FrameType.PROGRESS: NoFlag,
    FrameType.SENDER_PROTOCOL_SETTINGS: SettingsFlag,
    FrameType.STREAM_SETTINGS: SettingsFlag,
}


def flags_for(frame_type: FrameType, value: int) -> enum.IntFlag:
    """``value`` as the flag enum of ``frame_type`` (unknown bits are kept)."""
    return _FLAG_TYPES[frame_type](value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One frame. ``flags`` holds the flag enum of ``type`` (an ``int`` subclass)."""

    request_id: int
    stream_id: int
    stream_flags: StreamFlag
    type: FrameType
    flags: int
    payload: bytes

    def __repr__(self) -> str:
        shown = self.payload if len(self.payload) <= 40 else self.payload[:40] + b"..."
        return (
            f"Frame(request_id={self.request_id}, stream_id={self.stream_id}, "
            f"stream_flags={self.stream_flags!r}, type={self.type.name}, "
            f"flags={self.flags!r}, payload={shown!r} [{len(self.payload)}])"
        )


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of ``frame``; :class:`LocalProtocolError` if a field is out of range."""
    payload = frame.payload
    if len(payload) > _MAX_PAYLOAD_FIELD:
        raise LocalProtocolError(f"frame payload of {len(payload)} bytes cannot be encoded")
    if not 0 <= frame.request_id <= 0xFFFF:
        raise LocalProtocolError(f"request id {frame.request_id} out of range")
    if not 0 <= frame.stream_id <= 0xFF:
        raise LocalProtocolError(f"stream id {frame.stream_id} out of range")
    if not 0 <= frame.stream_flags <= 0xFF or not 0 <= frame.flags <= 0xF:
        raise LocalProtocolError("frame flags out of range")
    return b"".join(
        (
            len(payload).to_bytes(3, "little"),
            _HEADER.pack(
                frame.request_id,
                frame.stream_id,
                int(frame.stream_flags),
                (int(frame.type) << 4) | int(frame.flags),
            ),
            payload,
        )
    )


def encode_frames(frames: list[Frame] | tuple[Frame, ...]) -> bytes:
    """The wire bytes of several frames, back to back."""
    return b"".join([encode_frame(frame) for frame in frames])


class FrameDecoder:
    """Cut a byte stream into frames, incrementally.

    Any split of the input gives the same frames. At most one partial frame is held, so
    buffering is bounded by ``max_buffer`` (by default header + ``max_payload``). A
    header announcing a payload larger than ``max_payload``, or a frame type that does
    not exist, raises :class:`FrameError`; the decoder is then unusable.
    """

    __slots__ = ("_buf", "_failed", "_max_buffer", "_max_payload")

    def __init__(
        self, max_payload: int = DEFAULT_MAX_FRAME_SIZE, max_buffer: int | None = None
    ) -> None:
        if not 0 <= max_payload <= _MAX_PAYLOAD_FIELD:
            raise ValueError("max_payload out of range")
        if max_buffer is None:
            max_buffer = FRAME_HEADER_SIZE + max_payload
        if max_buffer < FRAME_HEADER_SIZE + max_payload:
            raise ValueError("max_buffer must hold at least one whole frame")
        self._max_payload = max_payload
        self._max_buffer = max_buffer
        self._buf = bytearray()
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame currently held."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return every frame it completes, in order."""
        if self._failed:
            raise FrameError("frame decoder already failed")
        if self._buf:
            self._buf += data
            source: bytes | bytearray = self._buf
        else:
            source = data
        frames: list[Frame] = []
        pos = 0
        end = len(source)
        max_payload = self._max_payload
        unpack = _HEADER.unpack_from
        try:
            while end - pos >= FRAME_HEADER_SIZE:
                length = source[pos] | (source[pos + 1] << 8) | (source[pos + 2] << 16)
                if length > max_payload:
                    raise FrameError(
                        f"frame payload of {length} bytes exceeds the {max_payload}-byte limit"
                    )
                stop = pos + FRAME_HEADER_SIZE + length
                if stop > end:
                    break
                request_id, stream_id, stream_flags, type_flags = unpack(source, pos + 3)
                try:
                    frame_type = FrameType(type_flags >> 4)
                except ValueError:
                    raise FrameError(f"unknown frame type {type_flags >> 4}") from None
                frames.append(
                    Frame(
                        request_id=request_id,
                        stream_id=stream_id,
                        stream_flags=StreamFlag(stream_flags),
                        type=frame_type,
                        flags=_FLAG_TYPES[frame_type](type_flags & 0xF),
                        payload=bytes(source[pos + FRAME_HEADER_SIZE : stop]),
                    )
                )
                pos = stop
        except FrameError:
            self._failed = True
            self._buf = bytearray()
            raise
        if source is self._buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf = bytearray(source[pos:])
        if len(self._buf) > self._max_buffer:  # pragma: no cover - guarded by max_payload
            self._failed = True
            raise FrameError("frame buffer limit exceeded")
        return frames

    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (the input may end here)."""
        return not self._buf
