"""SSH end to end with real clients: compressed bundles, hg-ssh keys, the logs.

Two servers per module, both serving copies of one small rich repository over SSH: one
with the default engine order (``zstd,zlib``) and one preferring ``zlib``. Keys:

* alice may push (a plain key);
* dave's key is ``command="hg-ssh --read-only team/rich"`` (his user may write by the
  rules, the key may not);
* frank's key is ``command="hg-ssh big"``;
* erin's key carries ``environment=...``: it is left out with a warning.

The hg-ssh keys live in an ``authorized_keys`` file of one access-file user, ``team``,
and log in as ``hg@`` (a generic login: the key says who you are).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.repobuilders import HG_603, hg, hg_env, log_nodes, make_rich_repo, verify
from tests.servers import RunningServer, running_server
from tests.sshclient import keygen, public_key, ssh_argv
from tests.test_ssh_integration import HANDSHAKE, expected_clone, summary

SSH = shutil.which("ssh") or "/usr/bin/ssh"
#: Pure-Python Mercurial 5.9.3 (no zstd); CI installs it and sets this variable.
HG_593 = os.environ.get("HGWIRE_HG593")

pytestmark = [
    pytest.mark.skipif(not os.path.exists(SSH), reason="OpenSSH client not installed"),
    pytest.mark.timeout(180),
]


@dataclass
class Server:
    """One running server and how to reach it."""

    server: RunningServer
    keys: dict[str, Path]
    repos: dict[str, Path]

    @property
    def port(self) -> int:
        return self.server.ports["ssh"][0]

    def ssh(self, who: str) -> str:
        """hg's ``--ssh`` value for ``who``'s key."""
        return " ".join([*ssh_argv(self.keys[who]), "-p", str(self.port)])

    def url(self, login: str, repo: str) -> str:
        return f"ssh://{login}@127.0.0.1:{self.port}/{repo}"

    def log_after(self, mark: int) -> str:
        """What the server logged since ``mark`` (a length of ``server.log()``)."""
        return self.server.log()[mark:]

    def mark(self) -> int:
        return len(self.server.log())


@dataclass
class Site:
    zstd: Server
    zlib: Server
    tmp: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("sshwire")
    keys = {who: keygen(tmp / who) for who in ("alice", "dave", "erin", "frank")}
    (tmp / "team.keys").write_text(
        f'restrict,command="hg-ssh --read-only team/rich" {public_key(keys["dave"])}\n'
        f'no-pty,environment="X=1" {public_key(keys["erin"])}\n'
        f"no-port-forwarding,no-X11-forwarding,no-agent-forwarding,"
        f'command="/usr/bin/hg-ssh big" {public_key(keys["frank"])}\n',
        encoding="utf-8",
    )
    access = tmp / "access.toml"
    access.write_text(
        f'[users.alice]\nkeys = ["{public_key(keys["alice"])}"]\n'
        '[users.team]\nauthorized_keys = "team.keys"\n'
        '[[rules]]\nrepos = "*"\nread = ["*"]\nwrite = ["alice", "team"]\n',
        encoding="utf-8",
    )
    source = make_rich_repo(tmp / "source")
    servers = {}
    with_servers = []
    for engine in ("zstd", "zlib"):
        repos = {name: tmp / engine / name for name in ("team/rich", "big", "other")}
        for path in repos.values():
            shutil.copytree(source, path)
        hook = f"sh -c 'echo \"$HG_URL\" >> {tmp / engine / 'hg_url'}'"
        with open(repos["team/rich"] / ".hg" / "hgrc", "a", encoding="utf-8") as hgrc:
            hgrc.write(f"[hooks]\nchangegroup.url = {hook}\n")
        args = [a for name, path in repos.items() for a in ("--repo", f"{name}={path}")]
        with_servers.append(
            running_server(
                tmp,
                *args,
                "--ssh",
                "tcp:0:interface=127.0.0.1",
                "--access",
                str(access),
                "--compression",
                f"{engine},{'zlib' if engine == 'zstd' else 'zstd'}",
                "--log-level",
                "info",
                http="none",
            )
        )
    with with_servers[0] as zstd_server, with_servers[1] as zlib_server:
        for engine, running in (("zstd", zstd_server), ("zlib", zlib_server)):
            repos = {name: tmp / engine / name for name in ("team/rich", "big", "other")}
            servers[engine] = Server(server=running, keys=keys, repos=repos)
        yield Site(zstd=servers["zstd"], zlib=servers["zlib"], tmp=tmp)


def _getbundle_line(repo: str, engine: str) -> str:
    return f'"ssh {repo} getbundle" ok {engine} '


# -- compression with real clients -------------------------------------------------------------


@pytest.mark.parametrize("engine", ["zstd", "zlib"])
def test_clone_pull_push_with_engine(site: Site, tmp_path: Path, engine: str) -> None:
    """hg 7.2 clones, pushes and pulls with the server's first engine; every clone equals
    the source and verifies; the push's hook sees HG_URL remote:ssh:ADDR:USER."""
    server: Server = getattr(site, engine)
    rich = server.repos["team/rich"]
    mark = server.mark()
    first, second = tmp_path / "first", tmp_path / "second"
    for dest in (first, second):
        hg("clone", "-q", "--ssh", server.ssh("alice"), server.url("alice", "team/rich"), dest)
    verify(first)
    assert summary(first) == expected_clone(rich)
    logged = server.log_after(mark)
    assert logged.count(_getbundle_line("team/rich", engine)) == 2, logged

    (first / "pushed.txt").write_text(f"pushed with {engine}\n")
    hg("commit", "-A", "-q", "-m", f"pushed with {engine}", cwd=first)
    out = hg("push", "--ssh", server.ssh("alice"), cwd=first)
    assert b"remote: added 1 changesets" in out.stdout + out.stderr
    hg_url = (site.tmp / engine / "hg_url").read_text().split()
    assert hg_url == ["remote:ssh:127.0.0.1:alice"]

    mark = server.mark()
    hg("pull", "-q", "--ssh", server.ssh("alice"), cwd=second)
    assert _getbundle_line("team/rich", engine) in server.log_after(mark)
    verify(second)
    verify(rich)
    assert summary(second) == expected_clone(rich)


def _other_clients() -> list[object]:
    return [
        pytest.param(
            HG_593,
            "zlib",
            id="hg593-pure",
            marks=pytest.mark.skipif(
                HG_593 is None, reason="HGWIRE_HG593 not set (pure Mercurial 5.9.3)"
            ),
        ),
        pytest.param(
            HG_603,
            "zstd",
            id="hg603",
            marks=pytest.mark.skipif(
                not os.path.exists(HG_603), reason="Mercurial 6.0.3 not installed"
            ),
        ),
    ]


@pytest.mark.parametrize(("exe", "engine"), _other_clients())
def test_older_clients_clone(site: Site, tmp_path: Path, exe: str, engine: str) -> None:
    """Pure-Python 5.9.3 has no zstd and gets zlib from the zstd-first server; 6.0.3
    gets zstd. Both clones equal the source and verify."""
    server = site.zstd
    assert os.path.exists(exe), exe
    mark = server.mark()
    dest = tmp_path / "clone"
    hg(
        "clone",
        "-q",
        "--ssh",
        server.ssh("alice"),
        server.url("alice", "team/rich"),
        dest,
        exe=exe,
    )
    verify(dest, exe=exe)
    verify(dest)
    assert summary(dest) == expected_clone(server.repos["team/rich"])
    assert _getbundle_line("team/rich", engine) in server.log_after(mark)


def _raw_session(server: Server, requests: bytes) -> bytes:
    """stdout of an ``hg serve --stdio`` session fed ``requests`` then EOF."""
    argv = [
        *ssh_argv(server.keys["alice"]),
        "-p",
        str(server.port),
        "-T",
        "alice@127.0.0.1",
        "hg -R other serve --stdio",
    ]
    proc = subprocess.run(argv, input=requests, capture_output=True, timeout=60, env=hg_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _request(name: bytes, args: dict[bytes, bytes], star: bool = False) -> bytes:
    out = [name + b"\n"]
    if star:
        out.append(b"* %d\n" % len(args))
    for key, value in sorted(args.items()):
        out.append(b"%s %d\n%s" % (key, len(value), value))
    return b"".join(out)


def _getbundle(heads: bytes) -> bytes:
    args = {
        b"bundlecaps": b"HG20,bundle2=HG20%0Achangegroup%3D01%2C02",
        b"cg": b"1",
        b"common": b"0" * 40,
        b"heads": heads,
    }
    return _request(b"getbundle", args, star=True)


def _bundle_of(stdout: bytes, answers: int) -> bytes:
    """The getbundle answer: what follows the first ``answers`` string answers."""
    for _ in range(answers):
        length, _, stdout = stdout.partition(b"\n")
        stdout = stdout[int(length) :]
    return stdout


def _parts(bundle: bytes) -> list[tuple[bytes, bytes]]:
    from mercurial import bundle2

    from hgwire_tw.repo.ui import make_ui

    reader = bundle2.getunbundler(make_ui(), io.BytesIO(bundle))
    return [(p.type, p.read()) for p in reader.iterparts()]


@pytest.mark.parametrize(
    ("protocaps", "head"),
    [
        (None, b"HG20\x00\x00\x00\x00"),
        (b"comp=bzip2 partial-pull", b"HG20\x00\x00\x00\x00"),
        (b"partial-pull", b"HG20\x00\x00\x00\x00"),
        (b"comp=zstd,zlib,none,bzip2 partial-pull", b"HG20\x00\x00\x00\x0eCompression=ZS"),
        (b"comp=zlib,none partial-pull", b"HG20\x00\x00\x00\x0eCompression=GZ"),
    ],
)
def test_bundle_on_the_wire(site: Site, protocaps: bytes | None, head: bytes) -> None:
    """What the client's protocaps offer decides the bytes on the wire: no protocaps,
    or no engine in common, is the raw bundle as before; the compressed ones hold the
    very same parts."""
    server = site.zstd
    tip = log_nodes(server.repos["other"], "max(not secret())")[0].encode()
    caps = b"" if protocaps is None else _request(b"protocaps", {b"caps": protocaps})
    stdout = _raw_session(server, HANDSHAKE + caps + _getbundle(tip))
    bundle = _bundle_of(stdout, 2 if protocaps is None else 3)
    assert bundle.startswith(head)
    raw = _bundle_of(_raw_session(server, HANDSHAKE + _getbundle(tip)), 2)
    assert _parts(bundle) == _parts(raw)
    assert any(kind == b"changegroup" for kind, _ in _parts(raw))


# -- hg-ssh keys ------------------------------------------------------------------------------


def test_hg_ssh_keys_reach_only_their_repositories(site: Site, tmp_path: Path) -> None:
    """dave's key reaches team/rich only, frank's big only; erin's key was left out with
    one warning naming the file, line and option, and the others work."""
    server = site.zstd
    warnings = [line for line in server.server.log().splitlines() if "key refused" in line]
    assert len(warnings) == 1, warnings
    assert f"{site.tmp / 'team.keys'}:2: key refused: option environment='X=1'" in warnings[0]
    for who, reachable, refused in (("dave", "team/rich", "big"), ("frank", "big", "team/rich")):
        dest = tmp_path / who
        hg("clone", "-q", "-U", "--ssh", server.ssh(who), server.url("hg", reachable), dest)
        assert log_nodes(dest) == log_nodes(server.repos[reachable], "not secret()")
        proc = hg(
            "clone",
            "-U",
            "--ssh",
            server.ssh(who),
            server.url("hg", refused),
            tmp_path / f"{who}-refused",
            check=False,
        )
        assert proc.returncode != 0
        assert b"not found (or access denied)" in proc.stderr
    proc = hg(
        "clone", "--ssh", server.ssh("erin"), server.url("hg", "big"), tmp_path / "e", check=False
    )
    assert proc.returncode != 0 and b"Permission denied" in proc.stderr


def test_hg_ssh_read_only_key_cannot_push(site: Site, tmp_path: Path) -> None:
    """--read-only refuses dave's push (his user may write by the rules) before the
    bundle is sent; the repository is unchanged."""
    server = site.zstd
    rich = server.repos["team/rich"]
    dest = tmp_path / "dave"
    hg("clone", "-q", "--ssh", server.ssh("dave"), server.url("hg", "team/rich"), dest)
    (dest / "nope.txt").write_text("nope\n")
    hg("commit", "-A", "-q", "-m", "should not land", cwd=dest)
    before = log_nodes(rich)
    proc = hg(
        "push", "--ssh", server.ssh("dave"), server.url("hg", "team/rich"), cwd=dest, check=False
    )
    assert proc.returncode != 0
    assert b"permission denied: user 'team' may not push" in proc.stdout + proc.stderr
    assert log_nodes(rich) == before
    verify(rich)


# -- logs -------------------------------------------------------------------------------------


def test_logs_name_each_command_and_connection_at_info(site: Site, tmp_path: Path) -> None:
    """A clone leaves one access line per command and one info line for the connection
    (no error lines for a client that disconnects normally)."""
    server = site.zlib
    mark = server.mark()
    hg(
        "clone",
        "-q",
        "-U",
        "--ssh",
        server.ssh("alice"),
        server.url("alice", "big"),
        tmp_path / "c",
    )
    logged = server.log_after(mark)
    lines = logged.splitlines()
    assert not [line for line in lines if "#error]" in line or "#warn]" in line], logged
    for chatter in ("channel open", "remote close", "sending close", "connection lost", "moduli"):
        assert chatter not in logged  # Conch's narration is debug
    commands = [line.split('"')[1] for line in lines if '"ssh big ' in line]
    assert commands[0] == "ssh big hello" and commands[-1] == "ssh big getbundle", commands
    assert "ssh big protocaps" in commands
    (ended,) = [line for line in lines if "SSH connection of" in line]
    assert "#info]" in ended
    assert "SSH connection of alice from 127.0.0.1 ended (disconnected by user): " in ended
    assert "repository big, " in ended and " bytes sent" in ended
    sent = int(ended.rsplit(" bytes sent", 1)[0].rsplit(" ", 1)[1])
    per_command = sum(int(line.rsplit(" ", 2)[1]) for line in lines if '"ssh big ' in line)
    assert sent == per_command
