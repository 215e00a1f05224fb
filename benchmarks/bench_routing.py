"""What routing costs: sqlrouter against plain PyMySQL on the same replica.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_routing [--rounds N] [--json PATH] [--update-docs]

It starts its own sandbox (1 master + 2 replicas, destroyed at the end, also on Ctrl-C
or SIGTERM), fills a 10 000-row table, and measures, interleaved in blocks (see
``benchmarks/_common.py`` and ``docs/benchmarks.md``):

1. a point select by primary key on open autocommit connections: PyMySQL connections
   to the replica that ``sqlrouter.connect(RO_RELAXED URL)`` landed on, vs those
   sqlrouter connections, plus more raw connections as an A/A control;
2. ``connect()`` with PyMySQL's default TLS setting (``PREFERRED``: an SSL context is
   built at every connect), raw ``pymysql.connect`` to the replicas vs
   ``sqlrouter.connect(url)`` with the monitor already running;
3. the same with ``ssl_disabled=True`` on both sides, which shows sqlrouter's own cost.

It prints a Markdown table, writes JSON (``docs/benchmarks/routing.json`` by default)
and with ``--update-docs`` rewrites the ``routing`` section of ``docs/benchmarks.md``;
``--profile`` shows where sqlrouter's time goes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import gc
import itertools
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pymysql
import pymysql.connections

import sqlrouter
from sqlrouter._runtime import handle_for
from sqlrouter.connection import Connection
from sqlrouter.registry import Registry, find_registry
from sqlrouter.sandbox import Sandbox
from sqlrouter.topology import Credentials
from sqlrouter.url import parse_url

from ._common import (
    BlockFn,
    Comparison,
    Interleaved,
    bench_sandbox,
    comparison_table,
    format_ns,
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
DEFAULT_JSON: Final = ROOT / "docs" / "benchmarks" / "routing.json"
DOCS: Final = ROOT / "docs" / "benchmarks.md"
SECTION: Final = "routing"
PROFILE_SECTION: Final = "routing-profile"
COMMAND: Final = ".venv/bin/python -m benchmarks.bench_routing"

TABLE: Final = "bench_point"
ROWS: Final = 10_000
POINT_SELECT: Final = f"SELECT id, k, c, pad FROM {TABLE} WHERE id = %s"

#: Targets: the largest acceptable sqlrouter/raw ratio of the medians.
QUERY_TARGET: Final = 1.02
CONNECT_TARGET: Final = 1.10

DEFAULT_ROUNDS: Final = 30

if TYPE_CHECKING:
    AnyConnection = pymysql.connections.Connection[Any]
else:  # generic in the type stubs only
    AnyConnection = pymysql.connections.Connection


@dataclass(frozen=True, slots=True)
class Plan:
    """How much each benchmark runs per round (per side), and how long it warms up.

    The defaults take about a minute on a 2-core machine, sandbox included.
    """

    rounds: int = DEFAULT_ROUNDS
    query_block: int = 20
    query_connections: int = 3
    query_alternations: int = 40
    query_warmup: int = 2000
    connect_block: int = 5
    connect_alternations: int = 20
    connect_warmup: int = 100
    tls_connect_block: int = 1
    tls_connect_alternations: int = 6
    tls_connect_warmup: int = 6
    profile_calls: int = 500


@dataclass(frozen=True, slots=True)
class Target:
    """One server, as raw PyMySQL reaches it."""

    name: str
    host: str
    port: int


def _log(message: str) -> None:
    print(f"[bench_routing] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup


def _digits(rng: random.Random, groups: int) -> str:
    return "-".join(f"{rng.randrange(10**11):011d}" for _ in range(groups))


def fill_table(sb: Sandbox) -> None:
    """Create ``appdb.bench_point`` (10 000 rows) on the master; wait for the replicas."""
    _fill_table(
        sb,
        TABLE,
        "id INT PRIMARY KEY, k INT NOT NULL, c CHAR(120) NOT NULL, pad CHAR(60) NOT NULL, KEY (k)",
        lambda i, rng: (i, rng.randrange(ROWS), _digits(rng, 10), _digits(rng, 5)),
        ROWS,
    )


def _ids(seed: int) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.randint(1, ROWS)


def query_block(conns: Sequence[AnyConnection], *, seed: int = 7) -> BlockFn:
    """Point selects, each block on the next of ``conns`` in turn.

    Every side given the same ``seed`` reads the same sequence of ids.  Several
    connections per side average out what is particular to one connection (the server
    thread serving it, where its buffers sit in memory): a few percent, for the whole
    life of the connection.
    """
    cursors = itertools.cycle([conn.cursor() for conn in conns])
    ids = _ids(seed)
    clock = time.perf_counter_ns

    def run(n: int) -> list[int]:
        cur = next(cursors)
        out = [0] * n
        for i in range(n):
            key = next(ids)
            t0 = clock()
            cur.execute(POINT_SELECT, (key,))
            cur.fetchall()
            out[i] = clock() - t0
        return out

    return run


def connect_block(
    open_: Callable[[], AnyConnection],
    after: Callable[[AnyConnection], None] | None = None,
) -> BlockFn:
    """Open and close connections; the latency is ``open_()`` alone, close is untimed."""
    clock = time.perf_counter_ns

    def run(n: int) -> list[int]:
        out = [0] * n
        for i in range(n):
            t0 = clock()
            conn = open_()
            out[i] = clock() - t0
            if after is not None:
                after(conn)
            conn.close()
        return out

    return run


# --------------------------------------------------------------------------- benchmarks


@dataclass(slots=True)
class Context:
    sb: Sandbox
    url: str
    user: str
    password: str
    database: str
    replicas: list[Target]
    server_version: str = ""

    @classmethod
    def of(cls, sb: Sandbox) -> Context:
        """The context of ``sb``'s service, read through ``RO_RELAXED`` URLs."""
        st = sb.state
        return cls(
            sb=sb,
            url=sb.url("RO_RELAXED"),
            user=st.app.user,
            password=st.app.password,
            database=st.database,
            replicas=[Target(n.name, "127.0.0.1", n.port) for n in sb.replicas],
        )


def _raw_connect(ctx: Context, target: Target, **kwargs: Any) -> AnyConnection:
    """A plain PyMySQL connection to ``target``, autocommit unless ``kwargs`` say otherwise."""
    return pymysql.connect(
        host=target.host,
        port=target.port,
        user=ctx.user,
        password=ctx.password,
        database=ctx.database,
        **{"autocommit": True, **kwargs},
    )


def _overridden_methods() -> list[str]:
    """The PyMySQL connection methods sqlrouter.Connection replaces (for the record)."""
    base = vars(pymysql.connections.Connection)
    return sorted(
        name
        for name, value in vars(sqlrouter.Connection).items()
        if name in base and callable(value) and not name.startswith("__")
    )


@dataclass(slots=True)
class Measurement:
    """One interleaved benchmark: its sides, and how its results become comparisons."""

    bench: Interleaved
    finish: Callable[[], list[Comparison]]
    close: Callable[[], None]


def _routed_on(ctx: Context, count: int) -> list[sqlrouter.Connection]:
    """``count`` sqlrouter connections on one replica (the one the first landed on).

    sqlrouter spreads connections over the replicas: the others opened meanwhile are
    closed.
    """
    first = sqlrouter.connect(ctx.url, autocommit=True)
    kept = [first]
    assert first.datasource is not None
    for _ in range(count * 10):
        if len(kept) == count:
            return kept
        conn = sqlrouter.connect(ctx.url, autocommit=True)
        assert conn.datasource is not None
        if conn.datasource.name == first.datasource.name:
            kept.append(conn)
        else:
            conn.close()
    for conn in kept:
        conn.close()
    raise RuntimeError(f"sqlrouter did not open {count} connections on {first.datasource}")


def point_select(ctx: Context, plan: Plan) -> Measurement:
    """raw PyMySQL vs sqlrouter on one replica, plus more raw connections (A/A)."""
    routed = _routed_on(ctx, plan.query_connections)
    ds = routed[0].datasource
    assert ds is not None
    target = Target(ds.name, ds.host, ds.port)
    raw = [_raw_connect(ctx, target) for _ in range(plan.query_connections)]
    raw2 = [_raw_connect(ctx, target) for _ in range(plan.query_connections)]
    everyone = [*raw, *raw2, *routed]
    with raw[0].cursor() as cur:
        cur.execute("SELECT VERSION(), @@port, @@read_only")
        version, port, read_only = cur.fetchone() or (None, None, None)
    ctx.server_version = str(version)
    if port != ds.port or not read_only:
        raise RuntimeError(f"the raw connection reached port {port}, not replica {ds}")
    # Every connection must read the same row for the same id.
    rows = []
    for conn in everyone:
        with conn.cursor() as cur:
            cur.execute(POINT_SELECT, (42,))
            rows.append(cur.fetchall())
    if any(r != rows[0] for r in rows):
        raise RuntimeError("the raw and sqlrouter connections read different rows")
    bench = Interleaved(
        {"raw": query_block(raw), "sqlrouter": query_block(routed), "raw2": query_block(raw2)},
        block=plan.query_block,
        alternations=plan.query_alternations,
    )
    bench.warmup(plan.query_warmup)
    _log(
        f"point select on {ds.name} ({ds.host}:{ds.port}): {bench.ops_per_round} queries "
        f"per side per round, in blocks of {plan.query_block}"
    )

    def finish() -> list[Comparison]:
        res = bench.results
        extra = {"replica": ds.name, "rows": ROWS, "sql": POINT_SELECT}
        return [
            Comparison(
                key="point_select",
                title="point select by PK",
                baseline=res["raw"],
                candidate=res["sqlrouter"],
                target=QUERY_TARGET,
                extra={**extra, "overridden_pymysql_methods": _overridden_methods()},
            ),
            Comparison(
                key="point_select_aa",
                title="A/A control: raw vs other raw conns",
                baseline=res["raw"],
                candidate=res["raw2"],
                extra=extra,
            ),
        ]

    def close() -> None:
        for conn in everyone:
            conn.close()

    return Measurement(bench, finish, close)


def connect(ctx: Context, plan: Plan, *, tls_default: bool) -> Measurement:
    """raw pymysql.connect vs sqlrouter.connect, same replicas in the same proportions.

    sqlrouter spreads RO_RELAXED connections over the replicas (round robin by turn), so
    the raw side cycles over the same replicas: both open as many connections to each.
    """
    kwargs: dict[str, Any] = {} if tls_default else {"ssl_disabled": True}
    targets = itertools.cycle(ctx.replicas)
    raw_landed: Counter[str] = Counter()
    routed_landed: Counter[str] = Counter()

    def raw_open() -> AnyConnection:
        target = next(targets)
        raw_landed[target.name] += 1
        return _raw_connect(ctx, target, **kwargs)

    def routed_open() -> AnyConnection:
        return sqlrouter.connect(ctx.url, autocommit=True, **kwargs)

    def routed_after(conn: AnyConnection) -> None:
        ds = getattr(conn, "datasource", None)
        routed_landed[ds.name if ds is not None else "?"] += 1

    if tls_default:
        block, alternations = plan.tls_connect_block, plan.tls_connect_alternations
        warmup, label = plan.tls_connect_warmup, "TLS default (PREFERRED)"
    else:
        block, alternations = plan.connect_block, plan.connect_alternations
        warmup, label = plan.connect_warmup, "ssl_disabled=True"
    bench = Interleaved(
        {"raw": connect_block(raw_open), "sqlrouter": connect_block(routed_open, routed_after)},
        block=block,
        alternations=alternations,
    )
    bench.warmup(warmup)
    raw_landed.clear()
    routed_landed.clear()
    _log(
        f"connect, {label}: {bench.ops_per_round} connects per side per round, in blocks of {block}"
    )

    def finish() -> list[Comparison]:
        replica_names = {t.name for t in ctx.replicas}
        if not set(routed_landed) <= replica_names:
            _log(f"WARNING: sqlrouter connections landed outside the replicas: {routed_landed}")
        return [
            Comparison(
                key="connect_tls_default" if tls_default else "connect_ssl_disabled",
                title=f"connect(), {label}",
                baseline=bench.results["raw"],
                candidate=bench.results["sqlrouter"],
                target=CONNECT_TARGET,
                extra={
                    "kwargs": kwargs,
                    "landed_raw": dict(sorted(raw_landed.items())),
                    "landed_sqlrouter": dict(sorted(routed_landed.items())),
                    "timed": "connect() only; close() is untimed, its CPU counts in CPU/op",
                },
            )
        ]

    return Measurement(bench, finish, lambda: None)


def measure(ctx: Context, plan: Plan) -> list[Comparison]:
    """Every measurement, round by round, in alternating order."""
    measurements: list[Measurement] = []
    try:
        # The first sqlrouter.connect starts the monitor: it happens here, untimed.
        measurements.append(point_select(ctx, plan))
        measurements.append(connect(ctx, plan, tls_default=False))
        measurements.append(connect(ctx, plan, tls_default=True))
        started = time.monotonic()
        with gc_paused():
            for r in range(plan.rounds):
                for m in measurements if r % 2 == 0 else measurements[::-1]:
                    m.bench.run_round()
                gc.collect()
                if (r + 1) % 5 == 0 or r + 1 == plan.rounds:
                    _log(f"round {r + 1}/{plan.rounds} ({time.monotonic() - started:.0f}s)")
        return [c for m in measurements for c in m.finish()]
    finally:
        for m in measurements:
            m.close()


@dataclass(frozen=True, slots=True)
class _Found:
    """``handle_for``'s ``find`` seam, returning a registry found beforehand."""

    registry: Registry

    def __call__(self, spec: str | None) -> Registry:
        return self.registry


def staged_connect(ctx: Context, kwargs: dict[str, Any], *, calls: int) -> dict[str, float]:
    """Median time of each step of ``sqlrouter.connect(url, **kwargs)``, measured in situ.

    The same steps as ``sqlrouter.connect`` (parse, find the registry, find the
    service's handle, open the routed connection), each timed, alternating with a raw
    PyMySQL connect as in the benchmark.  In a tight loop of its own a step runs from
    warm CPU caches and looks about three times cheaper than between two connects.
    """
    clock = time.perf_counter_ns
    targets = itertools.cycle(ctx.replicas)
    names = (
        "parse_url(url, **kwargs)",
        "find_registry(registry)",
        "handle_for(...) (registry found)",
        "Connection(url, handle): route + PyMySQL connect",
        "raw pymysql.connect, for comparison",
    )
    times: dict[str, list[int]] = {name: [] for name in names}
    for _ in range(calls):
        t0 = clock()
        parsed = parse_url(ctx.url, **kwargs)
        t1 = clock()
        creds = Credentials(parsed.user or "", parsed.password or "")
        registry = find_registry(parsed.registry)
        t2 = clock()
        handle = handle_for(parsed.registry, parsed.service, creds, find=_Found(registry))
        t3 = clock()
        conn = Connection(parsed, handle)
        t4 = clock()
        conn.close()
        t5 = clock()
        raw = _raw_connect(ctx, next(targets), **kwargs)
        t6 = clock()
        raw.close()
        for name, ns in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t6 - t5), strict=True):
            times[name].append(ns)
    out: dict[str, float] = {name: median(v) for name, v in times.items()}
    out["n"] = calls
    return out


def profile_connect(ctx: Context, plan: Plan) -> tuple[str, str]:
    """Where sqlrouter.connect's time goes (ssl_disabled), three ways.

    1. Interleaved, like the benchmark: raw PyMySQL, ``Connection(parsed URL, handle)``
       (routing, PyMySQL's connect, session setup), ``sqlrouter.connect(ServiceURL)``
       (plus the registry and service lookup), ``sqlrouter.connect(str)`` (plus parsing).
    2. Each step of ``sqlrouter.connect`` timed between real connects
       (:func:`staged_connect`).
    3. cProfile of both sides.

    Returns the first two as Markdown (for docs/benchmarks.md), and the third.
    """
    kwargs: dict[str, Any] = {"autocommit": True, "ssl_disabled": True}
    parsed = parse_url(ctx.url, **kwargs)
    creds = Credentials(parsed.user or "", parsed.password or "")
    handle = handle_for(parsed.registry, parsed.service, creds)
    targets = itertools.cycle(ctx.replicas)

    def raw() -> AnyConnection:
        return _raw_connect(ctx, next(targets), ssl_disabled=True)

    bench = Interleaved(
        {
            "raw pymysql.connect": connect_block(raw),
            "Connection(ServiceURL, handle)": connect_block(lambda: Connection(parsed, handle)),
            "sqlrouter.connect(ServiceURL)": connect_block(lambda: sqlrouter.connect(parsed)),
            "sqlrouter.connect(str, **kw)": connect_block(
                lambda: sqlrouter.connect(ctx.url, **kwargs)
            ),
        },
        block=plan.connect_block,
        alternations=plan.connect_alternations,
    )
    bench.warmup(plan.connect_warmup)
    with gc_paused():
        for _ in range(max(plan.rounds // 3, 2)):
            bench.run_round()
            gc.collect()
    res = bench.results
    base = res["raw pymysql.connect"]
    rows = []
    for name, side in res.items():
        s = side.summary()
        rows.append(
            [
                name,
                format_ns(s.median),
                format_ns(s.median - base.summary().median),
                format_ns(side.cpu_thread_per_op()),
                format_ns(side.cpu_thread_per_op() - base.cpu_thread_per_op()),
            ]
        )
    stages = staged_connect(ctx, kwargs, calls=plan.connect_block * plan.connect_alternations * 5)
    summary = "\n".join(
        [
            f"`connect()` with `ssl_disabled=True`, variants interleaved ({base.ops} each):",
            "",
            markdown_table(["variant", "median", "vs raw", "main-thread CPU/op", "vs raw"], rows),
            "",
            f"`sqlrouter.connect` step by step, between real connects ({stages['n']:.0f} each):",
            "",
            markdown_table(
                ["step", "median"], [[k, format_ns(v)] for k, v in stages.items() if k != "n"]
            ),
        ]
    )
    parts = []

    def routed_call() -> None:
        sqlrouter.connect(ctx.url, **kwargs).close()

    def raw_call() -> None:
        raw().close()

    for name, fn in (("sqlrouter.connect", routed_call), ("pymysql.connect", raw_call)):
        parts.append(f"=== cProfile: {name}, ssl_disabled=True, {plan.profile_calls} calls ===")
        parts.append(profile_calls(fn, plan.profile_calls))
    return summary, "\n".join(parts)


def profile_point_select(ctx: Context, plan: Plan) -> str:
    """cProfile of ``plan.profile_calls * 10`` point selects on each side, same replica."""
    routed = sqlrouter.connect(ctx.url, autocommit=True)
    ds = routed.datasource
    assert ds is not None
    raw = _raw_connect(ctx, Target(ds.name, ds.host, ds.port))
    calls = plan.profile_calls * 10
    parts = []
    try:
        for name, conn in (("sqlrouter", routed), ("raw", raw)):
            run = query_block([conn])
            run(1000)
            parts.append(f"=== cProfile: point select on {ds.name}, {name}, {calls} queries ===")
            parts.append(profile_calls(functools.partial(run, 1), calls))
    finally:
        raw.close()
        routed.close()
    return "\n".join(parts)


# --------------------------------------------------------------------------- report


def report(
    comparisons: Sequence[Comparison], machine: dict[str, str], plan: Plan, when: dt.datetime
) -> str:
    """The Markdown block printed, and pasted into docs/benchmarks.md."""
    lines = [
        f"Measured {when:%Y-%m-%d %H:%M} UTC on {machine['cpu']} ({machine['cores']} cores, "
        f"{machine['os']}), Python {machine['python']}, PyMySQL {machine['pymysql']}, "
        f"MariaDB {machine['server']}; {plan.rounds} rounds.",
        "",
        comparison_table(comparisons),
        "",
    ]
    overhead_rows = []
    for c in comparisons:
        overhead_rows.append(
            [
                c.title,
                format_ns(c.paired_difference()),
                format_ns(c.baseline.cpu_thread_per_op()),
                format_ns(c.candidate.cpu_thread_per_op()),
                f"{c.cpu_thread_ratio:.3f}",
            ]
        )
    lines += [
        markdown_table(
            [
                "measurement",
                "sqlrouter - raw (paired median)",
                "main-thread CPU/op raw",
                "main-thread CPU/op sqlrouter",
                "ratio",
            ],
            overhead_rows,
        ),
        "",
    ]
    for c in comparisons:
        if c.key == "point_select":
            lines.append(
                f"- Point select: on replica {c.extra['replica']}, {plan.query_connections} "
                "connections per side (raw, sqlrouter, and raw again for the A/A control) "
                f"used in turn, {c.baseline.ops} queries per side, the same id sequence, "
                f"interleaved in blocks of {plan.query_block}."
            )
        elif "landed_raw" in c.extra:
            lines.append(
                f"- {c.title}: raw opened {_landings(c.extra['landed_raw'])}; "
                f"sqlrouter {_landings(c.extra['landed_sqlrouter'])}."
            )
    lines += [
        "",
        f"Reproduce: `{COMMAND} --update-docs` (JSON: `docs/benchmarks/routing.json`).",
    ]
    return "\n".join(lines)


def _landings(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} on {name}" for name, n in counts.items())


def _payload(
    comparisons: Sequence[Comparison], machine: dict[str, str], plan: Plan, when: dt.datetime
) -> dict[str, Any]:
    return {
        "benchmark": "routing",
        "format": 1,
        "date": when.isoformat(timespec="seconds"),
        "command": COMMAND,
        "machine": machine,
        "plan": dataclasses.asdict(plan),
        "results": [c.to_json() for c in comparisons],
    }


# --------------------------------------------------------------------------- main


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_routing",
        description="Measure what sqlrouter adds to a point select and to connect(), "
        "against plain PyMySQL on the same replica of a local sandbox cluster.",
        epilog="Exit status: 0 when every target is met, 1 when one is missed, 130 when "
        "interrupted (the sandbox is destroyed in every case).",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"interleaved rounds (default {DEFAULT_ROUNDS}: about a minute in all)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help="where to write the results (default docs/benchmarks/routing.json)",
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite the results (and, with --profile, the profile) sections of "
        "docs/benchmarks.md",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also show where sqlrouter.connect (ssl_disabled) and the point select spend "
        "their time: interleaved variants, in-situ steps, cProfile",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="parent directory of the temporary sandbox (default: the system temp dir)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error(f"--rounds must be at least 2 (ABBA interleaving), got {args.rounds}")
    return args


def run(args: argparse.Namespace) -> int:
    plan = Plan(rounds=args.rounds)
    started = time.monotonic()
    with bench_sandbox(args.dir, "sqlrouter-bench-", _log) as sb:
        fill_table(sb)
        ctx = Context.of(sb)
        comparisons = measure(ctx, plan)
        profile: tuple[str, str] | None = None
        if args.profile:
            _log("profiling")
            summary, details = profile_connect(ctx, plan)
            profile = summary, details + "\n" + profile_point_select(ctx, plan)

    when = dt.datetime.now(dt.UTC)
    machine = machine_info(server=ctx.server_version)
    text = report(comparisons, machine, plan, when)
    print(text)
    if profile is not None:
        print(f"\n{profile[0]}\n\n{profile[1]}")
    path = write_json(args.json, _payload(comparisons, machine, plan, when))
    _log(f"results written to {path}")
    if args.update_docs:
        doc = replace_section(DOCS.read_text(encoding="utf-8"), SECTION, text)
        if profile is not None:
            head = f"Profiled {when:%Y-%m-%d %H:%M} UTC, in the run above (`--profile`).\n\n"
            doc = replace_section(doc, PROFILE_SECTION, head + profile[0])
        DOCS.write_text(doc, encoding="utf-8")
        _log(f"updated {DOCS}")
    _log(f"done in {time.monotonic() - started:.0f}s")
    return 0 if all(c.met is not False for c in comparisons) else 1


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
