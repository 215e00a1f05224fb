"""Observability: Prometheus metrics, OpenTelemetry spans, a lag-aware health endpoint.

Each part is a module of its own, imported only by who uses it (docs/observability.md):

- :mod:`sqlrouter.observe.metrics`: Prometheus metrics (the ``metrics`` extra);
- :mod:`sqlrouter.observe.otel`: OpenTelemetry spans (the ``otel`` extra);
- :mod:`sqlrouter.observe.health`: the HTTP endpoint for HAProxy and Kubernetes (no extra).

They observe :mod:`sqlrouter.telemetry` records, :mod:`sqlrouter.events` and the
monitors' snapshots; the core imports none of them, nor prometheus_client or
opentelemetry, so without them nothing is loaded and nothing is measured.
"""
