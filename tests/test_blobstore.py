"""The blob store publishes content-addressed files atomically and refuses path tricks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hgwire_tw.blobstore import Blob, BlobError, BlobStore, blob_name


def test_publish_names_blob_by_content(tmp_path: Path) -> None:
    """A published blob is named by its SHA-256 and suffix and holds exactly its bytes."""
    store = BlobStore(tmp_path / "blobs")
    blob = store.publish([b"hello ", b"world"], suffix=".cbor")
    digest = hashlib.sha256(b"hello world").hexdigest()
    assert blob == Blob(name=digest + ".cbor", sha256=digest, size=11)
    assert (tmp_path / "blobs" / blob.name).read_bytes() == b"hello world"
    assert blob.media_type == "application/mercurial-cbor"
    assert store.find(blob.name) == blob
    assert store.verify(blob.name)


def test_publish_is_idempotent_and_leaves_no_temporaries(tmp_path: Path) -> None:
    """Publishing equal content twice gives the same blob and no stray files."""
    store = BlobStore(tmp_path)
    first = store.publish([b"x" * 1000], suffix=".hg")
    second = store.publish([b"x" * 500, b"x" * 500], suffix=".hg")
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]


def test_wrong_expected_hash_publishes_nothing(tmp_path: Path) -> None:
    """Bytes that do not hash as promised are refused and leave nothing behind."""
    store = BlobStore(tmp_path)
    with pytest.raises(BlobError):
        store.publish([b"data"], suffix=".cbor", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_failing_producer_publishes_nothing(tmp_path: Path) -> None:
    """A producer that fails midway leaves no partial blob and no temporary file."""
    store = BlobStore(tmp_path)

    def chunks():
        yield b"partial"
        raise OSError("source went away")

    with pytest.raises(OSError):
        store.publish(chunks(), suffix=".hg")
    assert list(tmp_path.iterdir()) == []


def test_corrupted_blob_fails_verification(tmp_path: Path) -> None:
    """A blob whose bytes changed on disk no longer verifies."""
    store = BlobStore(tmp_path)
    blob = store.publish([b"payload"], suffix=".cbor")
    (tmp_path / blob.name).write_bytes(b"paylOad")
    assert not store.verify(blob.name)


@pytest.mark.parametrize(
    "name",
    ["../etc/passwd", "a" * 64, "a" * 64 + ".txt", "A" * 64 + ".hg", "/" + "a" * 64 + ".hg", ""],
)
def test_non_blob_names_are_refused(tmp_path: Path, name: str) -> None:
    """Names that are not <sha256 hex><known suffix> never reach the filesystem."""
    store = BlobStore(tmp_path)
    assert not store.valid_name(name)
    assert store.find(name) is None
    assert store.open(name) is None
    with pytest.raises(ValueError):
        store.path(name)


def test_urls_use_configured_base_or_embedded_listener(tmp_path: Path) -> None:
    """A configured base URL wins; otherwise the embedded listener's base is used."""
    name = blob_name("ab" * 32, ".cbor")
    assert BlobStore(tmp_path, "https://cdn.example/hg").url(name) == (
        "https://cdn.example/hg/" + name
    )
    embedded = "http://127.0.0.1:8000/.hgwire/blobs/"
    assert BlobStore(tmp_path).url(name, embedded) == embedded + name
    with pytest.raises(ValueError):
        BlobStore(tmp_path).url(name)
