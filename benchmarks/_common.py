"""Timing, statistics and reporting helpers shared by the benchmarks.

A benchmark compares a *baseline* (plain PyMySQL) with a *candidate* (sqlrouter)
doing the same work on the same server.  :class:`Interleaved` alternates the two in
small blocks (ABBA order: A B, B A, A B...), so that machine noise (the other core's
load, the monitor thread, CPU frequency) falls on both alike; each block returns its
per-operation latencies and the helper adds the CPU time the block used.
:class:`Comparison` turns two :class:`SideResult` into medians, p99s and ratios,
:func:`markdown_table` renders them, :func:`replace_section` rewrites a marked part of
a document, and :func:`machine_info` says what the figures were measured on.

The statistics functions are pure (no clock, no I/O): ``tests/unit/test_bench_stats.py``
checks them.
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
import random
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlrouter
from sqlrouter.sandbox import Sandbox

__all__ = [
    "BlockFn",
    "Comparison",
    "Interleaved",
    "SideResult",
    "Summary",
    "comparison_table",
    "format_ns",
    "format_ratio",
    "gc_paused",
    "interrupt_on_sigterm",
    "machine_info",
    "markdown_table",
    "median",
    "median_ci",
    "profile_calls",
    "quantile",
    "ratio",
    "replace_section",
    "run_interleaved",
    "run_main",
    "write_json",
]

#: A block of a benchmark: run ``n`` operations, return each one's latency in ns.
BlockFn = Callable[[int], list[int]]

# --------------------------------------------------------------------------- statistics


def quantile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 <= q <= 1) of ``samples``, interpolating linearly.

    The definition NumPy uses by default (Hyndman & Fan type 7): position
    ``q * (n - 1)`` in the sorted samples, between the two neighbours.  So ``quantile(x,
    0.5)`` is the median and ``quantile(x, 1)`` the maximum.
    """
    if not samples:
        raise ValueError("quantile of no samples: expected at least one value")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q={q!r}: expected a number between 0 and 1")
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    frac = pos - low
    return ordered[low] + (ordered[high] - ordered[low]) * frac


def median(samples: Sequence[float]) -> float:
    """The median (the mean of the two middle values for an even count)."""
    if not samples:
        raise ValueError("median of no samples: expected at least one value")
    return float(statistics.median(samples))


def ratio(candidate: float, baseline: float) -> float:
    """``candidate / baseline``: 1.05 means the candidate costs 5 % more."""
    if baseline <= 0:
        raise ValueError(f"ratio against a baseline of {baseline!r}: expected a value > 0")
    return candidate / baseline


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median of ``values``.

    The order statistics of ranks ``floor((n - z*sqrt(n)) / 2)`` and ``ceil(1 + (n +
    z*sqrt(n)) / 2)`` (1-based, clamped to the sample), ``z`` the normal quantile of
    ``confidence``: the interval holds the true median with probability about
    ``confidence`` when the values are independent.  For 100 values at 95 %: the 40th
    and the 61st.
    """
    if not values:
        raise ValueError("confidence interval of no values: expected at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence!r}: expected a number between 0 and 1")
    ordered = sorted(values)
    n = len(ordered)
    half = statistics.NormalDist().inv_cdf((1.0 + confidence) / 2.0) * math.sqrt(n) / 2.0
    low = max(math.floor(n / 2.0 - half), 1)
    high = min(math.ceil(1.0 + n / 2.0 + half), n)
    return float(ordered[low - 1]), float(ordered[high - 1])


@dataclass(frozen=True, slots=True)
class Summary:
    """Order statistics of a set of samples (in the samples' unit)."""

    n: int
    median: float
    p99: float
    mean: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("summary of no samples: expected at least one value")
        return cls(
            n=len(samples),
            median=median(samples),
            p99=quantile(samples, 0.99),
            mean=statistics.fmean(samples),
            minimum=float(min(samples)),
            maximum=float(max(samples)),
        )


# --------------------------------------------------------------------------- running


@dataclass(slots=True)
class SideResult:
    """What one side of a comparison measured, over all its blocks."""

    label: str
    #: Per-operation latencies (ns), in the order they were measured.
    samples: list[int] = field(default_factory=list)
    #: The latencies of each block, in order: block ``i`` of every side of an
    #: :class:`Interleaved` ran in the same switch, next to each other in time.
    blocks: list[list[int]] = field(default_factory=list)
    #: CPU time of the whole process (every thread) spent in this side's blocks.
    cpu_process_ns: int = 0
    #: CPU time of the measuring thread alone spent in this side's blocks.
    cpu_thread_ns: int = 0
    #: Wall time spent in this side's blocks.
    wall_ns: int = 0

    @property
    def ops(self) -> int:
        return len(self.samples)

    def summary(self) -> Summary:
        return Summary.of(self.samples)

    def cpu_process_per_op(self) -> float:
        return self.cpu_process_ns / self.ops if self.ops else 0.0

    def cpu_thread_per_op(self) -> float:
        return self.cpu_thread_ns / self.ops if self.ops else 0.0


class Interleaved:
    """Two or more sides measured in alternation, round after round.

    A *round* runs ``alternations`` switches; at each switch every side runs one block
    of ``block`` operations.  The order changes at every switch (:func:`switch_order`:
    A B, B A, A B... for two sides; shuffled for three or more), so that each side runs
    in each position, and after each other side, equally often, and, with three sides
    or more, never twice in a row (it would find its data still in the CPU caches: a
    few percent faster on point selects).  Blocks are small because the noise of a busy machine
    comes in episodes of tens of milliseconds: a side whose whole block fell in one
    would be charged for it alone.  Block ``i`` of every side ran in the same switch,
    which gives paired ratios (:meth:`Comparison.paired_ratios`).

    Several :class:`Interleaved` can take turns round by round (see the benchmarks),
    so that slow drift during a run also falls on every measurement alike.
    """

    def __init__(self, sides: Mapping[str, BlockFn], *, block: int, alternations: int = 2):
        if block < 1 or alternations < 1:
            raise ValueError(f"block={block}, alternations={alternations}: both must be >= 1")
        if len(sides) < 2:
            raise ValueError(f"interleaving needs at least two sides, got {list(sides)}")
        self.sides = dict(sides)
        self.block = block
        self.alternations = alternations
        self.results = {name: SideResult(name) for name in self.sides}
        self._switches = 0
        self._previous: list[str] = []

    @property
    def ops_per_round(self) -> int:
        """Operations of each side per round."""
        return self.block * self.alternations

    def warmup(self, ops: int) -> None:
        """Run ``ops`` operations of each side and forget them."""
        if ops > 0:
            for fn in self.sides.values():
                fn(ops)

    def run_round(self) -> None:
        for _ in range(self.alternations):
            order = switch_order(list(self.sides), self._switches, self._previous)
            self._previous = order
            for name in order:
                res = self.results[name]
                wall0 = time.perf_counter_ns()
                cpu0 = time.process_time_ns()
                thr0 = time.thread_time_ns()
                latencies = self.sides[name](self.block)
                res.cpu_thread_ns += time.thread_time_ns() - thr0
                res.cpu_process_ns += time.process_time_ns() - cpu0
                res.wall_ns += time.perf_counter_ns() - wall0
                res.samples.extend(latencies)
                res.blocks.append(latencies)
            self._switches += 1


def switch_order(names: Sequence[str], switch: int, previous: Sequence[str] = ()) -> list[str]:
    """The order of the sides at switch number ``switch`` (see :class:`Interleaved`).

    Two sides: A B, then B A, and so on.  Three or more: a shuffle (seeded by
    ``switch``, so runs are reproducible) whose first side is not the last side of
    ``previous``, so that every side follows every other equally often on average and
    none runs twice in a row.
    """
    if len(names) == 2:
        return list(names) if switch % 2 == 0 else list(names[::-1])
    order = list(names)
    random.Random(switch).shuffle(order)
    if previous and order[0] == previous[-1]:
        order[0], order[-1] = order[-1], order[0]
    return order


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Garbage collector off (after a collection) while timing; back as it was after.

    Call :func:`gc.collect` between rounds, outside any timing, in long runs.
    """
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def run_interleaved(
    sides: Mapping[str, BlockFn],
    *,
    rounds: int,
    block: int,
    alternations: int = 2,
    warmup: int = 0,
) -> dict[str, SideResult]:
    """Warm up, then run ``rounds`` rounds of :class:`Interleaved`; its results."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: must be at least 1")
    bench = Interleaved(sides, block=block, alternations=alternations)
    bench.warmup(warmup)
    with gc_paused():
        for _ in range(rounds):
            bench.run_round()
            gc.collect()
    return bench.results


@dataclass(frozen=True, slots=True)
class Comparison:
    """Baseline vs candidate for one measurement, with its target ratio."""

    key: str
    title: str
    baseline: SideResult
    candidate: SideResult
    #: The largest acceptable ``candidate / baseline`` ratio of the medians (None: none).
    target: float | None = None
    #: Anything else worth keeping in the JSON (where connections landed...).
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def median_ratio(self) -> float:
        return ratio(self.candidate.summary().median, self.baseline.summary().median)

    @property
    def p99_ratio(self) -> float:
        return ratio(self.candidate.summary().p99, self.baseline.summary().p99)

    @property
    def cpu_ratio(self) -> float:
        return ratio(self.candidate.cpu_process_per_op(), self.baseline.cpu_process_per_op())

    @property
    def cpu_thread_ratio(self) -> float:
        return ratio(self.candidate.cpu_thread_per_op(), self.baseline.cpu_thread_per_op())

    def paired_ratios(self) -> list[float]:
        """Per switch: median of the candidate's block / median of the baseline's.

        The two blocks ran next to each other, so each ratio compares the sides under
        the same machine conditions.
        """
        return [
            ratio(median(c), median(b))
            for c, b in zip(self.candidate.blocks, self.baseline.blocks, strict=True)
        ]

    def paired_difference(self) -> float:
        """Median over switches of (candidate block median - baseline block median)."""
        return median(
            [
                median(c) - median(b)
                for c, b in zip(self.candidate.blocks, self.baseline.blocks, strict=True)
            ]
        )

    def paired_ratio(self) -> tuple[float, float, float]:
        """The median paired ratio and its 95 % confidence interval ``(ratio, low, high)``."""
        values = self.paired_ratios()
        low, high = median_ci(values)
        return median(values), low, high

    @property
    def met(self) -> bool | None:
        """Whether the median paired ratio is within the target (None: no target).

        The paired ratio, not the ratio of the pooled medians: on a busy machine
        latencies are bimodal (a fast and a slow mode, switching every few
        milliseconds), and a pooled median that sits between the modes moves by
        several percent with tiny changes in their mix, even between two identical
        sides; the paired ratio compares blocks that ran side by side.
        """
        return None if self.target is None else self.paired_ratio()[0] <= self.target

    def to_json(self) -> dict[str, Any]:
        def side(res: SideResult) -> dict[str, Any]:
            s = res.summary()
            return {
                "label": res.label,
                "n": s.n,
                "median_ns": s.median,
                "p99_ns": s.p99,
                "mean_ns": s.mean,
                "min_ns": s.minimum,
                "max_ns": s.maximum,
                "cpu_process_ns_per_op": res.cpu_process_per_op(),
                "cpu_thread_ns_per_op": res.cpu_thread_per_op(),
            }

        paired, low, high = self.paired_ratio()
        return {
            "key": self.key,
            "title": self.title,
            "target_median_ratio": self.target,
            "met": self.met,
            "baseline": side(self.baseline),
            "candidate": side(self.candidate),
            "ratios": {
                "median": self.median_ratio,
                "p99": self.p99_ratio,
                "cpu_process": self.cpu_ratio,
                "cpu_thread": self.cpu_thread_ratio,
                "paired_median": paired,
                "paired_difference_ns": self.paired_difference(),
                "paired_median_ci95": [low, high],
            },
            "extra": dict(self.extra),
        }


# --------------------------------------------------------------------------- reporting


def format_ns(ns: float) -> str:
    """A duration for people: ``850 ns``, ``123.4 µs``, ``22.21 ms``, ``1.500 s``."""
    if ns < 0:
        return "-" + format_ns(-ns)
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.2f} ms"
    return f"{ns / 1_000_000_000:.3f} s"


def format_ratio(value: float) -> str:
    return f"{value:.3f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table, columns padded so it reads as plain text too."""
    cells = [[str(h) for h in headers]] + [[str(v) for v in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row {row!r} has {len(row)} cells, expected {len(headers)}")
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    """The standard table: medians, p99s and CPU per op, each with its ratio."""
    headers = [
        "measurement",
        "n/side",
        "median raw",
        "median sqlrouter",
        "ratio of medians",
        "paired ratio [95% CI]",
        "p99 raw",
        "p99 sqlrouter",
        "ratio",
        "CPU/op raw",
        "CPU/op sqlrouter",
        "ratio",
        "target",
    ]
    rows = []
    for c in comparisons:
        b, k = c.baseline.summary(), c.candidate.summary()
        paired, low, high = c.paired_ratio()
        target = "-" if c.target is None else f"paired <= {c.target:.2f}: {_verdict(c.met)}"
        rows.append(
            [
                c.title,
                min(b.n, k.n),
                format_ns(b.median),
                format_ns(k.median),
                format_ratio(c.median_ratio),
                f"{format_ratio(paired)} [{low:.3f}, {high:.3f}]",
                format_ns(b.p99),
                format_ns(k.p99),
                format_ratio(c.p99_ratio),
                format_ns(c.baseline.cpu_process_per_op()),
                format_ns(c.candidate.cpu_process_per_op()),
                format_ratio(c.cpu_ratio),
                target,
            ]
        )
    return markdown_table(headers, rows)


def _verdict(met: bool | None) -> str:
    return "met" if met else "MISSED"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with what lies between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``
    replaced by ``body`` (the markers stay).

    Raises :class:`ValueError` when either marker is missing, repeated, or out of order.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    for marker in (begin, end):
        count = text.count(marker)
        if count != 1:
            found = "is missing" if count == 0 else f"appears {count} times"
            raise ValueError(f"marker {marker!r} {found}: expected exactly one {begin} ... {end}")
    start = text.index(begin) + len(begin)
    stop = text.index(end)
    if stop < start:
        raise ValueError(f"marker {end!r} comes before {begin!r}")
    return text[:start] + "\n" + body.strip("\n") + "\n" + text[stop:]


def write_json(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (creating the directory); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(**extra: str) -> dict[str, str]:
    """CPU model, cores, OS, Python and PyMySQL versions, plus ``extra`` (server...)."""
    import pymysql  # noqa: PLC0415 - only the report needs it

    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count() or "unknown"),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "pymysql": pymysql.VERSION_STRING,
    }
    info.update(extra)
    return info


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """While active, SIGTERM raises :class:`KeyboardInterrupt`, so ``finally`` blocks run."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_main(run: Callable[[Any], int], args: Any, log: Callable[[str], None]) -> int:
    """``run(args)``, with SIGTERM taken as Ctrl-C: 130 when interrupted (the benchmark's
    ``finally`` blocks destroyed its sandbox)."""
    with interrupt_on_sigterm():
        try:
            return run(args)
        except KeyboardInterrupt:
            log("interrupted; the sandbox was destroyed")
            return 130


def profile_calls(fn: Callable[[], object], calls: int, *, top: int = 25) -> str:
    """Run ``fn`` ``calls`` times under cProfile; the ``top`` functions by own time."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        for _ in range(calls):
            fn()
    finally:
        prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(top)
    return out.getvalue()


# --------------------------------------------------------------------------- sandboxes


@contextlib.contextmanager
def bench_sandbox(
    directory: str | None, prefix: str, log: Callable[[str], None]
) -> Iterator[Sandbox]:
    """A fresh sandbox (1 master + 2 replicas) in a temporary directory.

    Its servers die with this process (``ephemeral``); at the end every service of the
    process is shut down, the sandbox destroyed and the directory removed, also on
    Ctrl-C or SIGTERM.
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    sb = Sandbox(tmp / "sb", ephemeral=True, progress=log)
    try:
        sb.up(replicas=2)
        yield sb
    finally:
        log("stopping the sandbox")
        sqlrouter.shutdown()
        if sb.exists:
            sb.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def fill_table(
    sb: Sandbox,
    table: str,
    columns: str,
    make_row: Callable[[int, random.Random], tuple[object, ...]],
    rows: int,
) -> None:
    """Create ``table (columns)`` on the master with ``rows`` rows made by
    ``make_row(id, rng)`` (a seeded generator: every run writes the same data), then
    wait until both replicas have it."""
    rng = random.Random(1)
    db = sb.state.database
    with sb.cursor(sb.master.name, timeout=30) as cur:
        cur.execute(f"DROP TABLE IF EXISTS {db}.{table}")
        cur.execute(f"CREATE TABLE {db}.{table} ({columns}) ENGINE=InnoDB")
        batch = 1000
        for start in range(1, rows + 1, batch):
            chunk = [make_row(i, rng) for i in range(start, min(start + batch, rows + 1))]
            marks = ", ".join(["%s"] * len(chunk[0]))
            cur.executemany(f"INSERT INTO {db}.{table} VALUES ({marks})", chunk)
    for replica in sb.replicas:
        sb.wait_caught_up(replica.name, timeout=60)
