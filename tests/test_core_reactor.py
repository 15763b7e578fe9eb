"""Frame reactor: reference byte shapes, every §2.6 rule, limits, both duplex modes,
client/server pairs, and interop with real Mercurial 6.0.3."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hgwire_tw.core import cbor
from hgwire_tw.core.errors import LocalProtocolError
from hgwire_tw.core.frames import (
    CommandDataFlag,
    CommandRequestFlag,
    CommandResponseFlag,
    Frame,
    FrameDecoder,
    FrameType,
    StreamFlag,
)
from hgwire_tw.core.reactor import (
    ClientEvent,
    ClientFrameReactor,
    CloseConnection,
    DuplexMode,
    ProtocolFailure,
    ResponseError,
    ResponseFinished,
    ResponseObjects,
    ResponseRedirect,
    RunCommand,
    SendFrames,
    ServerAction,
    ServerFrameReactor,
    ServerState,
)
from hgwire_tw.core.streams import ENCODINGS
from tests.framedsl import f, frames_of, join, request_frame, settings_frame

NODE = bytes(range(20))
T = FrameType
NEW = CommandRequestFlag.NEW
CONT = CommandRequestFlag.CONTINUATION
MORE = CommandRequestFlag.MORE
HAVE_DATA = CommandRequestFlag.HAVE_DATA


def _runs(actions: Sequence[ServerAction]) -> list[RunCommand]:
    return [a for a in actions if isinstance(a, RunCommand)]


def _failure(actions: Sequence[ServerAction]) -> str | None:
    for action in actions:
        if isinstance(action, ProtocolFailure):
            return action.message
    return None


def _data(actions: Sequence[object]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendFrames))


def _server(mode: DuplexMode = DuplexMode.HALF, **kw: int) -> ServerFrameReactor:
    return ServerFrameReactor(mode=mode, **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------- reference shapes

CLIENT_BODY = (
    bytes.fromhex("1c0000 0100 01 01 82 a1 50")
    + b"contentencodings"
    + b"\x81\x48identity"
    + bytes.fromhex("0c0000 0100 01 00 11 a1 44")
    + b"name\x45heads"
)
SERVER_BODY = (
    bytes.fromhex("090000 0100 02 01 92")
    + b"\x48identity"
    + bytes.fromhex("0b0000 0100 02 04 31 a1 46")
    + b"status\x42ok"
    + bytes.fromhex("160000 0100 02 04 31 81 54")
    + NODE
    + bytes.fromhex("000000 0100 02 00 32")
)


def test_worked_example_client_bytes() -> None:
    """§2.8: our client's body for `heads` with identity is byte-identical."""
    client = ClientFrameReactor(encodings=[b"identity"])
    rid, actions = client.call_command(b"heads", {})
    assert rid == 1
    assert _data(actions) == CLIENT_BODY


def test_worked_example_server_bytes() -> None:
    """§2.8: our server's body answering that request is byte-identical."""
    server = _server()
    assert server.receive_data(CLIENT_BODY) == []
    (run,) = server.end_of_input()
    assert run == RunCommand(request_id=1, name=b"heads", args={}, redirect=None, data=None)
    out = server.response_objects(1, [[NODE]]) + server.response_end(1)
    assert _data(out) == SERVER_BODY


def _exchange(encoding: bytes, objs: list[object]) -> list[Frame]:
    client = ClientFrameReactor(encodings=[encoding])
    _, actions = client.call_command(b"heads", {})
    server = _server()
    server.receive_data(_data(actions))
    server.end_of_input()
    return frames_of(server.response_objects(1, objs) + server.response_end(1))


def test_zlib_shape() -> None:
    """§2.8 zlib: settings, a 78 9c frame, then one eos frame ending in a sync flush."""
    frames = _exchange(b"zlib", [[NODE]])
    assert [(fr.type, int(fr.flags), int(fr.stream_flags)) for fr in frames] == [
        (T.STREAM_SETTINGS, 2, 1),
        (T.COMMAND_RESPONSE, 1, 4),
        (T.COMMAND_RESPONSE, 2, 4),
    ]
    assert frames[0].payload == b"\x44zlib"
    assert frames[1].payload == b"\x78\x9c"
    assert frames[2].payload.endswith(b"\x00\x00\xff\xff")


def test_zstd_shape() -> None:
    """§2.8 zstd-8mb: settings then a single encoded eos frame starting with the magic."""
    frames = _exchange(b"zstd-8mb", [[NODE]])
    assert [(fr.type, int(fr.flags), int(fr.stream_flags)) for fr in frames] == [
        (T.STREAM_SETTINGS, 2, 1),
        (T.COMMAND_RESPONSE, 2, 4),
    ]
    assert frames[1].payload[:4] == b"\x28\xb5\x2f\xfd"


def test_one_context_across_responses() -> None:
    """Several requests in one body share stream 2 and a single zlib header."""
    client = ClientFrameReactor(encodings=[b"zlib", b"identity"])
    body = b"".join(_data(client.call_command(name, {})[1]) for name in (b"a", b"b", b"c"))
    server = _server()
    server.receive_data(body)
    runs = server.end_of_input()
    assert [r.request_id for r in _runs(runs)] == [1, 3, 5]
    frames: list[Frame] = []
    for rid in (1, 3, 5):
        frames += frames_of(server.response_objects(rid, [b"x" * 50]) + server.response_end(rid))
    assert sum(fr.type is T.STREAM_SETTINGS for fr in frames) == 1
    assert sum(fr.payload.startswith(b"\x78\x9c") for fr in frames) == 1
    assert {fr.stream_id for fr in frames} == {2}
    assert sum(fr.payload.endswith(b"\x00\x00\xff\xff") for fr in frames) == 3


def test_error_before_output_is_unencoded_single_frame() -> None:
    """An early error is one unencoded {status: error} eos frame, no settings frame."""
    client = ClientFrameReactor(encodings=[b"zstd-8mb"])
    _, actions = client.call_command(b"known", {})
    server = _server()
    server.receive_data(_data(actions))
    server.end_of_input()
    frames = frames_of(server.response_error(1, b"missing required arguments: %s", [b"nodes"]))
    assert len(frames) == 1
    (frame,) = frames
    assert frame.type is T.COMMAND_RESPONSE and frame.flags == CommandResponseFlag.EOS
    assert frame.stream_flags == StreamFlag.BEGIN
    assert cbor.loads(frame.payload) == {
        b"status": b"error",
        b"error": {b"message": b"missing required arguments: %s", b"args": [b"nodes"]},
    }
    assert client.receive_data(_data([SendFrames(data=join(frames), frames=tuple(frames))])) == [
        ResponseError(
            request_id=1,
            message=b"missing required arguments: %s",
            args=(b"nodes",),
            kind=b"command",
        )
    ]


def test_error_after_output_is_error_response_frame() -> None:
    """An error after output is an unencoded error-response frame of type server."""
    server = _server(DuplexMode.FULL)
    server.receive_data(join([settings_frame([b"zlib"]), request_frame(1, b"heads")]))
    server.response_objects(1, [b"partial"])
    frames = frames_of(server.response_error(1, b"boom"))
    assert frames[-1].type is T.ERROR_RESPONSE
    assert frames[-1].flags == 0 and not frames[-1].stream_flags & StreamFlag.ENCODED
    assert cbor.loads(frames[-1].payload) == {b"type": b"server", b"message": [{b"msg": b"boom"}]}


def test_redirect_is_status_map_only() -> None:
    """A redirect is one frame holding the status map and nothing else."""
    server = _server(DuplexMode.FULL)
    server.receive_data(join([settings_frame(), request_frame(1, b"filesdata")]))
    location = {b"url": b"https://cdn/x", b"mediatype": b"application/mercurial-cbor"}
    frames = frames_of(server.response_redirect(1, location))
    assert len(frames) == 1 and frames[0].flags == CommandResponseFlag.EOS
    assert cbor.loads(frames[0].payload) == {b"status": b"redirect", b"location": location}
    with pytest.raises(LocalProtocolError):
        server.response_objects(1, [b"late"])


def test_raw_unencoded_frames() -> None:
    """response_raw(encode=False) sends frames without the ENCODED flag, decodable."""
    client = ClientFrameReactor(encodings=[b"zstd-8mb"])
    _, actions = client.call_command(b"manifestdata", {})
    server = _server()
    server.receive_data(_data(actions))
    server.end_of_input()
    raw = cbor.dumps_sequence([{b"a": 1}, b"y" * 70000])
    out = server.response_raw(1, raw, encode=False) + server.response_end(1)
    frames = frames_of(out)
    assert not any(fr.stream_flags & StreamFlag.ENCODED for fr in frames)
    assert all(len(fr.payload) <= 32768 for fr in frames)
    events = client.receive_data(_data(out))
    objects = [o for e in events if isinstance(e, ResponseObjects) for o in e.objects]
    assert objects == [{b"a": 1}, b"y" * 70000]
    assert events[-1] == ResponseFinished(request_id=1)


def test_raw_output_on_a_chosen_stream() -> None:
    """response_raw(stream_id=...) answers on that stream, like response_objects."""
    client = ClientFrameReactor(encodings=[b"zstd-8mb"])
    _, actions = client.call_command(b"manifestdata", {})
    server = _server(DuplexMode.FULL)
    server.receive_data(_data(actions))
    stream = server.open_stream()
    out = server.response_raw(1, cbor.dumps(b"x"), encode=False, stream_id=stream)
    out += server.response_end(1)
    assert {fr.stream_id for fr in frames_of(out)} == {stream}
    events = client.receive_data(_data(out))
    assert [o for e in events if isinstance(e, ResponseObjects) for o in e.objects] == [b"x"]
    assert events[-1] == ResponseFinished(request_id=1)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_large_response_frames_within_limit(encoding: bytes) -> None:
    """Big responses are cut into frames of at most the negotiated size."""
    client = ClientFrameReactor(encodings=[encoding])
    _, actions = client.call_command(b"x", {})
    server = _server(max_frame_size=4096)
    server.receive_data(_data(actions))
    server.end_of_input()
    blobs = [os.urandom(50000), b"z" * 300000]
    out = server.response_objects(1, blobs) + server.response_end(1)
    assert all(len(fr.payload) <= 4096 for fr in frames_of(out))
    events = client.receive_data(_data(out))
    got = [o for e in events if isinstance(e, ResponseObjects) for o in e.objects]
    assert got == blobs


def test_never_text_output_or_progress() -> None:
    """No code path of the server emits text-output or progress frames."""
    for encoding in ENCODINGS:
        frames = _exchange(encoding, [b"a", [1, 2], {b"k": b"v"}])
        assert not {fr.type for fr in frames} & {T.TEXT_OUTPUT, T.PROGRESS}


# ----------------------------------------------------------------- request assembly


def test_request_split_across_frames() -> None:
    """A request map cut over several frames with `more` is reassembled."""
    payload = cbor.dumps({b"name": b"known", b"args": {b"nodes": [NODE] * 100}})
    parts = [payload[:700], payload[700:1500], payload[1500:]]
    frames = [settings_frame()]
    for i, part in enumerate(parts):
        flags = (NEW if i == 0 else CONT) | (MORE if i < 2 else 0)
        frames.append(f(1, 1, 0, T.COMMAND_REQUEST, flags, part))
    server = _server(DuplexMode.FULL)
    actions = server.receive_data(join(frames))
    (run,) = _runs(actions)
    assert run.args == {b"nodes": [NODE] * 100}


def test_have_data_and_command_data() -> None:
    """With have-data the request is dispatched after command-data eos, with its data."""
    client = ClientFrameReactor()
    _, actions = client.call_command(b"push", {b"a": b"b"}, data=b"D" * 70000)
    server = _server(DuplexMode.FULL)
    (run,) = _runs(server.receive_data(_data(actions)))
    assert run.data == b"D" * 70000 and run.args == {b"a": b"b"}


def test_interleaved_requests() -> None:
    """Frames of two requests may interleave; each dispatches when its last frame lands."""
    a = cbor.dumps({b"name": b"a"})
    b = cbor.dumps({b"name": b"b"})
    frames = [
        settings_frame(),
        f(1, 1, 0, T.COMMAND_REQUEST, NEW | MORE, a[:3]),
        f(3, 1, 0, T.COMMAND_REQUEST, NEW | MORE, b[:2]),
        f(3, 1, 0, T.COMMAND_REQUEST, CONT, b[2:]),
        f(1, 1, 0, T.COMMAND_REQUEST, CONT, a[3:]),
    ]
    server = _server(DuplexMode.FULL)
    runs = _runs(server.receive_data(join(frames)))
    assert [(r.request_id, r.name) for r in runs] == [(3, b"b"), (1, b"a")]


def test_half_mode_dispatches_only_at_end_of_input() -> None:
    """HALF mode announces nothing until end_of_input, then all complete requests."""
    server = _server(DuplexMode.HALF)
    body = join([settings_frame(), request_frame(1, b"a"), request_frame(3, b"b")])
    assert server.receive_data(body) == []
    assert [r.name for r in _runs(server.end_of_input())] == [b"a", b"b"]
    assert server.state is ServerState.INPUT_CLOSED


def test_request_id_reuse_after_completion() -> None:
    """An id may be reused once its response ended, not while it is active."""
    server = _server(DuplexMode.FULL)
    assert _runs(server.receive_data(join([settings_frame(), request_frame(1, b"a")])))
    failure = server.receive_data(join([request_frame(1, b"b")]))
    assert "already in use" in (_failure(failure) or "")
    server = _server(DuplexMode.FULL)
    server.receive_data(join([settings_frame(), request_frame(1, b"a")]))
    server.response_end(1)
    assert _runs(server.receive_data(join([request_frame(1, b"b")])))


def test_no_settings_means_identity() -> None:
    """Without a settings frame the output is identity-encoded."""
    server = _server(DuplexMode.FULL)
    server.receive_data(join([request_frame(1, b"a", sflags=1)]))
    frames = frames_of(server.response_objects(1, [b"x"]))
    assert frames[0].payload == b"\x48identity"


# ----------------------------------------------------------------- §2.6 violations

REQ = cbor.dumps({b"name": b"heads"})
BAD_CASES: dict[str, tuple[list[Frame], str]] = {
    "even stream": ([f(1, 2, 1, T.COMMAND_REQUEST, NEW, REQ)], "even-numbered stream"),
    "unknown stream without begin": (
        [f(1, 1, 0, T.COMMAND_REQUEST, NEW, REQ)],
        "without the stream-begin",
    ),
    "begin twice": (
        [settings_frame(), f(1, 1, 1, T.COMMAND_REQUEST, NEW, REQ)],
        "already open",
    ),
    "encoded from client": ([f(1, 1, 5, T.COMMAND_REQUEST, NEW, REQ)], "encoded frames"),
    "initial: command data": ([f(1, 1, 1, T.COMMAND_DATA, 2, b"")], "unexpected COMMAND_DATA"),
    "initial: response frame": ([f(1, 1, 1, T.COMMAND_RESPONSE, 2, b"")], "unexpected"),
    "stream settings from client": ([f(1, 1, 1, T.STREAM_SETTINGS, 2, b"\x40")], "unexpected"),
    "settings both flags": ([f(1, 1, 1, T.SENDER_PROTOCOL_SETTINGS, 3, b"\xa0")], "exactly one"),
    "settings no flags": ([f(1, 1, 1, T.SENDER_PROTOCOL_SETTINGS, 0, b"\xa0")], "exactly one"),
    "settings empty": ([f(1, 1, 1, T.SENDER_PROTOCOL_SETTINGS, 2, b"")], "empty payload"),
    "settings bad cbor": ([f(1, 1, 1, T.SENDER_PROTOCOL_SETTINGS, 2, b"\x61a")], "cannot decode"),
    "settings two values": ([f(1, 1, 1, T.SENDER_PROTOCOL_SETTINGS, 2, b"\xa0\xa0")], "one CBOR"),
    "settings twice": ([settings_frame(), settings_frame(rid=1)], "already open"),
    "settings after command": (
        [request_frame(1, b"a", sflags=1), f(1, 1, 0, T.SENDER_PROTOCOL_SETTINGS, 2, b"\xa0")],
        "unexpected SENDER_PROTOCOL_SETTINGS",
    ),
    "no common encoding": ([settings_frame([b"bz2"])], "no content encoding in common"),
    "request both new and continuation": (
        [settings_frame(), f(1, 1, 0, T.COMMAND_REQUEST, NEW | CONT, REQ)],
        "exactly one of new/continuation",
    ),
    "request neither flag": (
        [settings_frame(), f(1, 1, 0, T.COMMAND_REQUEST, 0, REQ)],
        "exactly one of new/continuation",
    ),
    "continuation first": (
        [settings_frame(), f(1, 1, 0, T.COMMAND_REQUEST, CONT, REQ)],
        "unexpected COMMAND_REQUEST",
    ),
    "continuation for other id": (
        [
            settings_frame(),
            f(1, 1, 0, T.COMMAND_REQUEST, NEW | MORE, REQ[:2]),
            f(3, 1, 0, T.COMMAND_REQUEST, CONT, REQ[2:]),
        ],
        "not receiving",
    ),
    "new while receiving": (
        [
            settings_frame(),
            f(1, 1, 0, T.COMMAND_REQUEST, NEW | MORE, REQ[:2]),
            f(1, 1, 0, T.COMMAND_REQUEST, NEW, REQ),
        ],
        "already in use",
    ),
    "have-data mismatch": (
        [
            settings_frame(),
            f(1, 1, 0, T.COMMAND_REQUEST, NEW | MORE | HAVE_DATA, REQ[:2]),
            f(1, 1, 0, T.COMMAND_REQUEST, CONT, REQ[2:]),
        ],
        "have-data",
    ),
    "data not expected": (
        [
            settings_frame(),
            f(1, 1, 0, T.COMMAND_REQUEST, NEW | MORE, REQ[:2]),
            f(1, 1, 0, T.COMMAND_DATA, CommandDataFlag.EOS, b"x"),
        ],
        "not expecting data",
    ),
    "data without flags": (
        [
            settings_frame(),
            f(1, 1, 0, T.COMMAND_REQUEST, NEW | HAVE_DATA, REQ),
            f(1, 1, 0, T.COMMAND_DATA, 0, b"x"),
        ],
        "exactly one of continuation/eos",
    ),
    "bad request cbor": ([settings_frame(), f(1, 1, 0, T.COMMAND_REQUEST, NEW, b"\xff")], "decode"),
    "request not a map": ([settings_frame(), f(1, 1, 0, T.COMMAND_REQUEST, NEW, [1])], "map"),
    "missing name": (
        [settings_frame(), f(1, 1, 0, T.COMMAND_REQUEST, NEW, {b"args": {}})],
        "missing the name",
    ),
    "text name": (
        [settings_frame(), f(1, 1, 0, T.COMMAND_REQUEST, NEW, b"\xa1\x44name\x61x")],
        "text strings",
    ),
    "args not a map": (
        [settings_frame(), f(1, 1, 0, T.COMMAND_REQUEST, NEW, {b"name": b"x", b"args": [1]})],
        "arguments must be a map",
    ),
    "oversize frame": ([f(1, 1, 1, T.COMMAND_DATA, 2, b"x" * 40000)], "exceeds"),
}


@pytest.mark.parametrize("mode", list(DuplexMode))
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_protocol_violations(case: str, mode: DuplexMode) -> None:
    """Each §2.6 violation gives a precise failure and a terminal ERRORED state."""
    frames, expected = BAD_CASES[case]
    server = _server(mode)
    actions = server.receive_data(join(frames))
    if mode is DuplexMode.HALF and _failure(actions) is None:
        actions = server.end_of_input()
    message = _failure(actions)
    assert message is not None and expected in message, (message, actions)
    assert server.state is ServerState.ERRORED
    assert not _runs(actions)
    if mode is DuplexMode.FULL:
        assert isinstance(actions[-1], CloseConnection)
        (err,) = frames_of(actions)
        assert err.type is T.ERROR_RESPONSE and err.stream_id % 2 == 0
        body = cbor.loads(err.payload)
        assert isinstance(body, dict) and body[b"type"] == b"protocol"
        assert body[b"message"][0][b"msg"] == message.encode()
    else:
        assert actions == [ProtocolFailure(message=message)]
    # Errored reactors ignore further input.
    assert server.receive_data(join([request_frame(9, b"x")])) == []


def test_end_of_input_inside_request() -> None:
    """Input ending mid-request or mid-frame is a protocol failure."""
    server = _server()
    server.receive_data(
        join([settings_frame(), f(1, 1, 0, T.COMMAND_REQUEST, NEW | MORE, b"\xa1")])
    )
    assert "end of input" in (_failure(server.end_of_input()) or "")
    server = _server()
    server.receive_data(join([settings_frame()])[:-1])
    assert "inside a frame" in (_failure(server.end_of_input()) or "")


# ----------------------------------------------------------------- limits


def test_request_size_limit() -> None:
    """A request larger than max_request_bytes is refused while it is still arriving."""
    client = ClientFrameReactor()
    _, actions = client.call_command(b"push", {}, data=b"D" * 200_000)
    server = _server(DuplexMode.FULL, max_request_bytes=100_000)
    assert "exceeds 100000 bytes" in (_failure(server.receive_data(_data(actions))) or "")


def test_requests_in_flight_limit() -> None:
    """No more than max_requests_in_flight requests may exist at once."""
    server = _server(DuplexMode.FULL, max_requests_in_flight=3)
    frames = [settings_frame()] + [request_frame(rid, b"x") for rid in (1, 3, 5, 7)]
    actions = server.receive_data(join(frames))
    assert len(_runs(actions)) == 0  # the failure discards the batch's dispatches
    assert "too many requests" in (_failure(actions) or "")


def test_buffer_limit_across_partial_requests() -> None:
    """Many partial requests together may not exceed max_buffer."""
    server = _server(DuplexMode.FULL, max_buffer=50_000)
    frames = [settings_frame()]
    for rid in range(1, 41, 2):
        frames.append(f(rid, 1, 0, T.COMMAND_REQUEST, NEW | MORE, b"\x00" * 5000))
    assert "buffered requests exceed" in (_failure(server.receive_data(join(frames))) or "")


def test_full_mode_dispatches_and_answers_while_receiving() -> None:
    """FULL: each request runs as it completes; responses flow meanwhile."""
    client = ClientFrameReactor(encodings=[b"zlib"])
    server = _server(DuplexMode.FULL)
    _, a1 = client.call_command(b"one", {})
    (run,) = _runs(server.receive_data(_data(a1)))
    out = server.response_objects(run.request_id, [b"r1"])
    _, a2 = client.call_command(b"two", {})
    (run2,) = _runs(server.receive_data(_data(a2)))
    out += server.response_objects(run2.request_id, [b"r2"]) + server.response_end(1)
    out += server.response_end(3)
    events = client.receive_data(_data(out))
    assert _collect(events) == {1: [b"r1"], 3: [b"r2"]}


# ----------------------------------------------------------------- state x input


def _states() -> dict[str, list[Frame]]:
    return {
        "initial": [],
        "settings-receiving": [f(1, 1, 1, T.SENDER_PROTOCOL_SETTINGS, 1, b"\xa1")],
        "idle": [settings_frame()],
        "command-receiving": [settings_frame(), f(1, 1, 0, T.COMMAND_REQUEST, NEW | MORE, b"\xa1")],
        "receiving-data": [settings_frame(), f(1, 1, 0, T.COMMAND_REQUEST, NEW | HAVE_DATA, REQ)],
        "errored": [f(1, 2, 1, T.COMMAND_REQUEST, NEW, REQ)],
    }


@pytest.mark.parametrize("mode", list(DuplexMode))
def test_every_state_by_every_frame(mode: DuplexMode) -> None:
    """Every (state, frame type, flags) pair yields actions, never an uncaught exception."""
    for (name, prefix), kind, flags, sflags in itertools.product(
        _states().items(), list(FrameType), range(16), (0, 1)
    ):
        server = _server(mode)
        server.receive_data(join(prefix))
        actions = server.receive_data(join([f(1, 1, sflags, kind, flags, REQ)]))
        assert all(
            isinstance(a, (RunCommand, SendFrames, ProtocolFailure, CloseConnection))
            for a in actions
        ), (name, kind, flags)
        if server.state is not ServerState.ERRORED:
            server.end_of_input()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(list(DuplexMode)))
def test_garbage_never_raises(data: bytes, mode: DuplexMode) -> None:
    """Random bytes give actions (usually a ProtocolFailure), never an exception."""
    server = _server(mode, max_request_bytes=1000)
    server.receive_data(join([settings_frame()]) + data)
    if server.state is not ServerState.ERRORED:
        server.end_of_input()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_client_garbage_never_raises(data: bytes) -> None:
    """The client reactor turns random server bytes into events, never exceptions."""
    client = ClientFrameReactor()
    client.call_command(b"x", {})
    client.receive_data(data)
    client.end_of_input()


# ----------------------------------------------------------------- client/server pairs


def _collect(events: Sequence[ClientEvent]) -> dict[int, list[object]]:
    got: dict[int, list[object]] = {}
    finished: set[int] = set()
    for event in events:
        if isinstance(event, ResponseObjects):
            got.setdefault(event.request_id, []).extend(event.objects)
        elif isinstance(event, ResponseFinished):
            finished.add(event.request_id)
            got.setdefault(event.request_id, [])
        else:
            raise AssertionError(event)
    assert finished == set(got)
    return got


@pytest.mark.parametrize(
    ("mode", "spread"),
    [(DuplexMode.HALF, False), (DuplexMode.FULL, False), (DuplexMode.FULL, True)],
)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_pair_interleaved_commands(mode: DuplexMode, encoding: bytes, spread: bool) -> None:
    """Client and server agree through many interleaved responses on shared and own streams."""
    rng = random.Random(f"{mode}{encoding!r}{spread}")
    client = ClientFrameReactor(encodings=[encoding, b"identity"])
    server = _server(mode)
    expected: dict[int, list[object]] = {}
    wire = b""
    for index in range(6):
        rid, actions = client.call_command(b"cmd%d" % index, {b"i": index})
        expected[rid] = [
            {b"n": index, b"blob": rng.randbytes(rng.randrange(0, 5000))},
            b"t" * rng.randrange(0, 90000),
            cbor.EncodedCBOR(cbor.dumps([index, {index}])),
        ]
        wire += _data(actions)
    runs = _runs(server.receive_data(wire))
    runs += _runs(server.end_of_input())
    assert sorted(r.request_id for r in runs) == sorted(expected)
    streams = {rid: (server.open_stream() if spread and rid % 3 == 0 else None) for rid in expected}
    pending = {rid: list(objs) for rid, objs in expected.items()}
    out: list[ServerAction] = []
    while pending:
        rid = rng.choice(sorted(pending))
        if pending[rid]:
            out += server.response_objects(rid, [pending[rid].pop(0)], stream_id=streams[rid])
        else:
            out += server.response_end(rid)
            del pending[rid]
    data = _data(out)
    events: list[ClientEvent] = []
    for i in range(0, len(data), 7777):
        events += client.receive_data(data[i : i + 7777])
    events += client.end_of_input()
    got = _collect(events)
    want = {
        rid: [o if not isinstance(o, cbor.EncodedCBOR) else cbor.loads(o) for o in objs]
        for rid, objs in expected.items()
    }
    assert got == want
    assert all(len(fr.payload) <= 32768 for fr in FrameDecoder().feed(data))


def test_client_redirect_and_server_error_events() -> None:
    """The client reports redirects and error-response frames as events."""
    client = ClientFrameReactor()
    server = _server(DuplexMode.FULL)
    _, a = client.call_command(b"one", {})
    _, b = client.call_command(b"two", {})
    server.receive_data(_data(a) + _data(b))
    out = server.response_redirect(1, {b"url": b"u", b"mediatype": b"m"})
    out += server.response_objects(3, [b"x"]) + server.response_error(3, b"bad %s", [b"thing"])
    events = client.receive_data(_data(out))
    assert ResponseRedirect(request_id=1, location={b"url": b"u", b"mediatype": b"m"}) in events
    assert events[-1] == ResponseError(
        request_id=3, message=b"bad %s", args=(b"thing",), kind=b"server"
    )
    assert client.outstanding == frozenset()


def test_client_protocol_failures() -> None:
    """The client refuses odd server streams, unknown requests and a missing status."""
    for frame in (
        f(1, 1, 1, T.COMMAND_RESPONSE, 2, b""),
        f(9, 2, 1, T.COMMAND_RESPONSE, 2, b""),
        f(1, 2, 0, T.COMMAND_RESPONSE, 2, b""),
        f(1, 2, 1, T.COMMAND_RESPONSE, 2, b""),
        f(1, 2, 1, T.COMMAND_RESPONSE, 2, [1]),
        f(1, 2, 1, T.TEXT_OUTPUT, 0, b""),
        f(1, 2, 1, T.STREAM_SETTINGS, 2, b"\x44bogo"),
    ):
        client = ClientFrameReactor()
        client.call_command(b"x", {})
        events = client.receive_data(join([frame]))
        assert isinstance(events[-1], ProtocolFailure), frame


def test_client_bomb_refused() -> None:
    """A compressed response frame that expands past the bound is a ProtocolFailure."""
    client = ClientFrameReactor(max_frame_output=1 << 20)
    client.call_command(b"x", {})
    server = _server(DuplexMode.FULL)
    server.receive_data(_data(ClientFrameReactor(encodings=[b"zlib"]).call_command(b"x", {})[1]))
    out = server.response_objects(1, [b"\0" * (32 << 20)]) + server.response_end(1)
    events = client.receive_data(_data(out))
    assert isinstance(events[-1], ProtocolFailure)
    assert "more than" in events[-1].message


def test_request_cancelled_drops_output() -> None:
    """After request_cancelled, output calls for it are dropped silently."""
    server = _server(DuplexMode.FULL)
    server.receive_data(join([settings_frame(), request_frame(1, b"x")]))
    server.request_cancelled(1)
    assert server.response_objects(1, [b"x"]) == []
    assert server.response_end(1) == []


def test_output_for_unknown_request_is_local_error() -> None:
    """Writing for a request the reactor never announced is our bug."""
    with pytest.raises(LocalProtocolError):
        _server(DuplexMode.FULL).response_objects(1, [b"x"])


# ----------------------------------------------------------------- real Mercurial 6.0.3


def _hg603_python() -> str | None:
    path = os.environ.get("HGWIRE_HG603_PYTHON") or "/work/venv-hg603/bin/python"
    return path if Path(path).exists() else None


HG603 = _hg603_python()
needs_hg603 = pytest.mark.skipif(
    HG603 is None, reason="Mercurial 6.0.3 venv not found (set HGWIRE_HG603_PYTHON)"
)

# Run inside Mercurial 6.0.3. argv: encodings, command names. Without stdin data it prints
# the client's request body (hex); with stdin (our response body) it replays the same
# calls, feeds the frames to its clientreactor and prints per-request decoded objects.
HG_SCRIPT = r"""
import io, sys
from mercurial import ui as uimod, wireprotoframing as wf
from mercurial.utils import cborutil
encs = [e.encode() for e in sys.argv[1].split(",")]
names = [n.encode() for n in sys.argv[2].split(",")]
reactor = wf.clientreactor(uimod.ui.load(), hasmultiplesend=False, buffersends=True,
                           clientcontentencoders=encs)
reqs = [reactor.callcommand(n, {b"nodes": [b"\x01" * 20]} if n == b"known" else {})[0]
        for n in names]
action, meta = reactor.flushcommands()
body = b"".join(bytes(fr) for fr in meta[b"framegen"])
data = sys.stdin.buffer.read()
if not data:
    sys.stdout.write(body.hex())
    sys.exit(0)
fh = io.BytesIO(data)
decoders = {r.requestid: cborutil.bufferingdecoder() for r in reqs}
results = {}
while True:
    frame = wf.readframe(fh)
    if frame is None:
        break
    action, meta = reactor.onframerecv(frame)
    if action == b"responsedata":
        rid = meta[b"request"].requestid
        decoders[rid].decode(meta[b"data"])
        if meta[b"eos"]:
            results[rid] = decoders[rid].getavailable()
    elif action == b"error":
        results[meta.get(b"request").requestid if b"request" in meta else 0] = (
            "error", meta.get(b"type"), meta[b"message"])
    elif action != b"noop":
        raise SystemExit("unexpected action %r" % action)
print(repr(sorted(results.items())))
"""


def _run_hg(encodings: str, names: str, stdin: bytes = b"") -> str:
    assert HG603 is not None
    result = subprocess.run(
        [HG603, "-c", HG_SCRIPT, encodings, names],
        input=stdin,
        capture_output=True,
        check=True,
        env={**os.environ, "HGRCPATH": "", "HGPLAIN": "1"},
    )
    return result.stdout.decode()


@needs_hg603
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_real_hg603_client_reads_our_server(encoding: bytes) -> None:
    """A real 6.0.3 client's request is accepted and our multi-response output decodes."""
    import ast

    names = "heads,known,filedata"
    body = bytes.fromhex(_run_hg(f"{encoding.decode()},identity", names))
    server = _server(DuplexMode.HALF)
    assert server.receive_data(body) == []
    runs = _runs(server.end_of_input())
    assert [(r.request_id, r.name) for r in runs] == [
        (1, b"heads"),
        (3, b"known"),
        (5, b"filedata"),
    ]
    assert runs[1].args == {b"nodes": [b"\x01" * 20]}
    assert server.encoding == encoding
    out = server.response_objects(1, [[NODE]]) + server.response_end(1)
    out += server.response_objects(3, [b"1", b"x" * 100000]) + server.response_end(3)
    out += server.response_error(5, b"unknown node: %s", [b"abc"])
    result = ast.literal_eval(_run_hg(f"{encoding.decode()},identity", names, _data(out)))
    assert result[0] == (1, [{b"status": b"ok"}, [NODE]])
    assert result[1] == (3, [{b"status": b"ok"}, b"1", b"x" * 100000])
    assert result[2] == (
        5,
        [{b"status": b"error", b"error": {b"message": b"unknown node: %s", b"args": [b"abc"]}}],
    )


@needs_hg603
def test_real_hg603_client_reads_redirect_raw_and_server_error() -> None:
    """6.0.3 decodes our redirect, unencoded raw frames and error-response frames."""
    import ast

    names = "heads,known,filedata"
    body = bytes.fromhex(_run_hg("zstd-8mb,zlib,identity", names))
    server = _server(DuplexMode.HALF)
    server.receive_data(body)
    server.end_of_input()
    loc = {b"url": b"https://x/y", b"mediatype": b"application/mercurial-cbor"}
    out = server.response_redirect(1, loc)
    out += server.response_raw(3, cbor.dumps_sequence([b"a", [1]]), encode=False)
    out += server.response_end(3)
    out += server.response_objects(5, [b"z" * 1000]) + server.response_error(5, b"broke")
    result = dict(ast.literal_eval(_run_hg("zstd-8mb,zlib,identity", names, _data(out))))
    assert result[1] == [{b"status": b"redirect", b"location": loc}]
    assert result[3] == [{b"status": b"ok"}, b"a", [1]]
    assert result[5] == ("error", b"server", [{b"msg": b"broke"}])
