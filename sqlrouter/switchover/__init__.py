"""Topology operations on the real servers: switchover and failover."""

from __future__ import annotations

from ._switchover import (
    ER_TOPOLOGY,
    Plan,
    Step,
    TopologyError,
    failover,
    plan_failover,
    plan_switchover,
    switchover,
)

__all__ = [
    "ER_TOPOLOGY",
    "Plan",
    "Step",
    "TopologyError",
    "failover",
    "plan_failover",
    "plan_switchover",
    "switchover",
]
