"""The frames of one output stream: its encoder context, stream-begin and stream-settings.

Everything that reads or changes an output stream's state lives in :class:`StreamWriter`,
so that the reactor can let a stream's CBOR encoding and compression run on another
thread: an operation (:data:`OutputOp`) applied to a writer touches that writer only.
The caller guarantees that at most one operation runs on a writer at a time, in the
order the reactor produced them (see "Encoding jobs" in ``reactor.py``).

Output shape (wire-protocol.md §2.5): the stream's first frame carries stream-begin;
a stream-settings frame naming the encoding precedes its first encoded frame; encoded
bytes buffered in the compressor for one request are flushed under that request's id
before another request's bytes go in (or unencoded bytes overtake them), so every
frame decodes to bytes of its own request only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from hgwire_tw.core import cbor
from hgwire_tw.core.frames import (
    CommandResponseFlag,
    Frame,
    FrameType,
    SettingsFlag,
    StreamFlag,
)
from hgwire_tw.core.streams import OutputStream

__all__ = [
    "EncodeObjects",
    "EncodeRaw",
    "EndResponse",
    "OutputOp",
    "PlainFrame",
    "StreamWriter",
]

STATUS_OK: Final = cbor.dumps({b"status": b"ok"})


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodeObjects:
    """CBOR-encode ``objects`` (``EncodedCBOR`` passes through) and feed the encoder,
    after ``{status: ok}`` when ``status``."""

    request_id: int
    objects: tuple[object, ...]
    status: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodeRaw:
    """Send pre-encoded CBOR, through the encoder or (``encode=False``) in plain frames;
    ``{status: ok}`` first when ``status`` (encoded the same way)."""

    request_id: int
    data: bytes
    status: bool
    encode: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class EndResponse:
    """Flush the request's bytes out of the encoder and send eos (``{status: ok}``
    first when the request had no output at all)."""

    request_id: int
    status: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PlainFrame:
    """One frame that bypasses the encoder (an error status, error-response or
    redirect). ``flush_first``: flush what the compressor holds before it."""

    request_id: int
    type: FrameType
    flags: int
    payload: bytes
    flush_first: bool


OutputOp: TypeAlias = EncodeObjects | EncodeRaw | EndResponse | PlainFrame


class StreamWriter:
    """One even output stream: the encoder context plus what has been sent on it.

    The encoder is made by :meth:`open` once the peer's encodings are known (the
    reactor calls it before the first operation). ``pending`` is the request whose
    bytes sit in the compressor, if any.
    """

    __slots__ = ("_max_frame_size", "begun", "codec", "pending", "settings_sent", "stream_id")

    def __init__(self, stream_id: int, max_frame_size: int) -> None:
        self.stream_id = stream_id
        self._max_frame_size = max_frame_size
        self.codec: OutputStream | None = None
        self.begun = False
        self.settings_sent = False
        self.pending: int | None = None

    def open(self, encoding: bytes) -> None:
        """Create the encoder context for ``encoding`` unless it exists already."""
        if self.codec is None:
            self.codec = OutputStream(self.stream_id, encoding)

    def apply(self, op: OutputOp) -> list[Frame]:
        """Carry out ``op`` on this stream; returns the frames to send, in order."""
        out: list[Frame] = []
        match op:
            case EncodeObjects():
                # Encode before touching the stream: objects CBOR refuses leave it intact.
                data = cbor.dumps_sequence(op.objects) if op.objects else b""
                if op.status:
                    self._encoded(op.request_id, STATUS_OK, out)
                if data:
                    self._encoded(op.request_id, data, out)
            case EncodeRaw():
                send = self._encoded if op.encode else self._plain
                if op.status:
                    send(op.request_id, STATUS_OK, out)
                if op.data:
                    send(op.request_id, op.data, out)
            case EndResponse():
                self._end(op, out)
            case PlainFrame():
                if op.flush_first:
                    self._flush_pending(out)
                out.append(self._frame(op.request_id, op.type, op.flags, op.payload))
        return out

    # ---- helpers

    def _codec(self) -> OutputStream:
        assert self.codec is not None, "StreamWriter.open() was not called"
        return self.codec

    def _encoded(self, request_id: int, data: bytes, out: list[Frame]) -> None:
        if self.pending is not None and self.pending != request_id:
            self._flush_pending(out)
        self.pending = request_id
        encoded = self._codec().encode(data)
        if encoded:
            self._encoded_frames(request_id, encoded, CommandResponseFlag.CONTINUATION, out)

    def _plain(self, request_id: int, data: bytes, out: list[Frame]) -> None:
        # Unencoded bytes must not overtake bytes still inside the compressor.
        self._flush_pending(out)
        cont = CommandResponseFlag.CONTINUATION
        for chunk in self._chunks(data):
            out.append(self._frame(request_id, FrameType.COMMAND_RESPONSE, cont, chunk))

    def _end(self, op: EndResponse, out: list[Frame]) -> None:
        rid = op.request_id
        if op.status:
            self._encoded(rid, STATUS_OK, out)
        if self.pending is not None and self.pending != rid:
            self._flush_pending(out)
        tail = self._codec().flush() if self.pending == rid else b""
        self.pending = None
        eos = CommandResponseFlag.EOS
        if tail:
            self._encoded_frames(rid, tail, eos, out)
        else:
            out.append(self._frame(rid, FrameType.COMMAND_RESPONSE, eos, b""))

    def _flush_pending(self, out: list[Frame]) -> None:
        owner = self.pending
        if owner is None:
            return
        self.pending = None
        flushed = self._codec().flush()
        if flushed:
            self._encoded_frames(owner, flushed, CommandResponseFlag.CONTINUATION, out)

    def _encoded_frames(
        self, request_id: int, data: bytes, last_flags: CommandResponseFlag, out: list[Frame]
    ) -> None:
        if not self.settings_sent:
            self.settings_sent = True
            name = cbor.dumps(self._codec().encoding)
            out.append(self._frame(request_id, FrameType.STREAM_SETTINGS, SettingsFlag.EOS, name))
        chunks = self._chunks(data)
        cont = CommandResponseFlag.CONTINUATION
        for index, chunk in enumerate(chunks):
            flags = last_flags if index == len(chunks) - 1 else cont
            out.append(self._frame(request_id, FrameType.COMMAND_RESPONSE, flags, chunk, True))

    def _chunks(self, data: bytes) -> list[bytes]:
        size = self._max_frame_size
        if len(data) <= size:
            return [data]
        return [data[i : i + size] for i in range(0, len(data), size)]

    def _frame(
        self, request_id: int, kind: FrameType, flags: int, payload: bytes, encoded: bool = False
    ) -> Frame:
        stream_flags = StreamFlag.ENCODED if encoded else StreamFlag.NONE
        if not self.begun:
            self.begun = True
            stream_flags |= StreamFlag.BEGIN
        return Frame(
            request_id=request_id,
            stream_id=self.stream_id,
            stream_flags=stream_flags,
            type=kind,
            flags=flags,
            payload=payload,
        )
