"""``sqlrouter admin``: command running processes through their control sockets.

The command line built on :mod:`sqlrouter.control.client`::

    sqlrouter admin status                      # the one process with a socket
    sqlrouter admin --all offline db2           # every process of this user here
    sqlrouter admin --socket /run/user/1000/sqlrouter/4242.sock promote db2
    sqlrouter admin --tcp 127.0.0.1:7070 --token-file ~/.sqlrouter-token status

``switchover`` and ``failover`` are different: they change the cluster itself, and run
in the ``sqlrouter admin`` process with the registry's admin credentials
(:mod:`sqlrouter.cli.topology`).  See docs/control.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._table import CLIPPED_NOTE, GTID_WIDTH, clip, format_table, plural
from ..control.client import (
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
from ..control.protocol import ControlError

__all__ = ["format_response", "format_status", "run"]


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


def describe_sharing(monitor: Mapping[str, Any]) -> str:
    """Who publishes the snapshots this process routes on, and who writes the heartbeat."""
    shared = monitor.get("shared")
    writer = "; this process writes the heartbeat" if monitor.get("heartbeat_writer") else ""
    if not shared:
        return f"probed by this process (not shared){writer}"
    role = shared.get("role")
    agent = " (an agent)" if shared.get("agent") else ""
    if role == "publisher":
        return f"published by this process{agent} in {shared.get('file')}{writer}"
    if role == "alone":
        return f"probed by this process: {shared.get('file')} is unusable{writer}"
    pid = shared.get("publisher_pid")
    if pid is None:
        return f"no publisher yet ({shared.get('file')})"
    return f"read from pid {pid}{agent}, which publishes them in {shared.get('file')}"


def describe_autofailover(part: Mapping[str, Any]) -> str:
    """This agent's part in a service's automatic failover, as one line."""
    role = f"leader (term {part.get('term')})" if part.get("leader") else "follower"
    decision = part.get("decision")
    said = (
        f"{decision.get('verdict')} ({decision.get('master')}): {decision.get('reason')}"
        if isinstance(decision, Mapping)
        else "no decision here (the leader's: sqlrouter admin autofailover status)"
    )
    line = f"automatic failover: agent {part.get('agent')}, {role}, {said}"
    retry = part.get("retry")
    if isinstance(retry, Mapping) and isinstance(retry.get("next_at"), int | float):
        when = datetime.datetime.fromtimestamp(retry["next_at"], datetime.UTC)
        line += (
            f"; {retry.get('failures')} failed failover(s) in a row, next attempt not "
            f"before {when:%Y-%m-%d %H:%M:%S} UTC"
        )
    if part.get("store_error"):
        line += f"; store: {part['store_error']}"
    return line


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
        lines += ["", head, f"snapshots: {describe_sharing(monitor)}"]
        auto = (svc.get("parts") or {}).get("autofailover")
        if auto:
            lines.append(describe_autofailover(auto))
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
                clip(ds.get("gtid"), GTID_WIDTH),
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
        if any(
            clip(ds.get("error")) != ds.get("error")
            or clip(ds.get("gtid"), GTID_WIDTH) != ds.get("gtid")
            for ds in svc.get("datasources", [])
        ):
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


def run(args: argparse.Namespace, out: Out) -> int:
    """Run ``sqlrouter admin COMMAND`` on control sockets; the exit status.

    ``switchover`` and ``failover`` are :mod:`sqlrouter.cli.topology`.
    """
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
        error = f"no control socket in {directory}: no process of this user has one here"
        if args.json:
            # Machine readers get JSON whatever happened (and the exit status 1).
            out(json.dumps({"ok": False, "answers": [], "error": error}))
            return 1
        raise ControlError(error)
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
