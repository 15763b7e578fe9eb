"""The repository preamble of the stream transports (``hgwire_tw.core.preamble``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hgwire_tw.core.errors import LocalProtocolError, RemoteProtocolError
from hgwire_tw.core.preamble import (
    MAX_PREAMBLE,
    PreambleAccepted,
    PreambleParser,
    PreambleRefused,
    PreambleReplyParser,
    PreambleRequest,
    encode_error,
    encode_ok,
    encode_request,
)

names = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=100)


@given(name=names, rest=st.binary(max_size=50), cut=st.integers(min_value=0, max_value=400))
def test_request_round_trip_any_split(name: str, rest: bytes, cut: int) -> None:
    """Any name survives the request line, split anywhere, with frames right behind it."""
    data = encode_request(name) + rest
    cut = min(cut, len(data))
    parser = PreambleParser()
    first = parser.feed(data[:cut])
    if first is None:
        first = parser.feed(data[cut:])
        assert first == PreambleRequest(name=name, rest=rest)
    else:
        assert first.name == name and first.rest + data[cut:] == rest


def test_request_refusals() -> None:
    """Wrong magic, no space, control characters, bad UTF-8 and long lines are refused."""
    for bad in (b"hgwire-v3 x\n", b"hgwire-v2\n", b"hgwire-v2 a\tb\n", b"hgwire-v2 \xff\n"):
        with pytest.raises(RemoteProtocolError):
            PreambleParser().feed(bad)
    parser = PreambleParser()
    with pytest.raises(RemoteProtocolError):
        parser.feed(b"hgwire-v2 " + b"x" * MAX_PREAMBLE)
    with pytest.raises(RemoteProtocolError):
        parser.feed(b"\n")  # stays broken
    assert PreambleParser().feed(b"hgwire-v2 " + b"x" * (MAX_PREAMBLE - 11) + b"\n") is not None
    with pytest.raises(LocalProtocolError):
        encode_request("a\nb")


def test_replies() -> None:
    """ok carries the first frame bytes; error carries its message; others are refused."""
    assert PreambleReplyParser().feed(encode_ok() + b"xy") == PreambleAccepted(rest=b"xy")
    parser = PreambleReplyParser()
    assert parser.feed(b"err") is None
    assert parser.feed(b"or no such repository\n") == PreambleRefused(message="no such repository")
    with pytest.raises(RemoteProtocolError):
        PreambleReplyParser().feed(b"maybe\n")
    line = encode_error("bad\nthing " + "é" * 2000)
    assert len(line) <= MAX_PREAMBLE and line.count(b"\n") == 1
    refused = PreambleReplyParser().feed(line)
    assert isinstance(refused, PreambleRefused) and refused.message.startswith("bad thing é")
