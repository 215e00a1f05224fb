"""``sqlrouter demo``: sqlrouter on a real local cluster, step by step."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from .sandbox import Sandbox, format_status

__all__ = ["run_demo"]


def run_demo(
    directory: str | None = None,
    *,
    keep: bool = False,
    out: Callable[[str], None] = print,
) -> None:
    """Bring up a sandbox (in ``directory`` or a temporary one) and show sqlrouter at work.

    The sandbox is destroyed at the end unless ``keep`` is true or ``directory`` held
    an existing sandbox.
    """
    tmp = None if directory else tempfile.mkdtemp(prefix="sqlrouter-demo-")
    path = Path(directory or tmp or ".")
    sb = Sandbox(path / "sandbox" if tmp else path, progress=lambda m: out(f"  {m}"))
    existed = sb.exists
    out("== 1. a local replicated cluster (sqlrouter sandbox up)")
    sb.up()
    try:
        out(format_status(sb.status()))
    finally:
        if keep or existed:
            out(f"\nthe sandbox keeps running in {sb.dir}; stop it with:")
            out(f"  sqlrouter sandbox down --dir {sb.dir}")
        else:
            out("\n== cleaning up (sqlrouter sandbox destroy)")
            sb.destroy()
            if tmp:
                Path(tmp).rmdir()
