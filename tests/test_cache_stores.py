"""The content stores: LRU bounds, streaming writes, and a disk store that never serves
a damaged entry and survives restarts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hgwire_tw.cache import DiskStore, MemoryStore, make_store, valid_key
from hgwire_tw.cache.base import CHUNK
from hgwire_tw.cache.disk import HEADER_SIZE

K1, K2, K3 = "a" * 40, "b" * 40, "c" * 40


def store(s: MemoryStore | DiskStore, key: str, *pieces: bytes) -> None:
    w = s.writer(key)
    for p in pieces:
        w.write(p)
    w.commit()


def read(s: MemoryStore | DiskStore, key: str) -> bytes | None:
    entry = s.lookup(key)
    return None if entry is None else b"".join(entry.chunks())


@pytest.fixture(params=["memory", "disk"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> MemoryStore | DiskStore:
    """Each store kind, with room for a few MiB."""
    if request.param == "memory":
        return MemoryStore(max_bytes=64 * 1024 * 1024)
    return DiskStore(tmp_path / "cache", max_bytes=64 * 1024 * 1024)


def test_round_trip_with_counters(any_store: MemoryStore | DiskStore) -> None:
    """A committed entry comes back whole with its size and SHA-256; counters follow."""
    assert read(any_store, K1) is None
    store(any_store, K1, b"hello ", b"world")
    entry = any_store.lookup(K1)
    assert entry is not None
    assert entry.size == 11 and entry.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert b"".join(entry.chunks()) == b"hello world"
    stats = any_store.stats.snapshot()
    assert (stats["hits"], stats["misses"], stats["stores"]) == (1, 1, 1)


def test_nothing_visible_before_commit_and_abort_forgets(
    any_store: MemoryStore | DiskStore,
) -> None:
    """An entry is invisible while written; an aborted one never appears."""
    w = any_store.writer(K1)
    w.write(b"partial")
    assert any_store.lookup(K1) is None
    w.abort()
    assert any_store.lookup(K1) is None
    assert any_store.stats.snapshot()["aborts"] == 1


def test_large_entry_read_in_bounded_chunks(any_store: MemoryStore | DiskStore) -> None:
    """Entries come back in pieces of at most CHUNK bytes."""
    data = os.urandom(3 * CHUNK + 17)
    store(any_store, K1, *[data[i : i + 1000] for i in range(0, len(data), 1000)])
    entry = any_store.lookup(K1)
    assert entry is not None
    pieces = list(entry.chunks())
    assert all(len(p) <= CHUNK for p in pieces) and b"".join(pieces) == data


def test_keys_must_be_hex(any_store: MemoryStore | DiskStore) -> None:
    """A key that is not lower-case hex is refused (it names a file on disk)."""
    with pytest.raises(ValueError):
        any_store.writer("../../etc/passwd")
    assert valid_key(K1) and not valid_key("ABC" * 10)


def test_memory_lru_bound_in_bytes() -> None:
    """The memory store keeps at most max_bytes, evicting the least recently used."""
    s = MemoryStore(max_bytes=1000, max_entry_fraction=0.5)
    store(s, K1, b"x" * 400)
    store(s, K2, b"y" * 400)
    assert s.lookup(K1) is not None  # K1 now most recently used
    store(s, K3, b"z" * 400)
    assert s.lookup(K2) is None and s.lookup(K1) is not None and s.lookup(K3) is not None
    assert s.bytes_used == 800 and s.stats.snapshot()["evictions"] == 1


def test_memory_too_big_entries_not_kept() -> None:
    """An entry bigger than the per-entry fraction is dropped, not stored."""
    s = MemoryStore(max_bytes=1000, max_entry_fraction=0.25)
    store(s, K1, b"x" * 200, b"x" * 200)
    assert s.lookup(K1) is None and s.bytes_used == 0
    assert s.stats.snapshot()["skipped"] == 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=8))
def test_memory_store_returns_what_was_written(pieces: list[bytes]) -> None:
    """Whatever pieces are written, the entry is their concatenation."""
    s = MemoryStore(max_bytes=1 << 20)
    store(s, K1, *pieces)
    assert read(s, K1) == b"".join(pieces)


def test_disk_survives_restart(tmp_path: Path) -> None:
    """A new DiskStore on the same directory finds the entries of the old one."""
    store(DiskStore(tmp_path / "c"), K1, b"persisted")
    fresh = DiskStore(tmp_path / "c")
    assert read(fresh, K1) == b"persisted"
    assert fresh.stats.snapshot()["hits"] == 1


def _entry_file(tmp_path: Path, key: str) -> Path:
    return tmp_path / "c" / key[:2] / key


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "header", "empty"])
def test_disk_damaged_entry_discarded(tmp_path: Path, damage: str) -> None:
    """A corrupt, truncated or overlong entry is deleted and reported as a miss."""
    store(DiskStore(tmp_path / "c"), K1, b"A" * 5000)
    path = _entry_file(tmp_path, K1)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[HEADER_SIZE + 2500] ^= 1
    elif damage == "truncate":
        del data[-10:]
    elif damage == "append":
        data += b"junk"
    elif damage == "header":
        data[:8] = b"NOTMAGIC"
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    s = DiskStore(tmp_path / "c")
    assert s.lookup(K1) is None
    assert not path.exists()
    assert s.stats.snapshot()["discarded"] == 1 and s.stats.snapshot()["misses"] == 1


def test_disk_damage_after_verification_detected(tmp_path: Path) -> None:
    """An entry damaged after this process verified it is hashed again and refused."""
    s = DiskStore(tmp_path / "c")
    store(s, K1, b"B" * 5000)
    assert read(s, K1) == b"B" * 5000
    path = _entry_file(tmp_path, K1)
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE] ^= 0xFF
    path.write_bytes(bytes(data))
    assert s.lookup(K1) is None and s.stats.snapshot()["discarded"] == 1


def test_disk_leftover_temporary_files_removed(tmp_path: Path) -> None:
    """A write cut short by a crash leaves a temporary file that the next start removes."""
    s = DiskStore(tmp_path / "c")
    w = s.writer(K1)
    w.write(b"never committed")
    leftovers = list((tmp_path / "c").glob(".tmp-*"))
    assert leftovers
    fresh = DiskStore(tmp_path / "c")
    assert fresh.lookup(K1) is None
    assert not any(p.exists() for p in leftovers)


def test_disk_eviction_keeps_it_bounded(tmp_path: Path) -> None:
    """Over max_bytes, the least recently used entries are removed."""
    s = DiskStore(tmp_path / "c", max_bytes=3 * (HEADER_SIZE + 1000))
    for key in (K1, K2):
        store(s, key, b"x" * 1000)
    past = 1_000_000_000
    os.utime(_entry_file(tmp_path, K1), (past, past))  # K1 is the oldest
    store(s, K3, b"y" * 1000)
    store(s, "d" * 40, b"z" * 1000)
    assert s.lookup(K1) is None and s.lookup("d" * 40) is not None
    assert s.stats.snapshot()["evictions"] >= 1


def test_make_store(tmp_path: Path) -> None:
    """``--cache`` kinds map to stores; none means no cache."""
    assert make_store("none", size=10) is None
    assert isinstance(make_store("memory", size=10), MemoryStore)
    assert isinstance(make_store("disk", size=10, directory=str(tmp_path)), DiskStore)
    with pytest.raises(ValueError):
        make_store("redis", size=10)
