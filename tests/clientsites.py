"""One served repository and an ``hgwire clone`` of it over any client transport.

``client_site(tmp_path, source, transport, *args)`` runs ``hgwire serve`` with ``source``
as repository ``r`` (plus ``args``) and yields the server and a ``clone(dest)`` that runs
the ``hgwire`` command line over ``transport``: ``http`` (v2), ``tcp`` (raw frames) or
``ssh`` (the ``hgwire`` subsystem, alice logging in with a key of her own). Used by the
cache and redirect tests so every transport is proven the same way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import RunningServer, running_server
from tests.sshclient import (
    SSH_KEYGEN,
    SSH_LISTEN,
    keygen,
    run_hgwire,
    write_key_access,
    write_known_hosts,
)

TCP_LISTEN = ("--tcp", "tcp:0:interface=127.0.0.1")
#: Every client transport, as a ``pytest.mark.parametrize`` list.
TRANSPORTS = [
    "http",
    "tcp",
    pytest.param(
        "ssh",
        marks=pytest.mark.skipif(not os.path.exists(SSH_KEYGEN), reason="no ssh-keygen"),
    ),
]


@dataclass
class ClientSite:
    """A running server and how to clone its repository ``r`` (returns the stdout)."""

    server: RunningServer
    clone: Callable[[Path], str]


def _checked(result: object) -> str:
    assert result.returncode == 0, result.stdout + result.stderr  # type: ignore[attr-defined]
    return result.stdout  # type: ignore[attr-defined,no-any-return]


@contextlib.contextmanager
def client_site(tmp_path: Path, source: Path, transport: str, *args: str) -> Iterator[ClientSite]:
    """Serve ``source`` as ``r`` with ``args``; clones go over ``transport``.

    Over SSH the access file also lets anonymous clients read: redirect blobs are
    fetched over plain HTTP without a login, and the blob resource refuses anonymous
    clients that could not read every repository.
    """
    home = tmp_path / "home"
    argv = ["--repo", f"r={source}", *TCP_LISTEN, *args]
    if transport != "ssh":
        with running_server(tmp_path, *argv) as server:
            if transport == "tcp":
                url = f"hgwire://127.0.0.1:{server.ports['tcp'][0]}/r"
            else:
                url = server.url("r")
            yield ClientSite(
                server=server, clone=lambda dest: _checked(run_hgwire(home, "clone", url, dest))
            )
        return
    key = keygen(tmp_path / "alice")
    access = write_key_access(tmp_path / "access.toml", {"alice": [key]}, '"*", "anonymous"')
    with running_server(tmp_path, *argv, *SSH_LISTEN, "--access", str(access)) as server:
        known = write_known_hosts(server, tmp_path / "known_hosts")
        url = f"ssh://alice@127.0.0.1:{server.ports['ssh'][0]}/r"
        auth = ("--ssh-key", str(key), "--known-hosts", str(known))
        yield ClientSite(
            server=server,
            clone=lambda dest: _checked(run_hgwire(home, "clone", url, dest, *auth)),
        )
