"""What sqlrouter.aio costs: against raw aiomysql on the same replica.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_aio [--rounds N] [--json PATH] [--update-docs]

It starts its own sandbox (1 master + 2 replicas, destroyed at the end, also on Ctrl-C
or SIGTERM), fills a 10 000-row table, and measures, interleaved in blocks (the method
of ``benchmarks/_common.py`` and ``docs/benchmarks.md``), in one event loop:

1. a point select by primary key, one task, on open autocommit connections: raw
   aiomysql connections to the replica that ``sqlrouter.aio.connect(RO_RELAXED URL)``
   landed on vs those sqlrouter connections, plus more raw connections as an A/A
   control (target: paired ratio of the medians <= 1.03);
2. throughput of the same select with 1, 16 and 128 concurrent tasks, each on a
   connection of its own (raw and sqlrouter, same replica): queries per second of each
   side, and the paired ratio of the latencies.

It prints Markdown, writes JSON (``docs/benchmarks/aio.json`` by default), records the
machine's load average at the start and the end, and with ``--update-docs`` rewrites
the ``aio`` section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import gc
import itertools
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiomysql

import sqlrouter
import sqlrouter.aio
from sqlrouter.sandbox import Sandbox

from ._common import (
    BlockFn,
    Comparison,
    Interleaved,
    bench_sandbox,
    comparison_table,
    fill_table,
    format_ns,
    machine_info,
    markdown_table,
    replace_section,
    run_main,
    write_json,
)

ROOT: Final = Path(__file__).resolve().parents[1]
DOCS: Final = ROOT / "docs" / "benchmarks.md"
SECTION: Final = "aio"
DEFAULT_JSON: Final = ROOT / "docs" / "benchmarks" / "aio.json"
COMMAND: Final = ".venv/bin/python -m benchmarks.bench_aio"
TABLE: Final = "bench_aio"
ROWS: Final = 10_000
POINT_SELECT: Final = f"SELECT id, k, c FROM {TABLE} WHERE id = %s"
#: The largest paired ratio of point-select medians accepted (issue 16).
QUERY_TARGET: Final = 1.03
CONCURRENCY: Final = (1, 16, 128)


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    query_connections: int = 3
    query_block: int = 20
    query_alternations: int = 2
    query_warmup: int = 2000
    #: Queries of each task in one throughput block.
    per_task: int = 20


def _log(message: str) -> None:
    print(f"bench_aio: {message}", file=sys.stderr, flush=True)


class Bench:
    """The connections of both sides, and the loop they live in."""

    def __init__(self, sb: Sandbox, runner: asyncio.Runner) -> None:
        self.sb = sb
        self.runner = runner
        st = sb.state
        self.url = sb.url("RO_RELAXED", max_lag=5)
        self.user, self.password, self.database = st.app.user, st.app.password, st.database
        self.ids = random.Random(7)
        self.opened: list[Any] = []

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    async def routed(self, count: int, where: str | None) -> list[sqlrouter.aio.Connection]:
        """``count`` sqlrouter connections on one replica (``where``, or the first's)."""
        kept: list[sqlrouter.aio.Connection] = []
        for _ in range(count * 10 + 10):
            conn = await sqlrouter.aio.connect(self.url, autocommit=True, ssl_disabled=True)
            if where is None:
                where = conn.datasource_name
            if conn.datasource_name == where:
                kept.append(conn)
                if len(kept) == count:
                    self.opened += kept
                    return kept
            else:
                conn.close()
        raise RuntimeError(f"sqlrouter.aio did not open {count} connections on {where}")

    async def raw(self, count: int, where: str) -> list[aiomysql.Connection]:
        node = self.sb.node(where)
        conns = [
            await aiomysql.connect(
                host="127.0.0.1",
                port=node.port,
                user=self.user,
                password=self.password,
                db=self.database,
                autocommit=True,
            )
            for _ in range(count)
        ]
        self.opened += conns
        return conns

    def close(self) -> None:
        for conn in self.opened:
            conn.close()

    async def selects(self, conn: Any, n: int, out: list[int]) -> None:
        """``n`` point selects on ``conn``, each timed into ``out``."""
        async with conn.cursor() as cur:
            for _ in range(n):
                key = self.ids.randint(1, ROWS)
                t0 = time.perf_counter_ns()
                await cur.execute(POINT_SELECT, (key,))
                await cur.fetchall()
                out.append(time.perf_counter_ns() - t0)

    def point_block(self, conns: Sequence[Any]) -> BlockFn:
        """A block: ``n`` point selects on the side's next connection."""
        cycle = itertools.cycle(conns)

        async def block(n: int) -> list[int]:
            out: list[int] = []
            await self.selects(next(cycle), n, out)
            return out

        return lambda n: self.run(block(n))

    def concurrent_block(self, conns: Sequence[Any], per_task: int) -> BlockFn:
        """A block: every connection's task runs ``per_task`` selects at once."""

        async def block(n: int) -> list[int]:
            del n  # the block is len(conns) * per_task queries
            out: list[int] = []
            await asyncio.gather(*(self.selects(c, per_task, out) for c in conns))
            return out

        return lambda n: self.run(block(n))


def measure(bench: Bench, plan: Plan) -> tuple[list[Comparison], dict[int, dict[str, float]]]:
    routed = bench.run(bench.routed(plan.query_connections, None))
    where = routed[0].datasource_name
    assert where is not None
    raw = bench.run(bench.raw(plan.query_connections, where))
    raw2 = bench.run(bench.raw(plan.query_connections, where))
    point = Interleaved(
        {
            "raw": bench.point_block(raw),
            "sqlrouter": bench.point_block(routed),
            "raw2": bench.point_block(raw2),
        },
        block=plan.query_block,
        alternations=plan.query_alternations,
    )
    point.warmup(plan.query_warmup)
    throughput: dict[int, Interleaved] = {}
    for tasks in CONCURRENCY:
        side_raw = bench.run(bench.raw(tasks, where))
        side_routed = bench.run(bench.routed(tasks, where))
        side_raw2 = bench.run(bench.raw(tasks, where))
        throughput[tasks] = Interleaved(
            {
                "raw": bench.concurrent_block(side_raw, plan.per_task),
                "sqlrouter": bench.concurrent_block(side_routed, plan.per_task),
                "raw2": bench.concurrent_block(side_raw2, plan.per_task),
            },
            block=tasks * plan.per_task,
        )
        throughput[tasks].warmup(1)
    _log(f"measuring on {where}: {plan.rounds} rounds")
    gc.collect()
    gc.disable()
    try:
        for n in range(plan.rounds):
            point.run_round()
            for inter in throughput.values():
                inter.run_round()
            gc.collect()
            if n % 5 == 4:
                _log(f"round {n + 1}/{plan.rounds}")
    finally:
        gc.enable()
    res = point.results
    extra = {"replica": where, "rows": ROWS, "sql": POINT_SELECT}
    comparisons = [
        Comparison(
            "aio_point_select",
            "async point select by PK",
            res["raw"],
            res["sqlrouter"],
            target=QUERY_TARGET,
            extra=extra,
        ),
        Comparison(
            "aio_point_select_aa",
            "A/A control: raw vs other raw conns",
            res["raw"],
            res["raw2"],
            extra=extra,
        ),
    ]
    rates: dict[int, dict[str, float]] = {}
    for tasks, inter in throughput.items():
        r = inter.results
        comparisons.append(
            Comparison(
                f"aio_tasks_{tasks}",
                f"{tasks} concurrent tasks: latency",
                r["raw"],
                r["sqlrouter"],
                extra={**extra, "tasks": tasks},
            )
        )
        rates[tasks] = {
            side: r[side].ops / (r[side].wall_ns / 1e9) for side in ("raw", "sqlrouter", "raw2")
        }
    return comparisons, rates


def report(
    comparisons: Sequence[Comparison],
    rates: dict[int, dict[str, float]],
    *,
    machine: dict[str, str],
    plan: Plan,
    when: dt.datetime,
    load: dict[str, list[float]],
) -> str:
    lines = [
        f"Measured {when:%Y-%m-%d %H:%M} UTC on {machine['cpu']} ({machine['cores']} cores, "
        f"{machine['os']}), Python {machine['python']}, aiomysql {aiomysql.__version__}, "
        f"MariaDB {machine['server']}; {plan.rounds} rounds; load average "
        f"{', '.join(f'{x:.2f}' for x in load['start'])} at the start, "
        f"{', '.join(f'{x:.2f}' for x in load['end'])} at the end.",
        "",
        comparison_table(comparisons),
        "",
        markdown_table(
            [
                "concurrent tasks",
                "queries/s raw aiomysql",
                "queries/s sqlrouter.aio",
                "ratio",
                "A/A: queries/s other raw conns",
                "A/A ratio",
            ],
            [
                [
                    t,
                    f"{r['raw']:.0f}",
                    f"{r['sqlrouter']:.0f}",
                    f"{r['sqlrouter'] / r['raw']:.3f}",
                    f"{r['raw2']:.0f}",
                    f"{r['raw2'] / r['raw']:.3f}",
                ]
                for t, r in rates.items()
            ],
        ),
        "",
        f"- Point select: {plan.query_connections} connections per side on replica "
        f"{comparisons[0].extra['replica']}, one task, blocks of {plan.query_block}; "
        f"sqlrouter - raw (paired median): {format_ns(comparisons[0].paired_difference())}.",
        f"- Throughput: each task on a connection of its own, {plan.per_task} queries per "
        "task per block, the three sides' blocks interleaved (raw, sqlrouter, and other raw "
        "connections as an A/A control); queries/s is each side's queries over the wall "
        "time of its blocks.",
        "",
        f"Reproduce: `{COMMAND} --update-docs` (JSON: `docs/benchmarks/aio.json`).",
    ]
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_aio",
        description="Measure sqlrouter.aio against raw aiomysql on one replica of a local "
        "sandbox cluster.",
        epilog="Exit status: 0 when the target is met, 1 when it is missed, 130 when "
        "interrupted (the sandbox is destroyed in every case).",
    )
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    parser.add_argument("--update-docs", action="store_true", help="rewrite docs section")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the sandbox dir")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error(f"--rounds must be at least 2 (ABBA interleaving), got {args.rounds}")
    return args


def run(args: argparse.Namespace) -> int:
    plan = Plan(rounds=args.rounds)
    load = {"start": list(os.getloadavg())}
    with bench_sandbox(args.dir, "sqlrouter-bench-aio-", _log) as sb:
        fill_table(
            sb,
            TABLE,
            "id INT PRIMARY KEY, k INT NOT NULL, c CHAR(60) NOT NULL, KEY (k)",
            lambda i, rng: (i, rng.randint(1, ROWS), f"{rng.getrandbits(128):032x}"),
            ROWS,
        )
        server = str(sb.query(sb.master.name, "SELECT VERSION()")[0][0])
        with asyncio.Runner() as runner:
            bench = Bench(sb, runner)
            try:
                comparisons, rates = measure(bench, plan)
            finally:
                bench.close()
    load["end"] = list(os.getloadavg())
    when = dt.datetime.now(dt.UTC)
    machine = machine_info(server=server, aiomysql=aiomysql.__version__)
    text = report(comparisons, rates, machine=machine, plan=plan, when=when, load=load)
    print(text)
    payload = {
        "benchmark": "aio",
        "format": 1,
        "date": when.isoformat(timespec="seconds"),
        "command": COMMAND,
        "machine": machine,
        "load": load,
        "plan": dataclasses.asdict(plan),
        "throughput_qps": {str(k): v for k, v in rates.items()},
        "results": [c.to_json() for c in comparisons],
    }
    _log(f"results written to {write_json(args.json, payload)}")
    if args.update_docs:
        DOCS.write_text(replace_section(DOCS.read_text(encoding="utf-8"), SECTION, text))
        _log(f"updated {DOCS}")
    return 0 if all(c.met is not False for c in comparisons) else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, _parse_args(argv), _log)


if __name__ == "__main__":
    sys.exit(main())
