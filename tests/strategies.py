"""Hypothesis strategies for Mercurial's CBOR subset and for frames."""

from __future__ import annotations

from hypothesis import strategies as st

from hgwire_tw.core.frames import Frame, FrameType, StreamFlag

#: Scalars Mercurial's CBOR subset can carry.
scalars = st.one_of(
    st.binary(max_size=64),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.booleans(),
    st.none(),
)

#: Hashable values usable as set members (bytes and ints, as Mercurial uses them).
set_members = st.one_of(st.binary(max_size=16), st.integers(-(2**31), 2**31))

#: Any value of the subset (lists, bytes-keyed maps, sets), nested a little.
values = st.recursive(
    st.one_of(scalars, st.frozensets(set_members, max_size=5).map(set)),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.binary(max_size=12), children, max_size=5),
    ),
    max_leaves=20,
)

frames = st.builds(
    lambda rid, sid, sflags, kind, flags, payload: Frame(
        request_id=rid,
        stream_id=sid,
        stream_flags=StreamFlag(sflags),
        type=kind,
        flags=flags,
        payload=payload,
    ),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFF),
    st.integers(0, 0xFF),
    st.sampled_from(list(FrameType)),
    st.integers(0, 0xF),
    st.binary(max_size=300),
)
