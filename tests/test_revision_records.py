"""``revision_records`` writes its records already encoded: byte for byte what the
general CBOR encoder writes for the same record map and payload."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from hgwire_tw.commands.common import revision_records
from hgwire_tw.core.cbor import dumps_sequence


def _reference(rev: SimpleNamespace, fields: set[bytes], linknode: bytes | None) -> bytes:
    record: dict[bytes, object] = {b"node": rev.node}
    if b"parents" in fields:
        record[b"parents"] = [rev.p1node, rev.p2node]
    if linknode is not None:
        record[b"linknode"] = linknode
    objs: list[object] = [record]
    if b"revision" in fields:
        if rev.revision is not None:
            record[b"fieldsfollowing"] = [[b"revision", len(rev.revision)]]
            objs.append(rev.revision)
        else:
            record[b"deltabasenode"] = rev.basenode
            record[b"fieldsfollowing"] = [[b"delta", len(rev.delta)]]
            objs.append(rev.delta)
    return dumps_sequence(objs)


@pytest.mark.parametrize("size", [0, 23, 24, 255, 256, 65535, 65536])
@pytest.mark.parametrize("full", [True, False])
def test_encoded_records_equal_the_general_encoder(size: int, full: bool) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    rev = SimpleNamespace(
        node=b"\x01" * 20,
        p1node=b"\x02" * 20,
        p2node=b"\0" * 20,
        basenode=b"\x03" * 20,
        revision=payload if full else None,
        delta=None if full else memoryview(payload),
    )
    for parents, revision, linked in itertools.product([False, True], repeat=3):
        fields = {b"parents"} if parents else set()
        if revision:
            fields.add(b"revision")
        linknodes = {rev.node: b"\x04" * 20} if linked else None
        [ours] = revision_records([rev], fields, linknodes)
        expected = _reference(rev, fields, linknodes[rev.node] if linknodes else None)
        assert bytes(ours) == expected, (parents, revision, linked)
