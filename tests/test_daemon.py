"""`hgwire serve` as a supervisor sees it: one-line errors, fail-fast listeners, start-up
lines, graceful SIGTERM during a clone, SIGHUP reloads, systemd socket activation."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import gatehook
from tests.repobuilders import HG, hg, hg_env, init_repo, make_linear_repo
from tests.servers import RunningServer, running_server


def serve(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `hgwire serve ARGS` to completion (it is expected to refuse to start)."""
    return subprocess.run(
        [sys.executable, "-m", "hgwire_tw", "serve", "--state-dir", str(tmp_path / "st"), *args],
        capture_output=True,
        text=True,
        env=hg_env(),
        cwd=tmp_path,
        timeout=timeout,
    )


def wait_for_log(server: RunningServer, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while text not in server.log():
        assert server.proc.poll() is None, server.log()
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{server.log()}"
        time.sleep(0.05)
    return server.log()


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_listener_that_cannot_bind_stops_the_service(tmp_path: Path) -> None:
    """A port in use: exit status 1 at once, one line naming the endpoint and the OS
    error, nothing else printed."""
    init_repo(tmp_path / "r")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        started = time.monotonic()
        proc = serve(tmp_path, "--repo", "r", "--http", endpoint, "--ssh", "none", "--tcp", "none")
        took = time.monotonic() - started
    assert proc.returncode == 1, proc
    assert proc.stdout == "", proc.stdout
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"hgwire serve: cannot listen on {endpoint} (http): ")
    assert "Address already in use" in line
    assert took < 5, f"exited {took:.2f}s after start"  # the issue: "exit within 5 s"


def _encrypted_key(tmp_path: Path) -> str:
    path = tmp_path / "enc_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(path)], check=True
    )
    return str(path)


CONFIG_ERRORS = [
    ("toml-type", {"c.toml": 'workers = "four"\n'}, ["--config", "c.toml"],
     "c.toml:1: workers (--workers): expected an integer, got 'four'"),
    ("toml-unknown", {"c.toml": "\nhtp = 'x'\n"}, ["--config", "c.toml"],
     "c.toml:2: unknown setting(s): htp"),
    ("toml-syntax", {"c.toml": "workers = \n"}, ["--config", "c.toml"], "c.toml: "),
    ("option-type", {}, ["--tcp-streams", "many"], "--tcp-streams: expected an integer"),
    ("unknown-option", {}, ["--wrokers", "2"], "option --wrokers not recognized"),
    ("access-missing", {}, ["--access", "nope.toml"], "--access: nope.toml: "),
    ("access-bad", {"a.toml": "[users.bob]\nkeys = 3\n"}, ["--access", "a.toml"],
     "--access: a.toml:2: [users.bob] keys must be a string or a list of strings"),
    ("access-user", {"a.toml": '[[rules]]\nrepos = "*"\nread = ["bob"]\n'},
     ["--access", "a.toml"], "--access: a.toml:1: rules[0] names unknown user 'bob'"),
    ("endpoint-type", {}, ["--http", "quic:8000"], "--http quic:8000: Unknown endpoint type"),
    ("tls-missing", {}, ["--http", "ssl:0:privateKey=k.pem:certKey=c.pem"],
     "--http ssl:0:privateKey=k.pem:certKey=c.pem: No such file or directory"),
    ("metrics-tls-missing", {}, ["--metrics", "ssl:0:privateKey=k.pem:certKey=c.pem"],
     "--metrics ssl:0:privateKey=k.pem:certKey=c.pem: No such file or directory"),
    ("metrics-endpoint-type", {}, ["--metrics", "quic:9"],
     "--metrics quic:9: Unknown endpoint type"),
    ("systemd-no-socket", {}, ["--http", "systemd:domain=INET:name=http"],
     "--http systemd:domain=INET:name=http: systemd passed no socket named 'http' (none at "
     "all: is the service started by its .socket unit?)"),
    ("host-key", {}, ["--ssh", "tcp:0:interface=127.0.0.1", "--ssh-host-key", "ENC"],
     "Passphrase must be provided"),
    ("not-a-repo", {}, ["--repo", "x=."], "--repo x=.: not a Mercurial repository"),
]  # fmt: skip


@pytest.mark.parametrize(
    "files, argv, message", [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS]
)
def test_configuration_errors_are_one_line_and_exit_2(
    tmp_path: Path, files: dict[str, str], argv: list[str], message: str
) -> None:
    """Every configuration mistake: one line naming the option, file or line; exit 2;
    no traceback and no help text."""
    init_repo(tmp_path / "r")
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    argv = [_encrypted_key(tmp_path) if a == "ENC" else a for a in argv]
    args = ["--repo", "r=r", "--http", "tcp:0:interface=127.0.0.1", "--ssh", "none"]
    proc = serve(tmp_path, *args, "--tcp", "none", *argv)
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("hgwire serve: ") and message in line, line


def test_help_and_version(tmp_path: Path) -> None:
    """`hgwire serve -h` prints the generated reference; both --version forms print
    hgwire_tw's version."""
    from hgwire_tw import __version__

    run = [sys.executable, "-m", "hgwire_tw"]
    for argv in (["--version"], ["serve", "--version"]):
        out = subprocess.run([*run, *argv], capture_output=True, text=True, check=True).stdout
        assert out == f"hgwire_tw {__version__}\n"
    out = subprocess.run([*run, "serve", "-h"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("Usage: hgwire serve") and "--shutdown-grace" in out.stdout


def test_start_up_lines_warnings_and_skipped_repositories(tmp_path: Path) -> None:
    """One line per listener and repository; a warning for SSH without --access; each
    repository --repos-dir skips is logged once with why, also across a SIGHUP."""
    root = tmp_path / "repos"
    for name in ("a", "a/inner", "b", "x/y/z"):
        init_repo(root / name)
    with running_server(
        tmp_path, "--repos-dir", str(root), "--repos-depth", "2",
        "--ssh", "tcp:0:interface=127.0.0.1",
    ) as server:  # fmt: skip
        wait_for_log(server, "not serving x/y/z")
        log = server.log()
        assert f"serving a from {root / 'a'}" in log and f"serving b from {root / 'b'}" in log
        assert "--repos-dir: not serving a/inner: inside the working copy of 'a'" in log
        assert "--repos-dir: not serving x/y/z: 3 levels deep, more than 2" in log
        assert "SSH is listening but there is no --access file" in log
        assert log.count(" listening on 127.0.0.1:") == 2
        server.proc.send_signal(signal.SIGHUP)
        wait_for_log(server, "serving 2 repositories: a, b")
        assert server.log().count("not serving x/y/z") == 1
        # A repository added to the directory is served after the next SIGHUP.
        make_linear_repo(root / "c", commits=2)
        server.proc.send_signal(signal.SIGHUP)
        wait_for_log(server, "serving 3 repositories: a, b, c")
        hg("clone", "-q", "-U", server.url("c"), tmp_path / "c-clone")
        assert _tip(tmp_path / "c-clone") == _tip(root / "c")
        assert server.log().count("not serving x/y/z") == 1
    assert server.proc.returncode == 0


def _tip(repo: Path) -> bytes:
    return hg("log", "-r", "tip", "-T", "{node}", cwd=repo).stdout


def test_warnings_when_nothing_can_be_served(tmp_path: Path) -> None:
    """Every listener 'none' and an empty --repos-dir: the server says so (a --metrics
    listener of its own serves no repository and does not count)."""
    (tmp_path / "empty").mkdir()
    with running_server(
        tmp_path, "--repos-dir", str(tmp_path / "empty"), "--metrics", "tcp:0:interface=127.0.0.1",
        http="none",
    ) as server:  # fmt: skip
        log = wait_for_log(server, "no repository is served")
        assert "every listener is 'none'" in log
        assert server.ports["metrics"]  # it did listen


def _big_repo(path: Path) -> Path:
    """A repository whose clone is a few megabytes (random, so compression cannot
    shrink it)."""
    make_linear_repo(path, commits=3)
    (path / "blob.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    hg("add", "blob.bin", cwd=path)
    hg("commit", "-m", "blob", "-d", "1600000100 0", cwd=path)
    return path


def _clone(url: str, dest: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [HG, "clone", "-q", "-U", url, str(dest)],
        env=hg_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_sigterm_lets_a_clone_in_flight_finish_then_exits_0(tmp_path: Path) -> None:
    """SIGTERM while a getbundle response is being sent (held by a server-side hook
    after the changegroup): the listener closes at once, the response completes, the
    clone is whole, the exit status is 0."""
    repo = _big_repo(tmp_path / "src")
    gate = gatehook.install(repo, tmp_path / "gate")
    with running_server(tmp_path, "--repo", f"src={repo}", "--shutdown-grace", "60") as server:
        clone = _clone(server.url("src"), tmp_path / "dst")
        gatehook.wait_started(gate)
        server.proc.send_signal(signal.SIGTERM)
        log = wait_for_log(server, "open connection(s) have up to 60s to finish")
        assert "stopping: no new connections; 0 open" not in log
        with pytest.raises(ConnectionRefusedError):  # no longer accepting
            socket.create_connection(("127.0.0.1", server.http_port), timeout=10).close()
        assert server.proc.poll() is None  # still finishing the response
        gatehook.release(gate)
        out = clone.communicate(timeout=120)[0]
        assert clone.returncode == 0, out
        assert server.proc.wait(60) == 0, server.log()
    log = server.log()
    assert "] stopped" in log and "cut" not in log and "Traceback" not in log, log
    hg("verify", "-q", cwd=tmp_path / "dst")
    expected = hg("log", "-r", "tip", "-T", "{node}", cwd=repo).stdout
    assert hg("log", "-r", "tip", "-T", "{node}", cwd=tmp_path / "dst").stdout == expected


def test_shutdown_grace_cuts_what_does_not_finish(tmp_path: Path) -> None:
    """A response that outlasts --shutdown-grace is cut, and the exit is still clean."""
    repo = _big_repo(tmp_path / "src")
    gate = gatehook.install(repo, tmp_path / "gate")
    with running_server(tmp_path, "--repo", f"src={repo}", "--shutdown-grace", "1") as server:
        clone = _clone(server.url("src"), tmp_path / "dst")
        gatehook.wait_started(gate)
        server.proc.send_signal(signal.SIGTERM)
        log = wait_for_log(server, "still open after 1s: cut")
        gatehook.release(gate)  # lets the worker thread end, so the pool can stop
        assert server.proc.wait(60) == 0, log
        assert clone.wait(60) != 0
    assert not (repo / ".hg" / "store" / "lock").exists()


ACCESS_OPEN = '[[rules]]\nrepos = "*"\nread = ["anonymous"]\n'
ACCESS_B_CLOSED = '[[rules]]\nrepos = "b"\nread = []\n' + ACCESS_OPEN


def index_links(server: RunningServer) -> set[str]:
    """The repositories the web index at / lists for an anonymous visitor."""
    import re

    with urllib.request.urlopen(server.http_url + "/", timeout=30) as r:
        page = r.read().decode("utf-8")
    return set(re.findall(r'<a href="/([^"?]+)/">', page))


def test_sighup_reloads_the_access_file_without_dropping_a_clone(tmp_path: Path) -> None:
    """SIGHUP after an access-file edit: the next request follows the new rule (wire
    protocol, web pages and the index's list) while a clone in flight completes; a
    broken file is refused and the old rules stay."""
    repo_a = _big_repo(tmp_path / "a")
    init_repo(tmp_path / "b")
    gate = gatehook.install(repo_a, tmp_path / "gate")
    access = tmp_path / "access.toml"
    access.write_text(ACCESS_OPEN, encoding="utf-8")
    args = ["--repo", f"a={repo_a}", "--repo", f"b={tmp_path / 'b'}", "--access", str(access)]
    with running_server(tmp_path, *args) as server:
        b_heads = server.url("b") + "?cmd=heads"
        assert status(b_heads) == 200
        assert status(server.url("b") + "/shortlog") == 200
        assert index_links(server) == {"a", "b"}
        clone = _clone(server.url("a"), tmp_path / "dst")
        gatehook.wait_started(gate)
        access.write_text(ACCESS_B_CLOSED, encoding="utf-8")
        server.proc.send_signal(signal.SIGHUP)
        wait_for_log(server, "0 user(s), 2 rule(s)")
        assert status(b_heads) in (401, 403, 404)
        assert status(server.url("b") + "/shortlog") in (401, 403, 404)
        assert index_links(server) == {"a"}
        gatehook.release(gate)
        out = clone.communicate(timeout=120)[0]
        assert clone.returncode == 0, out
        access.write_text("[[rules]\nbroken", encoding="utf-8")
        server.proc.send_signal(signal.SIGHUP)
        log = wait_for_log(server, "reload failed, keeping the previous configuration: ")
        assert str(access) in log.split("reload failed")[-1].splitlines()[0]
        assert status(b_heads) in (401, 403, 404)
        assert index_links(server) == {"a"}
        assert status(server.url("a") + "?cmd=heads") == 200
    hg("verify", "-q", cwd=tmp_path / "dst")


def _self_signed(directory: Path, name: str) -> tuple[Path, Path, bytes]:
    """A key and self-signed certificate for 127.0.0.1; returns paths and the DER."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path, cert.public_bytes(serialization.Encoding.DER)


def _peer_cert(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_sighup_reloads_tls_certificates_keeping_open_connections(tmp_path: Path) -> None:
    """New TLS connections get the new certificate after SIGHUP; an open keep-alive
    connection keeps working."""
    import http.client

    init_repo(tmp_path / "r")
    key, cert, first = _self_signed(tmp_path, "first")
    endpoint = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    with running_server(tmp_path, "--repo", f"r={tmp_path / 'r'}", http=endpoint) as server:
        port = server.http_port
        assert _peer_cert(port) == first
        context = ssl._create_unverified_context()
        kept = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        kept.request("GET", "/r?cmd=heads")
        assert kept.getresponse().read().strip() == b"0" * 40
        _, _, second = _self_signed(tmp_path, "second")
        server.proc.send_signal(signal.SIGHUP)
        wait_for_log(server, "TLS certificate reloaded for ssl:0")
        assert _peer_cert(port) == second
        kept.request("GET", "/r?cmd=heads")
        assert kept.getresponse().read().strip() == b"0" * 40
        kept.close()
        (tmp_path / "cert.pem").write_text("not a certificate", encoding="utf-8")
        server.proc.send_signal(signal.SIGHUP)
        wait_for_log(server, "reload failed, keeping the previous configuration: ssl:0")
        assert _peer_cert(port) == second


def systemd_launcher(fd: int, name: str) -> list[str]:
    """A command prefix that runs the rest of its arguments with Python the way systemd
    starts a socket-activated service: socket ``fd`` as fd 3, LISTEN_* naming it
    ``name`` for this very process (exec keeps the pid)."""
    launcher = (
        "import os, sys\n"
        "fd = int(sys.argv[1])\n"
        "if fd != 3:\n"
        "    os.dup2(fd, 3)\n"
        "    os.close(fd)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', "
        "LISTEN_FDNAMES=sys.argv[2])\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[3:]])\n"
    )
    return [sys.executable, "-c", launcher, str(fd), name]


def test_systemd_socket_named_otherwise_is_a_configuration_error(tmp_path: Path) -> None:
    """A systemd: endpoint naming a socket systemd did not pass: exit 2, one line naming
    the option and the sockets that were passed."""
    init_repo(tmp_path / "r")
    endpoint = "systemd:domain=INET:name=http"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        argv = ["-m", "hgwire_tw", "serve", "--repo", f"r={tmp_path / 'r'}", "--http", endpoint]
        proc = subprocess.run(
            [*systemd_launcher(sock.fileno(), "web"), *argv, "--state-dir", str(tmp_path / "s"),
             "--ssh", "none", "--tcp", "none"],
            pass_fds=(sock.fileno(),), env=hg_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 2, proc
    assert proc.stderr == (
        f"hgwire serve: --http {endpoint}: systemd passed no socket named 'http' (it passed "
        "'web')\n"
    )


def test_systemd_socket_activation(tmp_path: Path) -> None:
    """--http systemd:domain=INET:name=http serves on a socket inherited the way systemd
    passes it (fd 3, LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES), as docs/deploy.md sets up."""
    init_repo(tmp_path / "r")
    state = tmp_path / "st"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port, fd = sock.getsockname()[1], sock.fileno()
        argv = ["-m", "hgwire_tw", "serve", "--repo", f"r={tmp_path / 'r'}"]
        argv += ["--state-dir", str(state), "--http", "systemd:domain=INET:name=http"]
        proc = subprocess.Popen(
            [*systemd_launcher(fd, "http"), *argv, "--ssh", "none", "--tcp", "none"],
            pass_fds=(fd,),
            env=hg_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not (state / "listening.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(proc.communicate()[0].decode())
            time.sleep(0.05)
        assert json.loads((state / "listening.json").read_text())["http"] == [port]
        assert status(f"http://127.0.0.1:{port}/r?cmd=heads") == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
