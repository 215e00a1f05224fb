"""Whether a process exists: what the control client and the sandbox ask of a pid."""

from __future__ import annotations

import os

__all__ = ["exists"]


def exists(pid: int) -> bool:
    """True while process ``pid`` exists (a zombie too), whoever's it is (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True
