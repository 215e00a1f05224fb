"""A real HAProxy (Debian's haproxy, installed by scripts/_setup.sh) whose ``option
httpchk`` asks sqlrouter's health endpoint takes a replica out of the reader backend when
its lag passes max_lag or its IO thread stops, and puts it back when it recovers, and so does
an agent check on sqlrouter's agent-check listener; HAProxy's own mysql-check, beside
them, notices neither."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pymysql
import pytest

import sqlrouter
from benchmarks._haproxy import HAProxyError, Server, find_haproxy
from benchmarks._httpchk import AGENT_BACKEND, HTTP_BACKEND, MYSQL_BACKEND, HttpCheckProxy
from sqlrouter.observe.agentcheck import AgentCheckServer
from sqlrouter.observe.health import HealthServer
from sqlrouter.sandbox import Sandbox

pytestmark = pytest.mark.sandbox


def _require_haproxy() -> None:
    try:
        find_haproxy()
    except HAProxyError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{exc} (scripts/_setup.sh installs it with apt-get)")


def readers(sb: Sandbox, port: int, count: int) -> Counter[str]:
    """The servers that ``count`` connections through HAProxy's ``port`` land on."""
    seen: Counter[str] = Counter()
    app = sb.state.app
    for _ in range(count):
        conn = pymysql.connect(
            host="127.0.0.1", port=port, user=app.user, password=app.password, connect_timeout=5
        )
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@server_id")
                row = cur.fetchone()
        finally:
            conn.close()
        assert row is not None
        seen[f"db{row[0]}"] += 1
    return seen


def test_httpchk_takes_a_lagging_or_stopped_replica_out_and_back(
    fresh_cluster: Sandbox, tmp_path: Path
) -> None:
    _require_haproxy()
    sb = fresh_cluster
    sqlrouter.connect(sb.url("RW_STRICT")).close()  # this process watches the service
    replicas = [Server(n.name, "127.0.0.1", n.port) for n in sb.replicas]
    assert [s.name for s in replicas] == ["db2", "db3"]
    with (
        HealthServer("127.0.0.1:0") as health,
        AgentCheckServer("127.0.0.1:0") as agent,
        HttpCheckProxy(
            tmp_path / "haproxy",
            replicas=replicas,
            service="sandbox",
            health_port=health.address[1],
            max_lag=1.0,
            agent_port=agent.address[1],
        ) as proxy,
    ):
        for name in ("db2", "db3"):
            proxy.wait(HTTP_BACKEND, name, True, timeout=20)
            proxy.wait(MYSQL_BACKEND, name, True, timeout=20)
            proxy.wait(AGENT_BACKEND, name, True, timeout=20)
        assert set(readers(sb, proxy.http_port, 4)) == {"db2", "db3"}

        # Lag over max_lag (db2), then a stopped IO thread (db3: the heartbeat stops
        # arriving, the lag grows past max_lag): out of the httpchk and agent-check
        # backends, still in the mysql-check one; back in once repaired.
        for name, fault, seconds, other in (
            ("db2", "delay", 3.0, "db3"),
            ("db3", "stop-io", None, "db2"),
        ):
            sb.fault(name, fault, seconds)
            try:
                proxy.wait(HTTP_BACKEND, name, False, timeout=20)
                proxy.wait(AGENT_BACKEND, name, False, timeout=20)
                assert proxy.up(MYSQL_BACKEND, name) is True
                assert readers(sb, proxy.http_port, 4) == Counter({other: 4})
            finally:
                sb.fault(name, "resume")
            proxy.wait(HTTP_BACKEND, name, True, timeout=30)
            proxy.wait(AGENT_BACKEND, name, True, timeout=30)
        assert set(readers(sb, proxy.http_port, 4)) == {"db2", "db3"}
