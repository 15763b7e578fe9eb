"""Server shortcuts of the revision path give exactly what the plain way gives:
``revision_records`` writes its records already encoded, byte for byte what the general
CBOR encoder writes; ``filesdata`` finds file revisions from linkrevs where that is valid.
"""

from __future__ import annotations

import itertools
from pathlib import Path
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


def test_filesdata_by_linkrev_equals_reading_manifests(rich_repo: Path) -> None:
    """Where the requested changesets complete the repository, the file revisions found
    from linkrevs (no manifest read) are exactly those the manifests name, with the same
    linknodes (merges, a named branch, copies, a removal); a request that leaves a head
    out, or a view hiding a changeset, does not take that path."""
    from mercurial import hg as hgmod

    from hgwire_tw.commands import files
    from hgwire_tw.commands.common import file_matcher, served_view
    from hgwire_tw.repo.ui import make_ui
    from tests.repobuilders import hg

    hg("phase", "--draft", "--force", "-r", "secret()", cwd=rich_repo)
    repo = served_view(hgmod.repository(make_ui(), bytes(rich_repo)))
    cl = repo.changelog
    revs = list(cl)
    assert files._completes_the_repository(cl, revs)
    assert not files._completes_the_repository(cl, revs[:-1])
    by_linkrev = files._by_linkrev(repo, revs, file_matcher(repo, None))
    mstore = repo.manifestlog.getstorage(b"")
    by_manifests: dict[bytes, dict[bytes, bytes]] = {}
    for rev in revs:
        for path, fnode in files._touched_file_nodes(repo, mstore, rev):
            by_manifests.setdefault(path, {}).setdefault(fnode, cl.node(rev))
    assert by_linkrev == by_manifests and len(by_linkrev) > 3
    hg("phase", "--secret", "--force", "-r", "tip", cwd=rich_repo)
    hidden = served_view(hgmod.repository(make_ui(), bytes(rich_repo)))
    assert not files._completes_the_repository(hidden.changelog, list(hidden.changelog))
