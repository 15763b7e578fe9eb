"""The one exception tree of hgwire_tw.

``ProtocolError`` covers everything that breaks the wire protocol. A *local* protocol
error means our own code used the core wrongly (a bug); a *remote* protocol error means
the peer sent something invalid, and is answered with an error reply and a clean close.
``CommandError`` is a user-visible failure of one command (bad argument, unknown node):
the connection stays healthy and the message goes back to the client.
"""

from __future__ import annotations

from collections.abc import Sequence


class HgWireError(Exception):
    """Root of every exception hgwire_tw raises on purpose."""


class ProtocolError(HgWireError):
    """The wire protocol was violated."""


class LocalProtocolError(ProtocolError):
    """Our side asked the core to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or frames that the protocol does not allow."""


class FrameError(RemoteProtocolError):
    """A frame could not be parsed or is not valid where it arrived."""


class CBORError(RemoteProtocolError):
    """A CBOR payload is malformed or uses a type Mercurial's subset forbids."""


class EncodingError(RemoteProtocolError):
    """A stream's content encoding is unknown, corrupt, or would decompress too far."""


class CommandError(HgWireError):
    """A command failed in a way the client should be told about.

    ``message`` is a bytes format string and ``args`` its ``%s`` arguments, the shape a
    real Mercurial client renders (``{status: error, error: {message, args}}``).
    """

    def __init__(self, message: bytes | str, args: Sequence[bytes] = ()) -> None:
        if isinstance(message, str):
            message = message.encode("utf-8")
        self.message: bytes = message
        self.args_: tuple[bytes, ...] = tuple(args)
        super().__init__(self.render())

    def render(self) -> str:
        """The message with its arguments substituted, as a client would show it."""
        text = self.message
        if self.args_:
            try:
                text = text % self.args_
            except (TypeError, ValueError):
                text = b" ".join((text, *self.args_))
        return text.decode("utf-8", "replace")


class ArgumentError(CommandError):
    """A command's arguments are missing, unknown or of the wrong kind."""


class PermissionDenied(HgWireError):
    """The caller may not run this command on this repository.

    ``permission`` names what was lacking (v1: ``b"pull"`` or ``b"push"``) when the
    refusal is raised away from the transport, which answers it in its own wire form.
    """

    def __init__(self, message: str = "", *, permission: bytes = b"") -> None:
        super().__init__(message or f"{permission.decode('ascii', 'replace')} not permitted")
        self.permission = permission


class UnknownRepository(HgWireError):
    """A repository name does not map to a served repository (or tries to escape one)."""
