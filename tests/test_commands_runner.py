"""CommandRunner with a real RepositoryPool (real threads) and a test-driven reactor."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from hgwire_tw.commands.registry import COMMANDS, ArgSpec, CommandSpec, Permission
from hgwire_tw.commands.runner import CommandRunner
from hgwire_tw.core.errors import CommandError
from hgwire_tw.repo.pool import RepositoryPool
from hgwire_tw.repo.registry import ServedRepository
from tests import repobuilders


class RecordingSink:
    """Records what the runner reports; optionally stalls or breaks on objects()."""

    def __init__(self, *, stall: bool = False, broken: bool = False) -> None:
        self.objs: list[object] = []
        self.errors: list[tuple[bytes, tuple[bytes, ...]]] = []
        self.done = False
        self.stall = stall
        self.broken = broken
        self.pending: list[Deferred[None]] = []

    def objects(self, objs: list[object]) -> Deferred[None] | None:
        if self.broken:
            raise ConnectionError("transport gone")
        self.objs.extend(objs)
        if self.stall:
            d: Deferred[None] = Deferred()
            self.pending.append(d)
            return d
        return None

    def error(self, message: bytes, args: tuple[bytes, ...] = ()) -> None:
        self.errors.append((message, tuple(args)))

    def finished(self) -> None:
        self.done = True

    @property
    def outcome(self) -> bool:
        return self.done or bool(self.errors)


def run(
    pump: Any,
    runner: CommandRunner,
    served: ServedRepository,
    name: bytes,
    args: dict[bytes, object] | None = None,
    *,
    may_push: bool = False,
    sink: RecordingSink | None = None,
) -> RecordingSink:
    """Run a command to completion and return the sink."""
    sink = sink or RecordingSink()
    d = runner.run(served, name, args or {}, may_push=may_push, sink=sink)
    assert pump.result_of(d) is None
    return sink


def test_heads_through_runner(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """A command's objects reach the sink, then finished()."""
    sink = run(pump_reactor, CommandRunner(pool), served, b"heads")
    assert sink.done and not sink.errors
    assert len(sink.objs) == 1 and len(sink.objs[0]) == 2


def test_unknown_command(pool: RepositoryPool, pump_reactor: Any, served: ServedRepository) -> None:
    """An unknown command is an error report, not an exception."""
    sink = run(pump_reactor, CommandRunner(pool), served, b"nope")
    assert sink.errors == [(b"wire protocol command not available: %s", (b"nope",))]


def test_bad_arguments(pool: RepositoryPool, pump_reactor: Any, served: ServedRepository) -> None:
    """Argument errors are reported with the §3.3 text."""
    sink = run(pump_reactor, CommandRunner(pool), served, b"heads", {b"x": 1})
    assert sink.errors == [(b"unsupported argument to command: x", ())]


def test_pushkey_needs_push_permission(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """pushkey without may_push is refused and changes nothing; with it, it works."""
    target = repobuilders.log_nodes(served.path, "0")[0].encode()
    old = repobuilders.log_nodes(served.path, "main")[0].encode()
    args = {b"namespace": b"bookmarks", b"key": b"main", b"old": old, b"new": target}
    runner = CommandRunner(pool)
    sink = run(pump_reactor, runner, served, b"pushkey", args)
    assert sink.errors == [(b"insufficient permissions to execute command: %s", (b"pushkey",))]
    assert repobuilders.log_nodes(served.path, "main")[0].encode() == old
    sink = run(pump_reactor, runner, served, b"pushkey", args, may_push=True)
    assert sink.objs == [True] and sink.done
    assert repobuilders.log_nodes(served.path, "main")[0].encode() == target
    # Every worker sees the move (per-thread repositories are refreshed).
    for _ in range(4):
        (marks,) = run(pump_reactor, runner, served, b"listkeys", {b"namespace": b"bookmarks"}).objs
        assert marks[b"main"] == target


def test_push_commands_run_as_write_jobs(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """A PUSH command (pushkey) runs on the pool's write workers, which wait for the lock
    and roll back an abandoned transaction first, as pushes do; PULL ones on the read
    workers."""
    assert COMMANDS[b"pushkey"].permission is Permission.PUSH

    def where(repo: Any, args: Any) -> Iterator[object]:
        yield threading.current_thread().name

    table = {
        **COMMANDS,
        b"w": CommandSpec(b"w", {}, Permission.PUSH, where),
        b"r": CommandSpec(b"r", {}, Permission.PULL, where),
    }
    runner = CommandRunner(pool, table)
    (writer,) = run(pump_reactor, runner, served, b"w", may_push=True).objs
    (reader,) = run(pump_reactor, runner, served, b"r").objs
    assert "hgwire-repo-write" in writer and "hgwire-repo-write" not in reader  # type: ignore[operator]


def test_command_error_from_handler(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """A CommandError raised by a handler keeps its message and args."""
    sink = run(pump_reactor, CommandRunner(pool), served, b"lookup", {b"key": b"nope"})
    assert sink.errors == [(b"unknown revision '%s'", (b"nope",))]
    assert sink.objs == [] and not sink.done


def _table(handler: Any) -> dict[bytes, CommandSpec]:
    return {
        **COMMANDS,
        b"boom": CommandSpec(b"boom", {b"n": ArgSpec(b"int", 0)}, Permission.PULL, handler),
    }


def test_unexpected_exception_is_server_error_and_logged(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """Any other exception is logged and reported as `server error: %s`."""

    def boom(repo: Any, args: Any) -> Iterator[object]:
        yield b"partial"
        raise ZeroDivisionError("kaput")

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        sink = run(pump_reactor, CommandRunner(pool, _table(boom)), served, b"boom")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert sink.objs == [b"partial"]
    assert sink.errors == [(b"server error: %s", (b"kaput",))]
    assert any(
        e.get("log_failure") is not None and e["log_failure"].check(ZeroDivisionError)
        for e in events
    )


def test_broken_sink_never_crashes_caller(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """A sink that raises gets an error report; run()'s Deferred still succeeds."""
    sink = run(pump_reactor, CommandRunner(pool), served, b"heads", sink=RecordingSink(broken=True))
    assert sink.errors and sink.errors[0][0] == b"server error: %s"


def test_cancel_stops_command(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """Cancelling a running command reports nothing more and frees the worker."""

    def forever(repo: Any, args: Any) -> Iterator[object]:
        while True:
            yield b"x" * 1000

    sink = RecordingSink(stall=True)
    runner = CommandRunner(pool, _table(forever))
    d = runner.run(served, b"boom", {}, may_push=False, sink=sink)
    pump_reactor.pump_until(lambda: bool(sink.pending))
    d.cancel()
    assert pump_reactor.result_of(d) is None
    assert not sink.outcome
    assert run(pump_reactor, runner, served, b"heads").done


def test_error_from_handler_arguments(
    pool: RepositoryPool, pump_reactor: Any, served: ServedRepository
) -> None:
    """(sanity) CommandError subclasses render with their args."""
    assert CommandError(b"a %s", (b"b",)).render() == "a b"
