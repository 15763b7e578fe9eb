"""Which of the pool's lanes (sets of worker threads) a wire command runs on.

``RepositoryPool`` keeps three lanes, so that one kind of work never queues behind
another:

* ``Lane.TRANSFER`` (``--workers`` threads): commands that stream repository data
  (v1 ``getbundle``, ``changegroup``, ``changegroupsubset``, ``stream_out``,
  ``get_cached_bundle_inline``; v2 ``changesetdata``, ``manifestdata``, ``filedata``,
  ``filesdata``, ``rawstorefiledata``), and any command this module does not know (an
  extension's command may stream).
* ``Lane.QUICK``: commands that answer from a small in-memory result and never stream:
  the handshake and discovery of every clone, pull and push (``capabilities``,
  ``heads``, ``known``, ``batch``, ``listkeys``...). Each holds a worker for
  milliseconds, so two workers serve them all while every transfer worker is busy.
* ``Lane.WRITE``: commands that need the ``push`` permission (``unbundle``,
  ``pushkey``): they wait for the repository lock, and must not wait for a clone.

The quick set is a list of names, not a guess from the command table: Mercurial's table
does not say which commands stream, and a command wrongly called quick would hold a
quick worker for a whole transfer. ``tests/test_repo_lanes.py`` checks that every
command of Mercurial's v1 table and of our v2 table is classified here on purpose.
"""

from __future__ import annotations

import enum

__all__ = ["QUICK_COMMANDS", "TRANSFER_COMMANDS", "Lane", "command_lane"]


class Lane(enum.Enum):
    """A set of worker threads of ``RepositoryPool``; the value names it in metrics."""

    TRANSFER = "repo"
    QUICK = "quick"
    WRITE = "write"


#: Commands (v1 and v2: the shared names mean the same) answered from small results.
QUICK_COMMANDS = frozenset(
    {
        b"batch",
        b"between",
        b"branches",
        b"branchmap",
        b"capabilities",
        b"clonebundles",
        b"clonebundles_manifest",
        b"debugwireargs",
        b"heads",
        b"hello",
        b"known",
        b"listkeys",
        b"lookup",
        b"protocaps",
    }
)

#: Commands known to stream repository data (the rest of the pull commands).
TRANSFER_COMMANDS = frozenset(
    {
        # v1
        b"changegroup",
        b"changegroupsubset",
        b"get_cached_bundle_inline",
        b"getbundle",
        b"stream_out",
        # v2
        b"changesetdata",
        b"filedata",
        b"filesdata",
        b"manifestdata",
        b"rawstorefiledata",
    }
)


def command_lane(name: bytes, permission: str) -> Lane:
    """The lane of wire command ``name``, which needs ``permission`` (``"pull"`` or
    ``"push"``, as the command table says)."""
    if permission == "push":
        return Lane.WRITE
    if name in QUICK_COMMANDS:
        return Lane.QUICK
    return Lane.TRANSFER
