"""The HTTP v1 resource driven in-process: a real ``HTTPChannel`` over ``StringTransport``
and a synchronous stand-in for the repository pool, so pausing, disconnects and limits
can be observed step by step."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from mercurial import hg
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from hgwire_tw.access import AccessPolicy
from hgwire_tw.commands.runner import CommandRunner
from hgwire_tw.context import ServerContext, Settings
from hgwire_tw.repo.registry import RepositoryRegistry
from hgwire_tw.repo.ui import make_ui
from hgwire_tw.transports.http import HgResource, HgSite
from tests import repobuilders as rb


class SyncPool:
    """Runs pool jobs on the calling thread; ``iterate`` hands over one object at a time
    and stops at an unfired delivery Deferred, as the real pool's worker waits."""

    def __init__(self, repo: Any) -> None:
        self.repo = repo
        self.closed = 0
        self.delivered = 0

    def run(self, served: Any, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return maybeDeferred(fn, self.repo, *args)

    def iterate(
        self,
        served: Any,
        gen_fn: Callable[..., Iterator[object]],
        args: Any,
        deliver: Any,
        *,
        write: bool = False,
        lane: Any = None,
    ) -> Deferred[None]:
        gen = gen_fn(self.repo, *args)

        def close() -> None:
            gen.close()
            self.closed += 1

        result: Deferred[None] = Deferred(lambda _: close())

        def step(_: object = None) -> None:
            while not result.called:
                try:
                    obj = next(gen)
                except StopIteration:
                    close()
                    result.callback(None)
                    return
                except Exception:
                    # as the real pool reports it: a failed Deferred, not a raise
                    failed(Failure())
                    return
                self.delivered += 1
                ret = deliver([obj])
                if isinstance(ret, Deferred):
                    ret.addCallbacks(step, lambda f: None if result.called else failed(f))
                    return

        def failed(f: Failure) -> None:
            close()
            result.errback(f)

        step()
        return result


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository whose bundle is a few MiB of incompressible data."""
    import os

    path = rb.init_repo(tmp_path_factory.mktemp("big") / "repo")
    (path / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    rb.hg("commit", "-A", "-q", "-m", "big", cwd=path)
    return path


def make_channel(
    repo_path: Path, settings: Settings | None = None, access: AccessPolicy | None = None
) -> tuple[Any, Any, SyncPool]:
    repo = hg.repository(make_ui(), bytes(repo_path))
    pool = SyncPool(repo)
    ctx = ServerContext(
        reactor=None,
        registry=RepositoryRegistry({"r": repo_path}),
        pool=pool,  # type: ignore[arg-type]
        access=access or AccessPolicy.default(),
        settings=settings or Settings(),
        runner=CommandRunner(pool),
    )
    site = HgSite(HgResource(ctx), ctx, reactor=Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport, pool


def request(
    channel: Any,
    target: bytes,
    headers: dict[bytes, bytes] | None = None,
    method: bytes = b"GET",
    body: bytes = b"",
) -> None:
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: test"]
    for k, v in (headers or {}).items():
        lines.append(k + b": " + v)
    if body or method == b"POST":
        lines.append(b"Content-Length: %d" % len(body))
    channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n" + body)


def split_response(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def dechunk(body: bytes) -> bytes:
    out = []
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out.append(rest[:n])
        body = rest[n + 2 :]
    return b"".join(out)


def getbundle_target(repo_path: Path) -> tuple[bytes, dict[bytes, bytes]]:
    import urllib.parse

    heads = rb.log_nodes(repo_path, "max(not secret())")[0]
    caps = "HG20,bundle2=" + urllib.parse.quote("HG20\nchangegroup=01,02")
    args = urllib.parse.urlencode({"bundlecaps": caps, "common": "0" * 40, "heads": heads})
    return b"/r?cmd=getbundle", {b"X-HgArg-1": args.encode()}


def test_stream_pauses_with_the_client_and_resumes(big_repo: Path) -> None:
    """While the transport is paused the producer gets no more data; resuming continues."""
    channel, transport, pool = make_channel(big_repo)
    target, headers = getbundle_target(big_repo)
    headers[b"X-HgProto-1"] = b"0.1 0.2 comp=zstd,zlib"
    transport.producer.pauseProducing()  # the client is not reading
    request(channel, target, headers)
    delivered = pool.delivered
    assert delivered <= 3  # StreamStart and a piece or two, then the worker waits
    transport.producer.resumeProducing()
    head, body = split_response(transport.value())
    assert b"200 Script output follows" in head
    assert b"Content-Type: application/mercurial-0.2" in head
    data = dechunk(body)
    assert data[:5] == b"\x04zstd"
    bundle = zstandard.ZstdDecompressor().decompressobj().decompress(data[5:])
    assert bundle.startswith(b"HG20") and len(bundle) > 3 * 1024 * 1024
    assert pool.delivered > delivered and pool.closed == 1


def test_disconnect_mid_stream_closes_the_generator(big_repo: Path) -> None:
    """A client that goes away mid-response stops the command's generator."""
    channel, transport, pool = make_channel(big_repo)
    target, headers = getbundle_target(big_repo)
    transport.producer.pauseProducing()
    request(channel, target, headers)
    assert pool.closed == 0
    channel.connectionLost(Failure(ConnectionError("gone")))
    assert pool.closed == 1


def test_legacy_client_gets_zlib(rich_repo: Path) -> None:
    """No X-HgProto header: 0.1 and zlib."""
    channel, transport, _ = make_channel(rich_repo)
    target, headers = getbundle_target(rich_repo)
    request(channel, target, headers)
    head, body = split_response(transport.value())
    assert b"Content-Type: application/mercurial-0.1" in head
    assert zlib.decompress(dechunk(body)).startswith(b"HG20")


def test_secret_head_is_an_out_of_band_error(rich_repo: Path) -> None:
    """Asking for a secret (unserved) head is a clean hg-error, not a server error."""
    channel, transport, _ = make_channel(rich_repo)
    target, headers = getbundle_target(rich_repo)
    secret = rb.log_nodes(rich_repo, "secret()")[0].encode()
    visible = rb.log_nodes(rich_repo, "max(not secret())")[0].encode()
    headers[b"X-HgArg-1"] = headers[b"X-HgArg-1"].replace(visible, secret)
    request(channel, target, headers)
    head, body = split_response(transport.value())
    assert b"Content-Type: application/hg-error" in head
    assert b"filtered" in body or b"unknown" in body


def test_body_over_limit_is_413_and_not_stored(rich_repo: Path) -> None:
    """A push bigger than max_push_bytes is answered 413 before anything runs."""
    anyone = AccessPolicy.from_mapping(
        {"rules": [{"repos": "*", "read": ["anonymous"], "write": ["anonymous"]}]}, base=rich_repo
    )
    settings = Settings(max_push_bytes=10, allow_push_over_http=True)
    channel, transport, pool = make_channel(rich_repo, settings, anyone)
    request(channel, b"/r?cmd=unbundle", {b"X-HgArg-1": b"heads=666f726365"}, b"POST", b"x" * 50)
    head, body = split_response(transport.value())
    assert head.startswith(b"HTTP/1.1 413")
    assert b"at most 10 bytes" in body
    assert pool.delivered == 0


def test_many_arg_headers_accepted(rich_repo: Path) -> None:
    """A long X-HgArg-N series (bigger than twisted's 16 KiB default) is accepted."""
    channel, transport, _ = make_channel(rich_repo)
    nodes = "+".join(["1" * 40] * 1000)  # unknown nodes
    encoded = f"nodes={nodes}".encode()
    headers = {
        b"X-HgArg-%d" % (i // 1000 + 1): encoded[i : i + 1000] for i in range(0, len(encoded), 1000)
    }
    request(channel, b"/r?cmd=known", headers)
    head, body = split_response(transport.value())
    assert b"200 Script output follows" in head
    assert body.endswith(b"0" * 1000)


def test_post_args(rich_repo: Path) -> None:
    """Arguments in the POST body (X-HgArgs-Post) are read."""
    channel, transport, _ = make_channel(rich_repo, Settings(http_post_args=True))
    args = b"key=tip"
    request(channel, b"/r?cmd=lookup", {b"X-HgArgs-Post": b"%d" % len(args)}, b"POST", args)
    head, body = split_response(transport.value())
    assert b"200 Script output follows" in head and body.startswith(b"1 ")


def test_min_send_refuses_stream_answers_only(rich_repo: Path) -> None:
    """With mintx=0.2 a 0.1-only client's getbundle gets the out-of-band refusal decided
    before the call; a string answer (heads) still goes out as 0.1."""
    channel, transport, _ = make_channel(rich_repo, Settings(v1_min_send="0.2"))
    target, headers = getbundle_target(rich_repo)
    request(channel, target, headers)
    head, body = split_response(transport.value())
    assert b"Content-Type: application/hg-error" in head
    assert body == b"this server sends media type 0.2 or newer; upgrade your client\n"
    channel, transport, _ = make_channel(rich_repo, Settings(v1_min_send="0.2"))
    request(channel, b"/r?cmd=heads")
    head, body = split_response(transport.value())
    assert b"Content-Type: application/mercurial-0.1" in head and body.endswith(b"\n")


def test_push_inside_batch_gets_the_push_refusal(rich_repo: Path) -> None:
    """pushkey inside a GET batch is refused on the worker (the call's grant allows no
    push) and answered with the refusal HTTP decided for push: 405, Allow: POST."""
    channel, transport, _ = make_channel(rich_repo)
    cmds = b"cmds=heads+%3Bpushkey+namespace%3Dbookmarks%2Ckey%3Dx%2Cold%3D%2Cnew%3D"
    request(channel, b"/r?cmd=batch", {b"X-HgArg-1": cmds})
    head, body = split_response(transport.value())
    assert head.startswith(b"HTTP/1.1 405 push requires POST request"), head
    assert b"Allow: POST" in head and body == b"0\npush requires POST request\n"


def test_capabilities_advertise_post_args_and_min_versions(rich_repo: Path) -> None:
    """Configured httppostargs, header size and minimum media types appear."""
    settings = Settings(http_post_args=True, http_header_max=2048, v1_min_send="0.1")
    channel, transport, _ = make_channel(rich_repo, settings)
    request(channel, b"/r?cmd=capabilities")
    _, body = split_response(transport.value())
    caps = body.split()
    assert b"httppostargs" in caps and b"httpheader=2048" in caps
    assert b"httpmediatype=0.1rx,0.1tx,0.2tx,mintx=0.1" in caps


def test_stream_clone_disabled(rich_repo: Path) -> None:
    """With stream clones off, no stream capability is advertised."""
    channel, transport, _ = make_channel(rich_repo, Settings(stream_clone=False))
    request(channel, b"/r?cmd=capabilities")
    _, body = split_response(transport.value())
    assert not [c for c in body.split() if c.startswith(b"stream")]
    assert b"stream%3Dv2" not in body


def test_an_internal_error_is_an_hg_error_not_a_500(tmp_path: Path) -> None:
    """A command whose job fails unexpectedly (here: the pool's generator raises) gets
    Mercurial's out-of-band error, which hg prints as 'abort: remote error', naming an
    incident the log holds with the traceback; not a bare 500."""
    from twisted.python.failure import Failure as TwistedFailure

    repo = rb.make_linear_repo(tmp_path / "repo", commits=1)
    channel, transport, pool = make_channel(repo)

    def broken(*args: Any, **kwargs: Any) -> Deferred[None]:
        return fail(TwistedFailure(RuntimeError("the worker blew up")))

    pool.iterate = broken  # type: ignore[method-assign]
    request(channel, b"/r?cmd=heads")
    head, body = split_response(transport.value())
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Type: application/hg-error" in head
    assert body.startswith(b"internal server error (incident ")
    assert b"blew up" not in body


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted during the test."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _one_logged_bug(events: list[dict[str, Any]], body: bytes, exc: type[BaseException]) -> None:
    """Exactly one traceback was logged, for ``exc``, naming the incident ``body`` names."""
    from twisted.logger import formatEvent

    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1, [formatEvent(e) for e in failures]
    assert failures[0]["log_failure"].check(exc)
    incident = body.split(b"(incident ", 1)[1].split(b" ", 1)[0].decode()
    assert f"incident {incident} " in formatEvent(failures[0])


def test_a_bug_while_routing_a_v1_command_is_an_incident_hg_error(
    rich_repo: Path, monkeypatch: pytest.MonkeyPatch, logged: list[dict[str, Any]]
) -> None:
    """An exception raised synchronously inside ``render`` (here a dependency of the
    routing) answers a v1 command with the incident hg-error, not twisted.web's 500."""
    from hgwire_tw.web import metricspage

    def broken(*args: Any) -> bool:
        raise RuntimeError("routing blew up")

    monkeypatch.setattr(metricspage, "is_metrics_request", broken)
    channel, transport, _ = make_channel(rich_repo)
    request(channel, b"/r?cmd=heads")
    head, body = split_response(transport.value())
    assert head.startswith(b"HTTP/1.1 200 Script output follows"), head
    assert b"Content-Type: application/hg-error" in head
    assert body.startswith(b"internal server error (incident ") and b"blew up" not in body
    _one_logged_bug(logged, body, RuntimeError)


def test_a_bug_in_the_v2_api_is_an_incident_500(
    rich_repo: Path, monkeypatch: pytest.MonkeyPatch, logged: list[dict[str, Any]]
) -> None:
    """The v2 API's own error path (a bug after authentication, here the frame reactor
    failing) and a bug before it: a 500 whose body and reason name the incident."""
    from hgwire_tw.core.frames import FRAMING_MEDIA_TYPE
    from hgwire_tw.transports import http_v2

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("v2 blew up")

    framing = {b"Accept": FRAMING_MEDIA_TYPE, b"Content-Type": FRAMING_MEDIA_TYPE}
    target = b"/r/api/exp-http-v2-0003/ro/heads"
    for name in ("ServerFrameReactor", "render_api"):
        with monkeypatch.context() as patch:
            patch.setattr(http_v2, name, broken)
            channel, transport, _ = make_channel(rich_repo)
            request(channel, target, framing, b"POST", b"")
        head, body = split_response(transport.value())
        assert head.startswith(b"HTTP/1.1 500 Internal Server Error (incident "), head
        assert body.startswith(b"internal server error (incident ") and b"blew up" not in body
        _one_logged_bug(logged, body, RuntimeError)
        logged.clear()


def test_a_bug_outside_the_resource_is_an_incident_answer_too(
    rich_repo: Path, monkeypatch: pytest.MonkeyPatch, logged: list[dict[str, Any]]
) -> None:
    """A bug before the resource renders (twisted.web's processingFailed) gets the same
    answer: the incident hg-error for a v1 command, never twisted's page."""

    def broken(*args: Any) -> Any:
        raise RuntimeError("site blew up")

    monkeypatch.setattr(HgSite, "getResourceFor", broken)
    channel, transport, _ = make_channel(rich_repo)
    request(channel, b"/r?cmd=heads")
    head, body = split_response(transport.value())
    assert head.startswith(b"HTTP/1.1 200 Script output follows"), head
    assert b"Content-Type: application/hg-error" in head
    assert body.startswith(b"internal server error (incident ") and b"blew up" not in body
    _one_logged_bug(logged, body, RuntimeError)
