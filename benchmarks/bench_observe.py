"""What observing costs: sqlrouter with Prometheus metrics and OpenTelemetry spans on,
against sqlrouter without them, and both against raw PyMySQL, in the same run.

Run from the repository root (the ``metrics`` extra and opentelemetry-sdk installed, as
``.[dev]`` does)::

    .venv/bin/python -m benchmarks.bench_observe [--rounds N] [--json PATH] [--update-docs]

It starts its own sandbox (destroyed at the end), fills the point-select table of
``bench_routing``, and measures, interleaved in blocks (``benchmarks/_common.py``):

1. a point select by primary key on open autocommit connections to one replica: raw
   PyMySQL, sqlrouter, and sqlrouter *observed*, the same sqlrouter connections with
   :mod:`sqlrouter.observe.metrics` and :mod:`sqlrouter.observe.otel` registered during
   its blocks (an SDK ``TracerProvider`` with no exporter, a fresh Prometheus registry);
2. ``connect()`` (``ssl_disabled=True``), the same three ways: a connect is where
   sqlrouter hands records to the observers.

The figure the issue asks for is the ratio of the observed side to sqlrouter alone
(target: within 1 % for the point select); the ratios against raw PyMySQL are beside it.
With ``--update-docs`` it rewrites the ``observe`` section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

import sqlrouter
from sqlrouter import telemetry
from sqlrouter.observe.metrics import Metrics
from sqlrouter.observe.otel import Tracing

from ._common import (
    BlockFn,
    Comparison,
    Interleaved,
    bench_sandbox,
    comparison_table,
    gc_paused,
    interrupt_on_sigterm,
    machine_info,
    replace_section,
    write_json,
)
from .bench_routing import (
    AnyConnection,
    Context,
    Plan,
    Target,
    _raw_connect,
    _routed_on,
    connect_block,
    fill_table,
    query_block,
)

ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_JSON: Final = ROOT / "docs" / "benchmarks" / "observe.json"
DOCS: Final = ROOT / "docs" / "benchmarks.md"
SECTION: Final = "observe"
COMMAND: Final = ".venv/bin/python -m benchmarks.bench_observe"
#: The largest acceptable observed/unobserved paired ratio of the point select.
QUERY_TARGET: Final = 1.01
DEFAULT_ROUNDS: Final = 20


def _log(message: str) -> None:
    print(f"[bench_observe] {message}", file=sys.stderr, flush=True)


class Observers:
    """Metrics and tracing built once; registered only while an observed block runs."""

    def __init__(self) -> None:
        self.metrics = Metrics(registry=CollectorRegistry())
        self.tracer_provider = TracerProvider()  # no span processor: no exporter
        self.meter_provider = MeterProvider()  # no reader: no exporter
        self.tracing = Tracing(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def observed(self, run: BlockFn) -> BlockFn:
        def block(n: int) -> list[int]:
            self.metrics.start()
            self.tracing.start()
            try:
                return run(n)
            finally:
                self.tracing.close()
                self.metrics.stop()

        return block

    def close(self) -> None:
        self.metrics.close()
        self.tracing.close()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _three(
    key: str, title: str, bench: Interleaved, target: float | None, extra: dict[str, Any]
) -> list[Comparison]:
    res = bench.results
    pairs = (
        ("observed_vs_plain", "observed vs sqlrouter", "sqlrouter", "observed", target),
        ("plain_vs_raw", "sqlrouter vs raw", "raw", "sqlrouter", None),
        ("observed_vs_raw", "observed vs raw", "raw", "observed", None),
    )
    return [
        Comparison(
            key=f"{key}_{suffix}",
            title=f"{title}: {what}",
            baseline=res[baseline],
            candidate=res[candidate],
            target=goal,
            extra=extra,
        )
        for suffix, what, baseline, candidate, goal in pairs
    ]


def measure(ctx: Context, plan: Plan, observers: Observers) -> list[Comparison]:
    routed = _routed_on(ctx, plan.query_connections)
    ds = routed[0].datasource
    assert ds is not None
    raw = [_raw_connect(ctx, Target(ds.name, ds.host, ds.port)) for _ in routed]
    query = Interleaved(
        {
            "raw": query_block(raw),
            "sqlrouter": query_block(routed),
            "observed": observers.observed(query_block(routed)),
        },
        block=plan.query_block,
        alternations=plan.query_alternations,
    )
    targets = itertools.cycle(ctx.replicas)

    def raw_open() -> AnyConnection:
        return _raw_connect(ctx, next(targets), ssl_disabled=True)

    def routed_open() -> AnyConnection:
        return sqlrouter.connect(ctx.url, autocommit=True, ssl_disabled=True)

    connects = Interleaved(
        {
            "raw": connect_block(raw_open),
            "sqlrouter": connect_block(routed_open),
            "observed": observers.observed(connect_block(routed_open)),
        },
        block=plan.connect_block,
        alternations=plan.connect_alternations,
    )
    query.warmup(plan.query_warmup)
    connects.warmup(plan.connect_warmup)
    benches = [query, connects]
    started = time.monotonic()
    try:
        with gc_paused():
            for r in range(plan.rounds):
                for bench in benches if r % 2 == 0 else benches[::-1]:
                    bench.run_round()
                gc.collect()
                if (r + 1) % 5 == 0 or r + 1 == plan.rounds:
                    _log(f"round {r + 1}/{plan.rounds} ({time.monotonic() - started:.0f}s)")
    finally:
        for conn in [*raw, *routed]:
            conn.close()
    if telemetry.observers:
        raise RuntimeError("an observer stayed registered after its blocks")
    counted = observers.metrics.registry.get_sample_value(
        "sqlrouter_connects_total",
        {"service": "sandbox", "datasource": ds.name, "qos": "RO_RELAXED", "outcome": "ok"},
    )
    extra = {"replica": ds.name, "observed_connects_counted_on_replica": counted}
    return [
        *_three("point_select", "point select by PK", query, QUERY_TARGET, extra),
        *_three("connect", "connect(), ssl_disabled=True", connects, None, extra),
    ]


def report(
    comparisons: Sequence[Comparison], machine: dict[str, str], plan: Plan, when: dt.datetime
) -> str:
    return "\n".join(
        [
            f"Measured {when:%Y-%m-%d %H:%M} UTC on {machine['cpu']} ({machine['cores']} "
            f"cores, {machine['os']}, load {machine.get('load', '?')}), Python "
            f"{machine['python']}, PyMySQL {machine['pymysql']}; {plan.rounds} rounds. "
            "*observed*: the same sqlrouter connections with metrics (a fresh Prometheus "
            "registry) and tracing (an SDK TracerProvider and MeterProvider, no exporter) "
            'registered.  In the *observed vs sqlrouter* rows, "raw" is sqlrouter alone.',
            "",
            comparison_table(comparisons),
            "",
            f"Reproduce: `{COMMAND} --update-docs` (JSON: `docs/benchmarks/observe.json`).",
        ]
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_observe",
        description="Measure what metrics and tracing add to a point select and connect().",
    )
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error(f"--rounds must be at least 2 (ABBA interleaving), got {args.rounds}")
    return args


def run(args: argparse.Namespace, *, load: Callable[[], str]) -> int:
    plan = Plan(rounds=args.rounds)  # bench_routing's blocks and warm-ups
    observers = Observers()
    try:
        with bench_sandbox(args.dir, "sqlrouter-bench-", _log) as sb:
            fill_table(sb)
            ctx = Context.of(sb)
            comparisons = measure(ctx, plan, observers)
    finally:
        observers.close()
    when = dt.datetime.now(dt.UTC)
    machine = machine_info(load=load())
    text = report(comparisons, machine, plan, when)
    print(text)
    payload = {
        "benchmark": "observe",
        "format": 1,
        "date": when.isoformat(timespec="seconds"),
        "command": COMMAND,
        "machine": machine,
        "plan": dataclasses.asdict(plan),
        "results": [c.to_json() for c in comparisons],
    }
    _log(f"results written to {write_json(args.json, payload)}")
    if args.update_docs:
        DOCS.write_text(
            replace_section(DOCS.read_text(encoding="utf-8"), SECTION, text), encoding="utf-8"
        )
        _log(f"updated {DOCS}")
    return 0 if all(c.met is not False for c in comparisons) else 1


def _load() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    with interrupt_on_sigterm():
        try:
            return run(args, load=_load)
        except KeyboardInterrupt:
            _log("interrupted; the sandbox was destroyed")
            return 130


if __name__ == "__main__":
    sys.exit(main())
