"""SSH host keys and the algorithms the SSH server offers.

The server's own host key is an ed25519 key generated on first start into
``<state-dir>/ssh_host_ed25519_key`` (OpenSSH private-key format, mode 0600) and reused
afterwards, so clients see a stable fingerprint. Administrators may add existing OpenSSH
host keys (``Settings.ssh_host_keys``); DSA keys are refused.

Conch's defaults still offer CBC ciphers, SHA-1 and MD5 MACs, SHA-1 key exchanges and
``ssh-rsa``/``ssh-dss`` signatures. ``MODERN_*`` below are what we offer instead;
``HgwireServerTransport`` carries them and the factory filters the signature algorithms
of its host keys through ``host_key_algorithms``. ``USER_SIGNATURE_ALGORITHMS`` are the
signatures accepted from users' keys (and advertised to clients as ``server-sig-algs``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import _kex, keys, transport

__all__ = [
    "HOST_KEY_NAME",
    "MODERN_CIPHERS",
    "MODERN_COMPRESSIONS",
    "MODERN_KEX",
    "MODERN_MACS",
    "USER_SIGNATURE_ALGORITHMS",
    "HgwireServerTransport",
    "HostKeyError",
    "host_key_algorithms",
    "load_host_keys",
    "load_or_create_host_key",
]

#: File name of the generated host key inside the state directory.
HOST_KEY_NAME = "ssh_host_ed25519_key"

#: Counter-mode AES only: CBC modes and 3DES are gone.
MODERN_CIPHERS: tuple[bytes, ...] = (b"aes256-ctr", b"aes192-ctr", b"aes128-ctr")
#: SHA-2 HMACs only: no hmac-sha1, no hmac-md5.
MODERN_MACS: tuple[bytes, ...] = (b"hmac-sha2-512", b"hmac-sha2-256")
#: Bundles are compressed already; compressing the channel again costs CPU for nothing.
MODERN_COMPRESSIONS: tuple[bytes, ...] = (b"none",)

#: Signature algorithms never offered, whatever the host key supports.
_WEAK_SIGNATURES = frozenset({b"ssh-rsa", b"ssh-dss"})

#: Signature algorithms accepted from users' keys, in the order clients are told: every
#: key type the access file takes, RSA only with SHA-2 (no SHA-1 ``ssh-rsa``, no DSA).
USER_SIGNATURE_ALGORITHMS: tuple[bytes, ...] = (
    b"ssh-ed25519",
    b"sk-ssh-ed25519@openssh.com",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"sk-ecdsa-sha2-nistp256@openssh.com",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)


def _modern_kex(available: Iterable[bytes]) -> tuple[bytes, ...]:
    """Conch's key exchanges minus every SHA-1 one and the group exchanges.

    Group exchange needs a moduli file (the factory has no primes); the curve25519,
    ML-KEM hybrid and NIST ECDH exchanges remain.
    """
    return tuple(
        name for name in available if b"sha1" not in name and not _kex.isDynamicPrimesGroup(name)
    )


MODERN_KEX: tuple[bytes, ...] = _modern_kex(_kex.getSupportedKeyExchanges())


def host_key_algorithms(host_keys: Iterable[keys.Key]) -> list[bytes]:
    """Signature algorithms the given host keys allow, weak ones removed, in order."""
    out: list[bytes] = []
    for key in host_keys:
        for name in key.supportedSignatureAlgorithms():
            if name not in _WEAK_SIGNATURES and name not in out:
                out.append(name)
    return out


class HgwireServerTransport(transport.SSHServerTransport):
    """Conch's server transport, offering only the modern algorithms above."""

    ourVersionString = b"SSH-2.0-hgwire"
    supportedCiphers = list(MODERN_CIPHERS)
    supportedMACs = list(MODERN_MACS)
    supportedKeyExchanges = list(MODERN_KEX)
    supportedCompressions = list(MODERN_COMPRESSIONS)


class HostKeyError(Exception):
    """A configured host key cannot be used; the message names the file and why."""


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never readable by others, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    # A concurrent first start may have won the race: keep whichever key landed first.
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def load_or_create_host_key(state_dir: Path) -> keys.Key:
    """The server's ed25519 host key, generated into ``state_dir`` on first use."""
    path = state_dir / HOST_KEY_NAME
    if not path.exists():
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.OpenSSH,
            encryption_algorithm=serialization.NoEncryption(),
        )
        _write_private(path, pem)
        public = keys.Key(private.public_key()).toString("openssh")
        pub_path = path.with_name(HOST_KEY_NAME + ".pub")
        pub_path.write_bytes(public + b" hgwire host key\n")
    return _load_private(path)


def _load_private(path: Path) -> keys.Key:
    try:
        key = keys.Key.fromFile(str(path))
    except (OSError, keys.BadKeyError, keys.EncryptedKeyError, ValueError) as e:
        raise HostKeyError(f"SSH host key {path}: {e}") from e
    if not key.isPublic():
        if key.type() == "DSA":
            raise HostKeyError(f"SSH host key {path}: DSA host keys are not supported")
        return key
    raise HostKeyError(f"SSH host key {path}: a public key, not a private one")


def load_host_keys(state_dir: Path, extra: Sequence[str | os.PathLike[str]] = ()) -> list[keys.Key]:
    """The generated ed25519 host key followed by the configured extra ones.

    Only one key per SSH key type can be offered: of several configured keys of one type
    the first wins, and a configured ed25519 key replaces the generated one (which is
    then not created).
    """
    configured = [_load_private(Path(p)) for p in extra]
    found: dict[bytes, keys.Key] = {}
    for key in configured:
        found.setdefault(key.sshType(), key)
    if b"ssh-ed25519" not in found:
        found[b"ssh-ed25519"] = load_or_create_host_key(state_dir)
    ordered = [found.pop(b"ssh-ed25519")]
    ordered.extend(found.values())
    return ordered
