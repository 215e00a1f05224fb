"""Shared fixtures: real MariaDB sandbox clusters, a real DNS server and etcd on loopback."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

pytest_plugins = [
    "tests.fixtures.cluster",
    "tests.fixtures.dns",
    "tests.fixtures.etcd",
    "tests.fixtures.sqla",
]

# The machine is shared and the integration tests load it: a property test must not fail
# because one example was slow (no timing thresholds in tests).
settings.register_profile("sqlrouter", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("sqlrouter")
