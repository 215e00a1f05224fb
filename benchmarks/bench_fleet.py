"""Fleet scale: what N idle application processes cost the servers, and how fast all of
them react, against one process.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_fleet [--update-docs] [--counts 1,10,50,200]
        [--before PATH] [--window 10] [--reactions 3]

For each N of ``--counts`` a launcher imports sqlrouter and forks N workers
(``benchmarks/_fleet_worker.py``: one RW_STRICT and one RO_RELAXED connection each,
then idle), spread over two simulated hosts (two ``$SQLROUTER_SHARE`` directories).
Once every worker is connected and 3 s have passed, it samples for ``--window`` seconds:
the master's ``Binlog_commits``, each server's ``Questions`` and ``Threads_connected``,
and the workers' CPU time (``/proc/PID/stat``).  ``--before PATH`` runs the same
workers on the sqlrouter of another checkout (``PYTHONPATH=PATH``: the code before the
fleet changes) for the same counts, interleaved with this checkout's (before, after,
after, before...), so that machine noise falls on both.

Reaction times, with 1 process and with the largest N, or the counts of
``--reaction-counts`` (every worker reports, in memory,
when its snapshot first showed the change; the figure is when the *last* one did):

- stop-io exclusion: ``STOP SLAVE IO_THREAD`` on db3 until every process's snapshot
  excludes db3 for relaxed reads (lag over ``max_lag`` or unknown);
- switchover followed: from the moment db2 is writable (the end of the switchover's
  ``writable db2`` step) until every process's snapshot names db2 the master (and back
  to db1, not timed); the time from the start of ``switchover(db2)`` is kept too.

Each run makes its change at a set phase of the monitor interval (``PHASES``, in
turn, measured from the wall clock's ticks on which the rounds start): the same phases
for one process and for the fleet.

``--update-docs`` rewrites the ``fleet`` section of docs/benchmarks.md and draws
docs/benchmarks/fleet.png (matplotlib: the ``bench`` extra); the JSON goes to
docs/benchmarks/fleet.json.  The machine's load average is recorded with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlrouter.sandbox import Sandbox
from sqlrouter.switchover import Step, TopologyError, switchover

from ._common import bench_sandbox, machine_info, markdown_table, replace_section, write_json

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_fleet_worker.py")
DOC = ROOT / "docs" / "benchmarks.md"
JSON_OUT = ROOT / "docs" / "benchmarks" / "fleet.json"
PLOT = ROOT / "docs" / "benchmarks" / "fleet.png"
TICKS = os.sysconf("SC_CLK_TCK")
#: The issue's targets, against one process.
TARGETS = {"commits": 1.5, "questions_per_host": 3.0, "reaction": 1.10}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _status(sb: Sandbox, node: str, names: tuple[str, ...]) -> dict[str, int]:
    rows = sb.query(node, "SHOW GLOBAL STATUS WHERE Variable_name IN %s" % (names,))  # noqa: UP031
    return {str(k): int(v) for k, v in rows}


def _cpu(pids: list[int]) -> float:
    """CPU seconds used so far by ``pids`` (those still alive)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


class Fleet:
    """N forked workers over two simulated hosts, on this checkout or ``code``."""

    def __init__(self, sb: Sandbox, n: int, code: Path | None, *, watch: bool) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sqlrouter-fleet-"))
        hosts = []
        for name in ("host1", "host2"):
            (self.dir / name).mkdir(mode=0o700)
            hosts.append(str(self.dir / name))
        self.status = self.dir / "status"
        self.status.mkdir()
        self.watch = self.dir / "watch"
        self.watch.touch()  # every worker reports until it connected
        self.n = n
        env = {
            **os.environ,
            "PYTHONPATH": str(code if code is not None else ROOT),
            # The URLs hold the password: in the environment, not in argv.
            "FLEET_RW_URL": sb.url("RW_STRICT", autocommit="true"),
            "FLEET_RO_URL": sb.url("RO_RELAXED", autocommit="true"),
        }
        env.pop("SQLROUTER_SHARE", None)
        worker = self.dir / "_fleet_worker.py"
        shutil.copy(WORKER, worker)  # run as a script: sys.path[0] is not this checkout
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(worker),
                str(self.status),
                "--fork",
                str(n),
                "--hosts",
                ",".join(hosts),
                "--watch",
                str(self.watch),
            ],
            cwd=self.dir,
            env=env,
            stderr=(self.dir / "stderr").open("wb"),
        )
        deadline = time.monotonic() + 60 + n
        while len(self.statuses()) < n:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                errors = (self.dir / "stderr").read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"{n} workers: only {len(self.statuses())} connected: {errors}")
            time.sleep(0.2)
        if not watch:
            self.watch.unlink()

    def statuses(self) -> list[dict[str, Any]]:
        out = []
        for path in self.status.glob("*.json"):
            try:
                out.append(json.loads(path.read_text()))
            except (json.JSONDecodeError, FileNotFoundError):
                continue
        return out

    @property
    def pids(self) -> list[int]:
        return [int(p.stem) for p in self.status.glob("*.json")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                for pid in self.pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def measure_load(sb: Sandbox, n: int, code: Path | None, window: float) -> dict[str, Any]:
    fleet = Fleet(sb, n, code, watch=False)
    try:
        time.sleep(3.0)
        nodes = [node.name for node in sb.nodes]
        master = sb.master.name
        names = ("Questions", "Threads_connected", "Binlog_commits")
        pids = fleet.pids
        before = {node: _status(sb, node, names) for node in nodes}
        cpu0, t0 = _cpu(pids), time.monotonic()
        time.sleep(window)
        after = {node: _status(sb, node, names) for node in nodes}
        cpu1, t1 = _cpu(pids), time.monotonic()
        elapsed = t1 - t0
        return {
            "processes": n,
            "commits_per_s": (after[master]["Binlog_commits"] - before[master]["Binlog_commits"])
            / elapsed,
            "questions_per_s": {
                node: (after[node]["Questions"] - before[node]["Questions"]) / elapsed
                for node in nodes
            },
            "connections": {node: after[node]["Threads_connected"] for node in nodes},
            "client_cpu": (cpu1 - cpu0) / elapsed,
            "loadavg": os.getloadavg()[0],
        }
    finally:
        fleet.stop()


def _sightings(
    statuses: list[dict[str, Any]], since: float, match: Callable[[list[Any]], bool]
) -> list[float | None]:
    """Each worker's first sight of a change, in seconds after ``since`` (None: none)."""
    times: list[float | None] = []
    for status in statuses:
        seen = [c[0] for c in status.get("changes", []) if c[0] >= since and match(c)]
        times.append(float(min(seen) - since) if seen else None)
    return times


def _spread(
    fleet: Fleet, since: float, match: Callable[[list[Any]], bool]
) -> tuple[float, float, float]:
    """The first, median and last worker's first sight of a change (after ``since``)."""
    times = sorted(t for t in _sightings(fleet.statuses(), since, match) if t is not None)
    return times[0], times[len(times) // 2], times[-1]


def _wait_all(fleet: Fleet, since: float, match: Callable[[list[Any]], bool]) -> float:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = fleet.statuses()
        if len(statuses) == fleet.n:
            times = _sightings(statuses, since, match)
            if None not in times:  # the last worker's
                return max(t for t in times if t is not None)
        time.sleep(0.1)
    raise RuntimeError("not every worker saw the change within 60s")


#: Where in the monitor interval each run's change is made (fractions after a tick of
#: the wall clock, in turn): a change's reaction depends on its phase against the
#: rounds (and, for stop-io, the heartbeat), the same way for one process and a fleet;
#: taking the same phases on both sides compares like with like.
PHASES = (0.1, 0.35, 0.6, 0.85)


def _at_phase(interval: float, fraction: float) -> None:
    """Sleep until ``fraction`` of an interval after a tick of the wall clock."""
    time.sleep((fraction * interval - time.time() % interval) % interval)


def _switch_back(sb: Sandbox) -> None:
    """Make db1 the master again, not timed; right after a switchover its replication
    may still show a lag for an instant (the switchover refuses then): try again."""
    deadline = time.monotonic() + 30
    while True:
        try:
            switchover(sb.service(), "db1")
        except TopologyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        else:
            return


def _note_steps(into: dict[str, float], step: Step) -> None:
    """A switchover's report: when each of its steps ended."""
    into[step.name] = time.monotonic()


def measure_reactions(sb: Sandbox, n: int, code: Path | None, repeat: int) -> dict[str, Any]:
    fleet = Fleet(sb, n, code, watch=True)
    interval = sb.service().monitor_interval
    out: dict[str, Any] = {
        "processes": n,
        "stop_io": [],
        "switchover": [],
        "switchover_from_start": [],
        "switchover_after_tick": [],
        "switchover_detail": [],
        "stop_io_sight": [],
        "phases": [],
        "interval": interval,
    }
    try:
        time.sleep(3.0)
        for i in range(repeat):
            phase = PHASES[i % len(PHASES)]
            out["phases"].append(phase)
            _at_phase(interval, phase)
            since = time.monotonic()
            sb.fault("db3", "stop-io")
            out["stop_io"].append(_wait_all(fleet, since, lambda c: "db3" in c[2]))
            out["stop_io_sight"].append(
                [round(t, 4) for t in _spread(fleet, since, lambda c: "db3" in c[2])]
            )
            sb.fault("db3", "resume")
            _wait_all(fleet, time.monotonic() - 0.05, lambda c: "db3" not in c[2])
            time.sleep(1.0)
            steps: dict[str, float] = {}
            _at_phase(interval, phase)
            since = time.monotonic()
            switchover(sb.service(), "db2", report=functools.partial(_note_steps, steps))
            followed = _wait_all(fleet, since, lambda c: c[1] == "db2")
            out["switchover_from_start"].append(followed)
            # From the moment the servers' change was complete (the end of the step
            # that makes db2 a master that replicates from nobody): the switchover's
            # own steps (the old master drained, db2 caught up) are the servers' time.
            done = steps["reset db2"]
            out["switchover"].append(since + followed - done)
            # The wall clock's time of the change, and so its phase against the rounds.
            done_wall = time.time() - (time.monotonic() - done)
            tick = math.ceil(done_wall / interval) * interval
            out["switchover_after_tick"].append(since + followed - done - (tick - done_wall))
            out["switchover_detail"].append(
                {
                    "steps": {k: round(v - done, 4) for k, v in steps.items()},
                    "sight": [
                        round(since + t - done, 4)
                        for t in _spread(fleet, since, lambda c: c[1] == "db2")
                    ],
                    "phase": round(done_wall % interval, 4),
                }
            )
            _switch_back(sb)
            _wait_all(fleet, time.monotonic() - 5, lambda c: c[1] == "db1")
            time.sleep(1.0)
        out["loadavg"] = os.getloadavg()[0]
        return out
    finally:
        fleet.stop()


def _per_host(row: dict[str, Any]) -> float:
    """The busiest server's questions/s, per simulated host (two hosts)."""
    return float(max(row["questions_per_s"].values())) / 2


def report(results: dict[str, Any]) -> str:
    lines = []
    sides = [s for s in ("before", "after") if results["load"].get(s)]
    rows = []
    for side in sides:
        base = results["load"][side][0]
        for row in results["load"][side]:
            q = row["questions_per_s"]
            rows.append(
                [
                    side,
                    row["processes"],
                    f"{row['commits_per_s']:.1f} "
                    f"({row['commits_per_s'] / base['commits_per_s']:.2f}x)",
                    ", ".join(f"{v:.0f}" for v in q.values())
                    + f" ({max(q.values()) / max(base['questions_per_s'].values()):.2f}x)",
                    ", ".join(str(v) for v in row["connections"].values()),
                    f"{row['client_cpu']:.2f}",
                    f"{row['loadavg']:.1f}",
                ]
            )
    lines.append(
        markdown_table(
            [
                "code",
                "processes",
                "master binlog commits/s (vs 1)",
                "questions/s db1, db2, db3 (busiest vs 1)",
                "connections db1, db2, db3",
                "client CPU (cores)",
                "load avg",
            ],
            rows,
        )
    )
    after = results["load"].get("after", [])
    if after:
        one, most = after[0], after[-1]
        commits = most["commits_per_s"] / one["commits_per_s"]
        per_host = _per_host(most) / max(one["questions_per_s"].values())
        lines.append("")
        lines.append(
            f"Targets with {most['processes']} processes (this code): master binlog commits/s "
            f"{commits:.2f}x those of one process (target <= {TARGETS['commits']}x: "
            f"{'met' if commits <= TARGETS['commits'] else 'NOT met'}); questions/s of the "
            f"busiest server per host {per_host:.2f}x those of one process (target <= "
            f"{TARGETS['questions_per_host']}x: "
            f"{'met' if per_host <= TARGETS['questions_per_host'] else 'NOT met'})."
        )
    if results.get("reactions"):
        lines += _report_reactions(results["reactions"])
    for failed in results.get("failed", []):
        lines.append(
            f"\n{failed['side']}, {failed['processes']} processes: not measured: "
            f"{failed['error'].splitlines()[0][:200]}"
        )
    info = results["machine"]
    lines += [
        "",
        f"Measured on {info.get('cpu', '?')}, {info.get('cores', '?')} CPUs, "
        f"{results['date']}; window {results['window']:g}s per count. Reproduce: "
        "`.venv/bin/python -m benchmarks.bench_fleet --update-docs "
        f"--counts {','.join(str(c) for c in results['counts'])}"
        + (
            " --reaction-counts "
            + ",".join(str(r["processes"]) for r in results["reactions"])
            + f" --reactions {len(results['reactions'][0]['stop_io'])}"
            if results.get("reactions")
            else ""
        )
        + (" --before PATH" if "before" in sides else "")
        + (f" --before-max {results['before_max']}" if results.get("before_max") else "")
        + "` (JSON: `docs/benchmarks/fleet.json`, plot: `docs/benchmarks/fleet.png`).",
    ]
    return "\n".join(lines)


def _expected_switchover(r: dict[str, Any]) -> float:
    """The mean reaction to a switchover whose change comes at a uniformly random
    phase of the rounds: half an interval to the next tick, plus what the processes
    take after that tick (the median over the runs)."""
    return float(r["interval"] / 2 + statistics.median(r["switchover_after_tick"]))


def _report_reactions(reactions: list[dict[str, Any]]) -> list[str]:
    base = reactions[0]
    rows = []
    for r in reactions:
        cells: list[object] = [r["processes"]]
        for key in ("stop_io", "switchover", "switchover_after_tick", "switchover_from_start"):
            med = statistics.median(r[key])
            ratio = med / statistics.median(base[key])
            cells.append(f"{med:.3f}s ({ratio:.2f}x; runs {', '.join(f'{v:.2f}' for v in r[key])})")
        expected = _expected_switchover(r)
        cells.append(f"{expected:.3f}s ({expected / _expected_switchover(base):.2f}x)")
        cells.append(f"{r['loadavg']:.1f}")
        rows.append(cells)
    most = reactions[-1]
    stop_io = statistics.median(most["stop_io"]) / statistics.median(base["stop_io"])
    switch = _expected_switchover(most) / _expected_switchover(base)
    target = TARGETS["reaction"]
    within = [
        r["processes"]
        for r in reactions[1:]
        if _expected_switchover(r) / _expected_switchover(base) <= target
    ]
    between = ""
    if len(reactions) > 2:
        between = " Switchover within the target with " + (
            f"{', '.join(map(str, within))} processes." if within else "none of these counts."
        )
    return [
        "",
        "Reaction times (median over the runs; the last process to see the change). Each "
        "stop-io run is made at a set phase of the monitor interval, the same phases for "
        "every count. A switchover's change comes at whatever phase its own steps end at, "
        "and the reaction to it is mostly the wait for the next round's tick (up to an "
        "interval, the same for any number of processes): the columns give the raw "
        "reaction from the change (the end of the `reset db2` step), what the processes "
        "took after the first tick that followed it, the expected reaction at a random "
        "phase (half an interval plus that), and the time from the switchover's start.",
        "",
        markdown_table(
            [
                "processes",
                "stop-io: db3 excluded everywhere (vs 1)",
                "switchover: db2 the master everywhere, from the change (vs 1)",
                "after the tick (vs 1)",
                "from the switchover's start (vs 1)",
                "switchover, expected at a random phase (vs 1)",
                "load avg",
            ],
            rows,
        ),
        "",
        f"Reaction target with {most['processes']} processes (within {target - 1:.0%} of "
        f"one process's): stop-io {stop_io:.2f}x ({'met' if stop_io <= target else 'NOT met'}); "
        f"switchover, expected {switch:.2f}x ({'met' if switch <= target else 'NOT met'})."
        + between,
    ]


def plot(results: dict[str, Any]) -> None:
    import matplotlib  # noqa: PLC0415 - optional: the bench extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for side, style in (("before", "--o"), ("after", "-o")):
        rows = results["load"].get(side)
        if not rows:
            continue
        xs = [r["processes"] for r in rows]
        axes[0].plot(xs, [r["commits_per_s"] for r in rows], style, label=side)
        axes[1].plot(xs, [max(r["questions_per_s"].values()) for r in rows], style, label=side)
        axes[2].plot(xs, [r["client_cpu"] for r in rows], style, label=side)
    titles = ("master binlog commits/s", "questions/s, busiest server", "client CPU (cores)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("client processes (two hosts)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(PLOT, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1,10,50,200")
    parser.add_argument("--before", type=Path, default=None, help="another checkout to compare")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--reactions", type=int, default=8, help="runs of each reaction (0: none)")
    parser.add_argument(
        "--before-max",
        type=int,
        default=0,
        help="the largest count run with --before (default: every count)",
    )
    parser.add_argument(
        "--reaction-max",
        type=int,
        default=0,
        help="the largest count whose reactions are measured (default: the largest count)",
    )
    parser.add_argument(
        "--reaction-counts",
        default="",
        help="the counts whose reactions are measured, e.g. 1,20,50,200 (default: the "
        "first count and --reaction-max); the first is the one the others are compared to",
    )
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    reaction_counts = (
        [int(c) for c in args.reaction_counts.split(",")]
        if args.reaction_counts
        else sorted({counts[0], args.reaction_max or counts[-1]})
    )
    results: dict[str, Any] = {
        "counts": counts,
        "window": args.window,
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": {"after": [], "before": []},
        "reactions": [],
        "failed": [],
        "before_max": args.before_max,
    }
    with bench_sandbox(None, "sqlrouter-bench-fleet-", log) as sb:
        sides: list[tuple[str, Path | None]] = [("after", None)]
        if args.before is not None:
            sides.insert(0, ("before", args.before))
        for i, n in enumerate(counts):
            for side, code in sides if i % 2 == 0 else list(reversed(sides)):
                if side == "before" and args.before_max and n > args.before_max:
                    continue
                log(f"load: {n} processes, {side}")
                try:
                    row = measure_load(sb, n, code, args.window)
                except RuntimeError as exc:  # too many processes for this machine
                    log(f"  failed: {exc}")
                    results["failed"].append({"side": side, "processes": n, "error": str(exc)})
                    continue
                log(f"  {row}")
                results["load"][side].append(row)
        if args.reactions:
            for n in reaction_counts:
                log(f"reactions: {n} processes")
                r = measure_reactions(sb, n, None, args.reactions)
                log(f"  {r}")
                results["reactions"].append(r)
    text = report(results)
    print(text)
    if args.update_docs:
        write_json(JSON_OUT, results)
        try:
            plot(results)
        except ImportError:
            log("matplotlib missing (pip install -e '.[bench]'): no plot drawn")
        DOC.write_text(replace_section(DOC.read_text(), "fleet", text + "\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
