"""``sqlrouter admin``: command running processes through their control sockets.

The command line built on :mod:`sqlrouter.control.client`::

    sqlrouter admin status                      # the one process with a socket
    sqlrouter admin --all offline db2           # every process of this user here
    sqlrouter admin --socket /run/user/1000/sqlrouter/4242.sock promote db2
    sqlrouter admin --tcp 127.0.0.1:7070 --token-file ~/.sqlrouter-token status

``switchover`` and ``failover`` are different: they change the cluster itself, and run
in the ``sqlrouter admin`` process with the registry's admin credentials
(:mod:`sqlrouter.switchover`); every application sees the new master through its own
monitor.  See docs/control.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._table import CLIPPED_NOTE, clip, format_table, plural
from ..control.client import (
    DEFAULT_TIMEOUT,
    Answer,
    checked_socket_dir,
    list_sockets,
    remove_stale,
    request,
    request_tcp,
    resolve_socket_dir,
    send_all,
)
from ..control.config import parse_tcp, read_token
from ..control.protocol import COMMANDS, ControlError
from ..registry.find import find_registry

__all__ = ["add_admin_parser", "format_response", "format_status", "run_admin"]


Out = Callable[[str], None]


# --------------------------------------------------------------------------- finding sockets


# --------------------------------------------------------------------------- one request


# --------------------------------------------------------------------------- formatting


def _secs(value: object) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.2f}s"
    return None


def _yes_no(value: object) -> str | None:
    return None if value is None else ("yes" if value else "no")


def format_status(response: Mapping[str, Any]) -> str:
    """A ``status`` response as text: one header and one table per service."""
    proc = response.get("process", {})
    control = response.get("control", {})
    where = control.get("socket") or control.get("tcp") or "?"
    lines = [f"process {proc.get('pid')} ({proc.get('program')}), uid {proc.get('uid')}: {where}"]
    services = response.get("services", [])
    if not services:
        lines.append("  (no service in use yet)")
    for svc in services:
        overrides = svc.get("overrides") or {}
        max_lag = f"max_lag {svc.get('max_lag'):g}s"
        if "max_lag" in overrides:
            max_lag += " (set by an operator)"
        head = (
            f"service {svc.get('service')!r} from {svc.get('registry')}: "
            f"master {svc.get('master') or '(none)'}, {max_lag}"
        )
        if svc.get("promoted"):
            head += f", promoted {svc['promoted']}"
        monitor = svc.get("monitor", {})
        head += (
            f", monitor {'running' if monitor.get('running') else 'stopped'} "
            f"({monitor.get('rounds')} rounds), {svc.get('open_connections', 0)} open connections"
        )
        lines += ["", head]
        if svc.get("registry_error"):
            lines.append(f"registry error (the last good content is used): {svc['registry_error']}")
        if svc.get("split_brain"):
            names = ", ".join(svc["split_brain"])
            lines.append(f"writable but not the master (no write goes there): {names}")
        rows = [
            (
                ds.get("name"),
                ds.get("address"),
                ds.get("declared"),
                ds.get("role"),
                ds.get("admin"),
                _yes_no(ds.get("io_running")),
                _yes_no(ds.get("sql_running")),
                _secs(ds.get("lag")),
                ds.get("gtid"),
                ds.get("open_connections"),
                clip(ds.get("error")),
            )
            for ds in svc.get("datasources", [])
        ]
        table = format_table(
            [
                "datasource",
                "address",
                "declared",
                "role",
                "admin",
                "io",
                "sql",
                "lag",
                "gtid",
                "conns",
                "last error",
            ],
            rows,
        )
        lines += ["", table]
        if any(clip(ds.get("error")) != ds.get("error") for ds in svc.get("datasources", [])):
            lines.append(CLIPPED_NOTE)
    return "\n".join(lines)


def format_response(cmd: str, response: Mapping[str, Any]) -> str:
    """A response as text for a person (``--json`` prints it as it came)."""
    if not response.get("ok"):
        text = f"error ({response.get('code')}): {response.get('error')}"
        if cmd == "reload" and response.get("registries"):
            text += "\n" + _format_reload(response)
        return text
    if cmd == "status":
        return format_status(response)
    if cmd == "explain":
        return str(response.get("text", ""))
    if cmd == "reload":
        return _format_reload(response)
    lines = []
    for item in response.get("applied", []):
        service = f"service {item.get('service')!r}"
        if cmd in ("offline", "online"):
            ds = item.get("datasource")
            text = f"{service}: {ds} is {cmd}"
            if cmd == "offline":
                text += (
                    f" (its {item.get('open_connections', 0)} open connections are invalidated "
                    "at their next transaction boundary)"
                )
            lines.append(text)
        elif cmd == "promote":
            promoted = item.get("promoted")
            what = f"promoted {promoted}" if promoted else "no datasource promoted"
            lines.append(f"{service}: {what}; master now: {item.get('master') or '(none)'}")
            if item.get("warning"):
                lines.append(f"  warning: {item['warning']}")
        elif cmd == "set":
            value, registry_value = _secs(item.get("max_lag")), _secs(item.get("registry_value"))
            source = "set in this process" if item.get("overrides") else "the registry's"
            lines.append(
                f"{service}: max_lag {value} ({source}; registry: {registry_value}); "
                "a change of the service in the registry resets it"
            )
    return "\n".join(lines) if lines else "ok"


def _format_reload(response: Mapping[str, Any]) -> str:
    lines = []
    for item in response.get("registries", []):
        if item.get("error"):
            # The error names the registry already.
            lines.append(f"{item['error']} (its last good content stays in use)")
            continue
        state = "reloaded, services changed" if item.get("changed") else "valid, no change"
        if item.get("fixed"):
            state += f"; fixed since the last error ({item['fixed']})"
        lines.append(f"{item.get('registry')}: {state}")
    return "\n".join(lines) if lines else "no registry in use"


def _aggregate_status(answers: Sequence[Answer]) -> str:
    """One table over every process: per datasource, connections and admin states."""
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for answer in answers:
        for svc in (answer.response or {}).get("services", []):
            for ds in svc.get("datasources", []):
                key = (str(svc.get("service")), str(ds.get("name")))
                row = totals.setdefault(
                    key, {"processes": 0, "conns": 0, "offline": 0, "roles": set()}
                )
                row["processes"] += 1
                row["conns"] += int(ds.get("open_connections") or 0)
                row["offline"] += ds.get("admin") == "offline"
                row["roles"].add(str(ds.get("role")))
    if not totals:
        return ""
    table = format_table(
        ["service", "datasource", "processes", "open conns", "offline in", "roles seen"],
        [
            (
                service,
                name,
                row["processes"],
                row["conns"],
                f"{row['offline']} of {row['processes']}",
                ", ".join(sorted(row["roles"])),
            )
            for (service, name), row in totals.items()
        ],
    )
    return f"all processes:\n\n{table}"


# --------------------------------------------------------------------------- the command line


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


def add_admin_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _request_of(args: argparse.Namespace) -> dict[str, Any]:
    cmd: str = args.admin_command
    req: dict[str, Any] = {"cmd": cmd}
    if cmd == "explain":
        req["url"] = args.url
    elif cmd in ("offline", "online"):
        req["datasource"] = args.datasource
    elif cmd == "promote":
        if args.clear == (args.datasource is not None):
            raise ControlError("promote: give either DATASOURCE or --clear")
        req["datasource"] = args.datasource
    elif cmd == "set":
        req.update(service=args.service, setting=args.setting, value=args.value)
    if cmd != "set" and getattr(args, "service", None) is not None:
        req["service"] = args.service
    return req


def _failed(response: Mapping[str, Any]) -> bool:
    return not response.get("ok")


def run_admin(args: argparse.Namespace, out: Out) -> int:
    """Run ``sqlrouter admin`` as parsed by :func:`add_admin_parser`; the exit status."""
    if args.admin_command in ("switchover", "failover"):
        if args.socket or args.all or args.tcp:
            raise ControlError(
                f"{args.admin_command} runs in this command, on the servers, with the "
                "registry's admin credentials: --socket, --all and --tcp do not apply"
            )
        return _run_topology(args, out)
    if args.timeout <= 0 or not math.isfinite(args.timeout):
        raise ControlError(f"--timeout must be a number of seconds > 0, got {args.timeout:g}")
    req = _request_of(args)
    cmd = req["cmd"]
    if args.tcp:
        if not args.token_file:
            raise ControlError("--tcp needs --token-file (the operator's or the read-only token)")
        try:
            address = parse_tcp(args.tcp, allow_remote=True)
        except ValueError as exc:
            raise ControlError(f"--tcp: {exc}") from None
        token = read_token(Path(args.token_file).expanduser(), "--token-file")
        response = request_tcp(address, req, token=token, timeout=args.timeout)
        out(json.dumps(response, indent=2) if args.json else format_response(cmd, response))
        return 1 if _failed(response) else 0
    if args.all:
        return _run_all(args, req, out)
    if args.socket:
        path = Path(os.path.abspath(Path(args.socket).expanduser()))
        checked_socket_dir(path.parent)  # a missing one: "no such socket" below
    else:
        path = _only_socket(resolve_socket_dir(args.dir))
    response = request(path, req, timeout=args.timeout)
    out(json.dumps(response, indent=2) if args.json else format_response(cmd, response))
    return 1 if _failed(response) else 0


def _only_socket(directory: Path) -> Path:
    sockets = []
    for pid, path in list_sockets(directory):
        if remove_stale(pid, path):
            print(
                f"sqlrouter admin: removed {path}: a stale control socket (process {pid} is gone)",
                file=sys.stderr,
            )
        else:
            sockets.append((pid, path))
    if not sockets:
        raise ControlError(
            f"no control socket in {directory}: no process of this user has one here "
            "(enable it with SQLROUTER_CONTROL=1 or [control] enabled = true; --dir DIR "
            "to look elsewhere)"
        )
    if len(sockets) > 1:
        pids = ", ".join(str(pid) for pid, _ in sockets)
        raise ControlError(
            f"{len(sockets)} processes have a control socket in {directory} (pids {pids}): "
            "give --socket PATH or --all"
        )
    return sockets[0][1]


def _run_all(args: argparse.Namespace, req: Mapping[str, Any], out: Out) -> int:
    directory = resolve_socket_dir(args.dir)
    answers = send_all(directory, req, timeout=args.timeout)
    if not answers:
        raise ControlError(
            f"no control socket in {directory}: no process of this user has one here"
        )
    cmd = str(req["cmd"])
    live = [a for a in answers if not a.stale]
    answered = [a for a in live if a.response is not None]
    ok = [a for a in answered if a.response is not None and a.response.get("ok")]
    not_found = [a for a in answered if a.response and a.response.get("code") == "not_found"]
    # A process that does not use the service or datasource named is not a failure,
    # unless no process does.
    failed = [a for a in live if a not in ok and a not in not_found]
    # Exit 1 unless some process was told: a failure, no process using the name, or
    # nothing but stale sockets (nobody was reached).
    status = 1 if failed or not ok else 0
    if args.json:
        out(
            json.dumps(
                {
                    "ok": status == 0,
                    "answers": [
                        {
                            "pid": a.pid,
                            "socket": str(a.socket),
                            "response": a.response,
                            "error": a.error,
                            "stale": a.stale,
                        }
                        for a in answers
                    ],
                },
                indent=2,
            )
        )
        return status
    blocks = []
    for a in answers:
        if a.response is None:
            blocks.append(f"process {a.pid} ({a.socket}): {a.error}")
        elif cmd == "status":
            blocks.append(format_response(cmd, a.response))
        else:
            blocks.append(f"process {a.pid}: {format_response(cmd, a.response)}")
    if cmd == "status":
        summary = _aggregate_status(answered)
        if summary:
            blocks.append(summary)
    stale = len(answers) - len(live)
    if live:
        tally = f"{plural(len(live), 'process', 'processes')}: {len(ok)} ok"
    else:
        tally = "no process was reached (nothing was done)"
    if not_found:
        tally += f", {len(not_found)} not using it"
    if failed:
        tally += f", {len(failed)} failed"
    if stale:
        tally += f"; {plural(stale, 'stale socket')} removed"
    blocks.append(tally)
    out("\n\n".join(blocks))
    return status


def _run_topology(args: argparse.Namespace, out: Out) -> int:
    try:
        # Loaded here: only switchover and failover need it (and the admin credentials).
        from .. import switchover as topology  # noqa: PLC0415
    except ImportError as exc:
        raise ControlError(
            f"{args.admin_command} is not available in this installation: {exc}"
        ) from None
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
