"""docs/deploy.md: the systemd units verify, name the sockets the service listens on,
and their ExecStart is a valid `hgwire serve` command line keeping the metrics on this
machine; the nginx block has what hg needs, passes `nginx -t` and, run in front of a real
server, serves clones and refuses /metrics."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hgwire_tw.tap import Options

DOC = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
HGWIRE = str(Path(sys.executable).with_name("hgwire"))


def blocks(kind: str) -> dict[str, str]:
    """``<!-- KIND: NAME -->`` followed by a fenced block, by NAME."""
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(rf"<!-- {kind}: (\S+) -->\n```\w*\n(.*?)```", text, re.S)
    return dict(found)


def parse_unit(text: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text.replace("\\\n", " "))
    return unit


def test_units_verify_and_agree(tmp_path: Path) -> None:
    units = blocks("unit")
    assert set(units) == {"hgwire.service", "hgwire-http.socket", "hgwire-ssh.socket"}
    service = parse_unit(units["hgwire.service"])
    argv = shlex.split(service["Service"]["ExecStart"])
    assert argv[:2] == ["/opt/hgwire/.venv/bin/hgwire", "serve"]
    names = set(re.findall(r"systemd:domain=INET:name=(\w+)", " ".join(argv)))
    sockets = {
        parse_unit(units[f"hgwire-{n}.socket"])["Socket"]["FileDescriptorName"] for n in names
    }
    assert names == sockets == {"http", "ssh"}
    for name in sockets:
        assert parse_unit(units[f"hgwire-{name}.socket"])["Socket"]["Service"] == "hgwire.service"
    assert service["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # The command line parses (with a config file and repository that exist here).
    (tmp_path / "r" / ".hg").mkdir(parents=True)
    (tmp_path / "hgwire.toml").write_text(f'repos_dir = "{tmp_path}"\n', encoding="utf-8")
    options = Options()
    options.parseOptions(
        [a.replace("/etc/hgwire/hgwire.toml", str(tmp_path / "hgwire.toml")) for a in argv[2:]]
    )
    grace = options["shutdown-grace"]
    assert int(service["Service"]["TimeoutStopSec"]) > grace
    # The metrics name private repositories: a loopback listener of their own, never
    # /metrics on the HTTP listener a proxy forwards to.
    assert options["metrics"].startswith("tcp:") and "interface=127.0.0.1" in options["metrics"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # parsed above; .ci/run installs systemd-analyze for the full check
    for name, text in units.items():
        (tmp_path / name).write_text(text.replace("/opt/hgwire/.venv/bin/hgwire", HGWIRE))
    proc = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / n) for n in units)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hgwire" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_nginx_block_has_what_hg_needs() -> None:
    (conf,) = blocks("nginx").values()
    for directive in (
        "client_max_body_size 0;",
        "large_client_header_buffers",
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        "proxy_read_timeout",
        "gzip off;",
        "proxy_pass http://hgwire;",
    ):
        assert directive in conf, directive
    # Every client of the proxy looks local to hgwire_tw: /metrics is never passed on.
    assert re.search(r"location = /metrics \{\s*deny all;\s*\}", conf), conf


NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replace_once(text: str, old: str, new: str) -> str:
    """``text`` with its one ``old`` replaced (the test breaks if the doc changes shape)."""
    assert text.count(old) == 1, (old, text)
    return text.replace(old, new)


def nginx_config(tmp_path: Path, upstream: int, port: int) -> Path:
    """The documented block, unchanged but for its ports and certificate, inside the
    smallest nginx.conf around it that runs unprivileged from ``tmp_path``."""
    from tests.test_daemon import _self_signed

    (conf,) = blocks("nginx").values()
    key, cert, _ = _self_signed(tmp_path, "127.0.0.1")
    conf = _replace_once(conf, "server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};")
    conf = _replace_once(conf, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    conf = re.sub(r"ssl_certificate\s+(\S+);", f"ssl_certificate {cert};", conf, count=1)
    conf = re.sub(r"ssl_certificate_key\s+(\S+);", f"ssl_certificate_key {key};", conf, count=1)
    assert str(cert) in conf and str(key) in conf, conf
    temp = "".join(
        f"    {kind}_temp_path {tmp_path / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    path = tmp_path / "nginx.conf"
    path.write_text(
        f"daemon off;\nmaster_process off;\npid {tmp_path / 'nginx.pid'};\n"
        f"error_log {tmp_path / 'error.log'};\nevents {{ worker_connections 64; }}\n"
        f"http {{\n    access_log {tmp_path / 'access.log'};\n{temp}{conf}}}\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs it)")
def test_nginx_block_in_front_of_a_real_server(tmp_path: Path) -> None:
    """`nginx -t` accepts the documented block; run in front of hgwire_tw (default
    --metrics http, where /metrics answers local clients), it passes clones and pages
    through and refuses /metrics, which the server itself gives a local client."""
    from tests.repobuilders import hg, make_linear_repo
    from tests.servers import running_server

    assert NGINX is not None
    repo = make_linear_repo(tmp_path / "r", commits=2)
    with running_server(tmp_path, "--repo", f"r={repo}") as server:
        port = _free_port()
        config = nginx_config(tmp_path, server.http_port, port)
        base = [NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(config)]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        nginx = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_for_port(port, nginx)
            proxied = f"https://127.0.0.1:{port}"
            assert _status(server.http_url + "/metrics") == 200  # local, unproxied
            assert _status(proxied + "/metrics") == 403
            assert _status(proxied + "/r/shortlog") == 200
            hg("clone", "-q", "--insecure", f"{proxied}/r", tmp_path / "c")
            assert (tmp_path / "c" / "a.txt").read_bytes() == (repo / "a.txt").read_bytes()
        finally:
            nginx.terminate()
            nginx.wait(30)
    assert "[emerg]" not in (tmp_path / "error.log").read_text(), "nginx failed"


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import time

    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return
        except OSError:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.05)


def _status(url: str) -> int:
    import ssl
    import urllib.error
    import urllib.request

    context = ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(url, timeout=30, context=context) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
