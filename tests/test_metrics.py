"""Metrics: what counts as a clone/pull/push, the per-service registry, the counting
listener wrapper, and who may read /metrics (in-process, no threads)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from hgwire_tw.access import AccessFileError, AccessPolicy, hash_password
from hgwire_tw.context import ServerContext, Settings
from hgwire_tw.metrics import NULL_HEX, ServerMetrics, classify, is_loopback
from hgwire_tw.repo.registry import RepositoryRegistry
from hgwire_tw.web.metricspage import MetricsResource, render_metrics

NODE = b"1234567890abcdef1234567890abcdef12345678"
RAW = bytes.fromhex(NODE.decode())
OTHER = bytes(reversed(RAW))


def scrape(metrics: ServerMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
    }


@pytest.mark.parametrize(
    "protocol, name, args, kind",
    [
        ("v1", b"getbundle", {b"*": {b"common": NULL_HEX, b"heads": NODE}}, "clone"),
        ("v1", b"getbundle", {b"*": {b"heads": NODE}}, "clone"),
        ("v1", b"getbundle", {b"*": {b"common": b""}}, "clone"),
        ("v1", b"getbundle", {b"*": {b"common": NULL_HEX + b" " + NODE}}, "pull"),
        ("v1", b"getbundle", {b"common": NODE}, "pull"),
        ("v1", b"stream_out", {}, "clone"),
        ("v1", b"unbundle", {b"heads": b"force"}, "push"),
        ("v1", b"heads", {}, None),
        ("v2", b"rawstorefiledata", {b"files": [b"changelog"]}, "clone"),
        (
            "v2",
            b"changesetdata",
            {b"revisions": [{b"type": b"changesetdagrange", b"roots": [], b"heads": [RAW]}]},
            "clone",
        ),
        (
            "v2",
            b"changesetdata",
            {
                b"revisions": [
                    {b"type": b"changesetdagrange", b"roots": [b"\0" * 20], b"heads": [RAW]}
                ]
            },
            "clone",
        ),
        (
            "v2",
            b"changesetdata",
            {b"revisions": [{b"type": b"changesetdagrange", b"roots": [RAW], b"heads": [OTHER]}]},
            "pull",
        ),
        # nothing new asked for (after a store copy, or a pull that finds nothing)
        (
            "v2",
            b"changesetdata",
            {b"revisions": [{b"type": b"changesetdagrange", b"roots": [RAW], b"heads": [RAW]}]},
            None,
        ),
        (
            "v2",
            b"changesetdata",
            {b"revisions": [{b"type": b"changesetexplicit", b"nodes": [RAW]}]},
            None,
        ),
        ("v2", b"changesetdata", {b"revisions": b"junk"}, None),
        ("v2", b"heads", {}, None),
    ],
)
def test_classify(protocol: str, name: bytes, args: dict[bytes, Any], kind: str | None) -> None:
    """A clone is a request for everything from a client that has nothing."""
    assert classify(protocol, name, args) == kind


def test_command_counts_and_times_with_bounded_labels() -> None:
    """command() counts the kind and observes the duration once the callback runs; an
    unknown command name from the network becomes the label 'other'."""
    metrics = ServerMetrics()
    done = metrics.command("rich", "http", "v1", b"getbundle", {b"*": {b"common": NULL_HEX}})
    assert done("result") == "result"
    metrics.command("rich", "ssh", "v1", b"unbundle", {})(None)
    metrics.command("", "tcp", "v2", b"no-such-\xff", {})(None)
    found = scrape(metrics)
    assert found[("hgwire_clones_total", frozenset({("repo", "rich"), ("transport", "http")}))] == 1
    assert found[("hgwire_pushes_total", frozenset({("repo", "rich"), ("transport", "ssh")}))] == 1
    labels = frozenset({("transport", "tcp"), ("protocol", "v2"), ("command", "other")})
    assert found[("hgwire_request_duration_seconds_count", labels)] == 1
    labels = frozenset({("transport", "http"), ("protocol", "v1"), ("command", "getbundle")})
    assert found[("hgwire_request_duration_seconds_count", labels)] == 1


def test_services_do_not_share_metrics() -> None:
    """Each ServerMetrics has its own registry: two in one process neither collide nor
    see each other's counts."""
    a, b = ServerMetrics(), ServerMetrics()
    a.command("x", "http", "v1", b"stream_out", {})(None)
    key = ("hgwire_clones_total", frozenset({("repo", "x"), ("transport", "http")}))
    assert scrape(a)[key] == 1 and key not in scrape(b)


def test_state_collector_reads_cache_redirects_and_pools() -> None:
    """Cache and redirect counters and thread-pool depths are read at scrape time."""

    class Stats:
        def snapshot(self) -> dict[str, int]:
            return {"hits": 3, "misses": 5}

    class Cache:
        stats = Stats()

    class Redirector:
        redirects = 2

    class Runner:
        redirector = Redirector()

    class Queue:
        def qsize(self) -> int:
            return 7

    class Pool:
        q = Queue()
        working = [None, None]

    class Ctx:
        cache = Cache()
        runner = Runner()

    metrics = ServerMetrics()
    metrics.watch(Ctx())
    metrics.watch_pool("repo", Pool())
    metrics.watch_pool("web", lambda: Pool())
    found = scrape(metrics)
    assert found[("hgwire_cache_hits_total", frozenset())] == 3
    assert found[("hgwire_cache_misses_total", frozenset())] == 5
    assert found[("hgwire_redirects_total", frozenset())] == 2
    for pool in ("repo", "web"):
        assert found[("hgwire_threadpool_queue_depth", frozenset({("pool", pool)}))] == 7
        assert found[("hgwire_threadpool_busy_threads", frozenset({("pool", pool)}))] == 2


@implementer(IHalfCloseableProtocol)
class HalfClosing(Protocol):
    """Writes a greeting, records half-closes."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def connectionMade(self) -> None:
        self.transport.write(b"hello ")  # type: ignore[union-attr]
        self.transport.writeSequence([b"wor", b"ld"])  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.events.append("read lost")

    def writeConnectionLost(self) -> None:
        self.events.append("write lost")


def test_counting_factory_counts_and_keeps_half_close() -> None:
    """The listener wrapper counts bytes and connections, passes the bytes through, and
    still offers half-close to the reactor when the real protocol takes it."""
    metrics = ServerMetrics()
    factory = metrics.counting_factory("tcp", Factory.forProtocol(HalfClosing))
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    proto.makeConnection(transport)
    assert transport.value() == b"hello world"
    assert IHalfCloseableProtocol.providedBy(proto)
    proto.readConnectionLost()
    assert proto.wrappedProtocol.events == ["read lost"]
    found = scrape(metrics)
    assert found[("hgwire_bytes_sent_total", frozenset({("transport", "tcp")}))] == 11
    assert found[("hgwire_active_connections", frozenset({("transport", "tcp")}))] == 1
    proto.connectionLost(None)
    found = scrape(metrics)
    assert found[("hgwire_active_connections", frozenset({("transport", "tcp")}))] == 0
    assert found[("hgwire_connections_total", frozenset({("transport", "tcp")}))] == 1
    plain = metrics.counting_factory("tcp", Factory.forProtocol(Protocol))
    assert not IHalfCloseableProtocol.providedBy(plain.buildProtocol(None))


# -------------------------------------------------------------------- who reads /metrics


def policy(tmp_path: Path, metrics_line: str) -> AccessPolicy:
    path = tmp_path / "access.toml"
    path.write_text(
        f'{metrics_line}\n[users.alice]\npassword = "{hash_password("pw")}"\n'
        '[[rules]]\nrepos = "*"\nread = ["anonymous"]\n',
        encoding="utf-8",
    )
    loaded = AccessPolicy.load(path)
    loaded.remember_login("alice", "pw", True)  # keep the check synchronous
    return loaded


def scrape_request(access: AccessPolicy, host: str, user: str | None = None) -> DummyRequest:
    ctx = ServerContext(
        reactor=None,
        registry=RepositoryRegistry({}),
        pool=None,  # type: ignore[arg-type]
        access=access,
        settings=Settings(),
    )
    request = DummyRequest([b"metrics"])
    request.path = request.uri = b"/metrics"
    request.client = IPv4Address("TCP", host, 4321)
    if user is not None:
        token = base64.b64encode(f"{user}:pw".encode())
        request.requestHeaders.setRawHeaders(b"authorization", [b"Basic " + token])
        request.getUser = lambda: user.encode()  # type: ignore[method-assign]
        request.getPassword = lambda: b"pw"  # type: ignore[method-assign]
    result = render_metrics(ctx, request)
    if result != NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


def test_metrics_readers(tmp_path: Path) -> None:
    """127.0.0.1 always reads /metrics; from elsewhere only the principals of the access
    file's `metrics` list (401 with a challenge when logging in could help, else 403)."""
    default = AccessPolicy.default()
    assert scrape_request(default, "127.0.0.1").responseCode == 200
    assert scrape_request(default, "10.1.2.3").responseCode == 403
    assert b"hgwire_clones" not in b"".join(scrape_request(default, "10.1.2.3").written)
    open_ = policy(tmp_path, 'metrics = ["anonymous"]')
    request = scrape_request(open_, "10.1.2.3")
    assert request.responseCode == 200 and b"hgwire_bytes_sent" in b"".join(request.written)
    alice = policy(tmp_path, 'metrics = ["alice"]')
    request = scrape_request(alice, "10.1.2.3")
    assert request.responseCode == 401
    assert request.responseHeaders.getRawHeaders(b"www-authenticate")[0].startswith(b"Basic")
    assert scrape_request(alice, "10.1.2.3", user="alice").responseCode == 200
    assert scrape_request(policy(tmp_path, ""), "10.1.2.3", user="alice").responseCode == 403


def test_metrics_list_must_name_known_users(tmp_path: Path) -> None:
    """A typo in `metrics` is an error when the access file is loaded."""
    with pytest.raises(AccessFileError, match="unknown user 'mallory'"):
        policy(tmp_path, 'metrics = ["mallory"]')


@pytest.mark.parametrize(
    "host, local",
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("unix", False),
    ],
)
def test_is_loopback(host: str, local: bool) -> None:
    """Only this machine's addresses count as local."""
    assert is_loopback(host) == local


def test_metrics_listener_resource() -> None:
    """A --metrics ENDPOINT listener answers /metrics (and /) and nothing else."""
    ctx = ServerContext(
        reactor=None,
        registry=RepositoryRegistry({}),
        pool=None,  # type: ignore[arg-type]
        access=AccessPolicy.default(),
    )
    resource = MetricsResource(ctx)
    for path, status in ((b"/metrics", 200), (b"/", 200), (b"/rich", 404)):
        request = DummyRequest([])
        request.path = request.uri = path
        body = resource.render(request)
        assert request.responseCode == status
        assert (b"hgwire_clones" in body) == (status == 200)
