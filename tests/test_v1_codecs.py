"""Tests of the sans-IO v1 codecs in ``hgwire_tw.core.v1``."""

from __future__ import annotations

import itertools
import subprocess
import sys
import urllib.parse
import zlib
from collections.abc import Iterator

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from hgwire_tw.core import v1
from hgwire_tw.core.errors import ArgumentError, CommandError, RemoteProtocolError

SPECS = {
    b"hello": b"",
    b"between": b"pairs",
    b"batch": b"cmds *",
    b"getbundle": b"*",
    b"known": b"nodes *",
    b"unbundle": b"heads",
    b"protocaps": b"caps",
    b"lookup": b"key",
}

# --------------------------------------------------------------------------- helpers


def encode_request(name: bytes, args: dict[bytes, object]) -> bytes:
    """What a real hg client writes for one SSH v1 request (arguments sorted by name)."""
    out = [name + b"\n"]
    for key in sorted(args):
        value = args[key]
        if isinstance(value, dict):
            out.append(b"%s %d\n" % (key, len(value)))
            for k, v in value.items():
                out.append(b"%s %d\n%s" % (k, len(v), v))
        else:
            assert isinstance(value, bytes)
            out.append(b"%s %d\n%s" % (key, len(value), value))
    return b"".join(out)


def encode_payload(chunks: list[bytes]) -> bytes:
    return b"".join(b"%d\n%s" % (len(c), c) for c in chunks if c) + b"0\n"


def feed_in_pieces(parser: v1.SSHRequestParser, data: bytes, cuts: list[int]) -> list[v1.SSHEvent]:
    """Feed ``data`` split at ``cuts``, answering every unbundle by asking for its payload."""
    events: list[v1.SSHEvent] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        events += parser.feed(data[a:b])
        while parser.awaiting_payload_decision:
            events += parser.begin_payload()
    return events


def normalise(events: list[v1.SSHEvent]) -> list[object]:
    """Merge adjacent payload chunks: chunk boundaries carry no meaning."""
    out: list[object] = []
    for ev in events:
        if isinstance(ev, v1.SSHPayloadChunk):
            if out and isinstance(out[-1], v1.SSHPayloadChunk):
                out[-1] = v1.SSHPayloadChunk(data=out[-1].data + ev.data)
                continue
        out.append(ev)
    return out


values = st.binary(max_size=64)
keys = st.binary(min_size=1, max_size=8).filter(lambda k: b" " not in k and b"\n" not in k)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, list[object]]:
    """A stream of random valid requests and the events they must produce."""
    data = []
    expected: list[object] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["hello", "between", "batch", "getbundle", "unknown", "push"]))
        if kind == "hello":
            data.append(encode_request(b"hello", {}))
            expected.append(v1.SSHCommand(name=b"hello", args={}))
        elif kind == "between":
            args: dict[bytes, object] = {b"pairs": draw(values)}
            data.append(encode_request(b"between", args))
            expected.append(v1.SSHCommand(name=b"between", args=args))  # type: ignore[arg-type]
        elif kind == "batch":
            star = draw(st.dictionaries(keys.filter(lambda k: k != b"cmds"), values, max_size=3))
            args = {b"cmds": draw(values), b"*": star}
            data.append(encode_request(b"batch", args))
            expected.append(v1.SSHCommand(name=b"batch", args=args))  # type: ignore[arg-type]
        elif kind == "getbundle":
            star = draw(st.dictionaries(keys, values, max_size=4))
            data.append(encode_request(b"getbundle", {b"*": star}))
            expected.append(v1.SSHCommand(name=b"getbundle", args={b"*": star}))
        elif kind == "unknown":
            line = draw(st.binary(min_size=1, max_size=30).filter(lambda b: b"\n" not in b))
            if line in SPECS:
                continue
            data.append(line + b"\n")
            expected.append(v1.SSHUnknownCommand(line=line))
        else:
            heads = draw(values)
            chunks = draw(st.lists(st.binary(min_size=1, max_size=50), max_size=4))
            data.append(encode_request(b"unbundle", {b"heads": heads}))
            data.append(encode_payload(chunks))
            expected.append(v1.SSHCommand(name=b"unbundle", args={b"heads": heads}))
            if chunks:
                expected.append(v1.SSHPayloadChunk(data=b"".join(chunks)))
            expected.append(v1.SSHPayloadEnd())
    if draw(st.booleans()):
        data.append(b"\n")
        expected.append(v1.SSHShutdown())
    return b"".join(data), expected


# --------------------------------------------------------------------------- SSH parser


@given(requests(), st.lists(st.integers(0, 10_000), max_size=12))
def test_ssh_any_split_gives_the_same_requests(
    case: tuple[bytes, list[object]], cuts: list[int]
) -> None:
    """Every way of cutting a request stream into reads yields the same events."""
    data, expected = case
    parser = v1.SSHRequestParser(SPECS)
    assert normalise(feed_in_pieces(parser, data, cuts)) == expected


@given(requests())
def test_ssh_byte_at_a_time(case: tuple[bytes, list[object]]) -> None:
    """Feeding one byte at a time works too."""
    data, expected = case
    parser = v1.SSHRequestParser(SPECS)
    assert normalise(feed_in_pieces(parser, data, list(range(len(data))))) == expected


@settings(max_examples=300)
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6))
def test_ssh_garbage_gives_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    """Random bytes produce events or RemoteProtocolError, nothing else."""
    parser = v1.SSHRequestParser(SPECS, max_line=64, max_argument=128)
    try:
        feed_in_pieces(parser, data, cuts)
        parser.end_of_input()
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):
            parser.feed(b"hello\n")


def test_ssh_real_handshake() -> None:
    """The real client's hello/between/protocaps handshake parses as three commands."""
    parser = v1.SSHRequestParser(SPECS)
    pairs = b"-".join([b"0" * 40] * 2)
    data = b"hello\nbetween\npairs 81\n" + pairs
    events = parser.feed(data)
    assert events == [
        v1.SSHCommand(name=b"hello", args={}),
        v1.SSHCommand(name=b"between", args={b"pairs": pairs}),
    ]
    caps = b"comp=zstd,zlib,none,bzip2 partial-pull"
    assert parser.feed(b"protocaps\ncaps %d\n%s" % (len(caps), caps)) == [
        v1.SSHCommand(name=b"protocaps", args={b"caps": caps})
    ]


def test_ssh_batch_star_first() -> None:
    """batch sends ``* 0`` before ``cmds``, as the real client does."""
    parser = v1.SSHRequestParser(SPECS)
    cmds = b"heads ;known nodes="
    data = b"batch\n* 0\ncmds %d\n%s" % (len(cmds), cmds)
    assert parser.feed(data) == [v1.SSHCommand(name=b"batch", args={b"cmds": cmds, b"*": {}})]


def test_ssh_unbundle_waits_for_decision_then_streams() -> None:
    """After unbundle the parser holds data until told; payload arrives as chunks."""
    parser = v1.SSHRequestParser(SPECS)
    events = parser.feed(b"unbundle\nheads 10\n666f726365")
    assert events == [v1.SSHCommand(name=b"unbundle", args={b"heads": b"666f726365"})]
    assert parser.awaiting_payload_decision
    assert parser.feed(b"4\nHG20") == []
    assert parser.begin_payload() == [v1.SSHPayloadChunk(data=b"HG20")]
    assert parser.feed(b"2\nab0\nhello\n") == [
        v1.SSHPayloadChunk(data=b"ab"),
        v1.SSHPayloadEnd(),
        v1.SSHCommand(name=b"hello", args={}),
    ]


def test_ssh_unbundle_refused_before_payload() -> None:
    """A push refused before its payload goes back to reading requests."""
    parser = v1.SSHRequestParser(SPECS)
    parser.feed(b"unbundle\nheads 0\n")
    assert parser.feed(b"hello\n") == []
    assert parser.skip_payload() == [v1.SSHCommand(name=b"hello", args={})]


def test_ssh_payload_limit() -> None:
    """A payload beyond max_payload is a protocol error."""
    parser = v1.SSHRequestParser(SPECS, max_payload=10)
    parser.feed(b"unbundle\nheads 0\n")
    parser.begin_payload()
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        parser.feed(b"11\n")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"x" * 5000, "longer than"),
        (b"lookup\nkey 99999999999\n", "exceeds"),
        (b"lookup\nkey -1\n", "malformed"),
        (b"lookup\nkey 1 \n", "malformed"),
        (b"lookup\nnode 3\nabc", "unexpected argument"),
        (b"lookup\nkey\n", "malformed"),
        (b"getbundle\n* 99999\n", "exceeds"),
        (b"getbundle\n* 2\na 1\nxa 1\ny", "twice"),
    ],
)
def test_ssh_protocol_errors(data: bytes, message: str) -> None:
    """Malformed requests are refused with a clear RemoteProtocolError."""
    parser = v1.SSHRequestParser(SPECS, max_argument=1000)
    with pytest.raises(RemoteProtocolError, match=message):
        parser.feed(data)


def test_ssh_buffer_bound_while_awaiting() -> None:
    """A client that floods before the server answers unbundle is cut off."""
    parser = v1.SSHRequestParser(SPECS, max_buffer=100)
    parser.feed(b"unbundle\nheads 0\n")
    with pytest.raises(RemoteProtocolError, match="too much"):
        parser.feed(b"x" * 101)


def test_ssh_shutdown_and_eof() -> None:
    """An empty line shuts down; EOF between requests too; EOF mid-request is an error."""
    parser = v1.SSHRequestParser(SPECS)
    assert parser.feed(b"hello\n\nhello\n") == [v1.SSHCommand(name=b"hello"), v1.SSHShutdown()]
    assert parser.closed and parser.feed(b"more") == []
    parser = v1.SSHRequestParser(SPECS)
    assert parser.end_of_input() == [v1.SSHShutdown()]
    parser = v1.SSHRequestParser(SPECS)
    parser.feed(b"lookup\nkey 5\nab")
    with pytest.raises(RemoteProtocolError):
        parser.end_of_input()


def test_ssh_responses() -> None:
    """SSH response framing matches the protocol description."""
    assert v1.ssh_bytes_response(b"abc") == b"3\nabc"
    assert v1.ssh_unknown_command() == b"0\n"
    assert v1.ssh_push_result(1) == b"0\n1\n1"
    assert v1.ssh_ooberror(b"boom") == (b"\n", b"boom\n-\n")
    assert v1.ssh_capabilities() == [b"protocaps", b"batch"]


# --------------------------------------------------------------------------- HTTP args


@given(st.dictionaries(st.binary(min_size=1, max_size=10), st.binary(max_size=40), max_size=6))
def test_urlencoded_round_trip(args: dict[bytes, bytes]) -> None:
    """What urllib encodes (as hg's client does), we decode back exactly."""
    encoded = urllib.parse.urlencode(sorted(args.items())).encode("ascii")
    assert v1.parse_urlencoded(encoded) == {k: [v] for k, v in args.items()}


@given(st.binary(max_size=200))
def test_urlencoded_garbage_only_protocol_errors(data: bytes) -> None:
    """Random bytes decode or raise RemoteProtocolError."""
    try:
        v1.parse_urlencoded(data)
    except RemoteProtocolError:
        pass


@pytest.mark.parametrize("bad", [b"a=%zz", b"a=%4", b"novalue", b"=x", b"a=b c", b"a=\xff"])
def test_urlencoded_strict(bad: bytes) -> None:
    """Bad escapes, fields without '=', spaces and non-ASCII are refused."""
    with pytest.raises(RemoteProtocolError):
        v1.parse_urlencoded(bad)


@given(
    st.dictionaries(st.binary(min_size=1, max_size=10), st.binary(max_size=300), max_size=6),
    st.integers(10, 100),
)
def test_header_args_split_and_join(args: dict[bytes, bytes], width: int) -> None:
    """Arguments cut across X-HgArg-N headers of any width join back."""
    encoded = urllib.parse.urlencode(sorted(args.items())).encode("ascii")
    headers = {
        b"X-HgArg-%d" % (i // width + 1): encoded[i : i + width]
        for i in range(0, len(encoded), width)
    }
    joined = v1.join_header_values(headers.get, b"X-HgArg")
    assert joined == encoded
    decoded = v1.decode_http_args(query={}, header_args=joined, post_args=None)
    assert decoded == {k: [v] for k, v in args.items()}


def test_post_args_replace_headers_and_query_is_kept() -> None:
    """POST-body arguments win over headers; query arguments stay unless replaced."""
    got = v1.decode_http_args(
        query={b"cmd": [b"known"], b"x": [b"q"]},
        header_args=b"nodes=ignored",
        post_args=b"nodes=abc&x=p",
    )
    assert got == {b"cmd": [b"known"], b"x": [b"p"], b"nodes": [b"abc"]}


def test_select_command_args() -> None:
    """Declared arguments are taken, '*' collects the rest except cmd, missing is an error."""
    known = {b"cmd": [b"batch"], b"cmds": [b"heads "], b"extra": [b"1", b"2"]}
    assert v1.select_command_args(b"cmds *", known) == {
        b"cmds": b"heads ",
        b"*": {b"extra": b"1"},
    }
    with pytest.raises(ArgumentError):
        v1.select_command_args(b"key", known)


def test_too_many_headers() -> None:
    """An endless series of X-HgArg headers is refused."""
    with pytest.raises(RemoteProtocolError):
        v1.join_header_values(lambda name: b"a", b"X-HgArg", max_headers=10)


# --------------------------------------------------------------------------- protocaps


def test_parse_protocaps_modern_client() -> None:
    """The modern client's X-HgProto-1 value."""
    caps = v1.parse_protocaps(b"0.1 0.2 comp=zstd,zlib,none,bzip2 partial-pull")
    assert caps.media_types == {b"0.1", b"0.2"}
    assert caps.compression == (b"zstd", b"zlib", b"none", b"bzip2")
    assert caps.partial_pull and not caps.cbor
    assert b"partial-pull" in caps.tokens


def test_parse_protocaps_empty_defaults() -> None:
    """No header: no media types, default engines zlib,none."""
    caps = v1.parse_protocaps(b"")
    assert caps.media_types == frozenset() and caps.accepted_engines == (b"zlib", b"none")
    assert v1.parse_protocaps(b"cbor").cbor


@given(st.binary(max_size=100))
def test_parse_protocaps_never_fails(data: bytes) -> None:
    """Any header value parses."""
    v1.parse_protocaps(data)


# --------------------------------------------------------------------------- negotiation

SERVER = ("zstd", "zlib")
LEVELS = {"zstd": 3, "zlib": -1}


@pytest.mark.parametrize(
    "proto, prefer_uncompressed, media, engine",
    [
        (b"0.1 0.2 comp=zstd,zlib,none,bzip2 partial-pull", False, v1.MEDIA_TYPE_V02, "zstd"),
        (b"0.1 0.2 comp=zlib,zstd", False, v1.MEDIA_TYPE_V02, "zstd"),  # server order wins
        (b"0.1 0.2 comp=zlib,none", False, v1.MEDIA_TYPE_V02, "zlib"),
        (b"0.1 0.2 comp=none", False, v1.MEDIA_TYPE_V01, "zlib"),  # no common engine
        (b"0.1 0.2", False, v1.MEDIA_TYPE_V02, "zlib"),  # default comp list zlib,none
        (b"0.1 comp=zstd", False, v1.MEDIA_TYPE_V01, "zlib"),  # no 0.2
        (b"", False, v1.MEDIA_TYPE_V01, "zlib"),  # legacy client
        (b"0.1 0.2 comp=zstd", True, v1.MEDIA_TYPE_V02, "none"),  # prefers uncompressed
        (b"0.1", True, v1.MEDIA_TYPE_V01, "zlib"),  # prefer-uncompressed needs 0.2
    ],
)
def test_choose_response_format(
    proto: bytes, prefer_uncompressed: bool, media: bytes, engine: str
) -> None:
    """Mercurial's negotiation rules: server order, 0.2 vs 0.1+zlib fallback."""
    fmt = v1.choose_response_format(
        v1.parse_protocaps(proto), SERVER, prefer_uncompressed=prefer_uncompressed, levels=LEVELS
    )
    assert (fmt.media_type, fmt.engine) == (media, engine)


def test_choose_response_format_server_none_and_min_send() -> None:
    """A server listing 'none' can send it; min_send=0.2 refuses 0.1-only clients."""
    fmt = v1.choose_response_format(v1.parse_protocaps(b"0.2 comp=none"), ("zstd", "none"))
    assert (fmt.engine, fmt.prefix) == ("none", b"\x04none")
    with pytest.raises(CommandError):
        v1.choose_response_format(v1.parse_protocaps(b"0.1"), SERVER, min_send="0.2")


@given(st.binary(max_size=5000), st.lists(st.integers(0, 5000), max_size=5))
@pytest.mark.parametrize("engine", ["zstd", "zlib", "none"])
def test_compressors_round_trip(engine: str, data: bytes, cuts: list[int]) -> None:
    """Incremental compression decodes back with the stock decompressors."""
    comp = v1.make_compressor(engine, {"zstd": 3, "zlib": -1}.get(engine))
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    out = b"".join(comp.compress(data[a:b]) for a, b in itertools.pairwise(points))
    out += comp.finish()
    if engine == "zstd":
        dec = zstandard.ZstdDecompressor().decompressobj()
        assert dec.decompress(out) == data
    elif engine == "zlib":
        assert zlib.decompress(out) == data
    else:
        assert out == data


def test_media_type_prefix() -> None:
    """The 0.2 body starts with the engine name's length and the name."""
    assert v1.media_type_02_prefix("zstd") == b"\x04zstd"
    assert v1.ResponseFormat(media_type=v1.MEDIA_TYPE_V01, engine="zlib").prefix == b""


def test_http_capabilities() -> None:
    """The HTTP transport's own capabilities."""
    assert v1.http_capabilities(engines=("zstd", "zlib")) == [
        b"batch",
        b"httpheader=1024",
        b"httpmediatype=0.1rx,0.1tx,0.2tx",
        b"compression=zstd,zlib",
    ]
    caps = v1.http_capabilities(
        engines=("zlib",), header_max=2048, post_args=True, min_recv="0.1", min_send="0.2"
    )
    assert b"httppostargs" in caps and b"httpheader=2048" in caps
    assert b"httpmediatype=0.1rx,0.1tx,0.2tx,minrx=0.1,mintx=0.2" in caps


# --------------------------------------------------------------------------- batch


@given(st.binary(max_size=100))
def test_batch_escape_round_trip(data: bytes) -> None:
    """Escaping then unescaping gives the data back; escaped data has no separators."""
    escaped = v1.escape_batch_arg(data)
    assert not set(escaped) & set(b",;=")
    assert v1.unescape_batch_arg(escaped) == data


names = st.sampled_from([b"heads", b"known", b"lookup", b"listkeys", b"clonebundles_manifest"])


@given(
    st.lists(
        st.tuples(names, st.dictionaries(st.binary(min_size=1, max_size=8), values, max_size=3)),
        min_size=1,
        max_size=5,
    )
)
def test_batch_cmds_round_trip(commands: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
    """Encoded batch commands decode back to the same names and arguments."""
    assert v1.decode_batch_cmds(v1.encode_batch_cmds(commands)) == commands


@given(st.lists(st.binary(max_size=50), min_size=1, max_size=5))
def test_batch_results_round_trip(results: list[bytes]) -> None:
    """Batch results survive escaping and joining."""
    assert v1.decode_batch_results(v1.encode_batch_results(results)) == results


def test_batch_real_example() -> None:
    """The real client's clone batch."""
    assert v1.decode_batch_cmds(b"heads ;known nodes=") == [
        (b"heads", {}),
        (b"known", {b"nodes": b""}),
    ]


@pytest.mark.parametrize("bad", [b"", b"heads", b"heads a", b"heads a=b=c", b"x y=:z", b"h! "])
def test_batch_cmds_malformed(bad: bytes) -> None:
    """Malformed cmds are protocol errors."""
    with pytest.raises(RemoteProtocolError):
        v1.decode_batch_cmds(bad)


@given(st.binary(max_size=100))
def test_batch_garbage_only_protocol_errors(data: bytes) -> None:
    """Random cmds decode or raise RemoteProtocolError."""
    try:
        v1.decode_batch_cmds(data)
    except RemoteProtocolError:
        pass


def test_core_v1_imports_no_twisted_or_mercurial() -> None:
    """The codec stays sans-IO: importing it pulls in neither Twisted nor Mercurial."""
    code = (
        "import sys, hgwire_tw.core.v1;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('twisted', 'mercurial')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- SSH compression


@pytest.mark.parametrize(
    ("protocaps", "server", "engine"),
    [
        (b"comp=zstd,zlib,none,bzip2 partial-pull", ("zstd", "zlib"), "zstd"),
        (b"comp=zlib,none,bzip2 partial-pull", ("zstd", "zlib"), "zlib"),
        # the server's order wins over the client's
        (b"comp=zlib,zstd", ("zstd", "zlib"), "zstd"),
        (b"comp=zstd,zlib", ("zlib", "zstd"), "zlib"),
        (b"comp=zstd,zlib,none", ("none", "zstd"), "none"),
        (b"comp=bzip2", ("zstd", "zlib"), "none"),
        # no comp= at all: unlike HTTP there is no zlib default
        (b"partial-pull", ("zstd", "zlib"), "none"),
        (b"", ("zstd", "zlib"), "none"),
    ],
)
def test_choose_ssh_engine(protocaps: bytes, server: tuple[str, ...], engine: str) -> None:
    assert v1.choose_ssh_engine(v1.parse_protocaps(protocaps), server) == engine


def _bundle2(params: bytes, payload: bytes) -> bytes:
    return b"HG20" + len(params).to_bytes(4, "big") + params + payload


PAYLOAD = b"".join(b"part %d of something compressible\n" % i for i in range(2000))


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i = [], 0
    for n in itertools.cycle(sizes):
        if i >= len(data):
            return out
        out.append(data[i : i + n])
        i += n
    return out


@pytest.mark.parametrize("sizes", [[1], [3, 5], [7], [4096]])
@pytest.mark.parametrize(("engine", "code"), [("zstd", b"ZS"), ("zlib", b"GZ")])
def test_compress_bundle2(sizes: list[int], engine: str, code: bytes) -> None:
    """The head gains Compression=..., the rest is one stream of that engine; however the
    source is split, the bytes are the same."""
    source = _bundle2(b"a=b", PAYLOAD)
    used, body = v1.compress_bundle2(_split(source, sizes), engine, piece=1000)
    out = b"".join(body)
    assert used == engine
    params = b"a=b Compression=" + code
    head = b"HG20" + len(params).to_bytes(4, "big") + params
    assert out.startswith(head)
    rest = out[len(head) :]
    if engine == "zstd":
        assert zstandard.ZstdDecompressor().decompressobj().decompress(rest) == PAYLOAD
    else:
        assert zlib.decompress(rest) == PAYLOAD
    assert len(rest) < len(PAYLOAD) // 5
    assert v1.bundle2_engine(out) == engine


def test_compress_bundle2_without_params() -> None:
    used, body = v1.compress_bundle2([_bundle2(b"", PAYLOAD)], "zlib")
    out = b"".join(body)
    assert used == "zlib"
    assert out.startswith(b"HG20\x00\x00\x00\x0eCompression=GZ")
    assert zlib.decompress(out[22:]) == PAYLOAD


@pytest.mark.parametrize(
    ("source", "engine", "named"),
    [
        # already compressed: never twice, whatever the spelling of the name
        (_bundle2(b"Compression=ZS", PAYLOAD), "zlib", "zstd"),
        (_bundle2(b"x=1 compression=GZ", PAYLOAD), "zstd", "zlib"),
        (_bundle2(b"%43ompression=UN", PAYLOAD), "zstd", "none"),
        # not a bundle2: bundle1, a bare changegroup, too short, empty
        (b"HG10UN" + PAYLOAD, "zstd", "none"),
        (b"\x00\x00\x01\x00" + PAYLOAD, "zstd", "none"),
        (b"HG2", "zstd", "none"),
        (b"", "zstd", "none"),
        # a parameter block that is negative or too large to read ahead
        (b"HG20\xff\xff\xff\xff" + PAYLOAD, "zstd", "none"),
        (b"HG20\x01\x00\x00\x00" + PAYLOAD, "zstd", "none"),
        # a head cut short
        (b"HG20\x00\x00\x00\x10abc", "zstd", "none"),
        # no engine, or one bundle2 has no name for
        (_bundle2(b"", PAYLOAD), "none", "none"),
        (_bundle2(b"", PAYLOAD), "bzip2", "none"),
    ],
)
def test_compress_bundle2_passes_through(source: bytes, engine: str, named: str) -> None:
    """Anything the rewrite does not apply to is sent byte for byte as it came."""
    used, body = v1.compress_bundle2(_split(source, [5]), engine)
    assert b"".join(body) == source
    assert used == named


def test_compress_bundle2_reads_only_the_head_ahead() -> None:
    """Deciding takes the head's pieces only; the rest is read as the body is."""
    taken: list[bytes] = []

    def source() -> Iterator[bytes]:
        for piece in [b"HG20", b"\x00\x00\x00\x00", b"a" * 100, b"b" * 100]:
            taken.append(piece)
            yield piece

    used, body = v1.compress_bundle2(source(), "zstd")
    assert used == "zstd" and len(taken) == 2
    out = b"".join(body)
    assert len(taken) == 4
    assert zstandard.ZstdDecompressor().decompressobj().decompress(out[22:]) == b"a" * 100 + (
        b"b" * 100
    )
