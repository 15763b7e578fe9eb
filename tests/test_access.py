"""Access policy: password hashes, authorized_keys parsing, and read/write rules
(``AccessPolicy.authorize``)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from hgwire_tw.access import AccessFileError, AccessPolicy, Grant, check_password, hash_password
from hgwire_tw.authorized_keys import KeyRefused, parse_authorized_key

#: What a reader who may not push is granted.
READER = Grant(read=True, write=False, reason="not a writer")

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
    assert policy.authorize(None, "anything") == READER
    assert not policy.authorize("alice", "anything").write
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
    assert policy.authorize(None, "public/x") == READER
    assert not policy.authorize(None, "private/x").read
    assert policy.login_could_grant("private/x")
    assert policy.login_could_grant("private/x", write=True)
    assert policy.authorize("ci", "private/x") == READER
    assert policy.authorize("alice", "private/x") == Grant(read=True, write=True)
    assert policy.user_for_key(base64.b64decode(KEY_BLOB)) == "alice"
    (ci_key,) = policy.keys_for("ci")
    assert policy.user_for_key(ci_key.blob) == "ci"
    assert ci_key.allows_address("127.0.0.5") and not ci_key.allows_address("10.0.0.1")


def test_closed_when_no_rule_matches(tmp_path: Path) -> None:
    """An access file without a matching rule closes the repository."""
    policy = AccessPolicy.load(write_access(tmp_path, '[[rules]]\nrepos = "a"\nread=["anonymous"]'))
    assert policy.authorize(None, "a").read
    closed = Grant(read=False, write=False, reason="no rule names the repository")
    assert policy.authorize(None, "b") == closed
    assert not policy.login_could_grant("b")  # a file without users: logging in cannot help


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('[users.a]\npassword = "plain"', "hgwire passwd"),
        ('[[rules]]\nrepos = "*"\nread = ["bob"]', "unknown user"),
        ("[users.anonymous]\n", "reserved"),
        ("[bogus]\n", "unknown section"),
        ('[users.a]\nkeys = ["no-pty ssh-ed25519 not-base64!!"]', "users.a.keys.0.: key is not"),
        ('[users.a]\nkeys = ["command=\\"hg-ssh x ' + KEY + '"]', "not a public key line"),
        ('[users.a]\nauthorized_keys = "missing.keys"', "missing.keys"),
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
    with pytest.raises(KeyRefused, match="command='hg serve' is not supported"):
        parse_authorized_key(f'command="hg serve" {KEY}')
    with pytest.raises(AccessFileError):
        parse_authorized_key("ssh-ed25519 not-base64!!")


@pytest.mark.parametrize(
    ("options", "repos", "read_only"),
    [
        ('command="hg-ssh repo1 team/proj"', {"repo1", "team/proj"}, False),
        ('command="/usr/bin/hg-ssh --read-only repo1"', {"repo1"}, True),
        # hg-ssh's own path forms: relative to the home directory (here the served root)
        (
            'command="hg-ssh ./a b/ ~/c /srv/hg/d . x/../y"',
            {"a", "b", "c", "srv/hg/d", "", "y"},
            False,
        ),
        # the options hg-ssh users put around it, OpenSSH's quoting
        (
            "restrict,no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty,"
            'no-touch-required,command="hg-ssh \\"with space\\" r"',
            {"with space", "r"},
            False,
        ),
        ('from="127.0.0.1",command="hg-ssh"', set(), False),
    ],
)
def test_hg_ssh_keys(options: str, repos: set[str], read_only: bool) -> None:
    """command="hg-ssh [--read-only] PATH..." limits the key to those repositories."""
    key = parse_authorized_key(f"{options} {KEY}", where="keys:1")
    assert key is not None and key.scope is not None
    assert key.scope.repos == repos and key.scope.read_only is read_only
    assert key.comment == "alice@laptop"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ('command="hg -R x serve --stdio"', "command='hg -R x serve --stdio'"),
        ('command="/usr/share/mercurial-server/hg-ssh-wrapper alice"', "hg-ssh-wrapper"),
        ('command="hg-ssh ../outside"', "hg-ssh path '../outside'"),
        ('command="hg-ssh ~bob/x"', "hg-ssh path '~bob/x'"),
        ('command="hg-ssh --verbose x"', "hg-ssh path '--verbose'"),
        ('environment="A=b"', "option environment='A=b'"),
        ('permitopen="host:22"', "option permitopen='host:22'"),
        ("pty", "option pty "),
        ('expiry-time="20300101"', "option expiry-time"),
    ],
)
def test_unsupported_key_options_refuse_the_key(options: str, named: str) -> None:
    """Any other command or option refuses the key, naming where and what."""
    with pytest.raises(KeyRefused, match=re.escape("keys:7: key refused: ")) as e:
        parse_authorized_key(f"{options} {KEY}", where="keys:7")
    assert named in str(e.value)


def test_refused_keys_are_left_out_with_a_warning(tmp_path: Path) -> None:
    """A file with one unsupported key loads: that key is out (one warning naming the
    file, line and option), the others work, the hg-ssh scope narrows the rules."""
    other = f"ssh-ed25519 {CI_BLOB} ci"
    (tmp_path / "team.keys").write_text(
        f"# hg-ssh keys\n"
        f'command="hg-ssh --read-only pub",no-pty {KEY}\n'
        f'environment="X=1" {other}\n',
        encoding="utf-8",
    )
    policy = AccessPolicy.load(
        write_access(
            tmp_path,
            '[users.alice]\nauthorized_keys = "team.keys"\n'
            '[[rules]]\nrepos = "*"\nread = ["*"]\nwrite = ["alice"]\n',
        )
    )
    assert len(policy.warnings) == 1
    assert (
        f"{tmp_path / 'team.keys'}:3: key refused: option environment='X=1'" in (policy.warnings[0])
    )
    assert "user alice" in policy.warnings[0]
    (key,) = policy.keys_for("alice")
    assert policy.user_for_key(base64.b64decode(CI_BLOB)) is None
    scope = key.scope
    assert scope is not None
    assert policy.authorize("alice", "pub").write and policy.authorize("alice", "other").write
    read_only = Grant(read=True, write=False, reason="the key is read-only")
    assert policy.authorize("alice", "pub", scope) == read_only
    assert not policy.authorize("alice", "other", scope).read
    assert policy.authorize("alice", "other", scope).reason == "the key's hg-ssh paths leave it out"
    # the rules still decide within the scope: bob's rules would give nothing
    assert not policy.authorize("nobody", "pub", scope).read


def test_login_cache_only_remembers_successes() -> None:
    """Cached logins answer fast; failures are always re-checked."""
    policy = AccessPolicy.default()
    assert policy.cached_login("a", "b") is None
    policy.remember_login("a", "b", False)
    assert policy.cached_login("a", "b") is None
    policy.remember_login("a", "b", True)
    assert policy.cached_login("a", "b") is True
    assert policy.cached_login("a", "c") is None
