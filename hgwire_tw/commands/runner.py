"""Run a v2 command for a transport: permission, arguments, handler on the pool.

The runner is the one place where a command's outcome is turned into calls on the
transport's ``sink`` (all on the reactor thread): ``objects(batch)`` for output (it may
return a Deferred to push back), then exactly one of ``finished()`` or
``error(message, args)``. Nothing a command does can make ``run`` fail: user errors
(``CommandError``) are reported as they are; anything else is logged with its traceback
and reported as ``server error: %s``. A cancelled run (the client went away) reports
nothing further.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from hgwire_tw.commands.common import served_view
from hgwire_tw.commands.registry import COMMANDS, CommandSpec, Handler, Permission, normalize_args
from hgwire_tw.core.errors import CommandError, PermissionDenied
from hgwire_tw.repo.registry import ServedRepository

__all__ = ["CommandRunner", "CommandSink", "RepositoryRunner"]

log = Logger()


class CommandSink(Protocol):
    """Where a command's outcome goes (called on the reactor thread)."""

    def objects(self, objs: list[object]) -> Deferred[Any] | None:
        """Output objects, in order; a returned Deferred delays the next batch."""

    def error(self, message: bytes, args: tuple[bytes, ...] = ()) -> None:
        """The command failed; ``message`` is a ``%s`` format with ``args``."""

    def finished(self) -> None:
        """The command completed; no more output."""


class RepositoryRunner(Protocol):
    """The part of ``RepositoryPool`` the runner uses."""

    def iterate(
        self,
        served: ServedRepository,
        gen_fn: Any,
        args: Any,
        deliver: Any,
    ) -> Deferred[None]:
        """Stream ``gen_fn(repo, *args)`` to ``deliver`` (see ``RepositoryPool.iterate``)."""


def _invoke(repo: Any, handler: Handler, args: Mapping[bytes, object]) -> Iterator[object]:
    """Worker side: run ``handler`` on the server's view of ``repo``."""
    yield from handler(served_view(repo), args)


def _text(value: object) -> bytes:
    text = str(value) or type(value).__name__
    return text.encode("utf-8", "replace")


class CommandRunner:
    """Dispatches v2 commands to their handlers on a ``RepositoryPool``."""

    def __init__(
        self, pool: RepositoryRunner, commands: Mapping[bytes, CommandSpec] = COMMANDS
    ) -> None:
        """``pool`` runs handlers; ``commands`` is the command table (``build_commands``)."""
        self._pool = pool
        self._commands = commands

    def spec(self, name: bytes) -> CommandSpec | None:
        """The specification of command ``name``, if there is one."""
        return self._commands.get(name)

    def run(
        self,
        served: ServedRepository,
        name: bytes,
        args: Mapping[bytes, object],
        *,
        may_push: bool,
        sink: CommandSink,
    ) -> Deferred[None]:
        """Run command ``name`` on ``served``, reporting to ``sink``; never fails.

        Cancelling the returned Deferred stops the handler (its generator is closed on
        the worker) and nothing more is reported to the sink.
        """
        spec = self._commands.get(name)
        if spec is None:
            return self._report_now(
                sink, CommandError(b"wire protocol command not available: %s", (name,))
            )
        if spec.permission is Permission.PUSH and not may_push:
            denied = PermissionDenied(f"insufficient permissions to execute command: {name!r}")
            log.info("refused {command}: {error}", command=name, error=denied)
            return self._report_now(
                sink,
                CommandError(b"insufficient permissions to execute command: %s", (name,)),
            )
        try:
            normalized = normalize_args(spec, args)
        except CommandError as exc:
            return self._report_now(sink, exc)

        d = self._pool.iterate(served, _invoke, (spec.handler, normalized), sink.objects)
        d.addCallbacks(lambda _: sink.finished(), self._failed, errbackArgs=(sink, name))
        d.addErrback(self._sink_broke, name)
        return d

    def _report_now(self, sink: CommandSink, exc: CommandError) -> Deferred[None]:
        try:
            sink.error(exc.message, exc.args_)
        except Exception:
            log.failure("sink refused an error report")
        return succeed(None)

    def _failed(self, failure: Failure, sink: CommandSink, name: bytes) -> None:
        exc = failure.value
        if isinstance(exc, CancelledError):
            return None
        if isinstance(exc, CommandError):
            sink.error(exc.message, exc.args_)
            return None
        log.failure("command {command!r} failed", failure, command=name)
        sink.error(b"server error: %s", (_text(failure.value),))
        return None

    def _sink_broke(self, failure: Failure, name: bytes) -> None:
        # The sink itself raised while being told the outcome: log, never propagate.
        if not isinstance(failure.value, CancelledError):
            log.failure("reporting the outcome of {command!r} failed", failure, command=name)
