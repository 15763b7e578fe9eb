"""Load benchmark: many concurrent clones while pushes land, hgwire_tw against Mercurial.

    .venv/bin/python bench/load.py [--http-clones 50] [--ssh-clones 20] [--pushes 10]
                                   [--commits 300] [--files 60] [--sections http,ssh]
                                   [--hgwire-cache none|memory] [--json FILE]

Each case starts one server on a loopback port with its own copy of the benchmark
repository, then at the same moment starts N real `hg clone` processes (HTTP: 50, SSH:
20) and a pusher that pushes one changeset at a time (up to ``--pushes``, and never
after the last clone ended) over the same transport. Cases:

* http: hgwire_tw (`--allow-push-over-http`) against `hg serve` (which forks a process
  per request);
* ssh: hgwire_tw's Conch server against OpenSSH's `sshd` running `hg serve --stdio`
  (started as `bench/clone.py` starts it: loopback port, own config and keys).

Every clone must succeed and equal the source at some moment of the run: its changesets
are the base ones plus the first k pushed ones, for some k (the pushes form one line).
hgwire_tw runs with ``--cache none`` unless ``--hgwire-cache memory`` (its default
setting) is given, since Mercurial's servers cache nothing. Reported per case: wall time
of the whole batch, clones per minute, pushes done and their median time, and the peak
resident memory of the server's whole process tree (sampled every 50 ms: for
`hg serve` and `sshd` that includes the per-request/per-connection children). Loopback
only, bounded in count and time (each clone and push has a timeout); it stops by itself.
Numbers on a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.clone import client_key, hg_serve, openssh_hg_stdio, ssh_command  # noqa: E402
from tests.repobuilders import HG, hg, hg_env, log_nodes, make_bench_repo  # noqa: E402
from tests.servers import running_server  # noqa: E402

OUT = ROOT / "bench" / "out"
CLONE_TIMEOUT = 600.0
PUSH_TIMEOUT = 120.0


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        p = int(entry)
        children.setdefault(int(stat[1]), []).append(p)
        rss[p] = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, ()))
    return total


class PeakSampler:
    """Samples ``tree_rss(pid)`` every ``interval`` seconds on a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class CaseResult:
    """What one server did under one load."""

    server: str
    transport: str
    clones: int
    wall: float
    clones_per_minute: float
    pushes: int
    #: median seconds of one push (commit excluded) while the clones ran
    push_seconds: float
    peak_rss_mib: float


@dataclass
class Endpoint:
    """A running server: how to clone and push, and the process tree to measure."""

    clone_url: str
    push_url: str
    pid: int
    args: list[str]
    repo: Path


def source_repo(commits: int, files: int) -> Path:
    """The benchmark repository (built once, cached in bench/out/)."""
    path = OUT / f"load-{commits}-{files}"
    if not (path / ".hg" / "store").is_dir():
        shutil.rmtree(path, ignore_errors=True)
        OUT.mkdir(parents=True, exist_ok=True)
        make_bench_repo(path, commits=commits, files=files)
    return path


def run_load(
    endpoint: Endpoint, pusher: Path, clones: int, max_pushes: int, work: Path
) -> tuple[float, list[float], int]:
    """Start ``clones`` clones and the pusher together; returns (wall, push times, peak)."""
    base = log_nodes(endpoint.repo)
    pushed: list[str] = []
    push_times: list[float] = []
    done = threading.Event()
    push_error: list[str] = []

    def push_loop() -> None:
        for i in range(max_pushes):
            if done.is_set():
                return
            (pusher / "load.txt").write_text(f"push {i} {time.time_ns()}\n")
            hg("commit", "-A", "-q", "-m", f"load push {i}", cwd=pusher)
            t = time.perf_counter()
            r = hg(
                "push",
                *endpoint.args,
                endpoint.push_url,
                cwd=pusher,
                check=False,
                timeout=PUSH_TIMEOUT,
            )
            if r.returncode != 0:
                push_error.append((r.stdout + r.stderr).decode(errors="replace"))
                return
            push_times.append(time.perf_counter() - t)
            pushed.append(log_nodes(pusher, ".")[0])

    # One clone first, alone: it warms OS caches and the server's lazy imports (a cold
    # `hg serve` 7.2 answers concurrent first requests with 500s: a demandimport race).
    hg(
        "clone",
        "-q",
        "-U",
        *endpoint.args,
        endpoint.clone_url,
        work / "warmup",
        timeout=CLONE_TIMEOUT,
    )
    shutil.rmtree(work / "warmup")
    dests = [work / f"clone{i}" for i in range(clones)]
    with PeakSampler(endpoint.pid) as sampler:
        t0 = time.perf_counter()
        pusher_thread = threading.Thread(target=push_loop)
        pusher_thread.start()
        procs = [
            subprocess.Popen(
                [HG, "clone", "-q", "-U", *endpoint.args, endpoint.clone_url, str(d)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=hg_env(),
            )
            for d in dests
        ]
        outputs = [p.communicate(timeout=CLONE_TIMEOUT)[0] for p in procs]
        wall = time.perf_counter() - t0
        done.set()
        pusher_thread.join(PUSH_TIMEOUT + 10)
    failed = [(p.returncode, o) for p, o in zip(procs, outputs, strict=True) if p.returncode]
    if failed:
        raise AssertionError(f"{len(failed)} clones failed; first: {failed[0][1][-2000:]!r}")
    if push_error:
        raise AssertionError(f"a push failed: {push_error[0][-2000:]}")
    states = {frozenset(base + pushed[:k]) for k in range(len(pushed) + 1)}
    for d in dests:
        if frozenset(log_nodes(d)) not in states:
            raise AssertionError(f"{d} does not equal the source at any moment of the run")
        shutil.rmtree(d)
    return wall, push_times, sampler.peak


#: ``--cache`` of hgwire_tw in the run (``none``: like Mercurial's servers, which have none)
HGWIRE_CACHE = ["none"]


def hgwire_http(repo: Path, work: Path) -> AbstractContextManager[Endpoint]:
    @contextmanager
    def cm() -> Iterator[Endpoint]:
        access = work / "access.toml"
        access.write_text('[[rules]]\nrepos = "*"\nread = ["anonymous"]\nwrite = ["anonymous"]\n')
        with running_server(
            work,
            "--repo",
            f"load={repo}",
            "--access",
            str(access),
            "--allow-push-over-http",
            "--cache",
            HGWIRE_CACHE[0],
            # every clone and the pusher come from 127.0.0.1, past the default cap of 32
            "--http-max-per-address",
            "1000",
        ) as server:
            url = f"{server.http_url}/load"
            yield Endpoint(url, url, server.proc.pid, [], repo)

    return cm()


def mercurial_http(repo: Path, work: Path) -> AbstractContextManager[Endpoint]:
    @contextmanager
    def cm() -> Iterator[Endpoint]:
        with open(repo / ".hg" / "hgrc", "a") as f:
            f.write("[web]\npush_ssl = false\nallow-push = *\n")
        with hg_serve(repo, work, "zstd") as (url, pid):
            yield Endpoint(url, url, pid, [], repo)

    return cm()


def hgwire_ssh(repo: Path, work: Path) -> AbstractContextManager[Endpoint]:
    @contextmanager
    def cm() -> Iterator[Endpoint]:
        key = client_key(work)
        access = work / "access.toml"
        access.write_text(
            f'[users.bench]\nkeys = ["{key.with_suffix(".pub").read_text().strip()}"]\n'
            '[[rules]]\nrepos = "*"\nread = ["*"]\nwrite = ["bench"]\n'
        )
        with running_server(
            work,
            "--repo",
            f"load={repo}",
            "--ssh",
            "tcp:0:interface=127.0.0.1",
            "--access",
            str(access),
            "--cache",
            HGWIRE_CACHE[0],
            # every clone and the pusher come from 127.0.0.1, past the default cap of 16
            "--ssh-max-per-address",
            "1000",
            http=None,
        ) as server:
            port = server.ports["ssh"][0]
            url = f"ssh://bench@127.0.0.1:{port}/load"
            yield Endpoint(url, url, server.proc.pid, ["--ssh", ssh_command(key, port)], repo)

    return cm()


def mercurial_ssh(repo: Path, work: Path) -> AbstractContextManager[Endpoint]:
    @contextmanager
    def cm() -> Iterator[Endpoint]:
        # sshd drops connections beyond MaxStartups (10 by default) still authenticating
        with openssh_hg_stdio(repo, work, "MaxStartups 200\nMaxSessions 200\n") as (
            url,
            pid,
            args,
        ):
            yield Endpoint(url, url, pid, args, repo)

    return cm()


CASES: dict[str, list[tuple[str, Callable[[Path, Path], AbstractContextManager[Endpoint]]]]] = {
    "http": [("hgwire_tw", hgwire_http), ("hg serve", mercurial_http)],
    "ssh": [("hgwire_tw", hgwire_ssh), ("OpenSSH + hg serve --stdio", mercurial_ssh)],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http-clones", type=int, default=50)
    parser.add_argument("--ssh-clones", type=int, default=20)
    parser.add_argument("--pushes", type=int, default=10, help="at most this many pushes per case")
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--sections", default="http,ssh")
    parser.add_argument(
        "--hgwire-cache", default="none", help="hgwire_tw's --cache (memory is its default)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    HGWIRE_CACHE[0] = args.hgwire_cache
    src = source_repo(args.commits, args.files)
    results: list[CaseResult] = []
    for section in [s.strip() for s in args.sections.split(",") if s.strip()]:
        clones = args.http_clones if section == "http" else args.ssh_clones
        for label, make in CASES[section]:
            work = Path(tempfile_dir(section, label))
            try:
                repo = work / "repo"
                shutil.copytree(src, repo, symlinks=True)
                pusher = work / "pusher"
                hg("clone", "-q", repo, pusher)
                with make(repo, work) as endpoint:
                    wall, push_times, peak = run_load(endpoint, pusher, clones, args.pushes, work)
                pushes = len(push_times)
                result = CaseResult(
                    server=label,
                    transport=section,
                    clones=clones,
                    wall=round(wall, 2),
                    clones_per_minute=round(clones / wall * 60, 1),
                    pushes=pushes,
                    push_seconds=round(statistics.median(push_times), 2) if push_times else 0.0,
                    peak_rss_mib=round(peak / 2**20, 1),
                )
                results.append(result)
                print(
                    f"{section:<5} {label:<28} {clones} clones in {wall:7.2f}s "
                    f"({result.clones_per_minute:6.1f}/min), {pushes} pushes "
                    f"(median {result.push_seconds:.2f}s), "
                    f"peak server RSS {result.peak_rss_mib:7.1f} MiB",
                    file=sys.stderr,
                )
            finally:
                if not os.environ.get("HGWIRE_LOAD_KEEP"):
                    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


def tempfile_dir(section: str, label: str) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=f"hgwire-load-{section}-{label.split()[0]}-")


if __name__ == "__main__":
    sys.exit(main())
