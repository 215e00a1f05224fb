"""Mutation testing of the pure modules against their unit tests (run by scripts/mutation).

Each target is one module and the unit tests that check it.  It runs in a scratch copy
of the checkout (``.mutation/<target>/``) whose pyproject.toml gets a ``[tool.mutmut]``
table for that module alone, with one mutmut worker, then prints killed / survived /
total and two scores: mutmut's (killed over all mutants) and the behaviour score, which
leaves out the mutants listed in scripts/mutation-set-aside.txt (equivalent mutants and
mutants that only change an error message's wording, each with its reason).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / ".mutation"
SET_ASIDE = ROOT / "scripts" / "mutation-set-aside.txt"


@dataclass(frozen=True)
class Target:
    module: str
    tests: tuple[str, ...]


TARGETS = {
    "router": Target("sqlrouter/routing/router.py", ("tests/unit/test_router.py",)),
    "lag": Target(
        "sqlrouter/routing/lag.py",
        ("tests/unit/test_monitor_lag.py", "tests/unit/test_monitor.py"),
    ),
    "health": Target(
        "sqlrouter/routing/health.py",
        (
            "tests/unit/test_monitor_lag.py",
            "tests/unit/test_monitor.py",
            "tests/unit/test_router.py",
        ),
    ),
    "gtid": Target("sqlrouter/gtid.py", ("tests/unit/test_gtid.py",)),
    "session_track": Target("sqlrouter/_session_track.py", ("tests/unit/test_session_track.py",)),
    "url": Target("sqlrouter/url.py", ("tests/unit/test_url.py",)),
    "urlparams": Target("sqlrouter/_urlparams.py", ("tests/unit/test_url.py",)),
}

KILLED = {1, 3, 36, 24, -24, 152, 255}  # test failure, pytest error, timeouts (mutmut's codes)
SURVIVED = 0
SKIPPED = 34
NO_TESTS = {5, 33}  # no test covers the mutated function


_COMPAT = '''"""Written by scripts/_mutation.py: pytest 9 nodes as mutmut 3.8 reads them."""

from _pytest.nodes import Node

if not hasattr(Node, "_nodeid"):
    Node._nodeid = property(lambda self: self.nodeid)
'''


def _toml_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _prepare(name: str, target: Target) -> Path:
    work = SCRATCH / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.pyc")
    shutil.copytree(ROOT / "sqlrouter", work / "sqlrouter", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    # mutmut 3.8 reads ``item._nodeid``, which pytest 9 no longer has: a plugin gives it back.
    (work / "tests" / "_mutmut_compat.py").write_text(_COMPAT)
    config = (ROOT / "pyproject.toml").read_text()
    config += (
        "\n[tool.mutmut]\n"
        'source_paths = ["sqlrouter"]\n'
        f"only_mutate = {_toml_list([target.module])}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(target.tests)}\n"
        'pytest_add_cli_args = ["-p", "tests._mutmut_compat"]\n'
        "use_git_change_detection = false\n"
    )
    (work / "pyproject.toml").write_text(config)
    return work


def _set_aside() -> dict[str, str]:
    """Mutant name -> why it does not count against the behaviour score."""
    reasons: dict[str, str] = {}
    if SET_ASIDE.exists():
        for raw in SET_ASIDE.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            mutant, _, reason = line.partition(" ")
            reasons[mutant] = reason.strip()
    return reasons


def _mutmut(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    mutmut = Path(sys.executable).parent / "mutmut"
    return subprocess.run(
        [str(mutmut), *args], cwd=work, text=True, capture_output=True, check=False
    )


def _codes(work: Path, target: Target) -> dict[str, int | None]:
    meta = work / "mutants" / (target.module + ".meta")
    if not meta.exists():
        raise SystemExit(f"no mutmut results in {work} (log: {work}/mutmut-run.log)")
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    return codes


def _run(
    name: str, target: Target, *, survivors: bool, base: Path | None, also: list[str]
) -> dict[str, object]:
    """Run mutmut on ``target``.  With ``base`` (the scratch directory of an earlier run
    of the same target, whose tests are all still there): test only the mutants that
    survived it, and those matching ``also`` (the functions changed since), and keep the
    earlier verdict of every other mutant (a mutant a test killed stays killed when tests
    are only added)."""
    previous = _codes(base, target) if base is not None else {}
    rerun = [m for m, code in previous.items() if code not in KILLED] + also
    work = _prepare(name, target)
    print(f"== {name}: {target.module} with {' '.join(target.tests)}", flush=True)
    if base is not None:
        print(f"   re-testing {len(rerun)} mutants that survived {base}", flush=True)
    done = _mutmut(work, "run", "--max-children", "1", *rerun)
    (work / "mutmut-run.log").write_text(done.stdout + done.stderr)
    try:
        codes = _codes(work, target)
    except SystemExit:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        raise
    if base is not None:
        codes = {m: previous.get(m) if code is None else code for m, code in codes.items()}
        # Keep the merged verdicts, so that this run can be the --base of the next one.
        meta_path = work / "mutants" / (target.module + ".meta")
        meta = json.loads(meta_path.read_text())
        meta["exit_code_by_key"] = codes
        meta_path.write_text(json.dumps(meta))
    counts: Counter[str] = Counter()
    alive: list[str] = []
    for mutant, code in sorted(codes.items()):
        if code in KILLED:
            counts["killed"] += 1
        elif code == SKIPPED:
            counts["skipped"] += 1
        else:
            if code in NO_TESTS:
                counts["no_tests"] += 1
            counts["survived"] += 1
            alive.append(mutant)
    aside = _set_aside()
    excused = [m for m in alive if m in aside]
    total = len(codes) - counts["skipped"]
    behaviour_total = total - len(excused)
    result = {
        "target": name,
        "module": target.module,
        "killed": counts["killed"],
        "survived": counts["survived"],
        "no_tests": counts["no_tests"],
        "total": total,
        "score": round(100 * counts["killed"] / total, 1) if total else 100.0,
        "set_aside": len(excused),
        "behaviour_score": (
            round(100 * counts["killed"] / behaviour_total, 1) if behaviour_total else 100.0
        ),
    }
    print(json.dumps(result), flush=True)
    for mutant in alive:
        note = f"  (set aside: {aside[mutant]})" if mutant in aside else ""
        code = codes[mutant]
        status = (
            "survived"
            if code == SURVIVED
            else "no test"
            if code in NO_TESTS
            else f"exit code {code}"
        )
        print(f"   {status}: {mutant}{note}")
        if survivors and mutant not in aside:
            print(_mutmut(work, "show", mutant).stdout)
    stale = [m for m in aside if m.startswith(_prefix(target.module)) and m not in codes]
    for mutant in stale:
        print(f"   stale entry in {SET_ASIDE.name} (no such mutant now): {mutant}")
    return result


def _prefix(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".") + "."


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/mutation", description=__doc__)
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument(
        "--survivors", action="store_true", help="print the diff of each surviving mutant"
    )
    parser.add_argument(
        "--base",
        metavar="DIR",
        help="the .mutation/TARGET directory of an earlier run: re-test only its survivors",
    )
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="PATTERN",
        help="with --base, also test the mutants matching PATTERN (changed functions)",
    )
    args = parser.parse_args()
    if args.list:
        for name, target in TARGETS.items():
            print(f"{name:14} {target.module:32} {' '.join(target.tests)}")
        return
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    if args.base is not None and len(args.targets) != 1:
        parser.error("--base takes exactly one target")
    results = [
        _run(
            name,
            TARGETS[name],
            survivors=args.survivors,
            base=Path(args.base).resolve() if args.base else None,
            also=args.also,
        )
        for name in args.targets or TARGETS
    ]
    print("\n(survived counts the mutants no test covers, shown as no_tests)")
    print("target          killed survived  total  score  behaviour")
    for r in results:
        print(
            f"{r['target']:14} {r['killed']:7} {r['survived']:8} {r['total']:6}"
            f" {r['score']:5}%  {r['behaviour_score']:5}%"
        )


if __name__ == "__main__":
    main()
