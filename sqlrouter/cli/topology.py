"""``sqlrouter admin switchover`` and ``failover``: topology operations, run here.

They change the cluster itself, with the registry's admin credentials
(:mod:`sqlrouter.switchover`); every application sees the new master through its own
monitor.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from .. import switchover as topology
from .._table import plural
from ..control.protocol import ControlError
from ..registry.find import find_registry

__all__ = ["run"]

Out = Callable[[str], None]


def run(args: argparse.Namespace, out: Out) -> int:
    """Run ``sqlrouter admin switchover`` or ``failover``; the exit status."""
    if args.socket or args.all or args.tcp:
        raise ControlError(
            f"{args.admin_command} runs in this command, on the servers, with the "
            "registry's admin credentials: --socket, --all and --tcp do not apply"
        )
    service = find_registry(args.registry, given_as="--registry ").lookup(args.service)
    steps: list[Any] = []

    def report(step: Any) -> None:
        steps.append(step)
        if not args.json:
            out(str(step))

    started = time.monotonic()
    if args.admin_command == "switchover":
        topology.switchover(
            service, args.to, dry_run=args.dry_run, timeout=args.op_timeout, report=report
        )
    else:
        topology.failover(
            service,
            force=args.force,
            dry_run=args.dry_run,
            timeout=args.op_timeout,
            report=report,
        )
    elapsed = time.monotonic() - started
    if args.json:
        out(
            json.dumps(
                {
                    "ok": True,
                    "steps": [
                        {
                            "name": s.name,
                            "kind": s.kind,
                            "ok": s.ok,
                            "detail": s.detail,
                            "seconds": s.seconds,
                        }
                        for s in steps
                    ],
                },
                indent=2,
            )
        )
    else:
        what = f"{args.admin_command} of service {service.name!r}: " + (
            "dry run, nothing was changed" if args.dry_run else f"done in {elapsed:.2f}s"
        )
        warnings = sum(1 for s in steps if s.kind == "warning")
        left_out = sum(1 for s in steps if s.kind == "left out")
        notes = [plural(warnings, "warning")] if warnings else []
        if left_out:
            notes.append(f"{plural(left_out, 'server')} left out")
        if notes:
            what += f" ({' and '.join(notes)}: see above)"
        out(what)
    return 0
