"""``sqlrouter sandbox``: a local replicated MariaDB cluster (:mod:`sqlrouter.sandbox`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable

from ..sandbox import Sandbox, SandboxError, format_status

__all__ = ["run"]

Out = Callable[[str], None]


def run(args: argparse.Namespace, out: Out) -> int:
    """Run ``sqlrouter sandbox ACTION``; the exit status."""
    try:
        return _run(args, out)
    except SandboxError as exc:
        print(f"sqlrouter sandbox: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, _print: Out) -> int:
    sb = Sandbox(args.dir, progress=_print)
    if args.action == "up":
        sb.up(replicas=args.replicas, base_port=args.base_port)
        _print("")
        _print(format_status(sb.status()))
        _print("")
        _print(f"registry: {sb.registry_path}")
        _print(f"read-write:  {sb.url('RW_STRICT', hide_password=True)}")
        _print(f"read-only:   {sb.url('RO_RELAXED', hide_password=True)}")
        _print(
            f"(the password is in {sb.dir / 'sandbox.json'}; "
            f"'sqlrouter sandbox url --dir {sb.dir}' prints the full URL)"
        )
    elif args.action == "status":
        rows = sb.status()
        if args.json:
            _print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        else:
            _print(format_status(rows))
    elif args.action == "rejoin":
        sb.rejoin(args.node)
        _print("")
        _print(format_status(sb.status()))
    elif args.action == "down":
        stopped = sb.down()
        _print(f"stopped {', '.join(stopped)}" if stopped else "no server was running")
    elif args.action == "destroy":
        sb.destroy()
        _print(f"destroyed {sb.dir}")
    elif args.action == "url":
        _print(sb.url(args.qos))
    elif args.action == "fault":
        if args.fault_action != "delay" and args.seconds is not None:
            raise SandboxError(f"{args.fault_action} takes no SECONDS argument")
        _print(sb.fault(args.node, args.fault_action, args.seconds))
    return 0
