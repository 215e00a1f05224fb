"""``sqlrouter admin autofailover status|acknowledge SERVICE``: what the agents decided.

Reads (and, for ``acknowledge``, writes) the etcd keys of the service's automatic
failover (:mod:`sqlrouter.autofailover.store`), at the endpoints of the registry's
``[services.NAME.autofailover]`` table or of ``--etcd``.  See docs/autofailover.md.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..autofailover import StoreError, acknowledge, read_status
from ..control.protocol import ControlError
from ..registry.find import find_registry

__all__ = ["format_autofailover", "run"]

Out = Callable[[str], None]


def _when(at: object, now: float) -> str:
    if not isinstance(at, int | float):
        return "?"
    stamp = datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({now - at:.0f}s ago)"


def format_autofailover(status: Mapping[str, Any], period: float, now: float) -> str:
    """The ``status`` answer as text."""
    lines = [f"service {status['service']!r}: automatic failover"]
    leader = status.get("leader")
    agents = ", ".join(status.get("agents") or []) or "none (no agent runs)"
    lines.append(f"  agents: {agents}")
    lines.append(
        "  leader: "
        + (f"{leader['agent']} (term {leader['term']})" if leader else "none: nothing can act")
    )
    for v in status.get("views") or []:
        seen = "reaches" if v.get("reachable") else "CANNOT reach"
        lines.append(
            f"  agent {v.get('agent')}: {seen} master {v.get('master')} "
            f"({now - float(v.get('at') or now):.1f}s ago)"
        )
    decision = status.get("decision")
    if decision:
        lines.append(
            f"  decision: {decision.get('verdict')} ({decision.get('master')}): "
            f"{decision.get('reason')}  [by {decision.get('leader')}, term {decision.get('term')}, "
            f"{_when(decision.get('at'), now)}]"
        )
        lines += [f"    evidence: {e}" for e in decision.get("evidence") or []]
    running = status.get("failover")
    if running:
        steps = running.get("steps") or []
        last = f"; last step: {steps[-1]['name']}" if steps else ""
        lines.append(
            f"  failover under way: {running.get('old_master')} by {running.get('leader')} "
            f"(term {running.get('term')}), since {_when(running.get('started_at'), now)}{last}"
        )
    outcome = status.get("outcome")
    if outcome:
        result = "done" if outcome.get("ok") else "FAILED"
        lines.append(
            f"  last failover: {outcome.get('old_master')} -> {outcome.get('new_master') or '-'} "
            f"{result}, term {outcome.get('term')}, {_when(outcome.get('at'), now)}: "
            f"{outcome.get('detail')}"
        )
    fenced = status.get("fenced")
    if fenced:
        lines.append(
            f"  fenced: {fenced.get('datasource')} by {fenced.get('by')}, "
            f"{_when(fenced.get('at'), now)}: {fenced.get('detail')}"
        )
    retry = status.get("retry")
    if retry:
        lines.append(
            f"  retrying: {retry.get('failures')} automatic failover(s) failed in a row, the "
            f"last {_when(retry.get('at'), now)}; next attempt not before "
            f"{_when(retry.get('next_at'), now).split(' (')[0]} (backoff {retry.get('backoff')}s)"
        )
    history = status.get("history")
    blocked = status.get("blocked")
    if blocked:
        lines.append(
            f"  BLOCKED until acknowledged: {blocked.get('reason')} "
            f"(sqlrouter admin autofailover acknowledge {status['service']})"
        )
    if history and not history.get("acknowledged"):
        at = float(history.get("at") or 0)
        if now - at < period:
            lines.append(
                f"  not acknowledged: no other automatic failover before "
                f"{_when(at + period, now).split(' (')[0]} unless acknowledged "
                f"(sqlrouter admin autofailover acknowledge {status['service']})"
            )
    elif history:
        lines.append(f"  acknowledged by {history.get('acknowledged_by', '?')}")
    return "\n".join(lines)


def run(args: argparse.Namespace, out: Out) -> int:
    """Run ``sqlrouter admin autofailover ACTION SERVICE``; the exit status."""
    if args.socket or args.all or args.tcp:
        raise ControlError(
            "autofailover reads the etcd store of the agents: --socket, --all and --tcp "
            "do not apply"
        )
    service = find_registry(args.registry, given_as="--registry ").lookup(args.service)
    settings = service.autofailover
    endpoints = tuple(e.strip() for e in args.etcd.split(",")) if args.etcd else settings.etcd
    if not endpoints:
        raise ControlError(
            f"service {service.name!r}: no etcd endpoint: its registry entry has no "
            f"[services.{service.name}.autofailover] etcd list; give --etcd HOST:PORT,..."
        )
    try:
        if args.action == "acknowledge":
            who = f"{getpass.getuser()}@{socket.gethostname()}"
            done = acknowledge(endpoints, service.name, who)
        else:
            status = read_status(endpoints, service.name)
    except StoreError as exc:
        raise ControlError(
            f"service {service.name!r}: the etcd store cannot be used, so no automatic "
            f"failover can happen either: {exc}"
        ) from None
    if args.action == "acknowledge":
        if args.json:
            out(json.dumps(done, indent=2))
        elif done["history"] is None and done["blocked"] is None:
            out(f"service {service.name!r}: nothing to acknowledge")
        else:
            what = []
            if done["history"] is not None:
                what.append("the last automatic failover")
            if done["blocked"] is not None:
                what.append(f"the block ({done['blocked'].get('reason')})")
            out(
                f"service {service.name!r}: acknowledged {' and '.join(what)} as {who}; "
                "automatic failover is armed again"
            )
        return 0
    if args.json:
        out(json.dumps(status, indent=2))
    else:
        enabled = "enabled" if settings.enabled else "NOT enabled in the registry"
        out(format_autofailover(status, settings.period, time.time()) + f"\n  registry: {enabled}")
    return 0
