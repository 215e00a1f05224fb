"""Fixtures of every integration test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sqlrouter


@pytest.fixture(autouse=True)
def _stop_monitors() -> Iterator[None]:
    """Each test starts with no monitor, control socket or service of an earlier one."""
    yield
    sqlrouter.shutdown()
