"""Command table, argument normalization (§3.3), capabilities (§4) and cache keys (§7.3)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from mercurial import hg

from hgwire_tw.commands.cachekeys import cache_key_digest, manifestdata_key
from hgwire_tw.commands.common import served_view
from hgwire_tw.commands.registry import (
    COMMANDS,
    CommandOptions,
    Permission,
    build_commands,
    cache_state,
    capabilities_descriptor,
    normalize_args,
)
from hgwire_tw.core.cbor import dumps, loads
from hgwire_tw.core.errors import ArgumentError
from hgwire_tw.repo.ui import make_ui


def open_served(path: Path) -> Any:
    """The served view of the repository at ``path``."""
    return served_view(hg.repository(make_ui(), os.fsencode(path)))


def test_unsupported_arguments_exact_text() -> None:
    """Unknown argument names are listed sorted in upstream's text."""
    with pytest.raises(ArgumentError) as info:
        normalize_args(COMMANDS[b"heads"], {b"zz": 1, b"aa": 2, b"publiconly": True})
    assert info.value.render() == "unsupported argument to command: aa, zz"


def test_missing_arguments_exact_text() -> None:
    """Missing required arguments are listed sorted in upstream's text."""
    with pytest.raises(ArgumentError) as info:
        normalize_args(COMMANDS[b"pushkey"], {b"key": b"k"})
    assert info.value.render() == "missing required arguments: namespace, new, old"


def test_defaults_filled_and_sets_converted() -> None:
    """Defaults appear (fresh copies); a list for a set argument becomes a set."""
    spec = COMMANDS[b"filesdata"]
    a = normalize_args(spec, {b"revisions": [], b"fields": [b"parents", b"revision"]})
    assert a == {
        b"revisions": [],
        b"fields": {b"parents", b"revision"},
        b"haveparents": False,
        b"pathfilter": None,
    }
    b = normalize_args(COMMANDS[b"manifestdata"], {b"nodes": [], b"tree": b""})
    c = normalize_args(COMMANDS[b"manifestdata"], {b"nodes": [], b"tree": b""})
    assert b[b"fields"] == set() and b[b"fields"] is not c[b"fields"]
    assert normalize_args(COMMANDS[b"known"], {}) == {b"nodes": []}


def test_invalid_field_value() -> None:
    """A field outside validvalues is a clear argument error (upstream ignored it)."""
    with pytest.raises(ArgumentError) as info:
        normalize_args(COMMANDS[b"changesetdata"], {b"revisions": [], b"fields": [b"phase", b"x"]})
    assert info.value.render() == "unsupported value for argument fields: x"
    # firstchangeset is accepted (and ignored) by filesdata, as upstream.
    normalize_args(COMMANDS[b"filesdata"], {b"revisions": [], b"fields": [b"firstchangeset"]})


@pytest.mark.parametrize(
    ("name", "args", "text"),
    [
        (b"heads", {b"publiconly": 1}, "invalid type for argument publiconly: expected bool"),
        (b"lookup", {b"key": [b"x"]}, "invalid type for argument key: expected bytes"),
        (b"changesetdata", {b"revisions": {}}, "revisions must be defined as an array"),
        (
            b"filesdata",
            {b"revisions": [], b"pathfilter": []},
            "invalid type for argument pathfilter: expected dict",
        ),
    ],
)
def test_wrong_types(name: bytes, args: dict[bytes, object], text: str) -> None:
    """Values of the wrong type are refused before any handler runs."""
    with pytest.raises(ArgumentError) as info:
        normalize_args(COMMANDS[name], args)
    assert info.value.render() == text


def test_none_allowed_where_default_is_none() -> None:
    """An explicit None for a None-defaulted argument is accepted."""
    got = normalize_args(COMMANDS[b"filesdata"], {b"revisions": [], b"pathfilter": None})
    assert got[b"pathfilter"] is None


def test_command_table_matches_upstream() -> None:
    """Names, permissions and argument declarations are as the 6.0.3 table (§4)."""
    assert set(COMMANDS) == {
        b"branchmap",
        b"capabilities",
        b"changesetdata",
        b"filedata",
        b"filesdata",
        b"heads",
        b"known",
        b"listkeys",
        b"lookup",
        b"manifestdata",
        b"pushkey",
        b"rawstorefiledata",
    }
    assert [n for n, s in COMMANDS.items() if s.permission is Permission.PUSH] == [b"pushkey"]
    required = {
        n: sorted(a for a, s in spec.args.items() if s.required) for n, spec in COMMANDS.items()
    }
    assert required[b"filedata"] == [b"nodes", b"path"]
    assert required[b"manifestdata"] == [b"nodes", b"tree"]
    assert required[b"rawstorefiledata"] == [b"files"]
    assert required[b"known"] == []


def test_capabilities_descriptor(rich_repo_template: Path) -> None:
    """The descriptor has §4's layout, is all bytes, and CBOR-encodes."""
    caps = capabilities_descriptor(open_served(rich_repo_template))
    assert loads(dumps(caps)) == caps
    assert caps[b"framingmediatypes"] == [b"application/mercurial-exp-framing-0006"]
    assert caps[b"pathfilterprefixes"] == {b"path:", b"rootfilesin:"}
    assert {b"generaldelta", b"revlogv1"} <= set(caps[b"rawrepoformats"])
    assert b"redirect" not in caps
    cmds = caps[b"commands"]
    assert b"rawstorefiledata" not in cmds  # the rich repo has a secret changeset
    assert cmds[b"pushkey"][b"permissions"] == [b"push"]
    assert cmds[b"heads"] == {
        b"args": {b"publiconly": {b"type": b"bool", b"required": False, b"default": False}},
        b"permissions": [b"pull"],
    }
    assert cmds[b"changesetdata"][b"args"][b"fields"] == {
        b"type": b"set",
        b"required": False,
        b"default": set(),
        b"validvalues": {b"bookmarks", b"parents", b"phase", b"revision"},
    }
    assert cmds[b"changesetdata"][b"args"][b"revisions"] == {b"type": b"list", b"required": True}
    assert cmds[b"manifestdata"][b"recommendedbatchsize"] == 100000
    assert cmds[b"filesdata"][b"recommendedbatchsize"] == 50000
    assert cmds[b"capabilities"] == {b"args": {}, b"permissions": [b"pull"]}


def test_capabilities_stream_and_redirects(linear_repo_template: Path) -> None:
    """rawstorefiledata appears when allowed; redirect targets only when configured."""
    repo = open_served(linear_repo_template)
    assert b"rawstorefiledata" in capabilities_descriptor(repo)[b"commands"]
    off = capabilities_descriptor(repo, stream_clone_allowed=False)
    assert b"rawstorefiledata" not in off[b"commands"]
    target = {
        b"name": b"cdn",
        b"protocol": b"https",
        b"uris": [b"https://cdn/"],
        b"tlsversions": [b"1.2", b"1.3"],
        b"ignored": b"x",
    }
    caps = capabilities_descriptor(repo, redirect_targets=[target])
    assert caps[b"redirect"] == {
        b"targets": [
            {
                b"name": b"cdn",
                b"protocol": b"https",
                b"uris": [b"https://cdn/"],
                b"tlsversions": [b"1.2", b"1.3"],
            }
        ],
        b"hashes": [b"sha256", b"sha1"],
    }


def test_capabilities_command_uses_options(linear_repo_template: Path, call: Any) -> None:
    """The capabilities command describes its own table and options."""
    table = build_commands(CommandOptions(stream_clone_allowed=False))
    (caps,) = call(linear_repo_template, b"capabilities", commands=table)
    assert b"rawstorefiledata" not in caps[b"commands"]
    (caps,) = call(linear_repo_template, b"capabilities")
    assert b"rawstorefiledata" in caps[b"commands"]


def test_capabilities_batch_size_config(linear_repo_template: Path, tmp_path: Path) -> None:
    """recommendedbatchsize follows the repository's experimental config."""
    import shutil

    repo_path = tmp_path / "r"
    shutil.copytree(linear_repo_template, repo_path)
    (repo_path / ".hg" / "hgrc").write_text(
        "[experimental]\nserver.manifestdata.recommended-batch-size = 7\n"
    )
    caps = capabilities_descriptor(open_served(repo_path))
    assert caps[b"commands"][b"manifestdata"][b"recommendedbatchsize"] == 7


class _Repo:
    root = b"/irrelevant"


@pytest.mark.parametrize(
    ("nodes", "digest"),
    [
        (["992f4779029a3df8d0666d00bb924f69634e2641"], b"47abb8efa5f01b8964d74917793ad2464db0fa2c"),
        (
            [
                "992f4779029a3df8d0666d00bb924f69634e2641",
                "a988fb43583e871d1ed5750ee074c6d840bbbfc8",
            ],
            b"37326a83e9843f15161fce9d1e92d06b795d5e8e",
        ),
        (["aa" * 20], b"2cba2a7d0d1575fea2fe68f597e97a7c2ac2f705"),
    ],
)
def test_manifestdata_cache_key_vectors(nodes: list[str], digest: bytes) -> None:
    """§7.3 vectors: the upstream state map without ``repo`` hashes to the logged keys."""
    args = normalize_args(
        COMMANDS[b"manifestdata"],
        {b"tree": b"", b"nodes": [bytes.fromhex(n) for n in nodes], b"fields": [b"parents"]},
    )
    state = manifestdata_key(_Repo(), args)
    assert state.pop(b"repo") == b"/irrelevant"
    assert cache_key_digest(state) == digest


def test_cache_state_policy(rich_repo_template: Path) -> None:
    """Cacheable: manifestdata/filedata/filesdata/changesetdata; never push commands."""
    repo = open_served(rich_repo_template)
    cacheable = {n for n, s in COMMANDS.items() if s.cache_key is not None}
    assert cacheable == {b"manifestdata", b"filedata", b"filesdata", b"changesetdata"}
    pk = normalize_args(
        COMMANDS[b"pushkey"], dict.fromkeys((b"namespace", b"key", b"old", b"new"), b"")
    )
    assert cache_state(COMMANDS[b"pushkey"], repo, pk) is None
    cs_args = normalize_args(COMMANDS[b"changesetdata"], {b"revisions": []})
    state = cache_state(COMMANDS[b"changesetdata"], repo, cs_args)
    assert state is not None and {b"heads", b"bookmarks", b"phases"} == set(state[b"repostate"])
    fd = normalize_args(
        COMMANDS[b"filesdata"], {b"revisions": [{b"type": b"changesetexplicit", b"nodes": []}]}
    )
    assert b"repostate" not in cache_state(COMMANDS[b"filesdata"], repo, fd)
    fd_range = normalize_args(
        COMMANDS[b"filesdata"],
        {b"revisions": [{b"type": b"changesetdagrange", b"roots": [], b"heads": []}]},
    )
    assert b"repostate" in cache_state(COMMANDS[b"filesdata"], repo, fd_range)


def test_changesetdata_key_changes_with_bookmarks(rich_repo: Path) -> None:
    """Moving a bookmark changes changesetdata's key but not manifestdata's."""
    from tests import repobuilders

    args = normalize_args(COMMANDS[b"changesetdata"], {b"revisions": []})
    margs = normalize_args(COMMANDS[b"manifestdata"], {b"tree": b"", b"nodes": []})
    before = cache_key_digest(cache_state(COMMANDS[b"changesetdata"], open_served(rich_repo), args))
    mbefore = cache_key_digest(
        cache_state(COMMANDS[b"manifestdata"], open_served(rich_repo), margs)
    )
    repobuilders.hg("bookmark", "-f", "-r", "0", "main", cwd=rich_repo)
    after = cache_key_digest(cache_state(COMMANDS[b"changesetdata"], open_served(rich_repo), args))
    mafter = cache_key_digest(cache_state(COMMANDS[b"manifestdata"], open_served(rich_repo), margs))
    assert before != after and mbefore == mafter
