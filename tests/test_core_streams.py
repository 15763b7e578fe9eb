"""Stream encodings: negotiation, reference shapes, shared contexts, bounded decoding."""

from __future__ import annotations

import os
import zlib

import pytest
import zstandard

from hgwire_tw.core.errors import EncodingError, LocalProtocolError
from hgwire_tw.core.streams import ENCODINGS, InputStream, OutputStream, negotiate


def test_server_preference_wins() -> None:
    """The server takes the first of ITS encodings that the client offered."""
    assert ENCODINGS == (b"zstd-8mb", b"zlib", b"identity")
    assert negotiate(ENCODINGS, [b"identity", b"zlib", b"zstd-8mb"]) == b"zstd-8mb"
    assert negotiate(ENCODINGS, [b"identity", b"zlib"]) == b"zlib"
    assert negotiate(ENCODINGS, [b"bogus", b"identity"]) == b"identity"
    with pytest.raises(EncodingError):
        negotiate(ENCODINGS, [b"bogus"])


def test_zlib_shape() -> None:
    """zlib: first output is the 78 9c header; each response ends with a sync flush."""
    out = OutputStream(2, b"zlib")
    first = out.encode(b"\xa1\x46status\x42ok")
    assert first == b"\x78\x9c"
    tail = out.flush()
    assert tail.endswith(b"\x00\x00\xff\xff")
    second = out.encode(b"more") + out.flush()
    assert not second.startswith(b"\x78\x9c")  # same context: no new header
    decoder = zlib.decompressobj()
    assert decoder.decompress(first + tail + second) == b"\xa1\x46status\x42okmore"


def test_zstd_shape() -> None:
    """zstd-8mb: small input is buffered; the block flush starts with the zstd magic."""
    out = OutputStream(2, b"zstd-8mb")
    assert out.encode(b"hello") == b""
    flushed = out.flush()
    assert flushed[:4] == b"\x28\xb5\x2f\xfd"
    decoder = zstandard.ZstdDecompressor().decompressobj()
    assert decoder.decompress(flushed) == b"hello"


def test_identity_pass_through() -> None:
    """identity returns its input and flushes nothing."""
    out = OutputStream(2, b"identity")
    assert out.encode(b"abc") == b"abc"
    assert out.flush() == b""


def test_unknown_encoders_refused() -> None:
    """Unknown names: local error when encoding, EncodingError when a peer asks to decode."""
    with pytest.raises(LocalProtocolError):
        OutputStream(2, b"bz2")
    with pytest.raises(EncodingError):
        InputStream(2).set_encoding(b"bz2")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_context_spans_responses(encoding: bytes) -> None:
    """One context carries many responses; the repeat compresses far better (not identity)."""
    out = OutputStream(2, encoding)
    inp = InputStream(2)
    inp.set_encoding(encoding)
    body = os.urandom(20000)
    sizes = []
    for _ in range(3):
        wire = out.encode(body) + out.flush()
        sizes.append(len(wire))
        assert inp.decode(wire) == body
    if encoding != b"identity":
        assert sizes[1] < sizes[0] // 4


@pytest.mark.parametrize("encoding", [b"zlib", b"zstd-8mb"])
def test_compression_bomb_refused(encoding: bytes) -> None:
    """A frame that would decode past max_frame_output raises EncodingError."""
    out = OutputStream(2, encoding)
    bomb = out.encode(b"\0" * (64 << 20)) + out.flush()
    assert len(bomb) < 100_000
    inp = InputStream(2, max_frame_output=1 << 20)
    inp.set_encoding(encoding)
    with pytest.raises(EncodingError):
        inp.decode(bomb)


def test_zstd_window_limit() -> None:
    """A zstd frame asking for a window above 8 MiB is refused."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=25)
    big = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = big.compress(os.urandom(1000)) + big.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    inp = InputStream(2)
    inp.set_encoding(b"zstd-8mb")
    with pytest.raises(EncodingError):
        inp.decode(data)


@pytest.mark.parametrize("encoding", [b"zlib", b"zstd-8mb"])
def test_corrupt_input_is_encoding_error(encoding: bytes) -> None:
    """Garbage in an encoded frame raises EncodingError, nothing else."""
    inp = InputStream(2)
    inp.set_encoding(encoding)
    with pytest.raises(EncodingError):
        inp.decode(b"\x12\x34garbage" * 10)
