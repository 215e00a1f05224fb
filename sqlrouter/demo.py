"""``sqlrouter demo``: sqlrouter on a real local cluster, step by step."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from . import _services
from .connection import connect
from .errors import Error
from .explain import explain_url
from .health import Health
from .sandbox import Sandbox, format_status
from .switchover import switchover

__all__ = ["run_demo"]

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
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"demo: gave up waiting for {what} after {timeout:.0f}s")
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


def _steps(sb: Sandbox, out: Out) -> None:
    rw = sb.url("RW_STRICT")
    ro = sb.url("RO_RELAXED", max_lag=1)
    shown = sb.url("RO_RELAXED", hide_password=True, max_lag=1)
    out("\n== 2. RW_STRICT goes to the master")
    out(f"   10 connections -> {dict(_spread(sb, rw, 10))}")
    out("\n== 3. RO_RELAXED reads spread over the replicas within max_lag=1s")
    out(f"   20 connections -> {dict(_spread(sb, ro, 20))}")
    out(f"\n   sqlrouter route {shown}")
    out("   " + explain_url(ro).replace("\n", "\n   "))

    out("\n== 4. replica db2 delayed by 3s (sqlrouter sandbox fault db2 delay 3)")
    out("   " + sb.fault("db2", "delay", 3))
    _wait_for("the monitor measured db2's lag over 1s", lambda: _lag_over("db2", 1), out)
    out(f"   {_lag_text('db2')}")
    out(f"   20 connections -> {dict(_spread(sb, ro, 20))}  (db2 is left out)")
    out("   " + sb.fault("db2", "resume"))
    _wait_for("db2 caught up", lambda: _lag_within("db2", 1), out)
    out(f"   20 connections -> {dict(_spread(sb, ro, 20))}  (db2 is back)")

    out("\n== 5. replica db3's IO thread stopped (sqlrouter sandbox fault db3 stop-io)")
    out("   Seconds_Behind_Master reads NULL or 0 now; the heartbeat sees the gap grow.")
    out("   " + sb.fault("db3", "stop-io"))
    _wait_for("db3 excluded", lambda: not _lag_within("db3", 1), out)
    out(f"   {_lag_text('db3')}")
    out(f"   20 connections -> {dict(_spread(sb, ro, 20))}")
    out("   " + sb.fault("db3", "resume"))
    _wait_for("db3 caught up", lambda: _lag_within("db3", 1), out)

    out("\n== 6. a planned switchover to db2 (sqlrouter admin switchover sandbox --to db2)")
    out("   A writer keeps a RW_STRICT connection open; roles are observed, not configured.")
    writer = connect(rw)
    with writer.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS demo (id INT AUTO_INCREMENT PRIMARY KEY)")
        cur.execute("INSERT INTO demo VALUES ()")
    writer.commit()
    for step in switchover(sb.service(), "db2", timeout=30):
        out(f"   {step}")
    try:
        with writer.cursor() as cur:
            cur.execute("INSERT INTO demo VALUES ()")
    except Error as exc:
        out(f"   the old connection fails clearly: {type(exc).__name__}: {exc.args[-1]}")
    finally:
        writer.close()
    _wait_for("this process routes writes to db2", lambda: _server_of(sb, rw) == "db2", out)
    out(f"   10 RW_STRICT connections -> {dict(_spread(sb, rw, 10))}")
    out(f"   20 RO_RELAXED connections -> {dict(_spread(sb, ro, 20))}  (db1 is a replica now)")


def run_demo(directory: str | None = None, *, keep: bool = False, out: Out = print) -> None:
    """Bring up a sandbox (in ``directory`` or a temporary one) and show sqlrouter at work.

    The sandbox is destroyed at the end unless ``keep`` is true or ``directory`` held
    an existing sandbox.
    """
    tmp = None if directory else tempfile.mkdtemp(prefix="sqlrouter-demo-")
    path = Path(directory or tmp or ".")
    sb = Sandbox(path / "sandbox" if tmp else path, progress=lambda m: out(f"   {m}"))
    existed = sb.exists
    out("== 1. a local replicated cluster (sqlrouter sandbox up)")
    try:
        sb.up()
        out(format_status(sb.status()))
        _steps(sb, out)
        out("\n== the cluster now (sqlrouter sandbox status)")
        out(format_status(sb.status()))
    finally:
        _services.shutdown()
        if keep or existed:
            out(f"\nthe sandbox keeps running in {sb.dir}; stop it with:")
            out(f"   sqlrouter sandbox down --dir {sb.dir}")
        else:
            out("\n== cleaning up (sqlrouter sandbox destroy)")
            sb.destroy()
            if tmp:
                Path(tmp).rmdir()
