"""The load balancers' health check (router.health_check): the routing rules' answer for
one datasource and one role, with the reason a user reads in HAProxy's log."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlrouter.errors import NoMasterAvailable, NoReplicaAvailable
from sqlrouter.qos import Fallback, QoS
from sqlrouter.routing.health import Snapshot
from sqlrouter.routing.router import Policy, choose, health_check
from sqlrouter.topology import Role

from .test_router import (
    SECRET,
    cluster,
    down,
    healthy,
    master,
    replica,
    snapshots,
    topologies,
)

REPLICA, MASTER = Role.REPLICA, Role.MASTER


def check(snapshot: Snapshot, name: str, role: Role = REPLICA, max_lag: float = 1.0) -> str | None:
    why = health_check(snapshot, name, role=role, max_lag=max_lag)
    assert why is None or SECRET not in why
    return why


def test_a_replica_within_max_lag_is_healthy_and_the_master_is_not_a_replica() -> None:
    snap = healthy()
    assert check(snap, "db2") is None
    assert check(snap, "db3") is None
    assert check(snap, "db1") == "writable master"


def test_the_master_role_is_the_observed_master_only() -> None:
    snap = healthy()
    assert check(snap, "db1", MASTER) is None
    assert check(snap, "db2", MASTER) == "read_only=1"


def test_a_lagging_replica_is_down_with_its_lag() -> None:
    snap = cluster(master("db1"), replica("db2", 3.25), replica("db3", 0.3))
    assert check(snap, "db2", max_lag=1.0) == "lag 3.25s > 1.0s"
    assert check(snap, "db2", max_lag=5.0) is None


def test_a_stopped_io_thread_is_down_when_the_lag_is_unknown() -> None:
    snap = cluster(master("db1"), replica("db2", None, io_running=False), replica("db3"))
    assert check(snap, "db2") == "lag unknown (io thread stopped)"


def test_unreachable_offline_and_unknown_datasources() -> None:
    snap = cluster(master("db1"), down("db2"), replica("db3"), offline={"db3"})
    assert check(snap, "db2") == "unreachable (connection refused)"
    assert check(snap, "db3") == "offline (operator)"
    assert check(snap, "db9") == "db9 is not a datasource of service 'sandbox'"


def test_an_offline_master_is_down_for_the_master_role() -> None:
    snap = cluster(master("db1"), replica("db2"), offline={"db1"})
    assert check(snap, "db1", MASTER) == "writable master, offline (operator)"


def test_a_snapshot_nobody_refreshes_qualifies_nothing() -> None:
    snap = replace(healthy(), taken_at=100.0, generation=7)
    assert health_check(snap, "db2", role=REPLICA, max_lag=1.0, now=101.0) is None
    why = health_check(snap, "db2", role=REPLICA, max_lag=1.0, now=200.0)
    assert why == "the monitor's last observation is 100.0s old (trusted for 2.5s)"


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_an_invalid_max_lag_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="max_lag must be a number of seconds >= 0"):
        health_check(healthy(), "db2", role=REPLICA, max_lag=bad)


@settings(max_examples=300)
@given(snapshots() | topologies(), st.floats(min_value=0.0, max_value=3.0))
def test_property_healthy_exactly_when_the_router_would_choose_it(
    snapshot: Snapshot, max_lag: float
) -> None:
    """A replica passes iff a RO_RELAXED connect (no fallback) restricted to it would
    get it; the master role passes iff RW_STRICT would get it."""
    names = [ds.name for ds in snapshot.datasources]
    for name in names:
        others = frozenset(n for n in names if n != name)
        only = Policy(QoS.RO_RELAXED, max_lag=max_lag, fallback=Fallback.ERROR, exclude=others)
        try:
            chosen: str | None = choose(snapshot, only).datasource.name
        except NoReplicaAvailable:
            chosen = None
        assert (health_check(snapshot, name, role=REPLICA, max_lag=max_lag) is None) == (
            chosen == name
        )
        try:
            writer: str | None = choose(snapshot, Policy(QoS.RW_STRICT)).datasource.name
        except NoMasterAvailable:
            writer = None
        assert (health_check(snapshot, name, role=MASTER, max_lag=max_lag) is None) == (
            writer == name
        )
