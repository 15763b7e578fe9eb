"""Prometheus metrics of one service: what it counts, and ``/metrics`` to read them.

Every ``ServerContext`` owns a ``ServerMetrics`` with its *own* ``CollectorRegistry``
(never prometheus_client's global one), so several services in one process (tests) never
share or collide on a series. The text exposition format comes from prometheus_client.

Where the numbers come from:

- ``command(...)`` is called by each transport when it starts a v1 or v2 command; it
  counts clones, pulls and pushes (``classify``) and returns a pass-through callback that
  observes the command's duration when its Deferred fires.
- ``counting_factory(transport, factory)`` wraps a listening factory: active connections
  and bytes written per transport, for HTTP, SSH and raw TCP alike (bytes as written to
  the socket layer: inside TLS, SSH encryption included).
- At scrape time a collector reads the response cache's own counters
  (``ContentStore.stats``), the redirector's, and the depth of each watched thread pool.

A *clone* is a request for everything from a client that has nothing: a v1 ``getbundle``
whose ``common`` nodes are all null (or absent), a v1 ``stream_out``, a v2
``changesetdata`` over a ``changesetdagrange`` with no non-null roots (what ``hgwire
clone`` and Mercurial 6.0's v2 peer send after discovery found nothing in common), or a
v2 ``rawstorefiledata`` (a stream clone). Any other ``getbundle``/``changesetdagrange``
is a pull, except a ``changesetdagrange`` whose heads are all among its roots (it asks
for nothing new: ``hgwire clone`` sends one after copying the store, and ``hgwire pull``
when it finds nothing, where ``hg pull`` sends no ``getbundle`` at all); ``unbundle`` is
a push. A clone from a clone bundle is therefore a pull (of
what is newer than the bundle) or nothing: the bundle itself comes from the blob store.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import alsoProvides, directlyProvides, providedBy

__all__ = [
    "CONTENT_TYPE",
    "NULL_HEX",
    "ServerMetrics",
    "classify",
    "is_loopback",
]

T = TypeVar("T")

#: The media type of ``ServerMetrics.exposition()``.
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode("ascii")
NULL_HEX = b"0" * 40
_NULL_NODE = b"\0" * 20

# Commands take milliseconds (discovery) to minutes (a big clone).
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_PAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _v1_args(args: Mapping[bytes, Any]) -> Mapping[bytes, Any]:
    # ``getbundle`` takes ``*``: its arguments arrive as one nested mapping.
    nested = args.get(b"*")
    return nested if isinstance(nested, Mapping) else args


def _all_null(nodes: Iterable[Any]) -> bool:
    return all(n in (NULL_HEX, _NULL_NODE) for n in nodes)


def classify(protocol: str, name: bytes, args: Mapping[bytes, Any]) -> str | None:
    """``"clone"``, ``"pull"``, ``"push"`` or None for a command (see the module docs)."""
    if protocol == "v1":
        if name == b"unbundle":
            return "push"
        if name == b"stream_out":
            return "clone"
        if name == b"getbundle":
            common = _v1_args(args).get(b"common", b"")
            nodes = common.split() if isinstance(common, bytes) else list(common or ())
            return "clone" if _all_null(nodes) else "pull"
        return None
    if name == b"rawstorefiledata":
        return "clone"
    if name == b"changesetdata":
        revisions = args.get(b"revisions")
        if not isinstance(revisions, list):
            return None
        ranges = [
            r
            for r in revisions
            if isinstance(r, Mapping) and r.get(b"type") == b"changesetdagrange"
        ]
        if not ranges:
            return None
        roots = [n for r in ranges for n in (r.get(b"roots") or ())]
        heads = [n for r in ranges for n in (r.get(b"heads") or ())]
        if _all_null(roots):
            return "clone"
        # Every head already among the roots: nothing but bookmarks and phases is sent
        # (what follows a store copy, or a pull that finds nothing; v1 clients do not
        # even ask then).
        if _hashable(roots) and _hashable(heads) and set(heads) <= set(roots):
            return None
        return "pull"
    return None


def _hashable(values: list[Any]) -> bool:
    return all(isinstance(v, bytes) for v in values)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a client address) is this machine (127.0.0.0/8, ::1)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _known_commands(protocol: str) -> frozenset[bytes]:
    if protocol == "v1":
        from mercurial import wireprotov1server

        return frozenset(wireprotov1server.commands)
    from hgwire_tw.commands.registry import COMMANDS

    return frozenset(COMMANDS)


class _Counting(ProtocolWrapper):
    """A protocol wrapper that counts the bytes its protocol writes."""

    factory: _CountingFactory

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper takes on the transport's interfaces (ISSLTransport: HTTPS stays
        # secure); the reactor asks the protocol whether it takes half-closes (raw TCP
        # does: a client's EOF must not cut the responses still being written).
        super().makeConnection(transport)
        if self.wrappedProtocol is not None and IHalfCloseableProtocol.providedBy(
            self.wrappedProtocol
        ):
            alsoProvides(self, IHalfCloseableProtocol)

    def write(self, data: bytes) -> None:
        self.factory.sent.inc(len(data))
        super().write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        data = list(data)
        self.factory.sent.inc(sum(map(len, data)))
        super().writeSequence(data)

    def readConnectionLost(self) -> None:
        self.wrappedProtocol.readConnectionLost()  # type: ignore[attr-defined]

    def writeConnectionLost(self) -> None:
        self.wrappedProtocol.writeConnectionLost()  # type: ignore[attr-defined]


class _CountingFactory(WrappingFactory):
    """Wraps a listening factory: active connections and bytes sent for one transport."""

    protocol = _Counting
    noisy = False  # the wrapped factory logs its own start and stop

    def __init__(self, wrapped: Any, metrics: ServerMetrics, transport: str) -> None:
        super().__init__(wrapped)
        self.sent = metrics.bytes_sent.labels(transport)
        self.active = metrics.connections.labels(transport)
        self.opened = metrics.connections_total.labels(transport)
        # The TLS wrapper asks the factory it wraps for ALPN protocols (the HTTP site).
        directlyProvides(self, providedBy(wrapped))

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this wrapper lacks (e.g. acceptableProtocols).
        if name == "wrappedFactory":
            raise AttributeError(name)
        return getattr(self.wrappedFactory, name)

    def buildProtocol(self, addr: Any) -> Any:
        inner = self.wrappedFactory.buildProtocol(addr)
        return None if inner is None else self.protocol(self, inner)

    def registerProtocol(self, p: Any) -> None:
        self.active.inc()
        self.opened.inc()

    def unregisterProtocol(self, p: Any) -> None:
        self.active.dec()


class _StateCollector(Collector):
    """Read at scrape time: cache and redirect counters, thread-pool depths."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        ctx = self.metrics.context
        stats = getattr(getattr(ctx, "cache", None), "stats", None)
        snapshot = stats.snapshot() if stats is not None else {}
        yield CounterMetricFamily(
            "hgwire_cache_hits",
            "Response cache lookups answered from the cache (v2 data commands, v1 getbundle).",
            value=snapshot.get("hits", 0),
        )
        yield CounterMetricFamily(
            "hgwire_cache_misses",
            "Response cache lookups that had to run the command.",
            value=snapshot.get("misses", 0),
        )
        redirector = getattr(getattr(ctx, "runner", None), "redirector", None)
        yield CounterMetricFamily(
            "hgwire_redirects",
            "v2 responses answered with a content redirect to the blob store.",
            value=getattr(redirector, "redirects", 0),
        )
        depth = GaugeMetricFamily(
            "hgwire_threadpool_queue_depth",
            "Jobs waiting for a thread, per pool (repo: wire protocol; write: pushes; "
            "web: hgweb pages; reactor: compression jobs and password checks).",
            labels=["pool"],
        )
        busy = GaugeMetricFamily(
            "hgwire_threadpool_busy_threads", "Threads running a job, per pool.", labels=["pool"]
        )
        for name, watched in sorted(self.metrics.pools.items()):
            pool = watched() if callable(watched) else watched
            depth.add_metric([name], pool.q.qsize())
            busy.add_metric([name], len(pool.working))
        yield depth
        yield busy


class ServerMetrics:
    """The metrics of one service (see the module docs); thread-safe."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.context: Any = None
        self.pools: dict[str, Any] = {}
        self.clones = Counter(
            "hgwire_clones",
            "Clones served (a whole-history getbundle, stream_out, v2 changesetdata from "
            "nothing, or rawstorefiledata).",
            ["repo", "transport"],
            registry=r,
        )
        self.pulls = Counter(
            "hgwire_pulls",
            "Pulls served (getbundle or v2 changesetdata of a client that has some history).",
            ["repo", "transport"],
            registry=r,
        )
        self.pushes = Counter(
            "hgwire_pushes", "Pushes received (v1 unbundle).", ["repo", "transport"], registry=r
        )
        self.bytes_sent = Counter(
            "hgwire_bytes_sent", "Bytes written to clients.", ["transport"], registry=r
        )
        self.connections = Gauge(
            "hgwire_active_connections", "Open client connections.", ["transport"], registry=r
        )
        self.connections_total = Counter(
            "hgwire_connections", "Client connections accepted.", ["transport"], registry=r
        )
        self.duration = Histogram(
            "hgwire_request_duration_seconds",
            "Wire protocol commands, from start to the end of their response.",
            ["transport", "protocol", "command"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.pages = Histogram(
            "hgwire_web_request_duration_seconds",
            "hgweb pages, from the request to the end of the response.",
            ["page"],
            buckets=_PAGE_BUCKETS,
            registry=r,
        )
        self.page_responses = Counter(
            "hgwire_web_responses",
            "hgweb responses by status class (2xx, 3xx, 4xx, 5xx).",
            ["status"],
            registry=r,
        )
        r.register(_StateCollector(self))
        self._known: dict[str, frozenset[bytes]] = {}

    # -- wiring, done once by makeService -------------------------------------------------

    def watch(self, ctx: Any) -> None:
        """Read the cache and redirector counters of ``ctx`` (a ``ServerContext``)."""
        self.context = ctx

    def watch_pool(self, name: str, threadpool: Any) -> None:
        """Report the queue depth and busy threads of a Twisted ``ThreadPool`` (or of the
        one a zero-argument callable returns at scrape time, e.g. ``reactor.getThreadPool``)."""
        self.pools[name] = threadpool

    def counting_factory(self, transport: str, factory: Any) -> Any:
        """``factory`` wrapped to count connections and bytes sent for ``transport``."""
        return _CountingFactory(factory, self, transport)

    # -- called by transports -------------------------------------------------------------

    def command(
        self, repo: str, transport: str, protocol: str, name: bytes, args: Mapping[bytes, Any]
    ) -> Callable[[T], T]:
        """Count a command starting; returns a pass-through ``addBoth`` callback that
        records its duration."""
        kind = classify(protocol, name, args)
        repo_label = repo or "/"
        if kind == "clone":
            self.clones.labels(repo_label, transport).inc()
        elif kind == "pull":
            self.pulls.labels(repo_label, transport).inc()
        elif kind == "push":
            self.pushes.labels(repo_label, transport).inc()
        known = self._known.get(protocol)
        if known is None:
            known = self._known[protocol] = _known_commands(protocol)
        # Command names come from the network: only known ones become label values.
        command = name.decode("ascii") if name in known else "other"
        timer = self.duration.labels(transport, protocol, command)
        started = time.monotonic()

        def finished(result: T) -> T:
            timer.observe(time.monotonic() - started)
            return result

        return finished

    def page(self, page: str, status: int, seconds: float) -> None:
        """Record one hgweb response."""
        self.pages.labels(page).observe(seconds)
        self.page_responses.labels(f"{status // 100}xx").inc()

    # -- reading ----------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text exposition format."""
        return generate_latest(self.registry)
