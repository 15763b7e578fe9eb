"""What ``filesdata`` needs of a changeset, kept from ``changesetdata``.

A clone asks ``changesetdata`` for every changeset, then ``filesdata`` for the same
ones; both need the changeset's text (``filesdata`` for its manifest node and the paths
it touched), and rebuilding each text a second time from the changelog's delta chains
was an eighth of a revision-path clone's server time. ``changesetdata`` therefore leaves
each changeset's summary here, and ``filesdata`` reads it back, or reads the changelog
when it is not there.

Keys are changeset nodes: a node names its content, so a summary is right for any
repository holding that node, whichever worker thread or request stored it. The store
is bounded (oldest summaries are dropped first) and shared by the worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

__all__ = ["MAX_BYTES", "SUMMARIES", "Summaries", "summary"]

#: Rough bound on the memory the summaries of one process take.
MAX_BYTES = 32 * 1024 * 1024
#: Estimated cost of one entry beyond its paths (node, manifest node, tuple, dict slot).
_ENTRY_COST = 200


class Summaries:
    """node -> (manifest node, touched paths), bounded by an estimate of its size."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[bytes, tuple[bytes, ...], int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, node: bytes, manifest: bytes, paths: tuple[bytes, ...]) -> None:
        """Keep the summary of changeset ``node``."""
        cost = _ENTRY_COST + sum(len(p) + 40 for p in paths)
        with self._lock:
            if node in self._entries:
                return
            self._entries[node] = (manifest, paths, cost)
            self._bytes += cost
            while self._bytes > self._max_bytes and self._entries:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def get(self, node: bytes) -> tuple[bytes, tuple[bytes, ...]] | None:
        """The summary of ``node``, or None when it is not (or no longer) kept."""
        entry = self._entries.get(node)
        return None if entry is None else (entry[0], entry[1])


#: The process's summaries (filled by changesetdata, read by filesdata).
SUMMARIES = Summaries()


def summary(cl: Any, rev: int, store: Summaries = SUMMARIES) -> tuple[bytes, tuple[bytes, ...]]:
    """``(manifest node, touched paths)`` of changeset ``rev`` of changelog ``cl``."""
    node = cl.node(rev)
    found = store.get(node)
    if found is None:
        entry = cl.changelogrevision(rev)
        found = (entry.manifest, tuple(entry.files))
        store.remember(node, *found)
    return found
