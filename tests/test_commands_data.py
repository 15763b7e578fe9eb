"""changesetdata / manifestdata / filedata / filesdata / rawstorefiledata on real repos.

Every revision sent is rebuilt from its full text or delta and must hash (with its
parents) to its node, as a real client would check.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from mercurial import hg, mdiff
from mercurial.node import bin, hex
from mercurial.utils.storageutil import hashrevisionsha1

from hgwire_tw.commands.common import served_view
from hgwire_tw.core.errors import CommandError
from hgwire_tw.repo.ui import make_ui
from tests import repobuilders

NULL = b"\0" * 20
ALL_CS_FIELDS = [b"bookmarks", b"parents", b"phase", b"revision"]


def nodes_of(repo: Path, revset: str) -> list[bytes]:
    """Binary nodes of ``revset`` in its order, as ``hg log -r`` sees them (in-process:
    spawning hg costs about a second per call here)."""
    from mercurial import hg as hgmod

    from hgwire_tw.repo.ui import make_ui

    r = hgmod.repository(make_ui(), os.fsencode(repo))
    return [r.changelog.node(rev) for rev in r.revs(revset.encode())]


def open_served(path: Path) -> Any:
    """The served view of the repository at ``path``."""
    return served_view(hg.repository(make_ui(), os.fsencode(path)))


def dag(heads: list[bytes], roots: list[bytes] | None = None) -> list[dict[bytes, object]]:
    """A changesetdagrange revision specifier list."""
    return [{b"type": b"changesetdagrange", b"roots": roots or [], b"heads": heads}]


def explicit(nodes: list[bytes]) -> list[dict[bytes, object]]:
    """A changesetexplicit revision specifier list."""
    return [{b"type": b"changesetexplicit", b"nodes": nodes}]


def take_records(
    objs: Iterator[object], count: int
) -> Iterator[tuple[dict[bytes, Any], list[bytes]]]:
    """Yield ``count`` (record, payloads) pairs from an object stream."""
    for _ in range(count):
        record = next(objs)
        assert isinstance(record, dict)
        payloads = [next(objs) for _ in record.get(b"fieldsfollowing", [])]
        for (_, size), payload in zip(record.get(b"fieldsfollowing", []), payloads, strict=True):
            assert isinstance(payload, bytes) and len(payload) == size
        yield record, payloads


def rebuild(
    records: Iterator[tuple[dict[bytes, Any], list[bytes]]], known: dict[bytes, bytes]
) -> dict[bytes, bytes]:
    """Apply full texts/deltas in order; check every hash; return node → text."""
    got: dict[bytes, bytes] = {}
    for record, payloads in records:
        node = record[b"node"]
        ((kind, _),) = record[b"fieldsfollowing"]
        if kind == b"revision":
            assert b"deltabasenode" not in record
            text = payloads[0]
        else:
            assert kind == b"delta"
            base = record[b"deltabasenode"]
            source = got.get(base, known.get(base))
            assert source is not None, "delta against a revision the client does not have"
            text = mdiff.patches(source, [payloads[0]])
        p1, p2 = record[b"parents"]
        assert hashrevisionsha1(text, p1, p2) == node
        got[node] = text
        known[node] = text
    return got


# ----------------------------------------------------------------- changesetdata


def test_changesetdata_full_clone(rich_repo_template: Path, call: Any) -> None:
    """A dagrange from nothing gives every served changeset, hash-checked, in order."""
    repo = open_served(rich_repo_template)
    heads = sorted(repo.heads())
    objs = iter(
        call(
            rich_repo_template,
            b"changesetdata",
            {b"revisions": dag(heads), b"fields": ALL_CS_FIELDS},
        )
    )
    header = next(objs)
    expected = nodes_of(rich_repo_template, "not secret()")
    assert header == {b"totalitems": len(expected)}
    seen = []
    cl = repo.changelog
    marks = {}
    for name, node in repo._bookmarks.items():
        marks.setdefault(node, []).append(name)
    for record, (text,) in take_records(objs, len(expected)):
        node = record[b"node"]
        seen.append(node)
        assert record[b"parents"] == list(cl.parents(node))
        assert hashrevisionsha1(text, *record[b"parents"]) == node
        assert record[b"phase"] == b"public"  # publishing repository
        assert record.get(b"bookmarks", []) == sorted(marks.get(node, []))
    assert seen == expected
    assert list(objs) == []  # every bookmark was on a sent changeset


def test_changesetdata_phases_when_not_publishing(rich_repo: Path, call: Any) -> None:
    """On a non-publishing repository the real phases are sent."""
    with open(rich_repo / ".hg" / "hgrc", "a") as f:
        f.write("[phases]\npublish = false\n")
    repo = open_served(rich_repo)
    objs = iter(
        call(
            rich_repo,
            b"changesetdata",
            {b"revisions": dag(sorted(repo.heads())), b"fields": [b"phase"]},
        )
    )
    n = next(objs)[b"totalitems"]
    phases = {r[b"node"]: r[b"phase"] for r, _ in take_records(objs, n)}
    out = repobuilders.hg_out("log", "-r", "not secret()", "-T", "{node} {phase}\n", cwd=rich_repo)
    assert phases == {bin(n): p.encode() for n, p in (line.split() for line in out.splitlines())}


def test_changesetdata_extra_bookmark_records(rich_repo_template: Path, call: Any) -> None:
    """Bookmarks on changesets not sent come as {node, bookmarks} records, sorted by node."""
    first = nodes_of(rich_repo_template, "0")
    objs = call(
        rich_repo_template,
        b"changesetdata",
        {b"revisions": explicit(first), b"fields": [b"bookmarks"]},
    )
    assert objs[0] == {b"totalitems": 1}
    assert objs[1] == {b"node": first[0]}
    out = repobuilders.hg_out("bookmarks", "-T", "{node} {bookmark}\n", cwd=rich_repo_template)
    marks = sorted((bin(n), b.encode()) for n, b in (line.split() for line in out.splitlines()))
    assert objs[2:] == [{b"node": n, b"bookmarks": [b]} for n, b in marks]


def test_changesetdata_no_fields(rich_repo_template: Path, call: Any) -> None:
    """Without fields, records are just nodes."""
    nodes = nodes_of(rich_repo_template, "0:2")
    objs = call(rich_repo_template, b"changesetdata", {b"revisions": explicit(nodes)})
    assert objs == [{b"totalitems": 3}] + [{b"node": n} for n in nodes]


@pytest.mark.parametrize(
    ("spec", "revset"),
    [
        ("explicit", "2 + 5"),
        ("explicit-dupes", "2 + 5"),
        ("depth1", "7"),
        ("depth3", "ancestors(7, 2)"),
        ("dagrange-roots", "only(max(not secret()), 3)"),
        ("dagrange-unknown-root", "::max(not secret())"),
        ("union", "0 + only(6, 3)"),
    ],
)
def test_revision_specifiers(rich_repo_template: Path, call: Any, spec: str, revset: str) -> None:
    """Every revision specifier type resolves to what the equivalent revset gives."""
    r = rich_repo_template
    one = lambda rs: nodes_of(r, rs)  # noqa: E731
    specs: list[dict[bytes, object]] = {
        "explicit": explicit(one("5 + 2")),
        "explicit-dupes": explicit(one("5 + 2 + 5")),
        "depth1": [{b"type": b"changesetexplicitdepth", b"nodes": one("7"), b"depth": 1}],
        "depth3": [{b"type": b"changesetexplicitdepth", b"nodes": one("7"), b"depth": 3}],
        "dagrange-roots": dag(one("max(not secret())"), one("3")),
        "dagrange-unknown-root": dag(one("max(not secret())"), [b"\x42" * 20]),
        "union": explicit(one("0")) + dag(one("6"), one("3")),
    }[spec]
    objs = call(r, b"changesetdata", {b"revisions": specs})
    assert [o[b"node"] for o in objs[1:]] == nodes_of(r, f"sort({revset}, rev)")


@pytest.mark.parametrize(
    ("revisions", "message"),
    [
        ({b"type": b"changesetexplicit"}, b"revisions must be defined as an array"),
        ([{b"nodes": []}], b"type key not present in revision specifier"),
        ([{b"type": b"bogus"}], b"unknown revision specifier type: %s"),
        ([{b"type": b"changesetexplicit"}], b"%s key not present in %s revision specifier"),
        (
            [{b"type": b"changesetdagrange", b"roots": [], b"heads": []}],
            b"heads key in changesetdagrange cannot be empty",
        ),
        ([{b"type": b"changesetexplicit", b"nodes": [b"\x33" * 20]}], b"unknown changeset: %s"),
        (
            [{b"type": b"changesetexplicit", b"nodes": [b"short"]}],
            b"%s must contain 20-byte binary nodes",
        ),
        (
            [{b"type": b"changesetexplicitdepth", b"nodes": [], b"depth": 0}],
            b"depth must be a positive integer",
        ),
        ([b"notamap"], b"revision specifier must be a map"),
    ],
)
def test_bad_revision_specifiers(
    rich_repo_template: Path, call: Any, revisions: object, message: bytes
) -> None:
    """Malformed revision specifiers are CommandErrors with their documented texts."""
    with pytest.raises(CommandError) as info:
        call(rich_repo_template, b"changesetdata", {b"revisions": revisions})
    assert info.value.message == message


def test_secret_changeset_is_never_sent(rich_repo_template: Path, call: Any) -> None:
    """Asking for the secret changeset explicitly is refused as unknown."""
    secret = nodes_of(rich_repo_template, "secret()")
    with pytest.raises(CommandError) as info:
        call(rich_repo_template, b"changesetdata", {b"revisions": explicit(secret)})
    assert info.value.args_ == (hex(secret[0]),)


# ----------------------------------------------------------------- manifestdata


def manifest_nodes(repo: Any, revs: list[int] | None = None) -> list[bytes]:
    """Manifest nodes of served changesets (all, or ``revs``), deduplicated in order."""
    cl = repo.changelog
    revs = list(cl) if revs is None else revs
    return list(dict.fromkeys(repo[r].manifestnode() for r in revs))


@pytest.mark.parametrize("haveparents", [False, True])
def test_manifestdata_rebuilds_every_revision(
    rich_repo_template: Path, call: Any, haveparents: bool
) -> None:
    """Every manifest revision rebuilds from full texts/deltas and hashes to its node."""
    repo = open_served(rich_repo_template)
    store = repo.manifestlog.getstorage(b"")
    if haveparents:
        # The client has the first three changesets; asks for the rest.
        have = manifest_nodes(repo, [0, 1, 2])
        nodes = [n for n in manifest_nodes(repo) if n not in have]
        known = {n: store.rawdata(n) for n in have}
    else:
        nodes, known = manifest_nodes(repo), {}
    objs = iter(
        call(
            rich_repo_template,
            b"manifestdata",
            {
                b"tree": b"",
                b"nodes": nodes,
                b"haveparents": haveparents,
                b"fields": [b"parents", b"revision"],
            },
        )
    )
    assert next(objs) == {b"totalitems": len(nodes)}
    records = list(take_records(objs, len(nodes)))
    assert list(objs) == []
    if not haveparents:
        assert b"deltabasenode" not in records[0][0]  # nothing to delta against yet
    got = rebuild(iter(records), known)
    assert set(got) == set(nodes)
    for node, text in got.items():
        assert text == store.rawdata(node)
        assert next(p for p in records if p[0][b"node"] == node)[0][b"parents"] == list(
            store.parents(node)
        )


def test_manifestdata_parents_only(rich_repo_template: Path, call: Any) -> None:
    """Without revision, records carry no payload."""
    repo = open_served(rich_repo_template)
    nodes = manifest_nodes(repo, [0])
    objs = call(
        rich_repo_template,
        b"manifestdata",
        {b"tree": b"", b"nodes": nodes, b"fields": [b"parents"]},
    )
    assert objs == [{b"totalitems": 1}, {b"node": nodes[0], b"parents": [NULL, NULL]}]


def test_manifestdata_unknown_node(rich_repo_template: Path, call: Any) -> None:
    """An unknown manifest node: `unknown node: %s` with the binary node."""
    with pytest.raises(CommandError) as info:
        call(rich_repo_template, b"manifestdata", {b"tree": b"", b"nodes": [b"\x55" * 20]})
    assert (info.value.message, info.value.args_) == (b"unknown node: %s", (b"\x55" * 20,))


# ----------------------------------------------------------------- filedata


def test_filedata_all_revisions_of_each_file(rich_repo_template: Path, call: Any) -> None:
    """Every visible revision of every file rebuilds; linknodes and copy metadata right."""
    repo = open_served(rich_repo_template)
    paths = {p for r in repo.changelog for p in repo[r].files()}
    cl = repo.changelog
    for path in sorted(paths):
        fl = repo.file(path)
        nodes = [fl.node(r) for r in fl if fl.linkrev(r) not in cl.filteredrevs]
        if not nodes:
            continue
        objs = iter(
            call(
                rich_repo_template,
                b"filedata",
                {b"path": path, b"nodes": nodes, b"fields": [b"parents", b"revision", b"linknode"]},
            )
        )
        assert next(objs) == {b"totalitems": len(nodes)}
        records = list(take_records(objs, len(nodes)))
        for record, _ in records:
            assert record[b"linknode"] == cl.node(fl.linkrev(fl.rev(record[b"node"])))
        got = rebuild(iter(records), {})
        assert {n: fl.rawdata(n) for n in nodes} == got
    copied = repo.file(b"src/util2.py")
    ((record, (text,)),) = take_records(
        iter(
            call(
                rich_repo_template,
                b"filedata",
                {
                    b"path": b"src/util2.py",
                    b"nodes": [copied.node(0)],
                    b"fields": [b"parents", b"revision"],
                },
            )[1:]
        ),
        1,
    )
    assert text.startswith(b"\x01\ncopy: src/util.py\n")


@pytest.mark.parametrize(
    ("path", "nodes", "message"),
    [
        (b"no/such/file", [b"\x01" * 20], b"unknown file: %s"),
        (b"README", [b"\x01" * 20], b"unknown file node: %s"),
        (b"secret.txt", None, b"unknown file"),
    ],
)
def test_filedata_errors(
    rich_repo_template: Path, call: Any, path: bytes, nodes: list[bytes] | None, message: bytes
) -> None:
    """Unknown files and file nodes, and secret file revisions, are refused."""
    if nodes is None:
        nodes = [open_served(rich_repo_template).unfiltered().file(path).node(0)]
    with pytest.raises(CommandError) as info:
        call(rich_repo_template, b"filedata", {b"path": path, b"nodes": nodes})
    assert info.value.message.startswith(message)


# ----------------------------------------------------------------- filesdata


def collect_filesdata(objs: list[object]) -> tuple[dict[bytes, Any], dict[bytes, list[Any]]]:
    """Split a filesdata response into its header and {path: [(record, payloads)]}."""
    it = iter(objs)
    header = next(it)
    assert isinstance(header, dict)
    out: dict[bytes, list[Any]] = {}
    for _ in range(header[b"totalpaths"]):
        entry = next(it)
        assert isinstance(entry, dict) and set(entry) == {b"path", b"totalitems"}
        out[entry[b"path"]] = list(take_records(it, entry[b"totalitems"]))
    assert list(it) == []
    assert header[b"totalitems"] == sum(len(v) for v in out.values())
    assert list(out) == sorted(out)
    return header, out


@pytest.mark.parametrize("haveparents", [False, True])
def test_filesdata_covers_exactly_what_changesets_need(
    rich_repo_template: Path, call: Any, haveparents: bool
) -> None:
    """The (path, file node) pairs sent are the manifests' (or touched files') entries.

    The requested set includes the changeset that removes a file (upstream crashed on it
    with haveparents, §11.10).
    """
    repo = open_served(rich_repo_template)
    revs = list(repo.changelog)
    nodes = [repo.changelog.node(r) for r in revs]
    expected: dict[tuple[bytes, bytes], bytes] = {}
    for r in revs:
        ctx = repo[r]
        mf = ctx.manifest()
        for p in ctx.files() if haveparents else mf.keys():
            if p in mf:
                expected.setdefault((p, mf[p]), ctx.node())
    assert any(p not in repo[r].manifest() for r in revs for p in repo[r].files())
    _, per_path = collect_filesdata(
        call(
            rich_repo_template,
            b"filesdata",
            {
                b"revisions": explicit(nodes),
                b"haveparents": haveparents,
                b"fields": [b"parents", b"revision", b"linknode"],
            },
        )
    )
    sent = {(p, rec[b"node"]): rec[b"linknode"] for p, recs in per_path.items() for rec, _ in recs}
    assert sent == expected
    for path, recs in per_path.items():
        fl = repo.file(path)
        known = {}
        if haveparents:
            for rec, _ in recs:
                for parent in rec[b"parents"]:
                    if parent != NULL:
                        known[parent] = fl.rawdata(parent)
        got = rebuild(iter(recs), known)
        assert all(fl.rawdata(n) == t for n, t in got.items())


def test_filesdata_incremental_haveparents(rich_repo_template: Path, call: Any) -> None:
    """A pull of the last changesets only sends their touched files, deltas allowed."""
    repo = open_served(rich_repo_template)
    nodes = nodes_of(rich_repo_template, "only(max(not secret()), 5)")
    _, per_path = collect_filesdata(
        call(
            rich_repo_template,
            b"filesdata",
            {
                b"revisions": explicit(nodes),
                b"haveparents": True,
                b"fields": [b"parents", b"revision"],
            },
        )
    )
    touched = {p for n in nodes for p in repo[n].files() if p in repo[n].manifest()}
    assert set(per_path) == touched


@pytest.mark.parametrize(
    ("pathfilter", "expected"),
    [
        ({b"include": [b"path:src"]}, "src/"),
        ({b"include": [b"rootfilesin:src"]}, "src/"),
        ({b"include": [b"rootfilesin:"]}, ""),
        ({b"exclude": [b"path:src"]}, "-src/"),
        ({b"include": [b"path:src"], b"exclude": [b"path:src/util.py"]}, "src/-util"),
        ({b"include": []}, "none"),
    ],
)
def test_filesdata_path_filters(
    rich_repo_template: Path, call: Any, pathfilter: dict[bytes, list[bytes]], expected: str
) -> None:
    """path: and rootfilesin: filters select the right paths."""
    head = nodes_of(rich_repo_template, "max(not secret())")
    _, per_path = collect_filesdata(
        call(
            rich_repo_template,
            b"filesdata",
            {b"revisions": explicit(head), b"pathfilter": pathfilter},
        )
    )
    paths = set(per_path)
    everything = {
        p.encode()
        for p in repobuilders.hg_out("files", "-r", head[0].hex(), cwd=rich_repo_template).split()
    }
    want = {
        "src/": {p for p in everything if p.startswith(b"src/")},
        "": {p for p in everything if b"/" not in p},
        "-src/": {p for p in everything if not p.startswith(b"src/")},
        "src/-util": {p for p in everything if p.startswith(b"src/")} - {b"src/util.py"},
        "none": set(),
    }[expected]
    assert paths == want


@pytest.mark.parametrize(
    "pathfilter",
    [{b"include": [b"glob:*.py"]}, {b"exclude": [b"re:.*"]}, {b"include": [b"src"]}],
)
def test_filesdata_bad_path_filter(
    rich_repo_template: Path, call: Any, pathfilter: dict[bytes, list[bytes]]
) -> None:
    """Other pattern kinds give the exact upstream error text."""
    head = nodes_of(rich_repo_template, "0")
    with pytest.raises(CommandError) as info:
        call(
            rich_repo_template,
            b"filesdata",
            {b"revisions": explicit(head), b"pathfilter": pathfilter},
        )
    key, pattern = next(iter(pathfilter.items()))
    assert info.value.message == b"%s pattern must begin with `path:` or `rootfilesin:`; got %s"
    assert info.value.args_ == (key, pattern[0])
    assert info.value.render() == (
        f"{key.decode()} pattern must begin with `path:` or `rootfilesin:`; "
        f"got {pattern[0].decode()}"
    )


# ----------------------------------------------------------------- rawstorefiledata


def test_rawstorefiledata_sends_store_files(linear_repo_template: Path, call: Any) -> None:
    """Sizes and bytes equal the store files; data as indefinite byte strings."""
    objs = call(
        linear_repo_template, b"rawstorefiledata", {b"files": [b"changelog", b"manifestlog"]}
    )
    it = iter(objs)
    header = next(it)
    store = linear_repo_template / ".hg" / "store"
    expected = sorted(
        p.name
        for p in store.iterdir()
        if p.name.startswith(("00changelog", "00manifest")) and not p.name.endswith((".n", ".nd"))
    )
    files = {}
    for _ in range(header[b"filecount"]):
        meta = next(it)
        assert meta[b"location"] == b"store"
        raw = b""
        while True:
            piece = next(it)
            raw += piece
            if piece == b"\xff":
                break
        assert raw[:1] == b"\x5f"
        files[meta[b"path"].decode()] = (meta[b"size"], cbor2.loads(raw))
    assert list(it) == []
    assert sorted(files) == expected
    for name, (size, data) in files.items():
        assert data == (store / name).read_bytes()
        assert size == len(data)
    assert header[b"totalsize"] == sum(s for s, _ in files.values())


def test_rawstorefiledata_only_changelog(linear_repo_template: Path, call: Any) -> None:
    """files: [changelog] sends only changelog files."""
    objs = call(linear_repo_template, b"rawstorefiledata", {b"files": [b"changelog"]})
    paths = [o[b"path"] for o in objs[1:] if isinstance(o, dict)]
    assert paths and all(p.startswith(b"00changelog") for p in paths)


def test_rawstorefiledata_errors(
    rich_repo_template: Path, linear_repo_template: Path, call: Any
) -> None:
    """Secret changesets disable stream clones; unknown file types are refused."""
    with pytest.raises(CommandError) as info:
        call(rich_repo_template, b"rawstorefiledata", {b"files": [b"changelog"]})
    assert info.value.message == b"stream clone is disabled"
    with pytest.raises(CommandError) as info:
        call(linear_repo_template, b"rawstorefiledata", {b"files": [b"x", b"changelog", b"a"]})
    assert (info.value.message, info.value.args_) == (b"unknown file type: %s", (b"a, x",))
