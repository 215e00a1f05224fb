"""Metrics, spans and the health endpoint against a real sandbox cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.pymysql import PyMySQLInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import sqlrouter
import sqlrouter.aio
from sqlrouter import control, telemetry
from sqlrouter._runtime import handles
from sqlrouter.observe import metrics as observe_metrics
from sqlrouter.observe import otel
from sqlrouter.observe.agentcheck import AgentCheckServer
from sqlrouter.observe.health import MAX_REQUEST, HealthServer
from sqlrouter.observe.serve import HealthTask
from sqlrouter.sandbox import Sandbox
from sqlrouter.switchover import switchover
from tests.fixtures.helpers import node_of, wait_until

pytestmark = pytest.mark.sandbox


@pytest.fixture
def metrics() -> Iterator[observe_metrics.Metrics]:
    m = observe_metrics.enable(registry=CollectorRegistry())
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def spans() -> Iterator[tuple[InMemorySpanExporter, TracerProvider, InMemoryMetricReader]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    tracing = otel.enable(tracer_provider=provider, meter_provider=meters)
    try:
        yield exporter, provider, reader
    finally:
        tracing.close()
        provider.shutdown()
        meters.shutdown()


def value(m: observe_metrics.Metrics, name: str, **labels: str) -> float:
    found = m.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - our loopback server
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@contextlib.contextmanager
def replicas_offline() -> Iterator[None]:
    """db2 and db3 offline (operator) in this process, then online again."""
    (handle,) = handles()
    for name in ("db2", "db3"):
        handle.monitor.set_offline(name, True)
    try:
        yield
    finally:
        for name in ("db2", "db3"):
            handle.monitor.set_offline(name, False)


def raw(server: HealthServer | AgentCheckServer, data: bytes, *, timeout: float = 10.0) -> bytes:
    with socket.create_connection(server.address, timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# --- metrics -------------------------------------------------------------------------


def test_metrics_count_connects_and_decisions_and_report_each_datasource(
    cluster: Sandbox, metrics: observe_metrics.Metrics
) -> None:
    for _ in range(3):
        sqlrouter.connect(cluster.url("RW_STRICT")).close()
    for _ in range(4):
        with sqlrouter.connect(cluster.url("RO_RELAXED")) as conn:
            assert node_of(cluster, conn) in {"db2", "db3"}
    with replicas_offline():
        with pytest.raises(sqlrouter.NoReplicaAvailable):
            sqlrouter.connect(cluster.url("RO_RELAXED", fallback="error"))
        with sqlrouter.connect(cluster.url("RO_RELAXED")) as conn:
            assert node_of(cluster, conn) == "db1"
    ok = {"service": "sandbox", "outcome": "ok"}
    assert value(metrics, "sqlrouter_connects_total", datasource="db1", qos="RW_STRICT", **ok) == 3
    on_replicas = sum(
        value(metrics, "sqlrouter_connects_total", datasource=n, qos="RO_RELAXED", **ok)
        for n in ("db2", "db3")
    )
    assert on_replicas == 4
    decisions = {
        ("RW_STRICT", "master", "ok"): 3,
        ("RO_RELAXED", "replica", "ok"): 4,
        ("RO_RELAXED", "refused", "no_replica"): 1,
        ("RO_RELAXED", "fallback", "no_replica"): 1,
    }
    for (qos, verdict, reason), count in decisions.items():
        labels = {"service": "sandbox", "qos": qos, "verdict": verdict, "reason": reason}
        assert value(metrics, "sqlrouter_routing_decisions_total", **labels) == count, labels
    assert value(metrics, "sqlrouter_datasource_online", datasource="db2", service="sandbox") == 1
    # What the monitor saw, read at scrape time from its snapshot.
    ds = {"service": "sandbox"}
    assert value(metrics, "sqlrouter_datasource_up", datasource="db2", **ds) == 1
    assert value(metrics, "sqlrouter_datasource_online", datasource="db2", **ds) == 1
    assert value(metrics, "sqlrouter_datasource_read_only", datasource="db1", **ds) == 0
    assert value(metrics, "sqlrouter_datasource_read_only", datasource="db3", **ds) == 1
    assert value(metrics, "sqlrouter_datasource_role", datasource="db1", role="master", **ds) == 1
    assert value(metrics, "sqlrouter_datasource_role", datasource="db2", role="replica", **ds) == 1
    lag = metrics.registry.get_sample_value(
        "sqlrouter_datasource_lag_seconds", {"datasource": "db2", **ds}
    )
    assert lag is not None and lag >= 0
    wait_until(
        lambda: value(metrics, "sqlrouter_monitor_round_duration_seconds_count", **ds) > 0,
        timeout=10,
        what="a monitor round counted",
    )
    text = metrics.exposition().decode()
    assert "sqlrouter_connects_total{" in text and cluster.state.app.password not in text
    # Closed: nothing counted any more, and the families are gone from the registry.
    metrics.close()
    sqlrouter.connect(cluster.url("RW_STRICT")).close()
    assert metrics.registry.get_sample_value("sqlrouter_connects_total", {**ok}) is None
    assert "sqlrouter_" not in metrics.exposition().decode()


def test_asyncio_connections_emit_the_same_records(cluster: Sandbox) -> None:
    """The telemetry hooks live in the code both drivers share (_connbase): an
    aiomysql connection is routed, refused and checked exactly like a PyMySQL one."""
    records: list[telemetry.Record] = []
    registration = telemetry.add(records.append)

    async def main() -> None:
        with sqlrouter.session():
            rw = await sqlrouter.aio.connect(cluster.url("RW_STRICT"), autocommit=True)
            ro = await sqlrouter.aio.connect(cluster.url("RO_RELAXED", max_lag=5))
            async with rw.cursor() as cur:
                await cur.execute("CREATE OR REPLACE TABLE appdb.obs_aio (id INT PRIMARY KEY)")
                await cur.execute("INSERT INTO appdb.obs_aio VALUES (1)")
            async with ro.cursor() as cur:  # the session's token is checked here
                await cur.execute("SELECT id FROM appdb.obs_aio")
        rw.close()
        ro.close()
        with replicas_offline(), pytest.raises(sqlrouter.NoReplicaAvailable):
            await sqlrouter.aio.connect(cluster.url("RO_RELAXED", fallback="error"))

    try:
        asyncio.run(main())
    finally:
        registration.cancel()
    routed = [r for r in records if isinstance(r, telemetry.Routed)]
    verdicts = [(r.qos, r.verdict, r.reason, r.connected) for r in routed]
    assert verdicts == [
        ("RW_STRICT", "master", "ok", True),
        ("RO_RELAXED", "replica", "ok", True),
        ("RO_RELAXED", "refused", "no_replica", False),
    ]
    assert routed[0].server_version and routed[0].datasource is not None
    checks = [r for r in records if isinstance(r, telemetry.ConsistencyCheck)]
    assert checks and {c.outcome for c in checks} <= {"free", "waited"}


_BLOCKER = """
import importlib.abc, sys
tried = []
class Blocker(importlib.abc.MetaPathFinder):
    # As if the metrics and otel extras were not installed, and recording every try.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("prometheus_client", "opentelemetry"):
            tried.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
"""


def test_without_the_extras_nothing_is_imported(cluster: Sandbox) -> None:
    """With prometheus_client and opentelemetry unimportable (a meta-path blocker), a
    process routes, keeps sessions, and serves the health endpoint and the agent check
    (no extra needed), and never tries to import either library; the metrics module
    says which extra it needs."""
    master = cluster.state.master
    code = _BLOCKER + (
        "import socket, urllib.request, sqlrouter\n"
        "from sqlrouter.observe.health import HealthServer\n"
        "from sqlrouter.observe.agentcheck import AgentCheckServer\n"
        "with sqlrouter.session():\n"
        f"    sqlrouter.connect({cluster.url('RW_STRICT')!r}).close()\n"
        f"    sqlrouter.connect({cluster.url('RO_RELAXED')!r}).close()\n"
        "with HealthServer('127.0.0.1:0') as h, AgentCheckServer('127.0.0.1:0') as a:\n"
        f"    url = 'http://%s:%d/health/sandbox/{master}?role=master' % h.address\n"
        "    print(urllib.request.urlopen(url, timeout=10).status)\n"
        "    with socket.create_connection(a.address, timeout=10) as s:\n"
        f"        s.sendall(b'sandbox {master} master\\n')\n"
        "        print(s.recv(100).decode().strip())\n"
        "print(tried)\n"
        "try:\n"
        "    import sqlrouter.observe.metrics\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc.name)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["200", "up", "[]", "prometheus_client"], out.stdout + out.stderr


def test_control_commands_are_counted(
    cluster: Sandbox, metrics: observe_metrics.Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = Path(tempfile.mkdtemp(prefix="sqlrobs"))
    try:
        monkeypatch.setenv("SQLROUTER_CONTROL", str(base / "d"))
        sqlrouter.connect(cluster.url("RW_STRICT")).close()
        server = control.current()
        assert server is not None and server.socket_path is not None
        assert control.request(server.socket_path, {"cmd": "status"})["ok"]
        refused = control.request(
            server.socket_path, {"cmd": "offline", "service": "sandbox", "datasource": "db9"}
        )
        assert not refused["ok"]
        assert (
            value(metrics, "sqlrouter_control_commands_total", command="status", outcome="ok") == 1
        )
        assert (
            value(metrics, "sqlrouter_control_commands_total", command="offline", outcome="error")
            == 1
        )
    finally:
        sqlrouter.shutdown()
        shutil.rmtree(base, ignore_errors=True)


# --- spans ---------------------------------------------------------------------------


def test_a_span_per_routed_connect_beside_pymysql_instrumentation(
    cluster: Sandbox,
    spans: tuple[InMemorySpanExporter, TracerProvider, InMemoryMetricReader],
) -> None:
    exporter, provider, _ = spans
    tracer = provider.get_tracer("the application")
    with tracer.start_as_current_span("request") as request:
        conn = sqlrouter.connect(cluster.url("RO_RELAXED"))
        # The documented combination: instrument_connection() on the connection object
        # (PyMySQLInstrumentor().instrument() patches pymysql.connect, not sqlrouter's).
        traced = PyMySQLInstrumentor().instrument_connection(  # type: ignore[no-untyped-call]
            conn, tracer_provider=provider
        )
        cur = traced.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
        cur.close()
        conn.close()
    (connect,) = named(exporter, "sqlrouter connect")
    assert conn.datasource is not None
    attrs = dict(connect.attributes or {})
    assert attrs["db.system.name"] == "mariadb"
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == conn.datasource.port
    assert attrs["db.namespace"] == cluster.state.database
    assert attrs["sqlrouter.datasource"] == conn.datasource.name
    assert attrs["sqlrouter.qos"] == "RO_RELAXED"
    assert attrs["sqlrouter.verdict"] == "replica"
    assert str(attrs["sqlrouter.decision"]).startswith(f"replica {conn.datasource.name} lag ")
    assert isinstance(attrs["sqlrouter.lag_seconds"], float)
    assert connect.kind is trace.SpanKind.CLIENT
    selects = [s for s in exporter.get_finished_spans() if s.name.startswith("SELECT")]
    assert len(selects) == 1, [s.name for s in exporter.get_finished_spans()]
    parent = request.get_span_context().span_id
    assert connect.parent is not None and connect.parent.span_id == parent
    assert selects[0].parent is not None and selects[0].parent.span_id == parent
    select_attrs = dict(selects[0].attributes or {})
    assert select_attrs.get("net.peer.port", select_attrs.get("server.port")) == (
        conn.datasource.port
    )
    assert connect.end_time is not None and connect.start_time is not None
    assert connect.end_time <= (selects[0].start_time or 0)
    for span in exporter.get_finished_spans():
        assert cluster.state.app.password not in json.dumps(dict(span.attributes or {}))


def test_a_refused_connect_is_an_error_span(
    cluster: Sandbox,
    spans: tuple[InMemorySpanExporter, TracerProvider, InMemoryMetricReader],
) -> None:
    exporter, _, _ = spans
    sqlrouter.connect(cluster.url("RW_STRICT")).close()  # the monitor has seen the servers
    with replicas_offline(), pytest.raises(sqlrouter.NoReplicaAvailable):
        sqlrouter.connect(cluster.url("RO_RELAXED", fallback="error"))
    refused = [
        s
        for s in named(exporter, "sqlrouter connect")
        if (s.attributes or {}).get("sqlrouter.verdict") == "refused"
    ]
    assert len(refused) == 1
    assert refused[0].status.status_code is trace.StatusCode.ERROR
    assert (refused[0].attributes or {})["error.type"] == "no_replica"
    assert (refused[0].attributes or {})["db.system.name"] == "mariadb"


# --- the health endpoint -------------------------------------------------------------


def test_the_health_endpoint_over_http(cluster: Sandbox, metrics: observe_metrics.Metrics) -> None:
    sqlrouter.connect(cluster.url("RW_STRICT")).close()  # this process watches the service
    with HealthServer(
        "127.0.0.1:0",
        metrics=lambda: (metrics.exposition(), observe_metrics.CONTENT_TYPE),
        timeout=1.0,
    ) as server:
        base = server.url
        status, kind, body = get(f"{base}/health/sandbox/db2?max_lag=5")
        assert (status, kind) == (200, "text/plain; charset=utf-8")
        assert body.startswith("up: db2 replica, lag ")
        assert get(f"{base}/health/sandbox/db1?role=master")[::2] == (
            200,
            "up: db1 is the master\n",
        )
        assert get(f"{base}/health/sandbox/db1")[::2] == (503, "down: db1 writable master\n")
        assert get(f"{base}/health/sandbox/nope")[0] == 404
        assert get(f"{base}/health/sandbox/db2?max_lag=x")[0] == 400
        status, kind, body = get(f"{base}/metrics")
        assert status == 200 and kind.startswith("text/plain") and "sqlrouter_datasource_up" in body
        status, kind, body = get(f"{base}/status")
        assert (status, kind) == (200, "application/json")
        (svc,) = json.loads(body)["services"]
        assert svc["master"] == "db1"
        assert cluster.state.app.password not in body
        assert cluster.state.admin.password not in body
        # Garbage, oversized and silent clients get an answer (or are closed), never a crash.
        assert raw(server, b"\x16\x03\x01\x00\xff garbage\r\n\r\n").startswith(b"HTTP/1.0 400 ")
        assert raw(server, b"GET /" + b"a" * MAX_REQUEST + b"\r\n").startswith(b"HTTP/1.0 431 ")
        assert raw(server, b"GET /status HTTP/1.1\r\n").startswith(b"HTTP/1.0 408 ")
        assert raw(server, b"").startswith(b"HTTP/1.0 408 ")
        # Still serving after all of it.
        assert get(f"{base}/health/sandbox/db3?max_lag=5")[0] == 200
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=2).close()


def test_idle_clients_cannot_keep_the_checks_out(cluster: Sandbox) -> None:
    """More idle clients than max_clients (a port scan, a slowloris): each new client
    takes the slot of the oldest one still sending, so HAProxy's checks are answered
    instead of "busy" (which marked every replica down)."""
    sqlrouter.connect(cluster.url("RW_STRICT")).close()
    master = cluster.state.master
    with (
        HealthServer("127.0.0.1:0", timeout=30.0, max_clients=2) as server,
        AgentCheckServer("127.0.0.1:0", timeout=30.0, max_clients=2) as agent,
    ):
        for listener, request, ok in (
            (
                server,
                f"GET /health/sandbox/{master}?role=master HTTP/1.0\r\n\r\n",
                b"HTTP/1.0 200 ",
            ),
            (agent, f"sandbox {master} master\n", b"up\n"),
        ):
            silent = [socket.create_connection(listener.address, timeout=10) for _ in range(4)]
            try:
                for _ in range(3):
                    assert raw(listener, request.encode()).startswith(ok), listener
                # The oldest idle clients were closed without an answer.
                assert silent[0].recv(100) == b""
                assert silent[1].recv(100) == b""
            finally:
                for sock in silent:
                    sock.close()


def test_lag_and_switchover_seen_by_metrics_spans_and_the_endpoint(
    fresh_cluster: Sandbox,
    metrics: observe_metrics.Metrics,
    spans: tuple[InMemorySpanExporter, TracerProvider, InMemoryMetricReader],
) -> None:
    sb = fresh_cluster
    exporter, _, reader = spans
    url = sb.url("RO_RELAXED", max_lag=30, consistency_wait=10)
    with HealthServer("127.0.0.1:0") as server:
        sqlrouter.connect(sb.url("RW_STRICT")).close()
        for replica in ("db2", "db3"):
            sb.fault(replica, "delay", 2)
        try:
            # A write in a session, then a relaxed read: the replicas apply it 2 s late,
            # so the read waits for it (MASTER_GTID_WAIT) within consistency_wait.
            with sqlrouter.session():
                rw = sqlrouter.connect(sb.url("RW_STRICT"))
                with rw.cursor() as cur:
                    cur.execute("CREATE TABLE IF NOT EXISTS obs (id INT PRIMARY KEY)")
                    cur.execute("REPLACE INTO obs VALUES (1)")
                rw.commit()
                ro = sqlrouter.connect(url)
                with ro.cursor() as cur:
                    cur.execute("SELECT COUNT(*) FROM obs")
                    assert cur.fetchone() == (1,)
                rw.close()
                ro.close()
            svc = {"service": "sandbox"}
            assert (
                value(metrics, "sqlrouter_consistency_checks_total", outcome="waited", **svc) == 1
            )
            assert value(metrics, "sqlrouter_consistency_wait_seconds_count", **svc) == 1
            assert value(metrics, "sqlrouter_consistency_wait_seconds_sum", **svc) > 0
            (wait,) = named(exporter, "sqlrouter consistency_wait")
            assert (wait.attributes or {})["sqlrouter.outcome"] == "waited"
            data = reader.get_metrics_data()
            assert data is not None
            durations = [
                m
                for rm in data.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
                if m.name == "db.client.operation.duration"
            ]
            assert len(durations) == 1 and durations[0].unit == "s"
            # The lag passes 1 s: the endpoint says so, the gauge shows it.
            wait_until(
                lambda: get(f"{server.url}/health/sandbox/db2?max_lag=1")[0] == 503,
                timeout=15,
                what="db2 down at max_lag=1",
            )
            status, _, body = get(f"{server.url}/health/sandbox/db2?max_lag=1")
            assert status == 503 and body.startswith("down: db2 lag "), body
            lag = metrics.registry.get_sample_value(
                "sqlrouter_datasource_lag_seconds", {"service": "sandbox", "datasource": "db2"}
            )
            assert lag is not None and lag > 1
        finally:
            for replica in ("db2", "db3"):
                sb.fault(replica, "resume")
        wait_until(
            lambda: get(f"{server.url}/health/sandbox/db2?max_lag=1")[0] == 200,
            timeout=20,
            what="db2 up again",
        )
        # A switchover: counted, traced, and the writer's connection invalidated.
        rw = sqlrouter.connect(sb.url("RW_STRICT"))
        switchover(sb.service(), "db2", timeout=30)
        wait_until(
            lambda: (
                value(
                    metrics,
                    "sqlrouter_invalidations_total",
                    service="sandbox",
                    cause="master_changed",
                )
                >= 1
            ),
            timeout=10,
            what="the writer's connection invalidated",
        )
        rw.close()
        assert value(metrics, "sqlrouter_master_changes_total", service="sandbox") >= 1
        ok = {"service": "sandbox", "operation": "switchover"}
        assert value(metrics, "sqlrouter_topology_operations_total", outcome="ok", **ok) == 1
        assert value(metrics, "sqlrouter_topology_operation_duration_seconds_count", **ok) == 1
        (run,) = named(exporter, "sqlrouter switchover")
        assert (run.attributes or {})["sqlrouter.target"] == "db2"
        wait_until(
            lambda: get(f"{server.url}/health/sandbox/db2?role=master")[0] == 200,
            timeout=10,
            what="db2 the master",
        )
        assert get(f"{server.url}/health/sandbox/db1?role=master")[0] == 503


def test_a_lost_server_is_down_and_counted(
    fresh_cluster: Sandbox, metrics: observe_metrics.Metrics
) -> None:
    sb = fresh_cluster
    sqlrouter.connect(sb.url("RW_STRICT")).close()
    with HealthServer("127.0.0.1:0") as server:
        sb.fault("db3", "kill")
        wait_until(
            lambda: get(f"{server.url}/health/sandbox/db3")[0] == 503,
            timeout=10,
            what="db3 down",
        )
        assert get(f"{server.url}/health/sandbox/db3")[2].startswith("down: db3 unreachable")
        wait_until(
            lambda: (
                value(
                    metrics,
                    "sqlrouter_monitor_probe_failures_total",
                    service="sandbox",
                    datasource="db3",
                )
                > 0
            ),
            timeout=10,
            what="a probe failure counted",
        )
        assert value(metrics, "sqlrouter_datasource_up", service="sandbox", datasource="db3") == 0


def test_the_health_task_serves_health_metrics_and_the_agent_check(cluster: Sandbox) -> None:
    """What `sqlrouter agent --http` runs: the endpoint, /metrics of its own registry, and
    HAProxy's agent check, until stopped."""
    with pytest.raises(ValueError, match="not a loopback address"):
        HealthTask("10.0.0.1:9200")
    sqlrouter.connect(cluster.url("RW_STRICT")).close()
    task = HealthTask("127.0.0.1:0", agent_check="127.0.0.1:0")
    task.start(None)
    try:
        assert task.server is not None and task.agent is not None
        base = task.server.url
        assert get(f"{base}/health/sandbox/db1?role=master")[0] == 200
        status, _, body = get(f"{base}/metrics")
        assert status == 200
        assert 'sqlrouter_datasource_up{datasource="db2",service="sandbox"} 1.0' in body
        with socket.create_connection(task.agent.address, timeout=10) as sock:
            sock.sendall(b"sandbox db1 master\n")
            assert sock.recv(100) == b"up\n"
        address = task.server.address
    finally:
        task.stop(5.0)
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2).close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sqlrouter_agent_serves_the_health_endpoint(cluster: Sandbox, tmp_path: Path) -> None:
    """`sqlrouter agent --http`: the endpoint of a process that watches the service, in a
    subprocess, until SIGTERM."""
    share = tmp_path / "share"
    share.mkdir(mode=0o700)
    env = {**os.environ, "SQLROUTER_SHARE": str(share), "SQLROUTER_CONTROL": str(tmp_path / "c")}
    command = [sys.executable, "-m", "sqlrouter", "agent", "--registry", str(cluster.registry_path)]
    refused = subprocess.run(
        [*command, "--http", "10.1.2.3:9200"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert "'10.1.2.3:9200' is not a loopback address" in refused.stderr
    http, check = _free_port(), _free_port()
    agent = subprocess.Popen(
        [*command, "--http", f"127.0.0.1:{http}", "--agent-check", f"127.0.0.1:{check}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{http}"

    def answers() -> bool:
        try:
            return get(f"{base}/health/sandbox/db1?role=master")[0] == 200
        except OSError:  # not listening yet
            return False

    try:
        wait_until(
            lambda: agent.poll() is not None or answers(), timeout=60, what="the agent's endpoint"
        )
        assert agent.poll() is None, agent.communicate(timeout=10)
        assert get(f"{base}/health/sandbox/db2?max_lag=5")[0] == 200
        assert get(f"{base}/health/sandbox/db1")[0] == 503
        status, _, body = get(f"{base}/metrics")
        assert status == 200 and 'sqlrouter_datasource_up{datasource="db3"' in body
        with socket.create_connection(("127.0.0.1", check), timeout=10) as sock:
            sock.sendall(b"sandbox db2 replica 5\n")
            assert sock.recv(100) == b"up\n"
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err
        for secret in (cluster.state.monitor, cluster.state.app, cluster.state.admin):
            assert secret.password not in out + err + body
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", http), timeout=2).close()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate(timeout=10)
