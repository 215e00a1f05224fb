"""routing.changes.diff: what changed between two snapshots, as events (pure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sqlrouter import events
from sqlrouter.routing.changes import diff
from sqlrouter.routing.health import Health, Snapshot
from sqlrouter.topology import DataSource, Role, Service

SERVICE = Service(
    name="shop",
    datasources=(
        DataSource("db1", "127.0.0.1", 3306, Role.MASTER),
        DataSource("db2", "127.0.0.1", 3307),
        DataSource("db3", "127.0.0.1", 3308),
    ),
    max_lag=1.0,
)


def up(
    name: str, *, read_only: bool = True, lag: float | None = 0.0, source: str = "db1"
) -> Health:
    """A writable master, or (``read_only``) a replica of ``source``."""
    return Health(
        name=name,
        reachable=True,
        observed_at=1.0,
        read_only=read_only,
        replicating=read_only,
        master_host="127.0.0.1" if read_only else "",
        master_port=SERVICE.datasource(source).port if read_only else None,
        io_running=True,
        sql_running=True,
        lag=lag,
    )


def down(name: str) -> Health:
    return Health(name=name, reachable=False, observed_at=1.0, error="(2003) refused")


def snap(gen: int, *health: Health, offline: frozenset[str] = frozenset()) -> Snapshot:
    return Snapshot(
        service=SERVICE, health={h.name: h for h in health}, generation=gen, offline=offline
    )


HEALTHY = snap(1, up("db1", read_only=False), up("db2"), up("db3"))


def names(previous: Snapshot, current: Snapshot) -> list[str]:
    return [str(e) for e in diff(previous, current)]


def test_nothing_changed() -> None:
    assert diff(HEALTHY, replace(HEALTHY, generation=2)) == []


def test_first_snapshot_yields_nothing() -> None:
    assert diff(snap(0), HEALTHY) == []


def test_master_changed_and_down() -> None:
    after = snap(2, down("db1"), up("db2", read_only=False), up("db3", source="db2"))
    assert names(HEALTHY, after) == [
        "master_changed shop/db1 -> db2",
        "datasource_down shop/db1: (2003) refused",
    ]
    (first, _) = diff(HEALTHY, after)
    assert first.previous == "db1" and first.datasource == "db2"


def test_master_changed_says_what_writes_do_during_a_split() -> None:
    # db3 made writable while it replicates from db1: writes still go to db1.
    writable_replica = replace(up("db3"), read_only=False)
    split = snap(2, up("db1", read_only=False), up("db2"), writable_replica)
    assert names(HEALTHY, split) == []
    # db1 misses a probe: nobody takes the writes (not db3), and the event says so.
    missed = snap(3, down("db1"), up("db2"), writable_replica)
    assert names(split, missed) == [
        "master_changed shop/db1 -> none",
        "datasource_down shop/db1: (2003) refused",
    ]
    back = snap(4, up("db1", read_only=False), up("db2"), writable_replica)
    assert names(missed, back) == ["master_changed shop/none -> db1", "datasource_up shop/db1"]


def test_up_again_and_lag() -> None:
    before = snap(1, up("db1", read_only=False), down("db2"), up("db3", lag=0.2))
    after = snap(2, up("db1", read_only=False), up("db2"), up("db3", lag=3.0))
    assert names(before, after) == [
        "datasource_up shop/db2",
        "lag_exceeded shop/db3: lag 3.00s > 1s",
    ]
    recovered = snap(3, up("db1", read_only=False), up("db2"), up("db3", lag=0.1))
    assert names(after, recovered) == ["lag_recovered shop/db3"]


def test_offline_and_online() -> None:
    off = replace(HEALTHY, generation=2, offline=frozenset({"db2"}))
    assert names(HEALTHY, off) == ["datasource_offline shop/db2: operator"]
    assert names(off, HEALTHY) == ["datasource_online shop/db2: operator"]


def test_subscribe_publish_cancel() -> None:
    seen: list[events.Event] = []
    sub = events.subscribe(["datasource_down", "datasource_up"], seen.append)
    boom = events.subscribe("datasource_down", lambda e: 1 / 0)  # logged, not raised
    try:
        events.publish(diff(HEALTHY, snap(2, up("db1", read_only=False), down("db2"), up("db3"))))
    finally:
        sub.cancel()
        boom.cancel()
    assert [e.name for e in seen] == ["datasource_down"]
    events.publish([events.Event("datasource_down", "shop", "db3")])
    assert len(seen) == 1  # cancelled


def test_subscribe_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"unknown event name.*'master_moved'.*master_changed"):
        events.subscribe("master_moved", print)  # type: ignore[arg-type]
