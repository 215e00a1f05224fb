"""What session consistency costs: write-then-read pairs, interleaved.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_consistency [--rounds N] [--json PATH] [--update-docs]

It starts its own sandbox (1 master + 2 replicas, destroyed at the end, also on Ctrl-C
or SIGTERM), fills a 10 000-row table, and measures, interleaved in blocks (see
``benchmarks/_common.py`` and ``docs/benchmarks.md``), pairs of one write (``UPDATE`` of
one row by primary key, autocommit, through a ``RW_STRICT`` connection) followed by a
read of that row:

- **master**: the read on the same ``RW_STRICT`` connection (the baseline), and
  **master2**, the same on other connections (an A/A control);
- **session**: the read through a ``RO_RELAXED`` connection of the same session
  (``consistency=session``, the default: the read must see the write);
- **none**: both connections with ``consistency=none`` (the read may be stale);
- **fallback**: the write on a ``consistency=none`` connection followed by ``SELECT
  @@last_gtid``, the GTID merged into the session by hand (what sqlrouter does when the
  server cannot report the GTID in its OK packets), then the session's read;
- **one-trip**: a prototype, not sqlrouter: the session's write, then
  ``MASTER_GTID_WAIT`` and the read sent together in one multi-statement query on a
  plain PyMySQL connection to a replica (what a one-round-trip check would cost).

Every connection's commands are counted (a wrapper around PyMySQL's
``_execute_command``, on every side alike), so the report says how many reads needed a
``MASTER_GTID_WAIT``, how many connections moved, where the reads were served, and how
many reads missed the write they followed.  A separate, untimed audit counts the round
trips of a write on the master itself (global ``Questions``/``Com_select``, net of the
monitor's own queries), with session tracking and with the ``SELECT @@last_gtid``
fallback.  Then the time of a consistent read is broken down (check, wait, read).

It prints Markdown, writes JSON (``docs/benchmarks/consistency.json`` by default) and
with ``--update-docs`` rewrites the ``consistency`` section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import itertools
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pymysql
import pymysql.connections
from pymysql.constants import CLIENT, COMMAND

import sqlrouter
from sqlrouter._runtime import handle_for
from sqlrouter.consistency import Session
from sqlrouter.routing.service import ServiceHandle
from sqlrouter.sandbox import Sandbox
from sqlrouter.topology import Credentials
from sqlrouter.url import parse_url

from ._common import (
    Comparison,
    Interleaved,
    SideResult,
    bench_sandbox,
    format_ns,
    format_ratio,
    gc_paused,
    interrupt_on_sigterm,
    machine_info,
    markdown_table,
    median,
    profile_calls,
    replace_section,
    write_json,
)
from ._common import (
    fill_table as _fill_table,
)

ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_JSON: Final = ROOT / "docs" / "benchmarks" / "consistency.json"
DOCS: Final = ROOT / "docs" / "benchmarks.md"
SECTION: Final = "consistency"
COMMAND_LINE: Final = ".venv/bin/python -m benchmarks.bench_consistency"

TABLE: Final = "bench_rw"
ROWS: Final = 10_000
WRITE: Final = f"UPDATE {TABLE} SET v = %s WHERE id = %s"
READ: Final = f"SELECT id, v, c FROM {TABLE} WHERE id = %s"
#: The prototype's check and read, in one query (the token is digits, dashes, commas).
ONE_TRIP: Final = "SELECT MASTER_GTID_WAIT(%s, %s); " + READ

#: Target: a consistent read right after a write costs at most this times the same read
#: on the master (median paired ratio).
READ_TARGET: Final = 1.10

DEFAULT_ROUNDS: Final = 60

if TYPE_CHECKING:
    AnyConnection = pymysql.connections.Connection[Any]
else:  # generic in the type stubs only
    AnyConnection = pymysql.connections.Connection


@dataclass(frozen=True, slots=True)
class Plan:
    """How much each part runs.  The defaults take about 40 s, sandbox included."""

    rounds: int = DEFAULT_ROUNDS
    #: Pairs per block, switches per round, connection pairs ("lanes") per side.
    block: int = 10
    alternations: int = 8
    lanes: int = 2
    warmup: int = 200
    #: Writes per variant in the round-trip audit.
    audit_writes: int = 400
    #: Idle time used to measure the monitor's own queries on the master.
    audit_control_s: float = 3.0
    #: Pairs timed step by step for the breakdown of a consistent read.
    breakdown_pairs: int = 1500
    profile_calls: int = 1000


def _log(message: str) -> None:
    print(f"[bench_consistency] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup


def fill_table(sb: Sandbox) -> None:
    """Create ``appdb.bench_rw`` (10 000 rows) on the master; wait for the replicas."""
    _fill_table(
        sb,
        TABLE,
        "id INT PRIMARY KEY, v BIGINT NOT NULL, c CHAR(120) NOT NULL",
        lambda i, rng: (i, 0, "-".join(f"{rng.randrange(10**11):011d}" for _ in range(10))),
        ROWS,
    )


# --------------------------------------------------------------------------- counting


def _kind(command: int, sql: str | bytes) -> str:
    """What a command sent to a server is, for the counts."""
    if command != COMMAND.COM_QUERY:
        return {COMMAND.COM_QUIT: "quit", COMMAND.COM_PING: "ping"}.get(command, f"cmd {command}")
    text = sql[:160].decode("latin-1") if isinstance(sql, bytes) else sql[:160]
    if text.startswith("SELECT MASTER_GTID_WAIT("):
        return "wait+read" if "; SELECT id, v, c" in text else "wait"
    if text.startswith(f"UPDATE {TABLE}"):
        return "write"
    if text.startswith("SELECT id, v, c"):
        return "read"
    if text.startswith("SELECT @@last_gtid"):
        return "last_gtid"
    return "other"


def count_commands(conn: AnyConnection, counts: Counter[str], prefix: str) -> None:
    """Count every command ``conn`` sends (and every connect) into ``counts``.

    An instance attribute shadowing PyMySQL's method: the same few hundred nanoseconds
    on every side.
    """
    execute = conn._execute_command  # type: ignore[attr-defined]  # PyMySQL internal
    # Every connect: a sqlrouter connection's moves route again without calling connect().
    reconnect = "_route" if isinstance(conn, sqlrouter.Connection) else "connect"
    route = getattr(conn, reconnect)

    def counting_execute(command: int, sql: str | bytes) -> Any:
        counts[f"{prefix} {_kind(command, sql)}"] += 1
        return execute(command, sql)

    def counting_connect(*args: Any, **kwargs: Any) -> Any:
        counts[f"{prefix} connect"] += 1
        return route(*args, **kwargs)

    setattr(conn, "_execute_command", counting_execute)  # noqa: B010 - shadows a method
    setattr(conn, reconnect, counting_connect)


# --------------------------------------------------------------------------- the sides


@dataclass(slots=True)
class Lane:
    """One writer and one reader (the same connection for the master side)."""

    writer: AnyConnection
    reader: AnyConnection
    session: Session | None
    #: Where the reader is when it is a plain PyMySQL connection (the prototype).
    fixed_reader: str | None = None


@dataclass(slots=True)
class SideStats:
    """What one side's reads did, outside the timings."""

    reads: int = 0
    stale: int = 0
    wait_timeouts: int = 0
    served: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)

    def clear(self) -> None:
        self.reads = self.stale = self.wait_timeouts = 0
        self.served.clear()
        self.commands.clear()


class PairSide:
    """One side of the benchmark: blocks of write-then-read pairs.

    ``run(n)`` returns the reads' latencies (the measurement the target is about) and
    keeps the writes' latencies in :attr:`write_blocks`, block by block, in step with
    the :class:`Interleaved` blocks.
    """

    def __init__(
        self,
        name: str,
        lanes: Sequence[Lane],
        *,
        kind: str,
        values: Iterator[int],
        seed: int = 7,
    ) -> None:
        self.name = name
        self.kind = kind
        self.lanes = list(lanes)
        self._cycle = itertools.cycle(self.lanes)
        self._values = values
        self._ids = random.Random(seed)
        self.write_blocks: list[list[int]] = []
        self.stats = SideStats()
        for lane in self.lanes:
            count_commands(lane.writer, self.stats.commands, "writer")
            if lane.reader is not lane.writer:
                count_commands(lane.reader, self.stats.commands, "reader")

    def reset(self) -> None:
        self.write_blocks.clear()
        self.stats.clear()

    def run(self, n: int) -> list[int]:
        lane = next(self._cycle)
        wcur = lane.writer.cursor()
        rcur = lane.reader.cursor()
        clock = time.perf_counter_ns
        writes = [0] * n
        reads = [0] * n
        stats = self.stats
        kind = self.kind
        session = lane.session
        reader = lane.reader
        for i in range(n):
            key = self._ids.randint(1, ROWS)
            value = next(self._values)
            if kind == "fallback":
                assert session is not None
                t0 = clock()
                wcur.execute(WRITE, (value, key))
                wcur.execute("SELECT @@last_gtid")
                gtid = wcur.fetchone()
                if gtid and gtid[0]:
                    session.advance_gtid(str(gtid[0]))
                t1 = clock()
                rcur.execute(READ, (key,))
                row = rcur.fetchone()
                t2 = clock()
            elif kind == "one-trip":
                assert session is not None
                t0 = clock()
                wcur.execute(WRITE, (value, key))
                t1 = clock()
                rcur.execute(ONE_TRIP, (str(session.token), 0.1, key))
                waited = rcur.fetchone()
                rcur.nextset()
                row = rcur.fetchone()
                t2 = clock()
                if not waited or waited[0] != 0:
                    stats.wait_timeouts += 1
            else:
                t0 = clock()
                wcur.execute(WRITE, (value, key))
                t1 = clock()
                rcur.execute(READ, (key,))
                row = rcur.fetchone()
                t2 = clock()
            writes[i] = t1 - t0
            reads[i] = t2 - t1
            stats.reads += 1
            if row is None or row[1] != value:
                stats.stale += 1
            ds = getattr(reader, "datasource", None)
            stats.served[lane.fixed_reader or (ds.name if ds is not None else "?")] += 1
        wcur.close()
        rcur.close()
        self.write_blocks.append(writes)
        return reads


@dataclass(slots=True)
class Context:
    sb: Sandbox
    handle: ServiceHandle
    user: str
    password: str = field(repr=False)
    database: str = ""
    master: str = ""
    replicas: list[tuple[str, int]] = field(default_factory=list)
    server_version: str = ""


def _connect(ctx: Context, qos: str, **params: str) -> sqlrouter.Connection:
    return sqlrouter.connect(ctx.sb.url(qos), autocommit=True, **params)


def make_lanes(ctx: Context, kind: str, count: int) -> list[Lane]:
    """``count`` lanes of side ``kind``; each lane is its own session."""
    lanes = []
    for i in range(count):
        if kind in ("master", "master2"):
            rw = _connect(ctx, "RW_STRICT")
            lanes.append(Lane(rw, rw, rw.session))
            continue
        if kind == "none":
            rw = _connect(ctx, "RW_STRICT", consistency="none")
            ro = _connect(ctx, "RO_RELAXED", consistency="none")
            lanes.append(Lane(rw, ro, None))
            continue
        with sqlrouter.session() as s:
            if kind == "fallback":
                rw = _connect(ctx, "RW_STRICT", consistency="none")
            else:
                rw = _connect(ctx, "RW_STRICT")
            if kind == "one-trip":
                name, port = ctx.replicas[i % len(ctx.replicas)]
                raw = pymysql.connect(
                    host="127.0.0.1",
                    port=port,
                    user=ctx.user,
                    password=ctx.password,
                    database=ctx.database,
                    autocommit=True,
                    client_flag=CLIENT.MULTI_STATEMENTS,
                )
                lanes.append(Lane(rw, raw, s, fixed_reader=name))
            else:
                lanes.append(Lane(rw, _connect(ctx, "RO_RELAXED"), s))
    return lanes


SIDES: Final = ("master", "master2", "session", "none", "fallback", "one-trip")

TITLES: Final = {
    "master": "read on the master (RW_STRICT, same connection)",
    "master2": "A/A control: the same on other connections",
    "session": "consistency=session: RO_RELAXED read",
    "none": "consistency=none: RO_RELAXED read (may be stale)",
    "fallback": "SELECT @@last_gtid fallback, then the session's read",
    "one-trip": "prototype: MASTER_GTID_WAIT + read in one query",
}


@dataclass(slots=True)
class MainResult:
    reads: dict[str, SideResult]
    writes: dict[str, SideResult]
    pairs: dict[str, SideResult]
    stats: dict[str, SideStats]
    lanes: dict[str, list[str]]
    max_lag: float
    lag_samples: int
    seconds: float


def _derived(name: str, res: SideResult, blocks: list[list[int]]) -> SideResult:
    """A SideResult of other latencies measured in the same blocks (same CPU times)."""
    return SideResult(
        label=name,
        samples=[x for b in blocks for x in b],
        blocks=[list(b) for b in blocks],
        cpu_process_ns=res.cpu_process_ns,
        cpu_thread_ns=res.cpu_thread_ns,
        wall_ns=res.wall_ns,
    )


def measure(ctx: Context, plan: Plan) -> MainResult:
    values = itertools.count(1)
    sides: dict[str, PairSide] = {}
    all_lanes: list[Lane] = []
    try:
        for kind in SIDES:
            lanes = make_lanes(ctx, kind, plan.lanes)
            all_lanes += lanes
            sides[kind] = PairSide(kind, lanes, kind=kind, values=values)
        where = {
            kind: [
                f"{getattr(lane.writer, 'datasource', None)}"
                f" -> {lane.fixed_reader or getattr(lane.reader, 'datasource', None)}"
                for lane in side.lanes
            ]
            for kind, side in sides.items()
        }
        bench = Interleaved(
            {kind: side.run for kind, side in sides.items()},
            block=plan.block,
            alternations=plan.alternations,
        )
        bench.warmup(plan.warmup)
        for side in sides.values():
            side.reset()
        _log(
            f"write-then-read pairs: {bench.ops_per_round} per side per round, "
            f"{len(sides)} sides, blocks of {plan.block}, {plan.rounds} rounds"
        )
        max_lag = 0.0
        lag_samples = 0
        started = time.monotonic()
        with gc_paused():
            for r in range(plan.rounds):
                bench.run_round()
                gc.collect()
                snap = ctx.handle.monitor.snapshot
                for name, _ in ctx.replicas:
                    lag = snap.health_of(name).lag
                    max_lag = max(max_lag, lag if lag is not None else float("inf"))
                    lag_samples += 1
                if (r + 1) % 5 == 0 or r + 1 == plan.rounds:
                    _log(f"round {r + 1}/{plan.rounds} ({time.monotonic() - started:.0f}s)")
        seconds = time.monotonic() - started
        reads = bench.results
        writes = {k: _derived(k, reads[k], s.write_blocks) for k, s in sides.items()}
        pairs = {
            k: _derived(
                k,
                reads[k],
                [
                    [w + r for w, r in zip(wb, rb, strict=True)]
                    for wb, rb in zip(s.write_blocks, reads[k].blocks, strict=True)
                ],
            )
            for k, s in sides.items()
        }
        return MainResult(
            reads=reads,
            writes=writes,
            pairs=pairs,
            stats={k: s.stats for k, s in sides.items()},
            lanes=where,
            max_lag=max_lag,
            lag_samples=lag_samples,
            seconds=seconds,
        )
    finally:
        for lane in all_lanes:
            for conn in {id(lane.writer): lane.writer, id(lane.reader): lane.reader}.values():
                with contextlib.suppress(Exception):
                    conn.close()


# --------------------------------------------------------------------------- audit


@dataclass(frozen=True, slots=True)
class AuditRow:
    variant: str
    writes: int
    client_commands_per_write: float
    questions_per_write: float
    com_select_per_write: float
    com_update_per_write: float
    gtids_captured: int
    seconds: float


_STATUS: Final = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_select', 'Com_update')"
)


def _status(cur: Any) -> dict[str, int]:
    cur.execute(_STATUS)
    return {str(k): int(v) for k, v in cur.fetchall()}


def audit_round_trips(ctx: Context, plan: Plan) -> tuple[list[AuditRow], dict[str, float]]:
    """Round trips of a write, counted on the master's own status counters.

    The master's global counters also count the monitor's probes and heartbeat writes:
    an idle window first measures them per monitor round, and each variant's count is
    net of them (the monitor counts its rounds) and of the ``SHOW GLOBAL STATUS`` itself.
    """
    monitor = ctx.handle.monitor
    n = plan.audit_writes
    rng = random.Random(11)
    values = itertools.count(10**9)
    with ctx.sb.cursor(ctx.master, timeout=10) as status_cur:
        rounds0 = monitor.rounds
        s0 = _status(status_cur)
        time.sleep(plan.audit_control_s)
        s1 = _status(status_cur)
        rounds = max(monitor.rounds - rounds0, 1)
        per_round = {k: (s1[k] - s0[k] - (1 if k == "Questions" else 0)) / rounds for k in s0}
        control = {f"{k} per monitor round": v for k, v in per_round.items()}
        control["monitor rounds"] = float(rounds)

        def variant(
            name: str, conn: sqlrouter.Connection, after: Callable[[Any], None]
        ) -> AuditRow:
            counts: Counter[str] = Counter()
            count_commands(conn, counts, "w")
            session = conn.session
            version0 = session.version if session is not None else 0
            cur = conn.cursor()
            r0 = monitor.rounds
            t0 = time.monotonic()
            a = _status(status_cur)
            for _ in range(n):
                cur.execute(WRITE, (next(values), rng.randint(1, ROWS)))
                after(cur)
            b = _status(status_cur)
            seconds = time.monotonic() - t0
            r = monitor.rounds - r0
            cur.close()
            gtids = (session.version - version0) if session is not None else 0

            def net(key: str) -> float:
                own = 1 if key == "Questions" else 0  # the second SHOW counts itself
                return (b[key] - a[key] - own - per_round[key] * r) / n

            return AuditRow(
                variant=name,
                writes=n,
                client_commands_per_write=sum(counts.values()) / n,
                questions_per_write=net("Questions"),
                com_select_per_write=net("Com_select"),
                com_update_per_write=net("Com_update"),
                gtids_captured=gtids,
                seconds=seconds,
            )

        rows = []
        conn = _connect(ctx, "RW_STRICT")
        rows.append(
            variant("sqlrouter, consistency=session (GTID in the OK packet)", conn, _nothing)
        )
        conn.close()
        conn = _connect(ctx, "RW_STRICT", consistency="none")
        rows.append(variant("sqlrouter, consistency=none (nothing tracked)", conn, _nothing))
        conn.close()
        with sqlrouter.session() as s:
            conn = _connect(ctx, "RW_STRICT", consistency="none")

        def select_last_gtid(cur: Any) -> None:
            cur.execute("SELECT @@last_gtid")
            row = cur.fetchone()
            if row and row[0]:
                s.advance_gtid(str(row[0]))

        row = variant(
            "fallback emulated: consistency=none + SELECT @@last_gtid", conn, select_last_gtid
        )
        rows.append(dataclasses.replace(row, gtids_captured=s.version))
        conn.close()
        conn = _connect(ctx, "RW_STRICT")
        # sqlrouter's own fallback code path (used when the server refuses to track
        # last_gtid), switched on through its private flag: nothing else forces it.
        setattr(conn, "_gtid_by_select", True)  # noqa: B010 - private switch, see above
        rows.append(
            variant("fallback forced in sqlrouter (Connection._gtid_by_select)", conn, _nothing)
        )
        conn.close()
    return rows, control


def _nothing(cur: Any) -> None:
    return None


# --------------------------------------------------------------------------- breakdown


@dataclass(slots=True)
class Breakdown:
    """Medians of the parts of a consistent read right after a write."""

    pairs: int
    parts: dict[str, float]
    shares: dict[str, float]
    notes: list[str]


def breakdown(ctx: Context, plan: Plan) -> Breakdown:
    """Time the parts of ``consistency=session`` writes and the reads right after them.

    On one lane, instance attributes shadow sqlrouter's private steps with timers (the
    library is not edited): the writer's ``_capture`` (decode the GTID from the OK
    packet, merge it into the token); the reader's ``_at_transaction_start`` (the whole
    check), ``_gtid_wait`` (the ``MASTER_GTID_WAIT`` round trip) and ``_route`` (a
    move).  The rest of a read is PyMySQL's query.  For comparison, a plain PyMySQL
    connection to the same replica runs the same SELECT (in alternating order with
    sqlrouter's), then ``MASTER_GTID_WAIT`` for the token already applied: the bare
    round trip of the wait, without waiting.
    """
    (lane,) = make_lanes(ctx, "session", 1)
    reader, writer = lane.reader, lane.writer
    assert isinstance(reader, sqlrouter.Connection)
    assert isinstance(writer, sqlrouter.Connection)
    session = lane.session
    assert session is not None
    clock = time.perf_counter_ns
    acc = dict.fromkeys(("capture", "check", "wait", "connect"), 0)
    calls = Counter[str]()

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[name] += clock() - t0
                calls[name] += 1

        return wrapper

    for conn, attr, name in (
        (writer, "_capture", "capture"),
        (reader, "_at_transaction_start", "check"),
        (reader, "_gtid_wait", "wait"),
        (reader, "_route", "connect"),
    ):
        setattr(conn, attr, timed(name, getattr(conn, attr)))
    ds = reader.datasource
    assert ds is not None
    plain = pymysql.connect(
        host=ds.host,
        port=ds.port,
        user=ctx.user,
        password=ctx.password,
        database=ctx.database,
        autocommit=True,
    )
    rng = random.Random(5)
    values = itertools.count(2 * 10**9)
    wcur, rcur, pcur = writer.cursor(), reader.cursor(), plain.cursor()
    names = (
        "write",
        "capture",
        "read",
        "check",
        "wait",
        "decision",
        "move",
        "query",
        "plain",
        "noop_wait",
    )
    rows: dict[str, list[int]] = {k: [] for k in names}
    warmup = 100

    def plain_read(key: int) -> int:
        t0 = clock()
        pcur.execute(READ, (key,))
        pcur.fetchone()
        return clock() - t0

    try:
        with gc_paused():
            for i in range(plan.breakdown_pairs + warmup):
                if i == warmup:
                    calls.clear()
                key = rng.randint(1, ROWS)
                for k in acc:
                    acc[k] = 0
                t0 = clock()
                wcur.execute(WRITE, (next(values), key))
                write = clock() - t0
                bare = plain_read(key) if i % 2 else 0
                t0 = clock()
                rcur.execute(READ, (key,))
                rcur.fetchone()
                total = clock() - t0
                if not i % 2:
                    bare = plain_read(key)
                t0 = clock()
                pcur.execute("SELECT MASTER_GTID_WAIT(%s, 0.1)", (str(session.token),))
                pcur.fetchone()
                noop = clock() - t0
                if i < warmup:
                    continue
                rows["write"].append(write)
                rows["capture"].append(acc["capture"])
                rows["read"].append(total)
                rows["check"].append(acc["check"])
                rows["wait"].append(acc["wait"])
                rows["move"].append(acc["connect"])
                rows["decision"].append(acc["check"] - acc["wait"] - acc["connect"])
                rows["query"].append(total - acc["check"])
                rows["plain"].append(bare)
                rows["noop_wait"].append(noop)
    finally:
        for closing in (wcur, rcur, pcur, plain, writer, reader):
            with contextlib.suppress(Exception):
                closing.close()
    parts = {k: median(v) for k, v in rows.items()}
    means = {k: statistics.fmean(v) for k, v in rows.items()}
    shares = {k: means[k] / means["read"] for k in ("check", "wait", "decision", "move", "query")}
    shares["capture"] = means["capture"] / means["write"]
    notes = [
        f"{plan.breakdown_pairs} write-then-read pairs on one session; "
        f"{calls['wait']} MASTER_GTID_WAIT, {calls['connect']} moves",
    ]
    return Breakdown(plan.breakdown_pairs, parts, shares, notes)


def profile_session_read(ctx: Context, plan: Plan) -> str:
    """cProfile of ``plan.profile_calls`` write-then-read pairs of the session side."""
    (lane,) = make_lanes(ctx, "session", 1)
    rng = random.Random(9)
    values = itertools.count(3 * 10**9)
    wcur, rcur = lane.writer.cursor(), lane.reader.cursor()

    def pair() -> None:
        key = rng.randint(1, ROWS)
        wcur.execute(WRITE, (next(values), key))
        rcur.execute(READ, (key,))
        rcur.fetchone()

    try:
        return (
            f"=== cProfile: {plan.profile_calls} write-then-read pairs, consistency=session ===\n"
            + profile_calls(pair, plan.profile_calls)
        )
    finally:
        lane.writer.close()
        lane.reader.close()


# --------------------------------------------------------------------------- report


def _paired_row(title: str, base: SideResult, cand: SideResult, target: float | None) -> list[str]:
    c = Comparison(key=title, title=title, baseline=base, candidate=cand, target=target)
    paired, low, high = c.paired_ratio()
    verdict = "-" if target is None else f"<= {target:.2f}: {'met' if c.met else 'MISSED'}"
    return [
        title,
        str(min(base.ops, cand.ops)),
        format_ns(base.summary().median),
        format_ns(cand.summary().median),
        format_ns(c.paired_difference()),
        format_ratio(c.median_ratio),
        f"{format_ratio(paired)} [{low:.3f}, {high:.3f}]",
        format_ns(base.summary().p99),
        format_ns(cand.summary().p99),
        verdict,
    ]


_PAIRED_HEADERS: Final = [
    "measurement",
    "n/side",
    "median baseline",
    "median this",
    "difference (paired)",
    "ratio of medians",
    "paired ratio [95% CI]",
    "p99 baseline",
    "p99 this",
    "target",
]


def comparisons(res: MainResult) -> list[Comparison]:
    """Every comparison of the main run, for the JSON."""
    out = []
    for kind in SIDES[1:]:
        out.append(
            Comparison(
                key=f"read_{kind}",
                title=f"read after write: {TITLES[kind]} vs the master",
                baseline=res.reads["master"],
                candidate=res.reads[kind],
                target=READ_TARGET if kind == "session" else None,
            )
        )
    for kind in ("session", "fallback", "master"):
        out.append(
            Comparison(
                key=f"write_{kind}",
                title=f"write: {kind} side vs consistency=none",
                baseline=res.writes["none"],
                candidate=res.writes[kind],
            )
        )
    for kind in SIDES[1:]:
        out.append(
            Comparison(
                key=f"pair_{kind}",
                title=f"write + read: {kind} vs the master",
                baseline=res.pairs["master"],
                candidate=res.pairs[kind],
            )
        )
    return out


def _per(stats: SideStats, key: str) -> str:
    return f"{stats.commands[key] / stats.reads:.3f}" if stats.reads else "-"


@dataclass(slots=True)
class Outcome:
    """Everything one run measured."""

    main: MainResult
    audit: list[AuditRow]
    control: dict[str, float]
    breakdown: Breakdown
    load: dict[str, list[float]]
    master: str


def report(out: Outcome, machine: dict[str, str], plan: Plan, when: dt.datetime) -> str:
    """The Markdown block printed, and pasted into docs/benchmarks.md."""
    res, audit, control, brk, load = out.main, out.audit, out.control, out.breakdown, out.load
    lines = [
        f"Measured {when:%Y-%m-%d %H:%M} UTC on {machine['cpu']} ({machine['cores']} cores, "
        f"{machine['os']}), Python {machine['python']}, PyMySQL {machine['pymysql']}, "
        f"MariaDB {machine['server']}; {plan.rounds} rounds, "
        f"{res.reads['master'].ops} pairs per side in {res.seconds:.0f} s.",
        "",
        f"**Shared, busy machine**: other people's test suites ran at the same time. Load "
        f"average (1, 5, 15 min) {_load(load['start'])} at the start, "
        f"{_load(load['end'])} at the end, on {machine['cores']} cores: absolute times are "
        "noisy; the paired ratios (sides interleaved in blocks of "
        f"{plan.block}) are what to read. Highest replica lag the monitor reported between "
        f"rounds: {res.max_lag:.3f} s ({res.lag_samples} samples): the replicas were caught up.",
        "",
        "Read right after the write (baseline: the read on the master):",
        "",
    ]
    rows = [
        _paired_row(
            TITLES[k], res.reads["master"], res.reads[k], READ_TARGET if k == "session" else None
        )
        for k in SIDES[1:]
    ]
    lines += [markdown_table(_PAIRED_HEADERS, rows), ""]
    lines += ["The write (baseline: the write of the consistency=none side):", ""]
    wtitles = {
        "session": "RW_STRICT, consistency=session (GTID from the OK packet)",
        "master": "the same, master side",
        "fallback": "consistency=none + SELECT @@last_gtid (the fallback)",
    }
    rows = [_paired_row(t, res.writes["none"], res.writes[k], None) for k, t in wtitles.items()]
    lines += [markdown_table(_PAIRED_HEADERS, rows), ""]
    lines += ["Write + read, the whole pair (baseline: the master side's pair):", ""]
    rows = [_paired_row(k, res.pairs["master"], res.pairs[k], None) for k in SIDES[1:]]
    lines += [markdown_table(_PAIRED_HEADERS, rows), ""]

    lines += ["Where the reads went, and what they cost in round trips (timed run):", ""]
    rows = []
    for k in SIDES:
        st = res.stats[k]
        on_replicas = sum(v for name, v in st.served.items() if name != out.master)
        reader_cmds = sum(
            v
            for key, v in st.commands.items()
            if key.startswith("reader ") and key != "reader connect"
        )
        if k in ("master", "master2"):
            reader_cmds = st.commands["writer read"]
        rows.append(
            [
                k,
                str(st.reads),
                f"{on_replicas / st.reads:.1%}" if st.reads else "-",
                _served(st.served),
                f"{(st.commands['reader wait'] + st.commands['reader wait+read']) / st.reads:.3f}"
                if st.reads
                else "-",
                _per(st, "reader connect"),
                f"{reader_cmds / st.reads:.3f}" if st.reads else "-",
                str(st.stale),
            ]
        )
    lines += [
        markdown_table(
            [
                "side",
                "reads",
                "served by replicas",
                "where",
                "MASTER_GTID_WAIT per read",
                "moves (reconnects) per read",
                "reader commands per read",
                "reads that missed the write",
            ],
            rows,
        ),
        "",
    ]
    one_trip = res.stats["one-trip"]
    if one_trip.wait_timeouts:
        lines += [f"(prototype: {one_trip.wait_timeouts} waits timed out.)", ""]

    lines += [
        f"Round trips of a write, counted on the master ({plan.audit_writes} autocommit "
        "UPDATEs per variant, one after another, untimed; the master's global counters are "
        "net of the monitor's own queries, measured per monitor round in an idle "
        f"{plan.audit_control_s:g} s window: "
        f"{control['Questions per monitor round']:.2f} questions and "
        f"{control['Com_select per monitor round']:.2f} SELECTs per round):",
        "",
        markdown_table(
            [
                "variant",
                "client commands per write",
                "server Questions per write",
                "server Com_select per write",
                "server Com_update per write",
                "GTIDs captured",
            ],
            [
                [
                    a.variant,
                    f"{a.client_commands_per_write:.3f}",
                    f"{a.questions_per_write:.3f}",
                    f"{a.com_select_per_write:.3f}",
                    f"{a.com_update_per_write:.3f}",
                    f"{a.gtids_captured} of {a.writes}",
                ]
                for a in audit
            ],
        ),
        "",
    ]
    lines += [
        "Where the time of a consistent read goes (one connection, the parts timed "
        f"inside sqlrouter; {brk.notes[0]}):",
        "",
        markdown_table(
            ["part", "median", "share of the mean"],
            [
                ["the write (execute)", format_ns(brk.parts["write"]), "100%"],
                [
                    "  of which capturing the GTID (`_capture`: decode, merge into the token)",
                    format_ns(brk.parts["capture"]),
                    f"{brk.shares['capture']:.0%}",
                ],
                ["the read right after it (execute + fetch)", format_ns(brk.parts["read"]), "100%"],
                [
                    "check at transaction start (`_at_transaction_start`)",
                    format_ns(brk.parts["check"]),
                    f"{brk.shares['check']:.0%}",
                ],
                [
                    "  of which MASTER_GTID_WAIT round trip",
                    format_ns(brk.parts["wait"]),
                    f"{brk.shares['wait']:.0%}",
                ],
                [
                    "  of which moving (reconnect)",
                    format_ns(brk.parts["move"]),
                    f"{brk.shares['move']:.0%}",
                ],
                [
                    "  of which deciding (snapshot, token, choose())",
                    format_ns(brk.parts["decision"]),
                    f"{brk.shares['decision']:.0%}",
                ],
                [
                    "the SELECT itself (PyMySQL query + fetch)",
                    format_ns(brk.parts["query"]),
                    f"{brk.shares['query']:.0%}",
                ],
                [
                    "for comparison: the same SELECT, plain PyMySQL, same replica",
                    format_ns(brk.parts["plain"]),
                    "",
                ],
                [
                    "for comparison: MASTER_GTID_WAIT of a GTID already applied, plain PyMySQL",
                    format_ns(brk.parts["noop_wait"]),
                    "",
                ],
            ],
        ),
        "",
        f"Reproduce: `{COMMAND_LINE} --update-docs` (JSON: `docs/benchmarks/consistency.json`).",
    ]
    return "\n".join(lines)


def _served(served: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(served.items()))


def _load(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _payload(
    out: Outcome, machine: dict[str, str], plan: Plan, when: dt.datetime
) -> dict[str, Any]:
    res, audit, control, brk, load = out.main, out.audit, out.control, out.breakdown, out.load
    return {
        "benchmark": "consistency",
        "format": 1,
        "date": when.isoformat(timespec="seconds"),
        "command": COMMAND_LINE,
        "machine": machine,
        "load_average": load,
        "plan": dataclasses.asdict(plan),
        "note": "cpu_* figures are per write-then-read pair (both parts), for every "
        "comparison of the same side",
        "results": [c.to_json() for c in comparisons(res)],
        "sides": {
            k: {
                "title": TITLES[k],
                "lanes": res.lanes[k],
                "reads": st.reads,
                "stale_reads": st.stale,
                "served": dict(st.served),
                "commands": dict(sorted(st.commands.items())),
                "one_trip_wait_timeouts": st.wait_timeouts,
            }
            for k, st in res.stats.items()
        },
        "replica_max_lag_s": res.max_lag,
        "round_trip_audit": [dataclasses.asdict(a) for a in audit],
        "round_trip_audit_control": control,
        "breakdown": dataclasses.asdict(brk),
    }


# --------------------------------------------------------------------------- main


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_consistency",
        description="Measure what session consistency costs: write-then-read pairs with "
        "consistency=session, consistency=none and reads on the master, interleaved, on a "
        "local sandbox cluster; count the round trips of a write.",
        epilog="Exit status: 0 when the target is met, 1 when it is missed or a "
        "consistent read missed its write, 130 when interrupted (the sandbox is "
        "destroyed in every case).",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"interleaved rounds (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help="where to write the results (default docs/benchmarks/consistency.json)",
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite the consistency section of docs/benchmarks.md",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print a cProfile of the consistency=session write-then-read pair",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="parent directory of the temporary sandbox (default: the system temp dir)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error(f"--rounds must be at least 2 (interleaving), got {args.rounds}")
    return args


def run(args: argparse.Namespace) -> int:
    plan = Plan(rounds=args.rounds)
    started = time.monotonic()
    load = {"start": list(os.getloadavg())}
    profile: str | None = None
    with bench_sandbox(args.dir, "sqlrouter-bench-", _log) as sb:
        fill_table(sb)
        st = sb.state
        parsed = parse_url(sb.url("RW_STRICT"))
        handle = handle_for(
            parsed.registry, parsed.service, Credentials(st.app.user, st.app.password)
        )
        ctx = Context(
            sb=sb,
            handle=handle,
            user=st.app.user,
            password=st.app.password,
            database=st.database,
            master=sb.master.name,
            replicas=[(n.name, n.port) for n in sb.replicas],
        )
        ctx.server_version = str(sb.query(sb.master.name, "SELECT VERSION()")[0][0])
        handle.snapshot()  # the monitor's first round, untimed
        res = measure(ctx, plan)
        _log("round-trip audit")
        audit, control = audit_round_trips(ctx, plan)
        _log("breakdown of a consistent read")
        brk = breakdown(ctx, plan)
        if args.profile:
            _log("profiling")
            profile = profile_session_read(ctx, plan)
        load["end"] = list(os.getloadavg())
        out = Outcome(res, audit, control, brk, load, ctx.master)

    when = dt.datetime.now(dt.UTC)
    machine = machine_info(server=ctx.server_version)
    text = report(out, machine, plan, when)
    print(text)
    if profile is not None:
        print("\n" + profile)
    path = write_json(args.json, _payload(out, machine, plan, when))
    _log(f"results written to {path}")
    if args.update_docs:
        doc = replace_section(DOCS.read_text(encoding="utf-8"), SECTION, text)
        DOCS.write_text(doc, encoding="utf-8")
        _log(f"updated {DOCS}")
    _log(f"done in {time.monotonic() - started:.0f}s")
    met = Comparison(
        key="read_session",
        title="",
        baseline=res.reads["master"],
        candidate=res.reads["session"],
        target=READ_TARGET,
    ).met
    consistent = res.stats["session"].stale == 0 and res.stats["fallback"].stale == 0
    if not consistent:
        _log("ERROR: a consistency=session read did not see the write before it")
    return 0 if met and consistent else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    with interrupt_on_sigterm():
        try:
            return run(args)
        except KeyboardInterrupt:
            _log("interrupted; the sandbox was destroyed")
            return 130


if __name__ == "__main__":
    sys.exit(main())
