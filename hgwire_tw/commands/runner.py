"""Run a v2 command for a transport: permission, arguments, handler on the pool.

The runner is the one place where a command's outcome is turned into calls on the
transport's ``sink`` (all on the reactor thread): ``objects(batch)`` for output (it may
return a Deferred to push back), then exactly one of ``finished()`` or
``error(message, args)``. Nothing a command does can make ``run`` fail: user errors
(``CommandError``) are reported as they are; anything else is logged with its traceback
and reported as ``server error: %s``. A cancelled run (the client went away) reports
nothing further.

Each command runs on the pool lane its name calls for (``hgwire_tw.repo.lanes``), so
that discovery never waits for the transfers of other clients. A run whose client
stopped reading ends with ``StreamStalled`` (logged here at info): the transport cuts
its connection.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from hgwire_tw.cache.base import stored_while_streaming
from hgwire_tw.commands.cachekeys import cache_key_digest, server_salt
from hgwire_tw.commands.common import served_view
from hgwire_tw.commands.registry import (
    COMMANDS,
    CommandSpec,
    Handler,
    Permission,
    cache_state,
    normalize_args,
)
from hgwire_tw.core.cbor import EncodedCBOR, dumps_sequence
from hgwire_tw.core.errors import CommandError, PermissionDenied
from hgwire_tw.repo.lanes import Lane, command_lane
from hgwire_tw.repo.pool import StreamStalled
from hgwire_tw.repo.registry import ServedRepository

if TYPE_CHECKING:
    from hgwire_tw.cache import CacheEntry, ContentStore
    from hgwire_tw.redirects import Redirector

__all__ = ["CommandRunner", "CommandSink", "RepositoryRunner", "spec_lane"]

log = Logger()


class CommandSink(Protocol):
    """Where a command's outcome goes (called on the reactor thread)."""

    def objects(self, objs: list[object]) -> Deferred[Any] | None:
        """Output objects, in order; a returned Deferred delays the next batch."""

    def error(self, message: bytes, args: tuple[bytes, ...] = ()) -> None:
        """The command failed; ``message`` is a ``%s`` format with ``args``."""

    def finished(self) -> None:
        """The command completed; no more output."""

    def encoded(self, data: bytes) -> Deferred[Any] | None:
        """Pre-encoded CBOR output (a cache hit), sent as it is; may push back."""

    def redirect(self, location: Mapping[bytes, Any]) -> None:
        """Answer with a content redirect instead of output (the request is over)."""


class RepositoryRunner(Protocol):
    """The part of ``RepositoryPool`` the runner uses."""

    def iterate(
        self,
        served: ServedRepository,
        gen_fn: Any,
        args: Any,
        deliver: Any,
        *,
        write: bool = False,
        lane: Lane | None = None,
    ) -> Deferred[None]:
        """Stream ``gen_fn(repo, *args)`` to ``deliver`` (see ``RepositoryPool.iterate``)."""


def spec_lane(spec: CommandSpec) -> Lane:
    """The pool lane of command ``spec`` (``hgwire_tw.repo.lanes.command_lane``)."""
    return command_lane(spec.name, spec.permission.value.decode("ascii"))


def _invoke(repo: Any, handler: Handler, args: Mapping[bytes, object]) -> Iterator[object]:
    """Worker side: run ``handler`` on the server's view of ``repo``."""
    yield from handler(served_view(repo), args)


#: Objects encoded together on a miss (one CBOR encoder per group, not per object).
_GROUP_ITEMS = 256
_GROUP_BYTES = 128 * 1024


class _Raw(bytes):
    """Stored CBOR from a cache hit (worker → reactor); a bytes subclass so the pool's
    batching counts its size."""

    __slots__ = ()


class _Redirect:
    """The answer is a redirect to ``location`` (worker → reactor)."""

    __slots__ = ("location",)

    def __init__(self, location: dict[bytes, object]) -> None:
        self.location = location


def _estimate(obj: object) -> int:
    return len(obj) if isinstance(obj, (bytes, bytearray)) else 64


def _serve_entry(entry: CacheEntry) -> Iterator[object]:
    for chunk in entry.chunks():
        yield _Raw(chunk)


def _cached_invoke(
    repo: Any,
    spec: CommandSpec,
    args: Mapping[bytes, object],
    cache: ContentStore,
    redirector: Redirector | None,
    redirect: Mapping[bytes, object] | None,
    salt: bytes,
    repo_name: str | None = None,
) -> Iterator[object]:
    """Worker side of a cacheable command: key, lookup, then hit, redirect or tee."""
    view = served_view(repo)
    state = cache_state(spec, view, args)
    if state is None:
        yield from spec.handler(view, args)
        return
    state[b"server"] = salt
    key = cache_key_digest(state).decode("ascii")
    entry = cache.lookup(key)
    if entry is not None:
        target = redirector.choose(redirect, repo_name) if redirector is not None else None
        if target is not None and redirector is not None:
            try:
                where = redirector.publish(target, entry, repo_name)
            except Exception:
                log.failure("publishing cache entry {key} for a redirect failed", key=key)
                entry = cache.lookup(key)  # publish consumed it; answer inline
            else:
                log.info("v2 cache redirect {command} {key}", command=spec.name.decode(), key=key)
                yield _Redirect(where)
                return
        if entry is not None:
            log.info(
                "v2 cache hit {command} {key} {size} bytes",
                command=spec.name.decode(),
                key=key,
                size=entry.size,
            )
            yield from _serve_entry(entry)
            return
    for data in stored_while_streaming(cache, key, _groups(spec.handler(view, args))):
        yield EncodedCBOR(data)


def _groups(objs: Iterator[object]) -> Iterator[bytes]:
    """The CBOR encoding of ``objs``, a group of objects at a time (bounded by count and
    estimated size), so the worker encodes and the cache stores what the client gets."""
    group: list[object] = []
    size = 0
    for obj in objs:
        group.append(obj)
        size += _estimate(obj)
        if len(group) >= _GROUP_ITEMS or size >= _GROUP_BYTES:
            yield dumps_sequence(group)
            group, size = [], 0
    if group:
        yield dumps_sequence(group)


class _Delivery:
    """Reactor side of a cacheable run: routes hits, redirects and objects to the sink."""

    def __init__(self, sink: CommandSink) -> None:
        self.sink = sink
        self.redirected = False

    def __call__(self, batch: list[object]) -> Deferred[Any] | None:
        raw = [item for item in batch if isinstance(item, _Raw)]
        if raw:
            return self.sink.encoded(b"".join(raw))
        if len(batch) == 1 and isinstance(batch[0], _Redirect):
            self.redirected = True
            self.sink.redirect(batch[0].location)
            return None
        return self.sink.objects(batch)

    def finished(self) -> None:
        if not self.redirected:
            self.sink.finished()


def _text(value: object) -> bytes:
    text = str(value) or type(value).__name__
    return text.encode("utf-8", "replace")


def _bad_input(served: ServedRepository, name: bytes, exc: CommandError) -> None:
    # One info line per refused request, naming the command and (in the message) the
    # argument: never critical, as any client may send bad input.
    text = " ".join(exc.render().split())
    log.info(
        "v2 {repo} {command}: bad input: {error}",
        repo=served.name or "/",
        command=name.decode("utf-8", "replace")[:100],
        error=text if len(text) <= 300 else text[:300] + "...",
    )


class CommandRunner:
    """Dispatches v2 commands to their handlers on a ``RepositoryPool``."""

    def __init__(
        self,
        pool: RepositoryRunner,
        commands: Mapping[bytes, CommandSpec] = COMMANDS,
        *,
        cache: ContentStore | None = None,
        redirector: Redirector | None = None,
    ) -> None:
        """``pool`` runs handlers; ``commands`` is the command table (``build_commands``);
        ``cache`` stores cacheable responses; ``redirector`` answers hits with redirects."""
        self._pool = pool
        self._commands = commands
        self.cache = cache
        self.redirector = redirector
        self._salt: bytes | None = None

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
        redirect: Mapping[bytes, object] | None = None,
        who: str = "",
    ) -> Deferred[None]:
        """Run command ``name`` on ``served``, reporting to ``sink``; never fails, except
        with ``StreamStalled`` when the client stopped reading (the transport then cuts
        the connection).

        ``redirect`` is the request's ``{targets, hashes}`` map (``RunCommand.redirect``);
        ``who`` names the client (user, address) in log lines.

        Cancelling the returned Deferred stops the handler (its generator is closed on
        the worker) and nothing more is reported to the sink.
        """
        spec = self._commands.get(name)
        if spec is None:
            unknown = CommandError(b"wire protocol command not available: %s", (name,))
            _bad_input(served, name, unknown)
            return self._report_now(sink, unknown)
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
            _bad_input(served, name, exc)
            return self._report_now(sink, exc)

        if self.cache is not None and spec.cache_key is not None:
            if self._salt is None:
                self._salt = server_salt()
            delivery = _Delivery(sink)
            cargs = (
                spec,
                normalized,
                self.cache,
                self.redirector,
                redirect,
                self._salt,
                served.name,
            )
            d = self._pool.iterate(served, _cached_invoke, cargs, delivery, lane=spec_lane(spec))
            d.addCallbacks(
                lambda _: delivery.finished(),
                self._failed,
                errbackArgs=(sink, name, served, who),
            )
        else:
            # A PUSH command (pushkey) writes: as a write job it waits for the lock and
            # for the recovery of an abandoned transaction, as pushes do.
            lane = spec_lane(spec)
            d = self._pool.iterate(
                served,
                _invoke,
                (spec.handler, normalized),
                sink.objects,
                write=spec.permission is Permission.PUSH,
                lane=lane,
            )
            d.addCallbacks(
                lambda _: sink.finished(), self._failed, errbackArgs=(sink, name, served, who)
            )
        d.addErrback(self._sink_broke, name)
        return d

    def _report_now(self, sink: CommandSink, exc: CommandError) -> Deferred[None]:
        try:
            sink.error(exc.message, exc.args_)
        except Exception:
            log.failure("sink refused an error report")
        return succeed(None)

    def _failed(
        self,
        failure: Failure,
        sink: CommandSink,
        name: bytes,
        served: ServedRepository,
        who: str,
    ) -> Failure | None:
        exc = failure.value
        if isinstance(exc, CancelledError):
            return None
        if isinstance(exc, StreamStalled):
            # Nothing can be reported in-band to a client that does not read: the
            # failure goes on to the transport, which cuts the connection.
            log.info(
                "v2 {repo} {command} for {who}: transfer cut, {why}",
                repo=served.name or "/",
                command=name.decode("utf-8", "replace")[:100],
                who=who or "-",
                why=exc,
            )
            return failure
        if isinstance(exc, CommandError):
            _bad_input(served, name, exc)
            sink.error(exc.message, exc.args_)
            return None
        log.failure("command {command!r} failed", failure, command=name)
        sink.error(b"server error: %s", (_text(failure.value),))
        return None

    def _sink_broke(self, failure: Failure, name: bytes) -> Failure | None:
        # The sink itself raised while being told the outcome: log, never propagate.
        if isinstance(failure.value, StreamStalled):
            return failure  # for the transport (see ``_failed``)
        if not isinstance(failure.value, CancelledError):
            log.failure("reporting the outcome of {command!r} failed", failure, command=name)
        return None
