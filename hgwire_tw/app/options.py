"""Options, config file, ``Settings`` and reference, generated from the settings table.

Values merge the same way for every row of ``hgwire_tw.app.settings.TABLE``: the command
line wins over the config file, which wins over the default. Flags are on when either
says so; lists (``--http``, ...) come whole from the command line when given there, else
from the file; tables (``--repo``, ``--mirror``) are the union, the command line winning
for a name given in both.

A mistake is a :class:`twisted.python.usage.UsageError` of one line naming the option
(``--workers: expected an integer, got 'four'``) or the file, line and key
(``hgwire.toml:3: workers (--workers): expected an integer, got 'four'``).
"""

from __future__ import annotations

import math
import os
import re
import sys
import textwrap
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from twisted.python import usage

from hgwire_tw.app.settings import BY_TOML, GROUPS, NESTED, TABLE, Kind, Setting
from hgwire_tw.context import Settings

__all__ = [
    "BEGIN",
    "END",
    "ConfigFile",
    "TableOptions",
    "build_settings",
    "help_text",
    "load_config",
    "markdown_reference",
    "resolve",
    "with_reference",
]

# -- parsing values --------------------------------------------------------------------------

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string"}


def _parse_text(s: Setting, text: str) -> Any:
    """A command-line string as the row's type."""
    if s.type is str:
        return text
    try:
        value = s.type(text.strip())
    except ValueError:
        raise ValueError(f"expected {_TYPE_WORDS[s.type]}, got {text!r}") from None
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"expected {_TYPE_WORDS[s.type]}, got {text!r}")
    return value


def _typed_toml(s: Setting, value: Any) -> Any:
    """A TOML scalar as the row's type (a TOML string parses like the command line)."""
    if isinstance(value, str):
        return _parse_text(s, value)
    if s.type is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if s.type is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"expected {_TYPE_WORDS[s.type]}, got {value!r}")


def _string_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"expected a string or an array of strings, got {value!r}")
    return list(items)


def _split_item(s: Setting, text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        if s.bare_key is None:
            raise ValueError(f"expected {s.metavar}, got {text!r}")
        name, value = s.bare_key, text
    return name.strip("/"), value


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """A parsed ``--config`` file: its values and where each top-level key is."""

    path: str
    values: Mapping[str, Any]
    text: str

    def where(self, s: Setting) -> str:
        """``FILE:LINE: key (--option)`` for messages about row ``s``."""
        key = s.toml_key or s.name
        line = _line_of(self.text, key)
        place = f"{self.path}:{line}" if line else self.path
        return f"{place}: {key}" + (f" ({s.where})" if s.cli else "")


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(
        rf"""^\s*(?:\[\[?\s*)?(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')"""
        rf"""\s*(?:[=.\]])"""
    )
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return None


def load_config(path: str | None) -> ConfigFile | None:
    """Read and check the keys of ``--config FILE`` (None: no file)."""
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise usage.UsageError(f"--config {path}: {reason}") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"{path}: {e}") from None
    config = ConfigFile(path, values, text)
    unknown = sorted(set(values) - set(BY_TOML))
    if unknown:
        line = _line_of(text, unknown[0])
        place = f"{path}:{line}" if line else path
        raise usage.UsageError(f"{place}: unknown setting(s): {', '.join(unknown)}")
    return config


def _merge_map(s: Setting, given: Sequence[str], table: object) -> dict[str, str]:
    merged: dict[str, str] = {}
    for item in given:
        name, text = _split_item(s, item)
        if name in merged:
            raise ValueError(f"name {name!r} given twice")
        merged[name] = text
    if table is _ABSENT:
        return merged
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ValueError(f"must be a table of {s.metavar.replace('=', ' = ')}")
    for name, text in table.items():
        merged.setdefault(name.strip("/"), text)
    return merged


_ABSENT: Any = object()


def _merge(s: Setting, given: Sequence[Any], raw: Any) -> Any:
    """The typed value of row ``s``: ``given`` on the command line (in order), ``raw``
    from the config file (``_ABSENT``: not there)."""
    if s.kind is Kind.FLAG:
        if given or raw is _ABSENT:
            return bool(given)
        if not isinstance(raw, bool):
            raise ValueError(f"expected true or false, got {raw!r}")
        return raw
    if s.kind is Kind.MAP:
        return _merge_map(s, given, raw) or s.default_value()
    if s.kind is Kind.VALUE and given:
        return _parse_text(s, given[-1])
    if s.kind is Kind.LIST and given:
        return list(given)
    if raw is _ABSENT:
        return s.default_value()
    if s.kind is Kind.VALUE:
        return _typed_toml(s, raw)
    if s.kind is Kind.LIST:
        return _string_list(raw)
    assert s.parse_toml is not None
    return s.parse_toml(raw)


def resolve(s: Setting, given: Sequence[Any], config: ConfigFile | None) -> Any:
    """The value of row ``s`` from the command-line values ``given`` (in order), the
    config file and the default, checked; raises a one-line ``UsageError``."""
    raw = _ABSENT
    if config is not None and s.toml_key is not None:
        raw = config.values.get(s.toml_key, _ABSENT)
    # Name the file when the value (or part of it) came from there.
    from_file = raw is not _ABSENT and (not given or s.kind is Kind.MAP)
    where = config.where(s) if from_file and config is not None else s.where
    try:
        value = _merge(s, given, raw)
        if s.check is not None and value is not None:
            value = s.check(value)
    except ValueError as e:
        raise usage.UsageError(f"{where}: {e}") from None
    return value


def build_settings(values: Mapping[str, Any]) -> Settings:
    """The ``Settings`` of resolved option values (``options[dest]`` of every row)."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for s in TABLE:
        if s.field is None:
            continue
        value = values[s.dest]
        if s.to_field is not None:
            value = s.to_field(value)
        head, _, tail = s.field.partition(".")
        if tail:
            nested.setdefault(head, {})[tail] = value
        else:
            direct[head] = value
    for head, given in nested.items():
        direct[head] = replace(NESTED[head].get()(), **given)
    return Settings(**direct)


# -- the options ---------------------------------------------------------------------------


def _handler(s: Setting) -> Callable[..., None]:
    if s.kind is Kind.FLAG:

        def flag(self: TableOptions) -> None:
            self.given.setdefault(s.name, []).append(True)

        handler: Callable[..., None] = flag
    else:

        def value(self: TableOptions, text: str) -> None:
            self.given.setdefault(s.name, []).append(text)

        handler = value
    handler.__doc__ = s.help  # (getUsage renders the full text from the table)
    handler.__name__ = "opt_" + s.name.replace("-", "_")
    return handler


class TableOptions(usage.Options):
    """``usage.Options`` with one option per row of :data:`TABLE`.

    Options only collect what was typed; :meth:`postOptions` reads the config file and
    sets ``self[row.dest]`` of every row (see :func:`resolve`). Subclasses add checks that
    span settings in :meth:`check_together`.
    """

    def __init__(self) -> None:
        self.given: dict[str, list[Any]] = {}
        super().__init__()  # type: ignore[no-untyped-call]

    def postOptions(self) -> None:
        """Merge command line, config file and defaults, then check."""
        config_path = self.given.get("config", [None])[-1]
        config = load_config(config_path)
        for s in TABLE:
            self[s.dest] = resolve(s, self.given.get(s.name, []), config)
        self.check_together()

    def check_together(self) -> None:
        """Checks involving more than one setting (none here)."""

    def settings(self) -> Settings:
        """The ``Settings`` these options describe."""
        return build_settings(self)

    def getUsage(self, width: int | None = None) -> str:
        """The ``--help`` text, from the table."""
        return help_text(width or int(os.environ.get("COLUMNS", "80")), self.longdesc)

    longdesc = ""


for _row in TABLE:
    if _row.cli:
        setattr(TableOptions, "opt_" + _row.name.replace("-", "_"), _handler(_row))


# -- the reference -------------------------------------------------------------------------


def _option_form(s: Setting) -> str:
    if not s.cli:
        return ""
    return f"--{s.name}" if s.kind is Kind.FLAG else f"--{s.name} {s.metavar}"


def _toml_form(s: Setting) -> str:
    key = s.toml_key
    if key is None:
        return ""
    if s.kind is Kind.FLAG:
        return f"{key} = true"
    if s.kind is Kind.LIST:
        return f'{key} = ["{s.metavar}", ...]'
    if s.kind is Kind.MAP:
        name, _, value = s.metavar.partition("=")
        return f'{key} = {{{name} = "{value}"}}'
    if s.kind is Kind.TABLE:
        return s.metavar
    if s.type is str:
        return f'{key} = "{s.metavar}"'
    return f"{key} = {s.metavar}"


def _one_line_help(s: Setting) -> str:
    text = s.help
    if s.kind is not Kind.FLAG and (s.shown is not None or s.default_text() != "none"):
        text += f" Default: {s.default_text()}."
    if s.see:
        text += f" See {s.see}."
    return text


def help_text(width: int = 80, description: str = "") -> str:
    """``hgwire serve --help``: every option by group, with its default and TOML key."""
    out = ["Usage: hgwire serve [options]   (or: twistd -n hgwire [options])", ""]
    if description:
        out += [*textwrap.wrap(description, width), ""]
    indent = " " * 6
    for group in GROUPS:
        out.append(f"{group}:")
        for s in TABLE:
            if s.group != group:
                continue
            head = _option_form(s) or _toml_form(s) + "   (config file only)"
            toml = _toml_form(s) if s.cli else ""
            out.append(f"  {head}" + (f"   [config: {s.toml_key}]" if toml else ""))
            out += textwrap.wrap(
                _one_line_help(s), width, initial_indent=indent, subsequent_indent=indent
            )
        out.append("")
    out += [
        "Other:",
        "  -h, --help",
        f"{indent}Print this help and exit.",
        "  --version",
        f"{indent}Print the version of hgwire_tw and exit.",
        "",
    ]
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def markdown_reference() -> str:
    """The README's settings reference: one table per group."""
    out: list[str] = []
    for group in GROUPS:
        out += [
            f"**{group}**",
            "",
            "| option | config file | default | meaning |",
            "|---|---|---|---|",
        ]
        for s in TABLE:
            if s.group != group:
                continue
            meaning = s.help + (f" ([{s.see}]({s.see}))" if s.see else "")
            out.append(
                "| "
                + " | ".join(
                    _cell(c)
                    for c in (
                        _code(_option_form(s)) or "(config file only)",
                        _code(_toml_form(s)),
                        s.default_text() if s.shown else _code(s.default_text()),
                        meaning,
                    )
                )
                + " |"
            )
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


BEGIN = "<!-- settings reference (python -m hgwire_tw.app.options --write README.md) -->"
END = "<!-- end of settings reference -->"


def with_reference(readme: str) -> str:
    """``readme`` with the text between ``BEGIN`` and ``END`` regenerated."""
    start = readme.index(BEGIN) + len(BEGIN)
    end = readme.index(END, start)
    return readme[:start] + "\n" + markdown_reference() + readme[end:]


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m hgwire_tw.app.options [--write README.md]``: print (or write) the
    reference."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "--write":
        path = Path(args[1])
        path.write_text(with_reference(path.read_text(encoding="utf-8")), encoding="utf-8")
        return 0
    if args:
        print("usage: python -m hgwire_tw.app.options [--write README.md]", file=sys.stderr)
        return 2
    sys.stdout.write(markdown_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
