"""Reporting on a watched service: each datasource as observed, and the decision for a URL.

What ``sqlrouter route URL`` and the control socket's ``status`` and ``explain`` show.
Nothing here looks a service up or connects anywhere: it reads the handle it is given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .._table import GTID_WIDTH, clip, format_table
from ..errors import RoutingError
from ..topology import DataSource
from ..url import ServiceURL
from .health import Snapshot
from .router import Policy, choose, logins_refused
from .router import explain as verdicts
from .service import ServiceHandle

__all__ = ["RouteExplanation", "explain", "explain_handle", "snapshot_rows"]


@dataclass(frozen=True, slots=True)
class RouteExplanation:
    """What ``sqlrouter route URL`` prints (``text``), and whether a connect with this
    URL would succeed now (``ok``: a datasource qualifies and the URL's own credentials
    log in to it)."""

    text: str
    ok: bool
    #: The datasource chosen; ``None`` when none qualifies.
    datasource: DataSource | None = None


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


def snapshot_rows(snapshot: Snapshot, policy: Policy) -> list[dict[str, Any]]:
    """One dict per datasource: what the monitor saw and the router's verdict."""
    by_name = dict(verdicts(snapshot, policy))
    rows = []
    for ds in snapshot.service.datasources:
        h = snapshot.health_of(ds.name)
        rows.append(
            {
                "name": ds.name,
                "address": ds.address,
                "declared": ds.role.value,
                "admin": "offline" if ds.name in snapshot.offline else "online",
                "reachable": h.reachable,
                "read_only": h.read_only,
                "io": h.io_running,
                "sql": h.sql_running,
                "lag": h.lag,
                "lag_source": h.lag_source,
                "gtid": str(h.position),
                "error": h.error,
                "verdict": by_name.get(ds.name, ""),
            }
        )
    return rows


def explain_handle(handle: ServiceHandle, parsed: ServiceURL) -> str:
    """What ``sqlrouter route URL`` prints, without its login check, for a service this
    process watches already.

    Uses ``handle`` as it is (its registry, its monitor): nothing is looked up, and no
    login is tried (the control socket's ``explain``).
    """
    return explain(handle, parsed).text


def explain(handle: ServiceHandle, parsed: ServiceURL) -> RouteExplanation:
    """The decision for ``parsed`` on ``handle``'s snapshot now, with the table behind it."""
    snapshot = handle.snapshot()
    max_lag = parsed.max_lag if parsed.max_lag is not None else snapshot.service.max_lag
    policy = Policy(qos=parsed.qos, max_lag=max_lag, fallback=parsed.fallback)
    rows = snapshot_rows(snapshot, policy)
    table = format_table(
        [
            "datasource",
            "address",
            "declared",
            "admin",
            "reachable",
            "read_only",
            "io",
            "sql",
            "lag",
            "gtid",
            "verdict",
        ],
        [
            (
                r["name"],
                r["address"],
                r["declared"],
                r["admin"],
                _yes_no(r["reachable"]),
                _yes_no(r["read_only"]),
                _yes_no(r["io"]),
                _yes_no(r["sql"]),
                None if r["lag"] is None else f"{r['lag']:.2f}s ({r['lag_source']})",
                clip(r["gtid"], GTID_WIDTH) or None,
                r["verdict"],
            )
            for r in rows
        ],
    )
    head = (
        f"service {parsed.service!r} from {handle.registry.describe()}, qos={parsed.qos.value}, "
        f"max_lag={max_lag:g}s, fallback={parsed.fallback.value}"
    )
    refused = logins_refused(snapshot)
    try:
        if refused is not None:
            verdict = f"no datasource: {refused[1]}"
            return RouteExplanation(f"{head}\n\n{table}\n\n{verdict}", ok=False)
        decision = choose(snapshot, policy, turn=0, now=time.monotonic())
    except RoutingError as exc:
        verdict = f"no datasource: {exc.args[1]}"
        return RouteExplanation(f"{head}\n\n{table}\n\n{verdict}", ok=False)
    verdict = f"-> {decision.datasource}: {decision.reason}"
    return RouteExplanation(
        f"{head}\n\n{table}\n\n{verdict}", ok=True, datasource=decision.datasource
    )
