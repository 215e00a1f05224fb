"""``sqlrouter demo``: sqlrouter on a real local cluster, step by step."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .. import _runtime as _services
from ..connection import connect
from ..errors import Error
from ..routing.health import Health
from ..sandbox import Sandbox, SandboxError, format_status
from ..switchover import switchover
from .route import explain_url

__all__ = ["run", "run_demo"]

Out = Callable[[str], None]


def _server_of(sb: Sandbox, url: str) -> str:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@server_id")
        row = cur.fetchone()
    sid = int(row[0]) if row else -1
    return next((n.name for n in sb.nodes if n.server_id == sid), f"server_id {sid}")


def _spread(sb: Sandbox, url: str, count: int) -> Counter[str]:
    return Counter(_server_of(sb, url) for _ in range(count))


def _health(name: str) -> Health:
    (handle,) = _services.handles()
    return handle.monitor.snapshot.health_of(name)


def _wait_for(what: str, predicate: Callable[[], bool], out: Out, timeout: float = 20) -> float:
    """Wait until ``predicate()`` holds; a routing error while waiting (a switchover
    under way: no master for an instant) counts as not yet."""
    start = time.monotonic()
    last: Error | None = None
    while True:
        try:
            if predicate():
                break
        except Error as exc:
            last = exc
        if time.monotonic() - start > timeout:
            why = f" (last error: {last.args[-1]})" if last is not None else ""
            raise RuntimeError(f"demo: gave up waiting for {what} after {timeout:.0f}s{why}")
        time.sleep(0.1)
    took = time.monotonic() - start
    out(f"   ... {what}: after {took:.1f}s")
    return took


def _lag_over(name: str, limit: float) -> bool:
    lag = _health(name).lag
    return lag is not None and lag > limit


def _lag_within(name: str, limit: float) -> bool:
    lag = _health(name).lag
    return lag is not None and lag <= limit


def _lag_text(name: str) -> str:
    h = _health(name)
    lag = "unknown" if h.lag is None else f"{h.lag:.2f}s"
    return f"{name}: lag {lag} ({h.lag_source or 'no measure'}), io={h.io_running}"


def _roles(sb: Sandbox) -> tuple[str, str, str]:
    """The master and two replicas of ``sb`` as they are now (an earlier demo or a
    topology operation may have moved the master)."""
    rows = sb.status()
    masters = [r.name for r in rows if r.running and r.role == "master"]
    replicas = [
        r.name
        for r in rows
        if r.running and r.role == "replica" and (r.io_running, r.sql_running) == ("Yes", "Yes")
    ]
    if len(masters) != 1 or len(replicas) < 2:
        shown = ", ".join(f"{r.name} {r.role} ({r.state})" for r in rows)
        raise SandboxError(
            f"the demo needs a master and two running replicas; the sandbox in {sb.dir} has "
            f"{shown}: repair it (sqlrouter sandbox up --dir {sb.dir} starts stopped "
            f"nodes; sqlrouter sandbox rejoin --dir {sb.dir} NODE rebuilds a node as a "
            "replica of the master), or give another --dir"
        )
    return masters[0], replicas[0], replicas[1]


def _steps(sb: Sandbox, out: Out) -> None:
    m, r1, r2 = _roles(sb)
    rw = sb.url("RW_STRICT")
    ro = sb.url("RO_RELAXED", max_lag=1)
    shown = sb.url("RO_RELAXED", hide_password=True, max_lag=1)
    out("\n== 2. RW_STRICT goes to the master")
    out(f"   10 connections -> {dict(_spread(sb, rw, 10))}")
    out("\n== 3. RO_RELAXED reads spread over the replicas within max_lag=1s")
    out(f"   20 connections -> {dict(_spread(sb, ro, 20))}")
    out(f"\n   sqlrouter route {shown}")
    out("   " + explain_url(ro).replace("\n", "\n   "))

    out(f"\n== 4. replica {r1} delayed by 3s (sqlrouter sandbox fault {r1} delay 3)")
    out("   " + sb.fault(r1, "delay", 3))
    _wait_for(f"the monitor measured {r1}'s lag over 1s", lambda: _lag_over(r1, 1), out)
    out(f"   {_lag_text(r1)}")
    out(f"   20 connections -> {dict(_spread(sb, ro, 20))}  ({r1} is left out)")
    out("   " + sb.fault(r1, "resume"))
    _wait_for(f"{r1} caught up", lambda: _lag_within(r1, 1), out)
    out(f"   20 connections -> {dict(_spread(sb, ro, 20))}  ({r1} is back)")

    out(f"\n== 5. replica {r2}'s IO thread stopped (sqlrouter sandbox fault {r2} stop-io)")
    out("   Seconds_Behind_Master reads NULL or 0 now; the heartbeat sees the gap grow.")
    out("   " + sb.fault(r2, "stop-io"))
    _wait_for(f"{r2} excluded", lambda: not _lag_within(r2, 1), out)
    out(f"   {_lag_text(r2)}")
    out(f"   20 connections -> {dict(_spread(sb, ro, 20))}")
    out("   " + sb.fault(r2, "resume"))
    _wait_for(f"{r2} caught up", lambda: _lag_within(r2, 1), out)

    out(
        f"\n== 6. a planned switchover to {r1} (sqlrouter admin switchover sandbox --to {r1} "
        f"--registry {sb.registry_path})"
    )
    out("   A writer keeps a RW_STRICT connection open; roles are observed, not configured.")
    writer = connect(rw)
    with writer.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS demo (id INT AUTO_INCREMENT PRIMARY KEY)")
        cur.execute("INSERT INTO demo VALUES ()")
    writer.commit()
    for step in switchover(sb.service(), r1, timeout=30):
        out(f"   {step}")
    try:
        with writer.cursor() as cur:
            cur.execute("INSERT INTO demo VALUES ()")
    except Error as exc:
        out(f"   the old connection fails clearly: {type(exc).__name__}: {exc.args[-1]}")
    finally:
        writer.close()
    _wait_for(f"this process routes writes to {r1}", lambda: _server_of(sb, rw) == r1, out)
    out(f"   10 RW_STRICT connections -> {dict(_spread(sb, rw, 10))}")
    out(f"   20 RO_RELAXED connections -> {dict(_spread(sb, ro, 20))}  ({m} is a replica now)")


def run_demo(
    directory: str | None = None,
    *,
    keep: bool = False,
    base_port: int | None = None,
    out: Out = print,
) -> None:
    """Bring up a sandbox (in ``directory`` or a temporary one) and show sqlrouter at work.

    An existing sandbox in ``directory`` is reused as it is: the demo takes its current
    master and two replicas (a second run switches over again).  ``base_port`` is the
    first port of a new sandbox.  The sandbox is destroyed at the end unless ``keep`` is
    true or ``directory`` held an existing sandbox.
    """
    tmp = None if directory else tempfile.mkdtemp(prefix="sqlrouter-demo-")
    path = Path(directory or tmp or ".")
    # A sandbox of its own that it destroys at the end dies with it (PR_SET_PDEATHSIG):
    # a demo killed (SIGKILL, a CI job cancelled) leaves no server running.
    sb = Sandbox(
        path / "sandbox" if tmp else path,
        ephemeral=tmp is not None and not keep,
        progress=lambda m: out(f"   {m}"),
    )
    existed = sb.exists
    out("== 1. a local replicated cluster (sqlrouter sandbox up)")
    try:
        sb.up(base_port=base_port)
        out(format_status(sb.status()))
        _steps(sb, out)
        out("\n== the cluster now (sqlrouter sandbox status)")
        out(format_status(sb.status()))
    finally:
        _services.shutdown()
        if keep or existed:
            out(f"\nthe sandbox keeps running in {sb.dir}; try it, then stop it:")
            out(f"   sqlrouter sandbox status --dir {sb.dir}")
            out(f"   sqlrouter admin switchover sandbox --to NODE --registry {sb.registry_path}")
            out(f"   sqlrouter sandbox down --dir {sb.dir}")
        else:
            out("\n== cleaning up (sqlrouter sandbox destroy)")
            sb.destroy()
            if tmp:
                Path(tmp).rmdir()


def run(args: argparse.Namespace, out: Out) -> int:
    """Run ``sqlrouter demo``; the exit status."""
    try:
        run_demo(args.dir, keep=args.keep, base_port=args.base_port, out=out)
    except SandboxError as exc:
        print(f"sqlrouter demo: error: {exc}", file=sys.stderr)
        return 1
    return 0
