"""Prometheus metrics of sqlrouter (the ``metrics`` extra: ``pip install sqlrouter[metrics]``).

::

    import prometheus_client
    import sqlrouter.observe.metrics

    metrics = sqlrouter.observe.metrics.enable()   # into prometheus_client.REGISTRY
    prometheus_client.start_http_server(9108, addr="127.0.0.1")
    ...
    metrics.close()

Counters and histograms are fed by :mod:`sqlrouter.telemetry` records and by
:mod:`sqlrouter.events` (a master change); the per-datasource gauges are read from the
monitors' snapshots when Prometheus scrapes, so a round costs nothing here.  Every label
is a registry name (service, datasource), a QoS, or one of a few fixed words: never a
query, a user's input or a token.  The metric list is in docs/observability.md.

In a forked child (gunicorn, Celery prefork), counters carry on from the values the
parent had when it forked; expose each worker's registry on a port of its own, or use
prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from .. import events, telemetry
from ..routing.router import observed_master
from ._snapshots import Snapshots, latest, watched_snapshots

__all__ = ["CONTENT_TYPE", "Metrics", "enable"]

#: The Content-Type of :meth:`Metrics.exposition` (Prometheus' text format).
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Histogram buckets (seconds) for consistency waits and connects: 1 ms to 10 s.
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: For topology operations: 0.1 s to 2 min.
_SLOW = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _SnapshotCollector(Collector):
    """The gauges of what each monitor last saw, built when Prometheus scrapes."""

    def __init__(self, snapshots: Snapshots, clock: Callable[[], float]) -> None:
        self._snapshots = snapshots
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        return ()  # the families depend on the snapshots: nothing to check in advance

    def collect(self) -> Iterator[Metric]:
        ds_labels = ["service", "datasource"]
        up = GaugeMetricFamily(
            "sqlrouter_datasource_up",
            "1 if the monitor reached the datasource in its last round, else 0",
            labels=ds_labels,
        )
        online = GaugeMetricFamily(
            "sqlrouter_datasource_online",
            "1 unless an operator took the datasource offline (admin state)",
            labels=ds_labels,
        )
        lag = GaugeMetricFamily(
            "sqlrouter_datasource_lag_seconds",
            "Replication lag as the monitor measured it (heartbeat); absent when unknown",
            labels=ds_labels,
        )
        read_only = GaugeMetricFamily(
            "sqlrouter_datasource_read_only",
            "The datasource's read_only as last observed; absent when unknown",
            labels=ds_labels,
        )
        role = GaugeMetricFamily(
            "sqlrouter_datasource_role",
            "1 for the role the monitor observes: master, replica or none",
            labels=[*ds_labels, "role"],
        )
        age = GaugeMetricFamily(
            "sqlrouter_snapshot_age_seconds",
            "Seconds since the monitor's last round ended",
            labels=["service"],
        )
        fresh = GaugeMetricFamily(
            "sqlrouter_snapshot_fresh",
            "1 while the monitor's last round is within the snapshot's max_age (what "
            "routing trusts); 0 past it, when the datasources' up, lag, read_only and "
            "role are not reported",
            labels=["service"],
        )
        now = self._clock()
        for name, snap in latest(self._snapshots()).items():
            age.add_metric([name], max(0.0, snap.age(now)))
            trusted = snap.age(now) <= snap.max_age
            fresh.add_metric([name], 1.0 if trusted else 0.0)
            master = observed_master(snap)
            for ds in snap.datasources:
                labels = [name, ds.name]
                online.add_metric(labels, 0.0 if ds.name in snap.offline else 1.0)
                if not trusted:
                    # The monitor stopped publishing: what it last saw is not the
                    # present (a replica's lag of 0 s then would read as caught up).
                    continue
                h = snap.health_of(ds.name)
                up.add_metric(labels, 1.0 if h.reachable else 0.0)
                if h.lag is not None and math.isfinite(h.lag):
                    lag.add_metric(labels, h.lag)
                if h.reachable and h.read_only is not None:
                    read_only.add_metric(labels, 1.0 if h.read_only else 0.0)
                if master is not None and master.name == ds.name:
                    seen = "master"
                elif h.reachable and h.read_only and h.replicating:
                    seen = "replica"
                else:
                    seen = "none"
                role.add_metric([*labels, seen], 1.0)
        yield from (up, online, lag, read_only, role, age, fresh)


class Metrics:
    """sqlrouter's metrics in a prometheus_client registry, from :meth:`start` (or
    :func:`enable`) until :meth:`close`.

    ``snapshots`` gives the monitors' snapshots the gauges report (default: the services
    this process watches); ``clock`` is ``time.monotonic``, the monitors' clock.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry = REGISTRY,
        snapshots: Snapshots = watched_snapshots,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._collector = _SnapshotCollector(snapshots, clock)
        self._registrations: list[telemetry.Registration | events.Subscription] = []
        r = registry
        self.connects = Counter(
            "sqlrouter_connects",
            "Connections opened (ok) or not (failed) on a datasource the router chose",
            ["service", "datasource", "qos", "outcome"],
            registry=r,
        )
        self.decisions = Counter(
            "sqlrouter_routing_decisions",
            "Routing decisions: verdict replica, master, fallback or refused, and why",
            ["service", "qos", "verdict", "reason"],
            registry=r,
        )
        self.connect_seconds = Histogram(
            "sqlrouter_connect_duration_seconds",
            "Time to route and open a connection (successful attempts)",
            ["service", "qos"],
            buckets=_FAST,
            registry=r,
        )
        self.rounds = Histogram(
            "sqlrouter_monitor_round_duration_seconds",
            "Duration of the monitor's rounds (every datasource probed once)",
            ["service"],
            buckets=_FAST,
            registry=r,
        )
        self.probe_failures = Counter(
            "sqlrouter_monitor_probe_failures",
            "Monitor rounds that could not observe a datasource",
            ["service", "datasource"],
            registry=r,
        )
        self.checks = Counter(
            "sqlrouter_consistency_checks",
            "Session-consistency checks of relaxed connections: free, waited or moved",
            ["service", "outcome"],
            registry=r,
        )
        self.waits = Histogram(
            "sqlrouter_consistency_wait_seconds",
            "Time spent in MASTER_GTID_WAIT for a session's writes",
            ["service"],
            buckets=_FAST,
            registry=r,
        )
        self.gtid_fallbacks = Counter(
            "sqlrouter_gtid_capture_fallbacks",
            "Writer connections that capture GTIDs with SELECT @@last_gtid (no tracking)",
            ["service"],
            registry=r,
        )
        self.invalidations = Counter(
            "sqlrouter_invalidations",
            "Open connections invalidated, by cause",
            ["service", "cause"],
            registry=r,
        )
        self.master_changes = Counter(
            "sqlrouter_master_changes",
            "Changes of the observed master (including to and from none)",
            ["service"],
            registry=r,
        )
        self.operations = Counter(
            "sqlrouter_topology_operations",
            "Switchovers and failovers run by this process, by outcome",
            ["service", "operation", "outcome"],
            registry=r,
        )
        self.operation_seconds = Histogram(
            "sqlrouter_topology_operation_duration_seconds",
            "Duration of switchovers and failovers run by this process",
            ["service", "operation"],
            buckets=_SLOW,
            registry=r,
        )
        self.commands = Counter(
            "sqlrouter_control_commands",
            "Control-socket commands served, by outcome",
            ["command", "outcome"],
            registry=r,
        )
        self._families: list[Counter | Histogram] = [
            self.connects,
            self.decisions,
            self.connect_seconds,
            self.rounds,
            self.probe_failures,
            self.checks,
            self.waits,
            self.gtid_fallbacks,
            self.invalidations,
            self.master_changes,
            self.operations,
            self.operation_seconds,
            self.commands,
        ]
        registry.register(self._collector)

    def __repr__(self) -> str:
        state = "observing" if self._registrations else "stopped"
        return f"<Metrics {state}, {len(self._families) + 6} families>"

    def start(self) -> Metrics:
        """Start counting (idempotent; again after :meth:`stop`)."""
        if not self._registrations:
            self._registrations = [
                telemetry.add(self.observe),
                events.subscribe("master_changed", self._on_master_changed),
            ]
        return self

    def stop(self) -> None:
        """Stop counting; the families stay in the registry with their values."""
        for registration in self._registrations:
            registration.cancel()
        self._registrations = []

    def close(self) -> None:
        """Stop counting and remove every family from the registry."""
        self.stop()
        for family in [*self._families, self._collector]:
            with contextlib.suppress(KeyError):  # closed already
                self.registry.unregister(family)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (Content-Type :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def _on_master_changed(self, event: events.Event) -> None:
        self.master_changes.labels(event.service).inc()

    def observe(self, record: telemetry.Record) -> None:
        """Count one telemetry record (called by :mod:`sqlrouter.telemetry`)."""
        match record:
            case telemetry.Routed():
                service, qos = record.service, record.qos
                self.decisions.labels(service, qos, record.verdict, record.reason).inc()
                if record.datasource is not None:
                    outcome = "ok" if record.connected else "failed"
                    self.connects.labels(service, record.datasource.name, qos, outcome).inc()
                    if record.connected:
                        self.connect_seconds.labels(service, qos).observe(record.duration)
            case telemetry.MonitorRound():
                self.rounds.labels(record.service).observe(record.duration)
                for name in record.failed:
                    self.probe_failures.labels(record.service, name).inc()
            case telemetry.ConsistencyCheck():
                self.checks.labels(record.service, record.outcome).inc()
                if record.outcome != "free" and record.waited > 0:
                    self.waits.labels(record.service).observe(record.waited)
            case telemetry.GtidFallback():
                self.gtid_fallbacks.labels(record.service).inc()
            case telemetry.Invalidated():
                self.invalidations.labels(record.service, record.cause).inc(record.count)
            case telemetry.TopologyRun():
                op = record.operation
                self.operations.labels(record.service, op, record.outcome).inc()
                if record.outcome != "dry_run":
                    self.operation_seconds.labels(record.service, op).observe(record.duration)
            case telemetry.ControlCommand():
                self.commands.labels(record.command, "ok" if record.ok else "error").inc()


def enable(
    *,
    registry: CollectorRegistry = REGISTRY,
    snapshots: Snapshots = watched_snapshots,
) -> Metrics:
    """Register sqlrouter's metrics in ``registry`` and start counting; ``close()`` the
    result to stop.  Raises ``ValueError`` (prometheus_client's) if they are there already."""
    return Metrics(registry=registry, snapshots=snapshots).start()
