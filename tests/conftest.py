"""Shared fixtures: a real MariaDB sandbox cluster for the integration tests."""

from __future__ import annotations

pytest_plugins = ["tests.fixtures.cluster", "tests.fixtures.dns"]
