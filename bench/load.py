"""Load benchmark: many concurrent clones while pushes land, hgwire_tw against Mercurial.

    .venv/bin/python bench/load.py [--http-clones 50] [--ssh-clones 20] [--pushes 10]
                                   [--commits 300] [--files 60] [--sections mixed,http,ssh]
                                   [--hgwire-cache none|memory] [--json FILE]

Each case starts a server on loopback ports with its own copy of the benchmark
repository, warms it up with one clone per transport, then at the same moment starts the
`hg clone` processes and a pusher that pushes one changeset at a time, back to back (up
to ``--pushes``, committed beforehand in one line, and never after the last clone
ended). Sections, each run by both sides:

* mixed (first by default): the HTTP clones (50) and the SSH clones (20) all at once
  against one server that serves both transports; the pusher alternates between HTTP and
  SSH (first push over HTTP). hgwire_tw is one process with an HTTP and an SSH listener;
  Mercurial's side is `hg serve` and OpenSSH's `sshd` running `hg serve --stdio`, both
  serving the same repository copy at once;
* http: the HTTP clones alone, hgwire_tw (`--allow-push-over-http`) against `hg serve`
  (which forks a process per request);
* ssh: the SSH clones alone, hgwire_tw's Conch server against `sshd` + `hg serve --stdio`
  (started as `bench/clone.py` starts it: loopback port, own config and keys).

The clones of the two transports are started interleaved, so that neither gets a head
start. Every clone must succeed and equal the source at some moment of the run: its
changesets are the base ones plus the first k pushed ones, for some k (there is one
pusher, so the pushes form one line whatever transport carried them). hgwire_tw runs with
``--cache none`` unless ``--hgwire-cache memory`` (its default setting) is given, since
Mercurial's servers cache nothing; its per-address connection caps are lifted, since every
client comes from 127.0.0.1.

Reported per case: wall time of the whole batch (from the first clone started to the
last one ended; per transport, until that transport's last clone ended), clones per
minute (all transports), pushes done (per transport) and their median time, how many
pushes completed while at least one clone was still running, and the peak resident memory
of the server side's whole process tree (sampled every 50 ms: for `hg serve` and `sshd`
that includes the per-request/per-connection children; in mixed, Mercurial's is the sum
of both trees at each sample). A case in which no push completed during the clones did
not measure "clones while pushes land": it prints a warning, is marked ``"counts":
false`` in the JSON, and the exit status is 1 (after all cases ran). Loopback only,
bounded in count and time (each clone and push has a timeout); it stops by itself.
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
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
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


def tree_rss(*pids: int) -> int:
    """Resident bytes of ``pids`` and all their descendants (one pass over /proc)."""
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
    total, todo, seen = 0, list(pids), set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += rss.get(p, 0)
        todo.extend(children.get(p, ()))
    return total


class PeakSampler:
    """Samples ``tree_rss(*pids)`` every ``interval`` seconds on a thread; keeps the peak."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self.pids, self.interval, self.peak = pids, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(*self.pids))
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
    #: the section: "mixed", "http" or "ssh"
    transport: str
    clones: int
    #: seconds from the first clone started to the last one ended
    wall: float
    clones_per_minute: float
    pushes: int
    #: median seconds of one push (commit excluded) while the clones ran
    push_seconds: float
    #: pushes that completed while at least one clone was still running
    overlapping_pushes: int
    peak_rss_mib: float
    #: per transport: clones, seconds until its last clone ended, pushes done
    by_transport: dict[str, dict[str, float]]
    #: False when no push completed during the clones (the case did not measure its load)
    counts: bool
    #: every push of the run
    push_log: list[PushRecord]


@dataclass
class Transport:
    """How ``hg`` reaches the server over one transport."""

    url: str
    args: list[str]


@dataclass
class Endpoint:
    """A running server side: its transports, and the process trees to measure."""

    transports: dict[str, Transport]
    pids: list[int]
    repo: Path


@dataclass
class PushRecord:
    """One push of a run."""

    transport: str
    #: seconds after the clones started
    start: float
    seconds: float
    during_clones: bool


@dataclass
class LoadOutcome:
    """What ``run_load`` saw."""

    wall: float
    #: seconds until the last clone of each transport ended
    walls: dict[str, float]
    #: each push, in order: transport, start (seconds after the clones started), seconds,
    #: and whether it completed while a clone was still running
    pushes: list[PushRecord]
    overlapping_pushes: int
    peak: int


def source_repo(commits: int, files: int) -> Path:
    """The benchmark repository (built once, cached in bench/out/)."""
    path = OUT / f"load-{commits}-{files}"
    if not (path / ".hg" / "store").is_dir():
        shutil.rmtree(path, ignore_errors=True)
        OUT.mkdir(parents=True, exist_ok=True)
        make_bench_repo(path, commits=commits, files=files)
    return path


def interleaved(counts: dict[str, int]) -> list[tuple[str, int]]:
    """(transport, index) of every clone, the transports spread evenly over the order."""
    jobs = [(t, i) for t, n in counts.items() for i in range(n)]
    return sorted(jobs, key=lambda job: (job[1] + 0.5) / counts[job[0]])


def run_load(
    endpoint: Endpoint, pusher: Path, clones: dict[str, int], max_pushes: int, work: Path
) -> LoadOutcome:
    """Start the clones (``clones[transport]`` of each) and the pusher together; the
    pusher takes the endpoint's transports in turn."""
    base = log_nodes(endpoint.repo)
    order = list(endpoint.transports)
    pushed: list[str] = []
    push_spans: list[tuple[str, float, float]] = []
    done = threading.Event()
    push_error: list[str] = []

    # The changesets to push, one line on top of the base, all committed before the
    # clones start: the pushes then follow each other with nothing in between.
    for i in range(max_pushes):
        (pusher / "load.txt").write_text(f"push {i} {time.time_ns()}\n")
        hg("commit", "-A", "-q", "-m", f"load push {i} over {order[i % len(order)]}", cwd=pusher)
    to_push = log_nodes(pusher, f"limit(reverse(::.), {max_pushes})")[::-1] if max_pushes else []

    def push_loop() -> None:
        for i, node in enumerate(to_push):
            if done.is_set():
                return
            name = order[i % len(order)]
            transport = endpoint.transports[name]
            t = time.perf_counter()
            r = hg(
                "push",
                *transport.args,
                "-r",
                node,
                transport.url,
                cwd=pusher,
                check=False,
                timeout=PUSH_TIMEOUT,
            )
            if r.returncode != 0:
                push_error.append(f"over {name}: " + (r.stdout + r.stderr).decode(errors="replace"))
                return
            push_spans.append((name, t, time.perf_counter()))
            pushed.append(node)

    # One clone per transport first, alone: it warms OS caches and the server's lazy
    # imports (a cold `hg serve` 7.2 answers concurrent first requests with 500s: a
    # demandimport race).
    for name, transport in endpoint.transports.items():
        warmup = work / f"warmup-{name}"
        hg("clone", "-q", "-U", *transport.args, transport.url, warmup, timeout=CLONE_TIMEOUT)
        shutil.rmtree(warmup)
    jobs = interleaved(clones)
    dests = [work / f"clone-{name}-{i}" for name, i in jobs]
    starts = [0.0] * len(jobs)
    ends = [0.0] * len(jobs)
    outputs = [b""] * len(jobs)

    def wait(k: int, proc: subprocess.Popen[bytes]) -> None:
        try:
            outputs[k] = proc.communicate(timeout=CLONE_TIMEOUT)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            outputs[k] = proc.communicate()[0] + b"\n(killed: timed out)"
        ends[k] = time.perf_counter()

    procs: list[subprocess.Popen[bytes]] = []
    waiters: list[threading.Thread] = []
    with PeakSampler(endpoint.pids) as sampler:
        t0 = time.perf_counter()
        pusher_thread = threading.Thread(target=push_loop)
        pusher_thread.start()
        for k, ((name, _), dest) in enumerate(zip(jobs, dests, strict=True)):
            transport = endpoint.transports[name]
            starts[k] = time.perf_counter()
            procs.append(
                subprocess.Popen(
                    [HG, "clone", "-q", "-U", *transport.args, transport.url, str(dest)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=hg_env(),
                )
            )
            waiters.append(threading.Thread(target=wait, args=(k, procs[-1])))
            waiters[-1].start()
        for w in waiters:
            w.join()
        done.set()
        pusher_thread.join(PUSH_TIMEOUT + 10)
    wall = max(ends) - t0
    walls = {
        name: max(e for (n, _), e in zip(jobs, ends, strict=True) if n == name) - t0
        for name in clones
        if clones[name]
    }
    failed = [
        (name, p.returncode, o)
        for (name, _), p, o in zip(jobs, procs, outputs, strict=True)
        if p.returncode
    ]
    if failed:
        raise AssertionError(
            f"{len(failed)} clones failed; first (over {failed[0][0]}): {failed[0][2][-2000:]!r}"
        )
    if push_error:
        raise AssertionError(f"a push failed {push_error[0][-2000:]}")
    states = {frozenset(base + pushed[:k]) for k in range(len(pushed) + 1)}
    for d in dests:
        if frozenset(log_nodes(d)) not in states:
            raise AssertionError(f"{d} does not equal the source at any moment of the run")
        shutil.rmtree(d)
    spans = list(zip(starts, ends, strict=True))
    pushes = [
        PushRecord(
            name,
            round(start - t0, 2),
            round(end - start, 2),
            any(s <= end < e for s, e in spans),
        )
        for name, start, end in push_spans
    ]
    overlapping = sum(p.during_clones for p in pushes)
    return LoadOutcome(wall, walls, pushes, overlapping, sampler.peak)


#: ``--cache`` of hgwire_tw in the run (``none``: like Mercurial's servers, which have none)
HGWIRE_CACHE = ["none"]

Factory = Callable[[Path, Path], AbstractContextManager[Endpoint]]


def hgwire(*transports: str) -> Factory:
    """One hgwire_tw process serving ``transports`` ("http", "ssh") on loopback ports."""

    @contextmanager
    def cm(repo: Path, work: Path) -> Iterator[Endpoint]:
        access = work / "access.toml"
        users, read, write = "", [], []
        args = ["--repo", f"load={repo}", "--access", str(access), "--cache", HGWIRE_CACHE[0]]
        if "http" in transports:
            read.append("anonymous")
            write.append("anonymous")
            # every clone and the pusher come from 127.0.0.1, past the default cap of 32
            args += ["--allow-push-over-http", "--http-max-per-address", "1000"]
        if "ssh" in transports:
            key = client_key(work)
            users = f'[users.bench]\nkeys = ["{key.with_suffix(".pub").read_text().strip()}"]\n'
            read.append("*")
            write.append("bench")
            # every clone and the pusher come from 127.0.0.1, past the default cap of 16
            args += ["--ssh", "tcp:0:interface=127.0.0.1", "--ssh-max-per-address", "1000"]
        access.write_text(
            f'{users}[[rules]]\nrepos = "*"\nread = {json.dumps(read)}\n'
            f"write = {json.dumps(write)}\n"
        )
        # "none": without --http the server would also listen on its default port 8000
        http = "tcp:0:interface=127.0.0.1" if "http" in transports else "none"
        with running_server(work, *args, http=http) as server:
            found: dict[str, Transport] = {}
            if "http" in transports:
                found["http"] = Transport(f"{server.http_url}/load", [])
            if "ssh" in transports:
                port = server.ports["ssh"][0]
                found["ssh"] = Transport(
                    f"ssh://bench@127.0.0.1:{port}/load", ["--ssh", ssh_command(key, port)]
                )
            yield Endpoint(found, [server.proc.pid], repo)

    return cm


def mercurial(*transports: str) -> Factory:
    """Mercurial's servers for ``transports``, all serving the same repository copy:
    `hg serve` for HTTP, OpenSSH's `sshd` running `hg serve --stdio` for SSH."""

    @contextmanager
    def cm(repo: Path, work: Path) -> Iterator[Endpoint]:
        found: dict[str, Transport] = {}
        pids: list[int] = []
        with ExitStack() as stack:
            if "http" in transports:
                with open(repo / ".hg" / "hgrc", "a") as f:
                    f.write("[web]\npush_ssl = false\nallow-push = *\n")
                url, pid = stack.enter_context(hg_serve(repo, work, "zstd"))
                found["http"] = Transport(url, [])
                pids.append(pid)
            if "ssh" in transports:
                # sshd drops connections beyond MaxStartups (10 by default) still
                # authenticating
                url, pid, args = stack.enter_context(
                    openssh_hg_stdio(repo, work, "MaxStartups 200\nMaxSessions 200\n")
                )
                found["ssh"] = Transport(url, args)
                pids.append(pid)
            yield Endpoint(found, pids, repo)

    return cm


CASES: dict[str, list[tuple[str, Factory]]] = {
    "mixed": [
        ("hgwire_tw", hgwire("http", "ssh")),
        ("hg serve + sshd/hg --stdio", mercurial("http", "ssh")),
    ],
    "http": [("hgwire_tw", hgwire("http")), ("hg serve", mercurial("http"))],
    "ssh": [("hgwire_tw", hgwire("ssh")), ("OpenSSH + hg serve --stdio", mercurial("ssh"))],
}


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


def run_case(
    section: str, label: str, make: Factory, src: Path, clones: dict[str, int], max_pushes: int
) -> CaseResult:
    work = Path(tempfile.mkdtemp(prefix=f"hgwire-load-{section}-{label.split()[0]}-"))
    try:
        repo = work / "repo"
        shutil.copytree(src, repo, symlinks=True)
        pusher = work / "pusher"
        hg("clone", "-q", repo, pusher)
        with make(repo, work) as endpoint:
            out = run_load(endpoint, pusher, clones, max_pushes, work)
    finally:
        if not os.environ.get("HGWIRE_LOAD_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    total = sum(clones.values())
    by_transport: dict[str, dict[str, float]] = {}
    for name, wall in out.walls.items():
        times = [p.seconds for p in out.pushes if p.transport == name]
        by_transport[name] = {
            "clones": clones[name],
            "wall": round(wall, 2),
            "pushes": len(times),
            "push_seconds": median(times),
        }
    return CaseResult(
        server=label,
        transport=section,
        clones=total,
        wall=round(out.wall, 2),
        clones_per_minute=round(total / out.wall * 60, 1),
        pushes=len(out.pushes),
        push_seconds=median([p.seconds for p in out.pushes]),
        overlapping_pushes=out.overlapping_pushes,
        peak_rss_mib=round(out.peak / 2**20, 1),
        by_transport=by_transport,
        counts=out.overlapping_pushes > 0,
        push_log=out.pushes,
    )


def describe(r: CaseResult) -> str:
    per = ", ".join(
        f"{name} {int(t['clones'])} clones in {t['wall']:.2f}s and {int(t['pushes'])} pushes"
        for name, t in r.by_transport.items()
    )
    return (
        f"{r.transport:<5} {r.server:<28} {r.clones} clones in {r.wall:7.2f}s "
        f"({r.clones_per_minute:6.1f}/min), {r.pushes} pushes "
        f"(median {r.push_seconds:.2f}s, {r.overlapping_pushes} during the clones), "
        f"peak server RSS {r.peak_rss_mib:7.1f} MiB\n      [{per}]\n      pushes: "
        + ", ".join(
            f"{p.transport} at {p.start:.1f}s took {p.seconds:.2f}s"
            + (" (during the clones)" if p.during_clones else "")
            for p in r.push_log
        )
    )


def table(results: list[CaseResult]) -> str:
    head = (
        f"{'section':<8}{'server':<28}{'clones':>7}{'wall s':>9}{'clones/min':>11}"
        f"{'pushes':>8}{'median push s':>15}{'during clones':>15}{'peak RSS MiB':>14}"
    )
    rows = [
        f"{r.transport:<8}{r.server:<28}{r.clones:>7}{r.wall:>9.2f}{r.clones_per_minute:>11.1f}"
        f"{r.pushes:>8}{r.push_seconds:>15.2f}{r.overlapping_pushes:>15}{r.peak_rss_mib:>14.1f}"
        for r in results
    ]
    return "\n".join([head, *rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http-clones", type=int, default=50)
    parser.add_argument("--ssh-clones", type=int, default=20)
    parser.add_argument("--pushes", type=int, default=10, help="at most this many pushes per case")
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--sections", default="mixed,http,ssh")
    parser.add_argument(
        "--hgwire-cache", default="none", help="hgwire_tw's --cache (memory is its default)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := [s for s in sections if s not in CASES]:
        parser.error(f"unknown sections {unknown}; known: {', '.join(CASES)}")
    HGWIRE_CACHE[0] = args.hgwire_cache
    src = source_repo(args.commits, args.files)
    counts = {
        "mixed": {"http": args.http_clones, "ssh": args.ssh_clones},
        "http": {"http": args.http_clones},
        "ssh": {"ssh": args.ssh_clones},
    }
    results: list[CaseResult] = []
    for section in sections:
        for label, make in CASES[section]:
            result = run_case(section, label, make, src, counts[section], args.pushes)
            results.append(result)
            print(describe(result), file=sys.stderr)
            if not result.counts:
                print(
                    f"WARNING: {section}/{label}: no push completed while a clone was still "
                    "running; this case does not count",
                    file=sys.stderr,
                )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(r.counts for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
