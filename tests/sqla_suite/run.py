"""Run SQLAlchemy's compliance suite through ``mysql+sqlrouter`` and ``mysql+pymysql``.

Usage (``scripts/sqla-suite`` runs this module)::

    python -m tests.sqla_suite.run [--asyncio] [--dir SANDBOX_DIR] [--replicas N]
                                   [--json FILE] [--logs DIR] [--timeout SECONDS]
                                   [-- PYTEST_ARGS...]

Without ``--dir`` it starts a private sandbox cluster (1 master, 2 replicas) in a
temporary directory and destroys it at the end.  It creates what the suite needs on
the master (schemas ``test_schema`` and ``test_schema_2``, granted to the application
user), then runs the suite (``tests/sqla_suite``, set up as SQLAlchemy's
README.dialects.rst describes) twice, one run after the other, against the same master
and database as the same user:

- ``mysql+sqlrouter://app:***@sandbox/appdb?qos=RW_STRICT&registry=...``
- ``mysql+pymysql://app:***@127.0.0.1:PORT/appdb`` (the master's own address)

With ``--asyncio`` the two drivers are the asyncio ones, ``mysql+sqlrouter_async``
(what ``create_async_engine("mysql+sqlrouter://...")`` uses) and ``mysql+aiomysql``.

It prints the counts of both runs and every test whose outcome differs, and exits 0
when sqlrouter passes every test that PyMySQL passes (and so at least as many), 1 when
it does not, 2 when the suite could not be run.  ``--json`` writes the same as JSON.

The URLs (which hold the password) reach pytest through ``PYTEST_ADDOPTS`` in the
child's environment, not its command line, and nothing printed shows the password.
MariaDB 10.11 has been seen to crash (signal 11 in ``ha_maria::drop_table`` after
building the temporary table of a ``DESCRIBE`` failed) during suite runs, when the
sandboxes of the machine shared ``/tmp`` as their ``tmpdir``: a run during which the
master crashed is run again once, on a restarted server with emptied schemas, and the
crash is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import sqlalchemy

from sqlrouter.sandbox import Sandbox, SandboxError

__all__ = [
    "Comparison",
    "SuiteRun",
    "compare",
    "main",
    "parse_junit",
    "prepare",
    "reset",
    "suite_urls",
]

ROOT: Final = Path(__file__).resolve().parents[2]
SUITE_DIR: Final = Path(__file__).resolve().parent
DRIVERS: Final = ("sqlrouter", "pymysql")
#: The asyncio pair (``--asyncio``): sqlrouter.aio through SQLAlchemy, and aiomysql.
ASYNC_DRIVERS: Final = ("sqlrouter_async", "aiomysql")
OUTCOMES: Final = ("passed", "failed", "error", "skipped")

#: Schemas the suite uses besides the default one (SQLAlchemy's ``config.test_schema``
#: and ``test_schema_2``).
SCHEMAS: Final = ("test_schema", "test_schema_2")

#: Tests that sqlrouter may fail or skip while PyMySQL passes them, and why.  Empty:
#: sqlrouter's connections are PyMySQL's, so the suite behaves the same on both.
EXPLAINED: Final[Mapping[str, str]] = {}

# "ComponentReflectionTest_mariadb+sqlrouter_10_11_19" -> "ComponentReflectionTest"
_CONFIG_SUFFIX: Final = re.compile(r"_(?:mysql|mariadb)\+[a-z0-9_]+?_[\d_]+$")
_CRASH_MARK: Final = "got signal"


@dataclass
class SuiteRun:
    """One run of the suite: each test's outcome, the time it took, server crashes."""

    driver: str
    outcomes: dict[str, str]
    seconds: float
    crashes: int = 0
    log: Path | None = None

    def counts(self) -> dict[str, int]:
        found = Counter(self.outcomes.values())
        return {name: found.get(name, 0) for name in OUTCOMES}

    @property
    def passed(self) -> int:
        return self.counts()["passed"]


@dataclass
class Comparison:
    """What sqlrouter does differently from PyMySQL (test id -> (sqlrouter, pymysql))."""

    regressions: dict[str, tuple[str, str]] = field(default_factory=dict)
    improvements: dict[str, tuple[str, str]] = field(default_factory=dict)
    other: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def unexplained(self) -> dict[str, tuple[str, str]]:
        return {k: v for k, v in self.regressions.items() if k not in EXPLAINED}


def parse_junit(path: Path) -> dict[str, str]:
    """Each test's outcome in a pytest junit file, keyed by ``Class::test[params]``.

    The class name loses the suffix that names the database configuration, so that
    the ids of the two runs match.  A test with a teardown error counts as an error.
    """
    outcomes: dict[str, str] = {}
    rank = {name: i for i, name in enumerate(("passed", "skipped", "failed", "error"))}
    root = ET.parse(path).getroot()  # noqa: S314  (our own pytest's output)
    for case in root.iter("testcase"):
        cls = _CONFIG_SUFFIX.sub("", case.get("classname", "").rsplit(".", 1)[-1])
        key = f"{cls}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag == "failure":
                outcome = "failed"
            elif child.tag == "error":
                outcome = "error"
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        previous = outcomes.get(key)
        if previous is None or rank[outcome] > rank[previous]:
            outcomes[key] = outcome
    return outcomes


def compare(sqlrouter: SuiteRun, pymysql: SuiteRun) -> Comparison:
    result = Comparison()
    for key in sorted(set(sqlrouter.outcomes) | set(pymysql.outcomes)):
        ours = sqlrouter.outcomes.get(key, "missing")
        theirs = pymysql.outcomes.get(key, "missing")
        if ours == theirs:
            continue
        if theirs == "passed":
            result.regressions[key] = (ours, theirs)
        elif ours == "passed":
            result.improvements[key] = (ours, theirs)
        else:
            result.other[key] = (ours, theirs)
    return result


# --------------------------------------------------------------------------------------
# The sandbox


def suite_urls(sb: Sandbox) -> dict[str, str]:
    """The URL of each driver (both pairs): same master, database and user (with the
    password)."""
    st = sb.state
    user = quote(st.app.user, safe="")
    password = quote(st.app.password, safe="")
    query = f"charset=utf8mb4&qos=RW_STRICT&registry={quote(str(sb.registry_path), safe='/')}"
    return {
        "sqlrouter": f"mysql+sqlrouter://{user}:{password}@{st.service}/{st.database}?{query}",
        "pymysql": (
            f"mysql+pymysql://{user}:{password}@127.0.0.1:{sb.master.port}/{st.database}"
            "?charset=utf8mb4"
        ),
        "sqlrouter_async": (
            f"mysql+sqlrouter_async://{user}:{password}@{st.service}/{st.database}?{query}"
        ),
        "aiomysql": (
            f"mysql+aiomysql://{user}:{password}@127.0.0.1:{sb.master.port}/{st.database}"
            "?charset=utf8mb4"
        ),
    }


def prepare(sb: Sandbox) -> None:
    """Create on the master what the suite needs, as root (through the Unix socket).

    The default database must be empty: the suite compares the tables it finds there
    with the ones it created.
    """
    st = sb.state
    master = sb.master.name
    rows = sb.query(
        master,
        "SELECT table_name FROM information_schema.tables "
        f"WHERE table_schema = '{st.database}' ORDER BY table_name",
    )
    if rows:
        names = ", ".join(str(row[0]) for row in rows[:10])
        raise SandboxError(
            f"database {st.database!r} of the sandbox in {sb.dir} holds tables ({names}): "
            "the suite needs it empty; run without --dir to use a fresh sandbox"
        )
    grantee = f"'{st.app.user}'@'127.0.0.1'"
    for schema in SCHEMAS:
        sb.query(master, f"CREATE DATABASE IF NOT EXISTS `{schema}` CHARACTER SET utf8mb4")
        sb.query(master, f"GRANT ALL PRIVILEGES ON `{schema}`.* TO {grantee}")
    # HasTableTest asks whether a table exists in a schema named nonexistent_schema.
    # MariaDB answers "access denied" (1142) rather than "no such table" to a user who
    # has no privilege on a schema; SQLAlchemy's own test user has them all.
    sb.query(master, f"GRANT SELECT ON `nonexistent_schema`.* TO {grantee}")


def reset(sb: Sandbox) -> None:
    """Drop what a run left in the suite's schemas (a crashed run leaves its tables)."""
    schemas = (sb.state.database, *SCHEMAS)
    with sb.cursor(sb.master.name) as cur:
        cur.execute("SET SESSION foreign_key_checks = 0")
        for schema in schemas:
            cur.execute(
                "SELECT table_name, table_type FROM information_schema.tables "
                "WHERE table_schema = %s",
                (schema,),
            )
            for name, kind in cur.fetchall():
                what = "VIEW" if kind == "VIEW" else "TABLE"
                cur.execute(f"DROP {what} IF EXISTS `{schema}`.`{name}`")


def _crashes(sb: Sandbox) -> int:
    path = sb.node_dir(sb.master.name) / "error.log"
    try:
        return path.read_text(encoding="utf-8", errors="replace").count(_CRASH_MARK)
    except FileNotFoundError:
        return 0


def _crash_query(sb: Sandbox) -> str:
    path = sb.node_dir(sb.master.name) / "error.log"
    text = path.read_text(encoding="utf-8", errors="replace")
    found = re.findall(r"^Query \([^)]*\): (.*)$", text, re.MULTILINE)
    return found[-1] if found else "unknown"


@contextmanager
def _sandbox(directory: Path | None, replicas: int) -> Iterator[Sandbox]:
    if directory is not None:
        sb = Sandbox(directory)
        sb.up()
        yield sb
        return
    with tempfile.TemporaryDirectory(prefix="sqla-suite-") as tmp:
        sb = Sandbox(Path(tmp) / "sb", ephemeral=True)
        try:
            sb.up(replicas=replicas)
            yield sb
        finally:
            sb.destroy()


# --------------------------------------------------------------------------------------
# Running


class _Redactor:
    def __init__(self, secrets: Sequence[str]) -> None:
        forms = {form for s in secrets if s for form in (s, quote(s, safe=""))}
        self._forms = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, "***")
        return text


def _run_once(
    driver: str, url: str, logs: Path, pytest_args: Sequence[str], timeout: float
) -> tuple[dict[str, str], float, Path]:
    junit = logs / f"{driver}.xml"
    log = logs / f"{driver}.log"
    junit.unlink(missing_ok=True)
    env = dict(os.environ)
    env["SQLROUTER_SQLA_SUITE"] = "1"
    env["PYTEST_ADDOPTS"] = f"--dburi {url}"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(SUITE_DIR / "pytest.ini"),
        str(SUITE_DIR),
        "-q",
        f"--junitxml={junit}",
        *pytest_args,
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        try:
            subprocess.run(  # noqa: PLW1510  (pytest exits 1 when a test fails)
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise SandboxError(
                f"the {driver} run of the suite took more than {timeout:g}s; see {log}"
            ) from None
    seconds = time.monotonic() - started
    if not junit.is_file():
        raise SandboxError(f"the {driver} run of the suite wrote no results; see {log}")
    return parse_junit(junit), seconds, log


def run_suite(
    sb: Sandbox, driver: str, url: str, *, logs: Path, pytest_args: Sequence[str], timeout: float
) -> SuiteRun:
    """Run the suite for ``driver``; once more if the master crashed during the run."""
    crashes = 0
    for _attempt in range(2):
        reset(sb)
        before = _crashes(sb)
        outcomes, seconds, log = _run_once(driver, url, logs, pytest_args, timeout)
        if _crashes(sb) == before:
            return SuiteRun(driver, outcomes, seconds, crashes, log)
        crashes += 1  # noqa: SIM113  (counts crashes, not attempts)
        print(
            f"  the MariaDB master crashed during the {driver} run (query: "
            f"{_crash_query(sb)}); restarting it and running again",
            file=sys.stderr,
        )
        sb.up()
    raise SandboxError(f"the MariaDB master crashed during both {driver} runs; see {logs}")


def _summary(runs: Sequence[SuiteRun], comparison: Comparison, header: str) -> str:
    lines = [header, f"{'driver':<10} {'passed':>7} {'failed':>7} {'errors':>7} "]
    lines[-1] += f"{'skipped':>8} {'total':>6} {'seconds':>8}"
    for run in runs:
        c = run.counts()
        lines.append(
            f"{run.driver:<10} {c['passed']:>7} {c['failed']:>7} {c['error']:>7} "
            f"{c['skipped']:>8} {len(run.outcomes):>6} {run.seconds:>8.1f}"
            + (f"  (server crashed {run.crashes}x, run again)" if run.crashes else "")
        )
    us, them = runs[0].driver, runs[1].driver
    for title, items in (
        (f"{us} does not pass, {them} passes", comparison.regressions),
        (f"{us} passes, {them} does not", comparison.improvements),
        ("other differences", comparison.other),
    ):
        if items:
            lines.append(f"{title} ({len(items)}):")
            for key, (ours, theirs) in items.items():
                why = f"  -- {EXPLAINED[key]}" if key in EXPLAINED else ""
                lines.append(f"  {key}: {us} {ours}, {them} {theirs}{why}")
    if not comparison.unexplained and runs[0].passed >= runs[1].passed:
        lines.append(f"{us} passes every test that {them} passes.")
    return "\n".join(lines)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/sqla-suite",
        description=(
            "Run SQLAlchemy's dialect compliance suite through mysql+sqlrouter and "
            "mysql+pymysql against the same sandbox master, and compare."
        ),
    )
    parser.add_argument(
        "--asyncio",
        action="store_true",
        help="compare mysql+sqlrouter_async with mysql+aiomysql (create_async_engine)",
    )
    parser.add_argument("--dir", type=Path, help="an existing sandbox (default: a new one)")
    parser.add_argument("--replicas", type=int, default=2, help="replicas of a new sandbox")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--logs", type=Path, help="keep pytest's logs and junit files here")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds allowed per run (default 600)"
    )
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments, after --")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="sqla-suite-logs-") as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        try:
            with _sandbox(args.dir, args.replicas) as sb:
                redact = _Redactor([sb.state.app.password])
                prepare(sb)
                version = str(sb.query(sb.master.name, "SELECT VERSION()")[0][0])
                urls = suite_urls(sb)
                runs = [
                    run_suite(
                        sb,
                        driver,
                        urls[driver],
                        logs=logs,
                        pytest_args=args.pytest_args,
                        timeout=args.timeout,
                    )
                    for driver in (ASYNC_DRIVERS if args.asyncio else DRIVERS)
                ]
        except SandboxError as exc:
            print(f"sqla-suite: {exc}", file=sys.stderr)
            return 2
        comparison = compare(runs[0], runs[1])
        header = (
            f"SQLAlchemy {sqlalchemy.__version__} compliance suite, MariaDB {version} "
            "(the sandbox master), same user and database for both drivers"
            + (" (asyncio)" if args.asyncio else "")
        )
        print(redact(_summary(runs, comparison, header)))
        if args.json is not None:
            args.json.write_text(json.dumps(_as_json(runs, comparison, version), indent=2))
        ok = not comparison.unexplained and runs[0].passed >= runs[1].passed
        return 0 if ok else 1


def _as_json(runs: Sequence[SuiteRun], comparison: Comparison, version: str) -> dict[str, Any]:
    return {
        "sqlalchemy": sqlalchemy.__version__,
        "server": version,
        "runs": {
            run.driver: {"counts": run.counts(), "seconds": round(run.seconds, 1)}
            | {"crashes": run.crashes, "total": len(run.outcomes)}
            for run in runs
        },
        "regressions": {k: list(v) for k, v in comparison.regressions.items()},
        "improvements": {k: list(v) for k, v in comparison.improvements.items()},
        "other": {k: list(v) for k, v in comparison.other.items()},
        "explained": dict(EXPLAINED),
    }


if __name__ == "__main__":
    sys.exit(main())
