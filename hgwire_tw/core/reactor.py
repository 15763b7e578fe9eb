"""The frame reactor: sans-IO server and client state machines for the v2 frame protocol.

Bytes go in, actions (server) or events (client) come out; nothing here reads a socket,
a clock or runs command code. The transports (``hgwire_tw/transports``) execute the
actions; the command runner feeds command output back in through ``response_*`` calls.
"""

# The server reactor, an essay
# ============================
#
# Connection states (ServerState) follow Mercurial's server reactor:
#
#     INITIAL --settings--> SETTINGS_RECEIVING --settings(eos)--> IDLE
#     INITIAL --settings(eos)--> IDLE
#     INITIAL | IDLE | COMMAND_RECEIVING --command-request(new)--> IDLE | COMMAND_RECEIVING
#     COMMAND_RECEIVING --continuation | command-data--> IDLE | COMMAND_RECEIVING
#     INITIAL | IDLE --end of input--> INPUT_CLOSED
#     anything not in _TRANSITIONS --> ERRORED (terminal: input is ignored afterwards)
#
# COMMAND_RECEIVING means "at least one request is partly received". Requests with
# different ids may interleave frame by frame, so each request has its own small
# lifecycle (RequestState): RECEIVING (more request frames due), RECEIVING_DATA
# (command-data frames due), READY (complete, waiting for end of input in HALF mode),
# ACTIVE (announced with RunCommand, no output yet), RESPONDING (output started). A
# request leaves the table when its response ends (eos, error or redirect); its id may
# then be used again.
#
# _TRANSITIONS is the one table of the connection: (state, input) -> (handler, allowed
# next states). A handler may only move to a state the table allows; a pair missing
# from the table is the peer's protocol error and makes the reactor ERRORED.
#
# Stream ids carry their owner in their parity: odd streams belong to the client (the
# real client always uses 1) and even ones to the server. A frame from the client on an
# even stream, or a first frame on an unknown stream without stream-begin, is an error.
# The client may not encode its frames (Mercurial never implemented it), so the ENCODED
# flag from a client is an error too. Our own output starts on stream 2, opened lazily
# by the first response so that the client's protocol settings (its list of content
# encodings) are known; open_stream() hands out 4, 6, ... for spreading responses over
# several compression contexts in FULL mode.
#
# Duplex modes. HALF (HTTP): the whole request body is fed, then end_of_input()
# announces every complete request, because the real client writes its whole body
# before reading. FULL (SSH, TCP): each request is announced as soon as its last frame
# arrives, and responses flow while more requests arrive; several may be in flight.
#
# Limits, so a peer can never make us buffer without bound: one request (map plus
# command data) is at most max_request_bytes; at most max_requests_in_flight requests
# exist at once (receiving, ready or running); all partial requests together hold at
# most max_buffer bytes; the frame decoder holds at most one partial frame, whose
# payload may not exceed max_frame_size.
#
# Output shape is Mercurial's (wire-protocol.md §2.5): a stream-settings frame once per
# stream before its first encoded frame; {status: ok} and then the objects through the
# encoder, frames skipped when the compressor returns nothing; at the end, the flushed
# bytes in the eos frame (ENCODED only when non-empty). Errors and redirects bypass the
# encoder. When two requests' responses interleave on one stream, bytes buffered in the
# compressor for one request are flushed under that request's id before the other
# request's bytes go in, so every frame decodes to bytes of its own request only.
# The frames of one stream are built by its StreamWriter (core/streamwriter.py), which
# owns the stream's compression context, stream-begin and stream-settings state.
#
# Encoding jobs. Encoding (CBOR) and compressing a batch of output is the expensive
# part of answering, and it must neither block the transport's thread nor serialise
# streams that could use different cores. So output calls work in two phases. On the
# caller's thread the reactor does the bookkeeping only: it checks the request, moves
# it ACTIVE -> RESPONDING (so {status: ok} is fed first) or to FINISHING (eos, error or
# redirect submitted), binds it to its stream and describes the work as an op for that
# stream's writer (EncodeObjects, EncodeRaw, EndResponse, or PlainFrame for errors and
# redirects, which bypass the encoder). The op is wrapped in an EncodeJob.
#
# - encoding_jobs=False (the default; tests and simple callers): the job runs at once
#   and the call returns its SendFrames, exactly as if there were no jobs.
# - encoding_jobs=True (every transport: HTTP v2, SSH subsystem, TCP): the call returns
#   the EncodeJob if its stream is idle, else queues it behind the stream's running
#   job. The transport runs job.run() wherever it likes (a worker thread), writes the
#   SendFrames it returns and calls job_done(job) back on its own thread, which hands
#   out the stream's next job (transports/jobpump.py is that glue).
#   So each stream has at most one job running, in submission order, and its frames hit
#   the wire in order; jobs of different streams run in parallel and their frames may
#   interleave on the wire, which the client handles since it decodes per stream.
#
# Back-pressure: the queue holds at most one job per request in flight plus its final
# job, because a request stays in the table (FINISHING, its id still taken) until its
# last job is done, the transport only asks for the next batch once output_pending()
# is false for the request, and max_requests_in_flight bounds the requests. A failure
# (ERRORED) drops the queues; the protocol error frame goes on stream 2 when no job
# runs there, else on a fresh stream, since a running job owns its stream's state. A
# stream's encoder is created by its first submission, with the encoding negotiated by
# then, so streams opened with open_stream() before the client's settings are right.

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias, assert_never

from hgwire_tw.core import cbor
from hgwire_tw.core.errors import (
    CBORError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from hgwire_tw.core.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    CommandDataFlag,
    CommandRequestFlag,
    CommandResponseFlag,
    Frame,
    FrameDecoder,
    FrameType,
    NoFlag,
    SettingsFlag,
    StreamFlag,
    encode_frames,
)
from hgwire_tw.core.streams import (
    DEFAULT_MAX_FRAME_OUTPUT,
    ENCODINGS,
    IDENTITY,
    InputStream,
    negotiate,
)
from hgwire_tw.core.streamwriter import (
    EncodeObjects,
    EncodeRaw,
    EndResponse,
    OutputOp,
    PlainFrame,
    StreamWriter,
)

__all__ = [
    "ClientAction",
    "ClientEvent",
    "ClientFrameReactor",
    "ClientState",
    "CloseConnection",
    "DuplexMode",
    "EncodeJob",
    "ProtocolFailure",
    "RequestState",
    "ResponseError",
    "ResponseFinished",
    "ResponseObjects",
    "ResponseRedirect",
    "RunCommand",
    "SendFrames",
    "ServerAction",
    "ServerFrameReactor",
    "ServerInput",
    "ServerState",
]

#: Largest request (CBOR map plus command data) a server accepts.
DEFAULT_MAX_REQUEST_BYTES: Final = 8 * 1024 * 1024
#: Requests that may exist at once on one server channel (receiving, ready or running).
DEFAULT_MAX_REQUESTS_IN_FLIGHT: Final = 128
#: Bytes all partly received or not yet dispatched requests may hold together.
DEFAULT_MAX_BUFFER: Final = 32 * 1024 * 1024
#: Bytes of one partial response value a client holds.
DEFAULT_CLIENT_MAX_BUFFER: Final = cbor.DEFAULT_MAX_BUFFER

_MAX_STREAM_ID: Final = 0xFF


# --------------------------------------------------------------------------- actions


class DuplexMode(enum.Enum):
    """How requests and responses share the channel."""

    #: HTTP: the whole request body arrives before any response is written.
    HALF = "half"
    #: SSH/TCP: requests are dispatched as they complete; responses flow meanwhile.
    FULL = "full"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCommand:
    """A request is complete: run command ``name`` and answer through ``response_*``."""

    request_id: int
    name: bytes
    args: dict[bytes, object]
    redirect: dict[bytes, object] | None
    data: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SendFrames:
    """Write ``data`` (the encoding of ``frames``) to the peer."""

    data: bytes
    frames: tuple[Frame, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolFailure:
    """The peer broke the protocol; ``message`` says how.

    Server, HALF mode: the transport answers 200 text/plain with the message. Server,
    FULL mode: an error-response frame is in the preceding :class:`SendFrames` and a
    :class:`CloseConnection` follows. Client: the connection is unusable.
    """

    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseConnection:
    """Close the connection once the preceding frames are written."""


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class EncodeJob:
    """Output of ``request_id`` to encode on stream ``stream_id`` (``encoding_jobs`` mode).

    :meth:`run` does the CBOR encoding and compression and touches nothing but this
    stream's writer, so it may run on any thread, provided a stream has at most one job
    running at a time, in the order the reactor hands them out (the reactor does that:
    a stream's next job is returned by ``job_done``). Write what ``run`` returns, then
    call ``ServerFrameReactor.job_done(job)`` on the reactor's own thread.
    """

    stream_id: int
    request_id: int
    #: The request's last output (eos, error or redirect).
    final: bool
    writer: StreamWriter
    op: OutputOp

    def run(self) -> SendFrames | None:
        """Encode; the frames to write (None when the compressor kept everything)."""
        frames = self.writer.apply(self.op)
        if not frames:
            return None
        return SendFrames(data=encode_frames(frames), frames=tuple(frames))


ServerAction: TypeAlias = RunCommand | SendFrames | ProtocolFailure | CloseConnection | EncodeJob


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseObjects:
    """Decoded output objects of a request (after its status map), in order.

    Top-level indefinite byte strings appear as :class:`cbor.IndefiniteChunk` values.
    """

    request_id: int
    objects: tuple[object, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseFinished:
    """A request's successful response ended (eos)."""

    request_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseError:
    """A request failed. ``kind`` is ``command`` for ``{status: error}``, else the
    error-response frame's ``type`` (``server``, ``protocol``, ...). ``message`` is a
    bytes format string for ``args``."""

    request_id: int
    message: bytes
    args: tuple[bytes, ...]
    kind: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseRedirect:
    """The server answered with a content redirect; fetch ``location[b'url']``."""

    request_id: int
    location: dict[bytes, object]


ClientAction: TypeAlias = SendFrames
ClientEvent: TypeAlias = (
    ResponseObjects | ResponseFinished | ResponseError | ResponseRedirect | ProtocolFailure
)


# --------------------------------------------------------------------------- server


class ServerState(enum.Enum):
    """Connection state of a :class:`ServerFrameReactor` (see the essay above)."""

    INITIAL = "initial"
    SETTINGS_RECEIVING = "protocol-settings-receiving"
    IDLE = "idle"
    COMMAND_RECEIVING = "command-receiving"
    INPUT_CLOSED = "input-closed"
    ERRORED = "errored"


class ServerInput(enum.Enum):
    """What arrived, as far as the connection state machine cares."""

    PROTOCOL_SETTINGS = "sender-protocol-settings"
    COMMAND_REQUEST_NEW = "command-request (new)"
    COMMAND_REQUEST_CONTINUATION = "command-request (continuation)"
    COMMAND_DATA = "command-data"
    STREAM_SETTINGS = "stream-settings"
    SERVER_FRAME = "server-only frame"
    END_OF_INPUT = "end of input"


class RequestState(enum.Enum):
    """Lifecycle of one request on the server."""

    RECEIVING = "receiving"
    RECEIVING_DATA = "receiving-data"
    READY = "ready"
    ACTIVE = "active"
    RESPONDING = "responding"
    #: The response is complete; its last frames are still being encoded (jobs mode).
    FINISHING = "finishing"


_RECEIVING: Final = frozenset({RequestState.RECEIVING, RequestState.RECEIVING_DATA})
_RUNNING: Final = frozenset({RequestState.ACTIVE, RequestState.RESPONDING})

_S = ServerState
_I = ServerInput
_AFTER_REQUEST: Final = frozenset({_S.IDLE, _S.COMMAND_RECEIVING})
_AFTER_SETTINGS: Final = frozenset({_S.SETTINGS_RECEIVING, _S.IDLE})

#: The one transition table: (state, input) -> (handler name, next states it may pick).
_TRANSITIONS: Final[dict[tuple[ServerState, ServerInput], tuple[str, frozenset[ServerState]]]] = {
    (_S.INITIAL, _I.PROTOCOL_SETTINGS): ("_on_settings", _AFTER_SETTINGS),
    (_S.INITIAL, _I.COMMAND_REQUEST_NEW): ("_on_request_new", _AFTER_REQUEST),
    (_S.INITIAL, _I.END_OF_INPUT): ("_on_end_of_input", frozenset({_S.INPUT_CLOSED})),
    (_S.SETTINGS_RECEIVING, _I.PROTOCOL_SETTINGS): ("_on_settings", _AFTER_SETTINGS),
    (_S.IDLE, _I.COMMAND_REQUEST_NEW): ("_on_request_new", _AFTER_REQUEST),
    (_S.IDLE, _I.END_OF_INPUT): ("_on_end_of_input", frozenset({_S.INPUT_CLOSED})),
    (_S.COMMAND_RECEIVING, _I.COMMAND_REQUEST_NEW): ("_on_request_new", _AFTER_REQUEST),
    (_S.COMMAND_RECEIVING, _I.COMMAND_REQUEST_CONTINUATION): (
        "_on_request_continuation",
        _AFTER_REQUEST,
    ),
    (_S.COMMAND_RECEIVING, _I.COMMAND_DATA): ("_on_command_data", _AFTER_REQUEST),
}

_EXPECTED: Final[dict[ServerState, str]] = {
    _S.INITIAL: "a sender-protocol-settings or command-request frame",
    _S.SETTINGS_RECEIVING: "a sender-protocol-settings continuation frame",
    _S.IDLE: "a new command-request frame",
    _S.COMMAND_RECEIVING: "a command-request or command-data frame",
}


class _Request:
    """Server-side record of one request."""

    __slots__ = (
        "args",
        "data",
        "has_data",
        "id",
        "name",
        "payload",
        "redirect",
        "size",
        "state",
        "stream",
    )

    def __init__(self, request_id: int, has_data: bool) -> None:
        self.id = request_id
        self.state = RequestState.RECEIVING
        self.has_data = has_data
        self.payload: list[bytes] = []
        self.data: list[bytes] = []
        self.size = 0
        self.name = b""
        self.args: dict[bytes, object] = {}
        self.redirect: dict[bytes, object] | None = None
        self.stream: _OutStream | None = None


class _OutStream:
    """An output stream's writer plus its encoding jobs: the running one and the queue."""

    __slots__ = ("busy", "queue", "writer")

    def __init__(self, writer: StreamWriter) -> None:
        self.writer = writer
        self.busy: EncodeJob | None = None
        self.queue: deque[EncodeJob] = deque()


class ServerFrameReactor:
    """Server side of the frame protocol for one channel (one HTTP request body, or one
    SSH/TCP connection). See the essay at the top of this module."""

    def __init__(
        self,
        *,
        mode: DuplexMode,
        encodings: Sequence[bytes] = ENCODINGS,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_requests_in_flight: int = DEFAULT_MAX_REQUESTS_IN_FLIGHT,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        encoding_jobs: bool = False,
    ) -> None:
        if not 1 <= max_frame_size <= 0xFFFFFF:
            raise ValueError("max_frame_size out of range")
        self.mode = mode
        self._encoding_jobs = encoding_jobs
        self._jobs_of: dict[int, int] = {}
        self._encodings = tuple(encodings)
        self._max_frame_size = max_frame_size
        self._max_request_bytes = max_request_bytes
        self._max_in_flight = max_requests_in_flight
        self._max_buffer = max_buffer
        self._decoder = FrameDecoder(max_payload=max_frame_size)
        self._state = ServerState.INITIAL
        self._settings: list[bytes] = []
        # Without a settings frame the peer understands identity only (§2.4).
        self._encoding = IDENTITY
        self._in_streams: dict[int, InputStream] = {}
        self._out_streams: dict[int, _OutStream] = {}
        self._next_stream_id = 2
        self._requests: dict[int, _Request] = {}
        self._ready: list[_Request] = []
        self._cancelled: set[int] = set()
        self._buffered = 0
        self._actions: list[ServerAction] = []
        self._last_request_id = 0

    # ------------------------------------------------------------------ introspection

    @property
    def state(self) -> ServerState:
        """The connection state."""
        return self._state

    @property
    def encoding(self) -> bytes:
        """The content encoding of our output streams (identity until negotiated)."""
        return self._encoding

    def request_state(self, request_id: int) -> RequestState | None:
        """The lifecycle state of ``request_id``, or None if it is not known."""
        request = self._requests.get(request_id)
        return None if request is None else request.state

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> list[ServerAction]:
        """Feed bytes from the peer; returns what to do about them."""
        if self._state is ServerState.ERRORED:
            return []
        if self._state is ServerState.INPUT_CLOSED:
            raise LocalProtocolError("receive_data() after end_of_input()")
        self._actions = []
        frame: Frame | None = None
        try:
            for frame in self._decoder.feed(data):
                self._handle_frame(frame)
        except ProtocolError as exc:
            return self._fail(str(exc), frame)
        return self._take_actions()

    def end_of_input(self) -> list[ServerAction]:
        """The peer finished sending (HTTP: the body is complete; SSH/TCP: EOF)."""
        if self._state is ServerState.ERRORED:
            return []
        if self._state is ServerState.INPUT_CLOSED:
            raise LocalProtocolError("end_of_input() called twice")
        self._actions = []
        try:
            if not self._decoder.at_boundary():
                raise RemoteProtocolError("input ended inside a frame")
            self._transition(ServerInput.END_OF_INPUT, None)
        except ProtocolError as exc:
            return self._fail(str(exc), None)
        return self._take_actions()

    def _take_actions(self) -> list[ServerAction]:
        actions, self._actions = self._actions, []
        return actions

    def _handle_frame(self, frame: Frame) -> None:
        self._check_stream(frame)
        self._transition(self._classify(frame), frame)
        if frame.stream_flags & StreamFlag.END:
            self._in_streams.pop(frame.stream_id, None)

    def _check_stream(self, frame: Frame) -> None:
        if frame.stream_id % 2 == 0:
            raise RemoteProtocolError(
                f"received frame on even-numbered stream {frame.stream_id}; "
                "clients must use odd stream ids"
            )
        if frame.stream_id not in self._in_streams:
            if not frame.stream_flags & StreamFlag.BEGIN:
                raise RemoteProtocolError(
                    f"received frame on unknown stream {frame.stream_id} "
                    "without the stream-begin flag"
                )
            self._in_streams[frame.stream_id] = InputStream(frame.stream_id)
        elif frame.stream_flags & StreamFlag.BEGIN:
            raise RemoteProtocolError(f"stream-begin on already open stream {frame.stream_id}")
        if frame.stream_flags & StreamFlag.ENCODED:
            raise RemoteProtocolError(
                "encoded frames from a client are not supported (no client-side encoding)"
            )

    def _classify(self, frame: Frame) -> ServerInput:
        kind = frame.type
        match kind:
            case FrameType.SENDER_PROTOCOL_SETTINGS:
                return ServerInput.PROTOCOL_SETTINGS
            case FrameType.COMMAND_REQUEST:
                new = bool(frame.flags & CommandRequestFlag.NEW)
                if new == bool(frame.flags & CommandRequestFlag.CONTINUATION):
                    raise RemoteProtocolError(
                        "command-request frame must have exactly one of new/continuation flags"
                    )
                if new:
                    return ServerInput.COMMAND_REQUEST_NEW
                return ServerInput.COMMAND_REQUEST_CONTINUATION
            case FrameType.COMMAND_DATA:
                return ServerInput.COMMAND_DATA
            case FrameType.STREAM_SETTINGS:
                return ServerInput.STREAM_SETTINGS
            case (
                FrameType.COMMAND_RESPONSE
                | FrameType.ERROR_RESPONSE
                | FrameType.TEXT_OUTPUT
                | FrameType.PROGRESS
            ):
                return ServerInput.SERVER_FRAME
            case _:
                assert_never(kind)

    def _transition(self, what: ServerInput, frame: Frame | None) -> None:
        entry = _TRANSITIONS.get((self._state, what))
        if entry is None:
            got = "end of input" if frame is None else f"{frame.type.name} frame"
            expected = _EXPECTED.get(self._state, "nothing")
            raise RemoteProtocolError(
                f"unexpected {got} in state {self._state.value}; expected {expected}"
            )
        handler_name, allowed = entry
        handler: Callable[[Frame | None], ServerState] = getattr(self, handler_name)
        new_state = handler(frame)
        # The table is the law: a handler picking a state outside it is our bug.
        assert new_state in allowed, (self._state, what, new_state)
        self._state = new_state

    # ---- handlers (each returns the next state)

    def _on_settings(self, frame: Frame | None) -> ServerState:
        assert frame is not None
        cont = bool(frame.flags & SettingsFlag.CONTINUATION)
        eos = bool(frame.flags & SettingsFlag.EOS)
        if cont == eos:
            raise RemoteProtocolError(
                "sender-protocol-settings frame must have exactly one of continuation/eos"
            )
        self._settings.append(frame.payload)
        if sum(map(len, self._settings)) > self._max_request_bytes:
            raise RemoteProtocolError("sender-protocol-settings too large")
        if cont:
            return ServerState.SETTINGS_RECEIVING
        payload = b"".join(self._settings)
        self._settings = []
        if not payload:
            raise RemoteProtocolError("sender-protocol-settings frame has an empty payload")
        try:
            values = cbor.loads_sequence(payload)
        except CBORError as exc:
            raise RemoteProtocolError(f"cannot decode sender-protocol-settings: {exc}") from exc
        if len(values) != 1:
            raise RemoteProtocolError(
                f"sender-protocol-settings must hold one CBOR value, not {len(values)}"
            )
        settings = values[0]
        if not isinstance(settings, dict):
            raise RemoteProtocolError("sender-protocol-settings must be a map")
        offered = settings.get(b"contentencodings", [IDENTITY])
        if not isinstance(offered, list) or not all(isinstance(n, bytes) for n in offered):
            raise RemoteProtocolError("contentencodings must be an array of byte strings")
        # Negotiate now: a peer we cannot encode for is told so before any command runs.
        self._encoding = negotiate(self._encodings, offered)
        return ServerState.IDLE

    def _on_request_new(self, frame: Frame | None) -> ServerState:
        assert frame is not None
        rid = frame.request_id
        if rid in self._requests:
            raise RemoteProtocolError(f"request id {rid} is already in use")
        if len(self._requests) >= self._max_in_flight:
            raise RemoteProtocolError(f"too many requests in flight (limit {self._max_in_flight})")
        self._cancelled.discard(rid)
        request = _Request(rid, bool(frame.flags & CommandRequestFlag.HAVE_DATA))
        self._requests[rid] = request
        self._last_request_id = rid
        self._add_request_payload(request, frame)
        return self._receiving_state()

    def _on_request_continuation(self, frame: Frame | None) -> ServerState:
        assert frame is not None
        request = self._requests.get(frame.request_id)
        if request is None or request.state is not RequestState.RECEIVING:
            raise RemoteProtocolError(
                f"command-request continuation for request {frame.request_id}, "
                "which is not receiving request frames"
            )
        self._add_request_payload(request, frame)
        return self._receiving_state()

    def _add_request_payload(self, request: _Request, frame: Frame) -> None:
        if bool(frame.flags & CommandRequestFlag.HAVE_DATA) != request.has_data:
            raise RemoteProtocolError(
                f"have-data flag differs between frames of request {request.id}"
            )
        self._account(request, frame.payload)
        request.payload.append(frame.payload)
        if frame.flags & CommandRequestFlag.MORE:
            return
        payload = b"".join(request.payload)
        request.payload = []
        self._parse_request(request, payload)
        if request.has_data:
            request.state = RequestState.RECEIVING_DATA
        else:
            self._complete(request)

    def _parse_request(self, request: _Request, payload: bytes) -> None:
        try:
            value = cbor.loads(payload)
        except CBORError as exc:
            raise RemoteProtocolError(f"cannot decode command request: {exc}") from exc
        if not isinstance(value, dict):
            raise RemoteProtocolError("command request must be a CBOR map")
        name = value.get(b"name")
        if name is None:
            raise RemoteProtocolError("command request is missing the name field")
        if not isinstance(name, bytes):
            raise RemoteProtocolError("command name must be a byte string")
        args = value.get(b"args", {})
        if not isinstance(args, dict):
            raise RemoteProtocolError("command arguments must be a map")
        redirect = value.get(b"redirect")
        if redirect is not None and not isinstance(redirect, dict):
            raise RemoteProtocolError("command redirect must be a map")
        request.name = name
        request.args = args
        request.redirect = redirect

    def _on_command_data(self, frame: Frame | None) -> ServerState:
        assert frame is not None
        request = self._requests.get(frame.request_id)
        if request is None or request.state is not RequestState.RECEIVING_DATA:
            raise RemoteProtocolError(
                f"command-data frame for request {frame.request_id}, which is not expecting data"
            )
        cont = bool(frame.flags & CommandDataFlag.CONTINUATION)
        eos = bool(frame.flags & CommandDataFlag.EOS)
        if cont == eos:
            raise RemoteProtocolError(
                "command-data frame must have exactly one of continuation/eos"
            )
        self._account(request, frame.payload)
        request.data.append(frame.payload)
        if eos:
            self._complete(request)
        return self._receiving_state()

    def _on_end_of_input(self, frame: Frame | None) -> ServerState:
        if self.mode is DuplexMode.HALF:
            for request in self._ready:
                self._dispatch(request)
            self._ready = []
        return ServerState.INPUT_CLOSED

    def _account(self, request: _Request, payload: bytes) -> None:
        request.size += len(payload)
        self._buffered += len(payload)
        if request.size > self._max_request_bytes:
            raise RemoteProtocolError(
                f"request {request.id} exceeds {self._max_request_bytes} bytes"
            )
        if self._buffered > self._max_buffer:
            raise RemoteProtocolError(f"buffered requests exceed {self._max_buffer} bytes")

    def _receiving_state(self) -> ServerState:
        for request in self._requests.values():
            if request.state in _RECEIVING:
                return ServerState.COMMAND_RECEIVING
        return ServerState.IDLE

    def _complete(self, request: _Request) -> None:
        request.state = RequestState.READY
        if self.mode is DuplexMode.FULL:
            self._dispatch(request)
        else:
            self._ready.append(request)

    def _dispatch(self, request: _Request) -> None:
        self._buffered -= request.size
        request.state = RequestState.ACTIVE
        data = b"".join(request.data) if request.has_data else None
        request.data = []
        self._actions.append(
            RunCommand(
                request_id=request.id,
                name=request.name,
                args=request.args,
                redirect=request.redirect,
                data=data,
            )
        )

    def _fail(self, message: str, frame: Frame | None) -> list[ServerAction]:
        """Enter ERRORED and describe the failure for the transport."""
        self._state = ServerState.ERRORED
        self._requests.clear()
        self._ready = []
        self._jobs_of.clear()
        for out in self._out_streams.values():
            out.queue.clear()  # the connection closes: queued output is moot
        actions: list[ServerAction] = []
        if self.mode is DuplexMode.FULL:
            rid = frame.request_id if frame is not None else self._last_request_id
            body = cbor.dumps(
                {b"type": b"protocol", b"message": [{b"msg": _truncate(message.encode())}]}
            )
            stream = self._idle_stream_for_failure()
            if stream is not None:
                op = PlainFrame(
                    request_id=rid,
                    type=FrameType.ERROR_RESPONSE,
                    flags=NoFlag.NONE,
                    payload=body,
                    flush_first=False,
                )
                actions.extend(self._send(stream.writer.apply(op)))
            actions.append(ProtocolFailure(message=message))
            actions.append(CloseConnection())
        else:
            actions.append(ProtocolFailure(message=message))
        return actions

    def _idle_stream_for_failure(self) -> _OutStream | None:
        """A stream the error frame may be written on right now, on this thread.

        The default stream unless an encoding job is running on it (a worker owns its
        state then); in that case a fresh stream, or none when the ids ran out.
        """
        default = self._out_streams.get(2)
        if default is None or default.busy is None:
            stream = self._stream_for(None)
        elif self._next_stream_id <= _MAX_STREAM_ID:
            stream = self._new_stream()
        else:
            return None
        stream.writer.open(self._encoding)
        return stream

    # ------------------------------------------------------------------ output

    def open_stream(self) -> int:
        """Open another even output stream (own encoder context); returns its id.

        The encoder is created by the stream's first output, so a stream opened before
        the client's protocol settings arrive still uses the negotiated encoding.
        """
        return self._new_stream().writer.stream_id

    def _new_stream(self) -> _OutStream:
        stream_id = self._next_stream_id
        if stream_id > _MAX_STREAM_ID:
            raise LocalProtocolError("no even stream id left")
        self._next_stream_id += 2
        stream = _OutStream(StreamWriter(stream_id, self._max_frame_size))
        self._out_streams[stream_id] = stream
        return stream

    def _stream_for(self, stream_id: int | None) -> _OutStream:
        if stream_id is None:
            stream = self._out_streams.get(2)
            if stream is None:
                # Stream 2 is opened lazily by the first output unless open_stream()
                # made it; either way it is the first one.
                assert self._next_stream_id == 2
                stream = self._new_stream()
            return stream
        found = self._out_streams.get(stream_id)
        if found is None:
            raise LocalProtocolError(f"output stream {stream_id} was not opened")
        return found

    def _running(self, request_id: int) -> _Request | None:
        """The request output may be written for; None if it was cancelled or we failed."""
        if self._state is ServerState.ERRORED or request_id in self._cancelled:
            return None
        request = self._requests.get(request_id)
        if request is None or request.state not in _RUNNING:
            raise LocalProtocolError(f"request {request_id} is not running")
        return request

    def _bind(self, request: _Request, stream_id: int | None) -> _OutStream:
        if request.stream is None:
            request.stream = self._stream_for(stream_id)
        elif stream_id is not None and stream_id != request.stream.writer.stream_id:
            raise LocalProtocolError(
                f"request {request.id} already answers on stream {request.stream.writer.stream_id}"
            )
        return request.stream

    def _starts(self, request: _Request) -> bool:
        """Whether this output is the request's first (so ``{status: ok}`` goes first)."""
        if request.state is RequestState.ACTIVE:
            request.state = RequestState.RESPONDING
            return True
        return False

    def response_objects(
        self, request_id: int, objs: Sequence[object], *, stream_id: int | None = None
    ) -> list[ServerAction]:
        """Send output objects of a running request (``EncodedCBOR`` passes through).

        The first output of a request is preceded by ``{status: ok}``. All objects are
        encoded in one go and cut into frames.
        """
        request = self._running(request_id)
        if request is None:
            return []
        stream = self._bind(request, stream_id)
        op = EncodeObjects(request_id=request.id, objects=tuple(objs), status=self._starts(request))
        return self._submit(request, stream, op, final=False)

    def response_raw(
        self, request_id: int, data: bytes, *, encode: bool, stream_id: int | None = None
    ) -> list[ServerAction]:
        """Send pre-encoded CBOR of a running request (on ``stream_id`` as for
        ``response_objects``).

        ``encode=False`` sends it in frames without the ENCODED flag (for cached,
        already-final bytes); the status map then goes unencoded too.
        """
        request = self._running(request_id)
        if request is None:
            return []
        stream = self._bind(request, stream_id)
        op = EncodeRaw(
            request_id=request.id, data=bytes(data), status=self._starts(request), encode=encode
        )
        return self._submit(request, stream, op, final=False)

    def response_end(self, request_id: int) -> list[ServerAction]:
        """The request's output is complete: flush its stream and send eos."""
        request = self._running(request_id)
        if request is None:
            return []
        stream = self._bind(request, None)
        op = EndResponse(request_id=request.id, status=self._starts(request))
        return self._submit(request, stream, op, final=True)

    def response_error(
        self, request_id: int, message: bytes, args: Sequence[bytes] = ()
    ) -> list[ServerAction]:
        """The command failed. Before any output: ``{status: error}`` with eos; after:
        an error-response frame of type ``server``. Never encoded."""
        request = self._running(request_id)
        if request is None:
            return []
        stream = self._bind(request, None)
        if request.state is RequestState.ACTIVE:
            error: dict[bytes, object] = {b"message": message}
            if args:
                error[b"args"] = list(args)
            body = cbor.dumps({b"status": b"error", b"error": error})
            body = self._fit(body, {b"status": b"error", b"error": {b"message": b""}})
            op = PlainFrame(
                request_id=request.id,
                type=FrameType.COMMAND_RESPONSE,
                flags=CommandResponseFlag.EOS,
                payload=body,
                flush_first=False,
            )
        else:
            atom: dict[bytes, object] = {b"msg": message}
            if args:
                atom[b"args"] = list(args)
            body = cbor.dumps({b"type": b"server", b"message": [atom]})
            body = self._fit(body, {b"type": b"server", b"message": [{b"msg": b""}]})
            # Bytes of this request still in the compressor must reach the client before
            # the error, or they would decode as part of another request's frame.
            op = PlainFrame(
                request_id=request.id,
                type=FrameType.ERROR_RESPONSE,
                flags=NoFlag.NONE,
                payload=body,
                flush_first=True,
            )
        return self._submit(request, stream, op, final=True)

    def response_redirect(
        self, request_id: int, location: Mapping[bytes, object]
    ) -> list[ServerAction]:
        """Answer with a content redirect (status map only), before any other output."""
        request = self._running(request_id)
        if request is None:
            return []
        if request.state is not RequestState.ACTIVE:
            raise LocalProtocolError("a redirect must be the only output of a request")
        stream = self._bind(request, None)
        where: dict[bytes, object] = dict(location)
        body = cbor.dumps({b"status": b"redirect", b"location": where})
        if len(body) > self._max_frame_size:
            raise LocalProtocolError("redirect location does not fit in one frame")
        op = PlainFrame(
            request_id=request.id,
            type=FrameType.COMMAND_RESPONSE,
            flags=CommandResponseFlag.EOS,
            payload=body,
            flush_first=False,
        )
        return self._submit(request, stream, op, final=True)

    def request_cancelled(self, request_id: int) -> None:
        """Forget a request whose client went away; later output for it is dropped.

        Its encoding jobs already handed out or queued still run, so bytes of it in a
        compressor are flushed under its id before the stream carries another request's
        bytes, keeping the stream decodable.
        """
        request = self._requests.get(request_id)
        if request is None:
            return
        self._cancelled.add(request_id)
        if request.state is RequestState.FINISHING:
            return  # the id stays taken until its last job is done
        del self._requests[request_id]
        if request.state in _RECEIVING or request.state is RequestState.READY:
            self._buffered -= request.size
        if request in self._ready:
            self._ready.remove(request)

    # ---- encoding jobs

    @property
    def jobs_pending(self) -> bool:
        """Whether any encoding job is queued or running (jobs mode)."""
        return bool(self._jobs_of)

    def output_pending(self, request_id: int) -> bool:
        """Whether output of ``request_id`` is still queued or being encoded (jobs mode)."""
        return request_id in self._jobs_of

    def job_done(self, job: EncodeJob) -> list[ServerAction]:
        """``job`` has run and its frames are written: the stream's next job, if any.

        Only in ``encoding_jobs`` mode; call it on the thread that calls everything else.
        """
        stream = self._out_streams.get(job.stream_id)
        if stream is None or stream.busy is not job:
            raise LocalProtocolError(f"job_done() for a job that is not running: {job!r}")
        stream.busy = None
        self._job_over(job)
        if self._state is ServerState.ERRORED or not stream.queue:
            return []
        stream.busy = stream.queue.popleft()
        return [stream.busy]

    def _submit(
        self, request: _Request, stream: _OutStream, op: OutputOp, *, final: bool
    ) -> list[ServerAction]:
        if final:
            # The id stays taken (and counts as in flight) until its last frame is out.
            request.state = RequestState.FINISHING
        stream.writer.open(self._encoding)
        job = EncodeJob(
            stream_id=stream.writer.stream_id,
            request_id=request.id,
            final=final,
            writer=stream.writer,
            op=op,
        )
        self._jobs_of[request.id] = self._jobs_of.get(request.id, 0) + 1
        if not self._encoding_jobs:
            # Inline: the stream is never busy, so run the job right here.
            send = job.run()
            self._job_over(job)
            return [] if send is None else [send]
        if stream.busy is None:
            stream.busy = job
            return [job]
        stream.queue.append(job)
        return []

    def _job_over(self, job: EncodeJob) -> None:
        left = self._jobs_of.get(job.request_id, 0) - 1
        if left > 0:
            self._jobs_of[job.request_id] = left
        else:
            self._jobs_of.pop(job.request_id, None)
        if job.final:
            request = self._requests.get(job.request_id)
            if request is not None and request.state is RequestState.FINISHING:
                del self._requests[job.request_id]

    # ---- output helpers

    def _fit(self, body: bytes, fallback: object) -> bytes:
        if len(body) <= self._max_frame_size:
            return body
        return cbor.dumps(fallback)

    @staticmethod
    def _send(frames: list[Frame]) -> list[ServerAction]:
        if not frames:
            return []
        return [SendFrames(data=encode_frames(frames), frames=tuple(frames))]


def _truncate(message: bytes, limit: int = 1024) -> bytes:
    return message if len(message) <= limit else message[: limit - 3] + b"..."


# --------------------------------------------------------------------------- client


class ClientState(enum.Enum):
    """Connection state of a :class:`ClientFrameReactor`."""

    OPEN = "open"
    ERRORED = "errored"


class _ClientRequestState(enum.Enum):
    AWAITING_STATUS = "awaiting-status"
    OBJECTS = "objects"
    ENDED = "ended"  # error or redirect seen; only eos may follow


@dataclass(slots=True)
class _ClientRequest:
    request_id: int
    decoder: cbor.CBORSequenceDecoder
    state: _ClientRequestState = _ClientRequestState.AWAITING_STATUS
    events: list[ClientEvent] = field(default_factory=list)


class _ClientStream:
    __slots__ = ("codec", "settings")

    def __init__(self, codec: InputStream) -> None:
        self.codec = codec
        self.settings: list[bytes] = []


class ClientFrameReactor:
    """Client side of the frame protocol for one channel.

    Over HTTP use one reactor per POST (each body starts a new channel); over SSH/TCP
    one per connection. The sender-protocol-settings frame goes out with the first
    command. Each request ends with exactly one of :class:`ResponseFinished`,
    :class:`ResponseError` or :class:`ResponseRedirect` (or a connection-wide
    :class:`ProtocolFailure`).
    """

    def __init__(
        self,
        *,
        encodings: Sequence[bytes] = ENCODINGS,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_buffer: int = DEFAULT_CLIENT_MAX_BUFFER,
        max_frame_output: int = DEFAULT_MAX_FRAME_OUTPUT,
    ) -> None:
        if not 1 <= max_frame_size <= 0xFFFFFF:
            raise ValueError("max_frame_size out of range")
        self._encodings = list(encodings)
        self._max_frame_size = max_frame_size
        self._max_buffer = max_buffer
        self._max_frame_output = max_frame_output
        self._decoder = FrameDecoder(max_payload=max(max_frame_size, DEFAULT_MAX_FRAME_SIZE))
        self._state = ClientState.OPEN
        self._next_request_id = 1
        self._settings_sent = False
        self._stream_begun = False
        self._requests: dict[int, _ClientRequest] = {}
        self._streams: dict[int, _ClientStream] = {}

    @property
    def state(self) -> ClientState:
        """OPEN, or ERRORED after a protocol failure."""
        return self._state

    @property
    def outstanding(self) -> frozenset[int]:
        """Request ids whose responses have not ended."""
        return frozenset(self._requests)

    # ------------------------------------------------------------------ output

    def call_command(
        self,
        name: bytes,
        args: Mapping[bytes, object],
        *,
        redirect: Mapping[bytes, object] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, list[ClientAction]]:
        """Issue a command; returns its request id and the frames to send."""
        if self._state is ClientState.ERRORED:
            raise LocalProtocolError("the connection failed; no more commands")
        request_id = self._next_request_id
        if request_id > 0xFFFF:
            raise LocalProtocolError("request ids exhausted on this channel")
        self._next_request_id += 2
        frames: list[Frame] = []
        if not self._settings_sent:
            self._settings_sent = True
            payload = cbor.dumps({b"contentencodings": self._encodings})
            frames.append(
                self._frame(
                    request_id, FrameType.SENDER_PROTOCOL_SETTINGS, SettingsFlag.EOS, payload
                )
            )
        request: dict[bytes, object] = {b"name": name}
        if args:
            request[b"args"] = dict(args)
        if redirect is not None:
            request[b"redirect"] = dict(redirect)
        payload = cbor.dumps(request)
        size = self._max_frame_size
        chunks = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        have_data = CommandRequestFlag.HAVE_DATA if data is not None else CommandRequestFlag(0)
        for index, chunk in enumerate(chunks):
            flags = CommandRequestFlag.NEW if index == 0 else CommandRequestFlag.CONTINUATION
            if index < len(chunks) - 1:
                flags |= CommandRequestFlag.MORE
            frames.append(
                self._frame(request_id, FrameType.COMMAND_REQUEST, flags | have_data, chunk)
            )
        if data is not None:
            pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
            for index, piece in enumerate(pieces):
                last = index == len(pieces) - 1
                flag = CommandDataFlag.EOS if last else CommandDataFlag.CONTINUATION
                frames.append(self._frame(request_id, FrameType.COMMAND_DATA, flag, piece))
        self._requests[request_id] = _ClientRequest(
            request_id=request_id, decoder=cbor.CBORSequenceDecoder(self._max_buffer)
        )
        return request_id, [SendFrames(data=encode_frames(frames), frames=tuple(frames))]

    def _frame(self, request_id: int, kind: FrameType, flags: int, payload: bytes) -> Frame:
        stream_flags = StreamFlag.NONE
        if not self._stream_begun:
            self._stream_begun = True
            stream_flags = StreamFlag.BEGIN
        return Frame(
            request_id=request_id,
            stream_id=1,
            stream_flags=stream_flags,
            type=kind,
            flags=flags,
            payload=payload,
        )

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed bytes from the server; returns the events they complete."""
        if self._state is ClientState.ERRORED:
            return []
        events: list[ClientEvent] = []
        try:
            for frame in self._decoder.feed(data):
                self._handle_frame(frame, events)
        except ProtocolError as exc:
            return [*events, self._fail(str(exc))]
        return events

    def end_of_input(self) -> list[ClientEvent]:
        """The server closed its side (HTTP: the response body ended)."""
        if self._state is ClientState.ERRORED:
            return []
        if not self._decoder.at_boundary():
            return [self._fail("input ended inside a frame")]
        if self._requests:
            ids = ", ".join(str(r) for r in sorted(self._requests))
            return [self._fail(f"input ended with requests outstanding: {ids}")]
        return []

    def _fail(self, message: str) -> ProtocolFailure:
        self._state = ClientState.ERRORED
        self._requests.clear()
        return ProtocolFailure(message=message)

    def _handle_frame(self, frame: Frame, events: list[ClientEvent]) -> None:
        if frame.stream_id % 2 == 1:
            raise RemoteProtocolError(
                f"received frame on odd-numbered stream {frame.stream_id} from the server"
            )
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            if not frame.stream_flags & StreamFlag.BEGIN:
                raise RemoteProtocolError(
                    f"received frame on unknown stream {frame.stream_id} "
                    "without the stream-begin flag"
                )
            stream = _ClientStream(InputStream(frame.stream_id, self._max_frame_output))
            self._streams[frame.stream_id] = stream
        request = self._requests.get(frame.request_id)
        if request is None:
            raise RemoteProtocolError(f"received frame for inactive request {frame.request_id}")
        kind = frame.type
        if kind is FrameType.STREAM_SETTINGS:
            self._on_stream_settings(stream, frame)
        elif kind is FrameType.COMMAND_RESPONSE:
            self._on_response(stream, request, frame, events)
        elif kind is FrameType.ERROR_RESPONSE:
            self._on_error_response(stream, request, frame, events)
        else:
            raise RemoteProtocolError(f"unexpected {kind.name} frame from the server")
        if frame.stream_flags & StreamFlag.END:
            self._streams.pop(frame.stream_id, None)

    def _payload(self, stream: _ClientStream, frame: Frame) -> bytes:
        if frame.stream_flags & StreamFlag.ENCODED:
            return stream.codec.decode(frame.payload)
        return frame.payload

    def _on_stream_settings(self, stream: _ClientStream, frame: Frame) -> None:
        cont = bool(frame.flags & SettingsFlag.CONTINUATION)
        eos = bool(frame.flags & SettingsFlag.EOS)
        if cont == eos:
            raise RemoteProtocolError("stream-settings frame must have exactly one of cont/eos")
        stream.settings.append(frame.payload)
        if sum(map(len, stream.settings)) > DEFAULT_MAX_FRAME_SIZE:
            raise RemoteProtocolError("stream-settings too large")
        if cont:
            return
        payload = b"".join(stream.settings)
        stream.settings = []
        values = cbor.loads_sequence(payload)
        if len(values) != 1 or not isinstance(values[0], bytes):
            raise RemoteProtocolError("stream-settings must hold exactly one encoding name")
        stream.codec.set_encoding(values[0])

    def _on_response(
        self,
        stream: _ClientStream,
        request: _ClientRequest,
        frame: Frame,
        events: list[ClientEvent],
    ) -> None:
        cont = bool(frame.flags & CommandResponseFlag.CONTINUATION)
        eos = bool(frame.flags & CommandResponseFlag.EOS)
        if cont == eos:
            raise RemoteProtocolError(
                "command-response frame must have exactly one of continuation/eos"
            )
        values = request.decoder.feed(self._payload(stream, frame))
        objects: list[object] = []
        for value in values:
            match request.state:
                case _ClientRequestState.AWAITING_STATUS:
                    self._on_status(request, value, events)
                case _ClientRequestState.OBJECTS:
                    objects.append(value)
                case _ClientRequestState.ENDED:
                    raise RemoteProtocolError(
                        f"output after the error or redirect of request {request.request_id}"
                    )
                case _:
                    assert_never(request.state)
        if objects:
            events.append(ResponseObjects(request_id=request.request_id, objects=tuple(objects)))
        if eos:
            request.decoder.finish()
            del self._requests[request.request_id]
            match request.state:
                case _ClientRequestState.AWAITING_STATUS:
                    raise RemoteProtocolError(
                        f"response to request {request.request_id} ended without a status"
                    )
                case _ClientRequestState.OBJECTS:
                    events.append(ResponseFinished(request_id=request.request_id))
                case _ClientRequestState.ENDED:
                    pass
                case _:
                    assert_never(request.state)

    def _on_status(self, request: _ClientRequest, value: object, events: list[ClientEvent]) -> None:
        if not isinstance(value, dict) or b"status" not in value:
            raise RemoteProtocolError("the first response object is not a status map")
        status = value[b"status"]
        rid = request.request_id
        if status == b"ok":
            request.state = _ClientRequestState.OBJECTS
        elif status == b"error":
            request.state = _ClientRequestState.ENDED
            error = value.get(b"error")
            if not isinstance(error, dict):
                raise RemoteProtocolError("error status without an error map")
            message, args = _message_and_args(error.get(b"message"), error.get(b"args"))
            events.append(
                ResponseError(request_id=rid, message=message, args=args, kind=b"command")
            )
        elif status == b"redirect":
            request.state = _ClientRequestState.ENDED
            location = value.get(b"location")
            if not isinstance(location, dict):
                raise RemoteProtocolError("redirect status without a location map")
            events.append(ResponseRedirect(request_id=rid, location=location))
        else:
            raise RemoteProtocolError(f"unknown response status {status!r}")

    def _on_error_response(
        self,
        stream: _ClientStream,
        request: _ClientRequest,
        frame: Frame,
        events: list[ClientEvent],
    ) -> None:
        value = cbor.loads(self._payload(stream, frame))
        if not isinstance(value, dict):
            raise RemoteProtocolError("error-response payload is not a map")
        kind = value.get(b"type", b"server")
        atoms = value.get(b"message")
        if not isinstance(kind, bytes) or not isinstance(atoms, list) or not atoms:
            raise RemoteProtocolError("malformed error-response payload")
        atom = atoms[0]
        if not isinstance(atom, dict):
            raise RemoteProtocolError("malformed error-response message")
        message, args = _message_and_args(atom.get(b"msg"), atom.get(b"args"))
        del self._requests[request.request_id]
        events.append(
            ResponseError(request_id=request.request_id, message=message, args=args, kind=kind)
        )


def _message_and_args(message: object, args: object) -> tuple[bytes, tuple[bytes, ...]]:
    if not isinstance(message, bytes):
        raise RemoteProtocolError("error message is not a byte string")
    if args is None:
        return message, ()
    if not isinstance(args, list) or not all(isinstance(a, bytes) for a in args):
        raise RemoteProtocolError("error arguments are not byte strings")
    return message, tuple(args)
