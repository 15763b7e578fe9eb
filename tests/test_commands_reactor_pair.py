"""End to end in memory: ClientFrameReactor → ServerFrameReactor → CommandRunner → real repo.

Frames travel between the two reactors as bytes; the server side drives the runner with
a sink that turns outcomes into ``response_*`` calls, as a transport would. A v2 "clone"
(heads, known, changesetdata, manifestdata, filesdata) is rebuilt and hash-checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mercurial import mdiff
from mercurial.utils.storageutil import hashrevisionsha1

from hgwire_tw.commands.registry import COMMANDS, CommandSpec, Permission
from hgwire_tw.commands.runner import CommandRunner
from hgwire_tw.core.cbor import IndefiniteChunk
from hgwire_tw.core.reactor import (
    ClientFrameReactor,
    DuplexMode,
    ResponseError,
    ResponseFinished,
    ResponseObjects,
    RunCommand,
    SendFrames,
    ServerFrameReactor,
)
from hgwire_tw.repo.pool import RepositoryPool
from hgwire_tw.repo.registry import ServedRepository

NULL = b"\0" * 20


class ReactorSink:
    """The runner's sink for one request: outcomes become server reactor calls."""

    def __init__(self, pair: Pair, request_id: int) -> None:
        self.pair = pair
        self.request_id = request_id

    def objects(self, objs: list[object]) -> None:
        self.pair.to_client(self.pair.server.response_objects(self.request_id, objs))

    def error(self, message: bytes, args: tuple[bytes, ...] = ()) -> None:
        self.pair.to_client(self.pair.server.response_error(self.request_id, message, args))

    def finished(self) -> None:
        self.pair.to_client(self.pair.server.response_end(self.request_id))


class Pair:
    """A client and a server reactor joined in memory, with a runner behind the server."""

    def __init__(
        self,
        pump: Any,
        runner: CommandRunner,
        served: ServedRepository,
        *,
        may_push: bool = False,
        mode: DuplexMode = DuplexMode.FULL,
    ) -> None:
        self.pump = pump
        self.runner = runner
        self.served = served
        self.may_push = may_push
        self.client = ClientFrameReactor()
        self.server = ServerFrameReactor(mode=mode)
        self.results: dict[int, list[object]] = {}
        self.ends: dict[int, object] = {}
        self.running: list[Any] = []
        self.frame_sizes: list[int] = []

    def to_client(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, SendFrames):
                self.frame_sizes.extend(len(f.payload) for f in action.frames)
                for event in self.client.receive_data(action.data):
                    self._client_event(event)
            else:
                raise AssertionError(f"unexpected server action {action!r}")

    def _client_event(self, event: object) -> None:
        if isinstance(event, ResponseObjects):
            self.results.setdefault(event.request_id, []).extend(event.objects)
        elif isinstance(event, (ResponseFinished, ResponseError)):
            self.ends[event.request_id] = event
        else:
            raise AssertionError(f"unexpected client event {event!r}")

    def to_server(self, data: bytes, *, end: bool = False) -> None:
        actions = list(self.server.receive_data(data))
        if end:
            actions += self.server.end_of_input()
        for action in actions:
            if isinstance(action, RunCommand):
                sink = ReactorSink(self, action.request_id)
                self.running.append(
                    self.runner.run(
                        self.served, action.name, action.args, may_push=self.may_push, sink=sink
                    )
                )
            else:
                self.to_client([action])

    def call_many(self, calls: list[tuple[bytes, dict[bytes, object]]]) -> list[int]:
        """Send several commands in one go; run them all to completion."""
        ids, data = [], b""
        for name, args in calls:
            rid, actions = self.client.call_command(name, args)
            ids.append(rid)
            data += b"".join(a.data for a in actions)
        self.to_server(data, end=self.server.mode is DuplexMode.HALF)
        self.pump.pump_until(lambda: all(i in self.ends for i in ids))
        return ids

    def call(self, name: bytes, args: dict[bytes, object] | None = None) -> list[object]:
        """Run one command; return its objects or raise its error."""
        (rid,) = self.call_many([(name, args or {})])
        end = self.ends[rid]
        if isinstance(end, ResponseError):
            raise CallFailed(end)
        return self.results.get(rid, [])


class CallFailed(Exception):
    """The command answered with an error."""

    def __init__(self, event: ResponseError) -> None:
        super().__init__(event.message % event.args if event.args else event.message)
        self.event = event


@pytest.fixture
def pair(pool: RepositoryPool, pump_reactor: Any, rich_repo_template: Path) -> Pair:
    """A FULL-duplex pair serving the rich repository, pull only."""
    return Pair(pump_reactor, CommandRunner(pool), ServedRepository("", rich_repo_template))


def records(objs: Iterator[object], count: int) -> Iterator[tuple[dict[bytes, Any], bytes]]:
    """(record, payload) pairs; every record here carries exactly one payload."""
    for _ in range(count):
        record = next(objs)
        assert isinstance(record, dict)
        payload = next(objs)
        assert isinstance(payload, bytes)
        assert [[record[b"fieldsfollowing"][0][0], len(payload)]] == record[b"fieldsfollowing"]
        yield record, payload


def apply(record: dict[bytes, Any], payload: bytes, texts: dict[bytes, bytes]) -> bytes:
    """Rebuild a revision's text and check its hash."""
    if b"deltabasenode" in record:
        text = mdiff.patches(texts[record[b"deltabasenode"]], [payload])
    else:
        text = payload
    assert hashrevisionsha1(text, *record[b"parents"]) == record[b"node"]
    texts[record[b"node"]] = text
    return text


def test_clone_through_reactors(pair: Pair) -> None:
    """The 6.0.3 client's clone sequence works end to end and every revision verifies."""
    heads_id, known_id = pair.call_many([(b"heads", {}), (b"known", {b"nodes": []})])
    (heads,) = pair.results[heads_id]
    assert pair.results[known_id] == [b""]
    assert len(heads) == 2

    objs = iter(
        pair.call(
            b"changesetdata",
            {
                b"revisions": [
                    {b"type": b"changesetdagrange", b"roots": [], b"heads": sorted(heads)}
                ],
                b"fields": {b"bookmarks", b"parents", b"phase", b"revision"},
            },
        )
    )
    total = next(objs)[b"totalitems"]
    changesets = [
        r
        for r, text in records(objs, total)
        if hashrevisionsha1(text, *r[b"parents"]) == r[b"node"]
    ]
    assert len(changesets) == total == 10
    assert {b for r in changesets for b in r.get(b"bookmarks", [])} == {b"main", b"stable-bm"}

    from mercurial import hg

    from hgwire_tw.repo.ui import make_ui

    repo = hg.repository(make_ui(), bytes(pair.served.path)).filtered(b"served")
    mnodes = list(dict.fromkeys(repo[r[b"node"]].manifestnode() for r in changesets))
    objs = iter(
        pair.call(
            b"manifestdata",
            {
                b"tree": b"",
                b"nodes": mnodes,
                b"haveparents": True,
                b"fields": {b"parents", b"revision"},
            },
        )
    )
    assert next(objs) == {b"totalitems": len(mnodes)}
    texts: dict[bytes, bytes] = {}
    for record, payload in records(objs, len(mnodes)):
        apply(record, payload, texts)

    objs = iter(
        pair.call(
            b"filesdata",
            {
                b"revisions": [
                    {b"type": b"changesetexplicit", b"nodes": [r[b"node"] for r in changesets]}
                ],
                b"haveparents": True,
                b"fields": {b"parents", b"revision"},
            },
        )
    )
    header = next(objs)
    seen = 0
    for _ in range(header[b"totalpaths"]):
        entry = next(objs)
        ftexts: dict[bytes, bytes] = {}
        for record, payload in records(objs, entry[b"totalitems"]):
            apply(record, payload, ftexts)
            seen += 1
    assert seen == header[b"totalitems"]
    assert list(objs) == []
    assert max(pair.frame_sizes) <= 32768


def test_errors_through_reactors(pair: Pair) -> None:
    """Command errors come back as {status: error}; the connection stays usable."""
    with pytest.raises(CallFailed) as info:
        pair.call(b"lookup", {b"key": b"nope"})
    assert info.value.event.kind == b"command"
    assert info.value.event.message % info.value.event.args == b"unknown revision 'nope'"
    with pytest.raises(CallFailed) as info:
        pair.call(b"pushkey", {b"namespace": b"bookmarks", b"key": b"x", b"old": b"", b"new": b""})
    assert info.value.event.message % info.value.event.args == (
        b"insufficient permissions to execute command: pushkey"
    )
    with pytest.raises(CallFailed) as info:
        pair.call(b"heads", {b"bogus": True})
    assert info.value.event.message == b"unsupported argument to command: bogus"
    assert len(pair.call(b"heads")[0]) == 2


def test_server_error_after_output(
    pool: RepositoryPool, pump_reactor: Any, rich_repo_template: Path
) -> None:
    """A failure mid-stream arrives as an error-response frame after the objects."""

    def half(repo: Any, args: Any) -> Iterator[object]:
        yield {b"totalitems": 2}
        raise RuntimeError("disk on fire")

    table = {**COMMANDS, b"half": CommandSpec(b"half", {}, Permission.PULL, half)}
    p = Pair(pump_reactor, CommandRunner(pool, table), ServedRepository("", rich_repo_template))
    (rid,) = p.call_many([(b"half", {})])
    assert p.results[rid] == [{b"totalitems": 2}]
    end = p.ends[rid]
    assert isinstance(end, ResponseError) and end.kind == b"server"
    assert end.message % end.args == b"server error: disk on fire"


def test_rawstorefiledata_through_reactors(
    pool: RepositoryPool, pump_reactor: Any, linear_repo_template: Path
) -> None:
    """Store files arrive as indefinite byte strings equal to the files on disk."""
    p = Pair(
        pump_reactor,
        CommandRunner(pool),
        ServedRepository("", linear_repo_template),
        mode=DuplexMode.HALF,
    )
    objs = iter(p.call(b"rawstorefiledata", {b"files": [b"changelog", b"manifestlog"]}))
    header = next(objs)
    store = linear_repo_template / ".hg" / "store"
    for _ in range(header[b"filecount"]):
        meta = next(objs)
        data = b""
        while True:
            chunk = next(objs)
            assert isinstance(chunk, IndefiniteChunk)
            data += chunk.data
            if chunk.is_last:
                break
        assert data == (store / meta[b"path"].decode()).read_bytes()
        assert len(data) == meta[b"size"]
    assert list(objs) == []


def test_pushkey_through_reactors(pool: RepositoryPool, pump_reactor: Any, rich_repo: Path) -> None:
    """With push permission, pushkey moves a bookmark and listkeys sees it."""
    p = Pair(pump_reactor, CommandRunner(pool), ServedRepository("", rich_repo), may_push=True)
    (marks,) = p.call(b"listkeys", {b"namespace": b"bookmarks"})
    (target,) = p.call(b"lookup", {b"key": b"0"})
    assert p.call(
        b"pushkey",
        {
            b"namespace": b"bookmarks",
            b"key": b"main",
            b"old": marks[b"main"],
            b"new": target.hex().encode(),
        },
    ) == [True]
    (after,) = p.call(b"listkeys", {b"namespace": b"bookmarks"})
    assert after[b"main"] == target.hex().encode()
