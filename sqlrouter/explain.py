"""What ``sqlrouter route URL`` prints: the decision for a URL now, and why."""

from __future__ import annotations

from typing import Any

from ._services import ServiceHandle, handle_for
from ._table import format_table
from .errors import RoutingError
from .health import Snapshot
from .router import Policy, choose, explain
from .topology import Credentials
from .url import ServiceURL, parse_url

__all__ = ["explain_handle", "explain_url", "format_table", "snapshot_rows"]


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


def snapshot_rows(snapshot: Snapshot, policy: Policy) -> list[dict[str, Any]]:
    """One dict per datasource: what the monitor saw and the router's verdict."""
    verdicts = dict(explain(snapshot, policy))
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
                "verdict": verdicts.get(ds.name, ""),
            }
        )
    return rows


def explain_url(url: str | ServiceURL, **overrides: Any) -> str:
    """The datasource ``url`` would get now, and the snapshot behind the decision."""
    parsed = parse_url(url, **overrides)
    handle = handle_for(
        parsed.registry, parsed.service, Credentials(parsed.user or "", parsed.password or "")
    )
    return explain_handle(handle, parsed)


def explain_handle(handle: ServiceHandle, parsed: ServiceURL) -> str:
    """What :func:`explain_url` prints, for a service this process watches already.

    Uses ``handle`` as it is (its registry, its monitor): nothing is looked up.
    """
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
                r["gtid"] or None,
                r["verdict"],
            )
            for r in rows
        ],
    )
    head = (
        f"service {parsed.service!r} from {handle.registry.describe()}, qos={parsed.qos.value}, "
        f"max_lag={max_lag:g}s, fallback={parsed.fallback.value}"
    )
    try:
        decision = choose(snapshot, policy, turn=0)
    except RoutingError as exc:
        verdict = f"no datasource: {exc.args[1]}"
    else:
        verdict = f"-> {decision.datasource}: {decision.reason}"
    return f"{head}\n\n{table}\n\n{verdict}"
