"""The Mercurial ``ui`` objects the server opens repositories with.

A server must not depend on whoever happens to run it: the ``ui`` built here reads no
user or system hgrc and no environment settings, never prompts, never pages, and never
writes to the process's real stdout/stderr (which may be a network connection, as with
``hg serve --stdio``). Each repository's own ``.hg/hgrc`` is still read when the
repository is opened, as ``hg serve`` does, so per-repository hooks, ``[server]`` and
``[web]`` settings and extensions apply.
"""

from __future__ import annotations

import io
from typing import Any

from mercurial import ui as uimod

try:  # Mercurial >= 7.1 registers bundle2 part handlers etc. only through this module
    from mercurial import initialization as _hginit
except ImportError:  # pragma: no cover - older Mercurial registers them on import
    pass
else:
    _hginit.init()

__all__ = ["DiscardingWriter", "make_ui"]


class DiscardingWriter(io.RawIOBase):
    """A binary sink that accepts and drops everything (bounded memory, unlike BytesIO)."""

    def writable(self) -> bool:
        """Always writable."""
        return True

    def write(self, data: Any) -> int:
        """Drop ``data``, reporting it as written."""
        return len(data)

    def isatty(self) -> bool:
        """Never a terminal: keeps Mercurial from colouring or paging."""
        return False


# Settings that make Mercurial behave like a daemon rather than a terminal program.
_SERVER_CONFIG: tuple[tuple[bytes, bytes, bytes], ...] = (
    (b"ui", b"quiet", b"true"),
    (b"ui", b"interactive", b"false"),
    (b"ui", b"paginate", b"false"),
    (b"ui", b"report_untrusted", b"false"),
    (b"ui", b"color", b"never"),
    (b"progress", b"disable", b"true"),
)


def make_ui(
    fout: io.RawIOBase | io.BufferedIOBase | None = None,
    ferr: io.RawIOBase | io.BufferedIOBase | None = None,
) -> Any:
    """A quiet, non-interactive Mercurial ``ui`` that reads no user or system hgrc.

    Output goes to ``fout``/``ferr`` (discarded by default); pass ``io.BytesIO()`` objects
    to capture it, or use ``ui.pushbuffer()``/``ui.popbuffer()`` around a call.
    """
    # ``ui.ui()`` (unlike ``ui.ui.load()``) starts from an empty configuration: no
    # HGRCPATH, no ~/.hgrc, no /etc/mercurial, no environment-derived settings.
    ui = uimod.ui()
    for section, name, value in _SERVER_CONFIG:
        ui.setconfig(section, name, value, b"hgwire")
    ui.fout = fout if fout is not None else DiscardingWriter()
    ui.ferr = ferr if ferr is not None else DiscardingWriter()
    ui.fin = io.BytesIO(b"")
    return ui
