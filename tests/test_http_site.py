"""The HTTP request phase in-process: ``HgSite`` channels over ``StringTransport`` with a
``Clock``, so deadlines, caps, early answers and body admission are observed step by
step (the real-socket versions are in ``test_http_hardening.py``)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from mercurial import hg
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from hgwire_tw.access import AccessPolicy, hash_password
from hgwire_tw.context import ServerContext, Settings
from hgwire_tw.repo.registry import RepositoryRegistry
from hgwire_tw.repo.ui import make_ui
from hgwire_tw.transports.http import HgResource
from hgwire_tw.transports.httpauth import MAX_PASSWORD, LoginGuard
from hgwire_tw.transports.httpsite import HgSite, HTTPLimits
from tests.test_http_v1_resource import SyncPool

ACCESS = """
[users.alice]
password = "{pw}"
[[rules]]
repos = "*"
read = ["anonymous", "*"]
write = ["alice"]
"""
ALICE = b"Basic " + base64.b64encode(b"alice:pw")


def make_site(
    tmp_path: Path, repo_path: Path, limits: HTTPLimits, **settings: Any
) -> tuple[HgSite, Clock]:
    """A site serving ``repo_path`` (not changed: pushes here are refused or garbage)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    access_file = tmp_path / "access.toml"
    access_file.write_text(ACCESS.format(pw=hash_password("pw")), encoding="utf-8")
    access = AccessPolicy.load(access_file)
    access.remember_login("alice", "pw", True)  # no threaded password check in here
    clock = Clock()
    ctx = ServerContext(
        reactor=clock,
        registry=RepositoryRegistry({"r": repo_path}),
        pool=SyncPool(hg.repository(make_ui(), bytes(repo_path))),  # type: ignore[arg-type]
        access=access,
        settings=Settings(allow_push_over_http=True, http_limits=limits, **settings),
    )
    return HgSite(HgResource(ctx), ctx), clock


def connect(site: HgSite, host: str = "10.0.0.1") -> tuple[Any, StringTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", host, 1234))
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 1234))
    channel.makeConnection(transport)
    return channel, transport


def head(method: bytes, target: bytes, headers: dict[bytes, bytes]) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: test"]
    lines += [k + b": " + v for k, v in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def closed(transport: StringTransport) -> bool:
    return bool(transport.disconnecting)


def test_trickled_headers_are_cut_at_the_deadline(
    tmp_path: Path, linear_repo_template: Path
) -> None:
    """A byte a second never resets the deadline: 408 and closed after request_timeout."""
    site, clock = make_site(tmp_path, linear_repo_template, HTTPLimits(request_timeout=10))
    channel, transport = connect(site)
    for byte in b"GET /r?cmd=capabilities HTTP/1.1\r\nX-Slow: ":
        channel.dataReceived(bytes([byte]))
        clock.advance(1)
        if transport.value():
            break
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout")
    assert b"Connection: close" in transport.value()
    clock.advance(5)  # the linger
    assert closed(transport)


def test_a_body_at_the_rate_is_not_cut_but_a_trickle_is(
    tmp_path: Path, linear_repo_template: Path
) -> None:
    """Body bytes extend the deadline (one second per body_rate bytes): a push arriving at
    the rate completes past request_timeout; one at a tenth of it is cut with 408."""
    limits = HTTPLimits(request_timeout=5, body_rate=1000)
    for rate, expect in ((1000, b"HTTP/1.1 200"), (100, b"HTTP/1.1 408")):
        site, clock = make_site(tmp_path / str(rate), linear_repo_template, limits)
        channel, transport = connect(site)
        length = 20_000  # 20 s at the rate, far past the 5 s deadline
        channel.dataReceived(
            head(
                b"POST",
                b"/r?cmd=unbundle",
                {
                    b"Authorization": ALICE,
                    b"X-HgArg-1": b"heads=666f726365",
                    b"Content-Length": b"%d" % length,
                },
            )
        )
        sent = 0
        while sent < length and not transport.value():
            channel.dataReceived(b"x" * rate)
            sent += rate
            clock.advance(1)
        assert transport.value().startswith(expect), (rate, transport.value()[:80])


def test_connection_caps_refuse_with_503_and_free_on_close(
    tmp_path: Path, linear_repo_template: Path
) -> None:
    """Over max_per_address (or max_connections) a connection gets 503 and is closed;
    clients from other addresses are still accepted; a closed one frees its slot."""
    site, _ = make_site(
        tmp_path, linear_repo_template, HTTPLimits(max_connections=3, max_per_address=2)
    )
    first, _ = connect(site, "10.0.0.1")
    connect(site, "10.0.0.1")
    _, refused = connect(site, "10.0.0.1")
    assert refused.value().startswith(b"HTTP/1.1 503")
    _, ok = connect(site, "10.0.0.2")
    assert ok.value() == b"" and not closed(ok)
    _, full = connect(site, "10.0.0.3")
    assert full.value().startswith(b"HTTP/1.1 503") and b"too many connections" in full.value()
    first.connectionLost(Failure(ConnectionError("gone")))
    _, again = connect(site, "10.0.0.1")
    assert again.value() == b"" and not closed(again)


def test_oversize_content_length_is_413_before_any_body(
    tmp_path: Path, linear_repo_template: Path
) -> None:
    """Content-Length 99999999999 (push) or over max_body (any other command): 413 at
    once, without a byte of body."""
    site, _ = make_site(
        tmp_path, linear_repo_template, HTTPLimits(max_body=1000), max_push_bytes=10_000
    )
    for target, length in ((b"/r?cmd=unbundle", 99999999999), (b"/r?cmd=heads", 1001)):
        channel, transport = connect(site)
        headers = {b"Authorization": ALICE, b"Content-Length": b"%d" % length}
        channel.dataReceived(head(b"POST", target, headers))
        assert transport.value().startswith(b"HTTP/1.1 413"), transport.value()[:60]
        assert b"at most" in transport.value()


def test_refused_bodies_are_dropped_and_admitted_ones_spooled(
    tmp_path: Path, linear_repo_template: Path
) -> None:
    """An anonymous push body is read into nothing (no spool file) and answered 401 once
    complete; alice's is spooled to a file (one of max_spools); a second concurrent
    large body finds no free spool and gets 503."""
    site, _ = make_site(tmp_path, linear_repo_template, HTTPLimits(max_spools=1))
    length = 300_000
    push = {b"X-HgArg-1": b"heads=666f726365", b"Content-Length": b"%d" % length}

    anonymous, transport = connect(site)
    anonymous.dataReceived(head(b"POST", b"/r?cmd=unbundle", push))
    anonymous.dataReceived(b"x" * (length - 1))
    request = anonymous._channel.requests[0]
    assert site.spools == 0 and request.content.getvalue() == b""
    anonymous.dataReceived(b"x")
    assert transport.value().startswith(b"HTTP/1.1 401")

    alice, _ = connect(site, "10.0.0.2")
    alice.dataReceived(head(b"POST", b"/r?cmd=unbundle", {**push, b"Authorization": ALICE}))
    alice.dataReceived(b"x" * 1000)
    assert site.spools == 1 and not hasattr(alice._channel.requests[0].content, "getvalue")

    second, busy = connect(site, "10.0.0.3")
    second.dataReceived(head(b"POST", b"/r?cmd=unbundle", {**push, b"Authorization": ALICE}))
    assert busy.value().startswith(b"HTTP/1.1 503")
    alice.connectionLost(Failure(ConnectionError("gone")))
    assert site.spools == 0


def test_a_megabyte_of_credentials_gets_an_answer(
    tmp_path: Path, linear_repo_template: Path
) -> None:
    """A 1 MB Authorization line is answered 400 (not a silently dropped connection);
    a 10 KB password (or 1,025 bytes) is a 401 without the password check ever being
    called, while a 1,024-byte one is checked."""
    site, clock = make_site(tmp_path, linear_repo_template, HTTPLimits())
    checked = counting_guard(site, clock)
    channel, transport = connect(site)
    huge = b"Basic " + base64.b64encode(b"alice:" + b"p" * 1_000_000)
    channel.dataReceived(head(b"GET", b"/r?cmd=capabilities", {b"Authorization": huge}))
    assert transport.value().startswith(b"HTTP/1.1 400")
    for length, hashed in ((10_000, 0), (MAX_PASSWORD + 1, 0), (MAX_PASSWORD, 1)):
        channel, transport = connect(site)
        auth = b"Basic " + base64.b64encode(b"alice:" + b"p" * length)
        channel.dataReceived(head(b"GET", b"/r?cmd=capabilities", {b"Authorization": auth}))
        assert transport.value().startswith(b"HTTP/1.1 401")
        assert len(checked) == hashed, (length, len(checked))


def counting_guard(site: HgSite, clock: Clock, *, failures: int = 10) -> list[str]:
    """Give ``site`` a LoginGuard whose password check records each password it is
    asked about (the right one is ``pw``), synchronously."""
    checked: list[str] = []

    def verify(user: str, password: str) -> Deferred[bool]:
        checked.append(password)
        return succeed(user == "alice" and password == "pw")

    site.ctx.http_logins = LoginGuard(
        clock.seconds, max_failures=failures, window=60, verify=verify
    )
    return checked


class FailureCachingPolicy(AccessPolicy):
    """An access policy whose cache also answers for credentials that failed before
    (``cached_login`` may answer False)."""

    def remember_login(self, user: str, password: str, ok: bool) -> None:
        self.__dict__.setdefault("failed", set())
        if not ok:
            self.__dict__["failed"].add((user, password))
        super().remember_login(user, password, ok)

    def cached_login(self, user: str, password: str) -> bool | None:
        if (user, password) in self.__dict__.get("failed", ()):
            return False
        return super().cached_login(user, password)


def test_every_failed_login_counts_even_when_answered_from_a_cache(
    tmp_path: Path, linear_repo_template: Path
) -> None:
    """The same wrong password sent again and again locks the address out after
    login_failures attempts, also when the access policy answers repeats from its
    cache (only the first is hashed)."""
    site, clock = make_site(tmp_path, linear_repo_template, HTTPLimits())
    policy = FailureCachingPolicy(site.ctx.access.users, site.ctx.access.rules)
    site.ctx.access = policy
    checked = counting_guard(site, clock, failures=3)
    wrong = b"Basic " + base64.b64encode(b"alice:wrong")

    def get(auth: bytes) -> bytes:
        channel, transport = connect(site, "10.0.0.7")
        channel.dataReceived(head(b"GET", b"/r?cmd=heads", {b"Authorization": auth}))
        channel.connectionLost(Failure(ConnectionError("done")))
        return bytes(transport.value())

    assert [get(wrong)[:12] for _ in range(3)] == [b"HTTP/1.1 401"] * 3
    assert checked == ["wrong"]  # the repeats came from the cache
    assert get(ALICE).startswith(b"HTTP/1.1 429")


def test_failed_logins_lock_the_address_out_for_the_window(
    tmp_path: Path, linear_repo_template: Path
) -> None:
    """After login_failures bad logins an address gets 429 (even with the right
    password) until the window passed; other addresses are not affected."""
    site, clock = make_site(
        tmp_path, linear_repo_template, HTTPLimits(login_failures=3, login_window=60)
    )
    bad = b"Basic " + base64.b64encode(b"alice:" + b"x" * 2000)  # refused unhashed

    def get(host: str, auth: bytes) -> bytes:
        channel, transport = connect(site, host)
        channel.dataReceived(head(b"GET", b"/r?cmd=heads", {b"Authorization": auth}))
        channel.connectionLost(Failure(ConnectionError("done")))
        return bytes(transport.value())

    assert all(get("10.0.0.9", bad).startswith(b"HTTP/1.1 401") for _ in range(3))
    assert get("10.0.0.9", ALICE).startswith(b"HTTP/1.1 429")
    assert get("10.0.0.8", ALICE).startswith(b"HTTP/1.1 200")
    clock.advance(61)
    assert get("10.0.0.9", ALICE).startswith(b"HTTP/1.1 200")


def test_an_idle_kept_alive_connection_is_closed_without_an_answer(
    tmp_path: Path, linear_repo_template: Path
) -> None:
    """After a response, a connection that receives nothing is closed at the deadline
    without a 408 (a client would read it as the answer to its next request)."""
    site, clock = make_site(tmp_path, linear_repo_template, HTTPLimits(request_timeout=10))
    channel, transport = connect(site)
    channel.dataReceived(head(b"GET", b"/r?cmd=heads", {}))
    answered = transport.value()
    assert answered.startswith(b"HTTP/1.1 200") and not closed(transport)
    clock.advance(11)
    assert closed(transport) and transport.value() == answered


def test_anonymous_bodies_hold_at_most_half_the_spools(
    tmp_path: Path, linear_repo_template: Path
) -> None:
    """Bodies other than a writer's push (here v2 frames) may hold half of max_spools:
    a second large anonymous body gets 503 while alice's push still gets a spool file;
    a body sent to the blob resource is 413."""
    site, _ = make_site(tmp_path, linear_repo_template, HTTPLimits(max_spools=2))
    big = {b"Content-Length": b"200000"}
    v2 = b"/r/api/exp-http-v2-0003/ro/heads"
    first, ok = connect(site, "10.0.0.1")
    first.dataReceived(head(b"POST", v2, big) + b"x" * 1000)
    assert site.spools == 1 and ok.value() == b""
    second, busy = connect(site, "10.0.0.2")
    second.dataReceived(head(b"POST", v2, big))
    assert busy.value().startswith(b"HTTP/1.1 503")
    alice, pushing = connect(site, "10.0.0.3")
    push = {**big, b"Authorization": ALICE, b"X-HgArg-1": b"heads=666f726365"}
    alice.dataReceived(head(b"POST", b"/r?cmd=unbundle", push))
    assert site.spools == 2 and pushing.value() == b""
    blob, refused = connect(site, "10.0.0.4")
    blob.dataReceived(
        head(b"POST", b"/.hgwire/blobs/" + b"0" * 64 + b".hg", {b"Content-Length": b"1"})
    )
    assert refused.value().startswith(b"HTTP/1.1 413")


def test_commands_without_a_payload_get_no_body_beyond_their_post_arguments(
    tmp_path: Path, linear_repo_template: Path
) -> None:
    """?cmd=heads may send no body at all: 200 KB is 413 at once, nothing spooled or
    run. A command's X-HgArgs-Post arguments are its whole body, kept in memory even
    past the spool threshold (500 KB of ``known`` nodes); a body longer than its
    arguments, or arguments over MAX_SMALL_BODY, are 413."""
    from hgwire_tw.transports.http import MAX_SMALL_BODY

    site, _ = make_site(tmp_path, linear_repo_template, HTTPLimits(max_spools=4))

    def post(target: bytes, headers: dict[bytes, bytes], body: bytes) -> tuple[Any, bytes]:
        channel, transport = connect(site)
        headers = {**headers, b"Content-Length": b"%d" % len(body)}
        channel.dataReceived(head(b"POST", target, headers) + body)
        return channel, bytes(transport.value())

    _, answer = post(b"/r?cmd=heads", {}, b"x" * 200_000)
    assert answer.startswith(b"HTTP/1.1 413") and b"at most 0 bytes" in answer
    assert site.spools == 0

    args = b"nodes=" + b"+".join([b"1" * 40] * 12_500)  # 512 KB of unknown nodes
    assert 100_000 < len(args) < MAX_SMALL_BODY
    post_args = {b"X-HgArgs-Post": b"%d" % len(args)}
    _, answer = post(b"/r?cmd=known", post_args, args)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"0" * 12_500), answer[:80]
    assert site.spools == 0

    _, answer = post(b"/r?cmd=known", post_args, args + b"payload")
    assert answer.startswith(b"HTTP/1.1 413")
    huge = b"nodes=" + b"+".join([b"1" * 40] * 30_000)  # 1.2 MB
    _, answer = post(b"/r?cmd=known", {b"X-HgArgs-Post": b"%d" % len(huge)}, huge)
    assert answer.startswith(b"HTTP/1.1 413") and b"at most %d bytes" % MAX_SMALL_BODY in answer
    assert site.spools == 0


def test_a_large_refused_push_is_refused_before_its_body(
    tmp_path: Path, linear_repo_template: Path
) -> None:
    """An anonymous push announcing 50 MB is answered 401 at once (not read and dropped
    up to max_push_bytes) and the connection closes after the linger, however much
    more the client sends."""
    from hgwire_tw.transports.httpsite import DRAIN_MAX, LINGER

    site, clock = make_site(tmp_path, linear_repo_template, HTTPLimits())
    channel, transport = connect(site)
    push = {b"X-HgArg-1": b"heads=666f726365", b"Content-Length": b"%d" % (50 * 2**20)}
    channel.dataReceived(head(b"POST", b"/r?cmd=unbundle", push))
    assert transport.value().startswith(b"HTTP/1.1 401")
    request = channel._channel.requests[0]
    for _ in range(4):
        channel.dataReceived(b"x" * DRAIN_MAX)
    assert request.content.getvalue() == b"" and site.spools == 0
    clock.advance(LINGER)
    assert closed(transport)


def test_a_flood_at_the_cap_holds_a_bounded_number_of_connections(
    tmp_path: Path, linear_repo_template: Path
) -> None:
    """300 connections over the cap at once: each gets its 503, but only
    MAX_REFUSED_LINGERING of them linger (the rest are closed right after the answer),
    all are closed after LINGER, and the count returns to zero as they end."""
    from hgwire_tw.transports.httpsite import LINGER, MAX_REFUSED_LINGERING

    site, clock = make_site(tmp_path, linear_repo_template, HTTPLimits(max_connections=1))
    connect(site)
    refused = [connect(site, f"10.1.{i // 250}.{i % 250}") for i in range(300)]
    assert all(t.value().startswith(b"HTTP/1.1 503") for _, t in refused)
    open_now = [t for _, t in refused if not closed(t)]
    assert len(open_now) == MAX_REFUSED_LINGERING == site.refused_lingering
    clock.advance(LINGER)
    assert all(closed(t) for _, t in refused)
    for protocol, _ in refused:
        protocol.connectionLost(Failure(ConnectionError("closed")))
    assert site.refused_lingering == 0
    _, again = connect(site, "10.2.0.1")  # lingering may start again
    assert again.value().startswith(b"HTTP/1.1 503") and not closed(again)
