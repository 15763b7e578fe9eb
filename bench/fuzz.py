"""Fuzz a running hgwire_tw with mutated *valid* inputs on every transport.

    .venv/bin/python bench/fuzz.py [--seed 1] [--frames 1000000 | --forever]
                                   [--batch 5000] [--rss-bound-mib 512] [--json FILE]

One server (HTTP, SSH and raw TCP on loopback ports; a small repository ``r`` that the
fuzz user may read and push to) gets, batch after batch:

* mutated frame sequences (wire protocol v2): valid request sequences made by our own
  ``ClientFrameReactor`` (settings frame, command requests with real arguments), then
  mutated per frame: length field, request id, stream id, stream flags, type and flags
  nibbles, the CBOR payload (as a value: wrong types, deep nesting, huge integers, text,
  floats, tags; and as bytes: flips, truncation, insertion), frames dropped, duplicated,
  swapped or cut. Sent over raw TCP (``hgwire-v2 r`` preamble) and over the SSH
  subsystem (``ssh -s ... hgwire``, one OpenSSH master connection multiplexing the
  sessions);
* mutated v1 requests: real HTTP requests of every v1 command (query-string,
  ``X-HgArg-N`` and ``X-HgArgs-Post`` arguments, ``X-HgProto``, an ``unbundle`` with a
  real bundle) with mutated arguments, headers, methods, paths, lengths and bytes; and
  ``hg serve --stdio`` sessions over SSH exec with mutated command names, argument
  counts, lengths and push payload framing;
* mutated v2 requests over HTTP: one command's frames (mutated as above) POSTed to
  ``/r/api/exp-http-v2-0003/ro/<command>`` (sometimes ``rw``, ``multirequest`` or a
  wrong command name, sometimes without the framing headers);
* the bad inputs of the security review among the valid ones, before mutation: v1
  ``getbundle`` with ``heads=zz``, a 41-digit head, no ``bundlecaps`` (bundle1),
  100,000 bundlecaps or ``includepats=path:../../etc``; ``changegroupsubset`` with
  thousands of random bases; ``unbundle`` with ``heads=zz`` or a garbage ``HG10GZ``
  payload; v2 ``manifestdata`` with ``tree=../..``, ambiguous ``lookup`` keys and
  200 KB paths (``filedata``, ``manifestdata`` trees, ``filesdata`` path filters).

The served repository holds a secret changeset on top of its public ones. No request
ever names it in full, but some ask for its hex prefix, its revision number or ``tip``;
every answer on every transport is searched for its node (hex and binary), and any
hit is counted as a leak (answers are mostly asked for uncompressed, so that the
search sees their bytes).

After each batch it checks that the server process is alive, that its resident memory
is under ``--rss-bound-mib``, and that a real clone (in turn: ``hg clone`` over HTTP,
``hg clone`` over SSH, ``hgwire clone`` over raw TCP) succeeds and equals the served
repository. At the end ``hg verify`` must pass on the served repository. It prints (and
with ``--json`` writes) frames sent, v1 requests, connections, stuck connections (no
close within ``--io-timeout`` after the client closed its side), peak RSS and the
server log's traceback count, and secret leaks. A crash or failed check stops the run
with exit status 1.

A fixed ``--seed`` makes the inputs repeatable; ``--frames`` bounds the run (the pytest
wrapper ``tests/test_fuzz.py`` runs a small count in CI); ``--forever`` runs until
interrupted (Ctrl-C prints the totals). Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cbor2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hgwire_tw.core.frames import FRAME_HEADER_SIZE, FRAMING_MEDIA_TYPE  # noqa: E402
from hgwire_tw.core.reactor import ClientFrameReactor  # noqa: E402
from tests.repobuilders import HG, hg, hg_env, log_nodes, make_linear_repo  # noqa: E402
from tests.servers import RunningServer, running_server  # noqa: E402
from tests.sshclient import keygen, public_key, ssh_argv  # noqa: E402

TCP = "tcp:0:interface=127.0.0.1"
FORCE = b"666f726365"  # hex("force"): push without a heads check


@dataclass
class Stats:
    """Totals of a fuzz run."""

    seed: int
    frames: int = 0
    frame_connections: int = 0
    ssh_subsystem_sessions: int = 0
    http_requests: int = 0
    #: HTTP answers "500 Internal Server Error" (a bug: bad input gets a protocol error)
    http_500: int = 0
    ssh_v1_sessions: int = 0
    #: v2 requests POSTed to the HTTP API
    http_v2_requests: int = 0
    #: answers holding the secret changeset's node (hex or binary): must stay 0
    secret_leaks: int = 0
    leaked_on: list[str] = field(default_factory=list)
    stuck: int = 0
    batches: int = 0
    clones: int = 0
    crashes: int = 0
    peak_rss_mib: float = 0.0
    tracebacks_logged: int = 0
    seconds: float = 0.0
    frames_per_second: float = 0.0
    by_transport: dict[str, int] = field(default_factory=dict)


# -- valid inputs ------------------------------------------------------------------------


@dataclass
class Corpus:
    """What valid requests are made of: the served repository's public nodes and a
    bundle; and the secret node no answer may hold."""

    nodes: list[bytes]
    bundle: bytes
    bundle1: bytes
    secret: bytes
    #: the secret node's revision number (``lookup`` must not resolve it)
    secret_rev: int

    def leaks(self, answer: bytes) -> bool:
        """Whether ``answer`` holds the secret node."""
        return self.secret.hex().encode() in answer or self.secret in answer


#: Long enough to trip any path bound (200 KB).
LONG_PATH = b"a/" * 100_000
#: 100,000 getbundle capabilities.
MANY_CAPS = b",".join(b"c%d" % i for i in range(100_000))
#: bundle2 capabilities as hg sends them in getbundle's ``bundlecaps``.
BUNDLECAPS = b"HG20,bundle2=HG20%0Achangegroup%3D01%2C02"


def _v2_requests(rng: random.Random, corpus: Corpus) -> list[tuple[bytes, dict[bytes, Any]]]:
    node = rng.choice(corpus.nodes)
    nodes = corpus.nodes
    return [
        (b"capabilities", {}),
        (b"heads", {}),
        (b"heads", {b"publiconly": True}),
        (b"known", {b"nodes": rng.sample(nodes, min(3, len(nodes)))}),
        (b"branchmap", {}),
        (b"listkeys", {b"namespace": b"bookmarks"}),
        (b"lookup", {b"key": rng.choice([b"tip", b".", node.hex().encode(), b"0"])}),
        (
            b"changesetdata",
            {
                b"revisions": [{b"type": b"changesetexplicit", b"nodes": [node]}],
                b"fields": {b"parents", b"revision"},
            },
        ),
        (
            b"changesetdata",
            {
                b"revisions": [
                    {b"type": b"changesetdagrange", b"roots": [], b"heads": [nodes[-1]]}
                ],
                b"fields": {b"bookmarks", b"phase"},
            },
        ),
        (
            b"filesdata",
            {
                b"revisions": [{b"type": b"changesetexplicit", b"nodes": [node]}],
                b"fields": {b"revision", b"parents"},
            },
        ),
        (b"manifestdata", {b"nodes": [], b"tree": b"", b"fields": {b"parents"}}),
        (b"filedata", {b"nodes": [], b"path": b"a.txt", b"fields": {b"revision"}}),
        (b"pushkey", {b"namespace": b"bookmarks", b"key": b"fz", b"old": b"", b"new": b""}),
        (b"rawstorefiledata", {b"files": [b"changelog"]}),
        *_v2_probes(rng, corpus, node),
    ]


def _v2_probes(
    rng: random.Random, corpus: Corpus, node: bytes
) -> list[tuple[bytes, dict[bytes, Any]]]:
    """The review's bad v2 inputs, and lookups aimed at the secret changeset."""
    secret = corpus.secret.hex().encode()
    return [
        (b"manifestdata", {b"tree": b"../..", b"nodes": [node], b"fields": set()}),
        (b"manifestdata", {b"tree": LONG_PATH, b"nodes": [node], b"fields": set()}),
        (b"lookup", {b"key": rng.choice(b"0123456789abcdef")}),  # often ambiguous
        (
            b"lookup",
            {b"key": rng.choice([secret[:12], secret[:4], b"tip", b"%d" % corpus.secret_rev])},
        ),
        (b"filedata", {b"path": LONG_PATH, b"nodes": [node], b"fields": set()}),
        (
            b"filesdata",
            {
                b"revisions": [{b"type": b"changesetexplicit", b"nodes": [node]}],
                b"pathfilter": {b"include": [b"path:" + LONG_PATH]},
                b"fields": set(),
            },
        ),
    ]


def valid_frame_sequence(
    rng: random.Random, corpus: Corpus, commands: int, names: list[bytes] | None = None
) -> list[bytes]:
    """The frames (each as wire bytes) of ``commands`` valid requests on one connection
    (their command names appended to ``names``). Most ask for identity-encoded output,
    so that the secret search sees the answer's bytes."""
    encodings = (b"identity",) if rng.random() < 0.8 else (b"zstd-8mb", b"zlib", b"identity")
    client = ClientFrameReactor(encodings=encodings)
    out: list[bytes] = []
    choices = _v2_requests(rng, corpus)
    for _ in range(commands):
        name, args = rng.choice(choices)
        if names is not None:
            names.append(name)
        _, actions = client.call_command(name, args)
        for action in actions:
            out.extend(_split_frames(action.data))
    return out


def _split_frames(data: bytes) -> Iterator[bytes]:
    pos = 0
    while pos + FRAME_HEADER_SIZE <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "little")
        end = pos + FRAME_HEADER_SIZE + length
        yield data[pos:end]
        pos = end


# -- mutations ---------------------------------------------------------------------------

_INTERESTING_INTS = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 2**31, 2**63, 2**64 - 1]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A CBOR-encodable value, often outside Mercurial's subset."""
    kind = rng.randrange(12 if depth < 6 else 7)
    if kind == 0:
        return rng.choice(_INTERESTING_INTS) * rng.choice([1, -1])
    if kind == 1:
        return rng.randbytes(rng.choice([0, 1, 20, 32, 40, 1000]))
    if kind == 2:
        return "text"
    if kind == 3:
        return rng.choice([1.5, float("nan"), float("inf")])
    if kind == 4:
        return rng.choice([True, False, None])
    if kind == 5:
        return b"tip" if rng.random() < 0.5 else b"\xff" * 20
    if kind == 6:
        return cbor2.CBORTag(rng.choice([258, 0, 1, 55799, 2**32]), b"x")
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 8:
        return {random_value(rng, 7): random_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    if kind == 9:  # deep nesting
        value: Any = b"deep"
        for _ in range(rng.choice([10, 63, 65, 200, 1000])):
            value = [value]
        return value
    if kind == 10:
        return [b"x"] * rng.choice([1000, 100_000])
    return {b"k": random_value(rng, depth + 1)}


def mutate_object(rng: random.Random, obj: Any, depth: int = 0) -> Any:
    """``obj`` with one part replaced, dropped or wrapped."""
    if isinstance(obj, dict) and obj and depth < 8:
        key = rng.choice(list(obj))
        new = dict(obj)
        action = rng.randrange(4)
        if action == 0:
            del new[key]
        elif action == 1:
            new[key] = random_value(rng)
        elif action == 2:
            new[random_value(rng, 7)] = random_value(rng)
        else:
            new[key] = mutate_object(rng, obj[key], depth + 1)
        return new
    if isinstance(obj, list) and obj and depth < 8:
        new_list = list(obj)
        i = rng.randrange(len(new_list))
        new_list[i] = mutate_object(rng, new_list[i], depth + 1)
        return new_list
    return random_value(rng)


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """A byte-level mutation: flip, insert, delete, truncate, repeat."""
    if not data:
        return rng.randbytes(rng.randrange(1, 16))
    b = bytearray(data)
    action = rng.randrange(6)
    i = rng.randrange(len(b))
    if action == 0:
        b[i] ^= 1 << rng.randrange(8)
    elif action == 1:
        b[i:i] = rng.randbytes(rng.randrange(1, 9))
    elif action == 2:
        del b[i : i + rng.randrange(1, 9)]
    elif action == 3:
        del b[i:]
    elif action == 4:
        b[i] = rng.choice([0x00, 0x1F, 0x3F, 0x5F, 0x7F, 0x9F, 0xBF, 0xDF, 0xFF])
    else:
        b[i:i] = b[i : i + 8] * rng.randrange(2, 50)
    return bytes(b)


def mutate_frame(rng: random.Random, frame: bytes) -> bytes:
    """One frame with its header or payload mutated (lengths, flags, ids, CBOR)."""
    header, payload = bytearray(frame[:FRAME_HEADER_SIZE]), frame[FRAME_HEADER_SIZE:]
    action = rng.randrange(9)
    if action == 0:  # length field lies
        length = rng.choice([0, 1, len(payload) + 1, len(payload) - 1, 0xFFFFFF, 32768, 32769])
        header[0:3] = max(0, length).to_bytes(3, "little")
    elif action == 1:  # request id
        header[3:5] = struct.pack("<H", rng.choice([0, 1, 2, 3, 0xFFFF, rng.randrange(65536)]))
    elif action == 2:  # stream id
        header[5] = rng.choice([0, 1, 2, 3, 0xFF, rng.randrange(256)])
    elif action == 3:  # stream flags
        header[6] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 0xFF, rng.randrange(256)])
    elif action == 4:  # frame flags
        header[7] = (header[7] & 0xF0) | rng.randrange(16)
    elif action == 5:  # frame type
        header[7] = (rng.randrange(16) << 4) | (header[7] & 0x0F)
    elif action in (6, 7):  # the CBOR payload, as a value
        try:
            value = cbor2.loads(payload)
        except Exception:
            value = None
        try:
            payload = cbor2.dumps(mutate_object(rng, value))
        except Exception:
            payload = mutate_bytes(rng, payload)
        if len(payload) > 0xFFFFFF:
            payload = payload[:0xFFFFFF]
        header[0:3] = len(payload).to_bytes(3, "little")
    else:  # the payload, as bytes (the length field kept honest)
        payload = mutate_bytes(rng, payload)[:0xFFFFFF]
        header[0:3] = len(payload).to_bytes(3, "little")
    return bytes(header) + payload


def mutate_sequence(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """Mutate a few frames and maybe the sequence itself (drop, duplicate, swap, cut)."""
    frames = list(frames)
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        i = rng.randrange(len(frames))
        frames[i] = mutate_frame(rng, frames[i])
    action = rng.randrange(8)
    if action == 0 and len(frames) > 1:
        del frames[rng.randrange(len(frames))]
    elif action == 1:
        i = rng.randrange(len(frames))
        frames.insert(i, frames[i])
    elif action == 2 and len(frames) > 1:
        i, j = rng.randrange(len(frames)), rng.randrange(len(frames))
        frames[i], frames[j] = frames[j], frames[i]
    elif action == 3:
        i = rng.randrange(len(frames))
        frames[i] = frames[i][: rng.randrange(len(frames[i]) + 1)]
    return frames


# -- v1 inputs ---------------------------------------------------------------------------


def _hex(nodes: list[bytes]) -> bytes:
    return b" ".join(n.hex().encode() for n in nodes)


def http_v1_request(rng: random.Random, corpus: Corpus) -> bytes:
    """A valid v1 HTTP request (then maybe mutated) as raw bytes."""
    from urllib.parse import quote_from_bytes

    nodes = corpus.nodes
    node = rng.choice(nodes).hex().encode()
    pair = node + b"-" + nodes[0].hex().encode()
    commands: list[tuple[bytes, dict[bytes, bytes]]] = [
        (b"capabilities", {}),
        (b"heads", {}),
        (b"branchmap", {}),
        (b"known", {b"nodes": _hex(rng.sample(nodes, min(3, len(nodes))))}),
        (b"lookup", {b"key": rng.choice([b"tip", b".", node, b"0"])}),
        (b"listkeys", {b"namespace": rng.choice([b"bookmarks", b"phases", b"namespaces"])}),
        (b"between", {b"pairs": pair}),
        (b"branches", {b"nodes": node}),
        (b"batch", {b"cmds": b"heads ;known nodes=" + node}),
        (
            b"getbundle",
            {b"bundlecaps": BUNDLECAPS, b"common": b"0" * 40, b"heads": node, b"cg": b"1"},
        ),
        (b"stream_out", {}),
        (b"clonebundles_manifest", {}),
        (b"unbundle", {b"heads": FORCE}),
        (b"pushkey", {b"namespace": b"bookmarks", b"key": b"fz", b"old": b"", b"new": b""}),
        *_v1_probes(rng, corpus, node),
    ]
    name, args = rng.choice(commands)
    if rng.random() < 0.6:
        args = {k: mutate_bytes(rng, v) if rng.random() < 0.7 else v for k, v in args.items()}
        if rng.random() < 0.2:
            args[mutate_bytes(rng, b"extra")] = rng.randbytes(rng.randrange(40))
        if rng.random() < 0.1:
            name = mutate_bytes(rng, name)
    encoded = b"&".join(
        quote_from_bytes(k).encode() + b"=" + quote_from_bytes(v).encode() for k, v in args.items()
    )
    body = b""
    headers: list[tuple[bytes, bytes]] = [(b"Host", b"127.0.0.1"), (b"Connection", b"close")]
    query = b"cmd=" + quote_from_bytes(name).encode()
    style = rng.randrange(3)
    if style == 0 and encoded:
        query += b"&" + encoded
    elif style == 1 and encoded:
        for i in range(0, len(encoded), 200):
            headers.append((b"X-HgArg-%d" % (i // 200 + 1), encoded[i : i + 200]))
    elif encoded:
        headers.append((b"X-HgArgs-Post", b"%d" % len(encoded)))
        body = encoded
    # mostly uncompressed answers: the secret search reads their bytes
    proto = rng.choice([b"0.2 comp=none", b"0.1 0.2 comp=zstd,zlib,none partial-pull"])
    headers.append((b"X-HgProto-1", proto))
    method = b"GET"
    if name in (b"unbundle", b"pushkey") or body:
        method = b"POST"
    if name == b"unbundle":
        garbage = b"HG10GZ" + rng.randbytes(2000)
        body += rng.choice([corpus.bundle, corpus.bundle1, garbage])
        headers.append((b"Content-Type", b"application/mercurial-0.1"))
    path = b"/r"
    if rng.random() < 0.1:
        path = rng.choice([b"/", b"/r/", b"//r", b"/r/../r", b"/r/x", b"/%00", b"/r/api"])
    if rng.random() < 0.1:
        method = rng.choice([b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"G\x00T"])
    if rng.random() < 0.3 and body:
        body = mutate_bytes(rng, body)
    length = len(body)
    if rng.random() < 0.05:
        length = rng.choice([0, max(0, length - 1), 10**12])
    if body or method == b"POST":
        headers.append((b"Content-Length", b"%d" % length))
    if rng.random() < 0.1:
        headers.append((mutate_bytes(rng, b"X-HgArg-1"), rng.randbytes(rng.randrange(300))))
    head = b"%s %s?%s HTTP/1.1\r\n" % (method, path, query)
    head += b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"
    request = head + body
    if rng.random() < 0.05:
        request = mutate_bytes(rng, request)
    return request


def _v1_probes(
    rng: random.Random, corpus: Corpus, node: bytes
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The review's bad v1 inputs, and lookups aimed at the secret changeset."""
    secret = corpus.secret.hex().encode()
    bases = b" ".join(rng.randbytes(20).hex().encode() for _ in range(rng.choice([10, 5000])))
    return [
        (b"getbundle", {b"bundlecaps": BUNDLECAPS, b"heads": b"zz"}),
        (b"getbundle", {b"bundlecaps": BUNDLECAPS, b"heads": node + b"a"}),  # 41 digits
        (b"getbundle", {b"heads": node, b"common": b"0" * 40}),  # bundle1: no bundlecaps
        (
            b"getbundle",
            {b"heads": node, b"bundlecaps": MANY_CAPS},
        ),
        (
            b"getbundle",
            {b"bundlecaps": BUNDLECAPS, b"heads": node, b"includepats": b"path:../../etc"},
        ),
        (b"changegroupsubset", {b"bases": bases, b"heads": node}),
        (b"unbundle", {b"heads": b"zz"}),
        (b"lookup", {b"key": rng.choice([secret[:12], secret[:4], b"%d" % corpus.secret_rev])}),
    ]


def http_v2_request(rng: random.Random, corpus: Corpus) -> tuple[bytes, int]:
    """A v2 command POSTed to the HTTP API, its frames mutated (usually) as over TCP;
    returns the raw request and its frame count."""
    names: list[bytes] = []
    frames = valid_frame_sequence(rng, corpus, 1, names)
    if rng.random() < 0.9:
        frames = mutate_sequence(rng, frames)
    body = b"".join(frames)
    command = names[0]
    if rng.random() < 0.1:
        command = rng.choice([b"multirequest", b"heads", mutate_bytes(rng, command)])
    perm = b"rw" if rng.random() < 0.1 else b"ro"
    from urllib.parse import quote_from_bytes

    path = b"/r/api/exp-http-v2-0003/%s/%s" % (perm, quote_from_bytes(command).encode())
    framing = FRAMING_MEDIA_TYPE
    headers = [(b"Host", b"127.0.0.1"), (b"Connection", b"close")]
    if rng.random() < 0.95:
        headers += [(b"Accept", framing), (b"Content-Type", framing)]
    headers.append((b"Content-Length", b"%d" % len(body)))
    head = b"POST %s HTTP/1.1\r\n" % path
    head += b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"
    return head + body, len(frames)


def _ssh_arg(name: bytes, value: bytes) -> bytes:
    return b"%s %d\n%s" % (name, len(value), value)


def ssh_v1_session(rng: random.Random, corpus: Corpus, commands: int) -> bytes:
    """What an ``hg serve --stdio`` client sends: the handshake and some commands, with
    mutations (names, argument counts and lengths, push payload framing, bytes)."""
    nodes = corpus.nodes
    zero_pair = b"0" * 40 + b"-" + b"0" * 40
    parts = [b"hello\n", b"between\n" + _ssh_arg(b"pairs", zero_pair)]
    for _ in range(commands):
        node = rng.choice(nodes).hex().encode()
        choice = rng.randrange(10)
        if choice == 0:
            part = b"heads\n"
        elif choice == 1:
            part = b"known\n" + _ssh_arg(b"nodes", node)
        elif choice == 2:
            part = b"lookup\n" + _ssh_arg(b"key", rng.choice([b"tip", b".", node]))
        elif choice == 3:
            part = b"listkeys\n" + _ssh_arg(b"namespace", b"bookmarks")
        elif choice == 4:
            part = b"batch\n" + _ssh_arg(b"cmds", b"heads ;known nodes=" + node)
        elif choice == 5:
            part = b"protocaps\n" + _ssh_arg(b"caps", b"streamreqs=generaldelta")
        elif choice == 6:
            args = [
                _ssh_arg(b"heads", node),
                _ssh_arg(b"common", b"0" * 40),
                _ssh_arg(b"bundlecaps", b"HG20"),
            ]
            part = b"getbundle\n* %d\n" % len(args) + b"".join(args)
        elif choice == 7:
            part = b"branchmap\n"
        else:
            bundle = rng.choice([corpus.bundle, corpus.bundle1])
            frames = b"".join(
                b"%d\n%s" % (len(c), c)
                for c in (bundle[i : i + 4096] for i in range(0, len(bundle), 4096))
            )
            part = b"unbundle\n" + _ssh_arg(b"heads", FORCE) + frames + b"0\n"
        if rng.random() < 0.5:
            part = mutate_bytes(rng, part)
        parts.append(part)
    if rng.random() < 0.5:
        i = rng.randrange(len(parts))
        parts[i] = mutate_bytes(rng, parts[i])
    return b"".join(parts)


# -- talking to the server ---------------------------------------------------------------


#: Most answer bytes kept (and searched for the secret) per exchange.
MAX_ANSWER = 16 * 1024 * 1024


#: Seconds an HTTP request is given to be answered before the fuzzer closes its side
#: (twisted.web takes a half-closed connection for a client gone, and answers nothing).
HTTP_GRACE = 3.0


def exchange_tcp(
    port: int,
    data: bytes,
    timeout: float,
    answer: bytearray | None = None,
    *,
    grace: float = 0.0,
) -> bool:
    """Send ``data`` on a new TCP connection, close our side (at once, or after
    ``grace`` seconds without an answer), read until the server closes. False when it
    did not close within ``timeout``. The answer (its first ``MAX_ANSWER`` bytes) is
    kept in ``answer`` when given."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            try:
                s.sendall(data)
                if not grace:
                    s.shutdown(socket.SHUT_WR)
            except OSError:
                return True  # the server closed on us mid-send: it refused the input
            half_close_at = time.monotonic() + grace if grace else None
            while time.monotonic() < deadline:
                until = deadline if half_close_at is None else min(deadline, half_close_at)
                s.settimeout(max(0.01, until - time.monotonic()))
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    if half_close_at is None or time.monotonic() < half_close_at:
                        return False
                    half_close_at = None  # no answer yet: end the request
                    try:
                        s.shutdown(socket.SHUT_WR)
                    except OSError:
                        return True
                    continue
                except OSError:
                    return True
                if not chunk:
                    return True
                if answer is not None and len(answer) < MAX_ANSWER:
                    answer += chunk[: MAX_ANSWER - len(answer)]
            return False
    except OSError:
        return True


def _tcp_exchange(
    port: int, data: bytes, timeout: float, *, grace: float = 0.0
) -> tuple[bool, bytes]:
    """(ended, answer) for one connection."""
    answer = bytearray()
    ended = exchange_tcp(port, data, timeout, answer, grace=grace)
    return ended, bytes(answer)


def answered_500(answer: bytes) -> bool:
    """Whether an HTTP answer is a 500 (a bug: bad input gets a protocol error)."""
    return answer.startswith(b"HTTP/1.1 500") or answer.startswith(b"HTTP/1.0 500")


class SSHMaster:
    """One OpenSSH master connection; sessions multiplex over it (``ssh -S``)."""

    def __init__(self, key: Path, port: int, work: Path) -> None:
        self.control = work / "ctl"
        self.base = [*ssh_argv(key), "-p", str(port), "-S", str(self.control)]
        self.proc = subprocess.Popen(
            [*self.base, "-M", "-N", "fuzz@127.0.0.1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=hg_env(),
        )
        deadline = time.monotonic() + 30
        while not self.control.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the SSH master connection did not start")
            time.sleep(0.05)

    def session(self, args: list[str], data: bytes, timeout: float) -> tuple[bool, bytes]:
        """Run one session with ``data`` on stdin: (ended in time, its output)."""
        try:
            proc = subprocess.run(
                [*self.base, *args],
                input=data,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                env=hg_env(),
            )
        except subprocess.TimeoutExpired:
            return False, b""
        return True, proc.stdout[:MAX_ANSWER]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def rss_bytes(pid: int) -> int:
    """Resident bytes of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# -- the run -----------------------------------------------------------------------------


@dataclass
class Site:
    server: RunningServer
    repo: Path
    key: Path
    work: Path
    ssh: SSHMaster


@contextmanager
def fuzz_site(work: Path) -> Iterator[tuple[Site, Corpus]]:
    """The server under fuzz, its repository (public changesets and a secret one on
    top) and the valid-input corpus."""
    repo = make_linear_repo(work / "r", commits=4)
    hg("phase", "--public", "-r", "all()", cwd=repo)
    key = keygen(work / "fuzz")
    access = work / "access.toml"
    access.write_text(
        f'[users.fuzz]\nkeys = ["{public_key(key)}"]\n'
        '[[rules]]\nrepos = "*"\nread = ["*", "anonymous"]\nwrite = ["fuzz", "anonymous"]\n'
    )
    pusher = work / "pusher"
    hg("clone", "-q", repo, pusher)
    (pusher / "pushed.txt").write_text("pushed by the fuzzer\n")
    hg("commit", "-A", "-q", "-m", "fuzz push", cwd=pusher)
    for kind, name in (("v2", "b2.hg"), ("gzip-v1", "b1.hg")):
        hg("bundle", "-q", "-t", kind, "-r", "tip", "--base", "tip^", work / name, cwd=pusher)
    # The secret changeset comes after the pusher's clone: no request carries it.
    (repo / "secret.txt").write_text("not for anyone's eyes\n")
    hg("commit", "-A", "-q", "--secret", "-m", "secret", cwd=repo)
    (secret,) = log_nodes(repo, "secret()")
    corpus = Corpus(
        nodes=[bytes.fromhex(n) for n in log_nodes(repo, "not secret()")],
        bundle=(work / "b2.hg").read_bytes(),
        bundle1=(work / "b1.hg").read_bytes(),
        secret=bytes.fromhex(secret),
        secret_rev=int(hg("log", "-r", secret, "-T", "{rev}", cwd=repo).stdout),
    )
    with running_server(
        work,
        "--repo",
        f"r={repo}",
        "--access",
        str(access),
        "--allow-push-over-http",
        "--ssh",
        TCP,
        "--tcp",
        TCP,
    ) as server:
        ssh = SSHMaster(key, server.ports["ssh"][0], work)
        try:
            yield Site(server, repo, key, work, ssh), corpus
        finally:
            ssh.close()


def check_clone(site: Site, n: int) -> None:
    """A real clone over one of the transports (in turn) equals the served repository."""
    dest = site.work / "check"
    shutil.rmtree(dest, ignore_errors=True)
    ssh_port, tcp_port = site.server.ports["ssh"][0], site.server.ports["tcp"][0]
    kind = n % 3
    if kind == 0:
        argv = [HG, "clone", "-q", "-U", f"{site.server.http_url}/r", str(dest)]
    elif kind == 1:
        ssh = " ".join(ssh_argv(site.key))
        argv = [
            HG,
            "clone",
            "-q",
            "-U",
            "--ssh",
            ssh,
            f"ssh://fuzz@127.0.0.1:{ssh_port}/r",
            str(dest),
        ]
    else:
        argv = [
            sys.executable,
            "-m",
            "hgwire_tw",
            "clone",
            "-q",
            f"hgwire://127.0.0.1:{tcp_port}/r",
            str(dest),
        ]
    proc = subprocess.run(argv, capture_output=True, timeout=120, env=hg_env())
    if proc.returncode != 0:
        raise AssertionError(f"clone {argv[-2]} failed: {proc.stdout!r} {proc.stderr!r}")
    got, want = sorted(log_nodes(dest)), sorted(log_nodes(site.repo, "not secret()"))
    if got != want:
        raise AssertionError(f"clone {argv[-2]} has {len(got)} changesets, the server {len(want)}")


SUBSYSTEM = ["-s", "fuzz@127.0.0.1", "hgwire"]


def run_batch(
    site: Site, corpus: Corpus, rng: random.Random, frames: int, stats: Stats, io_timeout: float
) -> None:
    """About ``frames`` mutated frames (TCP, SSH subsystem, HTTP v2) plus v1 requests."""
    tcp_port, http_port = site.server.ports["tcp"][0], site.server.http_port
    jobs: list[tuple[str, Callable[[], tuple[bool, bytes]]]] = []
    sent = 0
    while sent < frames:
        kind = rng.random()
        if kind < 0.05:
            over = "ssh-subsystem"
        elif kind < 0.15:
            over = "http-v2"
        else:
            over = "tcp"
        if over == "http-v2":
            request, count = http_v2_request(rng, corpus)
            sent += count
            stats.by_transport[over] = stats.by_transport.get(over, 0) + count
            jobs.append(
                (over, lambda r=request: _tcp_exchange(http_port, r, io_timeout, grace=HTTP_GRACE))
            )
            continue
        connections = 1 if over == "tcp" else 8  # an SSH session costs more: send more
        data = bytearray(b"hgwire-v2 r\n")
        if rng.random() < 0.03:
            data = bytearray(mutate_bytes(rng, bytes(data)))
        for _ in range(connections):
            seq = valid_frame_sequence(rng, corpus, rng.randrange(1, 6))
            if rng.random() < 0.9:
                seq = mutate_sequence(rng, seq)
            sent += len(seq)
            data += b"".join(seq)
            stats.by_transport[over] = stats.by_transport.get(over, 0) + len(seq)
        blob = bytes(data)
        if over == "ssh-subsystem":
            jobs.append((over, lambda b=blob: site.ssh.session(SUBSYSTEM, b, io_timeout)))
        else:
            jobs.append((over, lambda b=blob: _tcp_exchange(tcp_port, b, io_timeout)))
    for _ in range(max(4, frames // 100)):
        req = http_v1_request(rng, corpus)
        jobs.append(
            ("http", lambda r=req: _tcp_exchange(http_port, r, io_timeout, grace=HTTP_GRACE))
        )
    stdio = ["fuzz@127.0.0.1", "hg -R r serve --stdio"]
    for _ in range(max(1, frames // 1000)):
        session = ssh_v1_session(rng, corpus, rng.randrange(1, 8))
        jobs.append(("ssh-v1", lambda s=session: site.ssh.session(stdio, s, io_timeout)))
    rng.shuffle(jobs)

    def run(job: tuple[str, Callable[[], tuple[bool, bytes]]]) -> tuple[str, bool, bool, bool]:
        # Searched on the worker: answers are not kept beyond their job.
        kind, call = job
        ended, answer = call()
        failed = kind.startswith("http") and answered_500(answer)
        return kind, ended, failed, corpus.leaks(answer)

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(run, jobs))
    counters = {
        "tcp": "frame_connections",
        "ssh-subsystem": "ssh_subsystem_sessions",
        "http": "http_requests",
        "http-v2": "http_v2_requests",
        "ssh-v1": "ssh_v1_sessions",
    }
    for kind, ended, failed, leaked in outcomes:
        setattr(stats, counters[kind], getattr(stats, counters[kind]) + 1)
        stats.http_500 += failed
        if leaked:
            stats.secret_leaks += 1
            stats.leaked_on.append(kind)
        if not ended:
            stats.stuck += 1
    stats.frames += sent


def fuzz(
    *,
    seed: int,
    frames: int | None,
    batch: int,
    rss_bound_mib: int,
    io_timeout: float = 15.0,
    report: Callable[[Stats], None] = lambda s: None,
    stats: Stats | None = None,
    keep_log: Path | None = None,
) -> Stats:
    """Run the fuzzer; raises AssertionError when the server dies or a check fails
    (``stats``, when given, holds the totals so far either way)."""
    rng = random.Random(seed)
    stats = stats if stats is not None else Stats(seed=seed)
    work = Path(tempfile.mkdtemp(prefix="hgwire-fuzz-"))
    started = time.monotonic()
    try:
        with fuzz_site(work) as (site, corpus):
            pid = site.server.proc.pid
            try:
                while frames is None or stats.frames < frames:
                    want = batch if frames is None else min(batch, frames - stats.frames)
                    run_batch(site, corpus, rng, want, stats, io_timeout)
                    stats.batches += 1
                    if site.server.proc.poll() is not None:
                        stats.crashes += 1
                        raise AssertionError(f"the server died:\n{site.server.log()[-5000:]}")
                    rss = rss_bytes(pid)
                    stats.peak_rss_mib = max(stats.peak_rss_mib, round(rss / 2**20, 1))
                    if rss > rss_bound_mib * 2**20:
                        raise AssertionError(f"server RSS {rss >> 20} MiB over the bound")
                    check_clone(site, stats.batches)
                    stats.clones += 1
                    stats.seconds = round(time.monotonic() - started, 1)
                    report(stats)
            finally:
                stats.seconds = round(time.monotonic() - started, 1)
                stats.frames_per_second = round(stats.frames / max(stats.seconds, 0.1), 1)
                log = site.server.log()
                stats.tracebacks_logged = log.count("Traceback (most recent")
                if keep_log is not None:
                    keep_log.write_text(log)
            hg("verify", "-q", cwd=site.repo)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frames", type=int, default=100_000, help="frames to send in all")
    parser.add_argument("--forever", action="store_true", help="run until interrupted")
    parser.add_argument("--batch", type=int, default=5000, help="frames between health checks")
    parser.add_argument("--rss-bound-mib", type=int, default=512)
    parser.add_argument("--io-timeout", type=float, default=15.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep-log", type=Path, help="copy the server log here at the end")
    args = parser.parse_args()

    def report(s: Stats) -> None:
        print(
            f"batch {s.batches}: {s.frames} frames, {s.http_requests} HTTP v1, "
            f"{s.http_v2_requests} HTTP v2, {s.ssh_v1_sessions} SSH v1, {s.stuck} stuck, "
            f"{s.http_500} HTTP 500, {s.secret_leaks} secret leaks, "
            f"RSS peak {s.peak_rss_mib} MiB, "
            f"{s.seconds}s",
            file=sys.stderr,
            flush=True,
        )

    status = 0
    stats = Stats(seed=args.seed)
    try:
        fuzz(
            stats=stats,
            seed=args.seed,
            frames=None if args.forever else args.frames,
            batch=args.batch,
            rss_bound_mib=args.rss_bound_mib,
            io_timeout=args.io_timeout,
            report=report,
            keep_log=args.keep_log,
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        status = 1
    if stats.tracebacks_logged or stats.http_500 or stats.secret_leaks:
        print(
            f"FAILED: {stats.tracebacks_logged} tracebacks in the server log, "
            f"{stats.http_500} HTTP 500 answers, {stats.secret_leaks} answers holding "
            f"the secret node (keep the log with --keep-log)",
            file=sys.stderr,
        )
        status = 1
    print(json.dumps(asdict(stats), indent=2))
    if args.json:
        args.json.write_text(json.dumps(asdict(stats), indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
