"""The HTTP request phase in-process: ``HgSite`` channels over ``StringTransport`` with a
``Clock``, so deadlines, caps, early answers and body admission are observed step by
step (the real-socket versions are in ``test_http_hardening.py``)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from mercurial import hg
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from hgwire_tw.access import AccessPolicy, hash_password
from hgwire_tw.context import ServerContext, Settings
from hgwire_tw.repo.registry import RepositoryRegistry
from hgwire_tw.repo.ui import make_ui
from hgwire_tw.transports.http import HgResource
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
    a 10 KB password is a 401 without being hashed."""
    site, _ = make_site(tmp_path, linear_repo_template, HTTPLimits())
    channel, transport = connect(site)
    huge = b"Basic " + base64.b64encode(b"alice:" + b"p" * 1_000_000)
    channel.dataReceived(head(b"GET", b"/r?cmd=capabilities", {b"Authorization": huge}))
    assert transport.value().startswith(b"HTTP/1.1 400")
    channel, transport = connect(site)
    long_pw = b"Basic " + base64.b64encode(b"alice:" + b"p" * 10_000)
    channel.dataReceived(head(b"GET", b"/r?cmd=capabilities", {b"Authorization": long_pw}))
    assert transport.value().startswith(b"HTTP/1.1 401")


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
    """Bodies other than a writer's push may hold half of max_spools: a second large
    anonymous body gets 503 while alice's push still gets a spool file; a body sent to
    the blob resource is 413."""
    site, _ = make_site(tmp_path, linear_repo_template, HTTPLimits(max_spools=2))
    big = {b"Content-Length": b"200000"}
    first, ok = connect(site, "10.0.0.1")
    first.dataReceived(head(b"POST", b"/r?cmd=heads", big) + b"x" * 1000)
    assert site.spools == 1 and ok.value() == b""
    second, busy = connect(site, "10.0.0.2")
    second.dataReceived(head(b"POST", b"/r?cmd=heads", big))
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
