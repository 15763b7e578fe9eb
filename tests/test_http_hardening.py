"""The HTTP listener under abuse, over real sockets, while real ``hg`` clients work.

* Slowloris: connections trickling bytes from one address are capped and closed at the
  request deadline, while ``hg clone`` from another address succeeds.
* Bodies: nothing is spooled to disk before a request is authenticated and admitted
  (the server's open files are inspected), a ``Content-Length`` over the bound is 413
  at once, and a writer's push body is spooled.
* Logins: failed logins are rate-limited per address, a valid login from another
  address still works during 150 concurrent bad ones, and 1 MB of credentials gets an
  answer.
* A private repository answers an anonymous client (and a user who may not read it)
  exactly as a repository that does not exist (issue 14).
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hgwire_tw.access import hash_password
from tests import repobuilders as rb
from tests.servers import RunningServer, running_server

ACCESS = """
[users.alice]
password = "{pw}"
[users.bob]
password = "{pw}"
[[rules]]
repos = "private"
read = ["alice"]
write = ["alice"]
[[rules]]
repos = "*"
read = ["anonymous", "*"]
write = ["alice"]
"""
ATTACKER = "127.0.0.2"


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


def exchange(
    server: RunningServer,
    request: bytes,
    *,
    source: str = "127.0.0.1",
    timeout: float = 30,
) -> bytes:
    """Send ``request`` on a new connection from ``source``; everything until EOF."""
    with socket.create_connection(
        ("127.0.0.1", server.http_port), timeout=timeout, source_address=(source, 0)
    ) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def http_request(path: str, headers: dict[str, str] | None = None, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path, Path]]:
    tmp = tmp_path_factory.mktemp("hardening")
    pub = rb.make_linear_repo(tmp / "pub", 3)
    private = rb.make_linear_repo(tmp / "private", 1)
    access = tmp / "access.toml"
    access.write_text(ACCESS.format(pw=hash_password("pw")), encoding="utf-8")
    spool_dir = tmp / "spool"
    spool_dir.mkdir()
    args = (
        *("--repo", f"pub={pub}", "--repo", f"private={private}", "--access", str(access)),
        "--allow-push-over-http",
        *("--http-request-timeout", "3", "--http-max-per-address", "6"),
        *("--http-login-failures", "5", "--http-login-window", "600"),
    )
    with running_server(tmp, *args, env={"TMPDIR": str(spool_dir)}) as server:
        yield server, spool_dir, pub


def test_trickling_connections_are_capped_and_closed_while_hg_clones(
    site: tuple[RunningServer, Path, Path], tmp_path: Path
) -> None:
    """10 connections from one address trickle a byte every 0.2 s: 6 are accepted (the
    per-address cap), the rest get 503 at once; the accepted ones get 408 and are closed
    within the 3 s deadline plus the 2 s linger (and generous slack) although bytes keep
    coming, the refused ones within the linger; a clone from another address succeeds
    meanwhile."""
    server, _, pub = site
    socks = []
    started = time.monotonic()
    for _ in range(10):
        s = socket.create_connection(
            ("127.0.0.1", server.http_port), timeout=30, source_address=(ATTACKER, 0)
        )
        s.sendall(b"GET /pub?cmd=capabilities HTTP/1.1\r\n")
        socks.append(s)
    clone = threading.Thread(
        target=rb.hg, args=("clone", "-q", server.url("pub"), tmp_path / "clone")
    )
    clone.start()  # while the trickling goes on
    answers: dict[int, bytes] = {}
    closed_after: dict[int, float] = {}
    deadline = time.monotonic() + 30  # a bound for the loop; the assertion is below
    while len(closed_after) < len(socks) and time.monotonic() < deadline:
        for i, s in enumerate(socks):
            if i in closed_after:
                continue
            try:
                s.sendall(b"X")  # trickling on, answered or not
            except OSError:
                pass  # closed: recv says so below
            try:
                s.settimeout(0.02)
                data = s.recv(65536)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                data = b""  # reset: closed
            if data:
                answers.setdefault(i, data)
            else:
                closed_after[i] = time.monotonic() - started
        time.sleep(0.2)
    for s in socks:
        s.close()
    clone.join(60)
    statuses = sorted(answers[i][:12] for i in answers)
    assert len(answers) == 10, answers
    assert statuses.count(b"HTTP/1.1 503") == 4 and statuses.count(b"HTTP/1.1 408") == 6
    assert len(closed_after) == 10, closed_after
    timeout, linger, slack = 3.0, 2.0, 6.0
    for i, seconds in closed_after.items():
        refused = answers[i].startswith(b"HTTP/1.1 503")
        bound = (0 if refused else timeout) + linger + slack
        assert seconds <= bound, (answers[i][:12], seconds)
    assert rb.log_nodes(tmp_path / "clone") == rb.log_nodes(pub)


def _server_spools(server: RunningServer, spool_dir: Path) -> list[str]:
    """The server's open files in its TMPDIR (temporary files show as deleted)."""
    fds = Path(f"/proc/{server.proc.pid}/fd")
    links = []
    for fd in fds.iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            continue
    return [link for link in links if link.startswith(str(spool_dir))]


def test_nothing_is_spooled_before_authentication(site: tuple[RunningServer, Path, Path]) -> None:
    """Anonymous 50 MB pushes (refused), 50 MB to ?cmd=heads and to a private repository:
    no temporary file; alice's Content-Length 99999999999 and a body to ?cmd=heads: 413
    at once (an anonymous push: its 401 at once); alice's push of 50 MB is spooled (the
    check sees spool files)."""
    server, spool_dir, _ = site
    size = 50 * 1024 * 1024
    first_mib = b"x" * (1024 * 1024)

    def opened(path: str, headers: dict[str, str]) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
        head = http_request(path, {"Content-Length": str(size), **headers}, "POST")
        s.sendall(head + first_mib)
        return s

    push = {"X-HgArg-1": "heads=666f726365"}
    held = [
        opened("/pub?cmd=unbundle", push),
        opened("/private?cmd=unbundle", push),
        opened("/private?cmd=heads", {}),
    ]
    time.sleep(0.5)
    assert _server_spools(server, spool_dir) == []
    alice = {"Authorization": basic(b"alice:pw")}
    for path, length, who, status in (
        ("/pub?cmd=unbundle", 99999999999, alice, b"HTTP/1.1 413"),
        ("/pub?cmd=unbundle", 99999999999, {}, b"HTTP/1.1 401"),
        ("/pub?cmd=heads", size, {}, b"HTTP/1.1 413"),
    ):
        head = http_request(path, {"Content-Length": str(length), **push, **who}, "POST")
        assert exchange(server, head).startswith(status)
    writer = opened("/pub?cmd=unbundle", {**push, "Authorization": basic(b"alice:pw")})
    deadline = time.monotonic() + 20
    while not _server_spools(server, spool_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_server_spools(server, spool_dir)) == 1
    for s in [*held, writer]:
        s.close()


def test_bodies_to_commands_without_payload_are_413_while_hg_clones(
    site: tuple[RunningServer, Path, Path], tmp_path: Path
) -> None:
    """Four connections from one address keep POSTing 16 MiB bodies to ?cmd=heads
    (sending while they can) during a real ``hg clone`` from another address: every
    one is answered 413, the server never holds a spool file, and the clone succeeds."""
    server, spool_dir, pub = site
    head = http_request("/pub?cmd=heads", {"Content-Length": str(16 * 2**20)}, "POST")
    megabyte = b"x" * 2**20
    answers: list[bytes] = []
    spooled: list[list[str]] = []
    stop = threading.Event()

    def attack() -> None:
        for _ in range(50):  # bounded; normally stopped by the clone's end first
            if stop.is_set():
                return
            with socket.create_connection(
                ("127.0.0.1", server.http_port), timeout=30, source_address=(ATTACKER, 0)
            ) as s:
                try:
                    s.sendall(head)
                    for _ in range(16):
                        s.sendall(megabyte)
                        spooled.append(_server_spools(server, spool_dir))
                except OSError:
                    pass  # the server closed after its answer: expected
                try:
                    answers.append(s.recv(12))
                except OSError:
                    answers.append(b"(reset)")

    threads = [threading.Thread(target=attack) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        rb.hg("clone", "-q", server.url("pub"), tmp_path / "clone")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert rb.log_nodes(tmp_path / "clone") == rb.log_nodes(pub)
    assert answers and set(answers) == {b"HTTP/1.1 413"}, set(answers)
    assert spooled and not any(spooled)


def test_login_rate_limit_and_long_credentials(site: tuple[RunningServer, Path, Path]) -> None:
    """Bad logins from one address: 401 until the limit, then 429 even with the right
    password; 150 concurrent bad logins from it leave a valid login from elsewhere
    working; 1 MB of credentials is answered 400, 10 KB of password 401."""
    server, _, _ = site
    source = "127.0.0.3"
    wrong = http_request("/pub?cmd=heads", {"Authorization": basic(b"alice:wrong")})
    right = http_request("/pub?cmd=heads", {"Authorization": basic(b"alice:pw")})
    answers = [exchange(server, wrong, source=source)[:12] for _ in range(5)]
    assert answers == [b"HTTP/1.1 401"] * 5
    assert exchange(server, right, source=source).startswith(b"HTTP/1.1 429")

    storm_source = "127.0.0.4"
    results: list[bytes] = []

    def bad_login() -> None:
        try:
            results.append(exchange(server, wrong, source=storm_source)[:12])
        except OSError:
            results.append(b"(reset)")

    threads = [threading.Thread(target=bad_login) for _ in range(150)]
    for t in threads:
        t.start()
    assert exchange(server, right).startswith(b"HTTP/1.1 200")
    for t in threads:
        t.join(60)
    assert len(results) == 150 and set(results) <= {
        b"HTTP/1.1 401",
        b"HTTP/1.1 429",
        b"HTTP/1.1 503",
    }, set(results)

    huge = http_request("/pub?cmd=heads", {"Authorization": basic(b"bob:" + b"p" * 1_000_000)})
    assert exchange(server, huge, source="127.0.0.5").startswith(b"HTTP/1.1 400")
    long_pw = http_request("/pub?cmd=heads", {"Authorization": basic(b"bob:" + b"p" * 10_000)})
    assert exchange(server, long_pw, source="127.0.0.5").startswith(b"HTTP/1.1 401")


def _without_date(response: bytes) -> bytes:
    return b"\r\n".join(
        line for line in response.split(b"\r\n") if not line.lower().startswith(b"date:")
    )


def test_private_repository_answers_like_a_missing_one(
    site: tuple[RunningServer, Path, Path],
) -> None:
    """GET /private and /private?cmd=capabilities: anonymous and bob (who may not read
    it) get byte for byte the answer for a repository that does not exist; alice reads."""
    server, _, _ = site
    bob = {"Authorization": basic(b"bob:pw")}
    for suffix in ("", "?cmd=capabilities", "/api/exp-http-v2-0003/ro/heads"):
        for headers in ({}, bob):
            hidden = exchange(
                server, http_request("/private" + suffix, headers), source="127.0.0.6"
            )
            missing = exchange(
                server, http_request("/nosuchr" + suffix, headers), source="127.0.0.6"
            )
            missing = missing.replace(b"nosuchr", b"private")
            assert _without_date(hidden) == _without_date(missing), (suffix, headers)
            assert hidden[:12] in (b"HTTP/1.1 401", b"HTTP/1.1 404")
    alice = {"Authorization": basic(b"alice:pw")}
    answer = exchange(server, http_request("/private?cmd=capabilities", alice))
    assert answer.startswith(b"HTTP/1.1 200")
