"""Where the v2 client's HTTP login comes from (``hgwire_tw.client.credentials``): the
URL, ``[auth]``, and the password prompt on a terminal (driven by a stand-in input
function, and by a fake terminal standing in for stdin)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from mercurial import ui as uimod

from hgwire_tw.client import credentials
from hgwire_tw.client.credentials import HTTPLogin, login_for


def hg_ui(config: str = "") -> Any:
    """A Mercurial ui holding only ``config`` (``section.name = value`` lines)."""
    ui = uimod.ui()
    for line in config.strip().splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.strip().partition(".")
        ui.setconfig(section.encode(), name.encode(), value.strip().encode(), b"test")
    return ui


class Prompts:
    """A stand-in for the terminal prompt: records what it was asked, answers ``typed``."""

    def __init__(self, typed: str | None) -> None:
        self.typed = typed
        self.asked: list[str] = []

    def __call__(self, prompt: str) -> str | None:
        self.asked.append(prompt)
        return self.typed


def test_user_without_a_password_is_prompted_for_one() -> None:
    """--user (or a user from the URL) with no password anywhere: the prompt names the
    user and host, and what is typed is the password."""
    prompt = Prompts("typed-pw")
    login = login_for("https://hg.example.org/r", user="alice", ui=hg_ui(), prompt=prompt)
    assert login == HTTPLogin("alice", "typed-pw")
    assert prompt.asked == ["password for alice at hg.example.org: "]
    prompt = Prompts("pw2")
    assert login_for("https://bob@hg.example.org:8443/r", ui=hg_ui(), prompt=prompt) == (
        HTTPLogin("bob", "pw2")
    )
    assert prompt.asked == ["password for bob at hg.example.org: "]


def test_auth_user_without_password_is_prompted() -> None:
    """[auth] naming only the user: the prompt asks for that user's password."""
    ui = hg_ui(
        """
        auth.lab.prefix = https://hg.example.org/
        auth.lab.username = carol
        """
    )
    prompt = Prompts("from-tty")
    assert login_for("https://hg.example.org/r", ui=ui, prompt=prompt) == HTTPLogin(
        "carol", "from-tty"
    )
    assert prompt.asked == ["password for carol at hg.example.org: "]


def test_no_prompt_when_the_password_is_known_or_no_user() -> None:
    """A password in the URL or [auth] is used as it is; with no user at all the login
    is anonymous; neither asks the terminal."""
    prompt = Prompts("never")
    url = "https://alice:s%40cret@hg.example.org/r"
    assert login_for(url, ui=hg_ui(), prompt=prompt) == HTTPLogin("alice", "s@cret")
    ui = hg_ui(
        """
        auth.lab.prefix = hg.example.org
        auth.lab.username = alice
        auth.lab.password = from-auth
        """
    )
    assert login_for("https://hg.example.org/r", ui=ui, prompt=prompt) == HTTPLogin(
        "alice", "from-auth"
    )
    assert login_for("https://hg.example.org/r", ui=hg_ui(), prompt=prompt) is None
    assert prompt.asked == []


def test_nothing_typed_means_anonymous() -> None:
    """The prompt gives None (no terminal): no login, the server says if one is needed."""
    prompt = Prompts(None)
    assert login_for("https://hg.example.org/r", user="alice", ui=hg_ui(), prompt=prompt) is None
    assert prompt.asked


class FakeStdin:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_the_default_prompt_reads_the_terminal_only(
    monkeypatch: pytest.MonkeyPatch, tty: bool
) -> None:
    """The command line's default prompt: on a terminal, getpass with the prompt; with
    stdin not a terminal (a pipe, cron, CI), nothing is read and the login is anonymous."""
    asked: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        asked.append(prompt)
        return "typed-at-the-tty"

    monkeypatch.setattr(credentials.sys, "stdin", FakeStdin(tty))
    monkeypatch.setattr(credentials.getpass, "getpass", fake_getpass)
    monkeypatch.setattr(credentials, "hg_ui", hg_ui)
    from hgwire_tw.client.main import add_connection_options, connection_options

    parser = argparse.ArgumentParser()
    add_connection_options(parser)
    args = parser.parse_args(["--user", "alice"])
    options = connection_options(args, "https://hg.example.org/r")
    if tty:
        assert options.http_login == HTTPLogin("alice", "typed-at-the-tty")
        assert asked == ["password for alice at hg.example.org: "]
    else:
        assert options.http_login is None and asked == []
