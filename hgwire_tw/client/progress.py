"""Progress of a clone or pull on a terminal: counts and bytes, at most ten times a second.

Silent when the stream is not a terminal (logs and pipes get only the final summary).
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from hgwire_tw.client.pull import PullStats

__all__ = ["TerminalProgress"]


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


class TerminalProgress:
    """A ``ProgressFn`` drawing one status line on ``stream`` (any thread)."""

    def __init__(self, stream: TextIO, *, interval: float = 0.1) -> None:
        self._stream = stream
        self._enabled = stream.isatty()
        self._interval = interval
        self._last = 0.0
        self._lock = threading.Lock()
        self._width = 0

    def __call__(self, stats: PullStats) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._last < self._interval and stats.topic != "closing transaction":
            return
        self._last = now
        total = f"/{stats.total}" if stats.total is not None else ""
        line = f"{stats.topic}: {stats.done}{total}  received {_bytes(stats.bytes)}"
        with self._lock:
            pad = max(0, self._width - len(line))
            self._stream.write("\r" + line + " " * pad)
            self._stream.flush()
            self._width = len(line)

    def clear(self) -> None:
        """Erase the status line."""
        if self._enabled and self._width:
            with self._lock:
                self._stream.write("\r" + " " * self._width + "\r")
                self._stream.flush()
                self._width = 0
