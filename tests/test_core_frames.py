"""Frame codec: header layout, reference vectors, incremental decoding and its bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hgwire_tw.core.errors import FrameError, LocalProtocolError
from hgwire_tw.core.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    FRAMING_MEDIA_TYPE,
    HTTP_V2_API,
    CommandRequestFlag,
    CommandResponseFlag,
    Frame,
    FrameDecoder,
    FrameType,
    SettingsFlag,
    StreamFlag,
    encode_frame,
)
from tests import strategies
from tests.framedsl import f, join, splits

# wire-protocol.md §2.8, server side with identity encoding (node = 20 bytes 0x00..0x13).
NODE = bytes(range(20))
SERVER_IDENTITY = (
    bytes.fromhex("090000 0100 02 01 92")
    + b"\x48identity"
    + bytes.fromhex("0b0000 0100 02 04 31 a1 46")
    + b"status"
    + b"\x42ok"
    + bytes.fromhex("160000 0100 02 04 31 81 54")
    + NODE
    + bytes.fromhex("000000 0100 02 00 32")
)


def test_constants() -> None:
    """The constants match the reference."""
    assert DEFAULT_MAX_FRAME_SIZE == 32768
    assert FRAMING_MEDIA_TYPE == b"application/mercurial-exp-framing-0006"
    assert HTTP_V2_API == b"exp-http-v2-0003"


def test_worked_example_decodes() -> None:
    """The §2.8 server body decodes into the four documented frames."""
    frames = FrameDecoder().feed(SERVER_IDENTITY)
    assert [(fr.type, fr.flags, fr.stream_flags) for fr in frames] == [
        (FrameType.STREAM_SETTINGS, SettingsFlag.EOS, StreamFlag.BEGIN),
        (FrameType.COMMAND_RESPONSE, CommandResponseFlag.CONTINUATION, StreamFlag.ENCODED),
        (FrameType.COMMAND_RESPONSE, CommandResponseFlag.CONTINUATION, StreamFlag.ENCODED),
        (FrameType.COMMAND_RESPONSE, CommandResponseFlag.EOS, StreamFlag.NONE),
    ]
    assert all(fr.request_id == 1 and fr.stream_id == 2 for fr in frames)
    assert frames[0].payload == b"\x48identity"
    assert join(frames) == SERVER_IDENTITY


def test_client_request_vector() -> None:
    """The §2.8 command-request frame encodes byte for byte."""
    frame = f(1, 1, 0, FrameType.COMMAND_REQUEST, CommandRequestFlag.NEW, {b"name": b"heads"})
    assert encode_frame(frame) == bytes.fromhex("0c0000 0100 01 00 11 a1 44") + b"name\x45heads"


def test_decoded_flags_are_enums() -> None:
    """Decoded frames carry the per-type flag enum, not bare ints."""
    (frame,) = FrameDecoder().feed(encode_frame(f(1, 1, 1, FrameType.COMMAND_REQUEST, 0b1101)))
    assert isinstance(frame.flags, CommandRequestFlag)
    assert (
        frame.flags
        == CommandRequestFlag.NEW | CommandRequestFlag.MORE | CommandRequestFlag.HAVE_DATA
    )
    assert isinstance(frame.stream_flags, StreamFlag)


def test_length_is_24_bit_little_endian() -> None:
    """A 32768-byte payload encodes its length as 00 80 00."""
    data = encode_frame(f(1, 2, 0, FrameType.COMMAND_RESPONSE, 1, b"x" * 32768))
    assert data[:3] == b"\x00\x80\x00"
    assert FrameDecoder().feed(data)[0].payload == b"x" * 32768


def test_oversize_payload_refused() -> None:
    """A header announcing more than max_payload raises FrameError without buffering it."""
    decoder = FrameDecoder(max_payload=100)
    header = (101).to_bytes(3, "little") + bytes.fromhex("0100 01 01 11")
    with pytest.raises(FrameError):
        decoder.feed(header)
    with pytest.raises(FrameError):
        decoder.feed(b"")


def test_unknown_frame_type_refused() -> None:
    """Frame type 4 (unused) and 0 are FrameErrors."""
    for kind in (0, 4, 10, 15):
        with pytest.raises(FrameError):
            FrameDecoder().feed(bytes.fromhex("000000 0100 01 01") + bytes([kind << 4]))


def test_encode_range_checks() -> None:
    """Out-of-range header fields are local errors."""
    with pytest.raises(LocalProtocolError):
        encode_frame(f(70000, 1, 0, FrameType.COMMAND_DATA, 0))
    with pytest.raises(LocalProtocolError):
        encode_frame(f(1, 256, 0, FrameType.COMMAND_DATA, 0))
    with pytest.raises(LocalProtocolError):
        encode_frame(f(1, 1, 0, FrameType.COMMAND_DATA, 16))


def test_buffer_is_bounded() -> None:
    """At most one partial frame is held, however the bytes arrive."""
    decoder = FrameDecoder(max_payload=1000)
    frame = encode_frame(f(1, 1, 1, FrameType.COMMAND_DATA, 2, b"y" * 1000))
    for _ in range(50):
        decoder.feed(frame[:700])
        assert decoder.buffered <= 1008
        assert len(decoder.feed(frame[700:])) == 1
    assert decoder.at_boundary()


@settings(max_examples=150, deadline=None)
@given(st.lists(strategies.frames, max_size=6), st.lists(st.integers(0, 5000), max_size=8))
def test_any_split_gives_same_frames(frames: list[Frame], cuts: list[int]) -> None:
    """Frames round-trip, and every split of the byte stream decodes to the same frames."""
    data = join(frames)
    decoder = FrameDecoder()
    got: list[Frame] = []
    for piece in splits(data, cuts):
        got.extend(decoder.feed(piece))
    assert got == frames
    assert decoder.at_boundary()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_garbage_only_frame_errors(data: bytes, step: int) -> None:
    """Random bytes produce frames or FrameError, never another exception."""
    decoder = FrameDecoder(max_payload=256)
    try:
        for i in range(0, len(data), step):
            decoder.feed(data[i : i + step])
    except FrameError:
        pass
