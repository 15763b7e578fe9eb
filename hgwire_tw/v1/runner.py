"""Run one ``V1Call`` on a worker thread: the one way v1 commands are executed.

``V1Runner.run(repo, call)`` is the generator a call goes through
``RepositoryPool.iterate`` with (``start_call``). It makes the call's ``V1Protocol``
from the transport's facts, prepares the command (its one permission check), runs it,
and yields the result or, for a stream result, a ``V1StreamStart`` followed by the body
in pieces of about ``STREAM_PIECE`` bytes, compressed here, on the worker thread, as
the transport consumes them (nothing is built whole in memory). Over HTTP the whole
body is compressed as its media type says; over SSH (a format with ``bundle2`` set) a
bundle2 is compressed inside itself; a stream without a format goes out raw. Last come
the records of what the command did besides answering (``V1RemoteOutput``,
``V1ProtoCaps``: SSH only). The command's own generator is closed when the run is, on
the same worker thread.

A runner's stages (``prepare``, ``execute``, ``respond``) are public so that a
decorator can put itself between them without repeating any: ``CachingV1Runner``
(``hgwire_tw.v1.cache``) looks a ``getbundle`` answer up after ``prepare``.
``start_call(ctx, call, deliver)`` runs a call through the service's pool (and its
response cache) on the lane its command belongs to (``hgwire_tw.repo.lanes``), counting
it in the metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from twisted.logger import Logger

from hgwire_tw.core.v1 import MEDIA_TYPE_V01
from hgwire_tw.repo.lanes import Lane, command_lane
from hgwire_tw.repo.pool import StreamStalled
from hgwire_tw.v1 import dispatch
from hgwire_tw.v1.call import StreamFormats, V1Call
from hgwire_tw.v1.dispatch import STREAM_PIECE, Prepared, close_chunks, encode_stream, stream_body
from hgwire_tw.v1.protocol import V1Protocol
from hgwire_tw.v1.results import (
    V1LegacyStream,
    V1OutOfBandError,
    V1ProtoCaps,
    V1PushError,
    V1PushResult,
    V1RemoteOutput,
    V1Result,
    V1Stream,
    V1StreamStart,
)

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from hgwire_tw.cache import ContentStore
    from hgwire_tw.context import ServerContext

__all__ = ["V1Runner", "V1Runs", "call_lane", "make_runner", "start_call"]

log = Logger()


class V1Runs(Protocol):
    """Something that runs v1 calls: ``V1Runner`` or a decorator of one."""

    def run(self, repo: Any, call: V1Call) -> Iterator[object]:
        """Run ``call`` on the worker thread's ``repo``, yielding what goes to the client."""


class V1Runner:
    """Runs v1 calls on Mercurial's own command functions (see the module docs)."""

    def __init__(self, *, piece: int = STREAM_PIECE) -> None:
        """``piece``: about how many bytes of a stream body each yielded piece holds."""
        self.piece = piece

    def run(self, repo: Any, call: V1Call) -> Iterator[object]:
        """The whole run: ``prepare``, ``execute``, ``respond``."""
        prepared = self.prepare(repo, call)
        result = yield from self.execute(prepared)
        yield from self.respond(prepared, result, call.formats)

    def result(self, repo: Any, call: V1Call) -> V1Result:
        """Just the command's result, for ``RepositoryPool.run`` (a string answer such
        as ``capabilities``; nothing of a stream is read)."""
        return dispatch.execute(self.prepare(repo, call))

    # -- stages ------------------------------------------------------------------------

    def prepare(self, repo: Any, call: V1Call) -> Prepared:
        """Bind the call's protocol handler to ``repo`` and check the command's
        permission against the call's grant (``PermissionDenied``)."""
        return dispatch.prepare(repo, call.name, call.args, V1Protocol(call.facts))

    def execute(self, prepared: Prepared) -> Generator[object, None, V1Result]:
        """Run the prepared command; returns its result.

        Yields only when the command raises: what it printed until then goes out first
        (``asides``), as it would have after an answer.
        """
        try:
            return dispatch.execute(prepared)
        except Exception:
            yield from self.asides(prepared)
            raise

    def respond(
        self, prepared: Prepared, result: V1Result, formats: StreamFormats
    ) -> Iterator[object]:
        """Yield ``result`` as it goes to the client (a stream encoded as ``formats``
        says), then the ``asides``."""
        if isinstance(result, (V1PushResult, V1PushError)):
            # Over SSH the push's output was captured: the client gets it with the reply.
            output = prepared.proto.take_output()
            if output:
                result = dataclasses.replace(result, output=output + result.output)
        if isinstance(result, V1Stream):
            yield from self._stream(result, formats)
        elif isinstance(result, V1LegacyStream):
            chunks = result.chunks
            try:
                yield V1StreamStart(media_type=MEDIA_TYPE_V01, engine="none", legacy=True)
                yield from stream_body(chunks, None, self.piece)
            finally:
                close_chunks(chunks)
        else:
            yield result
        yield from self.asides(prepared)

    def asides(self, prepared: Prepared) -> Iterator[object]:
        """What the command did besides answering: its captured output and a change of
        the client's capabilities (both SSH only)."""
        proto = prepared.proto
        output = proto.take_output()
        if output:
            yield V1RemoteOutput(data=output)
        protocaps = proto.changed_protocaps()
        if protocaps is not None:
            yield V1ProtoCaps(value=protocaps)

    def _stream(self, result: V1Stream, formats: StreamFormats) -> Iterator[object]:
        chunks = result.chunks
        try:
            choice = formats.pick(result.prefer_uncompressed)
            if isinstance(choice, V1OutOfBandError):
                yield choice
                return
            start, body = encode_stream(chunks, choice, self.piece)
            yield start
            yield from body
        finally:
            close_chunks(chunks)


def make_runner(cache: ContentStore | None) -> V1Runs:
    """A ``V1Runner``, decorated with the response cache when there is one."""
    runner = V1Runner()
    if cache is None:
        return runner
    from hgwire_tw.v1.cache import CachingV1Runner

    return CachingV1Runner(runner, cache)


def call_lane(call: V1Call) -> Lane:
    """The pool lane ``call`` runs on (``hgwire_tw.repo.lanes.command_lane``)."""
    permission = dispatch.command_permission(call.name).decode("ascii")
    return command_lane(call.name, permission)


def start_call(
    ctx: ServerContext, call: V1Call, deliver: Callable[[list[object]], Deferred[Any] | None]
) -> Deferred[None]:
    """Run ``call`` on ``ctx``'s pool, on its lane (a write job for a push command), its
    output delivered to ``deliver`` on the reactor thread in batches
    (``RepositoryPool.iterate``), counted in ``ctx.metrics``. A client that stopped
    reading fails it with ``StreamStalled`` (logged here; the transport cuts it)."""
    lane = call_lane(call)
    runs = make_runner(ctx.cache)
    d = ctx.pool.iterate(
        call.served, runs.run, (call,), deliver, write=lane is Lane.WRITE, lane=lane
    )
    d.addErrback(_stalled, call)
    d.addBoth(ctx.metrics.command(call.served.name, call.transport, "v1", call.name, call.args))
    return d


def _stalled(failure: Failure, call: V1Call) -> Failure:
    # Info, not a warning: a client that stops reading is the client's business; the
    # line says who, so that an operator can tell a stuck mirror from an attack.
    if isinstance(failure.value, StreamStalled):
        facts = call.facts
        log.info(
            "v1 {repo} {command} for {user} from {host} over {transport}: transfer cut, {why}",
            repo=call.served.name or "/",
            command=call.name.decode("ascii", "replace"),
            user=facts.remote_user or "anonymous",
            host=facts.remote_host or "-",
            transport=call.transport,
            why=failure.getErrorMessage(),
        )
    return failure
