"""The settings table: options, TOML keys, Settings and the README reference agree."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from twisted.python import usage

from hgwire_tw.app.options import (
    BEGIN,
    END,
    help_text,
    markdown_reference,
    with_reference,
)
from hgwire_tw.app.settings import TABLE, Kind
from hgwire_tw.context import Settings
from hgwire_tw.tap import Options
from hgwire_tw.transports.httpsite import HTTPLimits
from hgwire_tw.transports.ssh_limits import SSHLimits
from hgwire_tw.transports.tcp import TCPLimits
from tests.repobuilders import init_repo

README = Path(__file__).resolve().parent.parent / "README.md"


def parse(*argv: str) -> Options:
    opts = Options()
    opts.parseOptions(list(argv))
    return opts


def test_readme_reference_is_generated_from_the_table() -> None:
    """README.md's settings section is exactly what the table generates (regenerate it
    with `python -m hgwire_tw.app.options --write README.md`)."""
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    assert with_reference(text) == text, "README reference is stale"


def test_every_option_and_toml_key_is_in_help_and_readme() -> None:
    """Each command-line option of Options is a table row, and each row's option and TOML
    key appear in --help and in the README reference."""
    options = Options()
    declared = {opt.rstrip("=") for opt in options.longOpt} - {"help", "version"}
    rows = {s.name for s in TABLE if s.cli}
    assert declared == rows
    helptext, reference = help_text(), markdown_reference()
    for s in TABLE:
        if s.cli:
            assert f"--{s.name}" in helptext and f"`--{s.name}" in reference, s.name
        if s.toml_key:
            assert s.toml_key in helptext and f"`{s.toml_key}" in reference, s.name
        if s.kind is not Kind.FLAG:
            assert s.default_text() in reference, s.name


def test_defaults_build_the_default_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no option given, the Settings built from the table are Settings() (so a
    default written in the table cannot contradict the dataclass)."""
    monkeypatch.chdir(init_repo(tmp_path / "cwd"))
    assert parse().settings() == replace(
        Settings(), tcp_limits=TCPLimits(), http_limits=HTTPLimits(), ssh_limits=SSHLimits()
    )


def test_toml_keys_set_what_the_options_set(tmp_path: Path) -> None:
    """Every VALUE row given in TOML (as a string, parsed like the command line) lands in
    the same place as the option."""
    init_repo(tmp_path / "r")
    samples = {
        "workers": "3",
        "max-push-bytes": "1000",
        "compression": "zlib",
        "tcp-streams": "3",
        "tcp-idle-timeout": "7",
        "ssh-login-timeout": "12",
        "ssh-max-per-address": "4",
        "cache": "disk",
        "cache-size": "123",
        "blob-retention": "60",
        "clonebundles": "scheduled",
        "clonebundles-every": "5",
        "mirror-every": "9",
        "blob-base-url": "https://cdn.example/b",
        "state-dir": str(tmp_path / "s"),
    }
    config = tmp_path / "c.toml"
    config.write_text(
        "".join(f'{name.replace("-", "_")} = "{value}"\n' for name, value in samples.items()),
        encoding="utf-8",
    )
    repo = ["--repo", f"r={tmp_path / 'r'}"]
    from_file = parse(*repo, "--config", str(config))
    cli = parse(*repo, *(arg for n, v in samples.items() for arg in (f"--{n}", v)))
    for name in samples:
        dest = next(s.dest for s in TABLE if s.name == name)
        assert from_file[dest] == cli[dest], name
    assert from_file.settings() == cli.settings()
    assert cli.settings().workers == 3 and cli.settings().tcp_limits.streams == 3
    ssh = cli.settings().ssh_limits
    assert ssh is not None and (ssh.login_timeout, ssh.max_per_address) == (12.0, 4)


@pytest.mark.parametrize(
    "toml, message",
    [
        ('workers = "four"\n', r"c\.toml:1: workers \(--workers\): expected an integer, got 'fo"),
        ("\n\ntcp_streams = 0\n", r"c\.toml:3: tcp_streams \(--tcp-streams\): must be positive"),
        ("cache = 3\n", r"c\.toml:1: cache \(--cache\): expected a string, got 3"),
        ("no_v2 = 1\n", r"c\.toml:1: no_v2 \(--no-v2\): expected true or false, got 1"),
        ("http = [1]\n", r"c\.toml:1: http \(--http\): expected a string or an array"),
        ("x = 1\nworkers = 2\nhtp = 'a'\n", r"c\.toml:3: unknown setting\(s\): htp, x"),
        ("[repos]\na = 3\n", r"c\.toml:1: repos \(--repo\): must be a table of NAME = PATH"),
        ("workers = \n", r"c\.toml: Invalid value \(at line 1, column 11\)"),
    ],
)
def test_config_errors_name_file_line_and_key(tmp_path: Path, toml: str, message: str) -> None:
    """A bad value in the config file is one line naming the file, line and key."""
    init_repo(tmp_path / "r")
    config = tmp_path / "c.toml"
    config.write_text(toml, encoding="utf-8")
    with pytest.raises(usage.UsageError, match=message) as caught:
        parse("--repo", str(tmp_path / "r"), "--config", str(config))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workers", "four"], "--workers: expected an integer, got 'four'"),
        (["--tcp-streams", "65"], "--tcp-streams: at most 64"),
        (["--blob-retention", "nan"], "--blob-retention: expected a number, got 'nan'"),
        (["--cache", "redis"], "--cache: must be memory, disk or none, not 'redis'"),
        (["--mirror", "m"], "--mirror: expected NAME=URL, got 'm'"),
        (["--repo", "a=x", "--repo", "a=y"], "--repo: name 'a' given twice"),
        (["--config", "/nonexistent.toml"], "--config /nonexistent.toml: No such file"),
    ],
)
def test_option_errors_name_the_option(tmp_path: Path, argv: list[str], message: str) -> None:
    """A bad command-line value is one line naming the option."""
    init_repo(tmp_path / "r")
    with pytest.raises(usage.UsageError) as caught:
        parse("--repo", f"r={tmp_path / 'r'}", *argv)
    assert message in str(caught.value)


def test_flags_from_either_place_and_maps_merge(tmp_path: Path) -> None:
    """A flag is on if the file or the command line says so; --repo and [repos] merge,
    the command line winning for a name in both."""
    for name in ("a", "b", "c"):
        init_repo(tmp_path / name)
    config = tmp_path / "c.toml"
    config.write_text(
        f'allow_push_over_http = true\n[repos]\na = "{tmp_path / "a"}"\nb = "{tmp_path / "b"}"\n',
        encoding="utf-8",
    )
    opts = parse("--config", str(config), "--repo", f"b={tmp_path / 'c'}", "--no-v2")
    assert opts["repos"] == {"a": str(tmp_path / "a"), "b": str(tmp_path / "c")}
    settings = opts.settings()
    assert settings.allow_push_over_http and not settings.v2_enabled
