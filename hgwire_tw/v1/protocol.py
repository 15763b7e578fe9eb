"""Our protocol-handler object, as Mercurial's v1 command functions see it.

Mercurial's v1 commands (``mercurial.wireprotov1server.commands``) are written against a
small "protocol handler" interface: ``name``, ``getargs``, ``getprotocaps``,
``getpayload``, ``mayberedirectstdio``, ``client``, ``addcapabilities``, ``checkperm``.
``V1Protocol`` implements it for both v1 transports of hgwire_tw. Everything it answers
was decided by the transport beforehand (arguments decoded by ``hgwire_tw.core.v1``,
permission decisions made from the access policy, the payload already spooled to a
file), so the object can be handed to a worker thread and used there without touching
the reactor.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, Literal

from hgwire_tw.core.v1 import BUNDLE2_MAGIC, ArgValue, ProtoCaps, parse_arg_spec, parse_protocaps

__all__ = ["BUNDLE2_MAGIC", "PAYLOAD_CHUNK", "V1Protocol", "file_payload"]

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


def _no_payload() -> Iterator[bytes]:
    return iter(())


class V1Protocol:
    """One v1 request's (HTTP) or connection's (SSH) protocol handler.

    ``args`` are the current command's arguments, already selected per its spec (``*``
    is a dict). ``checkperm`` raises the transport's own refusal (``b"pull"`` or
    ``b"push"``), so ``batch``'s per-command checks are ours too. ``payload`` returns
    an iterator over the pushed bytes. ``capabilities`` are appended by
    ``addcapabilities`` (with the clone bundle ones when ``clonebundles`` has a bundle);
    ``server_config`` is applied to the repository's ``ui`` before
    a command runs (e.g. ``server.uncompressed=false`` when stream clones are off).
    """

    def __init__(
        self,
        *,
        transport: TransportName,
        checkperm: Callable[[bytes], None],
        args: Mapping[bytes, ArgValue] | None = None,
        protocaps: bytes = b"",
        payload: Callable[[], Iterator[bytes]] | None = None,
        remote_host: str = "",
        remote_user: str | None = None,
        capabilities: Sequence[bytes] = (),
        server_config: Sequence[tuple[bytes, bytes, bytes]] = (),
        clonebundles: Any = None,
    ) -> None:
        self.transport = transport
        self._checkperm = checkperm
        self.args: dict[bytes, ArgValue] = dict(args or {})
        # Mercurial's ``protocaps`` command assigns this attribute directly over SSH.
        self._protocaps: set[bytes] = set(parse_protocaps(protocaps).tokens)
        self._payload = payload or _no_payload
        self._remote_host = remote_host
        self._remote_user = remote_user
        self._capabilities = list(capabilities)
        self._server_config = tuple(server_config)
        #: ``hgwire_tw.clonebundles.CloneBundleSource`` when clone bundles are on: it
        #: answers ``clonebundles``/``clonebundles_manifest`` and decides whether their
        #: capabilities are advertised.
        self.clonebundles = clonebundles
        self.ui: Any = None
        #: Output captured by ``mayberedirectstdio`` that did not go into a response
        #: (over SSH Mercurial returns no output; the transport may send it to stderr).
        self.captured = io.BytesIO()

    # -- set-up by the dispatcher, on the worker thread ---------------------------------

    def bind(self, repo: Any) -> None:
        """Attach to the worker thread's repository before running a command."""
        self.ui = repo.ui
        for section, name, value in self._server_config:
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
        return self._payload()

    def payload_is_bundle2(self) -> bool:
        """Whether the pushed data is a bundle2 (so the client expects a bundle2 reply).

        Reads the first piece of the spooled payload again (worker thread).
        """
        pieces = self._payload()
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
        return self._remote_host

    def client(self) -> bytes:
        """``remote:<scheme>:<host>:<user>`` (hooks see it as ``HG_URL``; over SSH the
        user is the one the key logged in as); ``remote:http`` makes bundle2 capture
        output."""
        from urllib.parse import quote

        return b"remote:%s:%s:%s" % (
            self.transport.encode("ascii"),
            quote(self._remote_host).encode("ascii"),
            quote(self._remote_user or "").encode("ascii"),
        )

    def addcapabilities(self, repo: Any, caps: list[bytes]) -> list[bytes]:
        """Add the transport's own capabilities to the command-level ones."""
        caps.extend(self._capabilities)
        if self.clonebundles is not None and self.clonebundles.advertise(repo):
            from hgwire_tw.clonebundles import CAPABILITIES

            caps.extend(CAPABILITIES)
        return caps

    def checkperm(self, perm: bytes) -> None:
        """Raise the transport's refusal unless ``perm`` (pull/push) is granted."""
        self._checkperm(perm)
