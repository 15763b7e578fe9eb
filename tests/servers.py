"""Start the real hgwire_tw service as a subprocess on 127.0.0.1 for integration tests."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.repobuilders import hg_env


@dataclass
class RunningServer:
    """A service started by ``running_server``."""

    proc: subprocess.Popen[bytes]
    state_dir: Path
    log_path: Path
    ports: dict[str, list[int]] = field(default_factory=dict)

    @property
    def http_port(self) -> int:
        return self.ports["http"][0]

    @property
    def http_url(self) -> str:
        """Base URL of the first HTTP listener, without a trailing slash."""
        return f"http://127.0.0.1:{self.http_port}"

    def url(self, repo_name: str = "") -> str:
        """URL of a served repository over HTTP."""
        return f"{self.http_url}/{repo_name}".rstrip("/") + ("/" if not repo_name else "")

    def log(self) -> str:
        """Everything the server logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def running_server(
    tmp_path: Path,
    *args: str,
    http: str | None = "tcp:0:interface=127.0.0.1",
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    log_level: str | None = "debug",
) -> Iterator[RunningServer]:
    """Run ``hgwire serve ARGS`` until the block ends; yields its ports and paths.

    ``log_level`` None leaves ``--log-level`` at the server's default.

    Ports are chosen by the OS (``tcp:0``) and read back from ``listening.json``.
    On exit the server gets SIGTERM (a clean shutdown) and is killed if it lingers.
    """
    state_dir = tmp_path / f"state-{time.monotonic_ns()}"
    log_path = state_dir.with_suffix(".log")
    # SSH and raw TCP listen on fixed localhost ports by default; tests turn them off
    # unless ARGS asks for them (a later --ssh/--tcp ENDPOINT adds to "none").
    argv = [
        sys.executable,
        "-m",
        "hgwire_tw",
        "serve",
        "--state-dir",
        str(state_dir),
        "--ssh",
        "none",
        "--tcp",
        "none",
    ]
    if http is not None:
        argv += ["--http", http]
    # Tests read the per-command debug lines; a later --log-level in ARGS wins.
    if log_level is not None:
        argv += ["--log-level", log_level]
    argv += args
    run_env = hg_env(env)
    run_env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=run_env,
            cwd=str(tmp_path),
        )
    server = RunningServer(proc=proc, state_dir=state_dir, log_path=log_path)
    try:
        listening = state_dir / "listening.json"
        deadline = time.monotonic() + timeout
        while not listening.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}):\n{server.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start in {timeout}s:\n{server.log()}")
            time.sleep(0.05)
        server.ports = json.loads(listening.read_text(encoding="utf-8"))
        yield server
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], grace: float = 15.0) -> int | None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
