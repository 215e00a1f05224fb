"""The ``sqlrouter`` command line: every command and its options (nothing runs here)."""

from __future__ import annotations

import argparse
import math

from .. import __version__
from .._faults import FAULTS
from ..control.client import DEFAULT_TIMEOUT
from ..control.protocol import COMMANDS

__all__ = ["build_parser"]


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
            "show routing on it; the temporary sandbox is destroyed at the end, and its "
            "servers die with the demo if it is killed."
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
    _admin_parser(sub)
    agent = sub.add_parser(
        "agent",
        help="hold this host's monitors for the services of a registry (long-running)",
        description=(
            "Watch every service of the registry (or those given with --service) and "
            "publish the snapshots that this user's application processes on this host "
            "read instead of probing themselves. Runs until SIGTERM or SIGINT, with its "
            "own control socket (sqlrouter admin status shows it). Each service needs a "
            "monitor account in the registry ([services.NAME.monitor])."
        ),
    )
    agent.add_argument(
        "--registry", required=True, metavar="FILE", help="the registry (a file, dns:DOMAIN...)"
    )
    agent.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="NAME",
        help="watch only this service (repeatable; default: every service of the registry)",
    )
    agent.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=None,
        help="serve the lag-aware health endpoint (/health/SERVICE/DATASOURCE, /status, "
        "/metrics) for HAProxy and Kubernetes on this loopback address (docs/observability.md)",
    )
    agent.add_argument(
        "--agent-check",
        metavar="HOST:PORT",
        default=None,
        help="also answer HAProxy's agent check (one line: up, or down #reason) there",
    )
    agent.add_argument(
        "--allow-remote",
        action="store_true",
        help="let --http and --agent-check listen on a non-loopback address",
    )
    agent.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="what the agent logs on standard error (default INFO)",
    )
    return parser


def _max_lag_value(text: str) -> float | None:
    if text.lower() in ("default", "registry"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds >= 0 or 'default', got {text!r}"
        )
    return value


def _admin_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sqlrouter admin`` to the ``sqlrouter`` command's subcommands."""
    ap = sub.add_parser(
        "admin",
        help="command running processes (control socket); switchover and failover",
        description=(
            "Send a command to the control socket of running processes of this user "
            "(enabled with SQLROUTER_CONTROL or [control] enabled = true), or run a "
            "switchover or failover on the servers. See docs/control.md."
        ),
    )
    target = ap.add_mutually_exclusive_group()
    target.add_argument("--socket", metavar="PATH", help="the control socket of one process")
    target.add_argument(
        "--all",
        action="store_true",
        help="every process with a socket in the directory (answers aggregated)",
    )
    target.add_argument("--tcp", metavar="HOST:PORT", help="a control TCP listener")
    ap.add_argument("--token-file", metavar="FILE", help="the token for --tcp")
    ap.add_argument(
        "--dir",
        metavar="DIR",
        help=(
            "the socket directory (default: $SQLROUTER_CONTROL when it names one, the "
            "registry's [control] socket_dir, $XDG_RUNTIME_DIR/sqlrouter or "
            "/tmp/sqlrouter-UID)"
        ),
    )
    ap.add_argument("--json", action="store_true", help="print the answers as JSON")
    ap.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for each process's answer (default {DEFAULT_TIMEOUT:g})",
    )
    cmds = ap.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")

    def service_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--service", help="the service (needed when several have DATASOURCE)")

    status = cmds.add_parser("status", help=COMMANDS["status"].help)
    status.add_argument("--service", help="show this service only (default: every service)")
    explain = cmds.add_parser("explain", help=COMMANDS["explain"].help)
    explain.add_argument("url", metavar="URL")
    for name in ("offline", "online"):
        p = cmds.add_parser(name, help=COMMANDS[name].help)
        p.add_argument("datasource", metavar="DATASOURCE")
        service_option(p)
    promote = cmds.add_parser("promote", help=COMMANDS["promote"].help)
    promote.add_argument("datasource", metavar="DATASOURCE", nargs="?")
    promote.add_argument("--clear", action="store_true", help="forget the promotion")
    service_option(promote)
    setp = cmds.add_parser(
        "set",
        help="change a setting of SERVICE in the process: set SERVICE max_lag SECONDS|default",
    )
    setp.add_argument("service", metavar="SERVICE")
    setp.add_argument("setting", metavar="SETTING", choices=["max_lag"], help="max_lag")
    setp.add_argument("value", metavar="VALUE", type=_max_lag_value, help="seconds, or default")
    cmds.add_parser("reload", help=COMMANDS["reload"].help)

    sw = cmds.add_parser(
        "switchover",
        help="make DATASOURCE the master of SERVICE (the master alive); runs here",
        description=(
            "Planned switchover on the servers, with the registry's admin credentials. "
            "Applications see the new master through their own monitors."
        ),
    )
    sw.add_argument("service", metavar="SERVICE")
    sw.add_argument("--to", required=True, metavar="DATASOURCE", help="the new master")
    fo = cmds.add_parser(
        "failover",
        help="promote the most advanced replica of SERVICE (the master dead); runs here",
        description=(
            "Failover on the servers, with the registry's admin credentials. It refuses "
            "when acknowledged writes could be lost, unless --force."
        ),
    )
    fo.add_argument("service", metavar="SERVICE")
    fo.add_argument("--force", action="store_true", help="even if writes could be lost")
    af = cmds.add_parser(
        "autofailover",
        help="automatic failover of SERVICE: status (what the agents decided), acknowledge",
        description=(
            "Read the etcd store of the agents that run the automatic failover of SERVICE: "
            "'status' shows the agents, the leader, the last decision with its evidence and "
            "the last failover; 'acknowledge' acknowledges the last automatic failover and "
            "any block, arming automatic failover again. See docs/autofailover.md."
        ),
    )
    af.add_argument("action", choices=["status", "acknowledge"], metavar="ACTION")
    af.add_argument("service", metavar="SERVICE")
    af.add_argument("--registry", metavar="SPEC", help="the registry (default as connect())")
    af.add_argument(
        "--etcd", metavar="HOST:PORT,...", help="etcd endpoints (default: the registry's)"
    )
    for p in (sw, fo):
        p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
        p.add_argument("--registry", metavar="SPEC", help="the registry (default as connect())")
        p.add_argument(
            "--timeout",
            dest="op_timeout",
            type=float,
            default=30.0,
            help="seconds the whole operation may take (default 30)",
        )
