"""How fast a lagging or stopped replica leaves the readers, and comes back: HAProxy with
``option httpchk`` on sqlrouter's health endpoint, HAProxy's own ``mysql-check``, and
sqlrouter's router, side by side on one sandbox.

Run from the repository root (haproxy installed, as scripts/_setup.sh does)::

    .venv/bin/python -m benchmarks.bench_health [--trials N] [--update-docs]

Per trial and fault (``MASTER_DELAY`` 3 s on db2, then its IO thread stopped), the time
from the fault to db2's removal, and from the repair to its return, polled every 20 ms:
in HAProxy's ``reader_http`` and ``reader_mysql`` backends (``show stat``, see
``benchmarks/_httpchk.py``) and in the router (``router.health_check`` on this process's
latest snapshot, the rule a ``RO_RELAXED`` connect with ``max_lag=1`` applies).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import sqlrouter
from sqlrouter._runtime import handles
from sqlrouter.observe.health import HealthServer
from sqlrouter.routing.router import health_check
from sqlrouter.sandbox import Sandbox
from sqlrouter.topology import Role

from ._common import (
    bench_sandbox,
    interrupt_on_sigterm,
    machine_info,
    markdown_table,
    median,
    replace_section,
    write_json,
)
from ._haproxy import Server
from ._httpchk import HTTP_BACKEND, MYSQL_BACKEND, HttpCheckProxy

ROOT: Final = Path(__file__).resolve().parent.parent
DOCS: Final = ROOT / "docs" / "benchmarks.md"
DEFAULT_JSON: Final = ROOT / "docs" / "benchmarks" / "health.json"
SECTION: Final = "health"
COMMAND: Final = ".venv/bin/python -m benchmarks.bench_health"
MAX_LAG: Final = 1.0
WINDOW: Final = 20.0
#: After the first two sides changed, how much longer the third is watched.
GRACE: Final = 5.0
SIDES: Final = ("httpchk (sqlrouter endpoint)", "mysql-check", "sqlrouter router")
FAULTS: Final = (("lag", ("delay", 3.0)), ("io thread", ("stop-io", None)))
#: Seconds until each side changed (None: not within the window), for one fault.
Times = dict[str, float | None]
Trial = dict[str, Times]
#: The key of Times holding how long the sides were watched.
WATCHED: Final = "watched"


def _log(message: str) -> None:
    print(f"[bench_health] {message}", file=sys.stderr, flush=True)


def _observe(proxy: HttpCheckProxy, name: str) -> dict[str, bool | None]:
    """Whether each side sends reads to ``name`` now."""
    (handle,) = handles()
    ok = (
        health_check(
            handle.monitor.snapshot, name, role=Role.REPLICA, max_lag=MAX_LAG, now=time.monotonic()
        )
        is None
    )
    states = proxy.states()
    return {
        SIDES[0]: states.get((HTTP_BACKEND, name)),
        SIDES[1]: states.get((MYSQL_BACKEND, name)),
        SIDES[2]: ok,
    }


def _until(proxy: HttpCheckProxy, name: str, want: bool) -> Times:
    """Seconds until each side shows ``name`` as ``want`` (None: not within the window)."""
    start = time.monotonic()
    found: Times = dict.fromkeys(SIDES)
    stop_at = start + WINDOW
    while time.monotonic() < stop_at:
        now_states = _observe(proxy, name)
        elapsed = time.monotonic() - start
        for side, up in now_states.items():
            if found[side] is None and up is want:
                found[side] = elapsed
        if all(v is not None for v in found.values()):
            break
        if found[SIDES[0]] is not None and found[SIDES[2]] is not None:
            stop_at = min(stop_at, start + max(found[SIDES[0]] or 0, found[SIDES[2]] or 0) + GRACE)
        time.sleep(0.02)
    found[WATCHED] = time.monotonic() - start
    return found


def trial(sb: Sandbox, proxy: HttpCheckProxy, fault: tuple[str, float | None]) -> Trial:
    name = "db2"
    action, seconds = fault
    sb.fault(name, action, seconds)
    try:
        leave = _until(proxy, name, False)
    finally:
        sb.fault(name, "resume")
    back = _until(proxy, name, True)
    sb.wait_caught_up(name, timeout=30)
    return {"leave": leave, "back": back}


def _fmt(values: Sequence[float | None], watched: Sequence[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return f"never (watched {min(w or 0.0 for w in watched):.1f} s or more)"
    text = f"{median(got):.2f} s [{min(got):.2f}-{max(got):.2f}]"
    missing = len(values) - len(got)
    return text + (f", {missing} never" if missing else "")


def report(results: dict[str, list[Trial]], when: dt.datetime, load: str) -> str:
    machine = machine_info()
    rows = []
    for fault, trials in results.items():
        for side in SIDES:
            leave = [t["leave"][side] for t in trials]
            back = [t["back"][side] for t in trials]
            out = _fmt(leave, [t["leave"][WATCHED] for t in trials])
            came_back = _fmt(back, [t["back"][WATCHED] for t in trials])
            rows.append([fault, side, out, came_back if any(leave) else "- (never out)"])
    n = len(next(iter(results.values())))
    return "\n".join(
        [
            f"Measured {when:%Y-%m-%d %H:%M} UTC on {machine['cpu']} ({machine['cores']} "
            f"cores, load {load}), HAProxy checks every 0.5 s (rise 1 fall 1), the monitor "
            f"every 0.5 s; {n} trials per fault; median [min-max] from the fault (out) or "
            "its repair (back).",
            "",
            markdown_table(["fault on db2", "reader set-up", "out after", "back after"], rows),
            "",
            f"Reproduce: `{COMMAND} --update-docs` (JSON: `docs/benchmarks/health.json`).",
        ]
    )


def run(args: argparse.Namespace, *, load: Callable[[], str]) -> int:
    results: dict[str, list[Trial]] = {f: [] for f, _ in FAULTS}
    with bench_sandbox(args.dir, "sqlrouter-bench-", _log) as sb:
        sqlrouter.connect(sb.url("RW_STRICT")).close()  # this process watches the service
        replicas = [Server(n.name, "127.0.0.1", n.port) for n in sb.replicas]
        with (
            HealthServer("127.0.0.1:0") as health,
            HttpCheckProxy(
                sb.dir / "haproxy",
                replicas=replicas,
                service="sandbox",
                health_port=health.address[1],
                max_lag=MAX_LAG,
            ) as proxy,
        ):
            _until(proxy, "db2", True)
            for i in range(args.trials):
                for label, fault in FAULTS:
                    results[label].append(trial(sb, proxy, fault))
                    _log(f"trial {i + 1}/{args.trials}, {label}: {results[label][-1]}")
        sqlrouter.shutdown()
    when = dt.datetime.now(dt.UTC)
    text = report(results, when, load())
    print(text)
    _log(f"results written to {write_json(args.json, {'date': str(when), 'results': results})}")
    if args.update_docs:
        DOCS.write_text(
            replace_section(DOCS.read_text(encoding="utf-8"), SECTION, text), encoding="utf-8"
        )
        _log(f"updated {DOCS}")
    return 0


def _load() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_health")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    with interrupt_on_sigterm():
        try:
            return run(args, load=_load)
        except KeyboardInterrupt:
            _log("interrupted; the sandbox was destroyed")
            return 130


if __name__ == "__main__":
    sys.exit(main())
