"""Encoding jobs of the server frame reactor: per-stream order, any interleaving across
streams, bounded queues, failures while a job runs."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hgwire_tw.core import cbor
from hgwire_tw.core.errors import LocalProtocolError
from hgwire_tw.core.frames import FrameDecoder, FrameType, StreamFlag
from hgwire_tw.core.reactor import (
    ClientEvent,
    ClientFrameReactor,
    CloseConnection,
    DuplexMode,
    EncodeJob,
    ProtocolFailure,
    RequestState,
    ResponseError,
    ResponseFinished,
    ResponseObjects,
    ResponseRedirect,
    RunCommand,
    SendFrames,
    ServerAction,
    ServerFrameReactor,
)
from hgwire_tw.core.streams import ENCODINGS, IDENTITY


def _jobs(actions: Sequence[ServerAction]) -> list[EncodeJob]:
    return [a for a in actions if isinstance(a, EncodeJob)]


def _data(actions: Sequence[object]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendFrames))


def _connect(
    n: int, encoding: bytes = ENCODINGS[0], streams: int = 1
) -> tuple[ClientFrameReactor, ServerFrameReactor, list[int], list[int]]:
    """A client and a jobs-mode server with ``n`` running requests and open streams."""
    client = ClientFrameReactor(encodings=[encoding])
    server = ServerFrameReactor(mode=DuplexMode.FULL, encoding_jobs=True)
    stream_ids = [server.open_stream() for _ in range(streams)]  # before the settings
    wire = b""
    for i in range(n):
        _, actions = client.call_command(b"cmd%d" % i, {})
        wire += _data(actions)
    runs = [a.request_id for a in server.receive_data(wire) if isinstance(a, RunCommand)]
    assert len(runs) == n
    return client, server, runs, stream_ids


def _collect(events: Sequence[ClientEvent]) -> dict[int, list[object]]:
    got: dict[int, list[object]] = {}
    for event in events:
        if isinstance(event, ResponseObjects):
            got.setdefault(event.request_id, []).extend(event.objects)
        elif isinstance(event, ResponseFinished):
            got.setdefault(event.request_id, []).append("eos")
        elif isinstance(event, ResponseError):
            got.setdefault(event.request_id, []).append(("error", event.message, event.kind))
        elif isinstance(event, ResponseRedirect):
            got.setdefault(event.request_id, []).append(("redirect", event.location))
        else:
            raise AssertionError(event)
    return got


# -- the Hypothesis model --------------------------------------------------------------

_OBJECT = st.one_of(
    st.binary(max_size=3000),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.lists(st.binary(max_size=40), max_size=5),
    st.dictionaries(st.binary(max_size=8), st.binary(max_size=200), max_size=4),
)
_BATCH = st.lists(_OBJECT, min_size=0, max_size=4)
#: What one request answers: batches, then how it ends.
_SCRIPT = st.tuples(
    st.lists(_BATCH, max_size=4),
    st.sampled_from(["end", "error", "redirect"]),
)


@dataclass
class _Script:
    batches: list[list[object]]
    ending: str
    expected: list[object] = field(default_factory=list)


@settings(max_examples=60, deadline=None)
@given(
    scripts=st.lists(_SCRIPT, min_size=1, max_size=6),
    streams=st.integers(min_value=1, max_value=3),
    encoding=st.sampled_from(ENCODINGS),
    choices=st.lists(st.integers(min_value=0, max_value=1000), max_size=400),
    wait=st.booleans(),
)
def test_any_interleaving_of_jobs_decodes_to_each_requests_objects(
    scripts: list[tuple[list[list[object]], str]],
    streams: int,
    encoding: bytes,
    choices: list[int],
    wait: bool,
) -> None:
    """Whatever order jobs run and finish in across streams, each request decodes exactly.

    ``wait``: submit a request's next output only once its previous job is written (what
    the transports do); otherwise submit any time and rely on per-stream order alone.
    """
    client, server, rids, stream_ids = _connect(len(scripts), encoding, streams)
    todo: dict[int, _Script] = {}
    for rid, (batches, ending) in zip(rids, scripts, strict=True):
        script = _Script([list(b) for b in batches], ending)
        if ending == "redirect":
            script.batches = []
            script.expected = [("redirect", {b"url": b"u%d" % rid})]
        else:
            script.expected = [o for b in script.batches for o in b]
            if ending == "end":
                script.expected.append("eos")
            elif batches:
                script.expected.append(("error", b"boom", b"server"))
            else:
                script.expected.append(("error", b"boom", b"command"))
        todo[rid] = script
    stream_of = {rid: stream_ids[i % len(stream_ids)] for i, rid in enumerate(rids)}
    expected = {rid: s.expected for rid, s in todo.items()}
    handed: list[EncodeJob] = []  # jobs the "transport" holds, not yet run
    ran: list[tuple[EncodeJob, SendFrames | None]] = []  # run, not yet written
    wire: list[bytes] = []
    choice = iter(choices)

    def take(actions: Sequence[ServerAction]) -> None:
        handed.extend(_jobs(actions))
        assert not [a for a in actions if not isinstance(a, EncodeJob)]
        busy = [j.stream_id for j in handed] + [j.stream_id for j, _ in ran]
        assert len(busy) == len(set(busy)), "two jobs at once on one stream"

    for _ in range(10_000):  # bounded: every step makes progress
        submittable = [r for r in todo if not (wait and server.output_pending(r))]
        moves = len(submittable) + len(handed) + len(ran)
        if not moves:
            break
        pick = next(choice, 0) % moves
        if pick < len(submittable):
            rid = submittable[pick]
            script = todo[rid]
            if script.batches:
                batch = script.batches.pop(0)
                take(server.response_objects(rid, batch, stream_id=stream_of[rid]))
            else:
                del todo[rid]
                if script.ending == "end":
                    take(server.response_end(rid))
                elif script.ending == "error":
                    take(server.response_error(rid, b"boom"))
                else:
                    take(server.response_redirect(rid, {b"url": b"u%d" % rid}))
                assert server.request_state(rid) in (RequestState.FINISHING, None)
        elif pick < len(submittable) + len(handed):
            job = handed.pop(pick - len(submittable))
            ran.append((job, job.run()))
        else:
            job, send = ran.pop(pick - len(submittable) - len(handed))
            if send is not None:
                wire.append(send.data)
            take(server.job_done(job))
    assert not todo and not handed and not ran
    assert not server.jobs_pending
    assert all(server.request_state(rid) is None for rid in rids)
    data = b"".join(wire)
    events = client.receive_data(data) + client.end_of_input()
    assert _collect(events) == expected
    assert {fr.stream_id for fr in FrameDecoder().feed(data)} <= set(stream_ids)


# -- unit tests --------------------------------------------------------------------------


def test_inline_mode_returns_frames_and_jobs_mode_returns_jobs() -> None:
    """Without encoding_jobs output calls return SendFrames; with it, EncodeJobs."""
    inline = ServerFrameReactor(mode=DuplexMode.FULL)
    client = ClientFrameReactor()
    _, actions = client.call_command(b"x", {})
    inline.receive_data(_data(actions))
    out = inline.response_objects(1, [b"a"]) + inline.response_end(1)
    assert all(isinstance(a, SendFrames) for a in out)
    assert inline.request_state(1) is None
    _, server, _, _ = _connect(1)
    (job,) = server.response_objects(1, [b"a"])
    assert isinstance(job, EncodeJob) and job.stream_id == 2 and job.request_id == 1


def test_jobs_of_one_stream_come_out_one_at_a_time_in_order() -> None:
    """A busy stream queues further jobs; job_done hands out the next, in order."""
    _, server, rids, _ = _connect(3)
    first = _jobs(server.response_objects(rids[0], [b"a"]))
    assert len(first) == 1
    assert server.response_objects(rids[1], [b"b"]) == []
    assert server.response_end(rids[2]) == []
    first[0].run()
    second = server.job_done(first[0])
    assert [j.request_id for j in second] == [rids[1]]
    second[0].run()
    third = server.job_done(second[0])
    assert [j.request_id for j in third] == [rids[2]] and third[0].final
    third[0].run()
    assert server.job_done(third[0]) == []
    with pytest.raises(LocalProtocolError):
        server.job_done(third[0])


def test_finishing_request_keeps_its_id_until_its_last_job_is_done() -> None:
    """A request whose eos is still being encoded is FINISHING and its id is taken."""
    client, server, _, _ = _connect(1)
    (job,) = server.response_end(1)
    assert server.request_state(1) is RequestState.FINISHING and server.output_pending(1)
    with pytest.raises(LocalProtocolError):
        server.response_objects(1, [b"late"])
    send = job.run()
    assert server.job_done(job) == []
    assert server.request_state(1) is None and not server.output_pending(1)
    assert send is not None
    assert client.receive_data(send.data) == [ResponseFinished(request_id=1)]


def test_streams_opened_before_settings_use_the_negotiated_encoding() -> None:
    """open_stream() before the client's settings still compresses with its encoding."""
    client, server, _, streams = _connect(1, ENCODINGS[0], streams=2)
    (job,) = server.response_objects(1, [b"z" * 5000], stream_id=streams[1])
    sends = [job.run()]
    server.job_done(job)
    (end,) = server.response_end(1)
    sends.append(end.run())
    data = _data([s for s in sends if s is not None])
    frames = FrameDecoder().feed(data)
    assert {fr.stream_id for fr in frames} == {streams[1]}
    settings_frame = next(fr for fr in frames if fr.type is FrameType.STREAM_SETTINGS)
    assert cbor.loads(settings_frame.payload) == ENCODINGS[0] != IDENTITY
    assert sum(len(fr.payload) for fr in frames) < 1000  # really compressed
    assert _collect(client.receive_data(data)) == {1: [b"z" * 5000, "eos"]}


def test_failure_while_a_job_runs_uses_a_fresh_stream() -> None:
    """A protocol failure while stream 2 is busy sends its error frame on a new stream."""
    client, server, _, _ = _connect(1)
    (job,) = server.response_objects(1, [b"a" * 100])
    actions = server.receive_data(b"\xff" * 16)  # garbage: a protocol failure
    sends = [a for a in actions if isinstance(a, SendFrames)]
    assert isinstance(actions[-1], CloseConnection)
    assert any(isinstance(a, ProtocolFailure) for a in actions)
    (frame,) = sends[0].frames
    assert frame.stream_id == 4 and frame.stream_flags & StreamFlag.BEGIN
    assert frame.type is FrameType.ERROR_RESPONSE
    job.run()  # the worker finishes anyway; nothing more comes out
    assert server.job_done(job) == [] and not server.jobs_pending
    events = client.receive_data(sends[0].data)
    assert isinstance(events[0], ResponseError) and events[0].kind == b"protocol"


def test_failure_with_idle_stream_uses_stream_2() -> None:
    """Without a running job the protocol error goes on the default stream, as before."""
    _, server, _, _ = _connect(1)
    actions = server.receive_data(b"\xff" * 16)
    (send,) = [a for a in actions if isinstance(a, SendFrames)]
    assert send.frames[0].stream_id == 2


def test_objects_cbor_refuses_fail_the_job_and_leave_the_stream_intact() -> None:
    """A job whose objects cannot be encoded raises; the stream still decodes afterwards."""
    client, server, rids, _ = _connect(2)
    (bad,) = server.response_objects(rids[0], ["text is not allowed"])
    with pytest.raises(LocalProtocolError):
        bad.run()
    server.job_done(bad)
    (error,) = server.response_error(rids[0], b"server error: %s", [b"x"])
    out = [error.run()]
    server.job_done(error)
    (good,) = server.response_objects(rids[1], [b"fine"])
    out.append(good.run())
    server.job_done(good)
    (end,) = server.response_end(rids[1])
    out.append(end.run())
    events = client.receive_data(_data([s for s in out if s is not None]))
    got = _collect(events)
    assert got[rids[1]] == [b"fine", "eos"]
    assert got[rids[0]] == [("error", b"server error: %s", b"server")]


def test_jobs_of_different_streams_run_on_threads_at_once() -> None:
    """Two streams' jobs run concurrently on real threads and both decode exactly."""
    client, server, rids, streams = _connect(2, ENCODINGS[0], streams=2)
    payload = {rid: [bytes([rid]) * 200_000, list(range(rid, rid + 50))] for rid in rids}
    wire: list[bytes] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(3):
            jobs = [
                j
                for rid, sid in zip(rids, streams, strict=True)
                for j in _jobs(server.response_objects(rid, payload[rid], stream_id=sid))
            ]
            assert len(jobs) == 2
            for job, send in zip(jobs, pool.map(lambda j: j.run(), jobs), strict=True):
                if send is not None:
                    wire.append(send.data)
                assert server.job_done(job) == []
        ends = [j for rid in rids for j in _jobs(server.response_end(rid))]
        for job, send in zip(ends, pool.map(lambda j: j.run(), ends), strict=True):
            assert send is not None
            wire.append(send.data)
            server.job_done(job)
    got = _collect(client.receive_data(b"".join(wire)))
    assert got == {rid: [*payload[rid] * 3, "eos"] for rid in rids}
