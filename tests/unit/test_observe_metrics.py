"""Telemetry records to observers, and to Prometheus metrics (hand-built records and
snapshots; the sandbox tests are in tests/integration/test_observe.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from sqlrouter import events, telemetry
from sqlrouter.observe.metrics import Metrics
from sqlrouter.topology import DataSource

from .test_router import cluster, down, healthy, master, replica

DB2 = DataSource(name="db2", host="127.0.0.1", port=3311)


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    snaps = [healthy()]
    m = Metrics(registry=CollectorRegistry(), snapshots=lambda: snaps, clock=lambda: 12.5)
    m.start()
    try:
        yield m
    finally:
        m.close()


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def routed(**kw: object) -> telemetry.Routed:
    fields: dict[str, object] = {
        "service": "sandbox",
        "qos": "RO_RELAXED",
        "verdict": "replica",
        "reason": "ok",
        "datasource": DB2,
        "detail": "replica db2 lag 0.1s <= 1.0s",
        "connected": True,
        "started": 1.0,
        "duration": 0.002,
    }
    fields.update(kw)
    return telemetry.Routed(**fields)  # type: ignore[arg-type]


def test_observers_get_every_record_until_cancelled() -> None:
    seen: list[telemetry.Record] = []
    registration = telemetry.add(seen.append)
    try:
        record = telemetry.GtidFallback("sandbox", "db1")
        telemetry.emit(record)
        assert seen == [record]
    finally:
        registration.cancel()
    telemetry.emit(telemetry.GtidFallback("sandbox", "db1"))
    assert len(seen) == 1
    assert seen.append not in telemetry.observers


def test_a_failing_observer_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(record: telemetry.Record) -> None:
        raise RuntimeError("boom")

    seen: list[telemetry.Record] = []
    first, second = telemetry.add(broken), telemetry.add(seen.append)
    try:
        with caplog.at_level(logging.ERROR, logger="sqlrouter.telemetry"):
            telemetry.emit(telemetry.ControlCommand("status", True))
    finally:
        first.cancel()
        second.cancel()
    assert len(seen) == 1
    assert "telemetry observer" in caplog.text and "ControlCommand" in caplog.text


def test_connects_and_decisions_by_outcome(metrics: Metrics) -> None:
    metrics.observe(routed())
    metrics.observe(routed(connected=False, error="refused"))
    metrics.observe(
        routed(verdict="refused", reason="no_replica", datasource=None, connected=False)
    )
    base = {"service": "sandbox", "qos": "RO_RELAXED"}
    assert sample(metrics, "sqlrouter_connects_total", datasource="db2", outcome="ok", **base) == 1
    assert (
        sample(metrics, "sqlrouter_connects_total", datasource="db2", outcome="failed", **base) == 1
    )
    decisions = "sqlrouter_routing_decisions_total"
    assert sample(metrics, decisions, verdict="replica", reason="ok", **base) == 2
    assert sample(metrics, decisions, verdict="refused", reason="no_replica", **base) == 1
    assert sample(metrics, "sqlrouter_connect_duration_seconds_count", **base) == 1


def test_the_other_records(metrics: Metrics) -> None:
    svc = {"service": "sandbox"}
    metrics.observe(telemetry.MonitorRound("sandbox", 1.0, 0.01, ("db3",)))
    metrics.observe(telemetry.ConsistencyCheck("sandbox", DB2, "free", 1.0, 0.0))
    metrics.observe(telemetry.ConsistencyCheck("sandbox", DB2, "waited", 1.0, 0.25))
    metrics.observe(telemetry.GtidFallback("sandbox", "db1"))
    metrics.observe(telemetry.Invalidated("sandbox", "db1", "master_changed", 3))
    metrics.observe(telemetry.TopologyRun("sandbox", "switchover", "ok", 1.0, 0.8, "db2"))
    metrics.observe(telemetry.TopologyRun("sandbox", "failover", "dry_run", 1.0, 0.1))
    metrics.observe(telemetry.ControlCommand("promote", False))
    assert sample(metrics, "sqlrouter_monitor_round_duration_seconds_count", **svc) == 1
    assert sample(metrics, "sqlrouter_monitor_probe_failures_total", datasource="db3", **svc) == 1
    assert sample(metrics, "sqlrouter_consistency_checks_total", outcome="free", **svc) == 1
    assert sample(metrics, "sqlrouter_consistency_wait_seconds_sum", **svc) == 0.25
    assert sample(metrics, "sqlrouter_gtid_capture_fallbacks_total", **svc) == 1
    assert sample(metrics, "sqlrouter_invalidations_total", cause="master_changed", **svc) == 3
    ops = "sqlrouter_topology_operations_total"
    assert sample(metrics, ops, operation="switchover", outcome="ok", **svc) == 1
    assert sample(metrics, ops, operation="failover", outcome="dry_run", **svc) == 1
    durations = "sqlrouter_topology_operation_duration_seconds_count"
    assert sample(metrics, durations, operation="failover", **svc) is None
    assert sample(metrics, "sqlrouter_control_commands_total", command="promote", outcome="error")


def test_master_changes_come_from_the_events(metrics: Metrics) -> None:
    events.publish([events.Event("master_changed", "sandbox", "db2", previous="db1")])
    assert sample(metrics, "sqlrouter_master_changes_total", service="sandbox") == 1


def test_the_datasource_gauges_are_read_from_the_snapshots() -> None:
    snap = cluster(master("db1"), replica("db2", 2.5), down("db3"), offline={"db2"})
    older = cluster(master("db1"), replica("db2", 0.1), replica("db3"))  # taken_at 0: older
    snap = replace(snap, taken_at=10.0)
    m = Metrics(registry=CollectorRegistry(), snapshots=lambda: [older, snap], clock=lambda: 12.5)
    try:
        svc = {"service": "sandbox"}
        assert sample(m, "sqlrouter_datasource_lag_seconds", datasource="db2", **svc) == 2.5
        assert sample(m, "sqlrouter_datasource_lag_seconds", datasource="db3", **svc) is None
        assert sample(m, "sqlrouter_datasource_up", datasource="db3", **svc) == 0
        assert sample(m, "sqlrouter_datasource_online", datasource="db2", **svc) == 0
        assert sample(m, "sqlrouter_datasource_read_only", datasource="db1", **svc) == 0
        assert sample(m, "sqlrouter_datasource_read_only", datasource="db3", **svc) is None
        assert sample(m, "sqlrouter_datasource_role", datasource="db1", role="master", **svc) == 1
        assert sample(m, "sqlrouter_datasource_role", datasource="db2", role="replica", **svc) == 1
        assert sample(m, "sqlrouter_datasource_role", datasource="db3", role="none", **svc) == 1
        assert sample(m, "sqlrouter_snapshot_age_seconds", **svc) == 2.5
    finally:
        m.close()


def test_a_stale_snapshot_reports_no_observation_and_says_it_is_stale() -> None:
    """A monitor that stopped publishing left up=1 and lag=0.1 on the dashboards for
    ever; past the snapshot's max_age only its age, fresh=0 and online remain."""
    snap = replace(healthy(), taken_at=10.0)
    now = [10.0 + snap.max_age]
    m = Metrics(registry=CollectorRegistry(), snapshots=lambda: [snap], clock=lambda: now[0])
    try:
        svc = {"service": "sandbox", "datasource": "db2"}
        assert sample(m, "sqlrouter_snapshot_fresh", service="sandbox") == 1
        assert sample(m, "sqlrouter_datasource_up", **svc) == 1
        assert sample(m, "sqlrouter_datasource_lag_seconds", **svc) == 0.12
        now[0] += 0.5
        assert sample(m, "sqlrouter_snapshot_fresh", service="sandbox") == 0
        for gauge in ("up", "lag_seconds", "read_only"):
            assert sample(m, f"sqlrouter_datasource_{gauge}", **svc) is None, gauge
        assert sample(m, "sqlrouter_datasource_role", role="replica", **svc) is None
        assert sample(m, "sqlrouter_datasource_online", **svc) == 1
        assert sample(m, "sqlrouter_snapshot_age_seconds", service="sandbox") == snap.max_age + 0.5
    finally:
        m.close()


def test_close_removes_everything_and_a_second_registration_is_refused() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry=registry).start()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry=registry)
    m.close()
    assert m.observe not in telemetry.observers
    Metrics(registry=registry).close()  # the names are free again
