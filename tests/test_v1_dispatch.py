"""``hgwire_tw.v1``: Mercurial's v1 commands run through our protocol handler, in-process."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from mercurial import hg

from hgwire_tw.access import Grant
from hgwire_tw.core.errors import PermissionDenied
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.repo.ui import make_ui
from hgwire_tw.v1.call import StreamFormats, V1Call
from hgwire_tw.v1.dispatch import run_v1_command
from hgwire_tw.v1.protocol import ProtocolFacts, SpooledPayload, V1Protocol
from hgwire_tw.v1.results import (
    V1Bytes,
    V1LegacyStream,
    V1OutOfBandError,
    V1PushError,
    V1PushResult,
    V1Stream,
    V1StreamStart,
)
from hgwire_tw.v1.runner import V1Runner
from tests import repobuilders as rb


def open_repo(path: Path) -> Any:
    return hg.repository(make_ui(), bytes(path))


def facts(*, push: bool = True, payload: bytes | None = None, **kw: Any) -> ProtocolFacts:
    """What a transport would decide for a call: everyone may pull, ``push`` says push."""
    return ProtocolFacts(
        transport=kw.pop("transport", "http"),
        grant=Grant(read=True, write=push, reason="" if push else "read-only"),
        payload=SpooledPayload(fileobj=io.BytesIO(payload or b"")),
        capabilities=(b"batch", b"test-cap"),
        **kw,
    )


def proto(**kw: Any) -> V1Protocol:
    return V1Protocol(facts(**kw))


def call(repo: Path, name: bytes, args: Any, formats: StreamFormats, **kw: Any) -> V1Call:
    return V1Call(
        served=ServedRepository("r", repo), name=name, args=args, facts=facts(**kw), formats=formats
    )


def test_capabilities_include_transport_caps(rich_repo: Path) -> None:
    """capabilities = Mercurial's command-level caps + ours."""
    result = run_v1_command(open_repo(rich_repo), b"capabilities", {}, proto())
    assert isinstance(result, V1Bytes)
    caps = result.data.split()
    assert b"test-cap" in caps and b"getbundle" in caps and b"unbundlehash" in caps


def test_batch_checks_inner_permissions(rich_repo: Path) -> None:
    """A push command inside batch is checked against the grant: refused, naming push."""
    repo = open_repo(rich_repo)
    cmds = b"heads ;pushkey namespace=bookmarks,key=x,old=,new=" + b"0" * 40
    with pytest.raises(PermissionDenied) as refused:
        run_v1_command(repo, b"batch", {b"cmds": cmds, b"*": {}}, proto(push=False))
    assert refused.value.permission == b"push"
    result = run_v1_command(repo, b"batch", {b"cmds": b"heads ;known nodes=", b"*": {}}, proto())
    assert isinstance(result, V1Bytes) and result.data.endswith(b";")


@pytest.mark.parametrize("cmds", [b"getbundle ", b"nosuch ", b"heads", b"lookup key=a=b"])
def test_batch_refuses_bad_commands(rich_repo: Path, cmds: bytes) -> None:
    """Stream commands, unknown commands and malformed cmds give out-of-band errors."""
    result = run_v1_command(open_repo(rich_repo), b"batch", {b"cmds": cmds, b"*": {}}, proto())
    assert isinstance(result, V1OutOfBandError)


def test_lookup_does_not_see_secret(rich_repo: Path) -> None:
    """Commands run on the served view: secret changesets do not exist for clients."""
    secret = rb.log_nodes(rich_repo, "secret()")[0].encode()
    result = run_v1_command(open_repo(rich_repo), b"lookup", {b"key": secret}, proto())
    assert isinstance(result, V1Bytes) and result.data.startswith(b"0 ")


def test_getbundle_stream_is_lazy_and_compressed(rich_repo: Path) -> None:
    """getbundle returns a lazy stream; the runner compresses it in pieces."""
    from hgwire_tw.core.v1 import MEDIA_TYPE_V02, ResponseFormat

    head = rb.log_nodes(rich_repo, "max(not secret())")[0].encode()
    args = {b"*": {b"heads": head, b"common": b"0" * 40, b"bundlecaps": b"HG20", b"cg": b"1"}}
    result = run_v1_command(open_repo(rich_repo), b"getbundle", args, proto())
    assert isinstance(result, V1Stream)
    zlib6 = ResponseFormat(media_type=MEDIA_TYPE_V02, engine="zlib", level=6)
    formats = StreamFormats(compressed=zlib6, uncompressed=zlib6)
    runner = V1Runner(piece=16)
    items = list(runner.run(open_repo(rich_repo), call(rich_repo, b"getbundle", args, formats)))
    assert items[0] == V1StreamStart(media_type=MEDIA_TYPE_V02, engine="zlib", legacy=False)
    body = b"".join(items[1:])  # type: ignore[arg-type]
    import zlib

    assert body[:5] == b"\x04zlib", body[:20]
    assert zlib.decompress(body[5:]).startswith(b"HG20"), zlib.decompress(body[5:])[:40]


def test_runner_reports_protocaps_over_ssh(rich_repo: Path) -> None:
    """Over SSH the protocaps command's effect comes back as data after its answer (the
    session passes it to later calls); the next call starts from what it said."""
    from hgwire_tw.v1.results import V1ProtoCaps

    runner = V1Runner()
    caps = {b"caps": b"partial-pull comp=zstd,zlib"}
    first = call(rich_repo, b"protocaps", caps, StreamFormats(), transport="ssh")
    items = list(runner.run(open_repo(rich_repo), first))
    assert items == [V1Bytes(data=b"OK"), V1ProtoCaps(value=b"comp=zstd,zlib partial-pull")]
    later = call(rich_repo, b"heads", {}, StreamFormats(), transport="ssh")
    later = dataclasses.replace(
        later, facts=dataclasses.replace(later.facts, protocaps=items[1].value)
    )
    assert [type(i) for i in runner.run(open_repo(rich_repo), later)] == [V1Bytes]


def test_a_refused_format_answers_streams_and_skips_the_cache(rich_repo: Path) -> None:
    """A client the server may send no stream to (min_send) gets the out-of-band error
    decided before the call instead of the bundle; nothing is cached."""
    from hgwire_tw.cache import MemoryStore
    from hgwire_tw.v1.runner import make_runner

    head = rb.log_nodes(rich_repo, "max(not secret())")[0].encode()
    args = {b"*": {b"heads": head, b"common": b"0" * 40, b"bundlecaps": b"HG20", b"cg": b"1"}}
    refusal = V1OutOfBandError(message=b"upgrade your client\n")
    formats = StreamFormats(compressed=refusal, uncompressed=refusal)
    cache = MemoryStore()
    items = list(
        make_runner(cache).run(open_repo(rich_repo), call(rich_repo, b"getbundle", args, formats))
    )
    assert items == [refusal]
    assert cache.stats.snapshot()["stores"] == 0


def _bundle_of_new_commit(src: Path, tmp_path: Path) -> tuple[bytes, str]:
    """A bundle2 (as a client pushes) holding one new changeset on top of ``src``."""
    work = tmp_path / "work"
    rb.hg("clone", "-q", src, work)
    (work / "new.txt").write_bytes(b"new\n")
    rb.hg("commit", "-A", "-q", "-m", "new", cwd=work)
    bundle = tmp_path / "b.hg"
    rb.hg("bundle", "-q", "-t", "none-v2", "-r", "tip", "--base", "tip^", bundle, cwd=work)
    return bundle.read_bytes(), rb.log_nodes(work, "tip")[0]


def test_unbundle_applies_a_push(tmp_path: Path) -> None:
    """unbundle with heads=force applies the bundle; the reply is a legacy stream."""
    src = rb.make_linear_repo(tmp_path / "src", commits=2)
    data, node = _bundle_of_new_commit(src, tmp_path)
    p = proto(payload=data)
    result = run_v1_command(open_repo(src), b"unbundle", {b"heads": b"666f726365"}, p)
    # ``hg bundle`` writes no replycaps part, so Mercurial answers with a plain result
    # (a real client's push gets a bundle2 reply: see the integration tests)
    assert isinstance(result, (V1LegacyStream, V1PushResult))
    assert node in rb.log_nodes(src)
    rb.verify(src)


def test_unbundle_raced_heads_leave_repo_unchanged(tmp_path: Path) -> None:
    """Heads that do not match (someone pushed first) refuse the push cleanly."""
    src = rb.make_linear_repo(tmp_path / "src", commits=2)
    data, _ = _bundle_of_new_commit(src, tmp_path)
    before = rb.repo_summary(src)
    wrong = (b"hashed" + hashlib.sha1(b"not the heads").digest()).hex().encode()
    result = run_v1_command(open_repo(src), b"unbundle", {b"heads": wrong}, proto(payload=data))
    assert isinstance(result, V1PushError)
    assert rb.repo_summary(src) == before
    assert not (src / ".hg" / "store" / "lock").exists()


def test_unbundle_garbage_leaves_repo_unchanged(tmp_path: Path) -> None:
    """A corrupt payload is an error, and neither changes the repository nor leaves a lock."""
    src = rb.make_linear_repo(tmp_path / "src", commits=2)
    data, _ = _bundle_of_new_commit(src, tmp_path)
    before = rb.repo_summary(src)
    broken = data[: len(data) // 2]
    try:
        result = run_v1_command(
            open_repo(src), b"unbundle", {b"heads": b"666f726365"}, proto(payload=broken)
        )
        if isinstance(result, V1LegacyStream):
            assert b"error" in b"".join(result.chunks)
        else:
            assert isinstance(result, (V1OutOfBandError, V1PushError))
    except Exception as e:  # a truncated stream may surface as Mercurial's own error
        assert "abort" in type(e).__name__.lower() or "error" in type(e).__name__.lower()
    assert rb.repo_summary(src) == before
    assert not (src / ".hg" / "store" / "lock").exists()
    assert not (src / ".hg" / "wlock").exists()


def test_protocol_handler_basics() -> None:
    """name, client string (bundle2 output capture keys on remote:http), protocaps."""
    p = proto(
        protocaps=b"0.1 0.2 comp=zstd partial-pull", remote_host="1.2.3.4", remote_user="al ice"
    )
    assert p.name == b"http-v1"
    assert p.client() == b"remote:http:1.2.3.4:al%20ice"
    assert b"partial-pull" in p.getprotocaps()
    s = proto(transport="ssh", remote_host="5.6.7.8", remote_user="bob")
    assert s.name == b"ssh-v1" and s.client() == b"remote:ssh:5.6.7.8:bob"
    p.args = {b"key": b"v", b"*": {}}
    assert p.getargs(b"key *") == [b"v", {}]


# -- SSH: bundle2 compressed inside itself ----------------------------------------------------


#: What a real client's bundlecaps say, trimmed to the changegroup and stream parts.
BUNDLECAPS = b"HG20,bundle2=HG20%0Achangegroup%3D01%2C02%0Astream%3Dv2"


def _ssh_getbundle(
    repo: Path, engine: str, *, cache: Any = None, **options: bytes | None
) -> tuple[V1StreamStart, bytes]:
    """A getbundle answered as the SSH session asks for it; (start, body)."""
    from hgwire_tw.core.v1 import MEDIA_TYPE_V01, ResponseFormat
    from hgwire_tw.v1.runner import make_runner

    formats = StreamFormats(
        compressed=ResponseFormat(media_type=MEDIA_TYPE_V01, engine=engine, bundle2=True),
        uncompressed=ResponseFormat(media_type=MEDIA_TYPE_V01, engine="none", bundle2=True),
    )
    head = rb.log_nodes(repo, "max(not secret())")[0].encode()
    options = {"bundlecaps": BUNDLECAPS, "cg": b"1"} | options
    star = {k.encode(): v for k, v in options.items() if v is not None}
    args = {b"*": {b"heads": head, b"common": b"0" * 40} | star}
    the_call = call(repo, b"getbundle", args, formats, transport="ssh")
    items = list(make_runner(cache).run(open_repo(repo), the_call))
    start = items[0]
    assert isinstance(start, V1StreamStart)
    assert all(isinstance(i, bytes) for i in items[1:])
    return start, b"".join(items[1:])  # type: ignore[arg-type]


def _parts(body: bytes) -> list[tuple[bytes, bytes]]:
    """Each part's type and payload, as Mercurial's own bundle2 reader gets them."""
    from mercurial import bundle2

    unbundler = bundle2.getunbundler(make_ui(), io.BytesIO(body))
    return [(part.type, part.read()) for part in unbundler.iterparts()]


@pytest.mark.parametrize("engine", ["zstd", "zlib"])
def test_ssh_getbundle_compressed_inside_the_bundle2(rich_repo: Path, engine: str) -> None:
    """Mercurial's own reader gets exactly the parts of the raw answer from the
    compressed one, which is smaller and says its engine in its head."""
    start, body = _ssh_getbundle(rich_repo, engine)
    assert start.engine == engine
    plain_start, plain = _ssh_getbundle(rich_repo, "none")
    assert plain_start.engine == "none"
    assert b"Compression" not in plain[:64]
    code = {"zstd": b"ZS", "zlib": b"GZ"}[engine]
    assert b"Compression=" + code in body[:64]
    assert len(body) < len(plain)
    assert _parts(body) == _parts(plain)
    assert any(t == b"changegroup" for t, _ in _parts(body))


def test_ssh_getbundle_bundle1_stream_clone_and_errors_stay_raw(
    rich_repo: Path, tmp_path: Path
) -> None:
    """A bundle1 getbundle (a bare changegroup), a stream clone and an error reply are
    never touched."""
    start, body = _ssh_getbundle(rich_repo, "zstd", bundlecaps=b"HG10UN", cg=None)
    assert start.engine == "none" and not body.startswith(b"HG")
    # the rich repository has a secret changeset: no stream clone, an error:abort reply
    start, body = _ssh_getbundle(rich_repo, "zstd", stream=b"1", cg=b"0")
    assert start.engine == "none" and b"Compression" not in body[:64]
    assert [t for t, _ in _parts(body)] == [b"error:abort"]
    public = rb.make_linear_repo(tmp_path / "public", commits=3)
    start, body = _ssh_getbundle(public, "zstd", stream=b"1", cg=b"0")
    assert start.engine == "none" and b"Compression" not in body[:64]
    assert next(t for t, _ in _parts(body)) == b"stream2"


def test_ssh_getbundle_cache_hit_is_not_compressed_again(rich_repo: Path) -> None:
    """The second answer comes from the cache, byte for byte, naming the same engine;
    another engine is another entry."""
    from hgwire_tw.cache import MemoryStore

    cache = MemoryStore()
    first = _ssh_getbundle(rich_repo, "zstd", cache=cache)
    assert cache.stats.snapshot()["stores"] == 1
    again = _ssh_getbundle(rich_repo, "zstd", cache=cache)
    assert cache.stats.snapshot()["hits"] == 1
    assert again == first and first[0].engine == "zstd"
    other = _ssh_getbundle(rich_repo, "zlib", cache=cache)
    assert other[0].engine == "zlib" and cache.stats.snapshot()["stores"] == 2
    assert _parts(other[1]) == _parts(first[1])
