"""The names of the faults the sandbox injects (``sqlrouter sandbox fault NODE ACTION``).

Here, below the sandbox, so that the command line's parser lists them in its help and
checks them without importing :mod:`sqlrouter.sandbox` (the CLI's start-up time: the
sandbox is loaded only by the commands that use it).
"""

from __future__ import annotations

from typing import Final

__all__ = ["FAULTS"]

#: Fault actions of ``sqlrouter sandbox fault`` (``delay`` takes SECONDS).
FAULTS: Final = ("delay", "stop-io", "stop-sql", "resume", "kill", "freeze", "thaw", "restart")
