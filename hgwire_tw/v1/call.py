"""One v1 command call, as a transport hands it to a worker: data only.

A transport decides everything a call depends on before it starts, on the reactor
thread, and freezes it in a ``V1Call``: the repository, the command and its arguments,
the protocol handler's facts (``ProtocolFacts``: the client, its grant, the spooled
push), how a stream answer may be encoded (``StreamFormats``) and the cache's server
salt. The worker runs the call (``hgwire_tw.v1.runner``) and hands back only the
objects it yields; it never calls into the transport.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hgwire_tw.core.v1 import ArgValue, ResponseFormat
from hgwire_tw.repo.registry import ServedRepository
from hgwire_tw.v1.protocol import ProtocolFacts
from hgwire_tw.v1.results import V1OutOfBandError

__all__ = ["FormatChoice", "StreamFormats", "V1Call"]

#: How a stream answer goes out: a format, None for the raw bytes, or the out-of-band
#: error that answers a client able to read no format the server sends (``min_send``).
FormatChoice = ResponseFormat | V1OutOfBandError | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamFormats:
    """The encodings negotiated for a stream answer, one per preference of the result.

    ``compressed`` serves results that prefer compression (bundles); ``uncompressed``
    those that do not (stream clones, bundle2 error replies). HTTP negotiates both from
    ``X-HgProto``; SSH only for ``getbundle`` when the client's ``protocaps`` offered an
    engine (``bundle2`` formats). The default sends every stream raw.
    """

    compressed: FormatChoice = None
    uncompressed: FormatChoice = None

    def pick(self, prefer_uncompressed: bool) -> FormatChoice:
        """The choice for a result that prefers (or not) to go out uncompressed."""
        return self.uncompressed if prefer_uncompressed else self.compressed


@dataclass(frozen=True, slots=True, kw_only=True)
class V1Call:
    """Everything one v1 command run needs, decided before it starts.

    ``args`` are the command's arguments selected per its spec (``*`` is a dict);
    ``salt`` is the server's cache salt (``commands.cachekeys.server_salt``).
    """

    served: ServedRepository
    name: bytes
    args: Mapping[bytes, ArgValue]
    facts: ProtocolFacts
    formats: StreamFormats = field(default_factory=StreamFormats)
    salt: bytes = b""

    @property
    def transport(self) -> str:
        """``"http"`` (also over TLS) or ``"ssh"``: the wire family, for metrics and keys."""
        return "ssh" if self.facts.transport == "ssh" else "http"
