"""OpenTelemetry spans of sqlrouter (the ``otel`` extra: ``pip install sqlrouter[otel]``).

::

    import sqlrouter.observe.otel

    tracing = sqlrouter.observe.otel.enable()   # the global tracer and meter providers
    ...
    tracing.close()

Only ``opentelemetry-api`` is imported: the application chooses the SDK and the
exporter.  What is recorded (see docs/observability.md):

- a ``CLIENT`` span per routing decision of a connect (``sqlrouter connect``), child of
  the caller's current span, carrying the decision (``sqlrouter.datasource``,
  ``sqlrouter.qos``, ``sqlrouter.verdict``, ``sqlrouter.reason``, the lag seen, the
  session's token and whether the server covers it) with the stable database
  attributes ``db.system.name`` (``mysql`` or ``mariadb``), ``server.address``,
  ``server.port`` and ``db.namespace``;
- a span per consistency check that waited or moved (``sqlrouter consistency_wait``),
  and the ``MASTER_GTID_WAIT`` round trip in the stable ``db.client.operation.duration``
  histogram (seconds);
- a span per switchover or failover run by this process.

Spans are made when the work is over, with its start and end times: nothing is
recorded or allocated while no observer is registered, and the statement path never
records anything (statements are traced by opentelemetry-instrumentation-pymysql's
``instrument_connection()``, see docs/observability.md).
"""

from __future__ import annotations

import time

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from .. import telemetry
from ..topology import DataSource

__all__ = ["Tracing", "enable"]

_SCOPE = "sqlrouter"
_MYSQL, _MARIADB = "mysql", "mariadb"
#: The bucket boundaries the semantic conventions advise for db.client.operation.duration.
_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


def _system(server_version: str, known: str | None) -> str:
    """``db.system.name``: ``mariadb`` when the handshake said so, else ``mysql``."""
    if server_version:
        return _MARIADB if "mariadb" in server_version.lower() else _MYSQL
    return known or _MYSQL


def _times(started: float, duration: float) -> tuple[int, int]:
    """Epoch nanoseconds (start, end) of work that began at ``started`` (monotonic)
    and took ``duration`` seconds, ending now or earlier."""
    now_ns = time.time_ns()
    end_ns = now_ns - max(0, round((time.monotonic() - started - duration) * 1e9))
    return end_ns - round(duration * 1e9), end_ns


def _server(ds: DataSource) -> dict[str, AttributeValue]:
    return {"server.address": ds.host, "server.port": ds.port, "sqlrouter.datasource": ds.name}


class Tracing:
    """sqlrouter's spans and ``db.client.operation.duration``, from :meth:`start` (or
    :func:`enable`) until :meth:`close`.  ``tracer_provider`` and ``meter_provider``
    default to OpenTelemetry's global ones."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations run by sqlrouter itself",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        #: db.system.name per service, learned from the handshakes.
        self._systems: dict[str, str] = {}
        self._registration: telemetry.Registration | None = None

    def __repr__(self) -> str:
        return f"<Tracing {'observing' if self._registration else 'stopped'}>"

    def start(self) -> Tracing:
        """Start recording (idempotent)."""
        if self._registration is None:
            self._registration = telemetry.add(self.observe)
        return self

    def close(self) -> None:
        """Stop recording (spans already ended stay with their exporter)."""
        if self._registration is not None:
            self._registration.cancel()
            self._registration = None

    def observe(self, record: telemetry.Record) -> None:
        """Record one telemetry record (called by :mod:`sqlrouter.telemetry`)."""
        match record:
            case telemetry.Routed():
                self._routed(record)
            case telemetry.ConsistencyCheck():
                self._check(record)
            case telemetry.TopologyRun():
                self._operation(record)
            case _:
                pass  # rounds, invalidations, commands: metrics, not spans

    def _routed(self, r: telemetry.Routed) -> None:
        system = _system(r.server_version, self._systems.get(r.service))
        if r.server_version:
            self._systems[r.service] = system
        attrs: dict[str, AttributeValue] = {
            "db.system.name": system,
            "sqlrouter.service": r.service,
            "sqlrouter.qos": r.qos,
            "sqlrouter.verdict": r.verdict,
            "sqlrouter.reason": r.reason,
            "sqlrouter.decision": r.detail,
        }
        if r.database:
            attrs["db.namespace"] = r.database
        if r.datasource is not None:
            attrs.update(_server(r.datasource))
        if r.lag is not None:
            attrs["sqlrouter.lag_seconds"] = r.lag
        if r.token:
            attrs["sqlrouter.token"] = str(r.token)
        if r.token_covered is not None:
            attrs["sqlrouter.token_covered"] = r.token_covered
        start, end = _times(r.started, r.duration)
        span = self._tracer.start_span(
            "sqlrouter connect", kind=SpanKind.CLIENT, attributes=attrs, start_time=start
        )
        if not r.connected:
            span.set_attribute("error.type", r.reason if r.verdict == "refused" else "connect")
            span.set_status(Status(StatusCode.ERROR, r.error))
        span.end(end_time=end)

    def _check(self, r: telemetry.ConsistencyCheck) -> None:
        system = self._systems.get(r.service, _MYSQL)
        start, end = _times(r.started, r.waited)
        if r.waited > 0:
            self._duration.record(
                r.waited,
                {
                    "db.system.name": system,
                    "db.operation.name": "SELECT",
                    "server.address": r.datasource.host,
                    "server.port": r.datasource.port,
                },
            )
        if r.outcome == "free":
            return
        attrs: dict[str, AttributeValue] = {
            "db.system.name": system,
            "sqlrouter.service": r.service,
            "sqlrouter.outcome": r.outcome,
            "sqlrouter.token": str(r.token),
            **_server(r.datasource),
        }
        span = self._tracer.start_span(
            "sqlrouter consistency_wait", kind=SpanKind.CLIENT, attributes=attrs, start_time=start
        )
        span.end(end_time=end)

    def _operation(self, r: telemetry.TopologyRun) -> None:
        attrs: dict[str, AttributeValue] = {
            "sqlrouter.service": r.service,
            "sqlrouter.outcome": r.outcome,
        }
        if r.target:
            attrs["sqlrouter.target"] = r.target
        start, end = _times(r.started, r.duration)
        span = self._tracer.start_span(
            f"sqlrouter {r.operation}", attributes=attrs, start_time=start
        )
        if r.outcome == "failed":
            span.set_status(Status(StatusCode.ERROR, r.error))
        span.end(end_time=end)


def enable(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Tracing:
    """Start recording sqlrouter's spans; ``close()`` the result to stop."""
    return Tracing(tracer_provider=tracer_provider, meter_provider=meter_provider).start()
