"""Mercurial-subset CBOR: cache-key vectors, key order, strictness, incremental decoding."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hgwire_tw.core import cbor
from hgwire_tw.core.cbor import CBORSequenceDecoder, EncodedCBOR, IndefiniteChunk
from hgwire_tw.core.errors import CBORError, LocalProtocolError
from tests import strategies
from tests.framedsl import splits

NODE1 = bytes.fromhex("992f4779029a3df8d0666d00bb924f69634e2641")
NODE2 = bytes.fromhex("a988fb43583e871d1ed5750ee074c6d840bbbfc8")


def _state(nodes: list[bytes]) -> dict[bytes, object]:
    return {
        b"globalversion": 1,
        b"localversion": 1,
        b"command": b"manifestdata",
        b"mediatype": b"application/mercurial-exp-framing-0006",
        b"version": b"exp-http-v2-0003",
        b"args": {b"fields": {b"parents"}, b"haveparents": False, b"tree": b"", b"nodes": nodes},
    }


@pytest.mark.parametrize(
    ("nodes", "key"),
    [
        ([NODE1], "47abb8efa5f01b8964d74917793ad2464db0fa2c"),
        ([NODE1, NODE2], "37326a83e9843f15161fce9d1e92d06b795d5e8e"),
        ([b"\xaa" * 20], "2cba2a7d0d1575fea2fe68f597e97a7c2ac2f705"),
    ],
)
def test_cache_key_vectors(nodes: list[bytes], key: str) -> None:
    """wire-protocol.md §7.3: sha1 hex of dumps(state) reproduces Mercurial's keys."""
    assert hashlib.sha1(cbor.dumps(_state(nodes))).hexdigest() == key


def test_cache_key_bytes() -> None:
    """The first §7.3 state encodes to exactly the documented bytes."""
    expected = (
        "a6 4461726773 a4 466669656c6473 d90102 81 47706172656e7473 4b68617665706172656e7473 f4"
        " 456e6f646573 81 54" + NODE1.hex() + " 44747265 65 40 47636f6d6d616e64"
        " 4c6d616e69666573746461746 1 4d676c6f62616c76657273696f6e 01"
        " 4c6c6f63616c76657273696f6e 01 496d65646961747970655826"
    )
    data = cbor.dumps(_state([NODE1]))
    head = bytes.fromhex(expected.replace(" ", ""))
    assert data.startswith(head)
    assert data[len(head) :] == (
        b"application/mercurial-exp-framing-0006" + b"\x47version\x50exp-http-v2-0003"
    )


def test_key_order_is_mercurials_not_length_first() -> None:
    """Bytes keys sort lexicographically (cbor2 canonical would put b'b' before b'aa')."""
    assert cbor.dumps({b"b": 1, b"aa": 2}) == bytes.fromhex("a2 426161 02 4162 01".replace(" ", ""))


def test_mixed_keys_sorted_by_type_name() -> None:
    """Mixed keys sort by (type name, value): bytes before int."""
    assert cbor.dumps({2: 0, b"z": 0, 1: 0}) == bytes.fromhex(
        "a3 417a00 0100 0200".replace(" ", "")
    )


def test_sets_are_tag_258_sorted() -> None:
    """A set is tag 258 around a sorted array, and decodes back to a set."""
    data = cbor.dumps({b"b", b"a"})
    assert data == bytes.fromhex("d90102 82 4161 4162".replace(" ", ""))
    assert cbor.loads(data) == {b"a", b"b"}
    assert cbor.loads(cbor.dumps(frozenset({3, 1}))) == {1, 3}


def test_set_with_lists_decodes_to_tuples() -> None:
    """Lists inside a decoded set become tuples (so the set is hashable)."""
    assert cbor.loads(bytes.fromhex("d9010281820102")) == {(1, 2)}


def test_scalars() -> None:
    """bytes, ints, bools, None, arrays map to the expected major types."""
    assert cbor.dumps(b"") == b"\x40"
    assert cbor.dumps(True) == b"\xf5" and cbor.dumps(False) == b"\xf4"
    assert cbor.dumps(None) == b"\xf6"
    assert cbor.dumps(-1) == b"\x20"
    assert cbor.dumps((1, [2])) == bytes.fromhex("82 01 81 02".replace(" ", ""))
    assert cbor.dumps(2**64 - 1) == b"\x1b" + b"\xff" * 8


@pytest.mark.parametrize("value", ["text", {"k": b"v"}, [1.5], 2**64, object(), {b"k": "v"}])
def test_encoder_refuses_outside_subset(value: object) -> None:
    """str, floats, bignums and unknown types are refused with LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        cbor.dumps(value)


@pytest.mark.parametrize(
    "hexdata",
    [
        "6161",  # text string
        "a16161 01",  # text key
        "f93c00",  # half float
        "fb3ff8000000000000",  # double
        "f7",  # undefined
        "f0",  # simple value
        "9f01ff",  # indefinite array
        "bf4101 01ff",  # indefinite map
        "c0 40",  # tag 0
        "c2 41 01",  # bignum
        "d90102 01",  # tag 258 without array
        "815f4101ff",  # indefinite bytes inside a container
        "1c",  # reserved additional info
        "ff",  # stray break
        "",  # empty
        "0101",  # two values
        "5a00000010",  # truncated
    ],
)
def test_decoder_strict(hexdata: str) -> None:
    """Everything outside Mercurial's subset is a CBORError."""
    with pytest.raises(CBORError):
        cbor.loads(bytes.fromhex(hexdata.replace(" ", "")))


def test_encoded_cbor_spliced_verbatim() -> None:
    """EncodedCBOR inside a structure is written as-is, not as a byte string."""
    raw = EncodedCBOR(cbor.dumps({b"a": 1}))
    assert cbor.dumps([raw, b"x"]) == b"\x82" + bytes(raw) + b"\x41x"
    assert cbor.dumps(raw) == bytes(raw)
    assert cbor.dumps_sequence([raw, 1]) == bytes(raw) + b"\x01"


def test_indefinite_helpers_and_chunks() -> None:
    """Indefinite byte strings stream out chunk by chunk, ending with an empty last chunk."""
    data = (
        cbor.indefinite_bytes_begin()
        + cbor.indefinite_bytes_chunk(b"abc")
        + cbor.indefinite_bytes_chunk(b"x" * 300)
        + cbor.indefinite_bytes_end()
    )
    assert data[:1] == b"\x5f" and data[-1:] == b"\xff"
    assert cbor.loads_sequence(data) == [
        IndefiniteChunk(data=b"abc", is_last=False),
        IndefiniteChunk(data=b"x" * 300, is_last=False),
        IndefiniteChunk(data=b"", is_last=True),
    ]
    assert cbor.loads(data) == b"abc" + b"x" * 300


def test_sequence_decoder_finish() -> None:
    """finish() refuses a partial value or an unterminated indefinite string."""
    decoder = CBORSequenceDecoder()
    assert decoder.feed(b"\x82\x01") == []
    with pytest.raises(CBORError):
        decoder.finish()
    decoder = CBORSequenceDecoder()
    decoder.feed(b"\x5f\x41a")
    with pytest.raises(CBORError):
        decoder.finish()


def test_sequence_decoder_bounded() -> None:
    """A declared byte string larger than max_buffer fails at once; so does a long partial."""
    with pytest.raises(CBORError):
        CBORSequenceDecoder(max_buffer=1000).feed(b"\x5a\x00\x10\x00\x00")
    decoder = CBORSequenceDecoder(max_buffer=1000)
    decoder.feed(b"\x99\x10\x00")  # array of 4096 items
    with pytest.raises(CBORError):
        for _ in range(100):
            decoder.feed(b"\x41x" * 10)


def test_large_value_spanning_feeds_is_linear() -> None:
    """A 4 MiB byte string fed in 32 KiB pieces decodes once, correctly."""
    blob = bytes(range(256)) * 16384
    data = cbor.dumps(blob)
    decoder = CBORSequenceDecoder()
    out: list[object] = []
    for i in range(0, len(data), 32768):
        out.extend(decoder.feed(data[i : i + 32768]))
    assert out == [blob]


def test_deep_nesting_refused() -> None:
    """Hostile nesting depth is a CBORError, not a RecursionError."""
    with pytest.raises(CBORError):
        cbor.loads(b"\x81" * 10000 + b"\x01")


@settings(max_examples=200, deadline=None)
@given(strategies.values)
def test_round_trip(value: object) -> None:
    """loads(dumps(v)) == v, and encoding is deterministic."""
    data = cbor.dumps(value)
    assert cbor.loads(data) == value
    assert cbor.dumps(cbor.loads(data)) == data


@settings(max_examples=150, deadline=None)
@given(st.lists(strategies.values, max_size=6), st.lists(st.integers(0, 2000), max_size=10))
def test_any_split_same_values(values: list[object], cuts: list[int]) -> None:
    """A CBOR sequence decodes to the same values however it is split."""
    data = cbor.dumps_sequence(values)
    decoder = CBORSequenceDecoder()
    got: list[object] = []
    for piece in splits(data, cuts):
        got.extend(decoder.feed(piece))
    decoder.finish()
    assert got == values


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_only_cbor_errors(data: bytes) -> None:
    """Random bytes decode or raise CBORError, never anything else."""
    try:
        cbor.loads_sequence(data)
    except CBORError:
        pass
