"""Clone benchmark: hgwire_tw against Mercurial's own servers, same repository, same run.

    .venv/bin/python bench/clone.py [--commits 3000 | --repo PATH] [--rounds 3] [--no-ssh]
                                    [--sections http,ssh,client,stream,streams] [--streams 4]

Builds (once, cached in bench/out/) a benchmark repository and times full `hg clone` runs
(hg 7.2.4 client, wire protocol v1):

* HTTP: hgwire_tw versus `hg serve`, with zstd and with zlib negotiated (chosen by each
  server's engine order, since the 7.x HTTP client always offers every engine);
* SSH: hgwire_tw's Conch server versus `hg serve --stdio` behind OpenSSH's `sshd`, which
  the benchmark starts on a loopback port with its own configuration and keys. The 7.x
  client's protocaps offer every engine, so ours compresses with its first (zstd);
  Mercurial's sends the bundle raw. Bytes on the wire are what the client's `ssh`
  received (its own "Transferred: ... received N bytes" count, at LogLevel VERBOSE into a
  log file): the same client and the same count for both servers, encryption included.
  Both SSH servers run side by side and each round clones from one, then the other
  (alternating which goes first), so load changes on a shared machine hit both alike.

It reports the median wall time and the server's CPU time per clone (user+sys of the
server process and of the children it waited for, from /proc) and the ratios
hgwire_tw / Mercurial. Every clone is checked to hold the source's changesets. Our server
runs with `--cache none` here, as Mercurial's servers have no response cache;
`bench/cache.py` measures the cache.

Three more sections:

* client: hgwire_tw's own v2 client (`hgwire clone -U`) over raw TCP (`hgwire://`), HTTP
  v2 and our SSH subsystem (`ssh://`), against `hg clone -U` (7.x, v1, zstd) from
  `hg serve`: wall time, client and server CPU (the client's from wait4 of the reaped
  child) and peak RSS of both; plus `hgwire clone --no-stream` (the revision path).
* stream: `hg clone --stream -U` from hgwire_tw and from Mercurial's servers, over HTTP
  (hg serve) and SSH (sshd + hg serve --stdio); both servers run at once and each round
  clones from both, in alternating order.
* streams: one TCP connection carrying several big `filesdata` requests at once, with
  `--tcp-streams 1` versus `--tcp-streams N`: the server compresses each stream on its
  own worker thread, so with N > 1 its CPU% (CPU time / wall time) can exceed 100.
"""

from __future__ import annotations

import argparse
import os
import resource
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
#: hg serve and OpenSSH + hg serve --stdio have no response cache: compare like with like
#: (bench/cache.py measures the cache).
NO_CACHE = ("--cache", "none")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (all threads) and its reaped children.

    sshd forks a process per connection which waits for `hg serve --stdio`, so the
    listening sshd's children times include all of the SSH side's work.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


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
def hg_serve(repo: Path, workdir: Path, engine: str) -> Iterator[tuple[str, int]]:
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


SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def ssh_command(key: Path, port: int, wire_log: Path | None = None) -> str:
    """The ``--ssh`` command; with ``wire_log``, ssh writes its byte counts there."""
    log = f"-o LogLevel=VERBOSE -E {wire_log}" if wire_log else "-o LogLevel=ERROR"
    return (
        f"ssh -i {key} -p {port} -o IdentitiesOnly=yes -o BatchMode=yes "
        f"-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null {log}"
    )


def wire_log_path(work: Path) -> Path:
    """Where the SSH clients of a measured case log their byte counts."""
    return work / "ssh-wire.log"


def received_bytes(wire_log: Path) -> int:
    """Bytes the ssh client received, summed over the connections in ``wire_log``
    (OpenSSH logs "Transferred: sent N, received M bytes, in S seconds" at exit)."""
    total = 0
    for line in wire_log.read_text(errors="replace").splitlines():
        if "Transferred: sent " in line:
            total += int(line.split("received ", 1)[1].split(" ", 1)[0].replace(",", ""))
    return total


def client_key(work: Path) -> Path:
    key = work / "client_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError(f"server on port {port} did not start") from None
            time.sleep(0.1)


@contextmanager
def openssh_hg_stdio(
    repo: Path, work: Path, extra_config: str = ""
) -> Iterator[tuple[str, int, list[str]]]:
    """OpenSSH's sshd on loopback running `hg serve --stdio`; yields (url, pid, hg args).
    ``extra_config`` is appended to its sshd_config."""
    key = client_key(work)
    d = work / "sshd"
    d.mkdir(exist_ok=True)
    host_key = d / "host_ed25519"
    if not host_key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True
        )
    (d / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {d / 'sshd.pid'}\nPermitRootLogin prohibit-password\n"
        "SetEnv HGRCPATH= HGPLAIN=1\n" + extra_config
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    with open(d / "sshd.log", "wb") as log:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log
        )
    wait_for_port(port, proc)
    user = os.environ.get("USER") or "root"
    try:
        yield (
            f"ssh://{user}@127.0.0.1:{port}/{repo}",
            proc.pid,
            ["--ssh", ssh_command(key, port, wire_log_path(work)), "--remotecmd", HG],
        )
    finally:
        stop(proc)


@contextmanager
def hgwire_ssh(repo: Path, work: Path) -> Iterator[tuple[str, int, list[str]]]:
    """hgwire_tw's Conch server; yields (url, pid, hg args)."""
    key = client_key(work)
    access = work / "access.toml"
    access.write_text(
        f'[users.bench]\nkeys = ["{key.with_suffix(".pub").read_text().strip()}"]\n'
        '[[rules]]\nrepos = "*"\nread = ["*"]\n'
    )
    with running_server(
        work,
        "--repo",
        f"bench={repo}",
        "--ssh",
        "tcp:0:interface=127.0.0.1",
        "--access",
        str(access),
        *NO_CACHE,
        "--log-level",
        "info",
        http="none",
    ) as server:
        port = server.ports["ssh"][0]
        yield (
            f"ssh://bench@127.0.0.1:{port}/bench",
            server.proc.pid,
            ["--ssh", ssh_command(key, port, wire_log_path(work))],
        )


def timed_clone(
    url: str, pid: int, extra: list[str], dest: Path, expected: int, wire_log: Path | None = None
) -> tuple[float, float, int]:
    """(wall, server cpu, bytes the ssh client received or 0, client cpu) of one
    ``hg clone`` (client cpu: hg and the ssh it ran)."""
    shutil.rmtree(dest, ignore_errors=True)
    if wire_log is not None:
        wire_log.write_text("")
    cpu0, child0, t0 = cpu_seconds(pid), children_cpu(), time.perf_counter()
    hg("clone", "-q", "-U", *extra, url, dest)
    wall = time.perf_counter() - t0
    cpu, client = cpu_seconds(pid) - cpu0, children_cpu() - child0
    got = len(log_nodes(dest))
    if got != expected:
        raise AssertionError(f"clone from {url} has {got} changesets, expected {expected}")
    return wall, cpu, received_bytes(wire_log) if wire_log is not None else 0, client


def measure(
    label: str,
    url: str,
    pid: int,
    case: str,
    rounds: int,
    work: Path,
    expected: int,
    extra: list[str] | None = None,
) -> dict[str, float]:
    walls, cpus, sizes = [], [], []
    extra = extra or []
    wire_log = wire_log_path(work) if any("-E " in a for a in extra) else None
    # warm OS caches and imports
    timed_clone(url, pid, extra, work / "warmup", expected, wire_log)
    for i in range(rounds):
        wall, cpu, size, _ = timed_clone(url, pid, extra, work / f"c{i}", expected, wire_log)
        walls.append(wall)
        cpus.append(cpu)
        sizes.append(size)
    result = {
        "wall": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "bytes": statistics.median(sizes),
    }
    wire = f"  {result['bytes'] / 1e6:8.2f} MB on the wire" if wire_log else ""
    print(
        f"  {label:<28} {case:<5} wall {result['wall']:7.3f}s  server cpu {result['cpu']:7.3f}s"
        f"{wire}",
        file=sys.stderr,
    )
    return result


def measure_interleaved(
    cases: list[tuple[str, str, tuple[str, int, list[str]]]],
    rounds: int,
    work: Path,
    expected: int,
) -> list[dict[str, float]]:
    """``measure`` for servers running side by side, one clone of each per round, in
    alternating order, so that a change in the machine's load hits both alike.

    ``cases`` are (label, case, (url, pid, extra hg args)).
    """
    runs: list[list[tuple[float, float, int, float]]] = [[] for _ in cases]
    logs = [
        wire_log_path(work) if any("-E " in a for a in extra) else None
        for _, _, (_, _, extra) in cases
    ]
    for (_, _, (url, pid, extra)), log in zip(cases, logs, strict=True):
        timed_clone(url, pid, extra, work / "warmup", expected, log)
    for i in range(rounds):
        order = list(range(len(cases)))
        if i % 2:
            order.reverse()
        for k in order:
            url, pid, extra = cases[k][2]
            runs[k].append(timed_clone(url, pid, extra, work / f"c{i}-{k}", expected, logs[k]))
    results = []
    for (label, case, _), log, got in zip(cases, logs, runs, strict=True):
        result = {
            "wall": statistics.median(r[0] for r in got),
            "cpu": statistics.median(r[1] for r in got),
            "bytes": statistics.median(r[2] for r in got),
            "client": statistics.median(r[3] for r in got),
        }
        wire = f"  {result['bytes'] / 1e6:8.2f} MB on the wire" if log else ""
        print(
            f"  {label:<28} {case:<5} wall {result['wall']:7.3f}s  "
            f"server cpu {result['cpu']:7.3f}s  client cpu {result['client']:7.3f}s{wire}",
            file=sys.stderr,
        )
        results.append(result)
    return results


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the clients it ran)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of live process ``pid`` so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed_client(
    argv: list[str], pid: int, dest: Path, expected: int
) -> tuple[float, float, float, float]:
    """Run one clone command; (wall, client cpu, server cpu, client peak RSS MiB)."""
    shutil.rmtree(dest, ignore_errors=True)
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    proc = subprocess.Popen(argv, env=hg_env(), stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, argv)
    client, server = usage.ru_utime + usage.ru_stime, cpu_seconds(pid) - cpu0
    got = len(log_nodes(dest))
    if got != expected:
        raise AssertionError(f"{argv} made {got} changesets, expected {expected}")
    return wall, client, server, usage.ru_maxrss / 1024


def measure_client(
    label: str, argv: list[str], pid: int, rounds: int, work: Path, expected: int
) -> dict[str, float]:
    """Median wall, client CPU and server CPU of ``argv`` cloning into its last argument;
    the client's and the server's peak RSS (the server's since it started)."""
    dest = Path(argv[-1])
    timed_client(argv, pid, dest, expected)  # warm-up
    runs = [timed_client(argv, pid, dest, expected) for _ in range(rounds)]
    result = {
        "wall": statistics.median(r[0] for r in runs),
        "client": statistics.median(r[1] for r in runs),
        "server": statistics.median(r[2] for r in runs),
        "client_rss": max(r[3] for r in runs),
        "server_rss": peak_rss_mib(pid),
    }
    result["cpu"] = result["client"] + result["server"]
    print(
        f"  {label:<34} wall {result['wall']:7.3f}s  client cpu {result['client']:7.3f}s"
        f"  server cpu {result['server']:7.3f}s  peak RSS client {result['client_rss']:.0f}"
        f" MiB, server {result['server_rss']:.0f} MiB",
        file=sys.stderr,
    )
    return result


HGWIRE = [sys.executable, "-m", "hgwire_tw"]


def hgwire_ssh_client_case(repo: Path, work: Path, rounds: int, expected: int) -> dict[str, float]:
    """hgwire clone over the SSH ``hgwire`` subsystem of our Conch server."""
    key = client_key(work)
    known = work / "known_hosts"
    known.unlink(missing_ok=True)
    with hgwire_ssh(repo, work) as (url, pid, _):
        return measure_client(
            "hgwire clone (SSH subsystem)",
            [
                *HGWIRE,
                "clone",
                "-U",
                "--ssh-key",
                str(key),
                "--no-ssh-agent",
                "--known-hosts",
                str(known),
                "--accept-new-host-key",
                url,
                str(work / "hws"),
            ],
            pid,
            rounds,
            work,
            expected,
        )


def _client_result(
    label: str, runs: list[tuple[float, float, float, float]], pid: int
) -> dict[str, float]:
    result = {
        "wall": statistics.median(r[0] for r in runs),
        "client": statistics.median(r[1] for r in runs),
        "server": statistics.median(r[2] for r in runs),
        "client_rss": max(r[3] for r in runs),
        "server_rss": peak_rss_mib(pid),
    }
    result["cpu"] = result["client"] + result["server"]
    print(
        f"  {label:<34} wall {result['wall']:7.3f}s  client cpu {result['client']:7.3f}s"
        f"  server cpu {result['server']:7.3f}s  peak RSS client {result['client_rss']:.0f}"
        f" MiB, server {result['server_rss']:.0f} MiB",
        file=sys.stderr,
    )
    return result


def client_section(
    repo: Path, work: Path, rounds: int, expected: int, revisions: bool = True
) -> list[tuple[str, dict[str, float], dict[str, float]]]:
    """hgwire clone (TCP, HTTP v2, SSH; all without a working copy) against
    ``hg clone -U`` (v1) from hg serve; with ``revisions`` also the forced revision path
    over TCP. hg serve and our server (a fresh one, so its peak RSS is this section's)
    run at once, and every round runs each TCP/HTTP case once, the order reversed every
    other round, so load changes hit both sides alike; SSH is measured afterwards."""
    with (
        hg_serve(repo, work, "zstd") as (url, pid),
        running_server(
            work, "--repo", f"bench={repo}", "--tcp", "tcp:0:interface=127.0.0.1", *NO_CACHE
        ) as server,
    ):
        tcp_url = f"hgwire://127.0.0.1:{server.ports['tcp'][0]}/bench"
        ours_pid = server.proc.pid
        cases = [
            ("hg clone, hg serve (HTTP v1)", [HG, "clone", "-q", "-U", url], pid),
            ("hgwire clone (TCP)", [*HGWIRE, "clone", "-U", tcp_url], ours_pid),
            ("hgwire clone (HTTP v2)", [*HGWIRE, "clone", "-U", server.url("bench")], ours_pid),
        ]
        if revisions:
            cases.append(
                (
                    "hgwire clone --no-stream (TCP)",
                    [*HGWIRE, "clone", "-U", "--no-stream", tcp_url],
                    ours_pid,
                )
            )
        runs: list[list[tuple[float, float, float, float]]] = [[] for _ in cases]
        for i, (_, argv, server_pid) in enumerate(cases):  # warm-up
            timed_client([*argv, str(work / f"cl{i}")], server_pid, work / f"cl{i}", expected)
        for r in range(rounds):
            order = list(range(len(cases)))
            if r % 2:
                order.reverse()
            for i in order:
                _, argv, server_pid = cases[i]
                dest = work / f"cl{i}"
                runs[i].append(timed_client([*argv, str(dest)], server_pid, dest, expected))
        results = [_client_result(label, runs[i], p) for i, (label, _, p) in enumerate(cases)]
    theirs = results[0]
    rows = [("hgwire tcp", results[1], theirs), ("hgwire v2", results[2], theirs)]
    rows.append(("hgwire ssh", hgwire_ssh_client_case(repo, work, rounds, expected), theirs))
    if revisions:
        rows.append(("revs tcp", results[3], theirs))
    return rows


def measure_alternating(
    cases: list[tuple[str, str, int, list[str]]], rounds: int, work: Path, expected: int
) -> list[dict[str, float]]:
    """Like ``measure`` for several servers at once: each round clones from every one of
    ``cases`` ``(label, url, pid, extra hg args)``, the order reversed every other round,
    so a change in the machine's load hits all of them alike. Medians per case."""
    walls: list[list[float]] = [[] for _ in cases]
    cpus: list[list[float]] = [[] for _ in cases]
    for i, (_, url, pid, extra) in enumerate(cases):
        timed_clone(url, pid, extra, work / f"warmup{i}", expected)
    for r in range(rounds):
        order = list(range(len(cases)))
        if r % 2:
            order.reverse()
        for i in order:
            _, url, pid, extra = cases[i]
            wall, cpu = timed_clone(url, pid, extra, work / f"c{i}", expected)
            walls[i].append(wall)
            cpus[i].append(cpu)
    results = []
    for i, (label, *_) in enumerate(cases):
        result = {"wall": statistics.median(walls[i]), "cpu": statistics.median(cpus[i])}
        print(
            f"  {label:<28} strm  wall {result['wall']:7.3f}s  server cpu "
            f"{result['cpu']:7.3f}s  (walls {' '.join(f'{w:.2f}' for w in walls[i])})",
            file=sys.stderr,
        )
        results.append(result)
    return results


def stream_section(
    repo: Path, work: Path, rounds: int, expected: int
) -> list[tuple[str, dict[str, float], dict[str, float]]]:
    """``hg clone --stream -U`` (Mercurial 7.2) from us and from Mercurial's servers: HTTP
    (hgwire_tw vs hg serve) and SSH (our Conch server vs sshd + hg serve --stdio). Both
    servers of a transport run at once and the rounds alternate between them."""
    rows = []
    with (
        running_server(work, "--repo", f"bench={repo}", *NO_CACHE) as server,
        hg_serve(repo, work, "zstd") as (url, pid),
    ):
        ours, theirs = measure_alternating(
            [
                ("hgwire_tw (HTTP v1)", server.url("bench"), server.proc.pid, ["--stream"]),
                ("hg serve (HTTP v1)", url, pid, ["--stream"]),
            ],
            rounds,
            work,
            expected,
        )
    rows.append(("http", ours, theirs))
    with (
        hgwire_ssh(repo, work) as (url, pid, extra),
        openssh_hg_stdio(repo, work) as (their_url, their_pid, their_extra),
    ):
        ours, theirs = measure_alternating(
            [
                ("hgwire_tw (SSH, Conch)", url, pid, [*extra, "--stream"]),
                ("sshd + hg serve --stdio", their_url, their_pid, [*their_extra, "--stream"]),
            ],
            rounds,
            work,
            expected,
        )
    rows.append(("ssh", ours, theirs))
    return rows


def streams_repo(files: int, megabytes: int) -> Path:
    """A repository of ``files`` text files of ``megabytes`` MB each (cached in bench/out).

    Big, compressible file texts make compression the main cost of ``filesdata``, which
    is what the streams comparison is about.
    """
    import random

    path = OUT / f"streams-{files}x{megabytes}"
    if (path / ".hg" / "store").is_dir():
        return path
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    hg("init", path)
    rng = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randrange(3, 11))) for _ in range(20000)]
    for i in range(files):
        words: list[str] = []
        size = 0
        while size < megabytes * 1024 * 1024:
            line = " ".join(rng.choices(vocab, k=12))
            words.append(line)
            size += len(line) + 1
        (path / f"f{i}.txt").write_text("\n".join(words) + "\n")
    hg("commit", "-q", "-A", "-m", "big texts", "-u", "bench", "-d", "0 0", cwd=path)
    hg("phase", "--public", "-r", "tip", cwd=path)
    return path


def streams_requests(repo: Path, parts: int) -> list[bytes]:
    """``parts`` filesdata requests, one per big file, full texts."""
    from hgwire_tw.core.reactor import ClientFrameReactor

    node = bytes.fromhex(log_nodes(repo)[-1])
    client = ClientFrameReactor()
    out = []
    for i in range(parts):
        _, actions = client.call_command(
            b"filesdata",
            {
                b"revisions": [{b"type": b"changesetexplicit", b"nodes": [node]}],
                b"fields": {b"revision"},
                b"pathfilter": {b"include": [b"path:f%d.txt" % i]},
            },
        )
        out.append(actions[0].data)
    return out


def one_connection(port: int, requests: list[bytes]) -> int:
    """Send every request at once on one connection; read until each ended. Bytes read."""
    import socket

    from hgwire_tw.core.frames import CommandResponseFlag, FrameDecoder, FrameType

    decoder = FrameDecoder()
    open_ids = set(range(1, 2 * len(requests), 2))
    total = 0
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(b"hgwire-v2 streams\n" + b"".join(requests))
        head = b""
        while not head.endswith(b"\n"):
            head += s.recv(1)
        if head != b"ok\n":
            raise RuntimeError(head)
        while open_ids:
            data = s.recv(1 << 20)
            if not data:
                raise RuntimeError(f"connection closed with {open_ids} open")
            total += len(data)
            for frame in decoder.feed(data):
                if frame.type is FrameType.ERROR_RESPONSE:
                    raise RuntimeError(f"error response {frame.payload[:200]!r}")
                if (
                    frame.type is FrameType.COMMAND_RESPONSE
                    and frame.flags & CommandResponseFlag.EOS
                ):
                    open_ids.discard(frame.request_id)
    return total


def streams_section(
    repo: Path, work: Path, rounds: int, streams: int
) -> list[tuple[int, dict[str, float]]]:
    """One TCP connection, ``streams`` big requests at once, 1 versus ``streams`` streams."""
    repo = streams_repo(streams, 24)
    requests = streams_requests(repo, streams)
    out = []
    for n in (1, streams):
        with running_server(
            work,
            "--repo", f"streams={repo}",
            "--tcp", "tcp:0:interface=127.0.0.1",
            *NO_CACHE,
            "--tcp-streams", str(n),
            "--workers", str(max(4, streams)),
            http=None,
        ) as server:  # fmt: skip
            port, pid = server.ports["tcp"][0], server.proc.pid
            one_connection(port, requests)  # warm-up
            walls, cpus = [], []
            for _ in range(rounds):
                cpu0, t0 = cpu_seconds(pid), time.perf_counter()
                size = one_connection(port, requests)
                walls.append(time.perf_counter() - t0)
                cpus.append(cpu_seconds(pid) - cpu0)
        result = {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "bytes": size}
        result["pct"] = 100 * result["cpu"] / result["wall"]
        print(
            f"  tcp-streams {n:<3} {len(requests)} requests  wall {result['wall']:7.3f}s  "
            f"server cpu {result['cpu']:7.3f}s ({result['pct']:.0f}%)  {size} bytes",
            file=sys.stderr,
        )
        out.append((n, result))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engines", default="zstd,zlib")
    ap.add_argument("--no-ssh", action="store_true", help="skip the SSH comparison")
    ap.add_argument("--sections", default="http,ssh,client,stream,streams")
    ap.add_argument(
        "--repo",
        type=Path,
        help="benchmark this existing repository instead of building one (e.g. "
        "bench/out/big-24000 from bench/bigrepo.py)",
    )
    ap.add_argument("--no-revisions", action="store_true", help="skip hgwire clone --no-stream")
    ap.add_argument("--streams", type=int, default=4, help="streams (and requests) to compare")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    if args.no_ssh:
        sections.discard("ssh")
    repo = args.repo.resolve() if args.repo else bench_repo(args.commits)
    expected = len(log_nodes(repo))
    rows: list[tuple[str, dict[str, float], dict[str, float]]] = []
    client_rows: list[tuple[str, dict[str, float], dict[str, float]]] = []
    stream_clone_rows: list[tuple[str, dict[str, float], dict[str, float]]] = []
    stream_rows: list[tuple[int, dict[str, float]]] = []
    print(f"load before: {os.getloadavg()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="hgwire-bench-") as tmp:
        work = Path(tmp)
        for engine in args.engines.split(",") if "http" in sections else []:
            # The 7.x HTTP client offers every engine; each server picks by its own order.
            with running_server(
                work, "--repo", f"bench={repo}", "--compression", engine, *NO_CACHE
            ) as server:
                ours = measure(
                    "hgwire_tw (HTTP v1)",
                    server.url("bench"),
                    server.proc.pid,
                    engine,
                    args.rounds,
                    work,
                    expected,
                )
            with hg_serve(repo, work, engine) as (url, pid):
                theirs = measure(
                    "hg serve (HTTP v1)", url, pid, engine, args.rounds, work, expected
                )
            rows.append((f"http {engine}", ours, theirs))
        if "ssh" in sections:
            # Side by side, alternating: SSH clones take long enough for the load of a
            # shared machine to change between one server's rounds and the other's.
            with hgwire_ssh(repo, work) as ours_at, openssh_hg_stdio(repo, work) as theirs_at:
                ours, theirs = measure_interleaved(
                    [
                        ("hgwire_tw (SSH, Conch)", "zstd", ours_at),
                        ("sshd + hg serve --stdio", "raw", theirs_at),
                    ],
                    args.rounds,
                    work,
                    expected,
                )
            rows.append(("ssh", ours, theirs))
        if "client" in sections:
            client_rows = client_section(
                repo, work, args.rounds, expected, revisions=not args.no_revisions
            )
        if "stream" in sections:
            stream_clone_rows = stream_section(repo, work, args.rounds, expected)
        if "streams" in sections:
            stream_rows = streams_section(repo, work, args.rounds, args.streams)
    print(
        f"\nfull clone of {expected} changesets, median of {args.rounds} "
        "(ratio = hgwire_tw / Mercurial; < 1 means hgwire_tw is cheaper)"
    )
    print(
        f"{'case':<10}{'wall ours':>11}{'wall hg':>10}{'ratio':>8}"
        f"{'cpu ours':>11}{'cpu hg':>9}{'ratio':>8}"
        f"{'MB ours':>10}{'MB hg':>9}{'ratio':>8}"
    )
    for case, ours, theirs in rows:
        wire = ""
        if ours.get("bytes") and theirs.get("bytes"):
            wire = (
                f"{ours['bytes'] / 1e6:>10.2f}{theirs['bytes'] / 1e6:>9.2f}"
                f"{ours['bytes'] / theirs['bytes']:>8.2f}"
            )
        print(
            f"{case:<10}{ours['wall']:>10.3f}s{theirs['wall']:>9.3f}s"
            f"{ours['wall'] / theirs['wall']:>8.2f}{ours['cpu']:>10.3f}s{theirs['cpu']:>8.3f}s"
            f"{ours['cpu'] / max(theirs['cpu'], 1e-9):>8.2f}{wire}"
        )
    if client_rows:
        print(
            "\nclients: hgwire clone -U (v2) / hg clone -U from hg serve (v1, zstd); "
            "server cpu = the server process's; peak RSS in MiB"
        )
        print(
            f"{'case':<12}{'wall ours':>11}{'wall hg':>10}{'ratio':>8}"
            f"{'srv cpu ours':>14}{'srv cpu hg':>12}{'ratio':>8}"
            f"{'rss client':>12}{'rss server':>12}"
        )
        for case, ours, theirs in client_rows:
            print(
                f"{case:<12}{ours['wall']:>10.3f}s{theirs['wall']:>9.3f}s"
                f"{ours['wall'] / theirs['wall']:>8.2f}{ours['server']:>13.3f}s"
                f"{theirs['server']:>11.3f}s{ours['server'] / max(theirs['server'], 1e-9):>8.2f}"
                f"{ours['client_rss']:>12.0f}{ours['server_rss']:>12.0f}"
            )
    if stream_clone_rows:
        print("\nhg clone --stream -U (7.2 client): from hgwire_tw / from Mercurial's server")
        print(f"{'case':<10}{'wall ours':>11}{'wall hg':>10}{'ratio':>8}")
        for case, ours, theirs in stream_clone_rows:
            print(
                f"{case:<10}{ours['wall']:>10.3f}s{theirs['wall']:>9.3f}s"
                f"{ours['wall'] / theirs['wall']:>8.2f}"
            )
    if stream_rows:
        print(f"\none TCP connection, {args.streams} filesdata requests at once (full texts)")
        print(f"{'streams':<9}{'wall':>9}{'server cpu':>12}{'cpu%':>7}")
        for n, r in stream_rows:
            print(f"{n:<9}{r['wall']:>8.3f}s{r['cpu']:>11.3f}s{r['pct']:>6.0f}%")
    print(f"load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
