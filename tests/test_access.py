"""Access policy: password hashes, authorized_keys parsing, and read/write rules."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from hgwire_tw.access import (
    AccessFileError,
    AccessPolicy,
    check_password,
    hash_password,
    parse_authorized_key,
)

KEY_BLOB = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + b"k" * 32).decode()
KEY = f"ssh-ed25519 {KEY_BLOB} alice@laptop"
CI_BLOB = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + b"c" * 32).decode()


def write_access(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "access.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_password_hash_round_trip_and_salting() -> None:
    """A hash verifies its own password only, and two hashes of one password differ."""
    h1, h2 = hash_password("s3cret"), hash_password("s3cret")
    assert h1 != h2 and h1.startswith("$scrypt$")
    assert check_password("s3cret", h1) and check_password("s3cret", h2)
    assert not check_password("S3cret", h1)
    assert not check_password("s3cret", "$scrypt$garbage")
    assert not check_password("s3cret", "$scrypt$n=1073741824,r=8,p=1$AA==$AA==")


def test_default_policy_is_anonymous_read_only() -> None:
    """With no access file everyone reads and nobody writes."""
    policy = AccessPolicy.default()
    assert policy.can_read(None, "anything")
    assert not policy.can_write(None, "anything")
    assert not policy.can_write("alice", "anything")
    assert not policy.authenticate_password("alice", "x")


def test_rules_users_and_globs(tmp_path: Path) -> None:
    """First matching rule decides; "*" is every known user; "anonymous" is no login."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ci.pub").write_text(
        f'# CI key\nrestrict,from="127.0.0.*" ssh-ed25519 {CI_BLOB} ci@runner\n'
    )
    pw = hash_password("pw")
    path = write_access(
        tmp_path,
        f"""
[users.alice]
password = "{pw}"
keys = ["{KEY}"]
[users.ci]
authorized_keys = "keys/ci.pub"
[[rules]]
repos = "private/*"
read = ["*"]
write = ["alice"]
[[rules]]
repos = "*"
read = ["*", "anonymous"]
write = ["alice"]
""",
    )
    policy = AccessPolicy.load(path)
    assert policy.authenticate_password("alice", "pw")
    assert not policy.authenticate_password("alice", "nope")
    assert not policy.authenticate_password("ci", "pw")  # no password set
    assert policy.can_read(None, "public/x") and not policy.can_write(None, "public/x")
    assert not policy.can_read(None, "private/x") and policy.requires_login("private/x")
    assert policy.can_read("ci", "private/x") and not policy.can_write("ci", "private/x")
    assert policy.can_write("alice", "private/x")
    assert policy.user_for_key(base64.b64decode(KEY_BLOB)) == "alice"
    (ci_key,) = policy.keys_for("ci")
    assert policy.user_for_key(ci_key.blob) == "ci"
    assert ci_key.allows_address("127.0.0.5") and not ci_key.allows_address("10.0.0.1")


def test_closed_when_no_rule_matches(tmp_path: Path) -> None:
    """An access file without a matching rule closes the repository."""
    policy = AccessPolicy.load(write_access(tmp_path, '[[rules]]\nrepos = "a"\nread=["anonymous"]'))
    assert policy.can_read(None, "a") and not policy.can_read(None, "b")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('[users.a]\npassword = "plain"', "hgwire passwd"),
        ('[[rules]]\nrepos = "*"\nread = ["bob"]', "unknown user"),
        ("[users.anonymous]\n", "reserved"),
        ("[bogus]\n", "unknown section"),
        ('[users.a]\nkeys = ["command=\\"ls\\" ' + KEY + '"]', "not supported"),
        ('[[rules]]\nread = ["*"]', "repos"),
        ("not toml [", "access.toml"),
    ],
)
def test_malformed_access_files_are_refused_clearly(
    tmp_path: Path, text: str, fragment: str
) -> None:
    """Each mistake in an access file is an error naming it, never a silent default."""
    with pytest.raises(AccessFileError, match=fragment.replace("[", r"\[")):
        AccessPolicy.load(write_access(tmp_path, text))


def test_authorized_key_lines() -> None:
    """Options are parsed, harmless ones kept, unsupported ones refused, comments skipped."""
    assert parse_authorized_key("# comment") is None
    assert parse_authorized_key("   ") is None
    key = parse_authorized_key(f'no-pty,from="::1,127.0.0.1" {KEY}')
    assert key is not None and key.comment == "alice@laptop"
    assert key.from_patterns == ("::1", "127.0.0.1")
    with pytest.raises(AccessFileError):
        parse_authorized_key(f'command="hg serve" {KEY}')
    with pytest.raises(AccessFileError):
        parse_authorized_key("ssh-ed25519 not-base64!!")


def test_login_cache_only_remembers_successes() -> None:
    """Cached logins answer fast; failures are always re-checked."""
    policy = AccessPolicy.default()
    assert policy.cached_login("a", "b") is None
    policy.remember_login("a", "b", False)
    assert policy.cached_login("a", "b") is None
    policy.remember_login("a", "b", True)
    assert policy.cached_login("a", "b") is True
    assert policy.cached_login("a", "c") is None
