"""Idle application processes of a fleet, for tests/integration/test_fleet.py and
benchmarks/bench_fleet.py.

``python -m benchmarks._fleet_worker STATUS [--check] [--fork N --hosts DIR,DIR]``, with
the service URLs (which hold the password: never in argv, that every user of the host
reads) in the environment variables ``FLEET_RW_URL`` and ``FLEET_RO_URL``: a process
that holds one RW_STRICT and one RO_RELAXED connection and writes
what its monitor sees to the JSON file STATUS (replaced atomically) when that changed
and at least once a second (every 50 ms with ``--check``): its share role, whether
it writes the heartbeat, the snapshot's age, master and lags.  With ``--check`` it
also runs a query on each connection every round and records where each went and the
errors.  With ``--fork N`` it imports sqlrouter, then forks N such workers
(``STATUS`` then names a directory: one ``PID.json`` each), spread over the simulated
hosts ``--hosts`` (each a ``$SQLROUTER_SHARE`` directory), and waits; SIGTERM stops
them all.  ``--watch FILE``: write STATUS only while FILE exists (else look every
0.5 s), so that many idle workers cost what idle workers cost.

It uses nothing added by the fleet changes unless it is there (``monitor.share``,
``prober.writer``): the benchmark runs it on an older checkout too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import sqlrouter
import sqlrouter.events
from sqlrouter._runtime import handles
from sqlrouter.routing.router import observed_master


def _status(checks: dict[str, Any]) -> dict[str, Any]:
    hs = handles()
    if not hs:
        return {"pid": os.getpid(), "t": time.monotonic(), **checks}
    monitor = hs[0].monitor
    share = getattr(monitor, "share", None)
    snap = monitor.snapshot
    master = observed_master(snap)
    probers = list(monitor._probers.values())
    now = time.monotonic()
    return {
        "pid": os.getpid(),
        "t": now,
        "role": share.role if share is not None else "own",
        "publisher_pid": share.describe(now).get("publisher_pid") if share is not None else None,
        "writer": any(getattr(p, "writer", False) for p in probers),
        "probers": len(probers),
        "generation": snap.generation,
        "age": now - snap.taken_at,
        "master": master.name if master is not None else None,
        "lag": {name: h.lag for name, h in snap.health.items()},
        **checks,
    }


#: The environment variables that give the worker its service URLs.
RW_ENV, RO_ENV = "FLEET_RW_URL", "FLEET_RO_URL"


def _stop(signum: int, frame: object) -> None:
    sys.exit(0)


def _facts(max_lag: float | None = None) -> tuple[str | None, tuple[str, ...]]:
    """What routing sees now: the master, and the datasources a relaxed read excludes."""
    hs = handles()
    if not hs:
        return None, ()
    snap = hs[0].monitor.snapshot
    master = observed_master(snap)
    bound = snap.service.max_lag if max_lag is None else max_lag
    excluded = tuple(
        sorted(
            name
            for name, h in snap.health.items()
            if not h.reachable or h.lag is None or h.lag > bound
        )
    )
    return (master.name if master is not None else None), excluded


def _connect(url: str, timeout: float = 120.0) -> sqlrouter.Connection:
    """Connect, trying again for ``timeout`` seconds: many processes starting at once
    on a small machine may see the servers' probes time out at first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return sqlrouter.connect(url)
        except sqlrouter.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def work(rw_url: str, ro_url: str, status: Path, *, check: bool, watch: Path | None) -> None:
    """Connect, then report (see the module docstring).  It records when the master or
    the excluded set changed: as the monitor installs a snapshot (every event, in the
    monitor's thread: the time is the install's), and every 500 ms (50 ms with
    ``--check``) from its snapshot in memory (a change that makes no event)."""
    signal.signal(signal.SIGTERM, _stop)
    rw, ro = _connect(rw_url), _connect(ro_url)
    checks: dict[str, Any] = {
        "errors": [],
        "error_count": 0,
        "rw_on": None,
        "ro_on": None,
        # Every distinct (server_id, read_only) that answered a RW_STRICT query.
        "rw_seen": [],
        "queries": 0,
        # The oldest snapshot seen (seconds), its bound (Snapshot.max_age), and how
        # many looks found it past that bound.
        "max_age": 0.0,
        "bound": None,
        "stale": 0,
    }
    changes: list[tuple[float, str | None, tuple[str, ...]]] = []
    guard = threading.Lock()

    def note(event: object = None) -> bool:
        """Record what routing sees if it changed: called by the monitor's thread as
        it installs a snapshot (its events), so the time is the install's, not that of
        this loop's next look; and by the loop (changes that make no event)."""
        nonlocal changes
        with guard:
            now = time.monotonic()
            master, excluded = _facts()
            if changes and changes[-1][1:] == (master, excluded):
                return False
            changes = [*changes, (now, master, excluded)][-20:]
            return True

    sqlrouter.events.subscribe(sqlrouter.events.EVENT_NAMES, note)
    tmp = status.with_name(status.name + ".tmp")
    written = 0.0
    last: list[tuple[float, str | None, tuple[str, ...]]] = []
    while True:
        if watch is not None and not watch.exists():
            time.sleep(0.5)
            continue
        if check:
            for name, conn in (("rw", rw), ("ro", ro)):
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT @@server_id, @@read_only")
                        row = cur.fetchone()
                    assert row is not None
                    checks[f"{name}_on"] = [int(row[0]), int(row[1])]
                    if name == "rw" and checks["rw_on"] not in checks["rw_seen"]:
                        checks["rw_seen"] = [*checks["rw_seen"], checks["rw_on"]]
                    checks["queries"] += 1
                except sqlrouter.Error as exc:
                    checks["error_count"] += 1
                    checks["errors"] = [*checks["errors"], f"{name}: {exc}"][-5:]
                    with contextlib.suppress(sqlrouter.Error):
                        conn.ping(reconnect=True)
        now = time.monotonic()
        hs = handles()
        if hs:
            snap = hs[0].monitor.snapshot
            age = now - snap.taken_at
            checks["max_age"] = max(checks["max_age"], age)
            checks["bound"] = snap.max_age
            checks["stale"] += age > snap.max_age
        note()
        with guard:
            recorded = list(changes)
        if recorded != last or check or now - written >= 1.0:
            tmp.write_text(json.dumps({**_status(checks), "changes": recorded}))
            last = recorded
            os.replace(tmp, status)
            written = now
        # The changes are recorded as the monitor installs them (events): the loop only
        # reports them, and costs little CPU beside the fleet it measures.
        time.sleep(0.05 if check else 0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("status", type=Path)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--watch", type=Path, default=None)
    parser.add_argument("--fork", type=int, default=0)
    parser.add_argument("--hosts", default="")
    args = parser.parse_args()
    rw, ro = os.environ.get(RW_ENV), os.environ.get(RO_ENV)
    if not rw or not ro:
        parser.error(f"the service URLs go in the environment: {RW_ENV} and {RO_ENV}")
    if not args.fork:
        work(rw, ro, args.status, check=args.check, watch=args.watch)
        return
    hosts = [h for h in args.hosts.split(",") if h] or [os.environ.get("SQLROUTER_SHARE", "")]
    children = []
    for i in range(args.fork):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - a worker
            code = 0
            try:
                if hosts[i % len(hosts)]:
                    os.environ["SQLROUTER_SHARE"] = hosts[i % len(hosts)]
                status = args.status / f"{os.getpid()}.json"
                work(rw, ro, status, check=args.check, watch=args.watch)
            except SystemExit:
                pass
            except BaseException:  # noqa: BLE001 - a worker's failure is its exit status
                traceback.print_exc()
                code = 1
            finally:
                sqlrouter.shutdown()
                os._exit(code)
        children.append(pid)

    def stop_all(signum: int, frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_all)
    for pid in children:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except ChildProcessError:
                break
            except InterruptedError:
                continue


if __name__ == "__main__":
    main()
