"""The lane each wire command runs on (``hgwire_tw.repo.lanes``)."""

from __future__ import annotations

import pytest
from mercurial import wireprotov1server

from hgwire_tw.commands.registry import COMMANDS
from hgwire_tw.commands.runner import spec_lane
from hgwire_tw.repo.lanes import QUICK_COMMANDS, TRANSFER_COMMANDS, Lane, command_lane
from hgwire_tw.v1 import dispatch


def test_every_v1_command_is_classified_on_purpose() -> None:
    """A command Mercurial adds to its table must be put in a lane here: by default it
    would be a transfer, which is safe but would make a new handshake command wait for
    clones."""
    for name, entry in wireprotov1server.commands.items():
        if entry.permission == b"push":
            continue
        assert name in QUICK_COMMANDS | TRANSFER_COMMANDS, name


def test_every_v2_command_is_classified_on_purpose() -> None:
    for name, spec in COMMANDS.items():
        if spec.permission.value == b"push":
            continue
        assert name in QUICK_COMMANDS | TRANSFER_COMMANDS, name


def test_quick_and_transfer_are_disjoint() -> None:
    assert not QUICK_COMMANDS & TRANSFER_COMMANDS


@pytest.mark.parametrize(
    ("name", "lane"),
    [
        # a clone's and a push's handshake and discovery
        (b"capabilities", Lane.QUICK),
        (b"hello", Lane.QUICK),
        (b"protocaps", Lane.QUICK),
        (b"batch", Lane.QUICK),
        (b"heads", Lane.QUICK),
        (b"known", Lane.QUICK),
        (b"lookup", Lane.QUICK),
        (b"listkeys", Lane.QUICK),
        (b"branchmap", Lane.QUICK),
        (b"between", Lane.QUICK),
        (b"clonebundles", Lane.QUICK),
        # streams
        (b"getbundle", Lane.TRANSFER),
        (b"changegroup", Lane.TRANSFER),
        (b"changegroupsubset", Lane.TRANSFER),
        (b"stream_out", Lane.TRANSFER),
        # writes
        (b"unbundle", Lane.WRITE),
        (b"pushkey", Lane.WRITE),
    ],
)
def test_v1_lanes(name: bytes, lane: Lane) -> None:
    assert command_lane(name, dispatch.command_permission(name).decode()) is lane


@pytest.mark.parametrize(
    ("name", "lane"),
    [
        (b"capabilities", Lane.QUICK),
        (b"heads", Lane.QUICK),
        (b"known", Lane.QUICK),
        (b"lookup", Lane.QUICK),
        (b"listkeys", Lane.QUICK),
        (b"branchmap", Lane.QUICK),
        (b"changesetdata", Lane.TRANSFER),
        (b"manifestdata", Lane.TRANSFER),
        (b"filedata", Lane.TRANSFER),
        (b"filesdata", Lane.TRANSFER),
        (b"rawstorefiledata", Lane.TRANSFER),
        (b"pushkey", Lane.WRITE),
    ],
)
def test_v2_lanes(name: bytes, lane: Lane) -> None:
    assert spec_lane(COMMANDS[name]) is lane


def test_unknown_commands_are_transfers() -> None:
    """An extension's command may stream: it never takes a quick worker."""
    assert command_lane(b"getlfile", "pull") is Lane.TRANSFER
    assert command_lane(b"putlfile", "push") is Lane.WRITE


def test_start_call_chooses_the_lane() -> None:
    """``start_call`` runs a call on its command's lane, a write only for a push."""
    from typing import Any

    from twisted.internet.defer import Deferred

    from hgwire_tw.access import Grant
    from hgwire_tw.repo.registry import ServedRepository
    from hgwire_tw.v1.call import V1Call
    from hgwire_tw.v1.protocol import ProtocolFacts
    from hgwire_tw.v1.runner import start_call

    seen: list[tuple[Lane, bool]] = []

    class Pool:
        def iterate(self, *args: Any, write: bool, lane: Lane) -> Deferred[None]:
            seen.append((lane, write))
            return Deferred()

    class Metrics:
        def command(self, *args: Any) -> Any:
            return lambda result: result

    class Ctx:
        pool = Pool()
        cache = None
        metrics = Metrics()

    facts = ProtocolFacts(transport="ssh", grant=Grant(read=True, write=True))
    served = ServedRepository("r", __import__("pathlib").Path("/nonexistent"))
    for name in (b"heads", b"getbundle", b"unbundle"):
        call = V1Call(served=served, name=name, args={}, facts=facts)
        start_call(Ctx(), call, lambda b: None)  # type: ignore[arg-type]
    assert seen == [(Lane.QUICK, False), (Lane.TRANSFER, False), (Lane.WRITE, True)]
