"""The fuzz target (``bench/fuzz.py``) in CI: a fixed seed and a bounded count of mutated
frames (TCP, SSH subsystem, the HTTP v2 API) and v1 requests (HTTP, SSH exec), the
security review's bad inputs among them, against the real server, which must stay up,
answer or close every connection, keep its memory bounded, never answer with its secret
changeset and serve a real clone after each batch. Run ``bench/fuzz.py --forever`` by
hand for long runs."""

from __future__ import annotations

import os

import pytest

from bench.fuzz import fuzz

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/usr/bin/ssh"), reason="OpenSSH client not installed"),
    pytest.mark.timeout(300),
]


def test_mutated_inputs_on_every_transport_leave_the_server_serving() -> None:
    """Seed 1, 2,000 frames in two batches: no crash, no stuck connection, no 500 and no
    traceback, no answer holding the secret node, RSS bounded, a real clone after each
    batch, ``hg verify`` clean at the end."""
    stats = fuzz(seed=1, frames=2000, batch=1000, rss_bound_mib=512)
    assert stats.frames >= 2000 and stats.batches == 2 == stats.clones
    assert stats.crashes == 0 and stats.stuck == 0
    # bad input gets a protocol error: never a 500, never a traceback in the log
    assert stats.http_500 == 0 and stats.tracebacks_logged == 0
    assert stats.http_requests >= 15 and stats.ssh_v1_sessions >= 2
    assert stats.by_transport["tcp"] > 0 and stats.by_transport["ssh-subsystem"] > 0
    assert stats.http_v2_requests >= 15 and stats.by_transport["http-v2"] > 0
    assert stats.secret_leaks == 0, stats.leaked_on
