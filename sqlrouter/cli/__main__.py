"""``python -m sqlrouter.cli``: the ``sqlrouter`` command (as ``python -m sqlrouter``)."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
