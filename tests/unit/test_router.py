"""The routing decision, rule by rule, on hand-built snapshots, plus its invariants.

The cluster in most tests is the sandbox's: ``db1`` declared master, ``db2`` and ``db3``
declared replicas.  Messages are asserted whole where a user reads them.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sqlrouter.errors import (
    ER_NO_MASTER,
    ER_NO_REPLICA,
    NoMasterAvailable,
    NoReplicaAvailable,
    RoutingError,
)
from sqlrouter.gtid import EMPTY, CausalToken
from sqlrouter.qos import Fallback, QoS
from sqlrouter.routing.health import Health, Snapshot
from sqlrouter.routing.router import (
    MAX_ROUTES,
    MOVE_TOLERANCE,
    Decision,
    Policy,
    Route,
    choose,
    explain,
    mastership,
    missing,
    observed_master,
    reroute,
    resolve_master,
    route,
    wait_here,
)
from sqlrouter.topology import Credentials, DataSource, Role, Service

# --- builders --------------------------------------------------------------------------

SERVICE = "sandbox"
SECRET = "s3cr3t-P@ss"


def sid(name: str) -> int:
    """The server id of ``dbN``: ``N``."""
    return int(name.removeprefix("db"))


def master(name: str = "db1", **kw: Any) -> Health:
    """A healthy writable master (a writable server that does not replicate)."""
    fields: dict[str, Any] = {
        "reachable": True,
        "observed_at": 10.0,
        "server_id": sid(name),
        "read_only": False,
        "position": CausalToken.parse("0-1-20"),
    }
    fields.update(kw)
    return Health(name=name, **fields)


def replica(
    name: str,
    lag: float | None = 0.1,
    position: str = "0-1-20",
    *,
    source: str = "db1",
    **kw: Any,
) -> Health:
    """A healthy replica of ``source`` with heartbeat lag ``lag``."""
    fields: dict[str, Any] = {
        "reachable": True,
        "observed_at": 10.0,
        "server_id": sid(name),
        "read_only": True,
        "replicating": True,
        **of(source),
        "io_running": True,
        "sql_running": True,
        "lag": lag,
        "lag_source": "heartbeat" if lag is not None else "",
        "position": CausalToken.parse(position),
    }
    fields.update(kw)
    return Health(name=name, **fields)


def of(source: str) -> dict[str, Any]:
    """The fields of a server that replicates from ``source``: its server id and its
    address as :func:`cluster` gives it to ``dbN`` when the names are db1, db2..."""
    return {
        "master_server_id": sid(source),
        "master_host": "127.0.0.1",
        "master_port": 3309 + sid(source),
        "io_running": True,
        "sql_running": True,
    }


def replace_promoted(snapshot: Snapshot, name: str) -> Snapshot:
    return replace(snapshot, promoted=name)


def down(name: str, error: str = "connection refused") -> Health:
    return Health(name=name, reachable=False, observed_at=10.0, error=error)


def cluster(
    *healths: Health,
    offline: frozenset[str] | set[str] = frozenset(),
    promoted: str | None = None,
    weights: dict[str, int] | None = None,
    declared_master: str | None = "db1",
    names: tuple[str, ...] | None = None,
) -> Snapshot:
    """A snapshot of service ``sandbox``.

    The datasources are ``names`` (default: the names of ``healths``); one without a
    health has not been probed yet.
    """
    weights = weights or {}
    names = names or tuple(h.name for h in healths)
    datasources = tuple(
        DataSource(
            name=n,
            host="127.0.0.1",
            port=3310 + i,
            role=Role.MASTER if n == declared_master else Role.REPLICA,
            weight=weights.get(n, 1),
        )
        for i, n in enumerate(names)
    )
    service = Service(
        name=SERVICE,
        datasources=datasources,
        monitor_credentials=Credentials("monitor", SECRET),
        admin_credentials=Credentials("admin", SECRET),
    )
    return Snapshot(
        service=service,
        health={h.name: h for h in healths},
        offline=frozenset(offline),
        promoted=promoted,
    )


RW = Policy(QoS.RW_STRICT)
RO = Policy(QoS.RO_RELAXED)


def ro(**kw: Any) -> Policy:
    return Policy(QoS.RO_RELAXED, **kw)


def tok(text: str) -> CausalToken:
    return CausalToken.parse(text)


def refusal(
    exc_type: type[RoutingError], snapshot: Snapshot, policy: Policy, now: float | None = None
) -> str:
    """The message of the error ``choose`` raises; checks errno and service too."""
    with pytest.raises(exc_type) as info:
        choose(snapshot, policy, now=now)
    errno, message = info.value.args
    assert errno == (ER_NO_MASTER if exc_type is NoMasterAvailable else ER_NO_REPLICA)
    assert info.value.service == SERVICE
    assert isinstance(message, str)
    assert message.startswith(f"service '{SERVICE}': ")
    assert SECRET not in message
    return message


def healthy() -> Snapshot:
    return cluster(master("db1"), replica("db2", 0.12), replica("db3", 0.3))


# --- Policy ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, math.nan])
def test_policy_rejects_an_invalid_max_lag(bad: float) -> None:
    with pytest.raises(ValueError, match="max_lag must be a number of seconds >= 0"):
        Policy(QoS.RO_RELAXED, max_lag=bad)


def test_policy_defaults() -> None:
    assert RO.max_lag == 1.0
    assert RO.fallback is Fallback.MASTER
    assert RO.token is EMPTY
    assert RO.allow_wait is True
    assert RO.exclude == frozenset()


def test_qos_and_fallback_values_are_the_url_spellings() -> None:
    assert QoS("RW_STRICT") is QoS.RW_STRICT
    assert QoS("RO_RELAXED") is QoS.RO_RELAXED
    assert Fallback("master") is Fallback.MASTER
    assert Fallback("error") is Fallback.ERROR
    assert str(QoS.RO_RELAXED) == "RO_RELAXED"
    assert str(Fallback.ERROR) == "error"


# --- RW_STRICT -------------------------------------------------------------------------


def test_rw_gets_the_writable_declared_master() -> None:
    decision = choose(healthy(), RW)
    assert decision == Decision(
        healthy().service.datasource("db1"), "master db1 (writable)", False, None, on_master=True
    )


def test_rw_ignores_the_token_and_turn() -> None:
    decision = choose(healthy(), Policy(QoS.RW_STRICT, token=tok("0-1-999")), turn=7)
    assert decision.datasource.name == "db1"
    assert decision.needs_wait is None


def test_rw_never_gets_a_replica_when_the_declared_master_is_read_only() -> None:
    snapshot = cluster(master("db1", read_only=True), replica("db2"), replica("db3"))
    assert refusal(NoMasterAvailable, snapshot, RW) == (
        "service 'sandbox': no writable master: "
        "db1 read_only=1 (declared master is not writable); db2 read_only=1; db3 read_only=1"
    )


def test_rw_follows_an_observed_failover_to_a_declared_replica() -> None:
    snapshot = cluster(replica("db1", source="db2"), master("db2"), replica("db3", source="db2"))
    decision = choose(snapshot, RW)
    assert decision.datasource.name == "db2"
    assert decision.reason == "master db2 (writable)"


def test_rw_refuses_when_the_master_is_unreachable() -> None:
    snapshot = cluster(down("db1"), replica("db2"), replica("db3", lag=None))
    assert refusal(NoMasterAvailable, snapshot, RW) == (
        "service 'sandbox': no writable master: "
        "db1 unreachable (connection refused); db2 read_only=1; db3 read_only=1"
    )


def test_rw_refuses_a_master_not_probed_yet() -> None:
    snapshot = cluster(replica("db2"), names=("db1", "db2"))
    assert refusal(NoMasterAvailable, snapshot, RW) == (
        "service 'sandbox': no writable master: db1 not probed yet; db2 read_only=1"
    )


def test_rw_refuses_a_server_whose_read_only_is_unknown() -> None:
    snapshot = cluster(master("db1", read_only=None, error="SELECT @@read_only: timed out"))
    assert refusal(NoMasterAvailable, snapshot, RW) == (
        "service 'sandbox': no writable master: "
        "db1 read_only unknown (SELECT @@read_only: timed out)"
    )


def test_rw_refuses_an_offline_master() -> None:
    snapshot = cluster(master("db1"), replica("db2"), offline={"db1"})
    assert refusal(NoMasterAvailable, snapshot, RW) == (
        "service 'sandbox': master db1 is not available: "
        "db1 writable master, offline (operator); db2 read_only=1"
    )


def test_rw_refuses_a_master_already_tried_in_this_connect() -> None:
    snapshot = cluster(master("db1"), replica("db2"))
    policy = Policy(QoS.RW_STRICT, exclude=frozenset({"db1"}))
    assert refusal(NoMasterAvailable, snapshot, policy) == (
        "service 'sandbox': master db1 is not available: "
        "db1 writable master, excluded (failed this attempt); db2 read_only=1"
    )


def test_rw_split_brain_the_master_is_what_the_replicas_replicate_from() -> None:
    snapshot = cluster(master("db1"), replica("db2"), master("db3"))
    decision = choose(snapshot, RW)
    assert decision.datasource.name == "db1"
    assert decision.reason == (
        "master db1 (writable, the replicas replicate from it; split brain: db3 also writable)"
    )
    # The declared role does not matter: the replicas do.
    other = cluster(master("db1"), replica("db2", source="db3"), master("db3"))
    assert choose(other, RW).datasource.name == "db3"


def test_rw_a_writable_replica_is_never_the_master() -> None:
    # db3 was made writable (SET GLOBAL read_only=0) but still replicates from db1.
    snapshot = cluster(master("db1"), replica("db2"), master("db3", replicating=True, **of("db1")))
    decision = choose(snapshot, RW)
    assert decision.datasource.name == "db1"
    assert decision.reason == "master db1 (writable; split brain: db3 also writable)"
    assert explain(snapshot, RW)[2] == (
        "db3",
        "writable but replicating from db1: a misconfigured replica, never the master",
    )


def test_rw_one_missed_probe_of_the_master_hands_nothing_to_a_writable_replica() -> None:
    snapshot = cluster(
        down("db1", "probe timed out after 1s"),
        replica("db2"),
        master("db3", replicating=True, **of("db1")),
    )
    assert observed_master(snapshot) is None
    assert refusal(NoMasterAvailable, snapshot, RW) == (
        "service 'sandbox': no master: db3 is writable but replicating: "
        "db1 unreachable (probe timed out after 1s); db2 read_only=1; "
        "db3 writable but replicating from db1: a misconfigured replica, never the master"
    )


def test_rw_fencing_an_old_master_that_comes_back_writable() -> None:
    # After a failover to db2 the replicas replicate from db2; db1 restarts writable,
    # not replicating, as it was before the failover.
    snapshot = cluster(master("db1"), master("db2"), replica("db3", source="db2"))
    decision = choose(snapshot, RW)
    assert decision.datasource.name == "db2"
    assert decision.reason == (
        "master db2 (writable, the replicas replicate from it; split brain: db1 also writable)"
    )
    assert explain(snapshot, RW)[0] == ("db1", "writable, but db2 is the master (split brain)")
    # While db2 misses a probe, db3 still names it: db1 gets nothing.
    missed = cluster(master("db1"), down("db2"), replica("db3", source="db2"))
    assert refusal(NoMasterAvailable, missed, RW) == (
        "service 'sandbox': no master: db1 is writable and not replicating, but db3 "
        "replicates from db2 (unreachable), refusing to write: "
        "db1 writable, but not what the replicas replicate from; "
        "db2 unreachable (connection refused); db3 read_only=1"
    )
    # Nor does the declared role or a promotion of db1 give it the writes.
    assert choose(replace_promoted(snapshot, "db1"), RW).datasource.name == "db2"
    assert observed_master(replace_promoted(missed, "db1")) is None


def test_rw_a_replica_names_its_master_by_address_then_by_server_id() -> None:
    # CHANGE MASTER keeps the old Master_Server_Id until the IO thread connects again:
    # the address is what the replica replicates from now.
    repointed = replica("db3", io_running=False, master_host="127.0.0.1", master_port=3311)
    assert repointed.master_server_id == 1
    snapshot = cluster(master("db1"), master("db2"), repointed)
    assert choose(snapshot, RW).datasource.name == "db2"
    # An address that is no datasource (replication uses other names): the server id.
    aliased = replica("db3", master_host="10.9.9.9", master_port=3306)
    master_ = observed_master(cluster(master("db1"), master("db2"), aliased))
    assert master_ is not None and master_.name == "db1"
    # A server id that two reachable datasources share names neither of them.
    twins = cluster(master("db1"), master("db2", server_id=1), aliased)
    assert "db3 replicates from server id 1, none of them" in refusal(NoMasterAvailable, twins, RW)


def test_rw_a_replica_without_a_server_id_is_matched_by_address() -> None:
    never_connected = replica(
        "db2", io_running=False, master_server_id=0, master_host="127.0.0.1", master_port=3310
    )
    snapshot = cluster(master("db1"), never_connected)
    assert choose(snapshot, RW).datasource.name == "db1"
    unknown = replica("db2", io_running=False, master_server_id=0, master_host="10.0.0.9")
    elsewhere = cluster(master("db1"), replace(unknown, master_port=3306))
    assert refusal(NoMasterAvailable, elsewhere, RW).startswith(
        "service 'sandbox': no master: db1 is writable and not replicating, but db2 "
        "replicates from 10.0.0.9:3306, refusing to write: "
    )
    by_id = cluster(master("db1"), replica("db2", source="db9"))
    assert "db2 replicates from server id 9, refusing" in refusal(NoMasterAvailable, by_id, RW)


def test_rw_a_chain_of_replicas_leads_to_the_master() -> None:
    snapshot = cluster(master("db1"), replica("db2"), replica("db3", source="db2"))
    assert choose(snapshot, RW).datasource.name == "db1"
    # The relay is unreachable: db3 cannot tell, so nobody is the master.
    broken = cluster(master("db1"), down("db2"), replica("db3", source="db2"))
    assert refusal(NoMasterAvailable, broken, RW).startswith(
        "service 'sandbox': no master: db1 is writable and not replicating, but db3 "
        "replicates from db2 (unreachable), refusing to write: "
    )
    # A loop leads nowhere.
    loop = cluster(master("db1"), replica("db2", source="db3"), replica("db3", source="db2"))
    assert "db2 replicates from a replication loop (db2 -> db3 -> db2)" in refusal(
        NoMasterAvailable, loop, RW
    )


def test_rw_split_brain_promotion_breaks_a_tie_only() -> None:
    tie = cluster(
        master("db1"), replica("db2"), master("db3"), replica("db4", source="db3"), promoted="db3"
    )
    decision = choose(tie, RW)
    assert decision.datasource.name == "db3"
    assert decision.reason == "promoted master db3 (writable; split brain: db1 also writable)"
    # The replicas single out db1: the promotion changes nothing.
    singled = cluster(master("db1"), replica("db2"), master("db3"), promoted="db3")
    assert choose(singled, RW).reason == (
        "master db1 (writable, the replicas replicate from it; split brain: db3 also "
        "writable; promoted db3 is not the master)"
    )


def test_rw_split_brain_without_a_tie_breaker_is_refused() -> None:
    snapshot = cluster(down("db1"), master("db2"), master("db3"))
    assert refusal(NoMasterAvailable, snapshot, RW) == (
        "service 'sandbox': split brain: db2 and db3 are writable and not replicating; "
        "no reachable replica tells which is the master; refusing to write "
        "(promote one of them with `sqlrouter admin promote`): "
        "db1 unreachable (connection refused); "
        "db2 writable (split brain: db2, db3 are writable, none is the master); "
        "db3 writable (split brain: db2, db3 are writable, none is the master)"
    )
    both = cluster(master("db1"), replica("db2"), master("db3"), replica("db4", source="db3"))
    assert refusal(NoMasterAvailable, both, RW).startswith(
        "service 'sandbox': split brain: db1 and db3 are writable and not replicating; "
        "the replicas replicate from db1 and db3 (db2 from db1; db4 from db3); refusing "
        "to write (promote one of them with `sqlrouter admin promote`): "
    )
    neither = cluster(master("db1"), replica("db2", source="db9"), master("db3"))
    assert refusal(NoMasterAvailable, neither, RW).startswith(
        "service 'sandbox': split brain: db1 and db3 are writable and not replicating; "
        "db2 replicates from server id 9, none of them; refusing to write: "
    )


def test_rw_split_brain_with_a_read_only_promoted_datasource_is_refused() -> None:
    snapshot = cluster(down("db1"), master("db2"), master("db3"), replica("db4"), promoted="db4")
    message = refusal(NoMasterAvailable, snapshot, RW)
    assert "db4 read_only=1 (promoted master is not writable)" in message
    assert "split brain: db2 and db3 are writable" in message


def test_rw_split_brain_between_two_declared_masters_is_refused() -> None:
    snapshot = Snapshot(
        service=Service(
            name=SERVICE,
            datasources=tuple(DataSource(n, "127.0.0.1", role=Role.MASTER) for n in ("db1", "db2")),
        ),
        health={"db1": master("db1"), "db2": master("db2")},
    )
    message = refusal(NoMasterAvailable, snapshot, RW)
    assert message.startswith("service 'sandbox': split brain: db1 and db2 are writable")


def test_rw_split_brain_taking_the_other_one_offline_does_not_choose_for_the_operator() -> None:
    snapshot = cluster(down("db1"), master("db2"), master("db3"), offline={"db3"})
    message = refusal(NoMasterAvailable, snapshot, RW)
    assert "db3 offline (operator)" in message
    assert "split brain: db2 and db3 are writable" in message


def test_rw_promotion_never_overrides_the_replicas() -> None:
    snapshot = cluster(
        master("db1", read_only=True), master("db2"), replica("db3", source="db2"), promoted="db2"
    )
    decision = choose(snapshot, RW)
    assert decision.datasource.name == "db2"
    assert decision.reason == "master db2 (writable)"
    # db3 still replicates from db1: it may be about to get a master back.
    old = cluster(master("db1", read_only=True), master("db2"), replica("db3"), promoted="db2")
    assert refusal(NoMasterAvailable, old, RW) == (
        "service 'sandbox': no master: db2 is writable and not replicating, but db3 "
        "replicates from db1 (read-only), refusing to write: "
        "db1 read_only=1 (declared master is not writable); "
        "db2 writable, but not what the replicas replicate from; db3 read_only=1"
    )


def test_rw_read_only_promoted_datasource_is_never_written_to() -> None:
    snapshot = cluster(master("db1", read_only=True), replica("db2"), promoted="db2")
    assert refusal(NoMasterAvailable, snapshot, RW) == (
        "service 'sandbox': no writable master: "
        "db1 read_only=1 (declared master is not writable); "
        "db2 read_only=1 (promoted master is not writable)"
    )


def test_rw_the_only_writable_server_is_the_master_even_if_another_was_promoted() -> None:
    snapshot = cluster(master("db1"), replica("db2"), promoted="db2")
    decision = choose(snapshot, RW)
    assert decision.datasource.name == "db1"
    assert decision.reason == "master db1 (writable; promoted db2 is not writable)"


def test_rw_promoting_an_unknown_datasource_changes_nothing() -> None:
    decision = choose(cluster(master("db1"), replica("db2"), promoted="db9"), RW)
    assert decision.reason == "master db1 (writable)"


def test_rw_excluding_a_replica_changes_nothing() -> None:
    policy = Policy(QoS.RW_STRICT, exclude=frozenset({"db2"}))
    assert choose(healthy(), policy).datasource.name == "db1"


# --- observed_master -------------------------------------------------------------------


def test_observed_master() -> None:
    assert observed_master(healthy()) == healthy().service.datasource("db1")
    assert observed_master(cluster(down("db1"), replica("db2"))) is None
    assert observed_master(cluster(down("db1"), master("db2"), master("db3"))) is None
    assert observed_master(cluster(master("db1"), replica("db2"), offline={"db1"})) is not None
    promoted = cluster(master("db1"), master("db2"), promoted="db2")
    assert observed_master(promoted) == promoted.service.datasource("db2")


# --- RO_RELAXED: which replicas qualify ------------------------------------------------


def test_ro_gets_a_replica_within_max_lag() -> None:
    decision = choose(healthy(), RO)
    assert decision == Decision(
        healthy().service.datasource("db2"), "replica db2 lag 0.12s <= 1.0s", False, None
    )


def test_ro_lag_equal_to_max_lag_qualifies() -> None:
    snapshot = cluster(master("db1"), replica("db2", 1.0))
    assert choose(snapshot, RO).reason == "replica db2 lag 1.0s <= 1.0s"


def test_ro_skips_a_lagging_replica() -> None:
    snapshot = cluster(master("db1"), replica("db2", 3.2), replica("db3", 0.5))
    for turn in range(4):
        assert choose(snapshot, RO, turn=turn).datasource.name == "db3"


def test_ro_master_fallback_lists_every_replica_and_why() -> None:
    snapshot = cluster(master("db1"), replica("db2", 3.2), down("db3"))
    decision = choose(snapshot, RO)
    assert decision.datasource.name == "db1"
    assert decision.is_fallback is True
    assert decision.needs_wait is None
    assert decision.reason == (
        "fallback to master db1: no replica within max_lag 1.0s: "
        "db2 lag 3.2s > 1.0s; db3 unreachable (connection refused)"
    )


@pytest.mark.parametrize(
    ("health", "offline", "exclude", "verdict"),
    [
        (replica("db2"), {"db2"}, set(), "offline (operator)"),
        (replica("db2"), set(), {"db2"}, "excluded (failed this attempt)"),
        (down("db2", "timed out after 1.0s"), set(), set(), "unreachable (timed out after 1.0s)"),
        (Health("db2", reachable=False, observed_at=1.0), set(), set(), "unreachable"),
        (replica("db2", read_only=None), set(), set(), "read_only unknown"),
        (replica("db2", replicating=False, lag=None), set(), set(), "read_only=1, not replicating"),
        (
            replica("db2", io_running=False, lag=None),
            set(),
            set(),
            "lag unknown (io thread stopped)",
        ),
        (
            replica("db2", sql_running=False, lag=None),
            set(),
            set(),
            "lag unknown (sql thread stopped)",
        ),
        (replica("db2", io_running=False, lag=1.3), set(), set(), "lag 1.3s > 1.0s"),
        (replica("db2", lag=None), set(), set(), "lag unknown"),
        (
            replica("db2", lag=None, error="heartbeat table missing"),
            set(),
            set(),
            "lag unknown (heartbeat table missing)",
        ),
        (replica("db2", lag=math.nan), set(), set(), "lag unknown"),
        (
            replica("db2", sql_running=False, lag=math.nan),
            set(),
            set(),
            "lag unknown (sql thread stopped)",
        ),
        (replica("db2", lag=12.3456), set(), set(), "lag 12.346s > 1.0s"),
        (
            master("db2", replicating=True, **of("db1")),
            set(),
            set(),
            "writable but replicating from db1: a misconfigured replica, never the master",
        ),
    ],
)
def test_ro_rejection_reasons(
    health: Health, offline: set[str], exclude: set[str], verdict: str
) -> None:
    snapshot = cluster(master("db1"), health, offline=offline)
    policy = ro(exclude=frozenset(exclude), fallback=Fallback.ERROR)
    assert refusal(NoReplicaAvailable, snapshot, policy) == (
        "service 'sandbox': no replica within max_lag 1.0s, and fallback=error: "
        f"db1 master (not used: fallback=error); db2 {verdict}"
    )


def test_ro_replica_not_probed_yet() -> None:
    snapshot = cluster(master("db1"), names=("db1", "db2"))
    assert choose(snapshot, RO).reason == (
        "fallback to master db1: no replica within max_lag 1.0s: db2 not probed yet"
    )


def test_ro_declared_master_that_is_read_only_and_not_replicating() -> None:
    snapshot = cluster(master("db1", read_only=True), replica("db2", 5.0))
    assert refusal(NoReplicaAvailable, snapshot, RO) == (
        "service 'sandbox': no replica within max_lag 1.0s and no master to fall back to: "
        "db1 read_only=1 (declared master is not writable), not replicating; db2 lag 5.0s > 1.0s"
    )


def test_ro_a_demoted_master_that_replicates_is_a_replica() -> None:
    snapshot = cluster(replica("db1", 0.2), master("db2"), replica("db3", 4.0))
    decision = choose(snapshot, RO)
    assert decision.datasource.name == "db1"
    assert decision.datasource.role is Role.MASTER
    assert decision.is_fallback is False


def test_ro_never_reads_from_the_master_unless_falling_back() -> None:
    snapshot = cluster(master("db1", lag=0.0, replicating=True), replica("db2", 0.4))
    for turn in range(5):
        assert choose(snapshot, RO, turn=turn).datasource.name == "db2"


def test_ro_never_reads_from_a_split_brain_writable_server() -> None:
    snapshot = cluster(master("db1"), master("db2", replicating=True, lag=0.0, **of("db1")))
    decision = choose(snapshot, RO)
    assert decision.datasource.name == "db1"
    assert decision.is_fallback is True
    assert decision.reason == (
        "fallback to master db1: no replica within max_lag 1.0s: "
        "db2 writable but replicating from db1: a misconfigured replica, never the master"
    )
    split = cluster(master("db1"), replica("db2", 9.0), master("db3"))
    assert choose(split, RO).reason == (
        "fallback to master db1: no replica within max_lag 1.0s: "
        "db2 lag 9.0s > 1.0s; db3 writable, but db1 is the master (split brain)"
    )


def test_ro_max_lag_is_the_policys() -> None:
    snapshot = cluster(master("db1"), replica("db2", 1.5))
    assert choose(snapshot, ro(max_lag=2.0)).datasource.name == "db2"
    assert choose(snapshot, ro(max_lag=0.5)).reason == (
        "fallback to master db1: no replica within max_lag 0.5s: db2 lag 1.5s > 0.5s"
    )


def test_ro_infinite_max_lag_accepts_any_known_lag_but_not_an_unknown_one() -> None:
    snapshot = cluster(master("db1"), replica("db2", 1e6), replica("db3", None))
    policy = ro(max_lag=math.inf)
    assert {choose(snapshot, policy, turn=t).datasource.name for t in range(4)} == {"db2"}


# --- RO_RELAXED: fallback --------------------------------------------------------------


def test_ro_fallback_error_refuses() -> None:
    snapshot = cluster(master("db1"), replica("db2", 3.2), down("db3"))
    assert refusal(NoReplicaAvailable, snapshot, ro(fallback=Fallback.ERROR)) == (
        "service 'sandbox': no replica within max_lag 1.0s, and fallback=error: "
        "db1 master (not used: fallback=error); db2 lag 3.2s > 1.0s; "
        "db3 unreachable (connection refused)"
    )


def test_ro_fallback_without_a_master_refuses() -> None:
    snapshot = cluster(down("db1"), replica("db2", 3.2), replica("db3", None))
    assert refusal(NoReplicaAvailable, snapshot, RO) == (
        "service 'sandbox': no replica within max_lag 1.0s and no master to fall back to: "
        "db1 unreachable (connection refused); db2 lag 3.2s > 1.0s; db3 lag unknown"
    )


def test_ro_fallback_to_an_offline_master_refuses() -> None:
    snapshot = cluster(master("db1"), replica("db2", 3.2), offline={"db1"})
    assert refusal(NoReplicaAvailable, snapshot, RO) == (
        "service 'sandbox': no replica within max_lag 1.0s and no master to fall back to: "
        "db1 master, offline (operator); db2 lag 3.2s > 1.0s"
    )


def test_ro_fallback_to_an_excluded_master_refuses() -> None:
    snapshot = cluster(master("db1"), replica("db2", 3.2))
    assert refusal(NoReplicaAvailable, snapshot, ro(exclude=frozenset({"db1"}))) == (
        "service 'sandbox': no replica within max_lag 1.0s and no master to fall back to: "
        "db1 master, excluded (failed this attempt); db2 lag 3.2s > 1.0s"
    )


def test_ro_fallback_to_an_ambiguous_master_refuses() -> None:
    snapshot = cluster(down("db1"), master("db2"), master("db3"))
    assert refusal(NoReplicaAvailable, snapshot, RO) == (
        "service 'sandbox': no replica within max_lag 1.0s and no master to fall back to: "
        "db1 unreachable (connection refused); "
        "db2 writable (split brain: db2, db3 are writable, none is the master); "
        "db3 writable (split brain: db2, db3 are writable, none is the master)"
    )


def test_ro_fallback_goes_to_the_promoted_master() -> None:
    snapshot = cluster(
        master("db1"),
        master("db2"),
        replica("db3", 9.0),
        replica("db4", 9.0, source="db2"),
        promoted="db2",
    )
    decision = choose(snapshot, RO)
    assert decision.datasource.name == "db2"
    assert decision.reason == (
        "fallback to master db2: no replica within max_lag 1.0s: "
        "db1 writable, but db2 is the master (split brain); db3 lag 9.0s > 1.0s; "
        "db4 lag 9.0s > 1.0s"
    )


def test_ro_excluded_replica_retries_on_the_next_one() -> None:
    snapshot = healthy()
    first = choose(snapshot, RO, turn=0).datasource.name
    second = choose(snapshot, ro(exclude=frozenset({first})), turn=0).datasource.name
    assert {first, second} == {"db2", "db3"}
    last = choose(snapshot, ro(exclude=frozenset({"db2", "db3"})))
    assert last.is_fallback is True
    assert last.reason == (
        "fallback to master db1: no replica within max_lag 1.0s: "
        "db2 excluded (failed this attempt); db3 excluded (failed this attempt)"
    )


# --- RO_RELAXED: weighted spread -------------------------------------------------------


def test_ro_spreads_equally_by_default() -> None:
    picks = [choose(healthy(), RO, turn=t).datasource.name for t in range(6)]
    assert Counter(picks) == {"db2": 3, "db3": 3}


def test_ro_spreads_by_weight_and_interleaves() -> None:
    snapshot = cluster(master("db1"), replica("db2"), replica("db3"), weights={"db2": 3})
    picks = [choose(snapshot, RO, turn=t).datasource.name for t in range(8)]
    assert Counter(picks) == {"db2": 6, "db3": 2}
    # A burst of two connects reaches both replicas, not db2 twice.
    assert set(picks[:2]) == {"db2", "db3"}


def test_ro_weight_zero_is_a_standby() -> None:
    snapshot = cluster(master("db1"), replica("db2"), replica("db3"), weights={"db3": 0})
    assert {choose(snapshot, RO, turn=t).datasource.name for t in range(5)} == {"db2"}
    only = cluster(master("db1"), replica("db2", 7.0), replica("db3"), weights={"db3": 0})
    assert choose(only, RO).datasource.name == "db3"


def test_ro_standbys_alone_take_turns() -> None:
    # Only weight-0 replicas qualify (the weighted one lags): they share the reads in
    # turn, in declaration order, rather than all going to the first.
    snapshot = cluster(
        master("db1"),
        replica("db2", 7.0),
        replica("db3"),
        replica("db4"),
        replica("db5"),
        weights={"db3": 0, "db4": 0, "db5": 0},
    )
    picks = [choose(snapshot, RO, turn=t).datasource.name for t in range(7)]
    assert picks == ["db3", "db4", "db5", "db3", "db4", "db5", "db3"]


def test_ro_negative_turn_is_fine() -> None:
    assert choose(healthy(), RO, turn=-1).datasource.name in {"db2", "db3"}


# --- RO_RELAXED: causal token ----------------------------------------------------------


def test_ro_token_is_served_by_a_replica_that_covers_it() -> None:
    snapshot = cluster(master("db1"), replica("db2", 0.1, "0-1-10"), replica("db3", 0.5, "0-1-12"))
    decision = choose(snapshot, ro(token=tok("0-1-12")))
    assert decision.datasource.name == "db3"
    assert decision.needs_wait is None
    assert decision.reason == "replica db3 lag 0.5s <= 1.0s, covers token 0-1-12"


def test_ro_token_in_several_domains_must_be_covered_in_each() -> None:
    snapshot = cluster(
        master("db1"), replica("db2", 0.1, "0-1-12,1-2-3"), replica("db3", 0.1, "0-1-12,1-2-7")
    )
    for turn in range(3):
        decision = choose(snapshot, ro(token=tok("0-1-11,1-2-5")), turn=turn)
        assert decision.datasource.name == "db3"


def test_ro_token_no_replica_covers_it_so_wait_on_the_closest() -> None:
    snapshot = cluster(master("db1"), replica("db2", 0.1, "0-1-8"), replica("db3", 0.6, "0-1-10"))
    decision = choose(snapshot, ro(token=tok("0-1-12")))
    assert decision.datasource.name == "db3"
    assert decision.needs_wait == tok("0-1-12")
    assert decision.is_fallback is False
    assert decision.reason == (
        "replica db3 lag 0.6s <= 1.0s, position 0-1-10 does not cover token 0-1-12 yet: wait for it"
    )


def test_ro_token_wait_candidate_ties_are_broken_by_lag() -> None:
    snapshot = cluster(master("db1"), replica("db2", 0.4, "0-1-10"), replica("db3", 0.2, "0-1-10"))
    assert choose(snapshot, ro(token=tok("0-1-12"))).datasource.name == "db3"


def test_ro_token_wait_candidate_counts_what_it_lacks_in_every_domain() -> None:
    # Token 0-1-20,1-2-10.  db2 lacks 2 + 8 = 10 transactions; db3, further behind in
    # domain 0, lacks 5 + 1 = 6; db4 is far ahead in domain 0, which makes up for
    # nothing in domain 1 (it lacks 9 there).  db3 is the closest, though db2 and db4
    # lag less.
    snapshot = cluster(
        master("db1"),
        replica("db2", 0.1, "0-1-18,1-2-2"),
        replica("db3", 0.5, "0-1-15,1-2-9"),
        replica("db4", 0.1, "0-1-90,1-2-1"),
    )
    decision = choose(snapshot, ro(token=tok("0-1-20,1-2-10")))
    assert decision.datasource.name == "db3"
    assert decision.needs_wait == tok("0-1-20,1-2-10")
    # A domain the replica has never seen counts whole: db2 lacks 10, db3 8 + 1.
    absent = cluster(
        master("db1"), replica("db2", 0.1, "0-1-20"), replica("db3", 0.5, "0-1-12,1-2-9")
    )
    assert choose(absent, ro(token=tok("0-1-20,1-2-10"))).datasource.name == "db3"


def test_ro_token_wait_candidate_with_an_empty_position() -> None:
    snapshot = cluster(master("db1"), replica("db2", 0.1, ""))
    assert choose(snapshot, ro(token=tok("0-1-12"))).reason == (
        "replica db2 lag 0.1s <= 1.0s, position (empty) does not cover token 0-1-12 yet: "
        "wait for it"
    )


def test_ro_token_after_a_wait_timed_out_the_next_replica_then_the_master() -> None:
    snapshot = cluster(master("db1"), replica("db2", 0.1, "0-1-8"), replica("db3", 0.6, "0-1-10"))
    token = tok("0-1-12")
    second = choose(snapshot, ro(token=token, exclude=frozenset({"db3"})))
    assert second.datasource.name == "db2"
    assert second.needs_wait == token
    last = choose(snapshot, ro(token=token, exclude=frozenset({"db2", "db3"})))
    assert last.datasource.name == "db1"
    assert last.is_fallback is True
    assert last.needs_wait is None


def test_ro_token_skip_waiting_goes_to_the_master() -> None:
    snapshot = cluster(master("db1"), replica("db2", 0.1, "0-1-10"), replica("db3", 4.0))
    decision = choose(snapshot, ro(token=tok("0-1-12"), allow_wait=False))
    assert decision.datasource.name == "db1"
    assert decision.is_fallback is True
    assert decision.needs_wait is None
    assert decision.reason == (
        "fallback to master db1: no replica covers token 0-1-12: "
        "db2 position 0-1-10 does not cover token 0-1-12; db3 lag 4.0s > 1.0s"
    )


def test_ro_token_with_fallback_error_never_uses_the_master() -> None:
    snapshot = cluster(master("db1"), replica("db2", 0.1, "0-1-10"))
    policy = ro(token=tok("0-1-12"), allow_wait=False, fallback=Fallback.ERROR)
    assert refusal(NoReplicaAvailable, snapshot, policy) == (
        "service 'sandbox': no replica covers token 0-1-12, and fallback=error: "
        "db1 master (not used: fallback=error); "
        "db2 position 0-1-10 does not cover token 0-1-12"
    )
    # Waiting is still offered: fallback=error does not forbid it.
    waiting = choose(snapshot, ro(token=tok("0-1-12"), fallback=Fallback.ERROR))
    assert waiting.needs_wait == tok("0-1-12")


def test_ro_token_with_only_lagging_replicas_reports_the_lag() -> None:
    snapshot = cluster(master("db1"), replica("db2", 3.0, "0-1-99"))
    assert choose(snapshot, ro(token=tok("0-1-12"))).reason == (
        "fallback to master db1: no replica within max_lag 1.0s: db2 lag 3.0s > 1.0s"
    )


def test_ro_token_covering_replicas_are_spread_by_weight() -> None:
    snapshot = cluster(
        master("db1"),
        replica("db2", 0.1, "0-1-12"),
        replica("db3", 0.1, "0-1-12"),
        replica("db4", 0.1, "0-1-5"),
        weights={"db3": 2},
    )
    picks = [choose(snapshot, ro(token=tok("0-1-12")), turn=t).datasource.name for t in range(3)]
    assert Counter(picks) == {"db2": 1, "db3": 2}


# --- explain ---------------------------------------------------------------------------


def test_explain_rw() -> None:
    snapshot = cluster(master("db1"), replica("db2"), down("db3"), master("db4"))
    assert explain(snapshot, RW) == [
        ("db1", "writable master"),
        ("db2", "read_only=1"),
        ("db3", "unreachable (connection refused)"),
        ("db4", "writable, but db1 is the master (split brain)"),
    ]


def test_explain_ro() -> None:
    snapshot = cluster(
        master("db1"),
        replica("db2", 0.12, "0-1-12"),
        replica("db3", 0.3, "0-1-10"),
        replica("db4", 3.2),
        replica("db5", 0.1, "0-1-12"),
        weights={"db5": 3},
        offline={"db5"},
    )
    assert explain(snapshot, ro(token=tok("0-1-12"))) == [
        ("db1", "master (fallback)"),
        ("db2", "replica, lag 0.12s <= 1.0s, covers token 0-1-12"),
        (
            "db3",
            "replica, lag 0.3s <= 1.0s, position 0-1-10 does not cover token 0-1-12 "
            "(can wait for it)",
        ),
        ("db4", "lag 3.2s > 1.0s"),
        ("db5", "offline (operator)"),
    ]
    assert explain(snapshot, ro(fallback=Fallback.ERROR))[0] == (
        "db1",
        "master (not used: fallback=error)",
    )


def test_explain_ro_shows_weights() -> None:
    snapshot = cluster(master("db1"), replica("db2"), weights={"db2": 4})
    assert explain(snapshot, RO)[1] == ("db2", "replica, lag 0.1s <= 1.0s, weight 4")


# --- purity ----------------------------------------------------------------------------


def test_choose_does_not_change_its_inputs() -> None:
    snapshot = healthy()
    policy = ro(token=tok("0-1-12"), exclude=frozenset({"db3"}))
    before = (snapshot, dict(snapshot.health), policy)
    choose(snapshot, policy, turn=3)
    explain(snapshot, policy)
    assert before == (snapshot, dict(snapshot.health), policy)


# --- properties ------------------------------------------------------------------------

NAMES = ("db1", "db2", "db3", "db4", "db5", "db6")
ANY_QOS = st.sampled_from(QoS)

tokens = st.builds(
    CausalToken,
    st.lists(
        st.tuples(st.sampled_from([0, 0, 0, 1]), st.integers(1, 3), st.integers(0, 20)),
        max_size=2,
    ),
)


def naming(n: str) -> list[dict[str, Any]]:
    """The ways a replica of ``n`` may name it: by address and server id, by address
    only (never connected), by server id only (another address), by address with the
    server id of the master before (a ``CHANGE MASTER`` not yet connected)."""
    return [
        {"master_host": "127.0.0.1", "master_port": 3309 + sid(n), "master_server_id": sid(n)},
        {"master_host": "127.0.0.1", "master_port": 3309 + sid(n), "master_server_id": 0},
        {"master_host": "10.0.0.9", "master_port": 3306, "master_server_id": sid(n)},
        {"master_host": "127.0.0.1", "master_port": 3309 + sid(n), "master_server_id": 1},
    ]


#: Upstreams that name no datasource.
NOWHERE: list[dict[str, Any]] = [
    {"master_host": "10.0.0.9", "master_port": 3306, "master_server_id": 9},
    {"master_host": "", "master_port": None, "master_server_id": None},
]

#: What a server that replicates may name: a datasource, or nothing usable.
upstreams: st.SearchStrategy[dict[str, Any]] = st.sampled_from(NAMES).flatmap(
    lambda n: st.sampled_from(naming(n))
) | st.sampled_from(NOWHERE)


def upstream_of(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = draw(upstreams)
    return fields


@st.composite
def any_health(draw: st.DrawFn, name: str) -> Health:
    """Any combination of observations, most of them broken."""
    reachable = draw(st.booleans())
    lag = draw(st.none() | st.floats(min_value=0.0, max_value=5.0) | st.sampled_from([math.nan]))
    return Health(
        name=name,
        reachable=reachable,
        observed_at=1.0,
        server_id=draw(st.sampled_from([sid(name), sid(name), None])),
        read_only=draw(st.sampled_from([True, True, False, None])),
        replicating=draw(st.booleans()),
        io_running=draw(st.sampled_from([True, True, False, None])),
        sql_running=draw(st.sampled_from([True, True, False, None])),
        lag=lag,
        position=draw(tokens),
        error=None if reachable else draw(st.sampled_from(["connection refused", "timed out"])),
        **upstream_of(draw),
    )


@st.composite
def writable_health(draw: st.DrawFn, name: str) -> Health:
    """A writable server: a master candidate, or (rarely) a misconfigured replica."""
    replicating = draw(st.sampled_from([False, False, False, True]))
    upstream = upstream_of(draw) if replicating else {}
    return Health(
        name=name,
        reachable=True,
        observed_at=1.0,
        server_id=sid(name),
        read_only=False,
        replicating=replicating,
        position=draw(tokens),
        **upstream,
    )


@st.composite
def working_health(draw: st.DrawFn, name: str) -> Health:
    """A read-only server, usually a replica of db1 or db2 (a writable one most often)."""
    replicating = draw(st.sampled_from([True, True, True, False]))
    upstream: dict[str, Any] = {}
    if replicating:
        usual: st.SearchStrategy[dict[str, Any]] = st.sampled_from([of("db1"), of("db2")])
        upstream = draw(usual | usual | upstreams)
    return Health(
        name=name,
        reachable=True,
        observed_at=1.0,
        server_id=sid(name),
        read_only=True,
        replicating=replicating,
        io_running=draw(st.sampled_from([True, True, True, False, None])),
        sql_running=draw(st.sampled_from([True, True, True, False, None])),
        lag=draw(st.floats(min_value=0.0, max_value=3.0) | st.none()),
        lag_source="heartbeat",
        position=draw(tokens),
        **{k: v for k, v in upstream.items() if k not in {"io_running", "sql_running"}},
    )


def healths(name: str) -> st.SearchStrategy[Health]:
    """Mostly replicas (some with a stopped thread), some writable servers, some anything."""
    return st.one_of(
        any_health(name), writable_health(name), working_health(name), working_health(name)
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    n = draw(st.integers(1, 6))
    names = NAMES[:n]
    roles = draw(st.lists(st.sampled_from(Role), min_size=n, max_size=n))
    weights = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    datasources = tuple(
        DataSource(name, "127.0.0.1", 3310 + i, role=roles[i], weight=weights[i])
        for i, name in enumerate(names)
    )
    unprobed = draw(st.sets(st.sampled_from(names), max_size=1))
    health = {name: draw(healths(name)) for name in names if name not in unprobed}
    return Snapshot(
        service=Service(SERVICE, datasources, monitor_credentials=Credentials("monitor", SECRET)),
        health=health,
        offline=draw(st.frozensets(st.sampled_from(names), max_size=2)),
        promoted=draw(st.none() | st.sampled_from((*names, "db9"))),
    )


@st.composite
def topologies(draw: st.DrawFn) -> Snapshot:
    """A coherent cluster (one master, replicas of it or of each other) that someone then
    changed: servers down, made writable, repointed, reset, restarted as masters."""
    names = NAMES[: draw(st.integers(1, 6))]
    first = draw(st.sampled_from(names))
    healths: list[Health] = []
    for name in names:
        if name == first:
            h = master(name)
        else:
            h = replica(name, source=draw(st.sampled_from([first, first, first, *names])))
        change = draw(
            st.sampled_from(
                ["none", "none", "none", "down", "writable", "reset", "standalone", "stop-io"]
            )
        )
        if change == "down":
            h = down(name)
        elif change == "writable":
            h = replace(h, read_only=False)
        elif change == "reset":
            h = replace(h, replicating=False, master_server_id=None, master_host="", lag=None)
        elif change == "standalone":  # an old master back writable, a restored copy
            h = master(name)
        elif change == "stop-io":
            h = replace(h, io_running=False)
        healths.append(h)
    return cluster(
        *healths,
        promoted=draw(st.none() | st.sampled_from(names)),
        declared_master=draw(st.sampled_from(names)),
    )


@st.composite
def policies(draw: st.DrawFn, qos: st.SearchStrategy[QoS] = ANY_QOS) -> Policy:
    return Policy(
        qos=draw(qos),
        max_lag=draw(st.floats(min_value=0.0, max_value=3.0)),
        fallback=draw(st.sampled_from(Fallback)),
        token=draw(st.just(EMPTY) | tokens),
        allow_wait=draw(st.booleans()),
        exclude=draw(st.frozensets(st.sampled_from(NAMES), max_size=2)),
    )


def is_replica_within(snapshot: Snapshot, policy: Policy, ds: DataSource) -> bool:
    """The replica rule, written plainly, as an oracle."""
    h = snapshot.health.get(ds.name)
    return (
        h is not None
        and ds.name not in snapshot.offline
        and ds.name not in policy.exclude
        and h.reachable
        and h.read_only is True
        and h.replicating
        and h.lag is not None
        and h.lag <= policy.max_lag
    )


def master_oracle(snapshot: Snapshot) -> str | None:
    """The master rule, written plainly, as an oracle (module docstring of the router)."""
    reach = {
        ds.name: h
        for ds in snapshot.datasources
        if (h := snapshot.health.get(ds.name)) is not None and h.reachable
    }
    by_address: dict[tuple[str, int | None], str] = {
        (ds.host, ds.port): ds.name for ds in snapshot.datasources
    }

    def upstream(name: str) -> str | None:
        h = reach[name]
        if h.master_host and (h.master_host, h.master_port) in by_address:
            return by_address[h.master_host, h.master_port]
        holders = [
            n for n, o in reach.items() if h.master_server_id and o.server_id == h.master_server_id
        ]
        return holders[0] if len(holders) == 1 else None

    def source(name: str) -> str | None:
        seen = {name}
        up = upstream(name)
        while up is not None and up in reach and reach[up].replicating:
            if up in seen:
                return None
            seen.add(up)
            up = upstream(up)
        return up

    candidates = [n for n, h in reach.items() if h.read_only is False and not h.replicating]
    sources = {source(n) for n, h in reach.items() if h.replicating}
    if not sources:
        tied = candidates
    elif sources <= set(candidates):
        tied = [n for n in candidates if n in sources]
    else:
        tied = []
    if len(tied) == 1:
        return tied[0]
    return snapshot.promoted if snapshot.promoted in tied else None


@settings(max_examples=500)
@given(snapshots() | topologies(), policies(), st.integers(-1000, 1000))
def test_property_choices_respect_the_rules(snapshot: Snapshot, policy: Policy, turn: int) -> None:
    try:
        decision = choose(snapshot, policy, turn=turn)
    except (NoMasterAvailable, NoReplicaAvailable) as exc:
        expected = NoMasterAvailable if policy.qos is QoS.RW_STRICT else NoReplicaAvailable
        assert type(exc) is expected
        message = exc.args[1]
        assert message.startswith(f"service '{SERVICE}': ")
        for ds in snapshot.datasources:
            assert f"{ds.name} " in message
        assert SECRET not in message
        return

    ds = decision.datasource
    h = snapshot.health[ds.name]
    assert ds.name not in snapshot.offline
    assert ds.name not in policy.exclude
    assert SECRET not in decision.reason
    if policy.qos is QoS.RW_STRICT or decision.is_fallback:
        # Only ever the writable master that does not replicate, as the rule says.
        assert h.writable
        assert not h.replicating
        assert decision.needs_wait is None
        assert ds == observed_master(snapshot)
        assert ds.name == master_oracle(snapshot)
        if policy.qos is QoS.RO_RELAXED:
            assert policy.fallback is Fallback.MASTER
        return

    assert is_replica_within(snapshot, policy, ds)
    assert h.lag is not None
    assert h.lag <= policy.max_lag
    if decision.needs_wait is not None:
        assert policy.allow_wait
        assert decision.needs_wait == policy.token
        assert not h.position.covers(policy.token)
        # Waiting is offered only when no replica already covers the token.
        assert not any(
            is_replica_within(snapshot, policy, other)
            and snapshot.health[other.name].position.covers(policy.token)
            for other in snapshot.datasources
        )
    else:
        assert h.position.covers(policy.token)


@settings(max_examples=400)
@given(snapshots(), policies(qos=st.just(QoS.RO_RELAXED)))
def test_property_fallback_only_when_no_replica_qualifies(
    snapshot: Snapshot, policy: Policy
) -> None:
    qualifying = [ds for ds in snapshot.datasources if is_replica_within(snapshot, policy, ds)]
    try:
        decision = choose(snapshot, policy)
    except NoReplicaAvailable:
        covering = [
            ds for ds in qualifying if snapshot.health[ds.name].position.covers(policy.token)
        ]
        assert not covering
        assert not qualifying or not policy.allow_wait
        return
    assert decision.is_fallback == (
        not qualifying
        or not (
            policy.allow_wait
            or any(snapshot.health[ds.name].position.covers(policy.token) for ds in qualifying)
        )
    )


@settings(max_examples=300)
@st.composite
def spreads(draw: st.DrawFn) -> Snapshot:
    """A master and 1-5 replicas in step with it, of any weights, one maybe offline: a
    snapshot where the spread over qualifying replicas has something to show."""
    names = NAMES[1 : 1 + draw(st.integers(1, 5))]
    weights = {name: draw(st.integers(0, 4)) for name in names}
    return cluster(
        master("db1"),
        *(replica(name, lag=draw(st.sampled_from([0.0, 0.5, 2.0]))) for name in names),
        weights=weights,
        offline=draw(st.frozensets(st.sampled_from(names), max_size=1)),
    )


@given(
    snapshots() | spreads(),
    st.floats(0.0, 3.0),
    st.just(EMPTY) | tokens,
    st.integers(-50, 50),
)
def test_property_weighted_spread_is_exact(
    snapshot: Snapshot, max_lag: float, token: CausalToken, start: int
) -> None:
    policy = Policy(QoS.RO_RELAXED, max_lag=max_lag, token=token)
    qualifying = [
        ds
        for ds in snapshot.datasources
        if is_replica_within(snapshot, policy, ds)
        and snapshot.health[ds.name].position.covers(token)
    ]
    weighted = [ds for ds in qualifying if ds.weight > 0] or qualifying
    assume(weighted)  # a snapshot with no qualifying replica says nothing of the spread
    window = sum(ds.weight for ds in weighted) if weighted[0].weight > 0 else len(weighted)
    picks = Counter(
        choose(snapshot, policy, turn=t).datasource.name for t in range(start, start + window)
    )
    assert picks == {ds.name: max(ds.weight, 1) for ds in weighted}


@settings(max_examples=200)
@given(snapshots(), policies(), st.integers(0, 100))
def test_property_choose_is_deterministic_and_explain_never_fails(
    snapshot: Snapshot, policy: Policy, turn: int
) -> None:
    def outcome() -> Decision | str:
        try:
            return choose(snapshot, policy, turn=turn)
        except (NoMasterAvailable, NoReplicaAvailable) as exc:
            return str(exc.args)

    assert outcome() == outcome()
    rows = explain(snapshot, policy)
    assert [name for name, _ in rows] == [ds.name for ds in snapshot.datasources]
    assert all(verdict and SECRET not in verdict for _, verdict in rows)


@settings(max_examples=500)
@given(snapshots() | topologies(), st.randoms(use_true_random=False))
def test_property_the_master_is_the_rules_whatever_the_order(
    snapshot: Snapshot, rnd: random.Random
) -> None:
    m = resolve_master(snapshot.datasources, snapshot.health, promoted=snapshot.promoted)
    name = m.master.name if m.master is not None else None
    assert name == master_oracle(snapshot)
    if m.master is not None:
        h = snapshot.health[m.master.name]
        assert h.reachable and h.read_only is False and not h.replicating
        assert m.master in m.candidates and m.master in m.tied
        # The promotion only ever breaks a tie.
        assert m.by_promotion == (len(m.tied) > 1)
    # Nothing of the declared roles, the order of the datasources or the order of the
    # observations changes the answer.
    shuffled = list(snapshot.datasources)
    rnd.shuffle(shuffled)
    roles = [replace(ds, role=rnd.choice(list(Role))) for ds in shuffled]
    health = dict(sorted(snapshot.health.items(), key=lambda _: rnd.random()))
    other = resolve_master(roles, health, promoted=snapshot.promoted)
    assert (other.master.name if other.master is not None else None) == name
    assert {ds.name for ds in other.writable} == {ds.name for ds in m.writable}
    assert {ds.name for ds in other.candidates} == {ds.name for ds in m.candidates}


@settings(max_examples=300)
@given(snapshots() | topologies())
def test_property_a_missed_probe_of_the_master_hands_writes_to_nobody_else(
    snapshot: Snapshot,
) -> None:
    m = resolve_master(snapshot.datasources, snapshot.health, promoted=snapshot.promoted)
    if m.master is None or not any(s.datasource == m.master.name for s in m.source.values()):
        return  # no replica of the master to tell (the documented limit)
    missed = dict(snapshot.health)
    missed[m.master.name] = Health(
        m.master.name, reachable=False, observed_at=2.0, error="timed out"
    )
    assert resolve_master(snapshot.datasources, missed, promoted=snapshot.promoted).master is None


def test_stopped_thread_with_known_lag_still_serves() -> None:
    """The monitor counts stopped threads in the lag: with the master gone, replicas
    whose IO thread cannot connect keep serving reads within max_lag."""
    dead_master = Health(name="db1", reachable=False, observed_at=1.0, error="refused")
    snapshot = cluster(dead_master, replica("db2", io_running=False, lag=0.0))
    decision = choose(snapshot, ro())
    assert decision.datasource.name == "db2" and not decision.is_fallback


# --- open RO_RELAXED connections: reroute, wait_here, missing --------------------------


def test_missing_sums_over_the_tokens_domains() -> None:
    token = CausalToken.parse("0-1-20,1-2-5")
    assert missing(CausalToken.parse("0-1-20,1-2-5"), token) == 0
    assert missing(CausalToken.parse("0-1-18,1-2-1"), token) == 2 + 4
    assert missing(CausalToken.parse("0-1-30"), token) == 5  # ahead in one, absent in other
    assert missing(EMPTY, token) == 25
    assert missing(CausalToken.parse("0-1-1"), EMPTY) == 0


def test_reroute_uses_the_connections_own_max_lag() -> None:
    snap = cluster(master(), replica("db2", lag=3.0), replica("db3", lag=0.1))
    assert reroute(snap, "db2", Policy(QoS.RO_RELAXED, max_lag=30.0), fallback=False) is None
    why = reroute(snap, "db2", Policy(QoS.RO_RELAXED, max_lag=1.0), fallback=False)
    assert why == "db2 no longer serves reads: lag 3.0s > 1.0s"


def test_reroute_leaves_a_replica_that_became_the_master() -> None:
    snap = cluster(
        replica("db1", lag=0.0, source="db2"),
        master("db2"),
        replica("db3", source="db2"),
        declared_master="db1",
    )
    why = reroute(snap, "db2", Policy(QoS.RO_RELAXED), fallback=False)
    assert why == "db2 is now the master"


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        (down("db2"), "db2 no longer serves reads: unreachable (connection refused)"),
        (
            replica("db2", lag=None, io_running=False),
            "db2 no longer serves reads: lag unknown (io thread stopped)",
        ),
    ],
)
def test_reroute_leaves_a_replica_that_stopped_serving(health: Health, expected: str) -> None:
    snap = cluster(master(), health, replica("db3"))
    assert reroute(snap, "db2", Policy(QoS.RO_RELAXED), fallback=False) == expected


def test_reroute_of_an_offline_replica() -> None:
    snap = cluster(master(), replica("db2"), replica("db3"), offline={"db2"})
    why = reroute(snap, "db2", Policy(QoS.RO_RELAXED), fallback=False)
    assert why == "db2 no longer serves reads: offline (operator)"


def test_reroute_from_the_master_fallback_once_a_replica_qualifies() -> None:
    lagging = cluster(master(), replica("db2", lag=9.0), replica("db3", lag=9.0))
    policy = Policy(QoS.RO_RELAXED, max_lag=1.0)
    assert reroute(lagging, "db1", policy, fallback=True) is None
    healthy = cluster(master(), replica("db2", lag=9.0), replica("db3", lag=0.2))
    why = reroute(healthy, "db1", policy, fallback=True)
    assert why is not None and why.startswith("a replica serves reads again: replica db3")
    # No replica qualifies with fallback=error: nothing better to move to.
    assert (
        reroute(lagging, "db1", Policy(QoS.RO_RELAXED, fallback=Fallback.ERROR), fallback=True)
        is None
    )


def test_reroute_from_a_fallback_master_that_was_demoted() -> None:
    """A relaxed connection on the master by fallback, the master demoted by some tool
    (its sessions left open): it moves, it may lack the session's new writes."""
    policy = Policy(QoS.RO_RELAXED, max_lag=1.0)
    demoted = cluster(
        replica("db1", lag=0.3, source="db2"),
        master("db2"),
        replica("db3", lag=9.0, source="db2"),
    )
    assert reroute(demoted, "db1", policy, fallback=True) == "db1 is no longer the master (db2 is)"
    headless = cluster(down("db1"), replica("db2"), replica("db3"))
    assert reroute(headless, "db1", policy, fallback=True) == (
        "db1 is no longer the master (no server is)"
    )


def test_wait_here_unless_another_replica_is_clearly_closer() -> None:
    token = CausalToken.parse("0-1-30")
    policy = Policy(QoS.RO_RELAXED, max_lag=5.0, token=token)
    close = cluster(master(), replica("db2", position="0-1-28"), replica("db3", position="0-1-29"))
    assert wait_here(close, "db2", policy)  # 2 missing vs 1: within MOVE_TOLERANCE
    far = cluster(master(), replica("db2", position="0-1-10"), replica("db3", position="0-1-29"))
    assert not wait_here(far, "db2", policy)
    assert wait_here(far, "db3", policy)
    alone = cluster(master(), replica("db2", position="0-1-10"), down("db3"))
    assert wait_here(alone, "db2", policy)
    lagging = cluster(master(), replica("db2", lag=9.0, position="0-1-29"), down("db3"))
    assert not wait_here(lagging, "db2", policy)  # no longer a replica within max_lag
    assert MOVE_TOLERANCE == 2


# --- a snapshot the monitor stopped refreshing -------------------------------------------

_STALE = (
    "and routing trusts one for 2.5s at most (3 monitor intervals + the probe timeout): "
    "the monitor is not publishing"
)


def test_a_snapshot_older_than_max_age_qualifies_nothing() -> None:
    snapshot = replace(healthy(), generation=1, taken_at=100.0)
    # 3 intervals of 0.5 s + a probe timeout of 1 s.
    assert snapshot.max_age == 2.5
    assert snapshot.age(103.0) == 3.0
    assert choose(snapshot, RW, now=102.5).datasource.name == "db1"
    assert choose(snapshot, RO, now=102.5).datasource.name == "db2"
    assert refusal(NoMasterAvailable, snapshot, RW, now=103.0) == (
        f"service 'sandbox': no master known: the monitor's last observation is 3.0s old, {_STALE}"
    )
    assert refusal(NoReplicaAvailable, snapshot, RO, now=103.0) == (
        "service 'sandbox': no replica or master known: the monitor's last observation is "
        f"3.0s old, {_STALE}"
    )
    forked = replace(snapshot, taken_at=-math.inf)
    assert refusal(NoMasterAvailable, forked, RW, now=5.0) == (
        "service 'sandbox': no master known: the monitor's last observation is of unknown age "
        f"(made before fork()), {_STALE}"
    )


def test_only_published_snapshots_age() -> None:
    # Generation 0 is the monitor's first, made before any round: no age to trust or not.
    snapshot = replace(healthy(), generation=0, taken_at=0.0)
    assert choose(snapshot, RW, now=1e9).datasource.name == "db1"
    assert choose(replace(snapshot, generation=1), RW).datasource.name == "db1"  # no clock


# --- routes kept per snapshot (what a connect on the same snapshot reuses) --------------


@settings(max_examples=200)
@given(snapshots(), policies(), st.integers(-50, 50))
def test_property_kept_routes_decide_as_choose(
    snapshot: Snapshot, policy: Policy, start: int
) -> None:
    routes: dict[Policy, Route] = {}

    def outcome(turn: int, kept: dict[Policy, Route] | None) -> Decision | str:
        try:
            return choose(snapshot, policy, turn=turn, routes=kept)
        except (NoMasterAvailable, NoReplicaAvailable) as exc:
            return str(exc.args)

    for turn in range(start, start + 12):
        assert outcome(turn, routes) == outcome(turn, None)
    assert set(routes) <= {policy}


def test_kept_routes_are_bounded() -> None:
    snapshot = healthy()
    routes: dict[Policy, Route] = {}
    for i in range(MAX_ROUTES + 10):
        choose(snapshot, Policy(QoS.RO_RELAXED, max_lag=1.0 + i), routes=routes)
    assert len(routes) == MAX_ROUTES


@given(st.lists(st.integers(0, 40), min_size=2, max_size=6), st.integers(-100, 100))
def test_property_a_routes_slot_table_picks_as_its_weights(weights: list[int], turn: int) -> None:
    names = [f"db{i + 2}" for i in range(len(weights))]
    snapshot = cluster(
        master("db1"), *(replica(n) for n in names), weights=dict(zip(names, weights, strict=True))
    )
    kept = route(snapshot, RO)
    untabulated = Route(kept.decisions, kept.total, kept.stride)
    object.__setattr__(untabulated, "by_slot", ())  # the loop over the weights
    assert kept.pick(turn) == untabulated.pick(turn)


@given(snapshots() | topologies())
def test_a_snapshots_master_is_worked_out_once_and_is_the_rules(snap: Snapshot) -> None:
    """The monitor, the events' diff and every connect on a snapshot ask who its master
    is: the answer is computed once per snapshot, and is the rule's answer."""
    first = mastership(snap)
    assert mastership(snap) is first
    assert first == resolve_master(snap.service.datasources, snap.health, promoted=snap.promoted)
    other = replace(snap, promoted="db9")  # a new snapshot: its own answer
    assert mastership(other) == resolve_master(
        snap.service.datasources, snap.health, promoted="db9"
    )
