"""The command line as a user runs it: route and demo."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from sqlrouter.cli.demo import run_demo
from sqlrouter.sandbox import Sandbox
from sqlrouter.sandbox._process import _port_free
from tests.fixtures.helpers import mariadbd_pids

pytestmark = pytest.mark.sandbox


def route(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlrouter", "route", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_route_explains_the_decision(cluster: Sandbox) -> None:
    res = route(cluster.url("RO_RELAXED"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "service 'sandbox'" in out and "qos=RO_RELAXED" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("db")}
    assert "master (fallback)" in lines["db1"]
    assert "replica, lag" in lines["db2"] and "replica, lag" in lines["db3"]
    assert "-> db2" in out or "-> db3" in out
    assert "login as 'app' to database 'appdb' on db" in out and out.rstrip().endswith(": ok")
    assert cluster.state.app.password not in out + res.stderr


def test_route_checks_the_urls_own_credentials(cluster: Sandbox) -> None:
    """The monitor has an account of its own: the table looks healthy whatever the URL's
    password; the login line and the exit status say whether this URL can connect."""
    password = quote(cluster.state.app.password, safe="")
    url = cluster.url("RO_RELAXED")
    assert f":{password}@" in url
    res = route(url.replace(f":{password}@", ":wrong-password@"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAILED: (1045) Access denied for user 'app'" in res.stdout
    assert "wrong-password" not in res.stdout + res.stderr


def test_route_exits_non_zero_when_nothing_qualifies(make_cluster: Callable[..., Sandbox]) -> None:
    sb = make_cluster(replicas=0)
    res = route(sb.url("RO_RELAXED", fallback="error"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no datasource:" in res.stdout and "login as" not in res.stdout


def test_route_reports_bad_input_in_one_line(cluster: Sandbox) -> None:
    res = route(cluster.url().replace("qos=RW_STRICT", "qos=FAST"))
    assert res.returncode == 1
    assert "qos" in res.stderr and "FAST" in res.stderr and "RO_RELAXED" in res.stderr
    assert "Traceback" not in res.stderr


def test_demo_shows_routing_and_faults(tmp_path: object) -> None:
    lines: list[str] = []
    run_demo(out=lines.append)
    text = "\n".join(lines)
    assert "10 connections -> {'db1': 10}" in text
    assert "(db2 is left out)" in text and "20 connections -> {'db3': 20}" in text
    assert "20 connections -> {'db2': 20}" in text  # db3 excluded after stop-io
    assert "[ok] writable db2" in text and "10 RW_STRICT connections -> {'db2': 10}" in text
    assert "cleaning up" in text


def test_a_killed_demo_leaves_no_server_running() -> None:
    """The demo's own sandbox dies with it: a demo killed while it runs (a cancelled CI
    job, a test run interrupted) leaves no ``mariadbd`` behind."""
    # A short directory: the servers' socket paths must stay under 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="sqd-"))
    try:
        _kill_a_demo_in(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_a_demo_in(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlrouter", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        seen = []
        for line in proc.stdout:  # the servers are up once the demo's second step starts
            seen.append(line)
            if line.startswith("== 2.") or time.monotonic() > deadline:
                break
        assert any(line.startswith("== 2.") for line in seen), "".join(seen)
        assert mariadbd_pids(tmp_path), "the demo's servers were not found"
    finally:
        proc.kill()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    deadline = time.monotonic() + 30
    while (left := mariadbd_pids(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:  # without the fix: do not leave them running either
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert left == [], f"servers left running after the demo was killed: {left}"


def _free_base_port(count: int) -> int:
    for base in range(21000, 60000, 97):
        if all(_port_free(p) for p in range(base, base + count)):
            return base
    pytest.skip("no consecutive free ports")


def test_demo_reuses_its_directory(tmp_path: Path) -> None:
    """``demo --dir DIR`` a second time works on the sandbox the first left behind
    (whose master moved), and ``--base-port`` places a new one."""
    directory = tmp_path / "demo"
    base = _free_base_port(3)
    try:
        first: list[str] = []
        run_demo(str(directory), keep=True, base_port=base, out=first.append)
        sb = Sandbox(directory)
        assert [n.port for n in sb.nodes] == [base, base + 1, base + 2]
        text = "\n".join(first)
        hint = f"sqlrouter admin switchover sandbox --to db2 --registry {sb.registry_path}"
        assert hint in text
        assert "10 RW_STRICT connections -> {'db2': 10}" in text

        again: list[str] = []
        run_demo(str(directory), out=again.append)
        text = "\n".join(again)
        assert "already running; nothing changed" in text
        assert "10 connections -> {'db2': 10}" in text  # the master the first run left
        assert "a planned switchover to db1" in text
        assert "10 RW_STRICT connections -> {'db1': 10}" in text
        assert f"the sandbox keeps running in {directory}" in text
        assert "cleaning up" not in text
    finally:
        Sandbox(directory).destroy()
