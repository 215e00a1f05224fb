"""The ``sqlrouter`` command: sandbox, route, demo, admin.

The parser (:mod:`._parser`) knows every command; each command runs in a module of its
own (:mod:`.sandbox`, :mod:`.route`, :mod:`.demo`, :mod:`.admin`, and :mod:`.topology`
for ``admin switchover`` and ``admin failover``, :mod:`.autofailover` for
``admin autofailover``), imported when that command runs: so
``sqlrouter admin status`` starts without loading the switchover package or the sandbox,
and ``sqlrouter route`` without the control client's formatting.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import Error
from ._parser import build_parser

__all__ = ["build_parser", "main"]


def _print(msg: str) -> None:
    print(msg, flush=True)


def _runner(args: argparse.Namespace) -> str:
    """The module of :mod:`sqlrouter.cli` that runs the parsed command."""
    if args.command == "admin" and args.admin_command in ("switchover", "failover"):
        return "topology"
    if args.command == "admin" and args.admin_command == "autofailover":
        return "autofailover"
    return str(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sqlrouter`` command; its exit status."""
    args = build_parser().parse_args(argv)
    command = importlib.import_module(f"{__name__}.{_runner(args)}")
    try:
        status: int = command.run(args, _print)
    except BrokenPipeError:
        # Output piped into a command that stopped reading (e.g. head): not an error.
        sys.stderr.close()
        return 0
    except Error as exc:
        print(f"sqlrouter {args.command}: error: {exc.args[-1]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status
