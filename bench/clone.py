"""Clone benchmark: hgwire_tw against Mercurial's own `hg serve`, same repository, same run.

    .venv/bin/python bench/clone.py [--commits 3000] [--rounds 3]

Builds (once, cached in bench/out/) a benchmark repository, starts hgwire_tw and
`hg serve` on 127.0.0.1, and times full `hg clone` runs (hg 7.2.4 client, wire protocol v1
over HTTP) with zstd and zlib negotiated. Reports the median wall time and the server's
CPU time (user+sys of the server process, read from /proc) per clone, and the ratios
hgwire_tw / hg serve. Every clone is checked to contain the same changesets as the source.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.repobuilders import HG, hg, hg_env, log_nodes, make_bench_repo  # noqa: E402
from tests.servers import running_server, stop  # noqa: E402

OUT = ROOT / "bench" / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds consumed so far by process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def bench_repo(commits: int) -> Path:
    path = OUT / f"bench-{commits}"
    if not (path / ".hg" / "store").is_dir():
        shutil.rmtree(path, ignore_errors=True)
        OUT.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        make_bench_repo(path, commits=commits)
        print(f"built {path} in {time.monotonic() - t:.1f}s", file=sys.stderr)
    return path


@contextmanager
def hg_serve(repo: Path, workdir: Path) -> Iterator[tuple[str, int]]:
    """Mercurial's own server on a free loopback port; yields (url, pid)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            HG,
            "serve",
            "-R",
            str(repo),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "--config",
            "web.push_ssl=false",
            "-E",
            str(workdir / "hgserve.err"),
        ],
        env=hg_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError("hg serve did not start") from None
            time.sleep(0.1)
    try:
        yield url, proc.pid
    finally:
        stop(proc)


def timed_clone(url: str, pid: int, engine: str, dest: Path, expected: int) -> tuple[float, float]:
    shutil.rmtree(dest, ignore_errors=True)
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    hg(
        "clone",
        "-q",
        "-U",
        "--config",
        f"experimental.clientcompressionengines={engine}",
        url,
        dest,
    )
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    got = len(log_nodes(dest))
    if got != expected:
        raise AssertionError(f"clone from {url} has {got} changesets, expected {expected}")
    return wall, cpu


def measure(
    label: str, url: str, pid: int, engine: str, rounds: int, work: Path, expected: int
) -> dict[str, float]:
    walls, cpus = [], []
    timed_clone(url, pid, engine, work / "warmup", expected)  # warm OS caches and imports
    for i in range(rounds):
        wall, cpu = timed_clone(url, pid, engine, work / f"c{i}", expected)
        walls.append(wall)
        cpus.append(cpu)
    result = {"wall": statistics.median(walls), "cpu": statistics.median(cpus)}
    print(
        f"  {label:<28} {engine:<5} wall {result['wall']:7.3f}s  server cpu {result['cpu']:7.3f}s",
        file=sys.stderr,
    )
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engines", default="zstd,zlib")
    args = ap.parse_args()
    repo = bench_repo(args.commits)
    expected = len(log_nodes(repo))
    rows: list[tuple[str, dict[str, float], dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="hgwire-bench-") as tmp:
        work = Path(tmp)
        for engine in args.engines.split(","):
            with running_server(work, "--repo", f"bench={repo}") as server:
                ours = measure(
                    "hgwire_tw (HTTP v1)",
                    server.url("bench"),
                    server.proc.pid,
                    engine,
                    args.rounds,
                    work,
                    expected,
                )
            with hg_serve(repo, work) as (url, pid):
                theirs = measure(
                    "hg serve (HTTP v1)", url, pid, engine, args.rounds, work, expected
                )
            rows.append((engine, ours, theirs))
    print(
        f"\nfull clone of {expected} changesets, median of {args.rounds} "
        f"(hgwire_tw / hg serve; < 1 means hgwire_tw is cheaper)"
    )
    print(
        f"{'engine':<8}{'wall ours':>11}{'wall hg':>10}{'ratio':>8}"
        f"{'cpu ours':>11}{'cpu hg':>9}{'ratio':>8}"
    )
    for engine, ours, theirs in rows:
        print(
            f"{engine:<8}{ours['wall']:>10.3f}s{theirs['wall']:>9.3f}s"
            f"{ours['wall'] / theirs['wall']:>8.2f}{ours['cpu']:>10.3f}s{theirs['cpu']:>8.3f}s"
            f"{ours['cpu'] / max(theirs['cpu'], 1e-9):>8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
