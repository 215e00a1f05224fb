"""What topology operations cost applications: failover, switchover, detection.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_operations [--repeats N] [--json PATH] [--update-docs]

Each measurement runs on sandboxes of its own (1 master + 2 replicas, monitor interval
0.5 s; every process and sandbox is cleaned up at the end, also on Ctrl-C or SIGTERM):

(a) **failover**: on a fresh sandbox per repetition, ``sandbox fault db1 kill``; once
    this process's monitor shows db1 down, ``failover(service)`` is called, then
    ``sqlrouter.connect(RW_STRICT, failover_timeout=10)`` and an ``UPDATE`` are tried
    until one succeeds: the time from the ``failover`` call to that first acknowledged
    write;
(b) **switchover**: on one fresh sandbox, three extra processes keep opening
    ``RW_STRICT`` connections (one every 10 ms or so) and record ``@@server_id`` with
    ``time.monotonic()`` timestamps (one clock for every process on Linux);
    ``switchover(service, "db2")`` (then back to db1, and so on) is called here, and
    the time from its return until every process's connections land on the new master
    is measured;
(c) **detection**: in each failover repetition, the time from the SIGKILL of the master
    to the first monitor snapshot (what the control socket's ``status`` shows) with
    ``reachable=False`` for it.

It prints Markdown, writes JSON (``docs/benchmarks/operations.json`` by default) and
with ``--update-docs`` rewrites the ``operations`` section of ``docs/benchmarks.md``.

``--autofailover`` measures instead (d) **automatic failover** (docs/autofailover.md):
on a fresh sandbox and a fresh local 3-member etcd per repetition, three runners
(agents ``a0``-``a2``, threads of this process, 3-round detection at the sandbox's
0.5 s interval) watch the service; ``sandbox fault db1 kill`` at a random point of their
cycle, then ``sqlrouter.connect(RW_STRICT)`` and an ``UPDATE`` are tried until one
succeeds: the time from the SIGKILL to that first acknowledged write (target 5 s).  It
writes ``docs/benchmarks/autofailover.json`` and the ``autofailover`` section.
``--worker`` is the extra processes' mode (they read the URL from stdin and stop when
stdin closes).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import pymysql

import sqlrouter
import sqlrouter.events
from sqlrouter._runtime import handle_for
from sqlrouter.autofailover import Runner, read_status
from sqlrouter.routing.health import Snapshot
from sqlrouter.routing.monitor import Monitor
from sqlrouter.routing.router import observed_master
from sqlrouter.routing.service import ServiceHandle
from sqlrouter.sandbox import EtcdCluster, Sandbox, find_server_binaries
from sqlrouter.switchover import failover, switchover
from sqlrouter.topology import AutofailoverSettings, Credentials
from sqlrouter.url import parse_url

from ._common import (
    format_ns,
    interrupt_on_sigterm,
    machine_info,
    markdown_table,
    median,
    replace_section,
    write_json,
)

ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_JSON: Final = ROOT / "docs" / "benchmarks" / "operations.json"
DOCS: Final = ROOT / "docs" / "benchmarks.md"
SECTION: Final = "operations"
COMMAND_LINE: Final = ".venv/bin/python -m benchmarks.bench_operations"

TABLE: Final = "bench_ops"
WRITE: Final = f"UPDATE {TABLE} SET v = v + 1 WHERE id = 1"

#: Targets (seconds; the switchover and detection ones in monitor intervals).
FAILOVER_TARGET: Final = 2.0
SWITCHOVER_EXTRA: Final = 0.5
DETECT_INTERVALS: Final = 2

DEFAULT_REPEATS: Final = 5

#: (d): the target (seconds, SIGKILL -> first acknowledged write), the repetitions.
AUTOFAILOVER_TARGET: Final = 5.0
AUTOFAILOVER_REPEATS: Final = 10
AUTOFAILOVER_JSON: Final = ROOT / "docs" / "benchmarks" / "autofailover.json"


@dataclass(frozen=True, slots=True)
class Plan:
    """How much each measurement runs.  The defaults take a little over a minute."""

    repeats: int = DEFAULT_REPEATS
    workers: int = 3
    #: Pause of each extra process between two connections.
    worker_pause: float = 0.01
    #: How long the extra processes are watched after a switchover returns.
    observe: float = 2.5
    #: Pause between two switchovers, after the observation.
    settle: float = 1.0
    #: Bound of every wait (a repetition that takes longer fails with a clear error).
    timeout: float = 20.0


def _log(message: str) -> None:
    print(f"[bench_operations] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A measurement could not be made (says which and why)."""


# --------------------------------------------------------------------------- helpers


def _new_sandbox(parent: Path, name: str) -> Sandbox:
    """A fresh sandbox (1 master + 2 replicas) with ``bench_ops``, replicas caught up."""
    sb = Sandbox(parent / name, ephemeral=True, progress=lambda msg: None)
    started = time.monotonic()
    sb.up(replicas=2)
    db = sb.state.database
    with sb.cursor(sb.master.name, timeout=10) as cur:
        cur.execute(f"CREATE TABLE {db}.{TABLE} (id INT PRIMARY KEY, v BIGINT NOT NULL)")
        cur.execute(f"INSERT INTO {db}.{TABLE} VALUES (1, 0)")
    for replica in sb.replicas:
        sb.wait_caught_up(replica.name, timeout=30)
    _log(f"{name}: sandbox ready in {time.monotonic() - started:.1f}s")
    return sb


def _handle(sb: Sandbox) -> ServiceHandle:
    st = sb.state
    parsed = parse_url(sb.url("RW_STRICT"))
    return handle_for(parsed.registry, parsed.service, Credentials(st.app.user, st.app.password))


def _wait_for(
    what: str, check: Callable[[], bool], timeout: float, *, poll: float = 0.002
) -> float:
    """Poll ``check`` until true; the ``time.monotonic()`` when it was; BenchError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if check():
            return now
        if now > deadline:
            raise BenchError(f"{what}: not within {timeout:g}s")
        time.sleep(poll)


def _first_write(url: str, timeout: float, what: str, since: str) -> tuple[float, str, int]:
    """Connect ``RW_STRICT`` and write until it works: ``(time.monotonic() of the
    acknowledgement, the datasource that acknowledged it, failed attempts)``."""
    failures = 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            w = sqlrouter.connect(url, autocommit=True, failover_timeout=10)
            try:
                with w.cursor() as cur:
                    cur.execute(WRITE)
                return time.monotonic(), (w.datasource.name if w.datasource else "?"), failures
            finally:
                w.close()
        except pymysql.err.MySQLError as exc:
            failures += 1
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{what}: no write within {timeout:g}s after {since}; last error: {exc}"
                ) from exc
            time.sleep(0.005)


def _healthy(snap: Snapshot, master: str) -> bool:
    """``master`` is the one writable server and every other one replicates, caught up."""
    m = observed_master(snap)
    if m is None or m.name != master:
        return False
    for ds in snap.datasources:
        h = snap.health_of(ds.name)
        caught_up = h.lag is not None and h.lag < 0.5
        if ds.name != master and not (h.reachable and h.threads_running and caught_up):
            return False
    return True


def _monitor_healthy(monitor: Monitor, master: str) -> bool:
    return _healthy(monitor.snapshot, master)


@contextlib.contextmanager
def _events(names: Sequence[sqlrouter.events.EventName]) -> Iterator[list[tuple[float, str]]]:
    """``(time.monotonic(), str(event))`` of every event named, while the block runs."""
    seen: list[tuple[float, str]] = []

    def record(event: sqlrouter.events.Event) -> None:
        seen.append((time.monotonic(), str(event)))

    sub = sqlrouter.events.subscribe(names, record)
    try:
        yield seen
    finally:
        sub.cancel()


# --------------------------------------------------------------------------- (a) + (c)


@dataclass(frozen=True, slots=True)
class FailoverSample:
    """One repetition of kill + failover + first write."""

    #: SIGKILL -> the snapshot (taken_at) that shows the master unreachable.
    detect_s: float
    #: SIGKILL -> this process polling that snapshot (2 ms polls).
    detect_polled_s: float
    #: The failover() call, start to return.
    failover_call_s: float
    #: failover() called -> first RW_STRICT write acknowledged through sqlrouter.connect.
    first_write_s: float
    #: failover() returned -> this process's monitor published the new master.
    monitor_saw_s: float | None
    new_master: str
    failed_attempts: int
    steps: list[tuple[str, float]]
    interval: float
    server: str


def failover_once(parent: Path, index: int, plan: Plan) -> FailoverSample:
    sb = _new_sandbox(parent, f"failover-{index}")
    conn: sqlrouter.Connection | None = None
    try:
        url = sb.url("RW_STRICT")
        conn = sqlrouter.connect(url, autocommit=True)
        with conn.cursor() as cur:
            cur.execute(WRITE)
        handle = _handle(sb)
        monitor = handle.monitor
        interval = handle.service.monitor_interval
        old = sb.master.name
        server = str(sb.query(old, "SELECT VERSION()")[0][0])
        _wait_for(f"{old} master, replicas caught up", lambda: _healthy(monitor.snapshot, old), 10)
        # The kill lands at a random point of the monitor's cycle (seeded: reproducible),
        # not right after a round, which would always be the slow case.
        monitor.wait_for_round(timeout=5)
        time.sleep(random.Random(index).uniform(0.0, interval))

        # (c) SIGKILL -> monitor shows it down.
        seen_down: list[Snapshot] = []

        def shows_down() -> bool:
            snap = monitor.snapshot
            if snap.health_of(old).reachable:
                return False
            seen_down.append(snap)
            return True

        killed = time.monotonic()
        sb.fault(old, "kill")
        polled = _wait_for(f"monitor shows killed {old} down", shows_down, plan.timeout)
        down = seen_down[0].taken_at

        # (a) failover() -> first acknowledged write.
        with _events(["master_changed"]) as seen:
            started = time.monotonic()
            steps = failover(sb.service(), timeout=30)
            returned = time.monotonic()
            written, new_master, failures = _first_write(
                url, plan.timeout, f"failover {index}", "failover() returned"
            )
        saw = next((t for t, text in seen if text.startswith("master_changed")), None)
        return FailoverSample(
            detect_s=down - killed,
            detect_polled_s=polled - killed,
            failover_call_s=returned - started,
            first_write_s=written - started,
            monitor_saw_s=None if saw is None else saw - returned,
            new_master=new_master,
            failed_attempts=failures,
            steps=[(s.name, s.seconds) for s in steps],
            interval=interval,
            server=server,
        )
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        sqlrouter.shutdown()
        if sb.exists:
            sb.destroy()


# --------------------------------------------------------------------------- (d)


@dataclass(frozen=True, slots=True)
class AutofailoverSample:
    """One repetition of kill + automatic failover + first write."""

    #: SIGKILL -> first RW_STRICT write acknowledged through sqlrouter.connect.
    first_write_s: float
    #: SIGKILL -> the leader published the outcome (wall clocks of one machine).
    outcome_s: float
    #: The failover itself, as the leader measured it.
    failover_s: float
    new_master: str
    leader: str
    failed_attempts: int
    interval: float


def autofailover_once(parent: Path, index: int, plan: Plan) -> AutofailoverSample:
    sb = _new_sandbox(parent, f"autofailover-{index}")
    etcd = EtcdCluster(parent / f"etcd-{index}")
    runners: list[Runner] = []
    try:
        etcd.start()
        settings = AutofailoverSettings(enabled=True, etcd=tuple(etcd.endpoints), lease_ttl=2)
        service = dataclasses.replace(sb.service(), autofailover=settings)
        runners = [Runner(service, agent=f"a{i}").start() for i in range(3)]

        def ready() -> bool:
            st = read_status(etcd.endpoints, service.name)
            decision = st.get("decision") or {}
            seen = [v for v in st["views"] if v["reachable"]]
            return len(seen) == 3 and decision.get("verdict") == "healthy"

        _wait_for("three agents and a healthy decision", ready, plan.timeout, poll=0.1)
        url = sb.url("RW_STRICT")
        interval = runners[0].interval
        time.sleep(random.Random(index).uniform(0.0, interval))
        killed, killed_wall = time.monotonic(), time.time()
        sb.fault("db1", "kill")
        written, new_master, failures = _first_write(
            url, 3 * plan.timeout, f"automatic failover {index}", "the kill"
        )
        # The write may land before the leader has verified and published the outcome.
        _wait_for(
            "the leader's outcome",
            lambda: bool(
                (read_status(etcd.endpoints, service.name).get("outcome") or {}).get("ok")
            ),
            plan.timeout,
            poll=0.05,
        )
        outcome = read_status(etcd.endpoints, service.name)["outcome"]
        return AutofailoverSample(
            first_write_s=written - killed,
            outcome_s=float(outcome["at"]) - killed_wall,
            failover_s=float(outcome.get("seconds", 0.0)),
            new_master=new_master,
            leader=str(outcome.get("leader")),
            failed_attempts=failures,
            interval=interval,
        )
    finally:
        for r in runners:
            r.stop()
        etcd.stop()
        sqlrouter.shutdown()
        if sb.exists:
            sb.destroy()


def autofailover_report(
    samples: Sequence[AutofailoverSample],
    machine: dict[str, str],
    load: dict[str, list[float]],
    seconds: float,
    when: dt.datetime,
) -> str:
    ok = max(s.first_write_s for s in samples) <= AUTOFAILOVER_TARGET
    return "\n".join(
        [
            f"Measured {when:%Y-%m-%d %H:%M} UTC on {machine['cpu']} ({machine['cores']} "
            f"cores, {machine['os']}), Python {machine['python']}, MariaDB "
            f"{machine['server']}, etcd 3-member local cluster; {len(samples)} automatic "
            f"failovers, {seconds:.0f} s in all. Three runners, detection 3 rounds "
            f"{samples[0].interval:g} s apart, leases of 2 s.",
            "",
            "**Shared, busy machine**: load average (1, 5, 15 min) "
            f"{_load(load['start'])} at the start, {_load(load['end'])} at the end, on "
            f"{machine['cores']} cores.",
            "",
            markdown_table(
                ["measurement", "n", "median", "min", "max", "target"],
                [
                    _stat_row(
                        "(d) SIGKILL of the master -> first RW_STRICT write acknowledged",
                        [s.first_write_s for s in samples],
                        AUTOFAILOVER_TARGET,
                    ),
                    _stat_row(
                        "  SIGKILL -> the leader published the outcome",
                        [s.outcome_s for s in samples],
                        None,
                    ),
                    _stat_row(
                        "  the failover itself (the leader's measure)",
                        [s.failover_s for s in samples],
                        None,
                    ),
                ],
            ),
            "",
            markdown_table(
                [
                    "repetition",
                    "first write",
                    "outcome",
                    "failover",
                    "new master",
                    "leader",
                    "failed writes",
                ],
                [
                    [
                        str(i + 1),
                        _s(s.first_write_s),
                        _s(s.outcome_s),
                        _s(s.failover_s),
                        s.new_master,
                        s.leader,
                        str(s.failed_attempts),
                    ]
                    for i, s in enumerate(samples)
                ],
            ),
            "",
            f"Target <= {AUTOFAILOVER_TARGET:g} s (median and worst): "
            + ("met" if ok else "MISSED"),
            "",
            f"Reproduce: `{COMMAND_LINE} --autofailover --update-docs` (JSON: "
            "`docs/benchmarks/autofailover.json`).",
        ]
    )


def run_autofailover(args: argparse.Namespace) -> int:
    plan = Plan(repeats=args.repeats or AUTOFAILOVER_REPEATS)
    started = time.monotonic()
    load = {"start": list(os.getloadavg())}
    tmp = Path(tempfile.mkdtemp(prefix="sqlrouter-bench-auto-", dir=args.dir))
    samples = []
    try:
        for i in range(plan.repeats):
            sample = autofailover_once(tmp, i, plan)
            _log(
                f"automatic failover {i + 1}/{plan.repeats}: first write "
                f"{sample.first_write_s:.3f}s after the kill, on {sample.new_master}"
            )
            samples.append(sample)
        load["end"] = list(os.getloadavg())
    except BenchError as exc:
        _log(f"ERROR: {exc}")
        return 2
    finally:
        sqlrouter.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    when = dt.datetime.now(dt.UTC)
    machine = machine_info(server=_server_version())
    text = autofailover_report(samples, machine, load, time.monotonic() - started, when)
    print(text)
    path = write_json(
        args.json if args.json != DEFAULT_JSON else AUTOFAILOVER_JSON,
        {
            "benchmark": "autofailover",
            "format": 1,
            "date": when.isoformat(timespec="seconds"),
            "command": f"{COMMAND_LINE} --autofailover",
            "machine": machine,
            "load_average": load,
            "target_s": AUTOFAILOVER_TARGET,
            "samples": [dataclasses.asdict(s) for s in samples],
        },
    )
    _log(f"results written to {path}")
    if args.update_docs:
        doc = replace_section(DOCS.read_text(encoding="utf-8"), "autofailover", text)
        DOCS.write_text(doc, encoding="utf-8")
        _log(f"updated {DOCS}")
    return 0 if max(s.first_write_s for s in samples) <= AUTOFAILOVER_TARGET else 1


def _server_version() -> str:
    out = subprocess.run(
        [str(find_server_binaries().server), "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    return out.stdout.strip().split(" Ver ")[-1].split(" for ")[0] if out.stdout else "?"


# --------------------------------------------------------------------------- (b)


@dataclass(slots=True)
class Worker:
    """An extra process that keeps opening RW_STRICT connections."""

    index: int
    proc: subprocess.Popen[str]
    out_path: Path
    err: IO[str]
    out: IO[str]

    def samples(self) -> list[tuple[float, float, int | None]]:
        """``(connect started, answered, server_id or None for an error)``, in order."""
        rows = []
        for line in self.out_path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue  # a line being written
            sid = None if parts[2] == "ERR" or not parts[2].isdigit() else int(parts[2])
            rows.append((float(parts[0]), float(parts[1]), sid))
        return rows


def start_workers(url: str, directory: Path, plan: Plan) -> list[Worker]:
    """Start the extra processes; the URL (with its password) goes through stdin."""
    workers: list[Worker] = []
    try:
        for i in range(plan.workers):
            out_path = directory / f"worker-{i}.txt"
            out = out_path.open("w", encoding="utf-8")
            err = (directory / f"worker-{i}.err").open("w", encoding="utf-8")
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.bench_operations", "--worker"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=ROOT,
                text=True,
            )
            workers.append(Worker(i, proc, out_path, err, out))
            assert proc.stdin is not None
            proc.stdin.write(f"{url}\n{plan.worker_pause}\n")
            proc.stdin.flush()
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: Sequence[Worker]) -> None:
    """Close their stdin (they stop), wait a little, then kill the ones left."""
    for w in workers:
        with contextlib.suppress(OSError):
            if w.proc.stdin is not None:
                w.proc.stdin.close()
    for w in workers:
        try:
            w.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(timeout=5)
        w.out.close()
        w.err.close()


def worker_main() -> int:
    """The extra process: connect, ``SELECT @@server_id``, close, print, again."""
    url = sys.stdin.readline().strip()
    pause = float(sys.stdin.readline())
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
        stop.set()

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    try:
        _worker_loop(url, pause, stop)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group
        return 130
    finally:
        sqlrouter.shutdown()
    return 0


def _worker_loop(url: str, pause: float, stop: threading.Event) -> None:
    """Until ``stop``: one line per connection, ``started answered server_id|ERR``."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            conn = sqlrouter.connect(url, autocommit=True, failover_timeout=10)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT @@server_id")
                    row = cur.fetchone()
                sid = str(row[0]) if row else "ERR"
            finally:
                conn.close()
        except pymysql.err.MySQLError:
            sid = "ERR"  # the error itself is not needed, only that there was one
        sys.stdout.write(f"{started:.6f} {time.monotonic():.6f} {sid}\n")
        sys.stdout.flush()
        stop.wait(pause)


@dataclass(frozen=True, slots=True)
class SwitchoverSample:
    """One switchover, seen by the extra processes."""

    old_master: str
    new_master: str
    switchover_call_s: float
    #: switchover() returned -> every extra process's connections land on the new master.
    all_landed_s: float
    #: ... the first extra process that did.
    first_landed_s: float
    per_process_s: list[float]
    #: switchover() returned -> this process's monitor published the new master.
    monitor_saw_s: float | None
    connects: int
    errors: int
    interval: float


def _landing(
    samples: Sequence[tuple[float, float, int | None]],
    new_id: int,
    since: float,
    until: float,
) -> tuple[float | None, int, int]:
    """When a process's connections started landing on server ``new_id`` for good.

    Among the samples whose connect started in ``[since, until]``: the answer time of
    the first one of the run of samples on ``new_id`` that lasts to ``until`` (None if
    the last sample is not on it), the number of samples and of errors.
    """
    window = [s for s in samples if since <= s[0] <= until]
    errors = sum(1 for s in window if s[2] is None)
    if not window or window[-1][2] != new_id:
        return None, len(window), errors
    first = len(window) - 1
    while first > 0 and window[first - 1][2] == new_id:
        first -= 1
    return window[first][1], len(window), errors


def _connected_to(worker: Worker, server_id: int) -> bool:
    """The extra process answered from ``server_id`` a few times already."""
    return sum(1 for s in worker.samples() if s[2] == server_id) >= 5


def switchover_runs(parent: Path, plan: Plan) -> list[SwitchoverSample]:
    sb = _new_sandbox(parent, "switchover")
    workers: list[Worker] = []
    try:
        url = sb.url("RW_STRICT")
        sqlrouter.connect(url, autocommit=True).close()  # this process's monitor
        handle = _handle(sb)
        monitor = handle.monitor
        interval = handle.service.monitor_interval
        ids = {n.name: n.server_id for n in sb.nodes}
        workers = start_workers(url, parent, plan)
        first = ids[sb.master.name]
        for w in workers:
            _wait_for(
                f"extra process {w.index} connected",
                functools.partial(_connected_to, w, first),
                plan.timeout,
                poll=0.05,
            )
            if w.proc.poll() is not None:
                raise BenchError(f"extra process {w.index} exited with {w.proc.returncode}")
        _log(f"{len(workers)} extra processes connecting in a loop")
        out = []
        current = sb.master.name
        for rep in range(plan.repeats):
            target = "db2" if current != "db2" else sb.master.name
            _wait_for(
                f"switchover {rep}: {current} master, replicas caught up",
                functools.partial(_monitor_healthy, monitor, current),
                plan.timeout,
            )
            with _events(["master_changed"]) as seen:
                started = time.monotonic()
                switchover(sb.service(), target, timeout=30)
                returned = time.monotonic()
                time.sleep(plan.observe)
            saw = next((t for t, _ in seen), None)
            landed: list[float] = []
            connects = errors = 0
            for w in workers:
                at, n, e = _landing(
                    w.samples(), ids[target], started - 0.5, returned + plan.observe
                )
                connects += n
                errors += e
                if at is None:
                    raise BenchError(
                        f"switchover {rep} to {target}: extra process {w.index} was not on "
                        f"{target} {plan.observe:g}s after switchover() returned"
                    )
                landed.append(at - returned)
            sample = SwitchoverSample(
                old_master=current,
                new_master=target,
                switchover_call_s=returned - started,
                all_landed_s=max(landed),
                first_landed_s=min(landed),
                per_process_s=landed,
                monitor_saw_s=None if saw is None else saw - returned,
                connects=connects,
                errors=errors,
                interval=interval,
            )
            _log(
                f"switchover {rep + 1}/{plan.repeats} {current} -> {target}: call "
                f"{sample.switchover_call_s:.3f}s, every process on {target} "
                f"{sample.all_landed_s:+.3f}s after it returned"
            )
            out.append(sample)
            current = target
            time.sleep(plan.settle)
        return out
    finally:
        stop_workers(workers)
        sqlrouter.shutdown()
        if sb.exists:
            sb.destroy()


# --------------------------------------------------------------------------- report


@dataclass(slots=True)
class Outcome:
    failovers: list[FailoverSample]
    switchovers: list[SwitchoverSample]
    load: dict[str, list[float]]
    server: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _s(value: float | None) -> str:
    return "-" if value is None else format_ns(value * 1e9)


def _stat_row(
    title: str, values: Sequence[float], target: float | None, target_text: str = ""
) -> list[str]:
    worst = max(values)
    verdict = "-"
    if target is not None:
        ok = median(values) <= target and worst <= target
        verdict = f"{target_text or f'<= {target:g} s'}: {'met' if ok else 'MISSED'}"
    return [title, str(len(values)), _s(median(values)), _s(min(values)), _s(worst), verdict]


def targets(out: Outcome) -> dict[str, tuple[float, str]]:
    interval = (out.failovers or out.switchovers)[0].interval
    return {
        "failover": (FAILOVER_TARGET, f"<= {FAILOVER_TARGET:g} s"),
        "switchover": (
            interval + SWITCHOVER_EXTRA,
            f"<= 1 interval + {SWITCHOVER_EXTRA:g} s = {interval + SWITCHOVER_EXTRA:g} s",
        ),
        "detect": (
            DETECT_INTERVALS * interval,
            f"<= {DETECT_INTERVALS} intervals = {DETECT_INTERVALS * interval:g} s",
        ),
    }


def met(out: Outcome) -> bool:
    t = targets(out)
    checks = [
        [f.first_write_s for f in out.failovers],
        [s.all_landed_s for s in out.switchovers],
        [f.detect_s for f in out.failovers],
    ]
    limits = [t["failover"][0], t["switchover"][0], t["detect"][0]]
    return all(max(v) <= limit for v, limit in zip(checks, limits, strict=True) if v)


def report(out: Outcome, machine: dict[str, str], plan: Plan, when: dt.datetime) -> str:
    t = targets(out)
    fo, so = out.failovers, out.switchovers
    interval = (fo or so)[0].interval
    lines = [
        f"Measured {when:%Y-%m-%d %H:%M} UTC on {machine['cpu']} ({machine['cores']} cores, "
        f"{machine['os']}), Python {machine['python']}, PyMySQL {machine['pymysql']}, "
        f"MariaDB {machine['server']}; {len(fo)} failovers and {len(so)} switchovers, "
        f"{out.seconds:.0f} s in all. Monitor interval {interval:g} s (jittered by ±10 %), "
        "probe timeout 1 s.",
        "",
        "**Shared, busy machine**: other people's test suites ran at the same time. Load "
        f"average (1, 5, 15 min) {_load(out.load['start'])} at the start, "
        f"{_load(out.load['end'])} at the end, on {machine['cores']} cores; the extra "
        "processes and the servers compete for the same cores. A target counts as met "
        "when the median **and the worst** repetition are within it.",
        "",
        markdown_table(
            ["measurement", "n", "median", "min", "max", "target"],
            [
                _stat_row(
                    "(a) failover() called -> first RW_STRICT write acknowledged",
                    [f.first_write_s for f in fo],
                    *t["failover"],
                ),
                _stat_row("  the failover() call itself", [f.failover_call_s for f in fo], None),
                _stat_row(
                    "  failover() returned -> this process's monitor saw the new master",
                    [f.monitor_saw_s for f in fo if f.monitor_saw_s is not None],
                    None,
                ),
                _stat_row(
                    "(b) switchover() returned -> every extra process on the new master",
                    [s.all_landed_s for s in so],
                    *t["switchover"],
                ),
                _stat_row("  ... the first extra process", [s.first_landed_s for s in so], None),
                _stat_row(
                    "  the switchover() call itself", [s.switchover_call_s for s in so], None
                ),
                _stat_row(
                    "  switchover() returned -> this process's monitor saw the new master",
                    [s.monitor_saw_s for s in so if s.monitor_saw_s is not None],
                    None,
                ),
                _stat_row(
                    "(c) SIGKILL of the master -> snapshot shows it reachable=False",
                    [f.detect_s for f in fo],
                    *t["detect"],
                ),
            ],
        ),
        "",
        "Each repetition:",
        "",
        markdown_table(
            [
                "failover",
                "detect (c)",
                "failover() call",
                "first write (a)",
                "new master",
                "failed write attempts",
            ],
            [
                [
                    str(i + 1),
                    _s(f.detect_s),
                    _s(f.failover_call_s),
                    _s(f.first_write_s),
                    f.new_master,
                    str(f.failed_attempts),
                ]
                for i, f in enumerate(fo)
            ],
        ),
        "",
        markdown_table(
            [
                "switchover",
                "switchover() call",
                "every process on it (b)",
                "each process",
                "connects observed",
                "failed connects",
            ],
            [
                [
                    f"{i + 1}: {s.old_master} -> {s.new_master}",
                    _s(s.switchover_call_s),
                    _s(s.all_landed_s),
                    ", ".join(f"{v:+.3f} s" for v in s.per_process_s),
                    str(s.connects),
                    str(s.errors),
                ]
                for i, s in enumerate(so)
            ],
        ),
        "",
    ]
    if fo:
        names = [name for name, _ in fo[0].steps]
        rows = []
        for name in names:
            vals = [dict(f.steps).get(name) for f in fo]
            got = [v for v in vals if v is not None]
            if got:
                rows.append([name, _s(median(got)), _s(max(got))])
        lines += [
            "Where a failover() call spends its time (the steps it reports, median and max "
            f"over the {len(fo)} repetitions):",
            "",
            markdown_table(["step", "median", "max"], rows),
            "",
        ]
    lines += [
        f"Reproduce: `{COMMAND_LINE} --update-docs` (JSON: `docs/benchmarks/operations.json`).",
    ]
    return "\n".join(lines)


def _load(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _payload(
    out: Outcome, machine: dict[str, str], plan: Plan, when: dt.datetime
) -> dict[str, Any]:
    t = targets(out)
    return {
        "benchmark": "operations",
        "format": 1,
        "date": when.isoformat(timespec="seconds"),
        "command": COMMAND_LINE,
        "machine": machine,
        "load_average": out.load,
        "plan": dataclasses.asdict(plan),
        "targets_s": {k: v[0] for k, v in t.items()},
        "met": met(out),
        "failovers": [dataclasses.asdict(f) for f in out.failovers],
        "switchovers": [dataclasses.asdict(s) for s in out.switchovers],
    }


# --------------------------------------------------------------------------- main


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_operations",
        description="Measure how long applications wait during a failover and a "
        "switchover, and how fast a dead master is seen, on local sandbox clusters.",
        epilog="Exit status: 0 when every target is met, 1 when one is missed, 2 when a "
        "measurement could not be made, 130 when interrupted (processes and sandboxes "
        "are cleaned up in every case).",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"repetitions of each measurement (default {DEFAULT_REPEATS}; "
        f"{AUTOFAILOVER_REPEATS} with --autofailover)",
    )
    parser.add_argument(
        "--autofailover",
        action="store_true",
        help="measure automatic failover instead (d): SIGKILL -> first write",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help="where to write the results (default docs/benchmarks/operations.json)",
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite the operations section of docs/benchmarks.md",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="parent directory of the temporary sandboxes (default: the system temp dir)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


def run(args: argparse.Namespace) -> int:
    if args.autofailover:
        return run_autofailover(args)
    plan = Plan(repeats=args.repeats or DEFAULT_REPEATS)
    started = time.monotonic()
    load = {"start": list(os.getloadavg())}
    tmp = Path(tempfile.mkdtemp(prefix="sqlrouter-bench-ops-", dir=args.dir))
    server = ""
    try:
        failovers = []
        for i in range(plan.repeats):
            sample = failover_once(tmp, i, plan)
            _log(
                f"failover {i + 1}/{plan.repeats}: down seen {sample.detect_s:.3f}s after "
                f"SIGKILL; failover() {sample.failover_call_s:.3f}s; first write "
                f"{sample.first_write_s:.3f}s after the call, on {sample.new_master}"
            )
            failovers.append(sample)
        switchovers = switchover_runs(tmp, plan)
        server = failovers[0].server if failovers else ""
        load["end"] = list(os.getloadavg())
    except BenchError as exc:
        _log(f"ERROR: {exc}")
        return 2
    finally:
        sqlrouter.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    out = Outcome(failovers, switchovers, load, server, time.monotonic() - started)
    when = dt.datetime.now(dt.UTC)
    machine = machine_info(server=out.server)
    text = report(out, machine, plan, when)
    print(text)
    path = write_json(args.json, _payload(out, machine, plan, when))
    _log(f"results written to {path}")
    if args.update_docs:
        doc = replace_section(DOCS.read_text(encoding="utf-8"), SECTION, text)
        DOCS.write_text(doc, encoding="utf-8")
        _log(f"updated {DOCS}")
    _log(f"done in {time.monotonic() - started:.0f}s")
    return 0 if met(out) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.worker:
        return worker_main()
    with interrupt_on_sigterm():
        try:
            return run(args)
        except KeyboardInterrupt:
            _log("interrupted; processes and sandboxes were cleaned up")
            return 130


if __name__ == "__main__":
    sys.exit(main())
