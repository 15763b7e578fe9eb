"""Shared pytest fixtures: real repositories built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import repobuilders


@pytest.fixture(scope="session")
def rich_repo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rich repository (see ``make_rich_repo``), built once; copy it before changing it."""
    return repobuilders.make_rich_repo(tmp_path_factory.mktemp("rich") / "repo")


@pytest.fixture
def rich_repo(rich_repo_template: Path, tmp_path: Path) -> Path:
    """A private copy of the rich repository, free to modify."""
    import shutil

    dest = tmp_path / "rich"
    shutil.copytree(rich_repo_template, dest, symlinks=True)
    return dest


class PumpReactor:
    """A stand-in reactor for tests with real worker threads.

    ``callFromThread`` queues calls; the test thread plays the reactor thread by running
    them in ``pump_until``. This keeps Twisted's global reactor out of the pytest process.
    """

    def __init__(self) -> None:
        import queue

        self.calls: queue.Queue[tuple[object, tuple[object, ...], dict[str, object]]] = (
            queue.Queue()
        )

    def callFromThread(self, f, *args, **kwargs):  # Twisted's name
        """Queue ``f(*args, **kwargs)`` for the test thread."""
        self.calls.put((f, args, kwargs))

    def pump_until(self, done, timeout: float = 30.0) -> None:
        """Run queued calls on this thread until ``done()`` is true (or fail on timeout)."""
        import queue
        import time

        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("timed out pumping the fake reactor")
            try:
                f, args, kwargs = self.calls.get(timeout=min(remaining, 0.05))
            except queue.Empty:
                continue
            f(*args, **kwargs)  # type: ignore[operator]

    def result_of(self, d, timeout: float = 30.0):
        """Pump until Deferred ``d`` fires; return its result or raise its failure."""
        from twisted.python.failure import Failure

        box: list[object] = []
        d.addBoth(box.append)
        self.pump_until(lambda: bool(box), timeout)
        if isinstance(box[0], Failure):
            box[0].raiseException()
        return box[0]


@pytest.fixture
def pump_reactor() -> PumpReactor:
    """A fake reactor driven by the test thread (see ``PumpReactor``)."""
    return PumpReactor()


@pytest.fixture(scope="session")
def linear_repo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small linear public repository (no secret changesets: stream clones allowed)."""
    return repobuilders.make_linear_repo(tmp_path_factory.mktemp("linear") / "repo", commits=6)


def call_command(
    repo_path: Path,
    name: bytes,
    args: dict[bytes, object] | None = None,
    *,
    commands: dict[bytes, object] | None = None,
) -> list[object]:
    """Run a v2 command handler synchronously (no Twisted) on the served view of a repo.

    Arguments are normalized first, as the runner does; the objects are returned as a list.
    """
    import os

    from mercurial import hg

    from hgwire_tw.commands.common import served_view
    from hgwire_tw.commands.registry import COMMANDS, normalize_args
    from hgwire_tw.core.cbor import EncodedCBOR, loads_sequence
    from hgwire_tw.repo.ui import make_ui

    table = commands or COMMANDS
    spec = table[name]
    normalized = normalize_args(spec, args or {})  # type: ignore[arg-type]
    repo = served_view(hg.repository(make_ui(), os.fsencode(repo_path)))
    objs: list[object] = []
    for obj in spec.handler(repo, normalized):  # type: ignore[attr-defined]
        # A record (a map) and its payload written already encoded (revision_records)
        # come back as the two objects they stand for.
        if type(obj) is EncodedCBOR and obj[0] >> 5 == 5:
            objs += loads_sequence(obj)
        else:
            objs.append(obj)
    return objs


@pytest.fixture
def call() -> object:
    """``call(repo_path, name, args)``: run a v2 handler synchronously (see call_command)."""
    return call_command


@pytest.fixture
def pool(pump_reactor: Any) -> Iterator[Any]:
    """A started two-worker ``RepositoryPool`` on the pump reactor, stopped afterwards."""
    from hgwire_tw.repo.pool import RepositoryPool

    p = RepositoryPool(pump_reactor, size=2)
    p.start()
    yield p
    p.stop()


@pytest.fixture
def served(rich_repo: Path) -> Any:
    """A private rich repository, served as ``rich``."""
    from hgwire_tw.repo.registry import ServedRepository

    return ServedRepository("rich", rich_repo)
