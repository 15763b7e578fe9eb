"""A server-side Mercurial hook that holds a response in flight until a test lets go.

Configured in a served repository's ``.hg/hgrc``::

    [hooks]
    outgoing.gate = python:/path/to/tests/gatehook.py:hold
    [gate]
    dir = /tmp/...

Mercurial runs ``outgoing`` while generating a bundle, after the changesets, manifests
and files were produced but before the bundle ends, so the server has started the
response (usually sent most of it) and cannot finish it until the hook returns. The
hook writes ``DIR/started`` and waits (at most two minutes) for ``DIR/go``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def install(repo: Path, gate: Path) -> Path:
    """Make ``repo`` hold its next outgoing bundle at ``gate``; returns ``gate``."""
    gate.mkdir(parents=True, exist_ok=True)
    with open(repo / ".hg" / "hgrc", "a", encoding="utf-8") as hgrc:
        hgrc.write(f"\n[hooks]\noutgoing.gate = python:{__file__}:hold\n[gate]\ndir = {gate}\n")
    return gate


def wait_started(gate: Path, timeout: float = 120.0) -> None:
    """Wait until the hook holds a response (test side)."""
    deadline = time.monotonic() + timeout
    while not (gate / "started").exists():
        assert time.monotonic() < deadline, "the server never reached the outgoing hook"
        time.sleep(0.05)


def release(gate: Path) -> None:
    """Let the held response finish (test side)."""
    (gate / "go").touch()


def hold(ui: Any, repo: Any, **kwargs: Any) -> bool:
    """The hook: mark the response as held, wait for the go-ahead."""
    gate = ui.config(b"gate", b"dir").decode()
    Path(gate, "started").touch()
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(gate, "go")) and time.monotonic() < deadline:
        time.sleep(0.02)
    return False  # success: the bundle goes on
