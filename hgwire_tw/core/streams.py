"""Streams and their content encodings (wire-protocol.md §2.5).

A stream is a sequence of frames sharing one stream id. Its content encoding is a
compression *context* that lives as long as the stream, across every response written on
it: a later response back-references bytes of an earlier one, which is why the encoder is
flushed (zlib ``Z_SYNC_FLUSH``, zstd ``FLUSH_BLOCK``) at the end of each response but
never finished.

This module owns the codecs only. Which frames carry which bytes, stream-begin and the
stream-settings frame are :mod:`hgwire_tw.core.streamwriter`'s business.

Decoding is bounded: a single frame may not decompress to more than
``max_frame_output`` bytes, and zstd windows above 8 MiB are refused, so a compression
bomb raises :class:`EncodingError` instead of exhausting memory.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import IO, Final, Protocol, cast

import zstandard

from hgwire_tw.core.errors import EncodingError, LocalProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_OUTPUT",
    "ENCODINGS",
    "IDENTITY",
    "ZLIB",
    "ZSTD_8MB",
    "ZSTD_MAX_WINDOW",
    "InputStream",
    "OutputStream",
    "negotiate",
]

ZSTD_8MB: Final = b"zstd-8mb"
ZLIB: Final = b"zlib"
IDENTITY: Final = b"identity"
#: Every encoding we implement, in the server's order of preference.
ENCODINGS: Final[tuple[bytes, ...]] = (ZSTD_8MB, ZLIB, IDENTITY)
#: Largest zstd window a decoder accepts (the "8mb" in the profile name).
ZSTD_MAX_WINDOW: Final = 8 * 1024 * 1024
#: Default bound on what one frame's payload may decode to.
DEFAULT_MAX_FRAME_OUTPUT: Final = 16 * 1024 * 1024
_ZSTD_LEVEL: Final = 3


def negotiate(ours: Iterable[bytes], theirs: Iterable[bytes]) -> bytes:
    """The first of *our* encodings that the peer also offered.

    The server's preference wins over the client's (that is what real hg does). Raises
    :class:`EncodingError` when there is no encoding in common.
    """
    offered = set(theirs)
    for name in ours:
        if name in offered:
            return name
    raise EncodingError(
        "no content encoding in common (offered: "
        + ", ".join(sorted(n.decode("ascii", "replace") for n in offered))
        + ")"
    )


class _Encoder(Protocol):
    def encode(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _IdentityEncoder:
    __slots__ = ()

    def encode(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _ZlibEncoder:
    __slots__ = ("_obj",)

    def __init__(self) -> None:
        self._obj = zlib.compressobj()

    def encode(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush(zlib.Z_SYNC_FLUSH)


class _ZstdEncoder:
    __slots__ = ("_obj",)

    def __init__(self) -> None:
        self._obj = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compressobj()

    def encode(self, data: bytes) -> bytes:
        out: bytes = self._obj.compress(data)
        return out

    def flush(self) -> bytes:
        out: bytes = self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return out


def _make_encoder(encoding: bytes) -> _Encoder:
    if encoding == IDENTITY:
        return _IdentityEncoder()
    if encoding == ZLIB:
        return _ZlibEncoder()
    if encoding == ZSTD_8MB:
        return _ZstdEncoder()
    raise LocalProtocolError(f"unknown content encoding {encoding!r}")


class OutputStream:
    """One outgoing stream's encoder context."""

    __slots__ = ("_encoder", "encoding", "stream_id")

    def __init__(self, stream_id: int, encoding: bytes = IDENTITY) -> None:
        self.stream_id = stream_id
        self.encoding = encoding
        self._encoder = _make_encoder(encoding)

    def encode(self, data: bytes) -> bytes:
        """Feed ``data`` to the context; returns what the encoder emits now (maybe empty)."""
        return self._encoder.encode(data)

    def flush(self) -> bytes:
        """End of a response: everything fed so far, decodable; the context stays open."""
        return self._encoder.flush()


class _Decoder(Protocol):
    def decode(self, data: bytes) -> bytes: ...


class _IdentityDecoder:
    __slots__ = ()

    def decode(self, data: bytes) -> bytes:
        return data


class _ZlibDecoder:
    __slots__ = ("_limit", "_obj")

    def __init__(self, limit: int) -> None:
        self._obj = zlib.decompressobj()
        self._limit = limit

    def decode(self, data: bytes) -> bytes:
        try:
            # One byte over the limit is enough to tell a bomb from a full frame.
            out = self._obj.decompress(data, self._limit + 1)
        except zlib.error as exc:
            raise EncodingError(f"corrupt zlib stream: {exc}") from exc
        if len(out) > self._limit or self._obj.unconsumed_tail:
            raise EncodingError(f"zlib frame decodes to more than {self._limit} bytes")
        if self._obj.eof and self._obj.unused_data:
            raise EncodingError("data after the end of the zlib stream")
        return out


class _BoundedSink:
    """Collects zstd output, raising as soon as it exceeds the bound."""

    __slots__ = ("chunks", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise EncodingError(f"zstd frame decodes to more than {self.limit} bytes")
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks = []
        self.size = 0
        return out


class _ZstdDecoder:
    __slots__ = ("_sink", "_writer")

    def __init__(self, limit: int) -> None:
        # python-zstandard's decompressobj has no output bound, so decode through a
        # stream writer whose sink raises past the limit. Its output buffer is one byte
        # larger than the limit: the writer only drains output it has room for, so a
        # smaller buffer could leave decoded bytes stuck inside zstd at the end of a
        # frame, while this size means "buffer full" already is "over the limit".
        self._sink = _BoundedSink(limit)
        decompressor = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        self._writer = decompressor.stream_writer(
            # The writer only ever calls ``write`` on its sink.
            cast("IO[bytes]", self._sink),
            write_size=limit + 1,
            write_return_read=True,
            closefd=False,
        )

    def decode(self, data: bytes) -> bytes:
        try:
            self._writer.write(data)
        except EncodingError:
            raise
        except zstandard.ZstdError as exc:
            raise EncodingError(f"corrupt zstd stream: {exc}") from exc
        return self._sink.take()


class InputStream:
    """One incoming stream: its encoding (identity until told) and decoder context."""

    __slots__ = ("_decoder", "_max_frame_output", "encoding", "stream_id")

    def __init__(self, stream_id: int, max_frame_output: int = DEFAULT_MAX_FRAME_OUTPUT) -> None:
        self.stream_id = stream_id
        self._max_frame_output = max_frame_output
        self.encoding = IDENTITY
        self._decoder: _Decoder = _IdentityDecoder()

    def set_encoding(self, name: bytes) -> None:
        """Switch to ``name`` (from a stream-settings frame); unknown → :class:`EncodingError`."""
        if name == IDENTITY:
            decoder: _Decoder = _IdentityDecoder()
        elif name == ZLIB:
            decoder = _ZlibDecoder(self._max_frame_output)
        elif name == ZSTD_8MB:
            decoder = _ZstdDecoder(self._max_frame_output)
        else:
            raise EncodingError(f"unsupported stream encoding {name!r}")
        self.encoding = name
        self._decoder = decoder

    def decode(self, payload: bytes) -> bytes:
        """Decode one ENCODED frame's payload (bounded by ``max_frame_output``)."""
        return self._decoder.decode(payload)
