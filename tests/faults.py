"""Helpers for crash and failure tests: a TLS certificate for HTTPS, an access file with
writers over HTTPS and SSH, pushes big enough to be caught half-way, and probes that see
where a server process is (spooling a push, inside a transaction) from its files."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.repobuilders import HG, hg, hg_env, log_nodes
from tests.servers import RunningServer
from tests.sshclient import keygen, public_key, ssh_argv

TCP = "tcp:0:interface=127.0.0.1"


def make_tls_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (key and certificate PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@dataclass
class Writers:
    """What a client needs to push over HTTPS (anonymous writer) and SSH (alice)."""

    tmp: Path
    key: Path  # alice's SSH key
    tls_key: Path
    tls_cert: Path
    access: Path

    def server_args(self, *extra: str) -> list[str]:
        """``running_server`` arguments: HTTPS and SSH listeners and the access file."""
        https = f"ssl:0:interface=127.0.0.1:privateKey={self.tls_key}:certKey={self.tls_cert}"
        return ["--ssh", TCP, "--access", str(self.access), *extra, "--http", https]

    def ssh_command(self) -> str:
        """hg's ``--ssh`` value using alice's key and trusting any host key."""
        return " ".join(ssh_argv(self.key))

    def url(self, server: RunningServer, transport: str, repo: str) -> str:
        """The push URL of ``repo`` over ``transport`` (``https`` or ``ssh``)."""
        if transport == "ssh":
            return f"ssh://alice@127.0.0.1:{server.ports['ssh'][0]}/{repo}"
        return f"https://127.0.0.1:{server.ports['http'][0]}/{repo}"

    def client_args(self) -> list[str]:
        """hg options that make both transports work from a clean environment."""
        return ["--ssh", self.ssh_command(), "--config", f"web.cacerts={self.tls_cert}"]


def make_writers(tmp: Path) -> Writers:
    """A TLS certificate, alice's SSH key and an access file letting alice and
    anonymous HTTPS clients push to every repository."""
    tmp.mkdir(parents=True, exist_ok=True)
    key = keygen(tmp / "alice")
    tls_key, tls_cert = make_tls_cert(tmp / "tls")
    access = tmp / "access.toml"
    access.write_text(
        f'[users.alice]\nkeys = ["{public_key(key)}"]\n'
        '[[rules]]\nrepos = "*"\nread = ["*", "anonymous"]\nwrite = ["alice", "anonymous"]\n',
        encoding="utf-8",
    )
    return Writers(tmp=tmp, key=key, tls_key=tls_key, tls_cert=tls_cert, access=access)


def add_many_files(repo: Path, *, commits: int, files: int, size: int, tag: str) -> list[str]:
    """``commits`` new changesets in ``repo``, each adding ``files`` files of ``size``
    random (incompressible) bytes; returns their hex nodes."""
    for c in range(commits):
        folder = repo / f"{tag}-{c}"
        folder.mkdir()
        for i in range(files):
            (folder / f"f{i:05d}.bin").write_bytes(os.urandom(size))
        hg("commit", "-A", "-q", "-m", f"{tag} {c}", cwd=repo)
    return log_nodes(repo, f"last(all(), {commits})")


def journal_entries(repo: Path) -> int | None:
    """Lines in ``repo``'s transaction journal, or None when there is no journal."""
    try:
        return (repo / ".hg" / "store" / "journal").read_bytes().count(b"\n")
    except FileNotFoundError:
        return None


def spooling(pid: int, spool_dir: Path) -> bool:
    """Whether process ``pid`` holds a non-empty file in ``spool_dir`` open (a push
    being received: twisted.web's request body, or the SSH session's push spool)."""
    prefix = os.fspath(spool_dir) + os.sep
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd).startswith(prefix) and os.stat(fd).st_size > 0:
                return True
        except OSError:
            continue
    return False


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``check`` (every 2 ms) until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def start_push(writers: Writers, src: Path, url: str) -> subprocess.Popen[bytes]:
    """``hg push`` from ``src`` to ``url``, running in the background."""
    return subprocess.Popen(
        [HG, "push", *writers.client_args(), url],
        cwd=src,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=hg_env(),
    )


def lock_files(repo: Path) -> list[str]:
    """The lock symlinks/files present in ``repo`` (empty when it is unlocked)."""
    names = (".hg/wlock", ".hg/store/lock", ".hg/lock")
    return [n for n in names if os.path.lexists(repo / n)]


HOLD_LOCK = """
import sys, time
from mercurial import hg, ui
repo = hg.repository(ui.ui.load(), sys.argv[1].encode())
with repo.lock():
    tr = repo.transaction(b"held") if sys.argv[2] == "journal" else None
    print("locked", flush=True)
    sys.stdin.read()
    if tr is not None:
        tr.close()
"""

ABANDON = """
import os, sys
from mercurial import hg, ui
repo = hg.repository(ui.ui.load(), sys.argv[1].encode())
wlock = repo.wlock()
lock = repo.lock()
tr = repo.transaction(b"abandoned-by-test")
# journal first, then write: what every revlog append does (a push appends to
# filelogs first; changelog writes wait in a pending file until the transaction closes)
victim = sys.argv[2].encode()
tr.add(victim, repo.svfs.stat(victim).st_size)
with repo.svfs(victim, b"ab") as f:
    f.write(b"garbage past the journal's offset")
tr.add(b"data/ghost.i", 0)
repo.svfs.write(b"data/ghost.i", b"a store file the rollback must remove")
os._exit(0)  # die inside the transaction, holding both locks
"""


def hold_lock(repo: Path, *, journal: bool) -> subprocess.Popen[str]:
    """A live process holding ``repo``'s store lock (inside a transaction when
    ``journal``) until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(repo), "journal" if journal else "plain"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=hg_env(),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def abandon_transaction(repo: Path, victim: str = "data/a.txt.i") -> None:
    """Leave an abandoned transaction in ``repo``: a process opens one (holding wlock
    and lock), appends garbage to the store file ``victim``, creates another one and
    dies (``hg verify`` fails until the transaction is rolled back)."""
    subprocess.run([sys.executable, "-c", ABANDON, str(repo), victim], check=True, env=hg_env())
    assert journal_entries(repo) is not None and lock_files(repo)
