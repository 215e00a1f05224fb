"""Automatic failover's decision (pure) and its registry settings.

The decision is exhaustively exercised here without a server or a store; the runner,
the store and the failover they drive are tested against real servers and a real etcd
in tests/integration/test_autofailover.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqlrouter.autofailover import (
    AgentView,
    Decision,
    Detection,
    History,
    ReplicaView,
    Round,
    decide,
)
from sqlrouter.autofailover._observe import ServerView, resolve_master
from sqlrouter.autofailover.decision import backoff, failures_in_a_row
from sqlrouter.autofailover.runner import _blocks
from sqlrouter.cli.admin import describe_autofailover
from sqlrouter.registry import RegistryError, load_registry_file
from sqlrouter.routing.router import resolve_master as router_master
from sqlrouter.switchover import TopologyError
from sqlrouter.topology import AutofailoverSettings, DataSource, Service

NOW = 1_000_000.0
ROUNDS = 3
PERIOD = 3600.0
STALE = 5.0
MIN_AGENTS = 3
#: The backoff's settings as a registry without them gives them (10 s doubling to 300 s).
BACKOFF_BASE = AutofailoverSettings().backoff_base
BACKOFF_CAP = AutofailoverSettings().backoff_cap


def agents(*reachable: bool, master: str = "db1", age: float = 0.0) -> tuple[AgentView, ...]:
    return tuple(AgentView(f"a{i}", master, r, NOW - age) for i, r in enumerate(reachable))


def replicas(*connected: bool, source: str = "db1") -> tuple[ReplicaView, ...]:
    return tuple(ReplicaView(f"db{i + 2}", True, source, c) for i, c in enumerate(connected))


def dead_round(**changes: object) -> Round:
    base: dict[str, object] = {
        "master": "db1",
        "probe_ok": False,
        "probe_detail": "(2003) Can't connect",
        "agents": agents(False, False, False),
        "replicas": replicas(False, False),
        "now": NOW,
    }
    base.update(changes)
    return Round(**base)  # type: ignore[arg-type]


NO_HISTORY = History()


def decided(rnd: Round, history: History = NO_HISTORY, failed: int = 5) -> Decision:
    """The decision on ``rnd`` after ``failed`` failed rounds of db1."""
    return decide(
        Detection("db1", failed),
        rnd,
        history,
        rounds=ROUNDS,
        period=PERIOD,
        stale_after=STALE,
        min_agents=MIN_AGENTS,
        backoff_base=BACKOFF_BASE,
        backoff_cap=BACKOFF_CAP,
    )


def run(rounds: list[Round], history: History = NO_HISTORY) -> list[str]:
    detection = Detection()
    verdicts: list[str] = []
    for rnd in rounds:
        d = decide(
            detection,
            rnd,
            history,
            rounds=ROUNDS,
            period=PERIOD,
            stale_after=STALE,
            min_agents=MIN_AGENTS,
            backoff_base=BACKOFF_BASE,
            backoff_cap=BACKOFF_CAP,
        )
        detection = d.detection
        verdicts.append(d.verdict)
    return verdicts


def test_a_dead_master_is_failed_over_after_the_configured_rounds_only() -> None:
    assert run([dead_round()] * 4) == ["suspect", "suspect", "failover", "failover"]


def test_one_answer_resets_the_count_a_slow_master_is_not_dead() -> None:
    alive = dead_round(probe_ok=True, probe_detail="")
    verdicts = run([dead_round(), dead_round(), alive, dead_round(), dead_round()])
    assert verdicts == ["suspect", "suspect", "healthy", "suspect", "suspect"]


def test_the_count_restarts_when_the_master_changes() -> None:
    other = dead_round(master="db2", replicas=replicas(False, source="db2"))
    assert run([dead_round(), dead_round(), other]) == ["suspect", "suspect", "suspect"]


def test_one_observer_alone_is_not_a_majority() -> None:
    d = decided(dead_round(agents=agents(False, True, True)))
    assert d.verdict == "disagreement"
    assert d.reason == "1 of 3 live agents cannot reach db1: no majority"
    assert "agent a1: reaches db1" in d.evidence


def test_the_majority_is_of_min_agents_not_of_the_live_agents() -> None:
    """Alone (the others down or cut off), one agent that cannot reach the master is
    one of min_agents, not one of one: a partitioned master that is alive stays."""
    d = decided(dead_round(agents=agents(False)))
    assert d.verdict == "disagreement"
    assert d.reason == "1 of 1 live agents cannot reach db1: no majority of min_agents 3"
    assert decided(dead_round(agents=agents(False, False))).verdict == "failover"
    five = agents(False, False, False, True, True)  # more alive than min_agents: of them
    assert decided(dead_round(agents=five)).verdict == "failover"
    assert decided(dead_round(agents=agents(False, False, True, True, True))).verdict == (
        "disagreement"
    )


def test_half_is_not_a_majority_and_stale_or_other_views_do_not_count() -> None:
    def verdict(views: tuple[AgentView, ...]) -> str:
        return decided(dead_round(agents=views)).verdict

    assert verdict(agents(False, True)) == "disagreement"
    assert verdict(agents(False, False, age=STALE + 1)) == "disagreement"
    assert verdict(agents(False, False, master="db2")) == "disagreement"
    assert verdict(agents(False, False)) == "failover"


def test_a_replica_still_receiving_from_the_master_vetoes() -> None:
    d = decided(dead_round(replicas=replicas(False, True)))
    assert d.verdict == "disagreement"
    assert d.reason == "db3 still receive(s) from db1: it is alive for them"


def test_no_reachable_replica_means_no_confirmation() -> None:
    gone = (ReplicaView("db2", False, "db1", False, "timed out"),)
    d = decided(dead_round(replicas=gone))
    assert (d.verdict, d.reason) == (
        "disagreement",
        "no reachable replica of db1 to confirm it is dead",
    )


def test_a_second_failover_within_the_period_waits_for_an_acknowledgement() -> None:
    recent = History(last_failover_at=NOW - 60, acknowledged=False)
    d = decided(dead_round(), recent)
    assert d.verdict == "blocked"
    assert "ran 60s ago (at most one per 3600s until an operator acknowledges it)" in d.reason
    for history in (
        History(last_failover_at=NOW - 60, acknowledged=True),
        History(last_failover_at=NOW - PERIOD - 1, acknowledged=False),
    ):
        again = decided(dead_round(), history)
        assert again.verdict == "failover"


def test_a_refused_candidate_blocks_until_acknowledged() -> None:
    blocked = History(blocked="the replicas diverged: db3 lacks 0-2-5 (on db2)")
    d = decided(dead_round(), blocked)
    assert d.verdict == "blocked"
    assert d.reason.endswith(
        "until an operator acknowledges: the replicas diverged: db3 lacks 0-2-5 (on db2)"
    )


def test_the_backoff_schedule_doubles_up_to_its_cap() -> None:
    schedule = [backoff(n, base=BACKOFF_BASE, cap=BACKOFF_CAP) for n in range(8)]
    assert schedule == [0, 10, 20, 40, 80, 160, 300, 300]
    assert [backoff(n, base=1, cap=5) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert [backoff(n, base=2.5, cap=2.5) for n in range(1, 4)] == [2.5, 2.5, 2.5]
    # no overflow however many failures
    assert backoff(10_000, base=BACKOFF_BASE, cap=BACKOFF_CAP) == 300
    assert backoff(10_000, base=1, cap=86_400) == 86_400


def test_failures_are_counted_in_a_row_only() -> None:
    assert failures_in_a_row(0, None, NOW, cap=BACKOFF_CAP) == 1
    assert failures_in_a_row(2, NOW - 300, NOW, cap=BACKOFF_CAP) == 3
    assert failures_in_a_row(5, NOW - 600, NOW, cap=BACKOFF_CAP) == 6
    # long ago (more than twice the cap): not in a row any more
    assert failures_in_a_row(5, NOW - 601, NOW, cap=BACKOFF_CAP) == 1
    assert failures_in_a_row(5, NOW - 10, NOW, cap=5) == 6
    assert failures_in_a_row(5, NOW - 11, NOW, cap=5) == 1


def test_the_backoff_of_the_decision_is_the_services() -> None:
    """backoff_base 3, backoff_cap 5: after two failures the wait is 5s (3 doubled,
    capped), not the defaults' 20s."""
    failed = History(failures=2, last_failure_at=NOW - 4)

    def verdict(now: float) -> Decision:
        return decide(
            Detection("db1", 5),
            dead_round(now=now),
            failed,
            rounds=ROUNDS,
            period=PERIOD,
            stale_after=STALE,
            min_agents=MIN_AGENTS,
            backoff_base=3,
            backoff_cap=5,
        )

    d = verdict(NOW)
    assert d.verdict == "backoff"
    assert d.reason.endswith("the last 4s ago: next attempt in 1s (backoff 5s, at most 5s)")
    assert verdict(NOW + 1).verdict == "failover"


def test_a_failed_failover_is_tried_again_only_after_its_backoff() -> None:
    """Two failures in a row, the last 15s ago: the next attempt waits 20s in all."""
    failed = History(failures=2, last_failure_at=NOW - 15)
    d = decided(dead_round(), failed)
    assert d.verdict == "backoff"
    assert d.reason == (
        "db1 is dead, but 2 automatic failover(s) failed in a row, the last 15s ago: "
        "next attempt in 5s (backoff 20s, at most 300s)"
    )
    assert decided(dead_round(now=NOW + 5), failed).verdict == "failover"
    assert decided(dead_round(), History(failures=1, last_failure_at=NOW - 10)).verdict == (
        "failover"
    )
    # a block or an unacknowledged failover still says so first
    assert decided(dead_round(), replace(failed, blocked="diverged")).verdict == "blocked"
    # a failure recorded an hour "from now" (the recording agent's clock is ahead): the
    # clocks' difference holds nothing back
    ahead = History(failures=2, last_failure_at=NOW + 3600)
    assert decided(dead_round(), ahead).verdict == "failover"


def test_the_decision_carries_its_evidence() -> None:
    d = decided(dead_round(), NO_HISTORY, failed=2)
    assert d.as_dict() == {
        "verdict": "failover",
        "master": "db1",
        "reason": "db1 is dead: 3 failed rounds, 3 of 3 agents and 2 replica(s) agree",
        "evidence": [
            "leader's probe of db1: failed ((2003) Can't connect)",
            "failed rounds in a row: 3 of 3",
            "agent a0: cannot reach db1",
            "agent a1: cannot reach db1",
            "agent a2: cannot reach db1",
            "replica db2: IO thread lost the master",
            "replica db3: IO thread lost the master",
        ],
        "failed_rounds": 3,
    }


# --------------------------------------------------------------------------- properties

views = st.builds(
    AgentView,
    agent=st.sampled_from(["a0", "a1", "a2", "a3", "a4"]),
    master=st.sampled_from(["db1", "db2", None]),
    reachable=st.booleans(),
    at=st.floats(NOW - 20, NOW),
)
replica_views = st.builds(
    ReplicaView,
    name=st.sampled_from(["db2", "db3", "db4"]),
    reachable=st.booleans(),
    source=st.sampled_from(["db1", "db2", None]),
    io_connected=st.booleans(),
)
rounds_ = st.builds(
    Round,
    master=st.just("db1"),
    probe_ok=st.booleans(),
    probe_detail=st.just(""),
    agents=st.lists(views, max_size=5).map(tuple),
    replicas=st.lists(replica_views, max_size=3).map(tuple),
    now=st.just(NOW),
)
histories = st.builds(
    History,
    last_failover_at=st.none() | st.floats(NOW - 2 * PERIOD, NOW),
    acknowledged=st.booleans(),
    blocked=st.none() | st.just("diverged"),
    failures=st.integers(0, 8),
    last_failure_at=st.none() | st.floats(NOW - 400, NOW),
)


@given(st.lists(rounds_, min_size=1, max_size=8), histories)
def test_failover_only_when_every_condition_holds(seq: list[Round], history: History) -> None:
    detection = Detection()
    for i, rnd in enumerate(seq):
        d = decide(
            detection,
            rnd,
            history,
            rounds=ROUNDS,
            period=PERIOD,
            stale_after=STALE,
            min_agents=MIN_AGENTS,
            backoff_base=BACKOFF_BASE,
            backoff_cap=BACKOFF_CAP,
        )
        detection = d.detection
        if d.verdict != "failover":
            continue
        # the leader's probes failed for the last ROUNDS rounds in a row
        assert i + 1 >= ROUNDS and not any(r.probe_ok for r in seq[i + 1 - ROUNDS : i + 1])
        # a strict majority of the agents (live, at least MIN_AGENTS) saw it unreachable, recently
        fresh_no = [
            v for v in rnd.agents if v.master == "db1" and not v.reachable and NOW - v.at <= STALE
        ]
        assert 2 * len(fresh_no) > max(len(rnd.agents), MIN_AGENTS)
        # a reachable replica of it, and none still receiving from it
        own = [r for r in rnd.replicas if r.source == "db1" and r.reachable]
        assert own and not any(r.io_connected for r in own)
        # not blocked, not flapping
        assert history.blocked is None
        last = history.last_failover_at
        assert last is None or history.acknowledged or NOW - last >= PERIOD
        # not within the backoff of the failed attempts
        failed_at = history.last_failure_at
        # (a failure recorded after NOW, by a clock ahead of this one, holds nothing)
        wait = backoff(history.failures, base=BACKOFF_BASE, cap=BACKOFF_CAP)
        assert failed_at is None or not 0 <= NOW - failed_at < wait


@given(rounds_, histories, st.integers(0, 10))
def test_a_master_that_answers_is_healthy_and_resets_the_count(
    rnd: Round, history: History, failed: int
) -> None:
    answered = Round(rnd.master, True, "", rnd.agents, rnd.replicas, rnd.now)
    d = decide(
        Detection("db1", failed),
        answered,
        history,
        rounds=ROUNDS,
        period=PERIOD,
        stale_after=STALE,
        min_agents=MIN_AGENTS,
        backoff_base=BACKOFF_BASE,
        backoff_cap=BACKOFF_CAP,
    )
    assert d.verdict == "healthy" and d.detection == Detection("db1", 0)


# --------------------------------------------------------------------------- registry

BASE = """\
[services.shop]
[[services.shop.datasources]]
name = "db1"
host = "127.0.0.1"
port = 3306
role = "master"
"""


def load(tmp_path: Path, table: str) -> AutofailoverSettings:
    path = tmp_path / "sqlrouter.toml"
    path.write_text(BASE + table, encoding="utf-8")
    return load_registry_file(path).lookup("shop").autofailover


def test_automatic_failover_is_off_by_default(tmp_path: Path) -> None:
    assert load(tmp_path, "") == AutofailoverSettings()
    assert AutofailoverSettings().enabled is False


def test_the_autofailover_table_is_read(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        "[services.shop.autofailover]\nenabled = true\netcd = ['127.0.0.1:2379', 'etcd2:2379']\n"
        "rounds = 5\ninterval = 0.25\nperiod = 600\nlease_ttl = 3\nmin_agents = 5\n"
        "backoff_base = 2.5\nbackoff_cap = 60\n",
    )
    assert settings == AutofailoverSettings(
        enabled=True,
        etcd=("127.0.0.1:2379", "etcd2:2379"),
        rounds=5,
        interval=0.25,
        period=600.0,
        lease_ttl=3,
        min_agents=5,
        backoff_base=2.5,
        backoff_cap=60.0,
    )
    assert (AutofailoverSettings().backoff_base, AutofailoverSettings().backoff_cap) == (10, 300)
    # one of the two given: the other keeps its default
    assert load(tmp_path, "[services.shop.autofailover]\nbackoff_base = 300\n").backoff_cap == 300


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("enabled = 'yes'", "autofailover.enabled: expected true or false, got 'yes'"),
        ("enabled = true", "autofailover.etcd: automatic failover is enabled but no etcd endpoint"),
        ("etcd = '127.0.0.1:2379'", "autofailover.etcd: expected a list of 'host:port' strings"),
        (
            "etcd = ['127.0.0.1']",
            "autofailover.etcd: expected 'host:port' with a port 1-65535, got '127.0.0.1'",
        ),
        ("etcd = ['h:70000']", "got 'h:70000'"),
        ("rounds = 0", "autofailover.rounds: expected an integer 1-100, got 0"),
        ("interval = 0", "autofailover.interval: expected a number of seconds 0.05-3600, got 0"),
        ("period = -1", "autofailover.period: expected a number of seconds 0-31536000, got -1"),
        ("lease_ttl = 1", "autofailover.lease_ttl: expected an integer 2-3600, got 1"),
        ("min_agents = 0", "autofailover.min_agents: expected an integer 1-99, got 0"),
        (
            "backoff_base = 0",
            "autofailover.backoff_base: expected a number of seconds 1-86400, got 0",
        ),
        (  # a failover that keeps failing is tried again no faster than every second
            "backoff_base = 0.1\nbackoff_cap = 0.1",
            "autofailover.backoff_base: expected a number of seconds 1-86400, got 0.1",
        ),
        (
            "backoff_cap = -5",
            "autofailover.backoff_cap: expected a number of seconds 1-86400, got -5",
        ),
        (
            "backoff_cap = 'forever'",
            "autofailover.backoff_cap: expected a number of seconds 1-86400, got 'forever'",
        ),
        (
            "backoff_cap = nan",
            "autofailover.backoff_cap: expected a number of seconds 1-86400, got nan",
        ),
        (
            "backoff_base = 60\nbackoff_cap = 30",
            "autofailover.backoff_base: expected a number of seconds at most backoff_cap = 30, "
            "got 60",
        ),
        (
            "backoff_cap = 5",
            "autofailover.backoff_base: expected a number of seconds at most backoff_cap = 5, "
            "got 10 (the default)",
        ),
        (
            "backoff_base = 500",
            "autofailover.backoff_base: expected a number of seconds at most backoff_cap = "
            "300 (the default), got 500",
        ),
        (  # shown as written: rounded (:g), both read 12345.7
            "backoff_base = 12345.68\nbackoff_cap = 12345.67",
            "autofailover.backoff_base: expected a number of seconds at most backoff_cap = "
            "12345.67, got 12345.68",
        ),
        ("enable = true", "autofailover"),
    ],
)
def test_autofailover_settings_are_validated(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(RegistryError) as info:
        load(tmp_path, f"[services.shop.autofailover]\n{table}\n")
    assert message in str(info.value)
    assert "service 'shop'" in str(info.value)


# --------------------------------------------------------------------------- the master

SVC = Service(
    "shop",
    (
        DataSource("db1", "10.0.0.1", 3306),
        DataSource("db2", "10.0.0.2", 3306),
        DataSource("db3", "10.0.0.3", 3306),
    ),
)


def replica(name: str, sid: int, source: tuple[str, int], master_sid: int | None) -> ServerView:
    return ServerView(name, True, True, source, True, "", sid, master_sid)


def test_the_agents_master_is_the_routers_master() -> None:
    """The router's rule, not a copy: a replica named by Master_Server_Id (its
    Master_Host an alias) counts; a read-only or replicating server is not a master."""
    alias = ("db1.internal", 3306)
    views = {
        "db1": ServerView("db1", True, False, server_id=1),
        "db2": replica("db2", 2, alias, 1),
        "db3": replica("db3", 3, ("10.0.0.1", 3306), 1),
    }
    assert resolve_master(SVC, views) == "db1"
    health = {n: v.health() for n, v in views.items()}
    assert router_master(SVC.datasources, health).master == SVC.datasources[0]
    read_only = {**views, "db1": ServerView("db1", True, True, server_id=1)}
    assert resolve_master(SVC, read_only) is None
    # db1 writable but itself a replica of db2 (a loop in the making): no master
    looping = dict(views)
    looping["db1"] = ServerView("db1", True, False, ("10.0.0.2", 3306), True, "", 1, 2)
    assert resolve_master(SVC, looping) is None


def test_a_dead_master_is_the_one_the_replicas_chains_end_at() -> None:
    dead = ServerView("db1", False, detail="(2003) Can't connect")
    lost = ("10.0.0.1", 3306)
    views = {"db1": dead, "db2": replica("db2", 2, lost, 1), "db3": replica("db3", 3, lost, 1)}
    assert resolve_master(SVC, views) == "db1"
    # a writable server besides: not a dead master, an ambiguity
    writable = {**views, "db3": ServerView("db3", True, False, server_id=3)}
    assert resolve_master(SVC, writable) is None
    # a chain db3 -> db2 -> db1 still ends at db1
    chain = {**views, "db3": replica("db3", 3, ("10.0.0.2", 3306), 2)}
    assert resolve_master(SVC, chain) == "db1"
    # a replica of a server that is not of the service: no master
    split = {**views, "db3": replica("db3", 3, ("10.0.0.9", 3306), 9)}
    assert resolve_master(SVC, split) is None


def test_an_agents_status_line_says_when_the_next_attempt_may_run() -> None:
    part = {
        "agent": "a0",
        "leader": True,
        "term": 9,
        "decision": {"verdict": "backoff", "master": "db1", "reason": "db1 is dead, but ..."},
        "retry": {"failures": 2, "at": 1_796_000_000.0, "next_at": 1_796_000_020.0},
    }
    assert describe_autofailover(part) == (
        "automatic failover: agent a0, leader (term 9), backoff (db1): db1 is dead, but ...; "
        "2 failed failover(s) in a row, next attempt not before 2026-11-30 00:53:40 UTC"
    )


@pytest.mark.parametrize("other", ["monitor", "replication"])
def test_the_automations_admin_account_is_its_own(tmp_path: Path, other: str) -> None:
    """A new leader ends every other session of the admin account: with the monitor's
    or replication's account as admin, it would end the fleet's probes or the
    replicas' links.  Refused, saying why; the same account without automation is
    accepted."""
    accounts = (
        f"[services.shop.admin]\nuser = 'ops'\npassword = 'adm-secret-1'\n"
        f"[services.shop.{other}]\nuser = 'ops'\npassword = 'oth-secret-2'\n"
    )
    enabled = "[services.shop.autofailover]\nenabled = true\netcd = ['127.0.0.1:2379']\n"
    with pytest.raises(RegistryError) as info:
        load(tmp_path, accounts + enabled)
    assert f"user 'ops' is also the {other} account" in str(info.value)
    assert "secret" not in str(info.value)
    assert load(tmp_path, accounts) == AutofailoverSettings()


@pytest.mark.parametrize(
    ("reason", "transient", "blocks"),
    [
        ("the master db1 is alive: it answers (writable); use switchover", True, False),
        ("db2 is writable: the service has a master, there is nothing to fail over", True, False),
        # The check could not be made (its connection failed, or the leader's guard said
        # no while etcd did not answer): tried again after the backoff, not blocked.
        (
            "the master db1 was not checked: not connected to db1: the store cannot confirm",
            True,
            False,
        ),
        ("db2 has diverged from db1: its GTIDs 0-2-5 are not on db1", False, True),
        # What the refusal says does not decide: a reason about the cluster that happens
        # to read like one of the moment still blocks.
        ("db3 is writable and is alive: two masters", False, True),
    ],
)
def test_a_refusal_blocks_automation_only_when_it_is_about_the_cluster(
    reason: str, transient: bool, blocks: bool
) -> None:
    error = TopologyError(1, reason, reason=reason, refused=True, transient=transient)
    assert _blocks(error) is blocks
