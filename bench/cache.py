"""Cache benchmark: server CPU for full clones with a cold versus a warm response cache,
and the bytes the server itself sends when v2 responses are redirected to blobs.

    .venv/bin/python bench/cache.py [--commits 3000] [--rounds 3]

Uses the benchmark repository of bench/clone.py (built once, cached in bench/out/).

* v2: Mercurial 6.0.3 clones over HTTP v2 (zstd-8mb). Per round a fresh server (empty
  memory cache) serves a cold clone, then a warm one; also a server with ``--cache none``
  (second clone, so imports and OS caches are warm) as the no-cache baseline.
* redirects: a ``--redirects`` server; after one clone fills the cache, the next clone's
  v2 responses are redirects. From the access log: bytes of the v2 API answers (what the
  server must send itself) versus bytes of the blobs (the clone's payload, which a CDN
  mirroring STATE_DIR/blobs would serve).
* v1: ``hg clone`` (7.x) over HTTP with a cold versus warm ``getbundle`` cache.

Server CPU is user+sys of the server process from /proc (all threads). Every clone is
checked to hold the source's changesets.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.clone import bench_repo, cpu_seconds  # noqa: E402
from tests.repobuilders import HG, HG_603, hg, log_nodes  # noqa: E402
from tests.servers import RunningServer, running_server  # noqa: E402

V2 = [
    "--config",
    "experimental.httppeer.advertise-v2=true",
    "--config",
    "experimental.httppeer.v2-encoder-order=zstd-8mb",
]
ACCESS = re.compile(r'"(GET|POST) (\S+) HTTP/1\.1" (\d+) (\d+)')


def clone(server: RunningServer, dest: Path, expected: int, *, v2: bool) -> tuple[float, float]:
    """One full clone; returns (wall seconds, server CPU seconds)."""
    shutil.rmtree(dest, ignore_errors=True)
    pid = server.proc.pid
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    if v2:
        hg(*V2, "clone", "-q", "-U", server.url("b"), dest, exe=HG_603, timeout=1800)
    else:
        hg("clone", "-q", "-U", server.url("b"), dest, timeout=1800)
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    got = len(log_nodes(dest, exe=HG))
    if got != expected:
        raise AssertionError(f"clone has {got} changesets, expected {expected}")
    return wall, cpu


def access_bytes(log: str) -> dict[str, int]:
    """Bytes sent per kind of request in an access log excerpt."""
    out = {"api": 0, "blobs": 0, "other": 0}
    for _, path, _, size in ACCESS.findall(log):
        kind = "blobs" if "/.hgwire/blobs/" in path else "api" if "/api/" in path else "other"
        out[kind] += int(size)
    return out


def report(label: str, runs: list[tuple[float, float]]) -> float:
    """Print the medians of (wall, cpu) runs; return the CPU median."""
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    print(f"  {label:<38} wall {wall:8.3f}s  server cpu {cpu:8.3f}s", flush=True)
    return cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    repo = bench_repo(args.commits)
    expected = len(log_nodes(repo))
    print(f"repository {repo} ({expected} changesets); load: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="hgwire-bench-cache-") as tmp:
        work = Path(tmp)
        serve = ["--repo", f"b={repo}", "--workers", "2"]
        for v2 in (True, False):
            name = "v2 (hg 6.0.3, HTTP v2, zstd-8mb)" if v2 else "v1 (hg 7.x, HTTP, getbundle)"
            print(name)
            with running_server(work, *serve, "--cache", "none") as server:
                clone(server, work / "warmup", expected, v2=v2)
                none = [clone(server, work / f"n{i}", expected, v2=v2) for i in range(args.rounds)]
            cold, warm = [], []
            for i in range(args.rounds):
                with running_server(work, *serve, "--cache-size", str(2 * 1024**3)) as server:
                    cold.append(clone(server, work / f"cold{i}", expected, v2=v2))
                    warm.append(clone(server, work / f"warm{i}", expected, v2=v2))
                    log = server.log()
            report("no cache (warm process)", none)
            c = report("cold cache (fresh process)", cold)
            w = report("warm cache", warm)
            print(f"  warm / cold server cpu: {w / c:.1%}")
            if "cache hit" not in log:
                raise AssertionError("the warm clone did not hit the cache")

        print("v2 with --redirects (hg 6.0.3 follows them)")
        redirect_cpu, sent = [], []
        with running_server(
            work, *serve, "--redirects", "--cache-size", str(2 * 1024**3)
        ) as server:
            clone(server, work / "fill", expected, v2=True)
            for i in range(args.rounds):
                before = len(server.log())
                wall, cpu = clone(server, work / f"r{i}", expected, v2=True)
                redirect_cpu.append((wall, cpu))
                sent.append(access_bytes(server.log()[before:]))
        report("redirected clone (blobs served here)", redirect_cpu)
        b = sent[-1]
        print(
            f"  bytes sent: v2 API {b['api']:,}  other {b['other']:,}  blobs (payload) "
            f"{b['blobs']:,}  -> server itself {(b['api'] + b['other']) / b['blobs']:.3%} "
            "of the payload"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
