"""Clone benchmark: hgwire_tw against Mercurial's own servers, same repository, same run.

    .venv/bin/python bench/clone.py [--commits 3000] [--rounds 3] [--no-ssh]

Builds (once, cached in bench/out/) a benchmark repository and times full `hg clone` runs
(hg 7.2.4 client, wire protocol v1):

* HTTP: hgwire_tw versus `hg serve`, with zstd and with zlib negotiated (chosen by each
  server's engine order, since the 7.x HTTP client always offers every engine);
* SSH: hgwire_tw's Conch server versus `hg serve --stdio` behind OpenSSH's `sshd`, which
  the benchmark starts on a loopback port with its own configuration and keys.

It reports the median wall time and the server's CPU time per clone (user+sys of the
server process and of the children it waited for, from /proc) and the ratios
hgwire_tw / Mercurial. Every clone is checked to hold the source's changesets.
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


def ssh_command(key: Path, port: int) -> str:
    return (
        f"ssh -i {key} -p {port} -o IdentitiesOnly=yes -o BatchMode=yes "
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    )


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
def openssh_hg_stdio(repo: Path, work: Path) -> Iterator[tuple[str, int, list[str]]]:
    """OpenSSH's sshd on loopback running `hg serve --stdio`; yields (url, pid, hg args)."""
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
        "SetEnv HGRCPATH= HGPLAIN=1\n"
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
            ["--ssh", ssh_command(key, port), "--remotecmd", HG],
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
        http=None,
    ) as server:
        port = server.ports["ssh"][0]
        yield (
            f"ssh://bench@127.0.0.1:{port}/bench",
            server.proc.pid,
            ["--ssh", ssh_command(key, port)],
        )


def timed_clone(
    url: str, pid: int, extra: list[str], dest: Path, expected: int
) -> tuple[float, float]:
    shutil.rmtree(dest, ignore_errors=True)
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    hg("clone", "-q", "-U", *extra, url, dest)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    got = len(log_nodes(dest))
    if got != expected:
        raise AssertionError(f"clone from {url} has {got} changesets, expected {expected}")
    return wall, cpu


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
    walls, cpus = [], []
    extra = extra or []
    timed_clone(url, pid, extra, work / "warmup", expected)  # warm OS caches and imports
    for i in range(rounds):
        wall, cpu = timed_clone(url, pid, extra, work / f"c{i}", expected)
        walls.append(wall)
        cpus.append(cpu)
    result = {"wall": statistics.median(walls), "cpu": statistics.median(cpus)}
    print(
        f"  {label:<28} {case:<5} wall {result['wall']:7.3f}s  server cpu {result['cpu']:7.3f}s",
        file=sys.stderr,
    )
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engines", default="zstd,zlib")
    ap.add_argument("--no-ssh", action="store_true", help="skip the SSH comparison")
    args = ap.parse_args()
    repo = bench_repo(args.commits)
    expected = len(log_nodes(repo))
    rows: list[tuple[str, dict[str, float], dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="hgwire-bench-") as tmp:
        work = Path(tmp)
        for engine in args.engines.split(","):
            # The 7.x HTTP client offers every engine; each server picks by its own order.
            with running_server(work, "--repo", f"bench={repo}", "--compression", engine) as server:
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
        if not args.no_ssh:
            with hgwire_ssh(repo, work) as (url, pid, extra):
                ours = measure(
                    "hgwire_tw (SSH, Conch)", url, pid, "-", args.rounds, work, expected, extra
                )
            with openssh_hg_stdio(repo, work) as (url, pid, extra):
                theirs = measure(
                    "sshd + hg serve --stdio", url, pid, "-", args.rounds, work, expected, extra
                )
            rows.append(("ssh", ours, theirs))
    print(
        f"\nfull clone of {expected} changesets, median of {args.rounds} "
        "(ratio = hgwire_tw / Mercurial; < 1 means hgwire_tw is cheaper)"
    )
    print(
        f"{'case':<10}{'wall ours':>11}{'wall hg':>10}{'ratio':>8}"
        f"{'cpu ours':>11}{'cpu hg':>9}{'ratio':>8}"
    )
    for case, ours, theirs in rows:
        print(
            f"{case:<10}{ours['wall']:>10.3f}s{theirs['wall']:>9.3f}s"
            f"{ours['wall'] / theirs['wall']:>8.2f}{ours['cpu']:>10.3f}s{theirs['cpu']:>8.3f}s"
            f"{ours['cpu'] / max(theirs['cpu'], 1e-9):>8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
