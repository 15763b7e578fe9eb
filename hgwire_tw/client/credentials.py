"""HTTP(S) logins and TLS trust for the client, read the way ``hg`` reads them.

A login for an ``http(s)://`` URL comes from, in this order:

1. the URL itself (``https://alice:secret@host/repo``);
2. ``--user NAME`` (or the URL's user) with the password from ``[auth]`` or, on a
   terminal, a prompt;
3. Mercurial's ``[auth]`` section (``prefix``, ``username``, ``password``, ``schemes``),
   matched by ``mercurial.httpconnection.readauthforuri`` exactly as ``hg`` matches it.

The certificate authorities trusted for ``https://`` are ``--cacerts FILE``, else
``[web] cacerts`` of the hgrc, else the system's. Mercurial's configuration is read with
``mercurial.ui.ui.load()`` (``HGRCPATH``, ``~/.hgrc``, ...).
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = ["HTTPLogin", "hg_ui", "login_for", "strip_userinfo", "trusted_cacerts"]


@dataclass(frozen=True, slots=True)
class HTTPLogin:
    """A user name and password for HTTP Basic authentication."""

    user: str
    password: str


def strip_userinfo(url: str, *, keep_user: bool = False) -> str:
    """``url`` without its password (and without its user unless ``keep_user``)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    if keep_user and parts.username:
        netloc = f"{quote(unquote(parts.username), safe='')}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def hg_ui() -> Any:
    """Mercurial's configuration, as ``hg`` would read it here."""
    from mercurial import ui as uimod

    return uimod.ui.load()


def _prompt_on_tty(prompt: str) -> str | None:
    if not sys.stdin.isatty():
        return None
    return getpass.getpass(prompt)


def login_for(
    url: str,
    *,
    user: str | None = None,
    ui: Any = None,
    prompt: Callable[[str], str | None] = _prompt_on_tty,
) -> HTTPLogin | None:
    """The login to use for ``url`` (None: anonymous); see the module docs."""
    parts = urlsplit(url)
    url_user = unquote(parts.username) if parts.username else None
    url_password = unquote(parts.password) if parts.password is not None else None
    name = url_user or user
    if name and url_password is not None:
        return HTTPLogin(name, url_password)
    from mercurial.httpconnection import readauthforuri

    ui = ui if ui is not None else hg_ui()
    clean = strip_userinfo(url).encode("utf-8")
    found = readauthforuri(ui, clean, name.encode("utf-8") if name else None)
    auth: dict[bytes, bytes] = found[1] if found else {}
    auth_user = auth.get(b"username")
    name = name or (auth_user.decode("utf-8") if auth_user else None)
    if not name:
        return None
    password = auth.get(b"password")
    if password is not None:
        return HTTPLogin(name, password.decode("utf-8"))
    typed = prompt(f"password for {name} at {parts.hostname}: ")
    if typed is None:
        return None  # not a terminal: try anonymously, the server says if that fails
    return HTTPLogin(name, typed)


def trusted_cacerts(cacerts: str | None, ui: Any = None) -> str | None:
    """The CA file to trust: ``cacerts`` (``--cacerts``), else ``[web] cacerts``, else
    None (the system's)."""
    if cacerts:
        return cacerts
    ui = ui if ui is not None else hg_ui()
    configured = ui.config(b"web", b"cacerts")
    if not configured:
        return None
    from mercurial import util

    return str(util.expandpath(configured).decode("utf-8"))
