"""What ``sqlrouter route URL`` prints: the decision for a URL now, and why."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pymysql

from .._runtime import ServiceHandle, handle_for
from .._table import format_table
from ..errors import RoutingError
from ..topology import Credentials, DataSource
from ..url import ServiceURL, parse_url
from .health import Snapshot
from .router import Policy, choose, explain

__all__ = [
    "RouteExplanation",
    "explain_handle",
    "explain_route",
    "explain_url",
    "format_table",
    "snapshot_rows",
]


@dataclass(frozen=True, slots=True)
class RouteExplanation:
    """What ``sqlrouter route URL`` prints (``text``), and whether a connect with this
    URL would succeed now (``ok``: a datasource qualifies and the URL's own credentials
    log in to it)."""

    text: str
    ok: bool


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
    """The datasource ``url`` would get now, and the snapshot behind the decision.

    Pure reporting: no connection is opened (the control socket's ``explain`` uses it
    in a running application, which must not log in as whoever asks).
    """
    return explain_route(url, login=False, **overrides).text


def _login(parsed: ServiceURL, ds: DataSource) -> str | None:
    """Log in to ``ds`` as the URL's user (its password, database and options); None
    when it works, else the server's or the network's error."""
    options = {**parsed.connect_args, "autocommit": True}
    try:
        conn = pymysql.connect(
            host=ds.host,
            port=ds.port,
            user=parsed.user or "",
            password=parsed.password or "",
            database=parsed.database,
            connect_timeout=parsed.connect_timeout,
            read_timeout=parsed.connect_timeout,
            write_timeout=parsed.connect_timeout,
            **options,
        )
    except pymysql.err.MySQLError as exc:
        args: tuple[object, ...] = exc.args
        if len(args) >= 2 and isinstance(args[0], int):
            return f"({args[0]}) {args[1]}"
        return str(exc) or type(exc).__name__
    conn.close()
    return None


def explain_route(
    url: str | ServiceURL, *, login: bool = True, **overrides: Any
) -> RouteExplanation:
    """The datasource ``url`` would get now, the snapshot behind the decision, and
    (``login``) whether the URL's own user logs in there: the monitor may use another
    account, so a healthy table says nothing about the URL's credentials."""
    parsed = parse_url(url, **overrides)
    handle = handle_for(
        parsed.registry, parsed.service, Credentials(parsed.user or "", parsed.password or "")
    )
    return _explain(handle, parsed, login=login)


def explain_handle(handle: ServiceHandle, parsed: ServiceURL) -> str:
    """What :func:`explain_url` prints, for a service this process watches already.

    Uses ``handle`` as it is (its registry, its monitor): nothing is looked up, and no
    login is tried (the control socket's ``explain``).
    """
    return _explain(handle, parsed, login=False).text


def _explain(handle: ServiceHandle, parsed: ServiceURL, *, login: bool) -> RouteExplanation:
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
        decision = choose(snapshot, policy, turn=0, now=time.monotonic())
    except RoutingError as exc:
        verdict = f"no datasource: {exc.args[1]}"
        return RouteExplanation(f"{head}\n\n{table}\n\n{verdict}", ok=False)
    verdict = f"-> {decision.datasource}: {decision.reason}"
    if not login:
        return RouteExplanation(f"{head}\n\n{table}\n\n{verdict}", ok=True)
    ds = decision.datasource
    who = f"login as {parsed.user or '(no user)'!r}" + (
        f" to database {parsed.database!r}" if parsed.database else ""
    )
    error = _login(parsed, ds)
    outcome = "ok" if error is None else f"FAILED: {error}"
    text = f"{head}\n\n{table}\n\n{verdict}\n{who} on {ds.name} ({ds.address}): {outcome}"
    return RouteExplanation(text, ok=error is None)
