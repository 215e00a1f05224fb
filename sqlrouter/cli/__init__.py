"""The ``sqlrouter`` command: sandbox management, routing explanations, the demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import Error
from ..sandbox import FAULTS, Sandbox, SandboxError, format_status
from .admin import add_admin_parser, run_admin
from .demo import run_demo
from .route import explain_route

__all__ = ["main"]


def _print(msg: str) -> None:
    print(msg, flush=True)


def _sandbox_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser(
        "sandbox",
        help="a local replicated MariaDB cluster for trying and testing sqlrouter",
        description=(
            "Manage a local MariaDB cluster (one master, N replicas, GTID replication) "
            "built from the MariaDB server installed on this machine, bound to 127.0.0.1. "
            "It writes DIR/sqlrouter.toml, the registry describing service 'sandbox'."
        ),
    )
    ssub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", required=True, help="the sandbox directory")
        return p

    up = with_dir(
        ssub.add_parser(
            "up",
            help="create and start the cluster, or start a stopped one",
            description=(
                "Create DIR and start one master and N replicas, or start the servers of "
                "an existing sandbox. On a running sandbox it says so and changes nothing."
            ),
        )
    )
    up.add_argument("--replicas", type=int, default=2, help="number of replicas (default 2)")
    up.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="first TCP port; nodes use consecutive ports (default: any free ports)",
    )
    status = with_dir(
        ssub.add_parser("status", help="show each node's role, state and replication")
    )
    status.add_argument(
        "--json", action="store_true", help="print the rows as JSON (errors in full)"
    )
    with_dir(ssub.add_parser("down", help="stop the servers (data kept)"))
    with_dir(ssub.add_parser("destroy", help="stop the servers and delete DIR"))
    url = with_dir(
        ssub.add_parser(
            "url",
            help="print the service URL of the application user (with its password)",
        )
    )
    url.add_argument(
        "--qos", default="RW_STRICT", type=str.upper, choices=["RW_STRICT", "RO_RELAXED"]
    )
    rejoin = with_dir(
        ssub.add_parser(
            "rejoin",
            help="rebuild NODE as a replica of the current master (after a failover)",
            description=(
                "Stop NODE, delete its data, initialise it again and make it replicate "
                "from the current master (the one writable node) from the start of its "
                "binlog. For an old master that must not come back as it was, or a "
                "replica left out by a failover. Everything NODE held that the master "
                "lacks is lost."
            ),
        )
    )
    rejoin.add_argument("node", metavar="NODE", help="node name, e.g. db1")
    fault = with_dir(
        ssub.add_parser(
            "fault",
            help="inject a fault into one node",
            description=(
                "Inject a fault into NODE. ACTION is one of: delay SECONDS (replication "
                "MASTER_DELAY), stop-io (stop the replication IO thread), stop-sql (stop "
                "the SQL thread), resume (undo delay and stops), kill (SIGKILL), freeze "
                "(SIGSTOP), thaw (SIGCONT), restart."
            ),
        )
    )
    fault.add_argument("node", metavar="NODE", help="node name, e.g. db2")
    fault.add_argument("fault_action", metavar="ACTION", choices=FAULTS, help=", ".join(FAULTS))
    fault.add_argument("seconds", metavar="SECONDS", nargs="?", type=float, help="for delay")


def _run_sandbox(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqlrouter",
        description="sqlrouter: a SQL routing driver for replicated MySQL/MariaDB clusters",
    )
    parser.add_argument("--version", action="version", version=f"sqlrouter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _sandbox_parser(sub)
    route = sub.add_parser(
        "route",
        help="print which datasource a service URL would get now, and why",
        description=(
            "Ask the monitor for a snapshot of the URL's service and print, per "
            "datasource, what it observed and the router's verdict, then the decision, "
            "and whether the URL's own user logs in to the datasource chosen (the "
            "monitor may use another account). Exit status 0 when a connect would "
            "succeed now, 1 when no datasource qualifies or the login fails."
        ),
    )
    route.add_argument("url", metavar="URL", help="a service URL, e.g. sqlrouter://app@shop/db")
    demo = sub.add_parser(
        "demo",
        help="show sqlrouter at work on a local sandbox cluster",
        description=(
            "Start a sandbox cluster (in a temporary directory unless --dir is given) and "
            "show routing on it; the temporary sandbox is destroyed at the end."
        ),
    )
    demo.add_argument(
        "--dir",
        default=None,
        help="sandbox directory: created if needed, reused (as it is) if it holds one",
    )
    demo.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="first TCP port of a new sandbox; nodes use consecutive ports (default: any free)",
    )
    demo.add_argument("--keep", action="store_true", help="leave the sandbox running")
    add_admin_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "sandbox":
            return _run_sandbox(args)
        if args.command == "route":
            explanation = explain_route(args.url)
            _print(explanation.text)
            return 0 if explanation.ok else 1
        if args.command == "demo":
            run_demo(args.dir, keep=args.keep, base_port=args.base_port, out=_print)
            return 0
        if args.command == "admin":
            return run_admin(args, out=_print)
    except SandboxError as exc:
        print(f"sqlrouter {args.command}: error: {exc}", file=sys.stderr)
        return 1
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
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover
