"""``sqlrouter route URL``: which datasource a service URL would get now, and why."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pymysql

from .._runtime import handle_for
from ..routing.explain import RouteExplanation, explain
from ..topology import Credentials, DataSource
from ..url import ServiceURL, parse_url

__all__ = ["explain_route", "explain_url", "run"]

Out = Callable[[str], None]


def run(args: argparse.Namespace, out: Out) -> int:
    """Run ``sqlrouter route URL``: 0 when a connect would succeed now, else 1."""
    explanation = explain_route(args.url)
    out(explanation.text)
    return 0 if explanation.ok else 1


def explain_url(url: str | ServiceURL, **overrides: Any) -> str:
    """The datasource ``url`` would get now, and the snapshot behind the decision.

    Pure reporting: no connection is opened (the demo shows it; the control socket's
    ``explain`` is :func:`sqlrouter.routing.explain.explain_handle`).
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
    credentials = Credentials(parsed.user or "", parsed.password or "")
    handle = handle_for(parsed.registry, parsed.service, credentials)
    # As a connect would: without a [monitor] account, the monitor logs in as the URL's
    # user (and the table says so when the servers refuse it).
    handle.snapshot(credentials)
    explanation = explain(handle, parsed)
    ds = explanation.datasource
    if not login or ds is None:
        return explanation
    who = f"login as {parsed.user or '(no user)'!r}" + (
        f" to database {parsed.database!r}" if parsed.database else ""
    )
    error = _login(parsed, ds)
    outcome = "ok" if error is None else f"FAILED: {error}"
    text = f"{explanation.text}\n{who} on {ds.name} ({ds.address}): {outcome}"
    return replace(explanation, text=text, ok=error is None)
