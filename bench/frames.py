"""Frame-layer benchmark: reactor throughput and what compression contexts buy.

Run with ``.venv/bin/python bench/frames.py``. It builds a small Mercurial repository
with the virtualenv's ``hg``, bundles it (``hg bundle --all -t none-v2``, uncompressed,
so the frame layer does the compressing) and uses the bundle as a realistic payload:

1. Throughput: the bundle goes from a ServerFrameReactor to a ClientFrameReactor as
   32 KiB objects, for identity, zlib and zstd-8mb; encode (server) and decode (client)
   are timed separately.
2. Compressed size of the bundle cut into 16 "responses" (``--responses``), three
   ways: every 32 KiB frame compressed on its own, one context per response, and one
   context spanning all responses (what a stream does).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hgwire_tw.core.reactor import (  # noqa: E402
    ClientFrameReactor,
    DuplexMode,
    ResponseObjects,
    RunCommand,
    ServerFrameReactor,
)
from hgwire_tw.core.streams import ENCODINGS, OutputStream  # noqa: E402

FRAME = 32768


def build_bundle(commits: int, files: int) -> bytes:
    """An uncompressed bundle of a freshly built repository."""
    from tests.repobuilders import hg, make_bench_repo

    with tempfile.TemporaryDirectory(prefix="hgwire-bench-") as tmp:
        repo = make_bench_repo(Path(tmp) / "repo", commits=commits, files=files)
        out = Path(tmp) / "all.hg"
        hg("bundle", "--all", "-t", "none-v2", str(out), cwd=repo)
        return out.read_bytes()


def throughput(encoding: bytes, payload: bytes, rounds: int) -> tuple[float, float, int]:
    """(encode MB/s, decode MB/s, wire bytes) of ``payload`` sent ``rounds`` times."""
    objs = [payload[i : i + FRAME] for i in range(0, len(payload), FRAME)]
    encode_time = decode_time = 0.0
    wire = 0
    for _ in range(rounds):
        client = ClientFrameReactor(encodings=[encoding])
        server = ServerFrameReactor(mode=DuplexMode.FULL)
        rid, actions = client.call_command(b"getbundle", {})
        (run,) = [a for a in server.receive_data(actions[0].data) if isinstance(a, RunCommand)]
        start = time.perf_counter()
        chunks: list[bytes] = []
        for obj in objs:
            chunks.extend(a.data for a in server.response_objects(rid, [obj]))  # type: ignore[union-attr]
        chunks.extend(a.data for a in server.response_end(rid))  # type: ignore[union-attr]
        mid = time.perf_counter()
        got = 0
        for chunk in chunks:
            for event in client.receive_data(chunk):
                if isinstance(event, ResponseObjects):
                    got += sum(len(o) for o in event.objects if isinstance(o, bytes))
        end = time.perf_counter()
        assert got == len(payload), (got, len(payload), run)
        encode_time += mid - start
        decode_time += end - mid
        wire = sum(map(len, chunks))
    total = len(payload) * rounds / 1e6
    return total / encode_time, total / decode_time, wire


def _compressors() -> dict[str, Callable[[], Callable[[bytes, bool], bytes]]]:
    def zlib_factory() -> Callable[[bytes, bool], bytes]:
        obj = zlib.compressobj()
        return lambda data, flush: (
            obj.compress(data) + (obj.flush(zlib.Z_SYNC_FLUSH) if flush else b"")
        )

    def zstd_factory() -> Callable[[bytes, bool], bytes]:
        obj = zstandard.ZstdCompressor(level=3).compressobj()
        return lambda data, flush: (
            obj.compress(data) + (obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) if flush else b"")
        )

    return {"zlib": zlib_factory, "zstd-8mb": zstd_factory}


def sizes(payload: bytes, count: int) -> dict[str, tuple[int, int, int]]:
    """Compressed size per way of compressing, for zlib and zstd."""
    step = -(-len(payload) // count)
    responses = [payload[i : i + step] for i in range(0, len(payload), step)]
    result = {}
    for name, factory in _compressors().items():
        per_frame = 0
        for response in responses:
            for i in range(0, len(response), FRAME):
                per_frame += len(factory()(response[i : i + FRAME], True))
        per_response = sum(len(factory()(response, True)) for response in responses)
        stream = OutputStream(2, name.encode())
        spanning = sum(len(stream.encode(r) + stream.flush()) for r in responses)
        result[name] = (per_frame, per_response, spanning)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=1200)
    parser.add_argument("--files", type=int, default=120)
    parser.add_argument("--responses", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()

    start = time.perf_counter()
    payload = build_bundle(options.commits, options.files)
    print(
        f"payload: hg bundle --all -t none-v2 of {options.commits} commits / "
        f"{options.files} files = {len(payload):,} bytes "
        f"(built in {time.perf_counter() - start:.1f} s)\n"
    )
    print(f"reactor pair, {FRAME // 1024} KiB objects, {options.rounds} rounds")
    print(
        f"{'encoding':<10} {'encode MB/s':>12} {'decode MB/s':>12} {'wire bytes':>12} {'ratio':>7}"
    )
    for encoding in ENCODINGS:
        enc, dec, wire = throughput(encoding, payload, options.rounds)
        print(
            f"{encoding.decode():<10} {enc:>12.1f} {dec:>12.1f} {wire:>12,} "
            f"{wire / len(payload):>7.3f}"
        )
    print(f"\ncompressed size, bundle cut into {options.responses} responses")
    print(f"{'encoding':<10} {'per frame':>12} {'per response':>13} {'one context':>12}")
    for name, (per_frame, per_response, spanning) in sizes(payload, options.responses).items():
        print(f"{name:<10} {per_frame:>12,} {per_response:>13,} {spanning:>12,}")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
