"""Wire protocol v1 codecs, free of I/O.

This module owns every byte-level rule of the v1 protocol that does not need a
repository:

* the SSH v1 request stream (``SSHRequestParser``): command lines, length-prefixed
  arguments, ``*`` dictionary arguments, the ``unbundle`` payload chunk stream and the
  empty line that shuts the server down, parsed incrementally with bounded buffering;
* SSH v1 response framing (``ssh_*`` helpers);
* HTTP v1 argument decoding (``X-HgArg-N`` headers, ``httppostargs`` body prefix, query
  string) and ``X-HgProto-N`` client capabilities (``ProtoCaps``);
* the choice of media type and compression engine for a v1 stream response
  (``choose_response_format``, and ``choose_ssh_engine`` for SSH), the
  ``application/mercurial-0.2`` engine header and the incremental compressors;
* compressing a bundle2 stream inside itself, with its ``Compression`` stream
  parameter (``compress_bundle2``: how SSH, which has no media types, sends compressed
  bundles);
* ``batch`` argument escaping and the parsing of its ``cmds`` argument;
* the transport-specific capabilities the HTTP and SSH v1 servers add.

Commands are described to the codecs as data: a mapping from command name to its
argument names (``b"cmds *"`` or ``(b"cmds", b"*")``), never by importing Mercurial.
Malformed input raises ``RemoteProtocolError`` (or ``ArgumentError`` for a well-formed
request that lacks an argument); nothing else escapes the codecs.
"""

from __future__ import annotations

import enum
import string
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol
from urllib.parse import unquote_to_bytes

import zstandard

from hgwire_tw.core.errors import ArgumentError, CommandError, RemoteProtocolError

__all__ = [
    "MEDIA_TYPE_CBOR",
    "MEDIA_TYPE_ERROR",
    "MEDIA_TYPE_V01",
    "MEDIA_TYPE_V02",
    "SERVER_ENGINES",
    "ArgValue",
    "Bundle2Head",
    "Compressor",
    "HeadStatus",
    "ProtoCaps",
    "ResponseFormat",
    "SSHCommand",
    "SSHEvent",
    "SSHPayloadChunk",
    "SSHPayloadEnd",
    "SSHRequestParser",
    "SSHShutdown",
    "SSHUnknownCommand",
    "bundle2_engine",
    "choose_response_format",
    "choose_ssh_engine",
    "compress_bundle2",
    "decode_batch_cmds",
    "decode_batch_results",
    "decode_http_args",
    "encode_batch_cmds",
    "encode_batch_results",
    "escape_batch_arg",
    "http_capabilities",
    "join_header_values",
    "make_compressor",
    "media_type_02_prefix",
    "parse_arg_spec",
    "parse_bundle2_head",
    "parse_protocaps",
    "parse_urlencoded",
    "select_command_args",
    "ssh_bytes_response",
    "ssh_capabilities",
    "ssh_ooberror",
    "ssh_push_result",
    "ssh_unknown_command",
    "unescape_batch_arg",
]

MEDIA_TYPE_V01: Final = b"application/mercurial-0.1"
MEDIA_TYPE_V02: Final = b"application/mercurial-0.2"
MEDIA_TYPE_ERROR: Final = b"application/hg-error"
MEDIA_TYPE_CBOR: Final = b"application/mercurial-cbor"

#: Compression engines this server can produce on the v1 wire, by wire name.
SERVER_ENGINES: Final = ("zstd", "zlib", "none")

#: A decoded argument value: plain bytes, or the ``*`` dictionary of extra arguments.
ArgValue = bytes | dict[bytes, bytes]


def parse_arg_spec(spec: bytes | Sequence[bytes]) -> tuple[bytes, ...]:
    """Argument names of a command from Mercurial's space-separated spec (``b"cmds *"``)."""
    if isinstance(spec, bytes):
        return tuple(spec.split())
    return tuple(spec)


# ---------------------------------------------------------------------------------------
# SSH v1 requests
#
# A request is ``<command>\n`` followed, for each declared argument, by
# ``<name> <len>\n<value>``; the ``*`` argument is ``* <count>\n`` followed by ``count``
# ``<key> <len>\n<value>`` entries. After ``unbundle`` the server answers ``0\n`` and the
# client streams ``<len>\n<data>`` chunks ended by ``0\n``; the parser pauses after a
# payload command until the transport says whether it asked for the payload
# (``begin_payload``) or refused the push before asking (``skip_payload``), because only
# then does the client send anything. An empty request line shuts the connection down.
# Lines and argument values are bounded; anything malformed is a ``RemoteProtocolError``
# and leaves the parser in a terminal error state.


@dataclass(frozen=True, slots=True, kw_only=True)
class SSHCommand:
    """A complete request for a known command, with its decoded arguments."""

    name: bytes
    args: dict[bytes, ArgValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SSHUnknownCommand:
    """A request line naming no known command (answered with an empty string)."""

    line: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SSHPayloadChunk:
    """Bytes of the pushed payload, in order; chunk boundaries carry no meaning."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SSHPayloadEnd:
    """The payload's terminating ``0\\n`` arrived."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SSHShutdown:
    """The client sent an empty request line (or closed cleanly between requests)."""


SSHEvent = SSHCommand | SSHUnknownCommand | SSHPayloadChunk | SSHPayloadEnd | SSHShutdown


class _SSHState(enum.Enum):
    REQUEST = enum.auto()  # waiting for a request line
    ARG_HEADER = enum.auto()  # waiting for "<name> <len>" of a declared argument
    STAR_HEADER = enum.auto()  # waiting for "<key> <len>" inside a "*" argument
    VALUE = enum.auto()  # reading an argument value of known length
    AWAIT_PAYLOAD = enum.auto()  # after a payload command, until the transport decides
    PAYLOAD_LENGTH = enum.auto()  # waiting for a payload chunk length line
    PAYLOAD_DATA = enum.auto()  # inside a payload chunk
    CLOSED = enum.auto()  # after shutdown
    ERRORED = enum.auto()  # after a protocol error


_DIGITS = frozenset(b"0123456789")


def _parse_length(text: bytes, what: str, limit: int) -> int:
    """A strict non-negative decimal length (no sign, no spaces) not above ``limit``."""
    if not text or len(text) > 19 or not _DIGITS.issuperset(text):
        raise RemoteProtocolError(f"malformed {what}: {text[:40]!r}")
    value = int(text)
    if value > limit:
        raise RemoteProtocolError(f"{what} {value} exceeds the limit of {limit} bytes")
    return value


class SSHRequestParser:
    """Incremental parser of the SSH v1 request stream (client → server).

    ``commands`` maps each known command name to its argument spec. ``payload_commands``
    are followed by a payload once the server asks for it. ``feed`` returns the events
    that the bytes so far complete; any split of the same bytes gives the same requests.
    """

    def __init__(
        self,
        commands: Mapping[bytes, bytes | Sequence[bytes]],
        *,
        payload_commands: Iterable[bytes] = (b"unbundle",),
        max_line: int = 4096,
        max_argument: int = 64 * 1024 * 1024,
        max_request: int = 128 * 1024 * 1024,
        max_star_entries: int = 4096,
        max_payload: int | None = None,
        max_buffer: int = 1024 * 1024,
    ) -> None:
        self._specs = {name: parse_arg_spec(spec) for name, spec in commands.items()}
        self._payload_commands = frozenset(payload_commands)
        self._max_line = max_line
        self._max_argument = max_argument
        self._max_request = max_request
        self._max_star = max_star_entries
        self._max_payload = max_payload
        self._max_buffer = max_buffer
        self._buf = bytearray()
        self._state = _SSHState.REQUEST
        # the request being assembled
        self._name = b""
        self._spec: tuple[bytes, ...] = ()
        self._args: dict[bytes, ArgValue] = {}
        self._headers_left = 0
        self._star: dict[bytes, bytes] | None = None
        self._star_left = 0
        self._value_key = b""
        self._value_len = 0
        self._request_bytes = 0
        # the payload being streamed
        self._chunk_left = 0
        self._payload_total = 0

    @property
    def awaiting_payload_decision(self) -> bool:
        """Whether the parser paused after a payload command (see ``begin_payload``)."""
        return self._state is _SSHState.AWAIT_PAYLOAD

    @property
    def closed(self) -> bool:
        """Whether the client asked to shut down."""
        return self._state is _SSHState.CLOSED

    def feed(self, data: bytes) -> list[SSHEvent]:
        """Consume ``data`` and return the events it completes."""
        self._check_usable()
        if self._state is _SSHState.CLOSED:
            return []
        self._buf += data
        return self._run()

    def begin_payload(self) -> list[SSHEvent]:
        """The server asked for the payload (sent ``0\\n``): parse the chunk stream."""
        self._expect_decision()
        self._state = _SSHState.PAYLOAD_LENGTH
        self._payload_total = 0
        return self._run()

    def skip_payload(self) -> list[SSHEvent]:
        """The server answered the payload command without asking for its payload."""
        self._expect_decision()
        self._state = _SSHState.REQUEST
        return self._run()

    def end_of_input(self) -> list[SSHEvent]:
        """The client closed its side: a shutdown between requests, else an error."""
        self._check_usable()
        if self._state is _SSHState.CLOSED:
            return []
        if self._state is _SSHState.REQUEST and not self._buf:
            self._state = _SSHState.CLOSED
            return [SSHShutdown()]
        if self._state is _SSHState.AWAIT_PAYLOAD and not self._buf:
            self._state = _SSHState.CLOSED
            return [SSHShutdown()]
        self._state = _SSHState.ERRORED
        raise RemoteProtocolError("connection closed in the middle of a request")

    # -- internals ------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._state is _SSHState.ERRORED:
            raise RemoteProtocolError("the SSH request stream is already in error")

    def _expect_decision(self) -> None:
        self._check_usable()
        if self._state is not _SSHState.AWAIT_PAYLOAD:
            raise RemoteProtocolError("no payload command is waiting for a decision")

    def _run(self) -> list[SSHEvent]:
        events: list[SSHEvent] = []
        try:
            while self._step(events):
                pass
        except RemoteProtocolError:
            self._state = _SSHState.ERRORED
            self._buf.clear()
            raise
        if self._state is _SSHState.AWAIT_PAYLOAD and len(self._buf) > self._max_buffer:
            self._state = _SSHState.ERRORED
            raise RemoteProtocolError("client sent too much data before the server replied")
        return events

    def _line(self, what: str) -> bytes | None:
        """Take one ``\\n``-terminated line from the buffer (without the newline)."""
        end = self._buf.find(b"\n", 0, self._max_line + 1)
        if end < 0:
            if len(self._buf) > self._max_line:
                raise RemoteProtocolError(f"{what} longer than {self._max_line} bytes")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line

    def _step(self, events: list[SSHEvent]) -> bool:
        """Advance by one unit; False when more input (or a decision) is needed."""
        state = self._state
        if state is _SSHState.REQUEST:
            return self._step_request(events)
        if state is _SSHState.ARG_HEADER:
            return self._step_arg_header(events)
        if state is _SSHState.STAR_HEADER:
            return self._step_star_header(events)
        if state is _SSHState.VALUE:
            return self._step_value(events)
        if state is _SSHState.PAYLOAD_LENGTH:
            return self._step_payload_length(events)
        if state is _SSHState.PAYLOAD_DATA:
            return self._step_payload_data(events)
        # AWAIT_PAYLOAD, CLOSED: nothing to do until told
        return False

    def _step_request(self, events: list[SSHEvent]) -> bool:
        line = self._line("request line")
        if line is None:
            return False
        if not line:
            self._state = _SSHState.CLOSED
            self._buf.clear()
            events.append(SSHShutdown())
            return False
        spec = self._specs.get(line)
        if spec is None:
            events.append(SSHUnknownCommand(line=line))
            return True
        self._name = line
        self._spec = spec
        self._args = {}
        self._request_bytes = 0
        self._headers_left = len(spec)
        self._state = _SSHState.ARG_HEADER
        return True

    def _split_header(self, line: bytes, what: str) -> tuple[bytes, bytes]:
        key, sep, number = line.partition(b" ")
        if not sep or not key:
            raise RemoteProtocolError(f"malformed {what} line: {line[:40]!r}")
        return key, number

    def _step_arg_header(self, events: list[SSHEvent]) -> bool:
        if self._headers_left == 0:
            return self._finish_request(events)
        line = self._line("argument line")
        if line is None:
            return False
        key, number = self._split_header(line, "argument")
        if key not in self._spec:
            raise RemoteProtocolError(
                f"unexpected argument {key[:40]!r} for command {self._name[:40]!r}"
            )
        if key in self._args:
            raise RemoteProtocolError(f"argument {key[:40]!r} sent twice")
        self._headers_left -= 1
        if key == b"*":
            count = _parse_length(number, "argument count", self._max_star)
            star: dict[bytes, bytes] = {}
            self._args[b"*"] = star
            self._star = star
            self._star_left = count
            self._state = _SSHState.STAR_HEADER
            return True
        self._start_value(key, _parse_length(number, "argument length", self._max_argument))
        return True

    def _step_star_header(self, events: list[SSHEvent]) -> bool:
        if self._star_left == 0:
            self._star = None
            self._state = _SSHState.ARG_HEADER
            return True
        line = self._line("argument line")
        if line is None:
            return False
        key, number = self._split_header(line, "argument")
        assert self._star is not None
        if key in self._star:
            raise RemoteProtocolError(f"argument {key[:40]!r} sent twice")
        self._star_left -= 1
        self._start_value(key, _parse_length(number, "argument length", self._max_argument))
        return True

    def _start_value(self, key: bytes, length: int) -> None:
        self._request_bytes += length
        if self._request_bytes > self._max_request:
            raise RemoteProtocolError(
                f"arguments of {self._name[:40]!r} exceed {self._max_request} bytes"
            )
        self._value_key = key
        self._value_len = length
        self._state = _SSHState.VALUE

    def _step_value(self, events: list[SSHEvent]) -> bool:
        if len(self._buf) < self._value_len:
            return False
        value = bytes(self._buf[: self._value_len])
        del self._buf[: self._value_len]
        if self._star is not None:
            self._star[self._value_key] = value
            self._state = _SSHState.STAR_HEADER
        else:
            self._args[self._value_key] = value
            self._state = _SSHState.ARG_HEADER
        return True

    def _finish_request(self, events: list[SSHEvent]) -> bool:
        events.append(SSHCommand(name=self._name, args=self._args))
        self._args = {}
        if self._name in self._payload_commands:
            self._state = _SSHState.AWAIT_PAYLOAD
            return False
        self._state = _SSHState.REQUEST
        return True

    def _step_payload_length(self, events: list[SSHEvent]) -> bool:
        line = self._line("payload chunk length")
        if line is None:
            return False
        length = _parse_length(line, "payload chunk length", 2**40)
        if length == 0:
            events.append(SSHPayloadEnd())
            self._state = _SSHState.REQUEST
            return True
        self._payload_total += length
        if self._max_payload is not None and self._payload_total > self._max_payload:
            raise RemoteProtocolError(f"pushed data exceeds {self._max_payload} bytes")
        self._chunk_left = length
        self._state = _SSHState.PAYLOAD_DATA
        return True

    def _step_payload_data(self, events: list[SSHEvent]) -> bool:
        if not self._buf:
            return False
        take = min(self._chunk_left, len(self._buf))
        data = bytes(self._buf[:take])
        del self._buf[:take]
        self._chunk_left -= take
        # Merge with a chunk event emitted by this same call: fewer, larger events.
        if events and isinstance(events[-1], SSHPayloadChunk):
            events[-1] = SSHPayloadChunk(data=events[-1].data + data)
        else:
            events.append(SSHPayloadChunk(data=data))
        if self._chunk_left == 0:
            self._state = _SSHState.PAYLOAD_LENGTH
        return True


# ---------------------------------------------------------------------------------------
# SSH v1 responses


def ssh_bytes_response(data: bytes) -> bytes:
    """A string response: ``<len>\\n<data>``."""
    return b"%d\n%s" % (len(data), data)


def ssh_unknown_command() -> bytes:
    """The answer to a command the server does not know: an empty string."""
    return b"0\n"


def ssh_push_result(result: int) -> bytes:
    """A bundle1 push result: an empty string, then the integer as a string."""
    return ssh_bytes_response(b"") + ssh_bytes_response(b"%d" % result)


def ssh_ooberror(message: bytes) -> tuple[bytes, bytes]:
    """An out-of-band error as ``(stdout bytes, stderr bytes)``."""
    return b"\n", b"%s\n-\n" % message


def ssh_capabilities() -> list[bytes]:
    """The capabilities the SSH v1 transport adds to the command-level ones."""
    return [b"protocaps", b"batch"]


# ---------------------------------------------------------------------------------------
# HTTP v1 requests

_HEX = frozenset(b"0123456789abcdefABCDEF")


def join_header_values(
    get: Callable[[bytes], bytes | None], prefix: bytes, *, max_headers: int = 4096
) -> bytes:
    """Concatenate ``<prefix>-1``, ``<prefix>-2``, … until one is missing."""
    parts: list[bytes] = []
    for i in range(1, max_headers + 1):
        value = get(b"%s-%d" % (prefix, i))
        if value is None:
            return b"".join(parts)
        parts.append(value)
    raise RemoteProtocolError(f"more than {max_headers} {prefix.decode('latin-1')} headers")


def _unquote_plus(text: bytes, where: str) -> bytes:
    if b"%" not in text:
        return text.replace(b"+", b" ")
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == 0x25:  # %
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or not _HEX.issuperset(pair):
                raise RemoteProtocolError(f"bad percent escape in {where}: {text[i : i + 3]!r}")
            out.append(int(pair, 16))
            i += 3
        elif c == 0x2B:  # +
            out.append(0x20)
            i += 1
        else:
            out.append(c)
            i += 1
    return bytes(out)


def parse_urlencoded(data: bytes, *, where: str = "arguments") -> dict[bytes, list[bytes]]:
    """Strictly parse ``application/x-www-form-urlencoded`` bytes into lists of values.

    Empty fields are skipped; every other field must be ``key=value`` with valid percent
    escapes and only printable ASCII, otherwise ``RemoteProtocolError``.
    """
    result: dict[bytes, list[bytes]] = {}
    if not data:
        return result
    for field_ in data.split(b"&"):
        if not field_:
            continue
        if any(c < 0x21 or c > 0x7E for c in field_):
            raise RemoteProtocolError(f"invalid character in {where}")
        key, sep, value = field_.partition(b"=")
        if not sep:
            raise RemoteProtocolError(f"malformed field in {where}: {field_[:40]!r}")
        k = _unquote_plus(key, where)
        if not k:
            raise RemoteProtocolError(f"empty argument name in {where}")
        result.setdefault(k, []).append(_unquote_plus(value, where))
    return result


def decode_http_args(
    *,
    query: Mapping[bytes, Sequence[bytes]],
    header_args: bytes,
    post_args: bytes | None,
) -> dict[bytes, list[bytes]]:
    """All arguments of an HTTP v1 request, as Mercurial's server sees them.

    The query string comes first; POST-body arguments (``X-HgArgs-Post``) replace it key by
    key when present, otherwise the joined ``X-HgArg-N`` headers do.
    """
    args = {k: list(v) for k, v in query.items()}
    if post_args:
        args.update(parse_urlencoded(post_args, where="POST arguments"))
    else:
        args.update(parse_urlencoded(header_args, where="X-HgArg headers"))
    return args


def select_command_args(
    spec: bytes | Sequence[bytes], known: Mapping[bytes, Sequence[bytes]]
) -> dict[bytes, ArgValue]:
    """The arguments a command declares, taken from all request arguments.

    ``*`` collects every other argument (except ``cmd``) as a dictionary. A declared
    argument that is missing is an ``ArgumentError``.
    """
    names = parse_arg_spec(spec)
    out: dict[bytes, ArgValue] = {}
    for name in names:
        if name == b"*":
            out[b"*"] = {k: v[0] for k, v in known.items() if k != b"cmd" and k not in names and v}
        else:
            values = known.get(name)
            if not values:
                raise ArgumentError(b"missing argument: %s", (name,))
            out[name] = values[0]
    return out


# ---------------------------------------------------------------------------------------
# Client protocol capabilities (X-HgProto-N, or the SSH "protocaps" command)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtoCaps:
    """What a client said it accepts in ``X-HgProto-N`` (or ``protocaps`` over SSH)."""

    #: media type versions the client accepts, e.g. ``{b"0.1", b"0.2"}``
    media_types: frozenset[bytes] = frozenset()
    #: ``comp=`` list in client preference order, None when not sent
    compression: tuple[bytes, ...] | None = None
    partial_pull: bool = False
    cbor: bool = False
    #: every space-separated token, as Mercurial's ``getprotocaps()`` returns them
    tokens: frozenset[bytes] = frozenset()

    @property
    def accepted_engines(self) -> tuple[bytes, ...]:
        """The engines the client decodes; without ``comp=`` that is ``zlib,none``."""
        if self.compression is None:
            return (b"zlib", b"none")
        return self.compression


def parse_protocaps(value: bytes) -> ProtoCaps:
    """Parse a space-separated client capability list; unknown tokens are kept, ignored."""
    tokens = [t for t in value.split(b" ") if t]
    media: set[bytes] = set()
    compression: tuple[bytes, ...] | None = None
    for token in tokens:
        if token in (b"0.1", b"0.2"):
            media.add(token)
        elif token.startswith(b"comp=") and compression is None:
            compression = tuple(e for e in token[5:].split(b",") if e)
    return ProtoCaps(
        media_types=frozenset(media),
        compression=compression,
        partial_pull=b"partial-pull" in tokens,
        cbor=b"cbor" in tokens,
        tokens=frozenset(tokens),
    )


# ---------------------------------------------------------------------------------------
# Response media type and compression


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseFormat:
    """How a v1 stream response goes out: media type, engine and its level.

    ``bundle2`` (SSH): the engine compresses the payload of a bundle2 response inside
    the bundle, announced by its ``Compression`` stream parameter
    (``compress_bundle2``), instead of the whole body; ``media_type`` then plays no part.
    """

    media_type: bytes
    engine: str
    level: int | None = None
    bundle2: bool = False

    @property
    def prefix(self) -> bytes:
        """Bytes that start the body: the 0.2 engine header, or nothing for 0.1."""
        if self.media_type == MEDIA_TYPE_V02:
            return media_type_02_prefix(self.engine)
        return b""


def media_type_02_prefix(engine: str) -> bytes:
    """``application/mercurial-0.2`` body header: name length byte, then the name."""
    name = engine.encode("ascii")
    if not 0 < len(name) < 256:
        raise ValueError(f"bad engine name {engine!r}")
    return bytes((len(name),)) + name


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def choose_response_format(
    caps: ProtoCaps,
    server_engines: Sequence[str],
    *,
    prefer_uncompressed: bool = False,
    levels: Mapping[str, int] | None = None,
    min_send: str | None = None,
) -> ResponseFormat:
    """Media type and compression for a stream response (Mercurial's rules, the seed's).

    If the client accepts 0.2: a response preferring no compression goes out as 0.2
    with ``none``; otherwise the first of the *server's* engines that the client lists
    (default ``zlib,none``) wins. Without 0.2 or a common engine the answer is 0.1 with
    zlib at the configured zlib level. ``min_send`` (e.g. ``"0.2"``) refuses clients that
    would need an older media type (``CommandError``).
    """
    levels = levels or {}
    if b"0.2" in caps.media_types:
        if prefer_uncompressed:
            return ResponseFormat(media_type=MEDIA_TYPE_V02, engine="none")
        accepted = caps.accepted_engines
        for engine in server_engines:
            if engine.encode("ascii") in accepted:
                level = None if engine == "none" else levels.get(engine)
                return ResponseFormat(media_type=MEDIA_TYPE_V02, engine=engine, level=level)
    if min_send is not None and _version_tuple(min_send) > (0, 1):
        raise CommandError(
            b"this server sends media type %s or newer; upgrade your client",
            (min_send.encode("ascii"),),
        )
    return ResponseFormat(media_type=MEDIA_TYPE_V01, engine="zlib", level=levels.get("zlib"))


def choose_ssh_engine(caps: ProtoCaps, server_engines: Sequence[str]) -> str:
    """The engine for a bundle2 sent over SSH: the first of the server's engines that the
    client offered in the ``comp=`` token of its ``protocaps``, else ``"none"``.

    Unlike HTTP there is no default list: a client that sent no ``comp=`` (or no
    ``protocaps`` at all) never said it decodes anything, so it gets the raw bundle.
    """
    if caps.compression is None:
        return "none"
    for engine in server_engines:
        if engine.encode("ascii") in caps.compression:
            return engine
    return "none"


class Compressor(Protocol):
    """An incremental compressor: ``compress`` chunks, then ``finish`` once."""

    def compress(self, data: bytes) -> bytes:
        """Compress more data; may return b"" while the engine buffers."""

    def finish(self) -> bytes:
        """Flush everything buffered and end the stream."""


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class _Zlib:
    def __init__(self, level: int) -> None:
        self._obj = zlib.compressobj(level)

    def compress(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def finish(self) -> bytes:
        return self._obj.flush()


class _Zstd:
    def __init__(self, level: int) -> None:
        self._obj = zstandard.ZstdCompressor(level=level).compressobj()

    def compress(self, data: bytes) -> bytes:
        out: bytes = self._obj.compress(data)
        return out

    def finish(self) -> bytes:
        out: bytes = self._obj.flush()
        return out


def make_compressor(engine: str, level: int | None = None) -> Compressor:
    """An incremental compressor for a v1 engine: ``zstd`` (level 3), ``zlib`` (-1), ``none``."""
    if engine == "none":
        return _Identity()
    if engine == "zlib":
        return _Zlib(-1 if level is None else level)
    if engine == "zstd":
        return _Zstd(3 if level is None else level)
    raise ValueError(f"unknown v1 compression engine {engine!r}")


# ---------------------------------------------------------------------------------------
# bundle2 compressed inside itself
#
# A bundle2 starts ``HG20``, a big-endian signed 32-bit size and that many bytes of
# stream parameters (space-separated, URL-quoted ``name=value``). With a
# ``Compression=ZS`` (zstd) or ``GZ`` (zlib) parameter, everything after the parameter
# block is one stream of that engine; every Mercurial client since 4.x decodes it on any
# transport. Over SSH this is the only way to compress a response, since there is no
# media type to announce it with.

#: Magic of a bundle2 stream.
BUNDLE2_MAGIC: Final = b"HG20"

#: bundle2 ``Compression`` parameter values, by the engine's wire name.
BUNDLE2_COMPRESSION: Final = {"zstd": b"ZS", "zlib": b"GZ"}

#: Engine wire names by bundle2 ``Compression`` value (what a header can say).
_BUNDLE2_ENGINES: Final = {b"ZS": "zstd", b"GZ": "zlib", b"BZ": "bzip2", b"UN": "none"}

#: Largest parameter block read ahead before deciding (Mercurial writes a few bytes).
MAX_BUNDLE2_PARAMS: Final = 64 * 1024


class HeadStatus(enum.Enum):
    """Why ``parse_bundle2_head`` has no ``Bundle2Head`` to give."""

    INCOMPLETE = enum.auto()  # more bytes are needed
    NOT_BUNDLE2 = enum.auto()  # not a bundle2, or one whose head we do not touch


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle2Head:
    """The head of a bundle2 stream: its size in bytes and the raw parameter block."""

    size: int
    params: bytes

    @property
    def compression(self) -> bytes | None:
        """The ``Compression`` parameter's value (names are case-insensitive), or None."""
        for item in self.params.split(b" ") if self.params else ():
            name, _, value = item.partition(b"=")
            if unquote_to_bytes(name).lower() == b"compression":
                return unquote_to_bytes(value)
        return None


def parse_bundle2_head(
    data: bytes | bytearray, *, max_params: int = MAX_BUNDLE2_PARAMS
) -> Bundle2Head | HeadStatus:
    """The bundle2 head at the start of ``data``; ``INCOMPLETE`` until all of it is there.

    Anything that does not start ``HG20`` (a bundle1 or a bare changegroup), and a
    parameter block that is negative or larger than ``max_params``, is ``NOT_BUNDLE2``.
    """
    if len(data) < len(BUNDLE2_MAGIC):
        return HeadStatus.INCOMPLETE if BUNDLE2_MAGIC.startswith(data) else HeadStatus.NOT_BUNDLE2
    if not data.startswith(BUNDLE2_MAGIC):
        return HeadStatus.NOT_BUNDLE2
    if len(data) < 8:
        return HeadStatus.INCOMPLETE
    size = int.from_bytes(data[4:8], "big", signed=True)
    if size < 0 or size > max_params:
        return HeadStatus.NOT_BUNDLE2
    if len(data) < 8 + size:
        return HeadStatus.INCOMPLETE
    return Bundle2Head(size=8 + size, params=bytes(data[8 : 8 + size]))


def bundle2_engine(data: bytes) -> str:
    """The engine a stream starting with ``data`` is compressed with: the wire name of
    its bundle2 ``Compression`` parameter, or ``"none"`` (not a bundle2, no parameter,
    or a head that ``data`` does not hold whole)."""
    head = parse_bundle2_head(data)
    if isinstance(head, HeadStatus):
        return "none"
    value = head.compression
    if value is None:
        return "none"
    return _BUNDLE2_ENGINES.get(value, value.decode("ascii", "replace"))


def compress_bundle2(
    chunks: Iterable[bytes], engine: str, level: int | None = None, *, piece: int = 64 * 1024
) -> tuple[str, Iterator[bytes]]:
    """``(engine used, body)``: the stream ``chunks``, compressed inside its bundle2.

    Reads ahead only as far as the bundle2 head. If ``chunks`` is a bundle2 without a
    ``Compression`` parameter and ``engine`` is ``zstd`` or ``zlib``, the body is the
    head with ``Compression=ZS``/``GZ`` appended to its parameters, then the rest of the
    stream compressed as one stream of that engine, in pieces of about ``piece`` bytes.
    Anything else (no engine, not a bundle2, a bundle2 that names its own compression,
    so nothing is ever compressed twice) passes through unchanged with engine ``"none"``
    (or the engine its own header names).
    """
    source = iter(chunks)
    buf = bytearray()
    status: Bundle2Head | HeadStatus = HeadStatus.INCOMPLETE
    for data in source:
        buf += data
        status = parse_bundle2_head(buf)
        if status is not HeadStatus.INCOMPLETE:
            break
    code = BUNDLE2_COMPRESSION.get(engine)
    if not isinstance(status, Bundle2Head) or code is None or status.compression is not None:
        return bundle2_engine(bytes(buf)), _passthrough(bytes(buf), source)
    params = status.params + (b" " if status.params else b"") + b"Compression=" + code
    head = BUNDLE2_MAGIC + len(params).to_bytes(4, "big", signed=True) + params
    rest = bytes(buf[status.size :])
    return engine, _compressed_after(head, rest, source, make_compressor(engine, level), piece)


def _passthrough(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _compressed_after(
    head: bytes, first: bytes, rest: Iterator[bytes], compressor: Compressor, piece: int
) -> Iterator[bytes]:
    out = [head]
    size = len(head)
    for data in _passthrough(first, rest):
        packed = compressor.compress(data)
        if packed:
            out.append(packed)
            size += len(packed)
            if size >= piece:
                yield b"".join(out)
                out, size = [], 0
    out.append(compressor.finish())
    tail = b"".join(out)
    if tail:
        yield tail


# ---------------------------------------------------------------------------------------
# Capabilities the transports add


def http_capabilities(
    *,
    engines: Sequence[str],
    header_max: int = 1024,
    post_args: bool = False,
    min_recv: str | None = None,
    min_send: str | None = None,
) -> list[bytes]:
    """The capabilities the HTTP v1 transport adds to the command-level ones."""
    caps = [b"batch", b"httpheader=%d" % header_max]
    if post_args:
        caps.append(b"httppostargs")
    media = [b"0.1rx", b"0.1tx", b"0.2tx"]
    if min_recv is not None:
        media.append(b"minrx=" + min_recv.encode("ascii"))
    if min_send is not None:
        media.append(b"mintx=" + min_send.encode("ascii"))
    caps.append(b"httpmediatype=" + b",".join(media))
    if engines:
        # wire names are plain ASCII words; nothing needs URL quoting
        caps.append(b"compression=" + b",".join(e.encode("ascii") for e in engines))
    return caps


# ---------------------------------------------------------------------------------------
# batch

_BATCH_ESCAPES: Final = ((b":", b":c"), (b",", b":o"), (b";", b":s"), (b"=", b":e"))
_BATCH_ESCAPE_CHARS: Final = frozenset(b"cose")


def escape_batch_arg(plain: bytes) -> bytes:
    """Escape ``:``, ``,``, ``;`` and ``=`` for a batch argument or result."""
    for raw, escaped in _BATCH_ESCAPES:
        plain = plain.replace(raw, escaped)
    return plain


def unescape_batch_arg(escaped: bytes) -> bytes:
    """Undo ``escape_batch_arg``; an unknown or truncated escape is a protocol error."""
    if b":" not in escaped:
        return escaped
    out = bytearray()
    i = 0
    n = len(escaped)
    table = {ord("c"): b":", ord("o"): b",", ord("s"): b";", ord("e"): b"="}
    while i < n:
        c = escaped[i]
        if c == 0x3A:
            if i + 1 >= n or escaped[i + 1] not in _BATCH_ESCAPE_CHARS:
                raise RemoteProtocolError(f"bad escape in batch argument: {escaped[:40]!r}")
            out += table[escaped[i + 1]]
            i += 2
        else:
            out.append(c)
            i += 1
    return bytes(out)


_NAME_CHARS = frozenset((string.ascii_letters + string.digits + "_-").encode("ascii"))


def decode_batch_cmds(
    cmds: bytes, *, max_commands: int = 1024
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Parse ``batch``'s ``cmds``: ``<cmd> <k>=<v>,<k>=<v>;…`` into (name, args) pairs."""
    if not cmds:
        raise RemoteProtocolError("empty batch")
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    for pair in cmds.split(b";"):
        if len(out) >= max_commands:
            raise RemoteProtocolError(f"more than {max_commands} commands in a batch")
        name, sep, rest = pair.partition(b" ")
        if not sep or not name or not _NAME_CHARS.issuperset(name):
            raise RemoteProtocolError(f"malformed batch command: {pair[:40]!r}")
        args: dict[bytes, bytes] = {}
        for item in rest.split(b","):
            if not item:
                continue
            parts = item.split(b"=")
            if len(parts) != 2 or not parts[0]:
                raise RemoteProtocolError(f"malformed batch argument: {item[:40]!r}")
            key = unescape_batch_arg(parts[0])
            if key in args:
                raise RemoteProtocolError(f"batch argument {key[:40]!r} sent twice")
            args[key] = unescape_batch_arg(parts[1])
        out.append((name, args))
    return out


def encode_batch_cmds(commands: Iterable[tuple[bytes, Mapping[bytes, bytes]]]) -> bytes:
    """Encode (name, args) pairs as ``batch``'s ``cmds`` (arguments sorted by name)."""
    parts = []
    for name, args in commands:
        encoded = b",".join(
            b"%s=%s" % (escape_batch_arg(k), escape_batch_arg(v)) for k, v in sorted(args.items())
        )
        parts.append(b"%s %s" % (name, encoded))
    return b";".join(parts)


def encode_batch_results(results: Iterable[bytes]) -> bytes:
    """``batch``'s response: each result escaped, joined with ``;``."""
    return b";".join(escape_batch_arg(r) for r in results)


def decode_batch_results(data: bytes) -> list[bytes]:
    """Split and unescape a ``batch`` response."""
    return [unescape_batch_arg(r) for r in data.split(b";")]
