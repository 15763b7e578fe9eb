"""Our protocol-handler object, as Mercurial's v1 command functions see it.

Mercurial's v1 commands (``mercurial.wireprotov1server.commands``) are written against a
small "protocol handler" interface: ``name``, ``getargs``, ``getprotocaps``,
``getpayload``, ``mayberedirectstdio``, ``client``, ``addcapabilities``, ``checkperm``.
``V1Protocol`` implements it for both v1 transports of hgwire_tw from ``ProtocolFacts``:
data the transport decided before the call (the client's capabilities, the ``Grant``
permissions are checked against, the push already spooled to a file). So the object is
made on the worker thread and used there without ever calling back into the transport.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal, Protocol

from hgwire_tw.access import Grant
from hgwire_tw.core.errors import PermissionDenied
from hgwire_tw.core.v1 import BUNDLE2_MAGIC, ArgValue, ProtoCaps, parse_arg_spec, parse_protocaps

__all__ = [
    "BUNDLE2_MAGIC",
    "PAYLOAD_CHUNK",
    "Payload",
    "ProtocolFacts",
    "SpooledPayload",
    "V1Protocol",
    "file_payload",
]

#: Size of the pieces a spooled payload is read back in.
PAYLOAD_CHUNK = 64 * 1024

TransportName = Literal["http", "https", "ssh"]


def file_payload(fileobj: IO[bytes], offset: int = 0, length: int | None = None) -> Iterator[bytes]:
    """Read a spooled payload back from ``fileobj`` in pieces (on a worker thread).

    The transport closes the file when the client goes away; reading then raises
    ``ConnectionAbortedError`` (not the ``ValueError`` of a closed file, which would
    look like a bug).
    """
    try:
        fileobj.seek(offset)
        left = length
        while left is None or left > 0:
            want = PAYLOAD_CHUNK if left is None else min(PAYLOAD_CHUNK, left)
            data = fileobj.read(want)
            if not data:
                return
            if left is not None:
                left -= len(data)
            yield data
    except ValueError:
        if fileobj.closed:
            raise ConnectionAbortedError("the client went away; its push is gone") from None
        raise


class Payload(Protocol):
    """Pushed data that can be read (again) from its start on the worker thread."""

    def pieces(self) -> Iterator[bytes]:
        """The data from its start, in pieces."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SpooledPayload:
    """A push the transport spooled to ``fileobj``; it starts at ``offset``."""

    fileobj: IO[bytes]
    offset: int = 0

    def pieces(self) -> Iterator[bytes]:
        """The pushed bytes, read back from the file (``file_payload``)."""
        return file_payload(self.fileobj, self.offset)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolFacts:
    """Everything ``V1Protocol`` answers with, decided by the transport before a call.

    ``grant`` is what ``checkperm`` allows (``batch`` checks each inner command against
    it too); ``protocaps`` the client's capability tokens (``X-HgProto-N``, or what its
    ``protocaps`` command said over SSH); ``capabilities`` are appended by
    ``addcapabilities`` (with the clone bundle ones when ``clonebundles``, a
    ``hgwire_tw.clonebundles.CloneBundleSource``, has a bundle); ``server_config`` is
    applied to the repository's ``ui`` before a command runs (e.g.
    ``server.uncompressed=false`` when stream clones are off).
    """

    transport: TransportName
    grant: Grant
    payload: Payload | None = None
    protocaps: bytes = b""
    remote_host: str = ""
    remote_user: str | None = None
    capabilities: tuple[bytes, ...] = ()
    server_config: tuple[tuple[bytes, bytes, bytes], ...] = ()
    clonebundles: Any = None


class V1Protocol:
    """The protocol handler of one v1 command run, made from the transport's facts.

    ``args`` are the current command's arguments, already selected per its spec (``*``
    is a dict). ``checkperm`` raises ``PermissionDenied`` naming the permission
    (``b"pull"`` or ``b"push"``) the facts' grant lacks, which the transport turns into
    its own refusal.
    """

    def __init__(self, facts: ProtocolFacts, args: Mapping[bytes, ArgValue] | None = None) -> None:
        self.facts = facts
        self.transport = facts.transport
        self.args: dict[bytes, ArgValue] = dict(args or {})
        # Mercurial's ``protocaps`` command assigns this attribute directly over SSH.
        self._protocaps: set[bytes] = set(parse_protocaps(facts.protocaps).tokens)
        #: ``hgwire_tw.clonebundles.CloneBundleSource`` when clone bundles are on: it
        #: answers ``clonebundles``/``clonebundles_manifest`` and decides whether their
        #: capabilities are advertised.
        self.clonebundles = facts.clonebundles
        self.ui: Any = None
        #: Output captured by ``mayberedirectstdio`` that did not go into a response
        #: (over SSH Mercurial returns no output; the transport may send it to stderr).
        self.captured = io.BytesIO()

    # -- set-up by the dispatcher, on the worker thread ---------------------------------

    def bind(self, repo: Any) -> None:
        """Attach to the worker thread's repository before running a command."""
        self.ui = repo.ui
        for section, name, value in self.facts.server_config:
            repo.ui.setconfig(section, name, value, b"hgwire")

    # -- the interface Mercurial's commands use -----------------------------------------

    @property
    def name(self) -> bytes:
        """``b"http-v1"`` or ``b"ssh-v1"``: some commands answer differently per transport."""
        return b"ssh-v1" if self.transport == "ssh" else b"http-v1"

    def getargs(self, spec: bytes) -> list[ArgValue]:
        """The values of the arguments named in ``spec``, in order."""
        return [self.args[name] for name in parse_arg_spec(spec)]

    def getprotocaps(self) -> set[bytes]:
        """The client's protocol capability tokens (``X-HgProto-N`` or ``protocaps``)."""
        return self._protocaps

    def client_caps(self) -> ProtoCaps:
        """The client's capabilities, parsed (over SSH: what its ``protocaps`` said).

        Mercurial's ``protocaps`` command stores the tokens as a set; the order that
        matters (engines inside one ``comp=`` token) survives that.
        """
        return parse_protocaps(b" ".join(sorted(self._protocaps)))

    def getpayload(self) -> Iterator[bytes]:
        """The pushed data, in pieces."""
        payload = self.facts.payload
        return iter(()) if payload is None else payload.pieces()

    def payload_is_bundle2(self) -> bool:
        """Whether the pushed data is a bundle2 (so the client expects a bundle2 reply).

        Reads the first piece of the spooled payload again (worker thread).
        """
        pieces = self.getpayload()
        head = b""
        try:
            for piece in pieces:
                head += piece[: 4 - len(head)]
                if len(head) >= 4:
                    break
        except ConnectionAbortedError:
            return False  # nobody is left to read the answer
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        return head[:4] == BUNDLE2_MAGIC

    @contextlib.contextmanager
    def mayberedirectstdio(self) -> Iterator[io.BytesIO | None]:
        """Capture what the command prints, so it reaches the client as ``remote:`` lines.

        The server ``ui`` is quiet by default; while capturing it is not, so the client
        sees the usual "adding changesets" messages a Mercurial server sends.
        """
        ui = self.ui
        if ui is None:
            yield None
            return
        out = io.BytesIO()
        saved = (ui.fout, ui.ferr, ui.quiet)
        ui.fout = ui.ferr = out
        ui.quiet = False
        try:
            # Mercurial's SSH handler returns no output object; keep that shape.
            yield out if self.transport != "ssh" else None
        finally:
            ui.fout, ui.ferr, ui.quiet = saved
            if self.transport == "ssh":
                self.captured.write(out.getvalue())

    @property
    def remote_host(self) -> str:
        """The client's address, as the transport gave it (``""`` when unknown)."""
        return self.facts.remote_host

    def client(self) -> bytes:
        """``remote:<scheme>:<host>:<user>`` (hooks see it as ``HG_URL``; over SSH the
        user is the one the key logged in as); ``remote:http`` makes bundle2 capture
        output."""
        from urllib.parse import quote

        return b"remote:%s:%s:%s" % (
            self.transport.encode("ascii"),
            quote(self.facts.remote_host).encode("ascii"),
            quote(self.facts.remote_user or "").encode("ascii"),
        )

    def addcapabilities(self, repo: Any, caps: list[bytes]) -> list[bytes]:
        """Add the transport's own capabilities to the command-level ones."""
        caps.extend(self.facts.capabilities)
        if self.clonebundles is not None and self.clonebundles.advertise(repo):
            from hgwire_tw.clonebundles import CAPABILITIES

            caps.extend(CAPABILITIES)
        return caps

    def checkperm(self, perm: bytes) -> None:
        """Raise ``PermissionDenied`` unless the grant allows ``perm`` (pull/push)."""
        grant = self.facts.grant
        allowed = grant.read if perm == b"pull" else grant.write if perm == b"push" else False
        if not allowed:
            raise PermissionDenied(grant.reason, permission=perm)

    # -- what the run hands back besides the answer ---------------------------------------

    def take_output(self) -> bytes:
        """The output captured since the last call (over SSH), emptying the buffer."""
        data = self.captured.getvalue()
        self.captured.seek(0)
        self.captured.truncate()
        return data

    def changed_protocaps(self) -> bytes | None:
        """The client's capability tokens if its ``protocaps`` command changed them."""
        if self._protocaps == set(parse_protocaps(self.facts.protocaps).tokens):
            return None
        return b" ".join(sorted(self._protocaps))
