"""Apply a v2 server's changesets, manifests and files to a local Mercurial repository.

Everything here runs on ONE worker thread, which owns the repository object; the
server is reached through a blocking :class:`~hgwire_tw.client.bridge.Remote`. The whole
pull happens inside one transaction: if anything fails (the connection drops, the
server errs, the data is bad), the transaction aborts and the repository is left as it
was; running the pull again completes it.

Sequence (wire-protocol §8): discovery with ``heads`` and ``known``; ``changesetdata``
over a ``changesetdagrange`` with fields bookmarks/parents/phase/revision; then
``manifestdata`` and ``filesdata`` for the new changesets, in batches of the server's
``recommendedbatchsize``, with ``haveparents`` so the server may send deltas against
revisions we hold. New changesets are registered draft, then advanced to the phases the
server reports; remote bookmarks are merged as ``hg pull`` merges them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from hgwire_tw.client.bridge import Remote
from hgwire_tw.core.errors import RemoteProtocolError

__all__ = ["PullStats", "discover", "pull"]

NULLID = b"\0" * 20
#: Nodes per ``known`` request during discovery, and most discovery rounds.
KNOWN_BATCH = 1000
MAX_DISCOVERY_ROUNDS = 64


@dataclass
class PullStats:
    """What a pull brought in (also the progress state)."""

    changesets: int = 0
    manifests: int = 0
    files: int = 0
    bytes: int = 0
    bookmarks: int = 0
    discovery_rounds: int = 0
    topic: str = ""
    total: int | None = None
    done: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the terminal."""
        streamed = self.extra.get("store files")
        if streamed:
            return (
                f"added {self.changesets} changesets by copying {streamed} store files, "
                f"then {self.manifests} manifests and {self.files} file revisions "
                f"({self.bytes} bytes)"
            )
        return (
            f"added {self.changesets} changesets with {self.manifests} manifests and "
            f"{self.files} file revisions ({self.bytes} bytes)"
        )


ProgressFn = Callable[[PullStats], None]


def _nothing(stats: PullStats) -> None:
    pass


def _next(objs: Iterator[object], what: str) -> Any:
    try:
        return next(objs)
    except StopIteration:
        raise RemoteProtocolError(f"{what}: response ended early") from None


def _drain(objs: Iterator[object]) -> None:
    for _ in objs:
        pass


def discover(repo: Any, remote: Remote, stats: PullStats) -> tuple[list[bytes], list[bytes]]:
    """``(common, remote_heads)``: local nodes the server has, and the server's heads.

    Asks ``heads`` and ``known(local heads)`` in one round; local heads the server does
    not know are walked back parent by parent (a batch per round), so ``common`` covers
    what both sides have. Underestimating it only means receiving data we already hold.
    """
    cl = repo.changelog
    local_heads = [n for n in repo.heads() if n != NULLID]
    heads_objs, known_objs = remote.call_many([(b"heads", {}), (b"known", {b"nodes": local_heads})])
    remote_heads = [n for n in _next(heads_objs, "heads") if n != NULLID]
    bits = _next(known_objs, "known")
    _drain(heads_objs)
    _drain(known_objs)
    stats.discovery_rounds = 1
    common: set[bytes] = set()
    asked: set[bytes] = set(local_heads)
    unknown: list[bytes] = []
    for node, bit in zip(local_heads, bytes(bits), strict=False):
        if bit == ord("1"):
            common.add(node)
        else:
            unknown.append(node)
    while unknown and stats.discovery_rounds < MAX_DISCOVERY_ROUNDS:
        candidates: list[bytes] = []
        for node in unknown:
            for parent in cl.parents(node):
                if parent != NULLID and parent not in asked:
                    asked.add(parent)
                    candidates.append(parent)
        if not candidates:
            break
        batch, rest = candidates[:KNOWN_BATCH], candidates[KNOWN_BATCH:]
        bits = _next(remote.call(b"known", {b"nodes": batch}), "known")
        stats.discovery_rounds += 1
        unknown = rest
        for node, bit in zip(batch, bytes(bits), strict=False):
            if bit == ord("1"):
                common.add(node)
            else:
                unknown.append(node)
    return sorted(common), sorted(remote_heads)


def _full_text_delta(data: bytes) -> bytes:
    from mercurial import mdiff

    return mdiff.trivialdiffheader(len(data)) + data


def _fields_following(record: dict[bytes, Any], objs: Iterator[object]) -> dict[bytes, bytes]:
    extra: dict[bytes, bytes] = {}
    for name, _size in record.get(b"fieldsfollowing", []):
        value = _next(objs, "revision data")
        if not isinstance(value, bytes):
            raise RemoteProtocolError("revision data must be a byte string")
        extra[name] = value
    return extra


def _inbound(record: dict[bytes, Any], extra: dict[bytes, bytes], linknode: bytes) -> Any | None:
    """The ``InboundRevision`` for a manifest/file record, or None without data."""
    from mercurial import revlogutils

    if b"delta" in extra:
        base = record[b"deltabasenode"]
        delta = extra[b"delta"]
    elif b"revision" in extra:
        base = NULLID
        delta = _full_text_delta(extra[b"revision"])
    else:
        return None
    p1, p2 = record[b"parents"]
    return revlogutils.InboundRevision(record[b"node"], p1, p2, linknode, base, delta, 0, {})


def _has_node(store: Any, node: bytes) -> bool:
    from mercurial import error

    try:
        store.rev(node)
    except error.LookupError:
        return False
    return True


def _reuse_policy(store: Any) -> Any:
    """How ``addgroup`` treats the server's delta bases for ``store``.

    Into an empty revlog (a clone), the deltas are used as they come: a full clone's
    answers carry the server's stored deltas (every base is sent before the revisions
    built on it), so storing them as-is copies the server's chains, which Mercurial's
    ``pulled-delta-reuse-policy = forced`` does too, and skips a delta search per
    revision (a quarter of a clone's client time). Otherwise (None) Mercurial's default
    applies: it keeps a base only when its own delta rules accept the chain.
    """
    from mercurial.revlogutils.constants import DELTA_BASE_REUSE_FORCE

    return DELTA_BASE_REUSE_FORCE if len(store) == 0 else None


def _batches(items: Sequence[bytes], size: int) -> Iterator[list[bytes]]:
    size = max(1, size)
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def pull(
    repo: Any, remote: Remote, progress: ProgressFn = _nothing, *, stream: bool = True
) -> PullStats:
    """Bring ``repo`` up to date with ``remote``; returns what was added.

    An empty ``repo`` is first filled from the server's store files when the server
    offers them and ``stream`` is set (:mod:`hgwire_tw.client.storeclone`); the
    revision-by-revision pull then brings bookmarks and anything newer.
    """
    from mercurial import bookmarks, phases

    from hgwire_tw.client.storeclone import store_clone, store_clone_plan

    repo = repo.unfiltered()
    stats = PullStats()
    caps = remote.capabilities()
    commands = caps.get(b"commands", {})
    manifest_batch = int(commands.get(b"manifestdata", {}).get(b"recommendedbatchsize", 100000))
    files_batch = int(commands.get(b"filesdata", {}).get(b"recommendedbatchsize", 50000))

    plan = store_clone_plan(repo, caps) if stream else None
    if plan is not None:

        def fetch_files(repo: Any, tr: Any, csets: list[bytes]) -> None:
            _apply_files(repo, tr, remote, csets, files_batch, stats, progress)

        store_clone(repo, remote, caps, plan, stats, progress, fetch_files)

    stats.topic = "discovery"
    progress(stats)
    common, remote_heads = discover(repo, remote, stats)
    if not remote_heads:
        return stats

    with repo.wlock(), repo.lock(), repo.transaction(b"pull") as tr:
        tr.hookargs.setdefault(b"source", b"pull")
        tr.hookargs.setdefault(b"url", remote.url.encode("utf-8"))
        objs = remote.call(
            b"changesetdata",
            {
                b"revisions": [
                    {b"type": b"changesetdagrange", b"roots": common, b"heads": remote_heads}
                ],
                b"fields": {b"bookmarks", b"parents", b"phase", b"revision"},
            },
        )
        added, by_phase, remote_marks, manifest_links = _apply_changesets(
            repo, tr, objs, stats, progress
        )
        if added:
            cl = repo.changelog
            phases.registernew(repo, tr, phases.draft, [cl.rev(n) for n in added])
        public = by_phase.get(b"public")
        if public:
            phases.advanceboundary(repo, tr, phases.public, sorted(public))
        if remote_marks:
            before = dict(repo._bookmarks)
            bookmarks.updatefromremote(
                repo.ui, repo, remote_marks, remote.url.encode("utf-8"), lambda: tr
            )
            stats.bookmarks = sum(1 for k, v in repo._bookmarks.items() if before.get(k) != v)

        # Pipelined: every answer is asked for now, each sent by the reactor thread once
        # the one before it has arrived, so the server prepares the next while we apply
        # the last. Answers arrive in the order we read them, so the bounded queues
        # never wait on data stuck behind an answer nobody reads.
        wanted, manifest_answers = _request_manifests(repo, remote, manifest_links, manifest_batch)
        file_answers = _request_files(remote, added, files_batch, manifest_answers)
        _apply_manifests(repo, tr, manifest_links, wanted, manifest_answers, stats, progress)
        _apply_files(repo, tr, remote, added, files_batch, stats, progress, file_answers)
        stats.topic = "closing transaction"
        progress(stats)
    stats.topic = ""
    return stats


def _apply_changesets(
    repo: Any, tr: Any, objs: Iterator[object], stats: PullStats, progress: ProgressFn
) -> tuple[list[bytes], dict[bytes, set[bytes]], dict[bytes, bytes], dict[bytes, int]]:
    from mercurial import revlogutils

    cl = repo.changelog
    cl.delayupdate(tr)
    header = _next(objs, "changesetdata")
    stats.topic, stats.total, stats.done = "changesets", header.get(b"totalitems"), 0
    progress(stats)
    added: list[bytes] = []
    by_phase: dict[bytes, set[bytes]] = {}
    marks: dict[bytes, bytes] = {}
    manifest_links: dict[bytes, int] = {}

    def on_added(cl: Any, rev: int) -> None:
        revision = cl.changelogrevision(rev)
        added.append(cl.node(rev))
        manifest_links.setdefault(revision.manifest, rev)
        repo.register_changeset(rev, revision)
        stats.changesets += 1

    def records() -> Iterator[Any]:
        for record in objs:
            if not isinstance(record, dict) or b"node" not in record:
                raise RemoteProtocolError("changesetdata: malformed record")
            node = record[b"node"]
            if b"phase" in record:
                by_phase.setdefault(record[b"phase"], set()).add(node)
            for mark in record.get(b"bookmarks", []):
                marks[mark] = node
            extra = _fields_following(record, objs)
            if b"revision" not in extra:
                continue
            data = extra[b"revision"]
            stats.bytes += len(data)
            stats.done += 1
            if stats.done % 100 == 0:
                progress(stats)
            p1, p2 = record[b"parents"]
            yield revlogutils.InboundRevision(
                node, p1, p2, node, NULLID, _full_text_delta(data), 0, {}
            )

    cl.addgroup(
        records(),
        lambda node: len(cl),
        weakref.proxy(tr),
        alwayscache=True,
        addrevisioncb=on_added,
    )
    progress(stats)
    return added, by_phase, marks, manifest_links


def _request_manifests(
    repo: Any, remote: Remote, links: dict[bytes, int], batch_size: int
) -> tuple[list[bytes], list[Iterator[object]]]:
    """Ask for the manifests of ``links`` we lack, batch after batch (each batch is sent
    once the previous answer has arrived); returns the nodes and the answers."""
    store = repo.manifestlog.getstorage(b"")
    wanted = [n for n in links if not _has_node(store, n)]
    answers: list[Iterator[object]] = []
    for batch in _batches(wanted, batch_size):
        args = {
            b"tree": b"",
            b"nodes": batch,
            b"haveparents": True,
            b"fields": {b"parents", b"revision"},
        }
        answers.append(_call_after(remote, b"manifestdata", args, answers))
    return wanted, answers


def _call_after(
    remote: Remote, name: bytes, args: dict[bytes, object], earlier: list[Iterator[object]]
) -> Iterator[object]:
    """``name`` sent as soon as the last of ``earlier`` has arrived (or now)."""
    if earlier:
        return remote.call(name, args, after=earlier[-1])
    return remote.call(name, args)


def _apply_manifests(
    repo: Any,
    tr: Any,
    links: dict[bytes, int],
    wanted: list[bytes],
    answers: list[Iterator[object]],
    stats: PullStats,
    progress: ProgressFn,
) -> None:
    store = repo.manifestlog.getstorage(b"")
    stats.topic, stats.total, stats.done = "manifests", len(wanted), 0
    progress(stats)

    def on_added(_store: Any, _rev: int) -> None:
        stats.manifests += 1

    for objs in answers:
        _next(objs, "manifestdata")

        def revisions(objs: Iterator[object] = objs) -> Iterator[Any]:
            for record in objs:
                if not isinstance(record, dict) or b"node" not in record:
                    raise RemoteProtocolError("manifestdata: malformed record")
                extra = _fields_following(record, objs)
                node = record[b"node"]
                if node not in links:
                    raise RemoteProtocolError("manifestdata: a manifest we did not ask for")
                inbound = _inbound(record, extra, repo.changelog.node(links[node]))
                if inbound is None:
                    continue
                stats.bytes += len(inbound.delta)
                stats.done += 1
                if stats.done % 100 == 0:
                    progress(stats)
                yield inbound

        store.addgroup(
            revisions(),
            repo.changelog.rev,
            weakref.proxy(tr),
            addrevisioncb=on_added,
            delta_base_reuse_policy=_reuse_policy(store),
        )
    progress(stats)


def _request_files(
    remote: Remote, csets: list[bytes], batch_size: int, earlier: list[Iterator[object]]
) -> list[Iterator[object]]:
    """Ask for the file revisions ``csets`` need, each batch sent once the answer before
    it (the last of ``earlier`` for the first one) has arrived."""
    answers: list[Iterator[object]] = []
    for batch in _batches(csets, batch_size):
        args = {
            b"revisions": [{b"type": b"changesetexplicit", b"nodes": batch}],
            b"fields": {b"parents", b"revision", b"linknode"},
            b"haveparents": True,
        }
        answers.append(_call_after(remote, b"filesdata", args, [*earlier, *answers]))
    return answers


def _apply_files(
    repo: Any,
    tr: Any,
    remote: Remote,
    csets: list[bytes],
    batch_size: int,
    stats: PullStats,
    progress: ProgressFn,
    answers: list[Iterator[object]] | None = None,
) -> None:
    """Add the file revisions ``csets`` need: from ``answers`` when they were asked for
    already (``_request_files``), else asked for here."""
    cl = repo.changelog
    stats.topic, stats.total, stats.done = "files", None, 0
    progress(stats)

    def on_added(_store: Any, _rev: int) -> None:
        stats.files += 1

    if answers is None:
        answers = _request_files(remote, csets, batch_size, [])
    for objs in answers:
        overall = _next(objs, "filesdata")
        stats.total = (stats.total or 0) + int(overall.get(b"totalitems", 0))
        for _ in range(int(overall.get(b"totalpaths", 0))):
            header = _next(objs, "filesdata path")
            path, count = header[b"path"], int(header[b"totalitems"])

            def revisions(objs: Iterator[object] = objs, count: int = count) -> Iterator[Any]:
                for _ in range(count):
                    record = _next(objs, "filesdata record")
                    if not isinstance(record, dict) or b"node" not in record:
                        raise RemoteProtocolError("filesdata: malformed record")
                    extra = _fields_following(record, objs)
                    linknode = record.get(b"linknode")
                    if linknode is None:
                        raise RemoteProtocolError("filesdata: record without linknode")
                    inbound = _inbound(record, extra, linknode)
                    if inbound is None:
                        continue
                    stats.bytes += len(inbound.delta)
                    stats.done += 1
                    if stats.done % 200 == 0:
                        progress(stats)
                    yield inbound

            store = repo.file(path, writable=True)
            store.addgroup(
                revisions(),
                cl.rev,
                weakref.proxy(tr),
                addrevisioncb=on_added,
                use_hasmeta_flag=False,
                delta_base_reuse_policy=_reuse_policy(store),
            )
        _drain(objs)
    progress(stats)
