"""OpenSSH ``authorized_keys`` lines as the access file lists them: keys and their options.

``parse_authorized_key(line)`` reads one line, options included. ``restrict`` and every
``no-*`` flag are accepted (they only turn off what hgwire_tw never offers),
``from="..."`` is kept for ``AuthorizedKey.allows_address`` and a forced command of the
form hg-ssh uses (``command="hg-ssh [--read-only] PATH..."``, ``parse_hg_ssh``) becomes
the key's ``KeyScope``, which ``AccessPolicy.authorize`` applies on top of the rules. A
key with any other option is refused (``KeyRefused``) rather than accepted with the
option ignored; a line that is not a key at all is an ``AccessFileError``.
"""

from __future__ import annotations

import base64
import fnmatch
import posixpath
import shlex
from dataclasses import dataclass

__all__ = [
    "AccessFileError",
    "AuthorizedKey",
    "KeyRefused",
    "KeyScope",
    "parse_authorized_key",
    "parse_hg_ssh",
]


class AccessFileError(ValueError):
    """The access file is malformed; the message names the problem."""


class KeyRefused(AccessFileError):
    """A well-formed key line with an option we cannot honour: that key is left out."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyScope:
    """What ``command="hg-ssh [--read-only] PATH..."`` leaves a key: the repositories
    named (as registry names) and, with ``--read-only``, no pushing."""

    repos: frozenset[str]
    read_only: bool = False

    def admits(self, repo_name: str, *, write: bool) -> bool:
        """Whether the key may read (or, with ``write``, push to) ``repo_name``."""
        return repo_name in self.repos and not (write and self.read_only)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizedKey:
    """One public key a user may log in with over SSH."""

    keytype: str
    blob: bytes
    comment: str = ""
    #: ``from="..."`` patterns (client address globs), empty when unrestricted.
    from_patterns: tuple[str, ...] = ()
    #: The hg-ssh restriction of ``command="hg-ssh ..."``, None when unrestricted.
    scope: KeyScope | None = None

    def allows_address(self, address: str) -> bool:
        """Whether a client connecting from ``address`` may use this key."""
        if not self.from_patterns:
            return True
        allowed = False
        for pattern in self.from_patterns:
            negate = pattern.startswith("!")
            if fnmatch.fnmatchcase(address, pattern.lstrip("!")):
                if negate:
                    return False
                allowed = True
        return allowed


def _quoted_end(text: str, start: int) -> int:
    """Index just past the closing quote of the string opening at ``text[start]``
    (``\\"`` inside is a quote, as OpenSSH reads it); -1 if it is never closed."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 2] == '"':
            i += 2
        elif text[i] == '"':
            return i + 1
        else:
            i += 1
    return -1


def _split_options(text: str, where: str) -> list[tuple[str, str | None]]:
    """``(name, value)`` pairs of an authorized_keys options field (quotes removed,
    ``None`` for a flag without ``=``)."""
    options: list[tuple[str, str | None]] = []
    i = 0
    while i <= len(text):
        j = i
        while j < len(text) and text[j] not in ',="':
            j += 1
        name, value = text[i:j], None
        if j < len(text) and text[j] == "=":
            if text[j + 1 : j + 2] == '"':
                end = _quoted_end(text, j + 1)
                if end < 0:
                    raise AccessFileError(f"{where}: unterminated quote in key options")
                value = text[j + 2 : end - 1].replace('\\"', '"')
                j = end
            else:
                k = j + 1
                j = text.find(",", k)
                j = len(text) if j < 0 else j
                value = text[k:j]
        if not name or (j < len(text) and text[j] != ","):
            raise AccessFileError(f"{where}: malformed key options {text[:60]!r}")
        options.append((name, value))
        i = j + 1
    return options


def _hg_ssh_name(path: str) -> str | None:
    """The registry name an hg-ssh path stands for, or None if it cannot stand for one.

    hg-ssh resolves paths against the account's home directory; here the served root
    takes that place, so ``proj``, ``./proj``, ``~/proj`` and ``proj/`` all name ``proj``
    and an absolute ``/srv/hg/proj`` names ``srv/hg/proj``, just as the client's URL path
    does (``ssh://host//srv/hg/proj``). Paths that climb out (``..``) name nothing.
    """
    if path.startswith("~"):
        if path != "~" and not path.startswith("~/"):
            return None  # another user's home
        path = path[1:].lstrip("/") or "."
    norm = posixpath.normpath(path).lstrip("/")
    if norm == "..":
        return None
    if norm.startswith("../"):
        return None
    return "" if norm == "." else norm


def parse_hg_ssh(command: str, where: str = "") -> KeyScope:
    """The ``KeyScope`` of an ``hg-ssh [--read-only] PATH...`` forced command, else
    ``KeyRefused`` (any other command, or paths hg-ssh would not read as ours)."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise KeyRefused(f"{where}: key refused: cannot parse command={command!r}: {e}") from None
    if not argv or posixpath.basename(argv[0]) != "hg-ssh":
        raise KeyRefused(
            f"{where}: key refused: option command={command[:80]!r} is not supported "
            '(only command="hg-ssh [--read-only] PATH...")'
        )
    args = argv[1:]
    read_only = False
    while args and args[0] == "--read-only":
        read_only = True
        args.pop(0)
    names: set[str] = set()
    for path in args:
        name = None if path.startswith("-") else _hg_ssh_name(path)
        if name is None:
            raise KeyRefused(f"{where}: key refused: hg-ssh path {path!r} is not supported")
        names.add(name)
    return KeyScope(repos=frozenset(names), read_only=read_only)


_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def _options_end(line: str) -> int:
    """Index of the first blank outside quotes: where the options field ends."""
    i = 0
    while i < len(line):
        if line[i] == '"':
            end = _quoted_end(line, i)
            if end < 0:
                return -1
            i = end
        elif line[i] in " \t":
            return i
        else:
            i += 1
    return -1


def parse_authorized_key(line: str, *, where: str = "") -> AuthorizedKey | None:
    """Parse one OpenSSH authorized_keys line, options and all.

    Blank lines and comments give None. ``restrict`` and every ``no-*`` flag are
    accepted (they only turn off what hgwire_tw never offers), ``from="..."`` is
    enforced, ``command="hg-ssh ..."`` becomes the key's ``scope``. Any other option
    raises ``KeyRefused`` naming it: the key is never accepted with an option silently
    ignored. A line that is not a key raises ``AccessFileError``.
    """
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    options: list[tuple[str, str | None]] = []
    first, _, rest = line.partition(" ")
    if first not in _KEY_TYPES:
        # The options field comes first; it may contain quoted blanks.
        end = _options_end(line)
        if end < 0:
            raise AccessFileError(f"{where}: not a public key line: {line[:40]!r}")
        options = _split_options(line[:end], where)
        first, _, rest = line[end:].strip().partition(" ")
    if first not in _KEY_TYPES:
        raise AccessFileError(f"{where}: unsupported key type {first!r}")
    blob_b64, _, comment = rest.strip().partition(" ")
    try:
        blob = base64.b64decode(blob_b64, validate=True)
    except ValueError as e:
        raise AccessFileError(f"{where}: key is not valid base64") from e
    from_patterns: list[str] = []
    scope: KeyScope | None = None
    for name, value in options:
        lname = name.lower()
        if value is None and (lname == "restrict" or lname.startswith("no-")):
            continue
        if lname == "from" and value:
            from_patterns.extend(p for p in value.split(",") if p)
            continue
        if lname == "command" and value is not None and scope is None:
            scope = parse_hg_ssh(value, where)
            continue
        shown = name if value is None else f"{name}={value[:80]!r}"
        raise KeyRefused(f"{where}: key refused: option {shown} is not supported by hgwire_tw")
    return AuthorizedKey(
        keytype=first,
        blob=blob,
        comment=comment.strip(),
        from_patterns=tuple(from_patterns),
        scope=scope,
    )
