"""Measure the CPU cost of a full v2 clone walk (changesetdata + manifestdata + filesdata).

Usage: ``python -m bench.walk [REPO] [--commits N]``. Without REPO a benchmark
repository is built once under ``/tmp/hgwire-bench-<N>`` with
``tests.repobuilders.make_bench_repo`` (slow: one ``hg commit`` per changeset) and reused.

The walk calls the handlers directly (no Twisted, no framing) on the served view, the way
a 6.0.3 client clones: one changesetdata DAG range with every field, manifestdata for
all manifests with ``haveparents``, filesdata for all changesets with ``haveparents``.
Every object is CBOR-encoded (``core.cbor.dumps``) so the cost includes encoding, and
the peak traced memory is reported to show the walk streams.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mercurial import hg

from hgwire_tw.commands.common import served_view
from hgwire_tw.commands.registry import COMMANDS, normalize_args
from hgwire_tw.core.cbor import dumps
from hgwire_tw.repo.ui import make_ui


def drain(objs: Iterable[object]) -> tuple[int, int]:
    """Encode every object; return (object count, encoded bytes)."""
    count = size = 0
    for obj in objs:
        count += 1
        size += len(obj) if isinstance(obj, bytes) else len(dumps(obj))
    return count, size


def run(name: bytes, repo: object, args: dict[bytes, object]) -> tuple[int, int]:
    """Run one handler to exhaustion."""
    spec = COMMANDS[name]
    return drain(spec.handler(repo, normalize_args(spec, args)))


def walk(path: Path) -> None:
    """Time the three phases of a clone and print the numbers."""
    repo = served_view(hg.repository(make_ui(), os.fsencode(path)))
    heads = sorted(repo.heads())
    cl = repo.changelog
    nodes = [cl.node(r) for r in cl]
    manifests = list(dict.fromkeys(repo[n].manifestnode() for n in nodes))
    phases = [
        (
            b"changesetdata",
            {
                b"revisions": [{b"type": b"changesetdagrange", b"roots": [], b"heads": heads}],
                b"fields": [b"bookmarks", b"parents", b"phase", b"revision"],
            },
        ),
        (
            b"manifestdata",
            {
                b"tree": b"",
                b"nodes": manifests,
                b"haveparents": True,
                b"fields": [b"parents", b"revision"],
            },
        ),
        (
            b"filesdata",
            {
                b"revisions": [{b"type": b"changesetexplicit", b"nodes": nodes}],
                b"haveparents": True,
                b"fields": [b"parents", b"revision"],
            },
        ),
    ]
    tracemalloc.start()
    total_cpu = 0.0
    print(f"repository: {path} ({len(nodes)} changesets, {len(manifests)} manifests)")
    for name, args in phases:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        count, size = run(name, repo, args)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        total_cpu += cpu
        print(
            f"{name.decode():14s} objects={count:7d} bytes={size:10d} "
            f"cpu={cpu:6.2f}s wall={wall:6.2f}s"
        )
    _, peak = tracemalloc.get_traced_memory()
    print(f"total cpu={total_cpu:.2f}s  peak traced memory={peak / 2**20:.1f} MiB")


def main() -> None:
    """Parse arguments, build the repository if needed, walk it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("repo", nargs="?", type=Path)
    parser.add_argument("--commits", type=int, default=3000)
    opts = parser.parse_args()
    path = opts.repo
    if path is None:
        path = Path(f"/tmp/hgwire-bench-{opts.commits}")
        if not (path / ".hg").is_dir():
            from tests.repobuilders import make_bench_repo

            start = time.perf_counter()
            make_bench_repo(path, commits=opts.commits)
            print(f"built {path} in {time.perf_counter() - start:.0f}s")
    walk(path)


if __name__ == "__main__":
    main()
