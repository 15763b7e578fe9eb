"""Mercurial's subset of CBOR: bytes-only, deterministic, strict.

This module owns every CBOR byte the project writes or reads on the frame protocol.
Mercurial's ``cborutil`` encodes a small, deterministic subset and its decoder refuses
everything else; a peer that sends a text string or a float is talking to the wrong
server, and our output must be byte-identical to Mercurial's so that cache keys
(wire-protocol.md §7.3) match.

Encoding runs on cbor2's C encoder. Only the choices where cbor2 and Mercurial differ are
overridden: maps are written with Mercurial's key order (cbor2's canonical mode sorts
length-first, which is *not* what Mercurial does), sets become tag 258 with sorted
members, and types outside the subset (``str``, floats, bignums, datetimes, ...) are
refused with :class:`LocalProtocolError`.

Decoding is two steps. A small header scanner walks a value's item headers (one step per
CBOR item, never per byte: a byte string's body is skipped by its length) to find where
the value ends and to enforce the subset: no text strings, no floats or ``undefined``, no
indefinite arrays or maps, no tag but 258. Only then does cbor2 turn the validated bytes
into Python objects. The scanner is resumable, so a value spread over many frames costs
one scan, not one per frame.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from hgwire_tw.core.errors import CBORError, LocalProtocolError

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "CBORSequenceDecoder",
    "EncodedCBOR",
    "IndefiniteChunk",
    "byte_string_head",
    "dumps",
    "dumps_sequence",
    "indefinite_bytes_begin",
    "indefinite_bytes_chunk",
    "indefinite_bytes_end",
    "loads",
    "loads_sequence",
    "map_head",
    "uint_head",
]

#: Default bound on the bytes a :class:`CBORSequenceDecoder` holds for one partial value.
DEFAULT_MAX_BUFFER: Final = 64 * 1024 * 1024

#: Deepest container nesting we accept. Mercurial's own objects nest 3-4 levels; the bound
#: keeps a hostile peer from driving cbor2 (or us) into deep recursion.
MAX_DEPTH: Final = 64

_TAG_SET: Final = 258
_BREAK: Final = 0xFF
_INDEFINITE_BYTES: Final = 0x5F


class EncodedCBOR(bytes):
    """Bytes that already are CBOR (one or more complete values).

    Wherever the core accepts objects to send, an ``EncodedCBOR`` is spliced into the
    output verbatim instead of being encoded as a byte string. Cached responses use this
    to avoid a decode/encode round trip.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class IndefiniteChunk:
    """One chunk of a top-level indefinite-length byte string.

    Mercurial streams file contents as ``5f <chunk> <chunk> ... ff``. The decoder hands
    each chunk out as soon as it is complete; the terminating break comes out as an empty
    chunk with ``is_last`` set, so a consumer never has to wait for a look-ahead byte.
    """

    data: bytes
    is_last: bool


# --------------------------------------------------------------------------- encoding


def _sort_key(value: object) -> tuple[str, object]:
    # Mercurial orders mixed-type keys and set members by (type name, value).
    return (type(value).__name__, value)


def _sorted(values: Iterable[Any]) -> list[Any]:
    items = list(values)
    if all(type(v) is bytes for v in items):
        # The common case: plain lexicographic byte order, no key function.
        items.sort()
        return items
    try:
        items.sort(key=_sort_key)
    except TypeError as exc:
        raise LocalProtocolError(f"cannot order CBOR map keys or set members: {exc}") from exc
    return items


def _encode_dict(encoder: cbor2.CBOREncoder, value: dict[Any, Any]) -> None:
    encoder.encode_length(5, len(value))
    for key in _sorted(value):
        encoder.encode(key)
        encoder.encode(value[key])


def _encode_set(encoder: cbor2.CBOREncoder, value: set[Any] | frozenset[Any]) -> None:
    encoder.encode_length(6, _TAG_SET)
    members = _sorted(value)
    encoder.encode_length(4, len(members))
    for member in members:
        encoder.encode(member)


def _encode_int(encoder: cbor2.CBOREncoder, value: int) -> None:
    # cbor2 would write a bignum (tag 2/3) that Mercurial's decoder refuses.
    if not -(2**64) <= value < 2**64:
        raise LocalProtocolError(f"integer {value} does not fit in CBOR major types 0/1")
    encoder.encode_int(int(value))


def _encode_raw(encoder: cbor2.CBOREncoder, value: EncodedCBOR) -> None:
    encoder.write(value)


def _encode_bytes_like(encoder: cbor2.CBOREncoder, value: bytearray | memoryview) -> None:
    encoder.encode_bytes(bytes(value))


def _refuse(encoder: cbor2.CBOREncoder, value: object) -> None:
    if isinstance(value, str):
        raise LocalProtocolError(
            f"text string {value!r} cannot be sent: Mercurial's CBOR is bytes-only"
        )
    raise LocalProtocolError(f"{type(value).__name__} is outside Mercurial's CBOR subset")


def _build_encoders() -> dict[type, Any]:
    import datetime
    import decimal
    import fractions
    import ipaddress
    import re
    import uuid

    encoders: dict[type, Any] = {
        dict: _encode_dict,
        set: _encode_set,
        frozenset: _encode_set,
        int: _encode_int,
        EncodedCBOR: _encode_raw,
        bytearray: _encode_bytes_like,
        memoryview: _encode_bytes_like,
    }
    refused: list[type] = [
        str,
        float,
        complex,
        datetime.datetime,
        datetime.date,
        decimal.Decimal,
        fractions.Fraction,
        uuid.UUID,
        re.Pattern,
        ipaddress.IPv4Address,
        ipaddress.IPv6Address,
        ipaddress.IPv4Network,
        ipaddress.IPv6Network,
        ipaddress.IPv4Interface,
        ipaddress.IPv6Interface,
        cbor2.CBORTag,
        cbor2.CBORSimpleValue,
        type(cbor2.undefined),
    ]
    for kind in refused:
        encoders[kind] = _refuse
    return encoders


_ENCODERS: Final = _build_encoders()


def _encode_into(out: io.BytesIO, objs: Iterable[object]) -> None:
    encoder = cbor2.CBOREncoder(out, encoders=_ENCODERS, default=_refuse)
    try:
        for obj in objs:
            encoder.encode(obj)
    except LocalProtocolError:
        raise
    except (cbor2.CBOREncodeError, ValueError, TypeError, RecursionError) as exc:
        raise LocalProtocolError(f"cannot encode as CBOR: {exc}") from exc


def dumps(obj: object) -> bytes:
    """Encode one value exactly as Mercurial's ``cborutil.streamencode`` would.

    bytes → byte string; int → major 0/1; bool; None; list/tuple → definite array;
    dict → definite map with Mercurial's key order; set/frozenset → tag 258 + sorted
    array; :class:`EncodedCBOR` → spliced verbatim. Anything else, notably ``str``,
    raises :class:`LocalProtocolError`.
    """
    if type(obj) is EncodedCBOR:
        return bytes(obj)
    out = io.BytesIO()
    _encode_into(out, (obj,))
    return out.getvalue()


def dumps_sequence(objs: Iterable[object]) -> bytes:
    """Encode several values back to back (a CBOR sequence) with one encoder."""
    out = io.BytesIO()
    _encode_into(out, objs)
    return out.getvalue()


def uint_head(n: int) -> bytes:
    """The CBOR encoding of the unsigned integer ``n`` (also the head of major type 0)."""
    return _head(0, n)


def byte_string_head(length: int) -> bytes:
    """The head of a definite byte string of ``length`` bytes (the bytes follow it)."""
    return _head(2, length)


def map_head(pairs: int) -> bytes:
    """The head of a definite map of ``pairs`` entries (keys and values follow it)."""
    return _head(5, pairs)


def indefinite_bytes_begin() -> bytes:
    """The header that opens an indefinite-length byte string (``5f``)."""
    return b"\x5f"


def _head(major: int, arg: int) -> bytes:
    base = major << 5
    if arg < 24:
        return bytes((base | arg,))
    if arg < 0x100:
        return bytes((base | 24, arg))
    if arg < 0x10000:
        return bytes((base | 25,)) + arg.to_bytes(2, "big")
    if arg < 0x100000000:
        return bytes((base | 26,)) + arg.to_bytes(4, "big")
    return bytes((base | 27,)) + arg.to_bytes(8, "big")


def indefinite_bytes_chunk(data: bytes) -> bytes:
    """One definite byte-string chunk inside an indefinite byte string."""
    return _head(2, len(data)) + data


def indefinite_bytes_end() -> bytes:
    """The break code that closes an indefinite-length byte string (``ff``)."""
    return b"\xff"


# --------------------------------------------------------------------------- decoding


class _Scan:
    """Resumable position of the header scanner inside one partial value.

    ``offset`` is where the next item header starts; ``stack`` holds, for each open
    container, how many items it still expects (a map counts keys and values).
    """

    __slots__ = ("offset", "stack")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.stack: list[int] = []


_NEED_MORE: Final = -1


def _scan(buf: bytes | bytearray, end: int, state: _Scan) -> int:
    """Advance ``state`` over complete items; return the value's end or ``_NEED_MORE``.

    Raises :class:`CBORError` for anything outside Mercurial's subset.
    """
    off = state.offset
    stack = state.stack
    while True:
        if off >= end:
            state.offset = off
            return _NEED_MORE
        initial = buf[off]
        major = initial >> 5
        info = initial & 0x1F
        if info < 24:
            arg = info
            head = 1
        elif info == 24:
            head = 2
        elif info == 25:
            head = 3
        elif info == 26:
            head = 5
        elif info == 27:
            head = 9
        elif info == 31:
            if major == 2:
                raise CBORError("indefinite byte string inside a container")
            if major in (4, 5):
                raise CBORError("indefinite-length arrays and maps are not allowed")
            if major == 7:
                raise CBORError("unexpected break code")
            raise CBORError(f"indefinite length on major type {major}")
        else:
            raise CBORError(f"reserved additional information {info}")
        if head > 1:
            if off + head > end:
                state.offset = off
                return _NEED_MORE
            arg = int.from_bytes(buf[off + 1 : off + head], "big")

        if major <= 1:
            off += head
        elif major == 2:
            if off + head + arg > end:
                state.offset = off
                return _NEED_MORE
            off += head + arg
        elif major == 4 or major == 5:
            if arg:
                if len(stack) >= MAX_DEPTH:
                    raise CBORError("CBOR containers nested too deeply")
                stack.append(arg if major == 4 else 2 * arg)
                off += head
                continue
            off += head
        elif major == 6:
            if arg != _TAG_SET:
                raise CBORError(f"CBOR tag {arg} is not allowed (only 258, sets)")
            if off + head >= end:
                state.offset = off
                return _NEED_MORE
            inner = buf[off + head]
            if inner >> 5 != 4 or inner & 0x1F == 31:
                raise CBORError("tag 258 must wrap a definite-length array")
            # Consume only the tag: the array header is scanned next, as a normal item.
            off += head
            continue
        elif major == 3:
            raise CBORError("text strings are not allowed: Mercurial's CBOR is bytes-only")
        else:  # major 7
            if info not in (20, 21, 22):
                if info in (25, 26, 27):
                    raise CBORError("floating-point values are not allowed")
                if info == 23:
                    raise CBORError("undefined is not allowed")
                raise CBORError(f"simple value {arg} is not allowed")
            off += 1

        # One item finished: close every container it completes.
        while stack:
            stack[-1] -= 1
            if stack[-1]:
                break
            stack.pop()
        if not stack:
            state.offset = off
            return off


def _convert(data: bytes | bytearray | memoryview) -> object:
    """Turn one validated value into Python objects."""
    try:
        return cbor2.loads(data, max_depth=MAX_DEPTH + 2)
    except Exception as exc:
        raise CBORError(f"invalid CBOR value: {exc}") from exc


def _decode_value(buf: bytes | bytearray, start: int, end: int) -> object:
    first = buf[start]
    if 0x40 <= first <= 0x5B:
        # A definite byte string, by far the most common large value: slice, skip cbor2.
        info = first & 0x1F
        head = 1 if info < 24 else 1 + (1 << (info - 24))
        return bytes(buf[start + head : end])
    with memoryview(buf) as view:
        return _convert(view[start:end])


def loads_sequence(data: bytes) -> list[object]:
    """Decode a complete CBOR sequence (zero or more values).

    Top-level indefinite byte strings come out as :class:`IndefiniteChunk` values.
    Raises :class:`CBORError` on truncated or invalid input.
    """
    decoder = CBORSequenceDecoder(max_buffer=max(len(data), 1))
    values = decoder.feed(data)
    decoder.finish()
    return values


def loads(data: bytes) -> object:
    """Decode exactly one value, strictly (see the module docstring for the subset).

    A top-level indefinite byte string is returned joined into one ``bytes``. Raises
    :class:`CBORError` for empty, truncated, trailing or invalid input.
    """
    values = loads_sequence(data)
    if values and isinstance(values[0], IndefiniteChunk):
        if not all(isinstance(v, IndefiniteChunk) for v in values) or not _last_chunk(values):
            raise CBORError("expected exactly one CBOR value")
        return b"".join(v.data for v in values if isinstance(v, IndefiniteChunk))
    if len(values) != 1:
        raise CBORError(f"expected exactly one CBOR value, found {len(values)}")
    return values[0]


def _last_chunk(values: list[object]) -> bool:
    last = values[-1]
    flags = [isinstance(v, IndefiniteChunk) and v.is_last for v in values]
    return isinstance(last, IndefiniteChunk) and last.is_last and flags.count(True) == 1


class CBORSequenceDecoder:
    """Incremental decoder for a stream of CBOR values (a response's payloads).

    :meth:`feed` takes bytes in any split and returns the values completed so far. A
    value may span any number of feeds. At most ``max_buffer`` bytes of one unfinished
    value are held; a value that would need more raises :class:`CBORError` at once.
    """

    __slots__ = ("_buf", "_in_indefinite", "_max_buffer", "_scan")

    def __init__(self, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be positive")
        self._max_buffer = max_buffer
        self._buf = bytearray()
        self._scan: _Scan | None = None
        self._in_indefinite = False

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished value currently held."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[object]:
        """Add ``data`` and return every value it completes, in order."""
        buf = self._buf
        buf += data
        out: list[object] = []
        pos = 0
        end = len(buf)
        while pos < end:
            if self._in_indefinite:
                first = buf[pos]
                if first == _BREAK:
                    out.append(IndefiniteChunk(data=b"", is_last=True))
                    self._in_indefinite = False
                    pos += 1
                    continue
                if first >> 5 != 2 or first & 0x1F >= 28:
                    raise CBORError("indefinite byte string holds something other than chunks")
            elif buf[pos] == _INDEFINITE_BYTES:
                self._in_indefinite = True
                pos += 1
                continue
            scan = self._scan
            if scan is None:
                scan = self._scan = _Scan(pos)
            stop = _scan(buf, end, scan)
            if stop == _NEED_MORE:
                self._check_bound(buf, pos, scan.offset, end)
                break
            value = _decode_value(buf, pos, stop)
            if self._in_indefinite:
                assert isinstance(value, bytes)  # checked above: a definite byte string
                value = IndefiniteChunk(data=value, is_last=False)
            out.append(value)
            self._scan = None
            pos = stop
        if pos:
            del buf[:pos]
            if self._scan is not None:
                self._scan.offset -= pos
        if len(buf) > self._max_buffer:
            raise CBORError(f"partial CBOR value exceeds {self._max_buffer} bytes")
        return out

    def _check_bound(self, buf: bytearray, start: int, offset: int, end: int) -> None:
        # A declared byte-string length tells us early that a value can never fit.
        if offset < end:
            first = buf[offset]
            info = first & 0x1F
            if first >> 5 == 2 and 24 <= info <= 27:
                head = 1 + (1 << (info - 24))
                if offset + head <= end:
                    length = int.from_bytes(buf[offset + 1 : offset + head], "big")
                    if offset - start + head + length > self._max_buffer:
                        raise CBORError(
                            f"CBOR byte string of {length} bytes exceeds the "
                            f"{self._max_buffer}-byte buffer"
                        )

    def finish(self) -> None:
        """Assert the input ended between values; raise :class:`CBORError` otherwise."""
        if self._buf:
            raise CBORError("input ended inside a CBOR value")
        if self._in_indefinite:
            raise CBORError("input ended inside an indefinite byte string")
