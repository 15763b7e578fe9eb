"""The SSH transport end to end: real OpenSSH ``ssh`` and real ``hg`` against the service.

One server per module serves two repositories (a rich one and one holding a large,
incompressible file so responses exceed the channel window) to three keys: alice may
push, bob may only read, carol's key is in no access file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hgwire_tw.core.frames import FRAMING_MEDIA_TYPE
from hgwire_tw.core.preamble import encode_ok, encode_request
from hgwire_tw.core.reactor import (
    ClientFrameReactor,
    ResponseError,
    ResponseFinished,
    ResponseObjects,
    SendFrames,
)
from tests.repobuilders import HG, hg, hg_env, log_nodes, make_rich_repo, repo_summary, verify
from tests.servers import RunningServer, running_server
from tests.sshclient import keygen

SSH = shutil.which("ssh") or "/usr/bin/ssh"

pytestmark = [
    pytest.mark.skipif(not os.path.exists(SSH), reason="OpenSSH client not installed"),
    pytest.mark.timeout(120),
]

ZERO_PAIR = b"-".join([b"0" * 40, b"0" * 40])
HANDSHAKE = b"hello\nbetween\npairs %d\n%s" % (len(ZERO_PAIR), ZERO_PAIR)


@dataclass
class Site:
    """The running server and what the tests need to reach it."""

    server: RunningServer
    keys: dict[str, Path]
    rich: Path
    big: Path
    tmp: Path

    @property
    def port(self) -> int:
        return self.server.ports["ssh"][0]

    def ssh_cmd(self, who: str) -> list[str]:
        """The ssh command line (without destination) using ``who``'s key."""
        return [
            SSH,
            "-i",
            str(self.keys[who]),
            "-F",
            "/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(self.port),
        ]

    def hg_ssh(self, who: str) -> str:
        """The ``--ssh`` value for hg."""
        return " ".join(self.ssh_cmd(who))

    def url(self, who: str, repo: str) -> str:
        return f"ssh://{who}@127.0.0.1:{self.port}/{repo}"

    def run_ssh(
        self, who: str, command: str | None, stdin: bytes = b"", timeout: float = 30
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``ssh who@server command`` and return the completed process."""
        argv = [*self.ssh_cmd(who), "-T", f"{who}@127.0.0.1"]
        if command is not None:
            argv.append(command)
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, env=hg_env())


def _make_big_repo(path: Path) -> Path:
    """A repository whose bundle (~5 MiB, incompressible) exceeds a 2 MiB window."""
    hg("init", path)
    (path / "random.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    (path / "small.txt").write_text("small\n")
    hg("commit", "-A", "-q", "-m", "big", "-d", "1600000000 0", cwd=path)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("ssh")
    keys = {who: keygen(tmp / who) for who in ("alice", "bob", "carol")}
    rich = make_rich_repo(tmp / "rich")
    big = _make_big_repo(tmp / "big")
    access = tmp / "access.toml"
    pub = {who: keys[who].with_suffix(".pub").read_text().strip() for who in keys}
    access.write_text(
        f"""
[users.alice]
keys = ["{pub["alice"]}"]
[users.bob]
keys = ["{pub["bob"]}"]
[[rules]]
repos = "*"
read = ["*", "anonymous"]
write = ["alice"]
""",
        encoding="utf-8",
    )
    with running_server(
        tmp,
        "--repo",
        f"team/rich={rich}",
        "--repo",
        f"big={big}",
        "--ssh",
        "tcp:0:interface=127.0.0.1",
        "--access",
        str(access),
    ) as server:
        yield Site(server=server, keys=keys, rich=rich, big=big, tmp=tmp)


def _clone(site: Site, who: str, repo: str, dest: Path, *extra: str) -> None:
    hg("clone", "-q", "--ssh", site.hg_ssh(who), *extra, site.url(who, repo), dest, timeout=90)


def expected_clone(src: Path) -> dict[str, object]:
    """What a faithful clone of the publishing ``src`` holds: no secret changesets, and
    its drafts arrive public."""
    phases = hg("log", "-r", "not secret()", "-T", "{node} {phase}\n", cwd=src).stdout.decode()
    return {
        "nodes": sorted(log_nodes(src, "not secret()")),
        "phases": sorted(phases.replace(" draft\n", " public\n").splitlines()),
        "bookmarks": hg("bookmarks", "-T", "{bookmark} {node}\n", cwd=src).stdout.decode(),
        "heads": sorted(log_nodes(src, "heads(not secret())")),
    }


def summary(repo: Path) -> dict[str, object]:
    """``repo_summary`` with the phases sorted (comparable with ``expected_clone``)."""
    s = repo_summary(repo)
    s["phases"] = sorted(str(s["phases"]).splitlines())
    return s


def test_clone_equals_source(site: Site, tmp_path: Path) -> None:
    """hg clone over SSH gives the served repository (minus its secret changeset)."""
    dest = tmp_path / "clone"
    _clone(site, "bob", "team/rich", dest)
    verify(dest)
    assert summary(dest) == expected_clone(site.rich)


def test_clone_larger_than_window_and_double_slash_url(site: Site, tmp_path: Path) -> None:
    """A bundle bigger than the 2 MiB window arrives whole; //name maps to the same name."""
    dest = tmp_path / "big"
    hg(
        "clone",
        "-q",
        "--ssh",
        site.hg_ssh("bob"),
        f"ssh://bob@127.0.0.1:{site.port}//big",
        dest,
        timeout=90,
    )
    verify(dest)
    assert (dest / "random.bin").read_bytes() == (site.big / "random.bin").read_bytes()


def test_push_then_pull(site: Site, tmp_path: Path) -> None:
    """alice pushes a changeset; bob's existing clone pulls it; both verify clean."""
    bobs = tmp_path / "bob"
    _clone(site, "bob", "team/rich", bobs)
    alices = tmp_path / "alice"
    _clone(site, "alice", "team/rich", alices)
    (alices / "pushed.txt").write_text("pushed over ssh\n")
    hg("commit", "-A", "-q", "-m", "pushed over ssh", cwd=alices)
    out = hg("push", "--ssh", site.hg_ssh("alice"), site.url("alice", "team/rich"), cwd=alices)
    assert b"remote: added 1 changesets" in out.stdout + out.stderr
    verify(site.rich)
    assert repo_summary(site.rich)["nodes"] != repo_summary(bobs)["nodes"]
    hg("pull", "-q", "--ssh", site.hg_ssh("bob"), cwd=bobs, timeout=90)
    verify(bobs)
    tip = hg("log", "-r", "tip", "-T", "{desc}", cwd=bobs).stdout
    assert tip == b"pushed over ssh"
    assert summary(bobs) == expected_clone(site.rich)
    assert summary(alices) == expected_clone(site.rich)


def test_read_only_push_refused(site: Site, tmp_path: Path) -> None:
    """bob (read-only) cannot push: a clear error, exit status != 0, repository unchanged."""
    dest = tmp_path / "bob"
    _clone(site, "bob", "team/rich", dest)
    (dest / "nope.txt").write_text("nope\n")
    hg("commit", "-A", "-q", "-m", "should not land", cwd=dest)
    before = repo_summary(site.rich)
    proc = hg(
        "push",
        "--ssh",
        site.hg_ssh("bob"),
        site.url("bob", "team/rich"),
        cwd=dest,
        check=False,
    )
    assert proc.returncode != 0
    assert b"permission denied" in proc.stderr + proc.stdout
    assert repo_summary(site.rich) == before
    assert "push to team/rich refused for bob over SSH" in site.server.log()


def test_unknown_key_refused(site: Site) -> None:
    """A key in no access file gets no session."""
    proc = site.run_ssh("carol", "hg -R team/rich serve --stdio", stdin=HANDSHAKE)
    assert proc.returncode == 255
    assert b"Permission denied" in proc.stderr
    assert proc.stdout == b""


def test_login_name_must_own_key(site: Site) -> None:
    """Logging in as alice with bob's key fails; a generic login name uses the key's owner."""
    argv = [*site.ssh_cmd("bob"), "-T", "alice@127.0.0.1", "hg -R team/rich serve --stdio"]
    proc = subprocess.run(argv, input=b"", capture_output=True, timeout=30, env=hg_env())
    assert proc.returncode == 255
    argv = [*site.ssh_cmd("bob"), "-T", "hg@127.0.0.1", "hg -R team/rich serve --stdio"]
    proc = subprocess.run(argv, input=HANDSHAKE, capture_output=True, timeout=30, env=hg_env())
    assert proc.returncode == 0, proc.stderr
    assert b"capabilities:" in proc.stdout


@pytest.mark.parametrize(
    "command",
    [
        "hg -R ../x serve --stdio",
        "hg -R /etc serve --stdio",
        "hg -R team/../big serve --stdio",
        "hg -R nosuchrepo serve --stdio",
        "sh",
        "sh -c 'hg -R big serve --stdio'",
        "hg -R big serve --stdio --hidden",
        "hg -R big serve --stdio extra",
        "hg --config hooks.x=touch -R big serve --stdio",
        "hg -R big log",
        "python3 -R big serve --stdio",
        "'hg -R big serve --stdio",
    ],
)
def test_exec_refusals(site: Site, command: str) -> None:
    """Anything but 'hg -R <served repo> serve --stdio' is refused on stderr, exit != 0."""
    proc = site.run_ssh("alice", command, stdin=HANDSHAKE)
    assert proc.returncode not in (0, 255), proc
    assert proc.stderr.startswith(b"hgwire: "), proc.stderr
    assert proc.stdout == b""


def test_shell_refused(site: Site) -> None:
    """No command at all (a shell request) is refused with a message."""
    proc = site.run_ssh("alice", None)
    assert proc.returncode == 1
    assert b"no shell" in proc.stderr


def test_raw_session_handshake_and_shutdown(site: Site) -> None:
    """The handshake answers, upgrade gets 0, an empty line ends with exit status 0."""
    stdin = b"upgrade 1234 proto=exp-ssh-v2-0003\n" + HANDSHAKE + b"\n"
    proc = site.run_ssh("bob", "/usr/local/bin/hg -R 'team/rich' serve --stdio", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"0\n")
    rest = proc.stdout[2:]
    length, _, body = rest.partition(b"\n")
    caps = body[: int(length)]
    assert caps.startswith(b"capabilities: ") and caps.endswith(b"\n")
    assert b" batch" in caps and b"protocaps" in caps
    assert body[int(length) :] == b"1\n\n"


def test_eof_lets_inflight_work_finish(site: Site) -> None:
    """Client EOF right after its requests: the answers still arrive, then exit status 0."""
    stdin = HANDSHAKE + b"heads\n"
    proc = site.run_ssh("bob", "hg -R big serve --stdio", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith(
        b"41\n" + hg("log", "-r", "tip", "-T", "{node}\n", cwd=site.big).stdout
    )


def _getbundle_request(heads: bytes) -> bytes:
    args = {
        # what a real client sends, trimmed to the changegroup capability
        b"bundlecaps": b"HG20,bundle2=HG20%0Achangegroup%3D01%2C02",
        b"cg": b"1",
        b"common": b"0" * 40,
        b"heads": heads,
    }
    out = [b"getbundle\n", b"* %d\n" % len(args)]
    for key, value in sorted(args.items()):
        out.append(b"%s %d\n%s" % (key, len(value), value))
    return b"".join(out)


def test_client_disconnect_mid_clone_leaves_server_serving(site: Site, tmp_path: Path) -> None:
    """Clients vanishing mid-stream (more of them than worker threads) free their workers."""
    head = hg("log", "-r", "tip", "-T", "{node}", cwd=site.big).stdout
    request = HANDSHAKE + _getbundle_request(head)
    for _ in range(6):
        argv = [*site.ssh_cmd("bob"), "-T", "bob@127.0.0.1", "hg -R big serve --stdio"]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=hg_env(),
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(request)
            proc.stdin.flush()
            # Read into the stream response, then vanish without reading the rest.
            got = 0
            deadline = time.monotonic() + 30
            while got < 300_000 and time.monotonic() < deadline:
                chunk = proc.stdout.read1(65536)
                if not chunk:
                    break
                got += len(chunk)
            assert got >= 300_000
        finally:
            proc.kill()
            proc.communicate(timeout=30)
    dest = tmp_path / "after"
    _clone(site, "bob", "big", dest)
    verify(dest)
    assert site.server.proc.poll() is None


def test_hg_clone_of_root_name_refused_without_root(site: Site, tmp_path: Path) -> None:
    """ssh://host (path '.') names the root repository, which this server does not have."""
    proc = hg(
        "clone",
        "--ssh",
        site.hg_ssh("bob"),
        f"ssh://bob@127.0.0.1:{site.port}",
        tmp_path / "x",
        check=False,
    )
    assert proc.returncode != 0
    assert b"not found" in proc.stderr


def test_hg_client_binary_exists() -> None:
    """The client these tests run is the test virtualenv's hg."""
    assert Path(HG).exists()


# -- the hgwire subsystem (v2 frames) ---------------------------------------------------------

V2_COMMANDS: list[tuple[bytes, dict[bytes, object]]] = [
    (b"heads", {}),
    (b"known", {b"nodes": []}),
    (b"listkeys", {b"namespace": b"bookmarks"}),
    (b"branchmap", {}),
    (b"lookup", {b"key": b"main"}),
    (b"listkeys", {b"namespace": b"phases"}),
    (b"heads", {b"publiconly": True}),
]


def _call_all(
    client: Any, commands: list[tuple[bytes, dict[bytes, object]]]
) -> tuple[bytes, list[int]]:
    data, ids = [], []
    for name, args in commands:
        rid, actions = client.call_command(name, args)
        ids.append(rid)
        data += [a.data for a in actions if isinstance(a, SendFrames)]
    return b"".join(data), ids


def _answers(client: Any, data: bytes, ids: list[int]) -> dict[int, object]:
    """Objects (or the error) of each request, from the server's whole output."""
    out: dict[int, object] = {i: [] for i in ids}
    finished = set()
    for event in [*client.receive_data(data), *client.end_of_input()]:
        if isinstance(event, ResponseObjects):
            out[event.request_id].extend(event.objects)  # type: ignore[attr-defined]
        elif isinstance(event, ResponseFinished):
            finished.add(event.request_id)
        elif isinstance(event, ResponseError):
            out[event.request_id] = ("error", event.message, event.args)
            finished.add(event.request_id)
    assert finished == set(ids), (finished, ids)
    return out


def _subsystem(site: Site, who: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    argv = [*site.ssh_cmd(who), "-T", "-s", f"{who}@127.0.0.1", "hgwire"]
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60, env=hg_env())


def _http_v2(site: Site, repo: str, body: bytes) -> bytes:
    req = urllib.request.Request(
        f"{site.server.http_url}/{repo}/api/exp-http-v2-0003/ro/multirequest",
        data=body,
        method="POST",
        headers={
            "Accept": FRAMING_MEDIA_TYPE.decode(),
            "Content-Type": FRAMING_MEDIA_TYPE.decode(),
        },
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return bytes(resp.read())


@pytest.mark.parametrize("encoding", [b"zstd-8mb", b"identity"])
def test_subsystem_answers_like_http_v2(site: Site, encoding: bytes) -> None:
    """Several commands in flight over 'ssh -s hgwire' give exactly the HTTP v2 answers."""
    ssh_client = ClientFrameReactor(encodings=(encoding,))
    frames, ids = _call_all(ssh_client, V2_COMMANDS)
    proc = _subsystem(site, "bob", encode_request("team/rich") + frames)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(encode_ok())
    over_ssh = _answers(ssh_client, proc.stdout[len(encode_ok()) :], ids)

    http_client = ClientFrameReactor(encodings=(encoding,))
    body, http_ids = _call_all(http_client, V2_COMMANDS)
    over_http = _answers(http_client, _http_v2(site, "team/rich", body), http_ids)
    assert [over_ssh[i] for i in ids] == [over_http[i] for i in http_ids]
    heads = {bytes.fromhex(n) for n in log_nodes(site.rich, "heads(not secret())")}
    assert set(over_ssh[ids[0]][0]) == heads  # type: ignore[index]


def test_subsystem_refusals(site: Site) -> None:
    """Unknown repositories and bad preambles get 'error ...' and exit 1; a read-only user's
    pushkey is an error response and changes nothing."""
    proc = _subsystem(site, "bob", encode_request("../etc"))
    assert proc.returncode == 1 and proc.stdout.startswith(b"error ")
    proc = _subsystem(site, "bob", b"GET / HTTP/1.0\n")
    assert proc.returncode == 1 and proc.stdout.startswith(b"error ")
    before = repo_summary(site.rich)
    client = ClientFrameReactor(encodings=(b"identity",))
    frames, ids = _call_all(
        client,
        [
            (
                b"pushkey",
                {b"namespace": b"bookmarks", b"key": b"evil", b"old": b"", b"new": b"0" * 40},
            )
        ],
    )
    proc = _subsystem(site, "bob", encode_request("team/rich") + frames)
    answers = _answers(client, proc.stdout[len(encode_ok()) :], ids)
    assert answers[ids[0]][0] == "error"  # type: ignore[index]
    assert repo_summary(site.rich) == before
