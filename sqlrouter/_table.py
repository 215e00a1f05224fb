"""Plain-text tables for the command line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

__all__ = ["CLIPPED_NOTE", "ERROR_WIDTH", "GTID_WIDTH", "clip", "format_table", "plural"]

#: The widest an error message is shown in a table cell (``--json`` shows it whole).
ERROR_WIDTH: Final = 60
#: The widest a GTID position is shown in a table cell (a cluster with many replication
#: domains has positions of hundreds of characters).
GTID_WIDTH: Final = 40
#: The line printed under a table whose cells were cut by :func:`clip`.
CLIPPED_NOTE: Final = "(long values are cut at ... ; --json shows them in full)"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table; ``None`` cells print as ``-``."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def clip(text: object, width: int = ERROR_WIDTH) -> str | None:
    """``text`` on one line, cut to ``width`` characters (ending ``...``); None stays None."""
    if text is None:
        return None
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 3].rstrip() + "..."


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 process``, ``2 processes``, ``0 sockets``."""
    word = singular if count == 1 else (plural_form or singular + "s")
    return f"{count} {word}"
