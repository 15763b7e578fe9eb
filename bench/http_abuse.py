"""HTTP abuse benchmark: what a hostile client gets out of the listener, and what the
others still get.

    .venv/bin/python bench/http_abuse.py [--seconds 10] [--storm 150] [--loris 300]

Starts ``hgwire serve`` (one public repository, an access file with one user) with the
defaults of the HTTP limits, and measures, from clients on 127.0.0.x source addresses:

* guesses: bad logins per second one address gets answered 401 (the rest are 429,
  answered without hashing), over ``--seconds``;
* storm: the latency of a valid login from another address while ``--storm`` bad logins
  run concurrently from one address (median of 5);
* loris: ``--loris`` connections trickling a byte a second from one address: how many
  are accepted (the per-address cap) and how long the server holds them (the deadline),
  while a clone from another address is timed.

Numbers depend on the machine and its load; run it on a quiet one.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hgwire_tw.access import hash_password  # noqa: E402
from tests.repobuilders import hg, make_linear_repo  # noqa: E402
from tests.servers import RunningServer, running_server  # noqa: E402
from tests.test_http_hardening import exchange, http_request  # noqa: E402


def basic(credentials: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials).decode()}


def guesses(server: RunningServer, seconds: float) -> tuple[float, float]:
    """(401 answers per second, 429 answers per second) for bad logins from one address."""
    wrong = http_request("/r?cmd=heads", basic(b"alice:wrong"))
    counts = {b"401": 0, b"429": 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status = exchange(server, wrong, source="127.0.0.10")[9:12]
        counts[status] = counts.get(status, 0) + 1
    return counts[b"401"] / seconds, counts[b"429"] / seconds


def storm(server: RunningServer, n: int) -> tuple[float, float]:
    """Median seconds of a valid login from 127.0.0.1 alone, and during ``n``
    concurrent bad ones from another address."""
    wrong = http_request("/r?cmd=heads", basic(b"bob:wrong"))
    right = http_request("/r?cmd=heads", basic(b"alice:pw"))
    alone = []
    for _ in range(5):
        t0 = time.perf_counter()
        assert exchange(server, right).startswith(b"HTTP/1.1 200")
        alone.append(time.perf_counter() - t0)
    times = []
    for round_ in range(5):

        def bad(source: str = f"127.0.1.{round_ + 1}") -> None:
            try:
                exchange(server, wrong, source=source)
            except OSError:
                pass

        threads = [threading.Thread(target=bad) for _ in range(n)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        assert exchange(server, right).startswith(b"HTTP/1.1 200")
        times.append(time.perf_counter() - t0)
        for t in threads:
            t.join(120)
    return statistics.median(alone), statistics.median(times)


def loris(server: RunningServer, n: int, tmp: Path, wait: float) -> tuple[int, float, float]:
    """(connections accepted, seconds until the last was closed — ``wait`` if some were
    still open then, clone seconds)."""
    import socket

    socks = []
    for _ in range(n):
        s = socket.create_connection(
            ("127.0.0.1", server.http_port), timeout=5, source_address=("127.0.0.20", 0)
        )
        s.sendall(b"GET /r?cmd=capabilities HTTP/1.1\r\n")
        s.setblocking(False)
        socks.append(s)
    t0 = time.perf_counter()
    clone_start = time.perf_counter()
    hg("clone", "-q", "-U", server.url("r"), tmp / "clone")
    clone_secs = time.perf_counter() - clone_start
    status: dict[int, bytes] = {}
    last_close = 0.0
    last_close = wait
    while len(status) < n and time.perf_counter() - t0 < wait:
        for i, s in enumerate(socks):
            if i in status:
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                try:
                    s.send(b"X")
                except OSError:
                    status[i] = b"reset"
                continue
            except OSError:
                data = b"reset"
            status[i] = data[9:12]
            if len(status) == n:
                last_close = time.perf_counter() - t0
        time.sleep(1)
    accepted = n - sum(1 for v in status.values() if v == b"503")
    for s in socks:
        s.close()
    return accepted, last_close, clone_secs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--storm", type=int, default=150)
    parser.add_argument("--loris", type=int, default=300)
    parser.add_argument("--loris-wait", type=float, default=120.0)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        repo = make_linear_repo(tmp / "r", 20)
        access = tmp / "access.toml"
        pw = hash_password("pw")
        access.write_text(
            f'[users.alice]\npassword = "{pw}"\n[users.bob]\npassword = "{pw}"\n'
            '[[rules]]\nrepos = "*"\nread = ["anonymous", "*"]\n',
            encoding="utf-8",
        )
        with running_server(tmp, "--repo", f"r={repo}", "--access", str(access)) as server:
            ok, locked = guesses(server, opts.seconds)
            print(f"bad logins from one address: {ok:.1f}/s answered 401, {locked:.1f}/s 429")
            alone, during = storm(server, opts.storm)
            print(
                f"valid login: {alone:.3f} s alone, {during:.3f} s during {opts.storm} "
                "concurrent bad ones"
            )
            accepted, held, clone_secs = loris(server, opts.loris, tmp, opts.loris_wait)
            print(
                f"{opts.loris} trickling connections: {accepted} accepted, all closed after "
                f"{held:.0f} s (bound {opts.loris_wait:.0f}); a clone meanwhile took "
                f"{clone_secs:.2f} s"
            )


if __name__ == "__main__":
    main()
