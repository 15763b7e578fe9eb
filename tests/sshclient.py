"""Helpers for tests that reach the service over SSH: user keys, access files, known
hosts, and the ``hgwire`` command line run with an empty ``HOME`` and no ssh-agent (so
nothing from the machine's own ``~/.ssh`` is used)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.repobuilders import hg_env
from tests.servers import RunningServer

SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
#: ``--ssh`` argument of ``running_server`` for an OS-chosen SSH port.
SSH_LISTEN = ("--ssh", "tcp:0:interface=127.0.0.1")


SSH = shutil.which("ssh") or "/usr/bin/ssh"


def ssh_argv(key: Path) -> list[str]:
    """An OpenSSH command line using only ``key``, no user configuration or agent, and
    trusting any host key (tests and benchmarks talk to a server they just started)."""
    options = (
        "IdentitiesOnly=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "LogLevel=ERROR",
    )
    return [SSH, "-i", str(key), "-F", "/dev/null", *(a for o in options for a in ("-o", o))]


def keygen(path: Path, kind: str = "ed25519", bits: int = 2048) -> Path:
    """A new passphrase-less OpenSSH key pair at ``path`` (and ``path.pub``); ``bits``
    is the size of an RSA key."""
    extra = ["-b", str(bits)] if kind == "rsa" else []
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", kind, *extra, "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        timeout=60,
    )
    return path


def public_key(key: Path) -> str:
    """The OpenSSH public key line of the key pair at ``key``."""
    return key.with_suffix(".pub").read_text(encoding="utf-8").strip()


def write_key_access(path: Path, keys: Mapping[str, list[Path]], read: str) -> Path:
    """An access file giving each user their keys, and ``read`` (a TOML list body, e.g.
    ``'"*", "anonymous"'``) read access to every repository."""
    lines = []
    for user, user_keys in keys.items():
        quoted = ", ".join(f'"{public_key(k)}"' for k in user_keys)
        lines += [f"[users.{user}]", f"keys = [{quoted}]"]
    lines += ["[[rules]]", 'repos = "*"', f"read = [{read}]"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def host_key_line(server: RunningServer, port: int) -> str:
    """The known_hosts line naming the server's generated ed25519 host key."""
    pub = (server.state_dir / "ssh_host_ed25519_key.pub").read_text().split()
    return f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n"


def write_known_hosts(server: RunningServer, path: Path) -> Path:
    """A known_hosts file naming the server's first SSH listener."""
    path.write_text(host_key_line(server, server.ports["ssh"][0]), encoding="utf-8")
    return path


def run_hgwire(
    home: Path, *args: str | Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ``hgwire`` command line with ``HOME`` at ``home`` and no ssh-agent."""
    home.mkdir(exist_ok=True)
    run_env = {k: v for k, v in hg_env().items() if k != "SSH_AUTH_SOCK"}
    run_env["HOME"] = str(home)
    run_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hgwire_tw", *map(str, args)],
        capture_output=True,
        text=True,
        env=run_env,
        timeout=timeout,
    )
