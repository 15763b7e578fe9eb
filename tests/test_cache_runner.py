"""Dispatch-layer caching in the CommandRunner, with a real pool and real repositories:
hits, keys that follow the repository, errors never cached, damaged disk entries
refused, restarts, and redirects to the blob store."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from hgwire_tw.blobstore import BlobStore
from hgwire_tw.cache import DiskStore, MemoryStore
from hgwire_tw.commands.registry import COMMANDS, CommandSpec, Permission
from hgwire_tw.commands.runner import CommandRunner
from hgwire_tw.core import cbor
from hgwire_tw.core.errors import CommandError
from hgwire_tw.redirects import Redirector
from hgwire_tw.repo.pool import RepositoryPool
from hgwire_tw.repo.registry import ServedRepository
from tests import repobuilders

FIELDS = {b"bookmarks", b"parents", b"phase", b"revision"}
ACCEPTS = {b"targets": [b"hgwire"], b"hashes": [b"sha256", b"sha1"]}


class CacheSink:
    """Records objects, pre-encoded bytes, redirects and the outcome."""

    def __init__(self) -> None:
        self.objs: list[object] = []
        self.raw = bytearray()
        self.location: Mapping[bytes, Any] | None = None
        self.errors: list[tuple[bytes, tuple[bytes, ...]]] = []
        self.done = False

    def objects(self, objs: list[object]) -> Deferred[None] | None:
        self.objs.extend(objs)
        return None

    def encoded(self, data: bytes) -> Deferred[None] | None:
        self.raw += data
        return None

    def redirect(self, location: Mapping[bytes, Any]) -> None:
        self.location = location

    def error(self, message: bytes, args: tuple[bytes, ...] = ()) -> None:
        self.errors.append((message, tuple(args)))

    def finished(self) -> None:
        self.done = True

    def decoded(self) -> list[object]:
        """The output objects, however they were sent."""
        if self.raw:
            assert not self.objs
            return cbor.loads_sequence(bytes(self.raw))
        return cbor.loads_sequence(cbor.dumps_sequence(self.objs))


def run(
    pump: Any,
    runner: CommandRunner,
    served: ServedRepository,
    name: bytes,
    args: dict[bytes, object],
    redirect: dict[bytes, object] | None = None,
) -> CacheSink:
    """Run a command to completion; return the sink."""
    sink = CacheSink()
    d = runner.run(served, name, args, may_push=False, sink=sink, redirect=redirect)
    assert pump.result_of(d) is None
    return sink


def everything(repo: Path) -> dict[bytes, object]:
    """changesetdata arguments for the whole repository."""
    heads = [bytes.fromhex(n) for n in repobuilders.log_nodes(repo, "heads(not secret())")]
    return {
        b"revisions": [{b"type": b"changesetdagrange", b"roots": [], b"heads": heads}],
        b"fields": set(FIELDS),
    }


def test_identical_requests_hit(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """The second identical request is a hit served pre-encoded, equal to the first."""
    cache = MemoryStore()
    runner = CommandRunner(pool, cache=cache)
    args = everything(served.path)
    first = run(pump_reactor, runner, served, b"changesetdata", args)
    assert first.done and first.objs and not first.raw
    second = run(pump_reactor, runner, served, b"changesetdata", args)
    assert second.done and second.raw and not second.objs
    assert second.decoded() == first.decoded()
    plain = run(pump_reactor, CommandRunner(pool), served, b"changesetdata", args)
    assert plain.decoded() == first.decoded()
    assert cache.stats.snapshot()["hits"] == 1 and cache.stats.snapshot()["stores"] == 1


def test_uncacheable_commands_bypass(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """Commands without a key function never touch the store."""
    cache = MemoryStore()
    runner = CommandRunner(pool, cache=cache)
    for _ in range(2):
        assert run(pump_reactor, runner, served, b"heads", {}).done
    assert cache.stats.snapshot()["misses"] == 0 and cache.stats.snapshot()["stores"] == 0


def test_new_commit_and_bookmark_change_the_key(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """After a commit or a bookmark move the same request misses and sees the new state."""
    cache = MemoryStore()
    runner = CommandRunner(pool, cache=cache)
    args = everything(served.path)
    before = run(pump_reactor, runner, served, b"changesetdata", args).decoded()
    repobuilders.hg("bookmark", "-f", "-r", "0", "fresh-bm", cwd=served.path)
    after_bm = run(pump_reactor, runner, served, b"changesetdata", args)
    assert not after_bm.raw and b"fresh-bm" in repr(after_bm.decoded()).encode()
    repobuilders.hg("update", "-q", "-r", "main", cwd=served.path)
    (served.path / "pushed.txt").write_text("pushed\n")
    repobuilders.hg("commit", "-A", "-q", "-m", "pushed", cwd=served.path)
    after_commit = run(pump_reactor, runner, served, b"changesetdata", everything(served.path))
    assert not after_commit.raw and len(after_commit.decoded()) > len(before)
    again = run(pump_reactor, runner, served, b"changesetdata", args)
    assert not again.raw  # old args, new repository state: a new key too
    assert cache.stats.snapshot()["hits"] == 0


def test_errors_are_not_cached(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """A command that fails (unknown node) stores nothing and fails again; the node is
    refused before the cache is even looked up (the served check)."""
    cache = MemoryStore()
    runner = CommandRunner(pool, cache=cache)
    args = {b"path": b"a.txt", b"nodes": [b"\x01" * 20], b"fields": {b"revision"}}
    for _ in range(2):
        sink = run(pump_reactor, runner, served, b"filedata", args)
        assert sink.errors and not sink.done
    stats = cache.stats.snapshot()
    assert stats["stores"] == 0 and stats["hits"] == 0 and stats["misses"] == 0


def test_failure_after_output_leaves_no_entry(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """A command that fails after sending objects aborts its entry."""

    def flaky(repo: Any, args: Mapping[bytes, Any]) -> Iterator[object]:
        yield {b"totalitems": 2}
        yield b"x" * 300_000
        raise CommandError(b"broke half-way")

    spec = CommandSpec(b"flaky", {}, Permission.PULL, flaky, cache_key=lambda r, a: {b"k": 1})
    cache = MemoryStore()
    runner = CommandRunner(pool, {b"flaky": spec}, cache=cache)
    for _ in range(2):
        sink = run(pump_reactor, runner, served, b"flaky", {})
        assert sink.objs and sink.errors == [(b"broke half-way", ())]
    stats = cache.stats.snapshot()
    assert stats["stores"] == 0 and stats["aborts"] == 2 and stats["hits"] == 0


def test_corrupt_disk_entry_refused_and_answered(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository, tmp_path: Path
) -> None:
    """A damaged disk entry is discarded; the command runs and answers correctly."""
    cache = DiskStore(tmp_path / "cache")
    runner = CommandRunner(pool, cache=cache)
    args = everything(served.path)
    good = run(pump_reactor, runner, served, b"changesetdata", args).decoded()
    (entry,) = [p for p in (tmp_path / "cache").glob("*/*")]
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0x55
    entry.write_bytes(bytes(data))
    sink = run(pump_reactor, runner, served, b"changesetdata", args)
    assert sink.done and not sink.raw and sink.decoded() == good
    stats = cache.stats.snapshot()
    assert stats["discarded"] == 1 and stats["stores"] == 2
    assert run(pump_reactor, runner, served, b"changesetdata", args).decoded() == good


def test_disk_cache_survives_restart(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository, tmp_path: Path
) -> None:
    """A new runner and store on the same directory serve the old entry as a hit."""
    args = everything(served.path)
    good = run(
        pump_reactor,
        CommandRunner(pool, cache=DiskStore(tmp_path / "c")),
        served,
        b"changesetdata",
        args,
    ).decoded()
    fresh = DiskStore(tmp_path / "c")
    sink = run(pump_reactor, CommandRunner(pool, cache=fresh), served, b"changesetdata", args)
    assert sink.raw and sink.decoded() == good and fresh.stats.snapshot()["hits"] == 1


def test_redirect_from_second_request(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository, tmp_path: Path
) -> None:
    """The first request streams and fills; the next is a redirect to a published blob
    whose bytes, size and SHA-256 match the response."""
    blobs = BlobStore(tmp_path / "blobs", "http://cdn.example/b/")
    redirector = Redirector(blobs, embedded=True)
    runner = CommandRunner(pool, COMMANDS, cache=MemoryStore(), redirector=redirector)
    args = everything(served.path)
    first = run(pump_reactor, runner, served, b"changesetdata", args, ACCEPTS)
    assert first.location is None and first.done
    second = run(pump_reactor, runner, served, b"changesetdata", args, ACCEPTS)
    where = second.location
    assert where is not None and not second.done and not second.raw
    url = where[b"url"].decode()
    assert url.startswith("http://cdn.example/b/") and url.endswith(".cbor")
    blob = (tmp_path / "blobs" / url.rsplit("/", 1)[1]).read_bytes()
    assert where[b"mediatype"] == b"application/mercurial-cbor" and where[b"size"] == len(blob)
    assert where[b"fullhashes"] == [[b"sha256", hashlib.sha256(blob).digest()]]
    assert cbor.loads_sequence(blob) == first.decoded()
    third = run(pump_reactor, runner, served, b"changesetdata", args, ACCEPTS)
    assert third.location == where and redirector.published == 1 and redirector.redirects == 2


@pytest.mark.parametrize(
    "accepts",
    [
        None,
        {b"targets": [], b"hashes": [b"sha256"]},
        {b"targets": [b"hgwire"], b"hashes": [b"sha1"]},
    ],
)
def test_no_redirect_unless_target_and_hash_accepted(
    pool: RepositoryPool,
    pump_reactor: Any,
    served: ServedRepository,
    tmp_path: Path,
    accepts: dict[bytes, object] | None,
) -> None:
    """Without an accepted target and sha256 a hit is served inline."""
    redirector = Redirector(BlobStore(tmp_path / "blobs", "http://cdn.example/"), embedded=True)
    runner = CommandRunner(pool, COMMANDS, cache=MemoryStore(), redirector=redirector)
    args = everything(served.path)
    run(pump_reactor, runner, served, b"changesetdata", args, accepts)
    sink = run(pump_reactor, runner, served, b"changesetdata", args, accepts)
    assert sink.location is None and sink.raw and sink.done
