"""sqlrouter against the proxy way: the same cluster, the same queries, through HAProxy.

Run from the repository root (``./scripts/bench`` installs haproxy and matplotlib when
they are missing, then runs this)::

    .venv/bin/python -m benchmarks.bench_haproxy [--update-docs] [--profile] [--quick]

It starts its own sandbox (1 master + 2 replicas) and a private HAProxy in TCP mode on
loopback (``benchmarks/_haproxy.py``: a writer frontend on the master, a reader
frontend balancing the replicas, health-checked on ``read_only`` and replication lag
by an agent), then measures, each workload's sides interleaved so that machine noise
falls on all of them alike (see ``benchmarks/_common.py``):

- W1: ``SELECT 1`` and a primary-key lookup on open autocommit connections, one thread:
  raw PyMySQL to the replica (and again, as an A/A control), sqlrouter ``RO_RELAXED``,
  PyMySQL through HAProxy's reader frontend; raw PyMySQL to the master, sqlrouter
  ``RW_STRICT``, PyMySQL through HAProxy's writer frontend.
- W2: a transaction: ``BEGIN``, 10 point selects, ``COMMIT``, on the same routes.
- W3: a write on the master, then a read of it: sqlrouter with ``consistency=session``,
  ``consistency=none``, reading on the master, raw PyMySQL, and HAProxy; how often the
  read misses the write.
- W4: 90 % reads / 10 % writes with 1, 4 and 16 threads: throughput, latency, the
  share of reads that replicas served.
- W5: how long a replica that lags (``MASTER_DELAY``, a stopped IO thread) keeps
  receiving new connections, and how long it takes to get them back once it caught up,
  for sqlrouter's monitor and for HAProxy's checks, on the same faults.
- W6: ``connect()``: ``sqlrouter.connect`` vs ``pymysql.connect`` (and through HAProxy).
- W7: W4's sqlrouter side with its control socket polled (``status``) at 10 Hz by
  another process: the effect on latency and throughput.

It prints a Markdown report, writes ``docs/benchmarks/haproxy.json`` and three PNG
plots next to it, and with ``--update-docs`` rewrites the ``haproxy`` section of
``docs/benchmarks.md``.  ``--profile`` adds where sqlrouter's time goes on the per-query
and connect paths.  The exit status is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import gc
import itertools
import json
import math
import os
import random
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TypeVar

import pymysql
import pymysql.connections
import pymysql.cursors

import sqlrouter
from sqlrouter import control
from sqlrouter._runtime import handle_for
from sqlrouter.control import ControlError, request
from sqlrouter.qos import QoS
from sqlrouter.routing.router import Policy, choose
from sqlrouter.routing.service import ServiceHandle
from sqlrouter.sandbox import Sandbox
from sqlrouter.topology import Credentials
from sqlrouter.url import parse_url

from ._common import (
    BlockFn,
    Comparison,
    Interleaved,
    SideResult,
    format_ns,
    format_ratio,
    gc_paused,
    interrupt_on_sigterm,
    machine_info,
    markdown_table,
    median,
    profile_calls,
    quantile,
    replace_section,
    switch_order,
    write_json,
)
from ._haproxy import CHECK_USER, HAProxy, Server
from .bench_routing import POINT_SELECT, ROWS, connect_block, fill_table

ROOT: Final = Path(__file__).resolve().parent.parent
DOCS: Final = ROOT / "docs" / "benchmarks.md"
DEFAULT_OUT: Final = ROOT / "docs" / "benchmarks"
SECTION: Final = "haproxy"
PROFILE_SECTION: Final = "haproxy-profile"
COMMAND: Final = "./scripts/bench"
JSON_NAME: Final = "haproxy.json"
PLOTS: Final = {
    "latency": "haproxy-latency.png",
    "throughput": "haproxy-throughput.png",
    "lag": "haproxy-lag.png",
}

SELECT_ONE: Final = "SELECT 1"
W3_TABLE: Final = "bench_w3"
W4_WRITE: Final = "UPDATE bench_point SET k = k + 1 WHERE id = %s"

#: Targets (issue 9).
W1_P50_TARGET: Final = 1.02
W1_P99_TARGET: Final = 1.05
ADDED_VS_PROXY_TARGET: Final = 0.10
W4_THROUGHPUT_TARGET: Final = 0.97
W6_CONNECT_TARGET: Final = 1.10

DEFAULT_ROUNDS: Final = 120

if TYPE_CHECKING:
    AnyConnection = pymysql.connections.Connection[Any]
else:  # generic in the type stubs only
    AnyConnection = pymysql.connections.Connection
_Conn = TypeVar("_Conn", bound=AnyConnection)


@dataclass(frozen=True, slots=True)
class Plan:
    """How much each workload runs.  The defaults take 3 to 5 minutes on 2 cores."""

    rounds: int = DEFAULT_ROUNDS
    query_block: int = 20
    query_alternations: int = 5
    query_connections: int = 3
    query_warmup: int = 500
    tx_block: int = 3
    tx_alternations: int = 3
    tx_warmup: int = 40
    connect_block: int = 5
    connect_alternations: int = 3
    connect_warmup: int = 60
    w3_rounds: int = 60
    w3_block: int = 10
    w3_alternations: int = 2
    w3_warmup: int = 20
    w4_threads: tuple[int, ...] = (1, 4, 16)
    #: Seconds each side runs at each thread count, in ``w4_slices`` interleaved slices.
    w4_seconds: float = 5.0
    w4_slices: int = 10
    w4_write_share: float = 0.1
    w4_warmup_ops: int = 50
    w7_hz: float = 10.0
    w5_trials: int = 3
    #: MASTER_DELAY of the delay fault (seconds): well above max_lag.
    w5_delay: int = 4
    w5_poll: float = 0.01
    w5_timeout: float = 15.0
    profile_calls: int = 500

    @classmethod
    def quick(cls) -> Plan:
        """A smoke run (about a minute): every workload, few samples."""
        return cls(
            rounds=8,
            query_warmup=100,
            tx_warmup=10,
            connect_warmup=10,
            w3_rounds=6,
            w4_seconds=1.0,
            w4_slices=2,
            w5_trials=1,
            profile_calls=100,
        )


def _log(message: str) -> None:
    print(f"[bench_haproxy] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment


@dataclass(slots=True)
class Env:
    """The cluster, the proxy, and how each side reaches them."""

    sb: Sandbox
    proxy: HAProxy
    user: str
    password: str
    database: str
    master: Server
    replicas: list[Server]
    max_lag: float
    server_version: str = ""

    def url(self, qos: str) -> str:
        return self.sb.url(qos)

    def name_of_port(self, port: int) -> str:
        for s in (self.master, *self.replicas):
            if s.port == port:
                return s.name
        return f"port {port}"

    def raw(self, server: Server, **kwargs: Any) -> AnyConnection:
        return self.raw_port(server.port, **kwargs)

    def raw_port(self, port: int, **kwargs: Any) -> AnyConnection:
        return pymysql.connect(
            host="127.0.0.1",
            port=port,
            user=self.user,
            password=self.password,
            database=self.database,
            **{"autocommit": True, **kwargs},
        )

    def landed(self, conn: AnyConnection) -> str:
        """The server a connection reached (asked: the proxy does not say)."""
        ds = getattr(conn, "datasource", None)
        if ds is not None:
            return str(ds.name)
        with conn.cursor() as cur:
            cur.execute("SELECT @@port")
            row = cur.fetchone()
        return self.name_of_port(int(row[0])) if row else "?"


def on_server(
    open_: Callable[[], _Conn], want: str, count: int, landed: Callable[[Any], str]
) -> list[_Conn]:
    """``count`` connections from ``open_`` that reached ``want`` (others are closed).

    Round-robin balancers (sqlrouter's and HAProxy's) spread new connections; the
    per-query comparisons need every side on the same server.
    """
    kept: list[_Conn] = []
    for _ in range(count * 10):
        conn = open_()
        if landed(conn) == want:
            kept.append(conn)
            if len(kept) == count:
                return kept
        else:
            conn.close()
    for conn in kept:
        conn.close()
    raise RuntimeError(f"could not open {count} connections on {want}")


class ProxyCPU:
    """HAProxy's CPU time spent during each side's blocks (it runs in its own process).

    Every side of a workload is wrapped, so that the cost of reading the counters
    (a few µs per block, outside the per-operation timings) falls on all alike, and
    the sides that do not use the proxy show its background cost (health checks).
    """

    def __init__(self, proxy: HAProxy) -> None:
        self._read = proxy.cpu_ns
        self.ns: Counter[str] = Counter()

    def wrap(self, key: str, fn: BlockFn) -> BlockFn:
        read = self._read
        ns = self.ns

        def run(n: int) -> list[int]:
            c0 = read()
            out = fn(n)
            ns[key] += read() - c0
            return out

        return run


# --------------------------------------------------------------------------- block functions


def _ids(seed: int) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.randint(1, ROWS)


def statement_block(
    conns: Sequence[AnyConnection],
    sql: str,
    *,
    seed: int = 7,
) -> BlockFn:
    """One statement per operation (``execute`` + ``fetchall``), each block on the next
    connection in turn; a ``%s`` in ``sql`` gets the next id of a seeded sequence."""
    cursors = itertools.cycle([conn.cursor() for conn in conns])
    ids = _ids(seed)
    clock = time.perf_counter_ns
    with_arg = "%s" in sql

    def run(n: int) -> list[int]:
        cur = next(cursors)
        out = [0] * n
        for i in range(n):
            args = (next(ids),) if with_arg else None
            t0 = clock()
            cur.execute(sql, args)
            cur.fetchall()
            out[i] = clock() - t0
        return out

    return run


def transaction_block(conns: Sequence[AnyConnection], *, seed: int = 11) -> BlockFn:
    """``BEGIN``, 10 point selects, ``COMMIT`` per operation."""
    pairs = itertools.cycle([(conn, conn.cursor()) for conn in conns])
    ids = _ids(seed)
    clock = time.perf_counter_ns

    def run(n: int) -> list[int]:
        conn, cur = next(pairs)
        out = [0] * n
        for i in range(n):
            keys = [next(ids) for _ in range(10)]
            t0 = clock()
            conn.begin()
            for key in keys:
                cur.execute(POINT_SELECT, (key,))
                cur.fetchall()
            conn.commit()
            out[i] = clock() - t0
        return out

    return run


# --------------------------------------------------------------------------- W1, W2, W6


@dataclass(frozen=True, slots=True)
class Route:
    key: str
    label: str
    #: The raw side it is compared with (None: it is a baseline).
    baseline: str | None
    #: The comparison has a target (sqlrouter's routes).
    judged: bool = False
    #: The proxy route of the same family (for the added-latency target).
    proxy: str | None = None


READ_ROUTES: Final = (
    Route("raw_replica", "raw PyMySQL -> replica", None),
    Route("raw_replica_aa", "A/A: raw -> replica, other conns", "raw_replica"),
    Route(
        "sqlrouter_ro", "sqlrouter RO_RELAXED", "raw_replica", judged=True, proxy="haproxy_reader"
    ),
    Route("haproxy_reader", "PyMySQL via HAProxy reader", "raw_replica"),
)
WRITE_ROUTES: Final = (
    Route("raw_master", "raw PyMySQL -> master", None),
    Route("sqlrouter_rw", "sqlrouter RW_STRICT", "raw_master", judged=True, proxy="haproxy_writer"),
    Route("haproxy_writer", "PyMySQL via HAProxy writer", "raw_master"),
)
W1_ROUTES: Final = READ_ROUTES + WRITE_ROUTES
W2_ROUTES: Final = tuple(r for r in W1_ROUTES if r.key != "raw_replica_aa")
W6_ROUTES: Final = (
    Route("raw", "pymysql.connect -> replica", None),
    Route("sqlrouter", "sqlrouter.connect RO_RELAXED", "raw", judged=True),
    Route("haproxy", "pymysql.connect -> HAProxy reader", "raw"),
)


@dataclass(slots=True)
class Workload:
    """One interleaved workload: its sides, how they compare, what to close after."""

    key: str
    title: str
    routes: tuple[Route, ...]
    bench: Interleaved
    cpu: ProxyCPU
    extra: dict[str, Any] = field(default_factory=dict)
    _p99_ci: dict[str, tuple[float, float]] = field(default_factory=dict)

    def comparisons(self) -> dict[str, Comparison]:
        res = self.bench.results
        out = {}
        for r in self.routes:
            if r.baseline is not None:
                out[r.key] = Comparison(
                    key=f"{self.key}.{r.key}",
                    title=f"{self.title}: {r.label}",
                    baseline=res[r.baseline],
                    candidate=res[r.key],
                )
        return out

    def p99_ci(self, route: str) -> tuple[float, float]:
        """95 % interval of ``route``'s p99 ratio to its baseline (block bootstrap)."""
        if route not in self._p99_ci:
            c = self.comparisons()[route]
            self._p99_ci[route] = p99_ratio_ci(c.baseline, c.candidate)
        return self._p99_ci[route]


def p99_ratio_ci(
    baseline: SideResult, candidate: SideResult, *, resamples: int = 200, seed: int = 1
) -> tuple[float, float]:
    """A 95 % interval of ``p99(candidate) / p99(baseline)``.

    Bootstrap over switches: block ``i`` of both sides ran next to each other, so a
    resample draws switches (pairs of blocks) with replacement, keeping the pairing,
    and the interval is the 2.5th to 97.5th percentile of the resampled ratios.  The
    p99 of a busy machine is made of rare hiccups, and this says how much of a
    difference in p99s they alone can make.
    """
    pairs = list(zip(baseline.blocks, candidate.blocks, strict=True))
    if not pairs:
        raise ValueError("p99 interval of no blocks: expected at least one switch")
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        base: list[int] = []
        cand: list[int] = []
        for _ in pairs:
            b, c = pairs[rng.randrange(len(pairs))]
            base.extend(b)
            cand.extend(c)
        ratios.append(quantile(cand, 0.99) / quantile(base, 0.99))
    return quantile(ratios, 0.025), quantile(ratios, 0.975)


@dataclass(slots=True)
class OpenConnections:
    """The connections of W1 and W2, every side on the same server of its family."""

    by_route: dict[str, list[AnyConnection]]
    replica: str

    def close(self) -> None:
        for conns in self.by_route.values():
            for conn in conns:
                with contextlib.suppress(Exception):
                    conn.close()


def open_routes(env: Env, count: int) -> OpenConnections:
    """``count`` connections per W1 route: replica routes on the replica the first
    sqlrouter RO_RELAXED connection landed on, master routes on the master."""
    ro_url, rw_url = env.url("RO_RELAXED"), env.url("RW_STRICT")
    first = sqlrouter.connect(ro_url, autocommit=True)
    assert first.datasource is not None
    replica_name = first.datasource.name
    first.close()
    replica = next(s for s in env.replicas if s.name == replica_name)
    landed = env.landed
    by_route: dict[str, list[AnyConnection]] = {}
    try:
        by_route["raw_replica"] = [env.raw(replica) for _ in range(count)]
        by_route["raw_replica_aa"] = [env.raw(replica) for _ in range(count)]
        by_route["sqlrouter_ro"] = on_server(
            lambda: sqlrouter.connect(ro_url, autocommit=True), replica.name, count, landed
        )
        by_route["haproxy_reader"] = on_server(
            lambda: env.raw_port(env.proxy.reader_port), replica.name, count, landed
        )
        by_route["raw_master"] = [env.raw(env.master) for _ in range(count)]
        by_route["sqlrouter_rw"] = [
            sqlrouter.connect(rw_url, autocommit=True) for _ in range(count)
        ]
        by_route["haproxy_writer"] = on_server(
            lambda: env.raw_port(env.proxy.writer_port), env.master.name, count, landed
        )
    except BaseException:
        OpenConnections(by_route, replica.name).close()
        raise
    opened = OpenConnections(by_route, replica.name)
    # Every connection must read the same row, from the server its family expects.
    rows = []
    for key, conns in by_route.items():
        want = replica.name if key in {r.key for r in READ_ROUTES} else env.master.name
        for conn in conns:
            where = landed(conn)
            if where != want:
                opened.close()
                raise RuntimeError(f"a {key} connection reached {where}, not {want}")
            with conn.cursor() as cur:
                cur.execute(POINT_SELECT, (42,))
                rows.append(cur.fetchall())
    if any(r != rows[0] for r in rows):
        opened.close()
        raise RuntimeError("the connections of the W1 routes read different rows")
    with by_route["raw_replica"][0].cursor() as cur:
        cur.execute("SELECT VERSION()")
        version = cur.fetchone()
    env.server_version = str(version[0]) if version else "?"
    return opened


def w1_workload(
    env: Env, plan: Plan, conns: OpenConnections, *, sql: str, key: str, title: str
) -> Workload:
    cpu = ProxyCPU(env.proxy)
    sides = {r.key: cpu.wrap(r.key, statement_block(conns.by_route[r.key], sql)) for r in W1_ROUTES}
    bench = Interleaved(sides, block=plan.query_block, alternations=plan.query_alternations)
    bench.warmup(plan.query_warmup)
    cpu.ns.clear()
    return Workload(key, title, W1_ROUTES, bench, cpu, extra={"sql": sql, "replica": conns.replica})


def w2_workload(env: Env, plan: Plan, conns: OpenConnections) -> Workload:
    cpu = ProxyCPU(env.proxy)
    sides = {r.key: cpu.wrap(r.key, transaction_block(conns.by_route[r.key])) for r in W2_ROUTES}
    bench = Interleaved(sides, block=plan.tx_block, alternations=plan.tx_alternations)
    bench.warmup(plan.tx_warmup)
    cpu.ns.clear()
    return Workload(
        "w2",
        "W2 transaction",
        W2_ROUTES,
        bench,
        cpu,
        extra={"transaction": "BEGIN; 10 x point select; COMMIT", "replica": conns.replica},
    )


def w6_workload(env: Env, plan: Plan) -> Workload:
    """connect(): the same replicas in the same proportions on every side, TLS off."""
    kwargs: dict[str, Any] = {"ssl_disabled": True}
    ro_url = env.url("RO_RELAXED")
    targets = itertools.cycle(env.replicas)
    landed: dict[str, Counter[str]] = {r.key: Counter() for r in W6_ROUTES}

    def raw_open() -> AnyConnection:
        target = next(targets)
        landed["raw"][target.name] += 1
        return env.raw(target, **kwargs)

    def routed_open() -> AnyConnection:
        return sqlrouter.connect(ro_url, autocommit=True, **kwargs)

    def proxy_open() -> AnyConnection:
        return env.raw_port(env.proxy.reader_port, **kwargs)

    def count(key: str) -> Callable[[AnyConnection], None]:
        def after(conn: AnyConnection) -> None:
            if key == "sqlrouter":
                landed[key][env.landed(conn)] += 1

        return after

    cpu = ProxyCPU(env.proxy)
    sides = {
        "raw": cpu.wrap("raw", connect_block(raw_open)),
        "sqlrouter": cpu.wrap("sqlrouter", connect_block(routed_open, count("sqlrouter"))),
        "haproxy": cpu.wrap("haproxy", connect_block(proxy_open)),
    }
    bench = Interleaved(sides, block=plan.connect_block, alternations=plan.connect_alternations)
    bench.warmup(plan.connect_warmup)
    cpu.ns.clear()
    for c in landed.values():
        c.clear()
    return Workload(
        "w6",
        "W6 connect()",
        W6_ROUTES,
        bench,
        cpu,
        extra={
            "kwargs": kwargs,
            "landed": landed,
            "timed": "connect() only; close() is untimed (its CPU counts in CPU/op)",
        },
    )


def run_rounds(benches: Sequence[Interleaved], rounds: int, label: str) -> None:
    """``rounds`` rounds of every benchmark, in alternating order, GC paused."""
    started = time.monotonic()
    with gc_paused():
        for r in range(rounds):
            for b in benches if r % 2 == 0 else benches[::-1]:
                b.run_round()
            gc.collect()
            if (r + 1) % max(1, rounds // 6) == 0 or r + 1 == rounds:
                _log(f"{label}: round {r + 1}/{rounds} ({time.monotonic() - started:.0f}s)")


# --------------------------------------------------------------------------- W3


@dataclass(slots=True)
class W3Side:
    """Write a row on the master, then read it back: how long, and was it there."""

    key: str
    label: str
    row: int
    write_conn: AnyConnection
    read_conn: AnyConnection
    where: Callable[[], str]
    closers: list[AnyConnection]
    counter: int = 0
    stale: int = 0
    reads_on: Counter[str] = field(default_factory=Counter)
    write_ns: list[int] = field(default_factory=list)
    read_ns: list[int] = field(default_factory=list)

    def block(self) -> BlockFn:
        wcur = self.write_conn.cursor()
        rcur = self.read_conn.cursor()
        clock = time.perf_counter_ns
        update = f"UPDATE {W3_TABLE} SET v = %s WHERE id = %s"
        select = f"SELECT v FROM {W3_TABLE} WHERE id = %s"

        def run(n: int) -> list[int]:
            out = [0] * n
            for i in range(n):
                self.counter += 1
                value = self.counter
                t0 = clock()
                wcur.execute(update, (value, self.row))
                t1 = clock()
                rcur.execute(select, (self.row,))
                row = rcur.fetchone()
                t2 = clock()
                out[i] = t2 - t0
                self.write_ns.append(t1 - t0)
                self.read_ns.append(t2 - t1)
                if row is None or row[0] != value:
                    self.stale += 1
                self.reads_on[self.where()] += 1
            return out

        return run

    def reset(self) -> None:
        self.stale = 0
        self.reads_on.clear()
        self.write_ns.clear()
        self.read_ns.clear()

    def close(self) -> None:
        for conn in self.closers:
            with contextlib.suppress(Exception):
                conn.close()


def w3_sides(env: Env) -> list[W3Side]:
    sb, db = env.sb, env.database
    with sb.cursor(env.master.name, timeout=30) as cur:
        cur.execute(f"DROP TABLE IF EXISTS {db}.{W3_TABLE}")
        cur.execute(f"CREATE TABLE {db}.{W3_TABLE} (id INT PRIMARY KEY, v BIGINT NOT NULL)")
        cur.executemany(f"INSERT INTO {db}.{W3_TABLE} VALUES (%s, 0)", [(i,) for i in range(1, 6)])
    for replica in env.replicas:
        sb.wait_caught_up(replica.name, timeout=30)
    rw_url, ro_url = env.url("RW_STRICT"), env.url("RO_RELAXED")
    with sqlrouter.session():
        s_rw = sqlrouter.connect(rw_url, autocommit=True)
        s_ro = sqlrouter.connect(ro_url, autocommit=True)
    replica_name = env.landed(s_ro)
    replica = next(s for s in env.replicas if s.name == replica_name)
    n_rw = sqlrouter.connect(rw_url, autocommit=True, consistency="none")
    n_ro = on_server(
        lambda: sqlrouter.connect(ro_url, autocommit=True, consistency="none"),
        replica.name,
        1,
        env.landed,
    )[0]
    m_rw = sqlrouter.connect(rw_url, autocommit=True)
    r_w, r_r = env.raw(env.master), env.raw(replica)
    h_w = env.raw_port(env.proxy.writer_port)
    h_r = on_server(lambda: env.raw_port(env.proxy.reader_port), replica.name, 1, env.landed)[0]

    def fixed(name: str) -> Callable[[], str]:
        return lambda: name

    def routed(conn: AnyConnection) -> Callable[[], str]:
        def where() -> str:
            ds = getattr(conn, "datasource", None)
            return ds.name if ds is not None else "?"

        return where

    return [
        W3Side(
            "raw", "raw PyMySQL: master, then replica", 1, r_w, r_r, fixed(replica.name), [r_w, r_r]
        ),
        W3Side(
            "haproxy",
            "HAProxy: writer, then reader",
            2,
            h_w,
            h_r,
            fixed(replica.name),
            [h_w, h_r],
        ),
        W3Side(
            "session",
            "sqlrouter consistency=session",
            3,
            s_rw,
            s_ro,
            routed(s_ro),
            [s_rw, s_ro],
        ),
        W3Side("none", "sqlrouter consistency=none", 4, n_rw, n_ro, routed(n_ro), [n_rw, n_ro]),
        W3Side(
            "master",
            "sqlrouter, read on the master (RW_STRICT)",
            5,
            m_rw,
            m_rw,
            routed(m_rw),
            [m_rw],
        ),
    ]


def run_w3(env: Env, plan: Plan) -> tuple[list[W3Side], Interleaved]:
    sides = w3_sides(env)
    try:
        bench = Interleaved(
            {s.key: s.block() for s in sides},
            block=plan.w3_block,
            alternations=plan.w3_alternations,
        )
        bench.warmup(plan.w3_warmup)
        for s in sides:
            s.reset()
        run_rounds([bench], plan.w3_rounds, "W3")
    finally:
        for s in sides:
            s.close()
    return sides, bench


# --------------------------------------------------------------------------- W4 and W7


@dataclass(slots=True)
class Client:
    """One thread's connections: where it reads, where it writes."""

    read: AnyConnection
    write: AnyConnection
    where: Callable[[], str]

    def close(self) -> None:
        for conn in {id(self.read): self.read, id(self.write): self.write}.values():
            with contextlib.suppress(Exception):
                conn.close()


@dataclass(slots=True)
class W4Point:
    """One side at one thread count, over all its slices."""

    ops: int = 0
    reads: int = 0
    reads_on_replica: int = 0
    wall_ns: int = 0
    cpu_ns: int = 0
    proxy_cpu_ns: int = 0
    latencies: list[int] = field(default_factory=list)
    slice_throughput: list[float] = field(default_factory=list)
    polls: int = 0
    poll_errors: int = 0
    poll_ns: list[int] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.ops / (self.wall_ns / 1e9) if self.wall_ns else 0.0


@dataclass(frozen=True, slots=True)
class W4Side:
    key: str
    label: str
    open_client: Callable[[int], Client]
    polled: bool = False


@dataclass(slots=True)
class _Worker:
    ops: int = 0
    reads: int = 0
    on_replica: int = 0
    latencies: list[int] = field(default_factory=list)
    error: BaseException | None = None


def _w4_thread(
    *,
    client: Client,
    seed: int,
    write_share: float,
    master: str,
    barrier: threading.Barrier,
    duration_ns: int,
    out: _Worker,
) -> None:
    rng = random.Random(seed)
    rcur, wcur = client.read.cursor(), client.write.cursor()
    where = client.where
    clock = time.perf_counter_ns
    lat = out.latencies
    try:
        barrier.wait(timeout=30)
        end = clock() + duration_ns
        while True:
            t0 = clock()
            if t0 >= end:
                break
            key = rng.randint(1, ROWS)
            if rng.random() < write_share:
                wcur.execute(W4_WRITE, (key,))
                lat.append(clock() - t0)
            else:
                rcur.execute(POINT_SELECT, (key,))
                rcur.fetchall()
                lat.append(clock() - t0)
                out.reads += 1
                if where() != master:
                    out.on_replica += 1
            out.ops += 1
    except Exception as exc:  # noqa: BLE001 - re-raised by the main thread (run_slice)
        out.error = exc
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.abort()


def run_slice(
    clients: Sequence[Client],
    *,
    seed: int,
    seconds: float,
    write_share: float,
    master: str,
) -> tuple[list[_Worker], int, int]:
    """Every client in its own thread for ``seconds``; (workers, wall ns, CPU ns)."""
    barrier = threading.Barrier(len(clients) + 1)
    workers = [_Worker() for _ in clients]
    threads = [
        threading.Thread(
            target=_w4_thread,
            kwargs={
                "client": c,
                "seed": seed * 1000 + i,
                "write_share": write_share,
                "master": master,
                "barrier": barrier,
                "duration_ns": int(seconds * 1e9),
                "out": w,
            },
            name=f"bench-w4-{i}",
        )
        for i, (c, w) in enumerate(zip(clients, workers, strict=True))
    ]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a worker failed: see below
        barrier.wait(timeout=30)
    t0, c0 = time.perf_counter_ns(), time.process_time_ns()
    for t in threads:
        t.join(seconds + 60)
    wall, cpu = time.perf_counter_ns() - t0, time.process_time_ns() - c0
    for w in workers:
        if w.error is not None:
            raise RuntimeError(f"a W4 thread failed: {w.error!r}") from w.error
    return workers, wall, cpu


class ControlPoller:
    """Another process asking this process's control socket ``status`` at ``hz``.

    Polls only between :meth:`on` and :meth:`off` (so that only the W7 side's slices
    share the process with it); :meth:`off` returns what it did.
    """

    def __init__(self, socket_path: Path, hz: float) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("SQLROUTER_CONTROL", None)
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_haproxy",
                "--poll-control",
                str(socket_path),
                "--poll-hz",
                str(hz),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self._ask("ready")

    def _ask(self, cmd: str) -> str:
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(cmd + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the control poller exited (code {proc.poll()})")
        return line.strip()

    def on(self) -> None:
        self._ask("on")

    def off(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._ask("off"))
        return result

    def close(self) -> None:
        proc = self._proc
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def poll_control(path: str, hz: float, stdin: IO[str], stdout: IO[str]) -> int:
    """The poller process: commands ``ready``/``on``/``off`` on stdin, one answer each."""
    period = 1.0 / hz
    active = False
    polls = errors = 0
    latencies: list[int] = []
    next_at = time.monotonic()
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ)
    try:
        while True:
            timeout = max(0.0, next_at - time.monotonic()) if active else None
            if sel.select(timeout):
                line = stdin.readline()
                if not line:
                    return 0
                cmd = line.strip()
                if cmd == "on":
                    active, polls, errors, latencies = True, 0, 0, []
                    next_at = time.monotonic()
                    print("on", file=stdout, flush=True)
                elif cmd == "off":
                    active = False
                    answer = {"polls": polls, "errors": errors, "latencies_ns": latencies}
                    print(json.dumps(answer), file=stdout, flush=True)
                else:
                    print(cmd, file=stdout, flush=True)
                continue
            if active and time.monotonic() >= next_at:
                t0 = time.perf_counter_ns()
                try:
                    ok = request(path, {"cmd": "status"}, timeout=2.0).get("ok") is True
                except ControlError:
                    ok = False
                latencies.append(time.perf_counter_ns() - t0)
                polls += 1
                errors += not ok
                next_at += period
    finally:
        sel.close()


def w4_sides(env: Env, with_w7: bool) -> list[W4Side]:
    """The W4 sides.  Client ``i`` of every side starts reading on the same replica
    (``replicas[i % 2]``), so that the sides differ only by how they route."""
    rw_url, ro_url = env.url("RW_STRICT"), env.url("RO_RELAXED")

    def replica_of(i: int) -> str:
        return env.replicas[i % len(env.replicas)].name

    def raw(i: int) -> Client:
        replica = env.replicas[i % len(env.replicas)]
        return Client(env.raw(replica), env.raw(env.master), lambda: replica.name)

    def routed(consistency: str) -> Callable[[int], Client]:
        def open_(i: int) -> Client:
            with sqlrouter.session():
                ro = on_server(
                    lambda: sqlrouter.connect(ro_url, autocommit=True, consistency=consistency),
                    replica_of(i),
                    1,
                    env.landed,
                )[0]
                rw = sqlrouter.connect(rw_url, autocommit=True, consistency=consistency)

            def where() -> str:
                ds = ro.datasource
                return ds.name if ds is not None else "?"

            return Client(ro, rw, where)

        return open_

    def proxied(i: int) -> Client:
        name = replica_of(i)
        read = on_server(lambda: env.raw_port(env.proxy.reader_port), name, 1, env.landed)[0]
        return Client(read, env.raw_port(env.proxy.writer_port), lambda: name)

    sides = [
        W4Side("raw", "raw PyMySQL (reads: replica, writes: master)", raw),
        W4Side("sqlrouter_none", "sqlrouter consistency=none", routed("none")),
        W4Side("sqlrouter_session", "sqlrouter consistency=session", routed("session")),
        W4Side("haproxy", "PyMySQL via HAProxy reader + writer", proxied),
    ]
    if with_w7:
        sides.append(
            W4Side(
                "sqlrouter_polled",
                "sqlrouter consistency=session, control socket polled",
                routed("session"),
                polled=True,
            )
        )
    return sides


def run_w4(
    env: Env, plan: Plan, poller: ControlPoller | None
) -> tuple[list[W4Side], dict[int, dict[str, W4Point]]]:
    sides = w4_sides(env, with_w7=poller is not None)
    results: dict[int, dict[str, W4Point]] = {}
    master = env.master.name
    slice_seconds = plan.w4_seconds / plan.w4_slices
    for threads in plan.w4_threads:
        clients = {s.key: [s.open_client(i) for i in range(threads)] for s in sides}
        points = {s.key: W4Point() for s in sides}
        try:
            for s in sides:  # warm-up, untimed
                run_slice(
                    clients[s.key],
                    seed=999,
                    seconds=0.2,
                    write_share=plan.w4_write_share,
                    master=master,
                )
            started = time.monotonic()
            previous: list[str] = []
            with gc_paused():
                for sl in range(plan.w4_slices):
                    order = switch_order([s.key for s in sides], sl, previous)
                    previous = order
                    for key in order:
                        side = next(s for s in sides if s.key == key)
                        if side.polled and poller is not None:
                            poller.on()
                        p0 = env.proxy.cpu_ns()
                        workers, wall, cpu = run_slice(
                            clients[key],
                            seed=sl,
                            seconds=slice_seconds,
                            write_share=plan.w4_write_share,
                            master=master,
                        )
                        proxy_cpu = env.proxy.cpu_ns() - p0
                        point = points[key]
                        if side.polled and poller is not None:
                            done = poller.off()
                            point.polls += int(done["polls"])
                            point.poll_errors += int(done["errors"])
                            point.poll_ns.extend(int(x) for x in done["latencies_ns"])
                        ops = sum(w.ops for w in workers)
                        point.ops += ops
                        point.reads += sum(w.reads for w in workers)
                        point.reads_on_replica += sum(w.on_replica for w in workers)
                        point.wall_ns += wall
                        point.cpu_ns += cpu
                        point.proxy_cpu_ns += proxy_cpu
                        point.slice_throughput.append(ops / (wall / 1e9))
                        for w in workers:
                            point.latencies.extend(w.latencies)
                    gc.collect()
            _log(
                f"W4 {threads} thread(s): "
                + ", ".join(f"{k} {p.throughput:.0f}/s" for k, p in points.items())
                + f" ({time.monotonic() - started:.0f}s)"
            )
        finally:
            for cs in clients.values():
                for c in cs:
                    c.close()
        results[threads] = points
    return sides, results


# --------------------------------------------------------------------------- W5


@dataclass(slots=True)
class LagTrial:
    fault: str
    replica: str
    #: monotonic() just before the fault was injected, and when the command returned.
    fault_at: float
    fault_done: float
    #: When each side stopped giving the replica new connections (None: never).
    sqlrouter_out: float | None = None
    haproxy_out: float | None = None
    #: monotonic() when the resume command returned, and when the replica caught up.
    resumed_at: float = 0.0
    caught_up_at: float = 0.0
    sqlrouter_back: float | None = None
    haproxy_back: float | None = None
    #: New connections opened right after both excluded it, per side: where they went.
    landed_sqlrouter: dict[str, int] = field(default_factory=dict)
    landed_haproxy: dict[str, int] = field(default_factory=dict)

    def since_fault(self, at: float | None) -> float | None:
        return None if at is None else at - self.fault_at

    def since_crossing(self, at: float | None, max_lag: float) -> float | None:
        return None if at is None else at - (self.fault_at + max_lag)

    def since_caught_up(self, at: float | None) -> float | None:
        return None if at is None else at - self.caught_up_at

    def to_json(self, max_lag: float) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "replica": self.replica,
            "fault_command_s": self.fault_done - self.fault_at,
            "sqlrouter_excluded_after_fault_s": self.since_fault(self.sqlrouter_out),
            "haproxy_excluded_after_fault_s": self.since_fault(self.haproxy_out),
            "sqlrouter_excluded_after_crossing_s": self.since_crossing(self.sqlrouter_out, max_lag),
            "haproxy_excluded_after_crossing_s": self.since_crossing(self.haproxy_out, max_lag),
            "catch_up_s": self.caught_up_at - self.resumed_at,
            "sqlrouter_back_after_caught_up_s": self.since_caught_up(self.sqlrouter_back),
            "haproxy_back_after_caught_up_s": self.since_caught_up(self.haproxy_back),
            "landed_sqlrouter_after_exclusion": self.landed_sqlrouter,
            "landed_haproxy_after_exclusion": self.landed_haproxy,
        }


def sqlrouter_readers(handle: ServiceHandle) -> set[str]:
    """The datasources new RO_RELAXED connections go to now (the router, asked over
    enough turns to see every qualifying replica)."""
    snap = handle.monitor.snapshot
    policy = Policy(qos=QoS.RO_RELAXED, max_lag=snap.service.max_lag)
    names: set[str] = set()
    for turn in range(2 * len(snap.service.datasources)):
        try:
            decision = choose(snap, policy, turn=turn)
        except sqlrouter.RoutingError:
            return set()
        if decision.is_fallback:
            return {decision.datasource.name}
        names.add(decision.datasource.name)
    return names


def run_w5(env: Env, plan: Plan) -> list[LagTrial]:
    ro_url = env.url("RO_RELAXED")
    parsed = parse_url(ro_url)
    handle = handle_for(
        parsed.registry, parsed.service, Credentials(parsed.user or "", parsed.password or "")
    )
    sqlrouter.connect(ro_url).close()  # the monitor runs
    trials: list[LagTrial] = []
    clock = time.monotonic
    faults = [("delay", float(plan.w5_delay)), ("stop-io", None)]
    for fault, seconds in faults:
        for t in range(plan.w5_trials):
            victim = env.replicas[t % len(env.replicas)].name
            _wait_for(
                functools.partial(_serves_reads, env, handle, victim),
                plan.w5_timeout,
                f"{victim} to serve reads on both sides before the trial",
            )
            time.sleep(0.3)
            t0 = clock()
            env.sb.fault(victim, fault, seconds)
            trial = LagTrial(fault, victim, t0, clock())
            deadline = t0 + plan.w5_timeout
            while clock() < deadline and (trial.sqlrouter_out is None or trial.haproxy_out is None):
                now = clock()
                if trial.sqlrouter_out is None and victim not in sqlrouter_readers(handle):
                    trial.sqlrouter_out = now
                if trial.haproxy_out is None and victim not in env.proxy.readers_up():
                    trial.haproxy_out = now
                time.sleep(plan.w5_poll)
            trial.landed_sqlrouter = dict(
                Counter(env.landed(c) for c in _open_close(lambda: sqlrouter.connect(ro_url), 4))
            )
            trial.landed_haproxy = dict(
                Counter(
                    env.landed(c)
                    for c in _open_close(lambda: env.raw_port(env.proxy.reader_port), 4)
                )
            )
            trial.resumed_at = clock()
            env.sb.fault(victim, "resume")
            env.sb.wait_caught_up(victim, timeout=30)
            trial.caught_up_at = clock()
            deadline = trial.caught_up_at + plan.w5_timeout
            while clock() < deadline and (
                trial.sqlrouter_back is None or trial.haproxy_back is None
            ):
                now = clock()
                if trial.sqlrouter_back is None and victim in sqlrouter_readers(handle):
                    trial.sqlrouter_back = now
                if trial.haproxy_back is None and victim in env.proxy.readers_up():
                    trial.haproxy_back = now
                time.sleep(plan.w5_poll)
            trials.append(trial)
            j = trial.to_json(env.max_lag)
            _log(
                f"W5 {fault} on {victim}: out after "
                f"sqlrouter {_secs(j['sqlrouter_excluded_after_fault_s'])}, "
                f"haproxy {_secs(j['haproxy_excluded_after_fault_s'])}; back after "
                f"sqlrouter {_secs(j['sqlrouter_back_after_caught_up_s'])}, "
                f"haproxy {_secs(j['haproxy_back_after_caught_up_s'])}"
            )
    return trials


def _serves_reads(env: Env, handle: ServiceHandle, name: str) -> bool:
    return name in sqlrouter_readers(handle) and name in env.proxy.readers_up()


def _open_close(open_: Callable[[], AnyConnection], count: int) -> Iterator[AnyConnection]:
    for _ in range(count):
        conn = open_()
        try:
            yield conn
        finally:
            conn.close()


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}s"


# --------------------------------------------------------------------------- profile


def _as_class(fn: BlockFn, conn: AnyConnection, cls: type[Any]) -> BlockFn:
    """``fn``, run with ``conn`` turned into an instance of ``cls`` for the block.

    The same connection (socket, server thread, buffers) with another class: what is
    left between the variants is the cost of the classes' code alone.
    """
    own = type(conn)

    def run(n: int) -> list[int]:
        object.__setattr__(conn, "__class__", cls)
        try:
            return fn(n)
        finally:
            object.__setattr__(conn, "__class__", own)

    return run


def _swapped_block(conns: Sequence[AnyConnection], sql: str, cls: type[Any]) -> BlockFn:
    """:func:`statement_block` on ``conns``, each turned into a ``cls`` for its block."""
    blocks = itertools.cycle([_as_class(statement_block([c], sql), c, cls) for c in conns])

    def run(n: int) -> list[int]:
        return next(blocks)(n)

    return run


def profile_queries(env: Env, plan: Plan) -> tuple[str, str]:
    """Where the per-statement difference between sqlrouter and raw PyMySQL comes from.

    ``SELECT 1`` (W1's shortest statement) on 3 connections per variant, interleaved:
    raw PyMySQL; raw PyMySQL carrying the extra instance attributes of a sqlrouter
    connection (object layout); for the master, raw PyMySQL negotiating
    ``CLIENT_SESSION_TRACK`` as sqlrouter's RW_STRICT connections do (server side);
    sqlrouter; and the same sqlrouter connections turned into PyMySQL's class for the
    block (same sockets and state, none of sqlrouter's code: the difference to
    sqlrouter is the cost of its code).  Then cProfile of a sqlrouter point select.
    """
    from sqlrouter._session_track import CLIENT_SESSION_TRACK  # noqa: PLC0415

    sql = SELECT_ONE
    count = plan.query_connections
    rows = []
    details = []
    base_cls = pymysql.connections.Connection
    for qos, server in (("RO_RELAXED", None), ("RW_STRICT", env.master)):
        first = sqlrouter.connect(env.url(qos), autocommit=True)
        where = env.landed(first)
        first.close()
        target = server or next(s for s in env.replicas if s.name == where)
        url = env.url(qos)
        routed = on_server(
            functools.partial(sqlrouter.connect, url, autocommit=True), where, count, env.landed
        )
        raw = [env.raw(target) for _ in range(count)]
        extra_attrs = [env.raw(target) for _ in range(count)]
        own = set(vars(raw[0]))
        for conn in extra_attrs:
            for name, value in vars(routed[0]).items():
                if name not in own:
                    setattr(conn, name, value)
        opened = [*routed, *raw, *extra_attrs]
        sides: dict[str, BlockFn] = {
            "raw PyMySQL": statement_block(raw, sql),
            "raw PyMySQL + sqlrouter's instance attributes": statement_block(extra_attrs, sql),
        }
        if server is not None:
            tracked = [env.raw(target, client_flag=CLIENT_SESSION_TRACK) for _ in range(count)]
            opened += tracked
            sides["raw PyMySQL + CLIENT_SESSION_TRACK"] = statement_block(tracked, sql)
        sides["sqlrouter"] = statement_block(routed, sql)
        sides["sqlrouter's connections as PyMySQL's class"] = _swapped_block(routed, sql, base_cls)
        try:
            bench = Interleaved(sides, block=20, alternations=10)
            bench.warmup(500)
            with gc_paused():
                for _ in range(max(plan.rounds // 3, 4)):
                    bench.run_round()
                    gc.collect()
            res = bench.results
            base = res["raw PyMySQL"]
            for name, side in res.items():
                if name == "raw PyMySQL":
                    continue
                c = Comparison("q", "q", base, side)
                rows.append(
                    [
                        f"{qos} ({where}): {name}",
                        format_ns(side.summary().median),
                        f"{format_ns(c.paired_difference())} ({_paired(c)})",
                        format_ns(side.cpu_thread_per_op() - base.cpu_thread_per_op()),
                    ]
                )
            swapped = res["sqlrouter's connections as PyMySQL's class"]
            code = Comparison("q", "q", swapped, res["sqlrouter"])
            rows.append(
                [
                    f"{qos} ({where}): sqlrouter's code alone (sqlrouter - as PyMySQL's class)",
                    "",
                    f"{format_ns(code.paired_difference())} ({_paired(code)})",
                    format_ns(res["sqlrouter"].cpu_thread_per_op() - swapped.cpu_thread_per_op()),
                ]
            )
            point = statement_block(routed[:1], POINT_SELECT)
            details.append(f"=== cProfile: point select, sqlrouter {qos}, on {where} ===")
            details.append(profile_calls(functools.partial(point, 1), plan.profile_calls * 10))
        finally:
            for conn in opened:
                with contextlib.suppress(Exception):
                    conn.close()
    table = markdown_table(
        [
            f"`{sql}`, 3 connections per variant",
            "median",
            "vs raw PyMySQL: paired difference (ratio [95% CI])",
            "thread CPU/op vs raw",
        ],
        rows,
    )
    return table, "\n".join(details)


class _Stopwatch:
    """Times calls of functions patched in place (profiling only; restored after)."""

    def __init__(self) -> None:
        self.ns: Counter[str] = Counter()

    @contextlib.contextmanager
    def patch(self, owner: Any, name: str, key: str) -> Iterator[None]:
        had_own = name in vars(owner)
        original = getattr(owner, name) if not had_own else vars(owner)[name]
        ns = self.ns
        clock = time.perf_counter_ns

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return original(*args, **kwargs)
            finally:
                ns[key] += clock() - t0

        setattr(owner, name, timed)
        try:
            yield
        finally:
            if had_own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)


CONNECT_STEPS: Final = (
    ("parse", "`parse_cached`: the URL (an lru_cache hit)"),
    ("handle_for", "`handle_for`: the service's handle (registry found)"),
    ("init", "`Connection.__init__` before `connect()`"),
    ("snapshot", "`ServiceHandle.snapshot`"),
    ("policy", "`_attempts.policy_for`: the `Policy`"),
    ("choose", "`router.choose`: the decision and its reason"),
    ("socket", "`Connection._connect_bounded`: PyMySQL's `connect()`"),
    ("after", "`Connection._after_connect`: session set-up"),
    ("opened", "`ServiceHandle.opened`: register the connection"),
    ("connect_rest", "rest of `Connection.connect`: `Attempt`, deadline, log call"),
    ("total", "total: `sqlrouter.connect(url, **kw)`"),
)


def connect_steps(env: Env, calls: int) -> list[list[str]]:
    """Each step of the real ``sqlrouter.connect(url, ssl_disabled=True)``, timed in
    place (the functions it calls patched with a stopwatch, ~0.3 µs each), next to
    PyMySQL's ``Connection(defer_connect=True)`` and ``connect()`` to the same replicas,
    without and with a ``read_timeout`` (sqlrouter bounds the handshake with one)."""
    from sqlrouter import _attempts as sr_attempts  # noqa: PLC0415
    from sqlrouter import connection as sr_connection  # noqa: PLC0415

    url = env.url("RO_RELAXED")
    kwargs: dict[str, Any] = {"autocommit": True, "ssl_disabled": True}
    targets = itertools.cycle(env.replicas)
    clock = time.perf_counter_ns
    watch = _Stopwatch()
    cls = sr_connection.Connection
    patches = [
        (sr_connection, "parse_cached", "parse"),
        (sr_connection, "handle_for", "handle_for"),
        (cls, "__init__", "init_total"),
        (cls, "connect", "connect"),
        (ServiceHandle, "snapshot", "snapshot"),
        (sr_attempts, "policy_for", "policy"),
        (sr_attempts, "choose", "choose"),
        (cls, "_connect_bounded", "socket"),
        (cls, "_after_connect", "after"),
        (ServiceHandle, "opened", "opened"),
    ]
    samples: dict[str, list[int]] = {}

    def keep(key: str, value: int) -> None:
        samples.setdefault(key, []).append(value)

    with contextlib.ExitStack() as stack:
        for owner, name, key in patches:
            if not hasattr(owner, name):
                return [[f"(sqlrouter changed: {name} not found; no breakdown)", "", ""]]
            stack.enter_context(watch.patch(owner, name, key))
        for _ in range(calls):
            watch.ns.clear()
            t0 = clock()
            conn = sqlrouter.connect(url, **kwargs)
            total = clock() - t0
            conn.close()
            ns = dict(watch.ns)
            for key in ("parse", "handle_for", "snapshot", "policy", "choose", "socket"):
                keep(key, ns.get(key, 0))
            keep("after", ns.get("after", 0))
            keep("opened", ns.get("opened", 0))
            keep("init", ns.get("init_total", 0) - ns.get("connect", 0))
            inner = sum(ns.get(k, 0) for k in ("snapshot", "policy", "choose", "socket"))
            inner += ns.get("after", 0) + ns.get("opened", 0)
            keep("connect_rest", ns.get("connect", 0) - inner)
            keep("total", total)
            for timeout, suffix in ((None, ""), (10.0, "_rt")):
                target = next(targets)
                r0 = clock()
                raw = pymysql.connect(
                    host=target.host,
                    port=target.port,
                    user=env.user,
                    password=env.password,
                    database=env.database,
                    defer_connect=True,
                    read_timeout=timeout,
                    **kwargs,
                )
                r1 = clock()
                raw.connect()
                r2 = clock()
                raw.close()
                keep("raw_init" + suffix, r1 - r0)
                keep("raw_connect" + suffix, r2 - r1)
                keep("raw_total" + suffix, r2 - r0)
    m = {k: median(v) for k, v in samples.items()}
    pymysql_side = {
        "init": f"{format_ns(m['raw_init'])} (`Connection(defer_connect=True)`)",
        "socket": f"{format_ns(m['raw_connect'])}; {format_ns(m['raw_connect_rt'])} with "
        "`read_timeout=10`",
        "total": f"{format_ns(m['raw_total'])} (`pymysql.connect`)",
    }
    return [[label, format_ns(m[key]), pymysql_side.get(key, "-")] for key, label in CONNECT_STEPS]


def profile_connect(env: Env, plan: Plan) -> tuple[str, str]:
    """Where ``sqlrouter.connect`` spends its time (TLS off): variants interleaved like
    W6, then each step in place (:func:`connect_steps`), then cProfile."""
    url = env.url("RO_RELAXED")
    kwargs: dict[str, Any] = {"autocommit": True, "ssl_disabled": True}
    parsed = parse_url(url, **kwargs)
    handle = handle_for(
        parsed.registry, parsed.service, Credentials(parsed.user or "", parsed.password or "")
    )
    targets = itertools.cycle(env.replicas)
    bench = Interleaved(
        {
            "raw pymysql.connect": connect_block(lambda: env.raw(next(targets), ssl_disabled=True)),
            "sqlrouter.Connection(parsed URL, handle)": connect_block(
                lambda: sqlrouter.Connection(parsed, handle)
            ),
            "sqlrouter.connect(str, **kw)": connect_block(lambda: sqlrouter.connect(url, **kwargs)),
        },
        block=plan.connect_block,
        alternations=plan.connect_alternations * 4,
    )
    bench.warmup(plan.connect_warmup)
    with gc_paused():
        for _ in range(max(plan.rounds // 6, 3)):
            bench.run_round()
            gc.collect()
    res = bench.results
    base = res["raw pymysql.connect"]
    rows = [
        [
            name,
            format_ns(side.summary().median),
            format_ns(Comparison("c", "c", base, side).paired_difference()),
            format_ns(side.cpu_thread_per_op() - base.cpu_thread_per_op()),
        ]
        for name, side in res.items()
    ]
    calls = plan.profile_calls
    summary = "\n".join(
        [
            f"`connect()` with `ssl_disabled=True`, variants interleaved ({base.ops} each):",
            "",
            markdown_table(
                ["variant", "median", "vs raw (paired median)", "thread CPU/op vs raw"], rows
            ),
            "",
            f"`sqlrouter.connect` step by step, timed in place ({calls} connects, medians; "
            "each step's median, so they do not add up exactly):",
            "",
            markdown_table(["step", "sqlrouter", "PyMySQL"], connect_steps(env, calls)),
        ]
    )

    def routed_call() -> None:
        sqlrouter.connect(url, **kwargs).close()

    details = f"=== cProfile: sqlrouter.connect, ssl_disabled=True, {calls} calls ===\n"
    return summary, details + profile_calls(routed_call, calls)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Check:
    """One target of the issue, and whether this run met it."""

    name: str
    value: float
    limit: float
    #: "<=" or ">=".
    op: str
    note: str = ""

    @property
    def met(self) -> bool:
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "op": self.op,
            "met": self.met,
            "note": self.note,
        }


@dataclass(slots=True)
class Results:
    plan: Plan
    env: Env
    started: dt.datetime
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0
    w1: list[Workload] = field(default_factory=list)
    w2: Workload | None = None
    w6: Workload | None = None
    w3: list[W3Side] = field(default_factory=list)
    w3_bench: Interleaved | None = None
    w4_sides: list[W4Side] = field(default_factory=list)
    w4: dict[int, dict[str, W4Point]] = field(default_factory=dict)
    w7_status: str = ""
    w5: list[LagTrial] = field(default_factory=list)
    profile: tuple[str, str] | None = None

    def checks(self) -> list[Check]:
        out: list[Check] = []
        for w in self.w1:
            cmps = w.comparisons()
            for r in w.routes:
                if not r.judged:
                    continue
                c = cmps[r.key]
                aa = cmps.get("raw_replica_aa")
                paired, low, high = c.paired_ratio()
                note = f"95% CI [{low:.3f}, {high:.3f}]"
                if aa is not None:
                    note += f"; A/A control {aa.paired_ratio()[0]:.3f}"
                out.append(
                    Check(
                        f"{w.title}: {r.label} / raw, p50 (paired)",
                        paired,
                        W1_P50_TARGET,
                        "<=",
                        note,
                    )
                )
                low, high = w.p99_ci(r.key)
                note = f"95% CI [{low:.3f}, {high:.3f}]"
                if aa is not None:
                    note += f"; A/A control {aa.p99_ratio:.3f}"
                out.append(
                    Check(
                        f"{w.title}: {r.label} / raw, p99", c.p99_ratio, W1_P99_TARGET, "<=", note
                    )
                )
                if r.proxy is not None:
                    mine, theirs = c.paired_difference(), cmps[r.proxy].paired_difference()
                    out.append(
                        Check(
                            f"{w.title}: {r.label} added latency / HAProxy's",
                            mine / theirs if theirs > 0 else float("inf"),
                            ADDED_VS_PROXY_TARGET,
                            "<=",
                            note=f"{format_ns(mine)} vs {format_ns(theirs)}",
                        )
                    )
        one = self.w4.get(1)
        if one is not None:
            raw = one["raw"].throughput
            for key, note in (
                ("sqlrouter_none", "same guarantees as raw PyMySQL: the target"),
                ("sqlrouter_session", "read-your-writes, which raw does not give: for the record"),
            ):
                if key in one and raw > 0:
                    slices = [
                        a / b
                        for a, b in zip(
                            one[key].slice_throughput, one["raw"].slice_throughput, strict=True
                        )
                        if b
                    ]
                    check = Check(
                        f"W4 1 thread: {key.replace('_', ' consistency=')} / raw throughput",
                        one[key].throughput / raw,
                        W4_THROUGHPUT_TARGET,
                        ">=",
                        note=f"{note}; median of per-slice ratios {median(slices):.3f}",
                    )
                    out.append(check)
        if self.w6 is not None:
            c = self.w6.comparisons()["sqlrouter"]
            paired, low, high = c.paired_ratio()
            out.append(
                Check(
                    "W6 connect(): sqlrouter / pymysql (paired)",
                    paired,
                    W6_CONNECT_TARGET,
                    "<=",
                    f"95% CI [{low:.3f}, {high:.3f}]; +{format_ns(c.paired_difference())}",
                )
            )
        return out

    def judged(self) -> list[Check]:
        """The checks that decide the exit status (not the ones given for the record)."""
        return [c for c in self.checks() if "for the record" not in c.note]


# --------------------------------------------------------------------------- report

QUANTILES: Final = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999)


def _share(counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "-"
    return ", ".join(
        f"{name} {100 * n / total:.1f} %" for name, n in sorted(counts.items(), key=lambda i: -i[1])
    )


def _with_ci(value: float, ci: tuple[float, float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _paired(c: Comparison) -> str:
    p, low, high = c.paired_ratio()
    return f"{p:.3f} [{low:.3f}, {high:.3f}]"


def workload_table(w: Workload) -> str:
    res = w.bench.results
    cmps = w.comparisons()
    rows = []
    for r in w.routes:
        side = res[r.key]
        s = side.summary()
        c = cmps.get(r.key)
        rows.append(
            [
                r.label,
                s.n,
                format_ns(s.median),
                format_ns(s.p99),
                "baseline" if c is None else _paired(c),
                "-" if c is None else _with_ci(c.p99_ratio, w.p99_ci(r.key)),
                "-" if c is None else format_ns(c.paired_difference()),
                format_ns(side.cpu_process_per_op()),
                format_ns(w.cpu.ns[r.key] / side.ops if side.ops else 0),
            ]
        )
    return markdown_table(
        [
            "route",
            "n",
            "median",
            "p99",
            "vs raw: paired ratio [95% CI]",
            "p99 ratio [95% CI]",
            "added (paired)",
            "client CPU/op",
            "HAProxy CPU/op",
        ],
        rows,
    )


def w3_table(sides: Sequence[W3Side], bench: Interleaved) -> str:
    res = bench.results
    raw = res["raw"]
    rows = []
    for s in sides:
        side = res[s.key]
        summ = side.summary()
        cmp_ = Comparison("w3", "w3", raw, side)
        rows.append(
            [
                s.label,
                summ.n,
                format_ns(summ.median),
                format_ns(summ.p99),
                "baseline" if s.key == "raw" else _paired(cmp_),
                format_ns(median(s.write_ns)),
                format_ns(median(s.read_ns)),
                format_ns(quantile(s.read_ns, 0.99)),
                f"{s.stale} ({100 * s.stale / max(summ.n, 1):.1f} %)",
                _share(s.reads_on),
            ]
        )
    return markdown_table(
        [
            "variant",
            "n",
            "median write+read",
            "p99",
            "vs raw [95% CI]",
            "median write",
            "median read",
            "p99 read",
            "reads missing the write",
            "reads served by",
        ],
        rows,
    )


def w4_table(sides: Sequence[W4Side], points: Mapping[int, Mapping[str, W4Point]]) -> str:
    rows = []
    for threads, by_side in points.items():
        raw = by_side["raw"]
        for s in sides:
            p = by_side[s.key]
            paired = [
                a / b for a, b in zip(p.slice_throughput, raw.slice_throughput, strict=True) if b
            ]
            rows.append(
                [
                    threads,
                    s.label,
                    f"{p.throughput:,.0f}",
                    "baseline"
                    if s.key == "raw"
                    else f"{p.throughput / raw.throughput:.3f} ({median(paired):.3f})",
                    format_ns(median(p.latencies)),
                    format_ns(quantile(p.latencies, 0.99)),
                    f"{100 * p.reads_on_replica / max(p.reads, 1):.1f} %",
                    format_ns(p.cpu_ns / max(p.ops, 1)),
                    format_ns(p.proxy_cpu_ns / max(p.ops, 1)),
                ]
            )
    return markdown_table(
        [
            "threads",
            "side",
            "ops/s",
            "vs raw (median of slices)",
            "p50",
            "p99",
            "reads on replicas",
            "client CPU/op",
            "HAProxy CPU/op",
        ],
        rows,
    )


def w7_table(points: Mapping[int, Mapping[str, W4Point]]) -> str:
    rows = []
    for threads, by_side in points.items():
        base, polled = by_side.get("sqlrouter_session"), by_side.get("sqlrouter_polled")
        if base is None or polled is None:
            continue
        rows.append(
            [
                threads,
                format_ns(median(base.latencies)),
                format_ns(median(polled.latencies)),
                format_ns(quantile(base.latencies, 0.99)),
                format_ns(quantile(polled.latencies, 0.99)),
                format_ratio(quantile(polled.latencies, 0.99) / quantile(base.latencies, 0.99)),
                format_ratio(polled.throughput / base.throughput),
                f"{polled.polls} ({polled.poll_errors} failed)",
                format_ns(median(polled.poll_ns)) if polled.poll_ns else "-",
            ]
        )
    return markdown_table(
        [
            "threads",
            "p50 not polled",
            "p50 polled",
            "p99 not polled",
            "p99 polled",
            "p99 ratio",
            "throughput ratio",
            "status requests",
            "median status answer",
        ],
        rows,
    )


def w5_table(trials: Sequence[LagTrial], max_lag: float) -> str:
    def s(v: float | None) -> str:
        return "never" if v is None else f"{v:.2f} s"

    rows = []
    for t in trials:
        rows.append(
            [
                t.fault,
                t.replica,
                s(t.since_fault(t.sqlrouter_out)),
                s(t.since_crossing(t.sqlrouter_out, max_lag)),
                s(t.since_fault(t.haproxy_out)),
                s(t.since_crossing(t.haproxy_out, max_lag)),
                s(t.caught_up_at - t.resumed_at),
                s(t.since_caught_up(t.sqlrouter_back)),
                s(t.since_caught_up(t.haproxy_back)),
                f"{_landing(t.landed_sqlrouter)} / {_landing(t.landed_haproxy)}",
            ]
        )
    for fault in dict.fromkeys(t.fault for t in trials):
        mine = [t for t in trials if t.fault == fault]

        def med(values: list[float | None]) -> str:
            known = [v for v in values if v is not None]
            return s(median(known)) if len(known) == len(values) and known else "never"

        rows.append(
            [
                f"**{fault}: median**",
                "",
                med([t.since_fault(t.sqlrouter_out) for t in mine]),
                med([t.since_crossing(t.sqlrouter_out, max_lag) for t in mine]),
                med([t.since_fault(t.haproxy_out) for t in mine]),
                med([t.since_crossing(t.haproxy_out, max_lag) for t in mine]),
                med([t.caught_up_at - t.resumed_at for t in mine]),
                med([t.since_caught_up(t.sqlrouter_back) for t in mine]),
                med([t.since_caught_up(t.haproxy_back) for t in mine]),
                "",
            ]
        )
    return markdown_table(
        [
            "fault",
            "replica",
            "sqlrouter out, after fault",
            "after crossing max_lag",
            "HAProxy out, after fault",
            "after crossing max_lag",
            "catch-up after resume",
            "sqlrouter back, after caught up",
            "HAProxy back, after caught up",
            "4 new conns after exclusion went to (sqlrouter / HAProxy)",
        ],
        rows,
    )


def _landing(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n}x {name}" for name, n in sorted(counts.items())) or "-"


def checks_table(checks: Sequence[Check]) -> str:
    return markdown_table(
        ["target", "measured", "limit", "verdict", "note"],
        [
            [
                c.name,
                format_ratio(c.value),
                f"{c.op} {c.limit:g}",
                "met" if c.met else "MISSED",
                c.note,
            ]
            for c in checks
        ],
    )


def report(results: Results, machine: Mapping[str, str]) -> str:
    env, plan = results.env, results.plan
    ls, le = results.load_start, results.load_end
    lines = [
        f"Measured {results.started:%Y-%m-%d %H:%M} UTC on {machine['cpu']} "
        f"({machine['cores']} cores, {machine['os']}), Python {machine['python']}, "
        f"PyMySQL {machine['pymysql']}, MariaDB {machine['server']}, "
        f"HAProxy {machine['haproxy']}. Load average (1, 5, 15 min) "
        f"{ls[0]:.2f} {ls[1]:.2f} {ls[2]:.2f} at the start, "
        f"{le[0]:.2f} {le[1]:.2f} {le[2]:.2f} at the end; the run took "
        f"{results.seconds / 60:.1f} min.",
        "",
        "**Targets**",
        "",
        checks_table(results.checks()),
        "",
    ]
    for w in results.w1:
        lines += [
            f"**{w.title}** (one thread, autocommit, on {w.extra['replica']} and the master; "
            f"{plan.rounds} rounds, blocks of {plan.query_block}, "
            f"{plan.query_connections} connections per route)",
            "",
            workload_table(w),
            "",
        ]
    if results.w2 is not None:
        lines += [
            f"**W2 transaction** (`BEGIN`, 10 point selects, `COMMIT`; blocks of {plan.tx_block})",
            "",
            workload_table(results.w2),
            "",
        ]
    if results.w3_bench is not None:
        lines += [
            "**W3 write, then read it** (`UPDATE` one row on the master in autocommit, then "
            "`SELECT` it; a read *misses* when it returns an older value)",
            "",
            w3_table(results.w3, results.w3_bench),
            "",
        ]
    if results.w4:
        lines += [
            f"**W4 mixed 90/10** (point selects / single-row `UPDATE`s, random ids; "
            f"{plan.w4_seconds:g} s per side and thread count in {plan.w4_slices} "
            f"interleaved slices)",
            "",
            w4_table(results.w4_sides, results.w4),
            "",
            f"**W7 control socket polled at {plan.w7_hz:g} Hz** (`status` from another "
            "process during the W4 slices of a second sqlrouter consistency=session side)",
            "",
            w7_table(results.w4) if results.w7_status == "" else results.w7_status,
            "",
        ]
    if results.w5:
        lines += [
            f"**W5 lag handling** (max_lag {env.max_lag:g} s on both; sqlrouter's monitor "
            f"and HAProxy's checks every {env.proxy.check_interval:g} s; delay = "
            f"`MASTER_DELAY={plan.w5_delay}`; times polled every "
            f"{plan.w5_poll * 1000:.0f} ms)",
            "",
            w5_table(results.w5, env.max_lag),
            "",
        ]
    if results.w6 is not None:
        landed = results.w6.extra["landed"]
        lines += [
            "**W6 connect()** (`ssl_disabled=True` on every side; raw cycles over the "
            f"replicas; sqlrouter landed {_landing(landed['sqlrouter'])})",
            "",
            workload_table(results.w6),
            "",
        ]
    lines += [
        f"![W1 and W2 latency distributions](benchmarks/{PLOTS['latency']})",
        f"![W4 throughput vs threads](benchmarks/{PLOTS['throughput']})",
        f"![W5 lag handling](benchmarks/{PLOTS['lag']})",
        "",
        f"Reproduce: `{COMMAND} --update-docs` (JSON: `docs/benchmarks/{JSON_NAME}`).",
    ]
    return "\n".join(lines)


def _side_json(side: SideResult, proxy_ns: int) -> dict[str, Any]:
    s = side.summary()
    return {
        "n": s.n,
        "median_ns": s.median,
        "p99_ns": s.p99,
        "mean_ns": s.mean,
        "quantiles_ns": {str(q): quantile(side.samples, q) for q in QUANTILES},
        "client_cpu_process_ns_per_op": side.cpu_process_per_op(),
        "client_cpu_thread_ns_per_op": side.cpu_thread_per_op(),
        "haproxy_cpu_ns_per_op": proxy_ns / side.ops if side.ops else 0.0,
    }


def _workload_json(w: Workload) -> dict[str, Any]:
    cmps = w.comparisons()
    routes = {}
    for r in w.routes:
        entry = {"label": r.label, **_side_json(w.bench.results[r.key], w.cpu.ns[r.key])}
        c = cmps.get(r.key)
        if c is not None:
            p, low, high = c.paired_ratio()
            entry["vs"] = r.baseline
            entry["ratios"] = {
                "paired_median": p,
                "paired_median_ci95": [low, high],
                "median": c.median_ratio,
                "p99": c.p99_ratio,
                "cpu_process": c.cpu_ratio,
                "paired_difference_ns": c.paired_difference(),
            }
        routes[r.key] = entry
    extra = {
        k: ({n: dict(v) for n, v in val.items()} if k == "landed" else val)
        for k, val in w.extra.items()
    }
    return {"title": w.title, "extra": extra, "routes": routes}


def payload(results: Results, machine: Mapping[str, str]) -> dict[str, Any]:
    env = results.env
    out: dict[str, Any] = {
        "benchmark": "haproxy",
        "format": 1,
        "date": results.started.isoformat(timespec="seconds"),
        "command": COMMAND,
        "machine": dict(machine),
        "load_average": {"start": list(results.load_start), "end": list(results.load_end)},
        "seconds": results.seconds,
        "plan": dataclasses.asdict(results.plan),
        "topology": {
            "master": env.master.name,
            "replicas": [s.name for s in env.replicas],
            "max_lag": env.max_lag,
            "check_interval": env.proxy.check_interval,
        },
        "checks": [c.to_json() for c in results.checks()],
        "w1": [_workload_json(w) for w in results.w1],
    }
    if results.w2 is not None:
        out["w2"] = _workload_json(results.w2)
    if results.w3_bench is not None:
        out["w3"] = {
            s.key: {
                "label": s.label,
                **_side_json(results.w3_bench.results[s.key], 0),
                "write_median_ns": median(s.write_ns),
                "read_median_ns": median(s.read_ns),
                "read_p99_ns": quantile(s.read_ns, 0.99),
                "reads_missing_the_write": s.stale,
                "reads_served_by": dict(s.reads_on),
            }
            for s in results.w3
        }
    if results.w4:
        out["w4"] = {
            str(threads): {
                key: {
                    "label": next(s.label for s in results.w4_sides if s.key == key),
                    "ops": p.ops,
                    "throughput_ops_s": p.throughput,
                    "slice_throughput_ops_s": p.slice_throughput,
                    "median_ns": median(p.latencies),
                    "p99_ns": quantile(p.latencies, 0.99),
                    "reads": p.reads,
                    "reads_on_replicas": p.reads_on_replica,
                    "client_cpu_ns_per_op": p.cpu_ns / max(p.ops, 1),
                    "haproxy_cpu_ns_per_op": p.proxy_cpu_ns / max(p.ops, 1),
                    "control_polls": p.polls,
                    "control_poll_errors": p.poll_errors,
                    "control_status_median_ns": median(p.poll_ns) if p.poll_ns else None,
                }
                for key, p in by_side.items()
            }
            for threads, by_side in results.w4.items()
        }
        out["w7_status"] = results.w7_status or "measured"
    if results.w5:
        out["w5"] = [t.to_json(env.max_lag) for t in results.w5]
    if results.w6 is not None:
        out["w6"] = _workload_json(results.w6)
    return out


# --------------------------------------------------------------------------- plots


def _tick(value: float, _pos: int) -> str:
    return f"{value:g}"


def _minor_tick(value: float, _pos: int) -> str:
    """Label the 2, 3 and 5 of each decade only (the others crowd the axis)."""
    if value <= 0:
        return ""
    mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
    return f"{value:g}" if mantissa in (2, 3, 5) else ""


def plot(results: Results, out_dir: Path) -> list[Path]:
    """The three PNGs (latency distributions, throughput vs threads, lag handling)."""
    try:
        import matplotlib  # noqa: PLC0415 - optional: the bench extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        from matplotlib.ticker import FuncFormatter  # noqa: PLC0415
    except ImportError as exc:
        raise RuntimeError(
            "the plots need matplotlib: pip install -e '.[bench]' (./scripts/bench does it)"
        ) from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    colors = {
        "raw_replica": "#1f77b4",
        "raw_replica_aa": "#9ecae1",
        "sqlrouter_ro": "#2ca02c",
        "haproxy_reader": "#d62728",
        "raw_master": "#1f77b4",
        "sqlrouter_rw": "#2ca02c",
        "haproxy_writer": "#d62728",
        "raw": "#1f77b4",
        "sqlrouter_none": "#2ca02c",
        "sqlrouter_session": "#98df8a",
        "sqlrouter_polled": "#8c564b",
        "haproxy": "#d62728",
        "sqlrouter": "#2ca02c",
    }

    # Latency distributions: one row per workload, replica routes | master routes.
    workloads = [*results.w1, *([results.w2] if results.w2 is not None else [])]
    if workloads:
        fig, axes = plt.subplots(len(workloads), 2, figsize=(13, 4.2 * len(workloads)))
        for row, w in enumerate(workloads):
            slow = median(w.bench.results[w.routes[0].key].samples) > 1_000_000
            scale, unit = (1e6, "ms") if slow else (1e3, "µs")
            for col, family in enumerate((READ_ROUTES, WRITE_ROUTES)):
                ax = axes[row][col] if len(workloads) > 1 else axes[col]
                keys = [r for r in family if r.key in w.bench.results]
                lo, hi = [], []
                for r in keys:
                    samples = sorted(w.bench.results[r.key].samples)
                    n = len(samples)
                    xs = [v / scale for v in samples]
                    ys = [100 * (i + 1) / n for i in range(n)]
                    med = median(samples) / scale
                    ax.plot(
                        xs,
                        ys,
                        label=f"{r.label} (median {med:.3g} {unit})",
                        color=colors[r.key],
                        linestyle="--" if r.key.endswith("_aa") else "-",
                        linewidth=1.6,
                    )
                    lo.append(quantile(samples, 0.005) / scale)
                    hi.append(quantile(samples, 0.995) / scale)
                ax.set_xscale("log")
                ax.set_xlim(min(lo) * 0.9, max(hi) * 1.1)
                ax.xaxis.set_major_formatter(FuncFormatter(_tick))
                ax.xaxis.set_minor_formatter(FuncFormatter(_minor_tick))
                ax.tick_params(axis="x", which="minor", labelsize=7)
                ax.set_ylim(0, 100)
                ax.set_xlabel(f"latency ({unit}, log scale)")
                ax.set_ylabel("% of operations at or below")
                where = "replica routes" if family is READ_ROUTES else "master routes"
                ax.set_title(f"{w.title}: {where}")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(loc="lower right", fontsize=8)
        fig.suptitle(
            "Latency distributions per route (cumulative; 0.5th to 99.5th percentile shown)"
        )
        fig.tight_layout()
        path = out_dir / PLOTS["latency"]
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    # Throughput, p99 and replica share vs threads.
    if results.w4:
        threads = sorted(results.w4)
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
        for s in results.w4_sides:
            pts = [results.w4[t][s.key] for t in threads]
            style: dict[str, Any] = {
                "marker": "o",
                "color": colors.get(s.key, "black"),
                "label": s.label,
                "linestyle": ":" if s.polled else "-",
            }
            axes[0].plot(threads, [p.throughput for p in pts], **style)
            axes[1].plot(threads, [quantile(p.latencies, 0.99) / 1e6 for p in pts], **style)
            axes[2].plot(
                threads, [100 * p.reads_on_replica / max(p.reads, 1) for p in pts], **style
            )
        for ax, title, unit in (
            (axes[0], "throughput", "operations / s"),
            (axes[1], "p99 latency per operation", "ms"),
            (axes[2], "reads served by replicas", "%"),
        ):
            ax.set_xscale("log", base=2)
            ax.set_xticks(threads, [str(t) for t in threads])
            ax.set_xlabel("client threads")
            ax.set_ylabel(unit)
            ax.set_title(f"W4: {title}")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylim(bottom=0)
        axes[2].set_ylim(0, 105)
        axes[0].legend(fontsize=8, loc="lower right")
        fig.suptitle("W4: 90 % point selects / 10 % updates (W7: dotted, control socket polled)")
        fig.tight_layout()
        path = out_dir / PLOTS["throughput"]
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    # Lag handling: per trial, when each side stopped and resumed routing to the replica.
    if results.w5:
        max_lag = results.env.max_lag
        fig, axes = plt.subplots(1, 2, figsize=(14, 0.6 * len(results.w5) + 3))
        seen: Counter[str] = Counter()
        labels = []
        for t in results.w5:
            seen[t.fault] += 1
            labels.append(f"{t.fault} #{seen[t.fault]} ({t.replica})")
        ys = list(range(len(results.w5)))
        trials = results.w5
        panels = (
            (
                axes[0],
                [t.since_fault(t.sqlrouter_out) for t in trials],
                [t.since_fault(t.haproxy_out) for t in trials],
                "excluded, seconds after the fault",
            ),
            (
                axes[1],
                [t.since_caught_up(t.sqlrouter_back) for t in trials],
                [t.since_caught_up(t.haproxy_back) for t in trials],
                "back, seconds after the replica caught up",
            ),
        )
        for ax, mine, theirs, title in panels:
            for offset, values, name, color in (
                (-0.2, mine, "sqlrouter", colors["sqlrouter"]),
                (0.2, theirs, "HAProxy", colors["haproxy"]),
            ):
                ax.barh(
                    [y + offset for y in ys],
                    [v if v is not None else 0 for v in values],
                    height=0.38,
                    color=color,
                    label=name,
                )
                for y, v in zip(ys, values, strict=True):
                    ax.text(
                        max(v or 0.0, 0.0),
                        y + offset,
                        " never" if v is None else f" {v:.2f} s",
                        va="center",
                        fontsize=7,
                    )
            if title.startswith("excluded"):
                ax.axvline(
                    max_lag,
                    color="black",
                    linestyle="--",
                    linewidth=1,
                    label=f"lag crosses max_lag ({max_lag:g} s after the fault)",
                )
            ax.set_yticks(ys, labels)
            ax.invert_yaxis()
            ax.margins(x=0.12)
            ax.set_xlabel("seconds")
            ax.set_title(f"W5: {title}")
            ax.grid(True, axis="x", alpha=0.3)
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="upper center", ncol=3, fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.9))
        path = out_dir / PLOTS["lag"]
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


# --------------------------------------------------------------------------- main


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_haproxy",
        description="Measure sqlrouter against plain PyMySQL and against HAProxy in front "
        "of the same local sandbox cluster (workloads W1 to W7, see docs/benchmarks.md).",
        epilog="Exit status: 0 when every target is met, 1 when one is missed, 130 when "
        "interrupted (the sandbox and HAProxy are stopped in every case).",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"interleaved rounds of W1, W2 and W6 (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of about a minute (few samples)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"where the JSON and the PNGs go (default docs/benchmarks/: {JSON_NAME}, "
        + ", ".join(PLOTS.values())
        + ")",
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite the haproxy section of docs/benchmarks.md with this run's report",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also show where sqlrouter spends its time per query and per connect",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="parent directory of the temporary sandbox and proxy (default: system temp)",
    )
    # The control-socket poller of W7 (a process of its own): internal.
    parser.add_argument("--poll-control", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--poll-hz", type=float, default=10.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 2:
        parser.error(f"--rounds must be at least 2 (ABBA interleaving), got {args.rounds}")
    if args.update_docs and args.quick:
        parser.error("--update-docs publishes full runs only: drop --quick")
    return args


def _control_socket() -> tuple[Path | None, str]:
    """This process's control socket, or why there is none (W7 is then pending)."""
    server = control.current()
    if server is None or server.socket_path is None:
        return None, "pending: the control socket did not start (see the sqlrouter.control log)"
    return server.socket_path, ""


def run(args: argparse.Namespace) -> int:
    plan = Plan.quick() if args.quick else Plan()
    if args.rounds is not None:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    started = time.monotonic()
    when = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="sqlrouter-bench-haproxy-", dir=args.dir))
    sb = Sandbox(tmp / "sb", ephemeral=True, progress=_log)
    proxy: HAProxy | None = None
    poller: ControlPoller | None = None
    control_env = os.environ.get("SQLROUTER_CONTROL")
    try:
        sb.up(replicas=2)
        fill_table(sb)
        with sb.cursor(sb.master.name, timeout=30) as cur:
            cur.execute(f"CREATE USER IF NOT EXISTS '{CHECK_USER}'@'127.0.0.1'")
        for replica in sb.replicas:
            sb.wait_caught_up(replica.name, timeout=60)
        st = sb.state
        master = Server(sb.master.name, "127.0.0.1", sb.master.port)
        replicas = [Server(n.name, "127.0.0.1", n.port) for n in sb.replicas]
        max_lag = sb.service().max_lag
        proxy = HAProxy(
            tmp / "haproxy",
            master=master,
            replicas=replicas,
            user=st.monitor.user,
            password=st.monitor.password,
            max_lag=max_lag,
            check_interval=sb.service().monitor_interval,
            progress=_log,
        )
        proxy.start()
        env = Env(sb, proxy, st.app.user, st.app.password, st.database, master, replicas, max_lag)
        results = Results(plan, env, when, load_start)

        _log("W1, W2, W6: opening the connections of every route")
        conns = open_routes(env, plan.query_connections)
        try:
            w1 = [
                w1_workload(
                    env, plan, conns, sql=SELECT_ONE, key="w1_select1", title="W1 SELECT 1"
                ),
                w1_workload(env, plan, conns, sql=POINT_SELECT, key="w1_pk", title="W1 PK lookup"),
            ]
            w2 = w2_workload(env, plan, conns)
            w6 = w6_workload(env, plan)
            run_rounds([w.bench for w in (*w1, w2, w6)], plan.rounds, "W1+W2+W6")
            results.w1, results.w2, results.w6 = w1, w2, w6
        finally:
            conns.close()

        _log("W3: write, then read")
        results.w3, results.w3_bench = run_w3(env, plan)

        # W4 and W7 run with the control socket on (both sqlrouter session sides).
        sqlrouter.shutdown()
        control_dir = tmp / "control"
        os.environ["SQLROUTER_CONTROL"] = str(control_dir)
        sqlrouter.connect(env.url("RO_RELAXED")).close()
        socket_path, results.w7_status = _control_socket()
        if socket_path is not None:
            poller = ControlPoller(socket_path, plan.w7_hz)
        _log(f"W4 + W7: {', '.join(map(str, plan.w4_threads))} threads")
        results.w4_sides, results.w4 = run_w4(env, plan, poller)

        _log("W5: lag handling")
        results.w5 = run_w5(env, plan)
        if args.profile:
            _log("profiling the query and connect paths")
            q_table, q_details = profile_queries(env, plan)
            c_table, c_details = profile_connect(env, plan)
            results.profile = (
                "Per statement:\n\n" + q_table + "\n\n" + c_table,
                q_details + "\n" + c_details,
            )
        results.load_end = os.getloadavg()
    finally:
        _log("stopping the poller, HAProxy and the sandbox")
        if poller is not None:
            poller.close()
        sqlrouter.shutdown()
        if control_env is None:
            os.environ.pop("SQLROUTER_CONTROL", None)
        else:
            os.environ["SQLROUTER_CONTROL"] = control_env
        if proxy is not None:
            proxy.stop()
        if sb.exists:
            sb.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    results.seconds = time.monotonic() - started
    machine = machine_info(server=env.server_version, haproxy=proxy.version)
    text = report(results, machine)
    print(text)
    if results.profile is not None:
        print(f"\n{results.profile[0]}\n\n{results.profile[1]}")
    path = write_json(args.out / JSON_NAME, payload(results, machine))
    _log(f"results written to {path}")
    for png in plot(results, args.out):
        _log(f"plot written to {png}")
    if args.update_docs:
        doc = replace_section(DOCS.read_text(encoding="utf-8"), SECTION, text)
        if results.profile is not None:
            head = f"Profiled {when:%Y-%m-%d %H:%M} UTC, in the run above (`--profile`).\n\n"
            doc = replace_section(doc, PROFILE_SECTION, head + results.profile[0])
        DOCS.write_text(doc, encoding="utf-8")
        _log(f"updated {DOCS}")
    _log(f"done in {time.monotonic() - started:.0f}s")
    return 0 if all(c.met for c in results.judged()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.poll_control is not None:
        return poll_control(args.poll_control, args.poll_hz, sys.stdin, sys.stdout)
    with interrupt_on_sigterm():
        try:
            return run(args)
        except KeyboardInterrupt:
            _log("interrupted; the sandbox and HAProxy were stopped")
            return 130


if __name__ == "__main__":
    sys.exit(main())
