"""The core is sans-IO: importing it pulls in neither Twisted nor Mercurial."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["errors", "frames", "cbor", "streams", "reactor"]


def test_core_imports_no_twisted_or_mercurial() -> None:
    """Every core module imports in a fresh interpreter without twisted or mercurial."""
    code = (
        "import sys\n"
        + "".join(f"import hgwire_tw.core.{name}\n" for name in MODULES)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'mercurial'))\n"
        + "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
