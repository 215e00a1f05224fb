"""The command line as a user runs it: route and demo."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sqlrouter.demo import run_demo
from sqlrouter.sandbox import Sandbox

pytestmark = pytest.mark.sandbox


def test_route_explains_the_decision(cluster: Sandbox) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "sqlrouter.cli", "route", cluster.url("RO_RELAXED")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "service 'sandbox'" in out and "qos=RO_RELAXED" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("db")}
    assert "master (fallback)" in lines["db1"]
    assert "replica, lag" in lines["db2"] and "replica, lag" in lines["db3"]
    assert "-> db2" in out or "-> db3" in out
    assert cluster.state.app.password not in out + res.stderr


def test_route_reports_bad_input_in_one_line(cluster: Sandbox) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sqlrouter.cli",
            "route",
            cluster.url().replace("qos=RW_STRICT", "qos=FAST"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
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
