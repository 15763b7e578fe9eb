"""``python -m hgwire_tw`` is the ``hgwire`` command."""

import sys

from hgwire_tw.cli import main

sys.exit(main())
