"""docs/deploy.md: the systemd units verify, name the sockets the service listens on,
and their ExecStart is a valid `hgwire serve` command line; the nginx block has what hg
needs."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_nginx_block_has_what_hg_needs(tmp_path: Path) -> None:
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
    nginx = shutil.which("nginx")
    if nginx is not None:  # a syntax check where nginx is installed
        wrapped = "events {}\nhttp {\n" + conf.replace("listen 443 ssl;", "listen 8443;")
        wrapped = re.sub(r"\s*ssl_certificate\S* [^;]+;", "", wrapped) + "}\n"
        (tmp_path / "nginx.conf").write_text(wrapped)
        proc = subprocess.run(
            [nginx, "-t", "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
