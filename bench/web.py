"""Web pages beside clones: hgweb's /NAME/shortlog under load while `hg clone` runs.

    .venv/bin/python bench/web.py [--commits 3000] [--rounds 3] [--loaders 1]
                                  [--web-cpu-share S] [--pin]

Uses the benchmark repository of bench/clone.py (built once, cached in bench/out/) and
one server (`--cache none`, so every clone does its full work). Each round times

* a clone alone (`hg clone -U`, hg 7.x, HTTP v1, zstd);
* the same clone while LOADERS client threads fetch /bench/shortlog back to back over
  keep-alive connections (every page checked: 200, HTML), counting pages/s during the
  clone;

alternating the order from round to round. It reports the median clone wall time with
and without the page load, the slowdown (target: at most 10 %: pages run on their own
web threads, never on the repository workers), the pages per second during the clones,
and the pages per second with no clone running; also the server's own time in
`getbundle` per clone (its `hgwire_request_duration_seconds`, read from /metrics) with
and without pages. `--web-cpu-share 1` turns the server's pacing of web threads off
(docs/web.md, "Clones first") for comparison. Every clone is checked to hold the
source's changesets.

With `--pin` (and two or more CPUs) the server runs on the first CPU and the hg client
and the page loaders on the others: a real client clones from another machine, and the
figure is about what pages do to the *server's* side of a clone. It also reports the
median of the per-round ratios (each round's two clones run back to back, so a change in
the machine's background load shifts both). Run it on a quiet machine; on a busy one
single clones vary by tens of percent and the figures mean little.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.clone import bench_repo  # noqa: E402
from tests.repobuilders import hg, log_nodes  # noqa: E402
from tests.servers import running_server  # noqa: E402


class PageLoad:
    """LOADERS threads fetching one page in a loop until stopped."""

    def __init__(self, port: int, path: str, loaders: int) -> None:
        self.port = port
        self.path = path
        self.loaders = loaders
        self.pages = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            while not self._stop.is_set():
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or b"<html" not in body:
                    self.errors.append(f"{resp.status} {body[:80]!r}")
                    return
                with self._lock:
                    self.pages += 1
        finally:
            conn.close()

    def __enter__(self) -> PageLoad:
        for _ in range(self.loaders):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)
        if self.errors:
            raise AssertionError(f"page load failed: {self.errors[0]}")


def clone(url: str, dest: Path, expected: int) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    t0 = time.perf_counter()
    hg("clone", "-q", "-U", url, dest)
    wall = time.perf_counter() - t0
    got = len(log_nodes(dest))
    if got != expected:
        raise AssertionError(f"clone has {got} changesets, expected {expected}")
    shutil.rmtree(dest, ignore_errors=True)
    return wall


def getbundle_seconds(base: str) -> float:
    """Total seconds the server spent in v1 getbundle so far (from /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base + "/metrics", timeout=60) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if (
                s.name == "hgwire_request_duration_seconds_sum"
                and s.labels["command"] == "getbundle"
            ):
                return s.value
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loaders", type=int, default=1, help="page-loading client threads")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="page rate alone")
    parser.add_argument(
        "--pin", action="store_true", help="server on the first CPU, clients on the others"
    )
    parser.add_argument(
        "--web-cpu-share",
        type=float,
        default=None,
        help="server's web_cpu_share (default: the server's; 1 turns the pacing off)",
    )
    opts = parser.parse_args()
    repo = bench_repo(opts.commits)
    expected = len(log_nodes(repo))
    server_secs: list[float] = []
    server_loaded: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hgwire-bench-web-") as tmp:
        work = Path(tmp)
        args = ["--repo", f"bench={repo}", "--cache", "none"]
        if opts.web_cpu_share is not None:
            config = work / "bench.toml"
            config.write_text(f"web_cpu_share = {opts.web_cpu_share}\n", encoding="utf-8")
            args += ["--config", str(config)]
        cpus = sorted(os.sched_getaffinity(0))
        pin = opts.pin and len(cpus) >= 2
        if pin:  # the server (started now) inherits the first CPU
            os.sched_setaffinity(0, {cpus[0]})
        with running_server(work, *args) as server:
            if pin:  # this process, its loader threads and hg clients: the others
                os.sched_setaffinity(0, set(cpus[1:]))
            url = server.url("bench")
            clone(url, work / "warmup", expected)  # imports, OS caches
            with PageLoad(server.http_port, "/bench/shortlog", 1):
                time.sleep(1)  # hgweb's templates and this thread's repository object
            alone: list[float] = []
            loaded: list[float] = []
            rates: list[float] = []
            for i in range(opts.rounds):
                order = ("alone", "loaded") if i % 2 == 0 else ("loaded", "alone")
                for case in order:
                    if case == "alone":
                        before = getbundle_seconds(server.http_url)
                        alone.append(clone(url, work / "c", expected))
                        server_secs.append(getbundle_seconds(server.http_url) - before)
                        continue
                    with PageLoad(server.http_port, "/bench/shortlog", opts.loaders) as load:
                        before = getbundle_seconds(server.http_url)
                        t0 = time.perf_counter()
                        wall = clone(url, work / "c", expected)
                        pages = load.pages
                        rates.append(pages / (time.perf_counter() - t0))
                        server_loaded.append(getbundle_seconds(server.http_url) - before)
                    loaded.append(wall)
                print(
                    f"  round {i + 1}: clone alone {alone[-1]:.3f}s, with pages "
                    f"{loaded[-1]:.3f}s ({rates[-1]:.1f} pages/s)",
                    file=sys.stderr,
                )
            with PageLoad(server.http_port, "/bench/shortlog", opts.loaders) as load:
                t0 = time.perf_counter()
                time.sleep(opts.idle_seconds)
                idle_rate = load.pages / (time.perf_counter() - t0)
    a, b = statistics.median(alone), statistics.median(loaded)
    slowdown = (b / a - 1) * 100
    paired = (statistics.median(y / x for x, y in zip(alone, loaded, strict=True)) - 1) * 100
    print(
        f"repository: {expected} changesets; {opts.loaders} page loader(s); "
        f"{opts.rounds} rounds; server pinned: {'yes' if pin else 'no'}"
    )
    print(f"clone alone (median)             {a:8.3f} s")
    print(f"clone with shortlog load         {b:8.3f} s   slowdown {slowdown:+.1f} %")
    print(f"  median of per-round ratios: {paired:+.1f} %  (target: at most +10 %)")
    sa, sb = statistics.median(server_secs), statistics.median(server_loaded)
    print(
        f"server's getbundle (median)      {sa:8.3f} s alone, {sb:.3f} s with pages "
        f"({(sb / sa - 1) * 100:+.1f} %)"
    )
    print(f"/bench/shortlog during clones    {statistics.median(rates):8.1f} pages/s")
    print(f"/bench/shortlog, no clone        {idle_rate:8.1f} pages/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
