"""Who may read and write which repository, shared by every transport.

The access file is TOML (documented in ``docs/access.md``)::

    [users.alice]
    password = "$scrypt$..."          # made by: hgwire passwd
    keys = ["ssh-ed25519 AAAA... alice@laptop"]
    [users.ci]
    authorized_keys = "keys/ci.pub"   # OpenSSH format, relative to the access file
    [[rules]]
    repos = "*"
    read = ["*", "anonymous"]
    write = ["alice"]

Rules are tried in order and the first whose ``repos`` glob matches the repository name
decides. ``"*"`` in a list means every user named in the file and ``"anonymous"`` means a
client that did not log in. With no access file, everything is readable anonymously and
nothing is writable; with an access file, a repository no rule matches is closed.

``AccessPolicy.authorize(user, repo, scope)`` is the one place that decides permission:
every transport, the web pages, the blob store and the redirects ask it, and only
translate a refusal (a ``Grant`` without ``read`` or ``write``) into their wire form.

SSH keys are OpenSSH ``authorized_keys`` lines, options included
(``hgwire_tw.authorized_keys``). A key limited the way hg-ssh limits it
(``command="hg-ssh [--read-only] PATH..."``) carries a ``KeyScope``: given that scope,
``authorize`` grants what the rules grant *and* the scope allows. A key with an option we
cannot honour is left out (``AccessPolicy.warnings`` says which and why) rather than
accepted with the option ignored; a line that is not a key at all is an error.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hgwire_tw.authorized_keys import (
    AccessFileError,
    AuthorizedKey,
    KeyRefused,
    KeyScope,
    parse_authorized_key,
)

ANONYMOUS = "anonymous"
EVERY_USER = "*"

# scrypt parameters: ~50 ms and 16 MiB per check, so a leaked file is slow to attack while
# a login stays cheap.
_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_SCRYPT_LEN = 32


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A salted scrypt hash of ``password`` in the ``$scrypt$...`` form the access file takes."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=_SCRYPT_N,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        dklen=_SCRYPT_LEN,
    )
    b64 = base64.b64encode
    return (
        f"$scrypt$n={_SCRYPT_N},r={_SCRYPT_R},p={_SCRYPT_P}"
        f"${b64(salt).decode()}${b64(digest).decode()}"
    )


def check_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches an ``$scrypt$`` hash (constant-time comparison)."""
    try:
        _, scheme, params, salt_b64, digest_b64 = encoded.split("$")
        if scheme != "scrypt":
            return False
        kv = dict(item.split("=", 1) for item in params.split(","))
        n, r, p = int(kv["n"]), int(kv["r"]), int(kv["p"])
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(digest_b64, validate=True)
    except (ValueError, KeyError):
        return False
    if n > 2**20 or r > 32 or p > 16:  # refuse parameters that would stall the server
        return False
    actual = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=len(expected),
        maxmem=256 * 1024 * 1024,
    )
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """What one client may do with one repository: pull (``read``) and push (``write``).

    ``reason`` says why something is refused, for the server's log (empty when both are
    granted). Transports answer a refusal in their own wire form.
    """

    read: bool
    write: bool
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    """A user named in the access file."""

    name: str
    password_hash: str | None = None
    keys: tuple[AuthorizedKey, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """Who may read and write the repositories matching ``repos``."""

    repos: tuple[str, ...]
    read: frozenset[str] = frozenset()
    write: frozenset[str] = frozenset()

    def matches(self, repo_name: str) -> bool:
        return any(fnmatch.fnmatchcase(repo_name, glob) for glob in self.repos)


def _admits(principals: frozenset[str], user: str | None, known: Iterable[str]) -> bool:
    if user is None:
        return ANONYMOUS in principals
    return user in principals or (EVERY_USER in principals and user in known)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The users and rules of an access file (or the open read-only default)."""

    users: dict[str, User] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    source: Path | None = None
    #: Who may read ``/metrics`` from another machine (top-level ``metrics = [...]``).
    metrics: frozenset[str] = frozenset()
    #: One line per key left out (file and line, option, user), for the server's log.
    warnings: tuple[str, ...] = ()
    _login_cache: dict[bytes, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def default(cls) -> AccessPolicy:
        """No access file: everything readable anonymously, nothing writable."""
        return cls({}, (Rule(repos=("*",), read=frozenset({ANONYMOUS})),))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AccessPolicy:
        """Read an access file; raise ``AccessFileError`` naming what is wrong."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise AccessFileError(f"{path}: {e}") from e
        try:
            return cls.from_mapping(data, base=path.parent, source=path)
        except AccessFileError as e:
            located = _with_line(str(e), str(path), text)
            if located is None:
                raise
            raise AccessFileError(located) from e

    @classmethod
    def from_mapping(
        cls, data: dict[str, object], *, base: Path, source: Path | None = None
    ) -> AccessPolicy:
        """Build a policy from already-parsed TOML."""
        where = str(source or "access file")
        unknown = set(data) - {"users", "rules", "metrics"}
        if unknown:
            raise AccessFileError(f"{where}: unknown section(s): {', '.join(sorted(unknown))}")
        users: dict[str, User] = {}
        warnings: list[str] = []
        raw_users = data.get("users", {})
        if not isinstance(raw_users, dict):
            raise AccessFileError(f"{where}: [users] must be a table")
        for name, spec in raw_users.items():
            if name in (ANONYMOUS, EVERY_USER):
                raise AccessFileError(f"{where}: {name!r} is reserved and cannot be a user")
            if not isinstance(spec, dict):
                raise AccessFileError(f"{where}: [users.{name}] must be a table")
            bad = set(spec) - {"password", "keys", "authorized_keys"}
            if bad:
                raise AccessFileError(f"{where}: [users.{name}] unknown key(s): {sorted(bad)}")
            password = spec.get("password")
            if password is not None and not (
                isinstance(password, str) and password.startswith("$scrypt$")
            ):
                raise AccessFileError(
                    f"{where}: [users.{name}] password must be a hash made by `hgwire passwd`"
                )
            keys: list[AuthorizedKey] = []
            listed = _as_str_list(spec.get("keys", []), where, f"[users.{name}] keys")
            lines = [(line, f"{where}: users.{name}.keys[{i}]") for i, line in enumerate(listed)]
            ak = spec.get("authorized_keys")
            if ak is not None:
                ak_path = base / str(ak)
                try:
                    text = ak_path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise AccessFileError(f"{where}: users.{name}: {ak_path}: {e}") from e
                lines += [(line, f"{ak_path}:{n}") for n, line in enumerate(text.splitlines(), 1)]
            for line, line_where in lines:
                try:
                    key = parse_authorized_key(line, where=line_where)
                except KeyRefused as e:
                    warnings.append(f"{e} (user {name}; the server runs without this key)")
                    continue
                if key is not None:
                    keys.append(key)
            users[name] = User(name=name, password_hash=password, keys=tuple(keys))
        rules: list[Rule] = []
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            raise AccessFileError(f"{where}: rules must be an array of tables ([[rules]])")
        for i, spec in enumerate(raw_rules):
            if not isinstance(spec, dict) or "repos" not in spec:
                raise AccessFileError(f"{where}: rules[{i}] needs a `repos` glob")
            bad = set(spec) - {"repos", "read", "write"}
            if bad:
                raise AccessFileError(f"{where}: rules[{i}] unknown key(s): {sorted(bad)}")
            read = frozenset(_as_str_list(spec.get("read", []), where, f"rules[{i}].read"))
            write = frozenset(_as_str_list(spec.get("write", []), where, f"rules[{i}].write"))
            for principal in read | write:
                if principal not in users and principal not in (ANONYMOUS, EVERY_USER):
                    raise AccessFileError(f"{where}: rules[{i}] names unknown user {principal!r}")
            rules.append(
                Rule(
                    repos=tuple(_as_str_list(spec["repos"], where, f"rules[{i}].repos")),
                    read=read,
                    write=write,
                )
            )
        metrics = frozenset(_as_str_list(data.get("metrics", []), where, "metrics"))
        for principal in metrics:
            if principal not in users and principal not in (ANONYMOUS, EVERY_USER):
                raise AccessFileError(f"{where}: metrics names unknown user {principal!r}")
        return cls(users, tuple(rules), source, metrics, tuple(warnings))

    # -- authentication ------------------------------------------------------------------

    def authenticate_password(self, user: str, password: str) -> bool:
        """Whether ``user`` exists, has a password, and ``password`` is it."""
        entry = self.users.get(user)
        if entry is None or entry.password_hash is None:
            # Spend the same time as a real check so user names cannot be probed.
            check_password(password, _DUMMY_HASH)
            return False
        return check_password(password, entry.password_hash)

    def cached_login(self, user: str, password: str) -> bool | None:
        """A fast answer for credentials checked before: True/False, or None if unknown.

        scrypt is slow on purpose; transports call this on the reactor thread and run
        ``authenticate_password`` on a worker only when it returns None.
        """
        return self._login_cache.get(_credential_digest(user, password))

    def remember_login(self, user: str, password: str, ok: bool) -> None:
        """Record the outcome of a slow check (successes only, bounded)."""
        if not ok:
            return
        if len(self._login_cache) >= 4096:
            self._login_cache.clear()
        self._login_cache[_credential_digest(user, password)] = True

    def keys_for(self, user: str) -> tuple[AuthorizedKey, ...]:
        """The public keys ``user`` may log in with over SSH."""
        entry = self.users.get(user)
        return entry.keys if entry else ()

    def user_for_key(self, blob: bytes) -> str | None:
        """The user owning the public key ``blob`` (SSH wire format), if any."""
        for user in self.users.values():
            if any(hmac.compare_digest(k.blob, blob) for k in user.keys):
                return user.name
        return None

    # -- authorisation -------------------------------------------------------------------

    def _rule_for(self, repo_name: str) -> Rule | None:
        for rule in self.rules:
            if rule.matches(repo_name):
                return rule
        return None

    def authorize(self, user: str | None, repo_name: str, scope: KeyScope | None = None) -> Grant:
        """What ``user`` (None: anonymous) may do with ``repo_name``: pull when a rule
        lets them read or write it, push when it lets them write; with the ``scope`` of
        the SSH key they logged in with, only what that scope admits too."""
        rule = self._rule_for(repo_name)
        if rule is None:
            return Grant(read=False, write=False, reason="no rule names the repository")
        if scope is not None and not scope.admits(repo_name, write=False):
            return Grant(read=False, write=False, reason="the key's hg-ssh paths leave it out")
        writer = _admits(rule.write, user, self.users)
        if not writer and not _admits(rule.read, user, self.users):
            return Grant(read=False, write=False, reason="neither a reader nor a writer")
        if not writer:
            return Grant(read=True, write=False, reason="not a writer")
        if scope is not None and not scope.admits(repo_name, write=True):
            return Grant(read=True, write=False, reason="the key is read-only")
        return Grant(read=True, write=True)

    def login_could_grant(self, repo_name: str, *, write: bool = False) -> bool:
        """Whether logging in might get an anonymous client what it was refused on
        ``repo_name``: pulling when the file names any user at all, pushing when one of
        them may push (so HTTP asks for a login instead of refusing outright)."""
        if write:
            return any(self.authorize(name, repo_name).write for name in self.users)
        return bool(self.users)

    def can_read_metrics(self, user: str | None) -> bool:
        """Whether ``user`` (None: anonymous) may read ``/metrics`` from afar."""
        return _admits(self.metrics, user, self.users)


_CACHE_SECRET = os.urandom(32)


def _credential_digest(user: str, password: str) -> bytes:
    # Keyed so that the in-memory cache never holds anything a password can be read from.
    return hmac.digest(_CACHE_SECRET, f"{user}\0{password}".encode(), "sha256")


def _as_str_list(value: object, where: str, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)  # type: ignore[arg-type]
    raise AccessFileError(f"{where}: {what} must be a string or a list of strings")


# The place a message of ``from_mapping`` names, right after its ``FILE: ``
# (``[users.NAME] KEY``, ``users.NAME.KEY[...]``, ``rules[I].KEY``, ``rules[I] unknown
# key(s): ['KEY'``, ``metrics``), and the key when the message implies it.
_PLACES: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(r"\[users\.(?P<user>[^\]]+)\] (?P<key>password|keys|authorized_keys)\b"), None),
    (re.compile(r"\[users\.(?P<user>[^\]]+)\] unknown key\(s\): \['(?P<key>[^']+)'"), None),
    (re.compile(r"\[users\.(?P<user>[^\]]+)\]"), None),
    (re.compile(r"users\.(?P<user>[^.:\s]+)\.(?P<key>keys)\b"), None),
    (re.compile(r"users\.(?P<user>[^.:\s]+): "), "authorized_keys"),
    (re.compile(r"rules\[(?P<rule>\d+)\]\.(?P<key>repos|read|write)\b"), None),
    (re.compile(r"rules\[(?P<rule>\d+)\] unknown key\(s\): \['(?P<key>[^']+)'"), None),
    (re.compile(r"rules\[(?P<rule>\d+)\]"), None),
    (re.compile(r"(?P<key>metrics) "), None),
)
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")


def _with_line(message: str, where: str, text: str) -> str | None:
    """``message`` (``WHERE: problem``) as ``WHERE:LINE: problem`` when the line of the
    table or key the problem names can be found in ``text``; else None."""
    prefix = f"{where}: "
    if not message.startswith(prefix):
        return None
    problem = message[len(prefix) :]
    for pattern, implied in _PLACES:
        m = pattern.match(problem)
        if m is None:
            continue
        found = m.groupdict()
        table: tuple[str | int, ...] = ()
        if found.get("user"):
            table = ("users", found["user"])
        elif found.get("rule"):
            table = ("rules", int(found["rule"]))
        key = found.get("key") or implied
        line = _line_of(text, table, key)
        if line is None and key is None and table and isinstance(table[-1], str):
            line = _line_of(text, table[:-1], table[-1])  # ``[users]`` then ``bob = ...``
        return f"{where}:{line}: {problem}" if line else None
    return None


def _line_of(text: str, table: tuple[str | int, ...], key: str | None) -> int | None:
    """The line of ``key`` in ``table`` (``("users", "bob")``, ``("rules", 0)`` for the
    first ``[[rules]]``, ``()`` for the top level), or of the table's header when ``key``
    is None. Only plain ``[a.b]`` headers and ``key = ...`` lines are recognised."""
    current: tuple[str | int, ...] = ()
    seen: dict[tuple[str, ...], int] = {}
    key_line = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=") if key else None
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            name = tuple(part.strip().strip("\"'") for part in header.group(2).split("."))
            if header.group(1) == "[[":
                seen[name] = seen.get(name, -1) + 1
                current = (*name, seen[name])
            else:
                current = name
            if current == table and key_line is None:
                return number
        elif current == table and key_line is not None and key_line.match(line):
            return number
    return None


_DUMMY_HASH = hash_password("hgwire dummy", salt=b"\0" * 16)

__all__ = [
    "ANONYMOUS",
    "EVERY_USER",
    "AccessFileError",
    "AccessPolicy",
    "Grant",
    "Rule",
    "User",
    "check_password",
    "hash_password",
]
