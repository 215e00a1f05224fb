"""The pure parts of sqlrouter.switchover: GTID histories, the failover choice, values."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pymysql
import pytest

import sqlrouter
from sqlrouter.gtid import parse_gtid_list
from sqlrouter.registry import load_registry_file, write_registry_file
from sqlrouter.switchover import (
    ER_TOPOLOGY,
    Candidate,
    Plan,
    Step,
    TopologyError,
    choose_candidate,
    failover,
    plan_failover,
    plan_switchover,
    switchover,
)
from sqlrouter.switchover._history import _history, _missing, _tail
from sqlrouter.switchover._servers import _change_master
from sqlrouter.switchover._steps import _report_plan_notes, _Run
from sqlrouter.topology import Credentials, DataSource, Role, Service

SECRET = "s3cr:et@/%pw"


def service(**changes: Any) -> Service:
    base = Service(
        name="shop",
        datasources=(
            DataSource("db1", "127.0.0.1", 1, Role.MASTER),
            DataSource("db2", "127.0.0.1", 2),
        ),
        admin_credentials=Credentials("admin", SECRET),
    )
    return dataclasses.replace(base, **changes)


def candidate(
    name: str,
    history: str,
    tail: str | None = None,
    *,
    pending: str = "",
    eligible: bool = True,
) -> Candidate:
    return Candidate(
        name,
        _history(history),
        _tail(tail if tail is not None else history),
        tuple(parse_gtid_list(pending)),
        eligible,
        "" if eligible else "delayed replica",
    )


# --------------------------------------------------------------------------- GTIDs


def testparse_gtid_list() -> None:
    assert parse_gtid_list("") == [] and parse_gtid_list(None) == []
    assert parse_gtid_list("0-1-5, 1-2-9") == [(0, 1, 5), (1, 2, 9)]
    with pytest.raises(ValueError, match="'0-1' is not a GTID"):
        parse_gtid_list("0-1")


def test_history_keeps_the_highest_sequence_per_server_and_domain() -> None:
    assert _history("0-1-5,0-2-9", "0-1-7") == {(0, 1): 7, (0, 2): 9}


def test_tail_is_the_last_gtid_of_each_domain() -> None:
    assert _tail("0-1-5,0-2-9,1-1-3") == {0: (0, 2, 9), 1: (1, 1, 3)}
    assert _tail("0-2-9", "0-1-9") == {0: (0, 2, 9)}  # a tie keeps the higher server id


def test_missing_checks_server_and_sequence() -> None:
    hist = _history("0-1-10,0-2-4")
    assert _missing(hist, [(0, 1, 10), (0, 2, 3)]) == []
    assert _missing(hist, [(0, 1, 11)]) == [(0, 1, 11)]
    # Same sequence number, another server: a transaction this history never had.
    assert _missing(hist, [(0, 3, 10)]) == [(0, 3, 10)]


# --------------------------------------------------------------------------- choice


def test_choose_the_replica_that_has_everything() -> None:
    choice = choose_candidate(
        [candidate("db2", "0-1-10"), candidate("db3", "0-1-12")], old_master_id=1
    )
    assert (choice.chosen, choice.covers_all, dict(choice.diverged)) == ("db3", True, {})
    assert choice.reason == "db3 has every transaction of db2"


def test_ties_go_to_the_first_replica() -> None:
    choice = choose_candidate(
        [candidate("db2", "0-1-10"), candidate("db3", "0-1-10")], old_master_id=1
    )
    assert choice.chosen == "db2" and choice.covers_all


def test_received_transactions_count_once_applied() -> None:
    behind_but_received = candidate("db2", "0-1-8", pending="0-1-12")
    choice = choose_candidate([behind_but_received, candidate("db3", "0-1-10")], 1)
    assert choice.chosen == "db2" and choice.covers_all


def test_a_replica_that_cannot_apply_still_constrains_the_choice() -> None:
    delayed = candidate("db3", "0-1-5", tail="0-1-12", eligible=False)
    choice = choose_candidate([candidate("db2", "0-1-10"), delayed], 1)
    assert choice.chosen == "db2" and not choice.covers_all
    assert dict(choice.diverged) == {"db3": ((0, 1, 12),)}
    choice = choose_candidate([candidate("db2", "0-1-12"), delayed], 1)
    assert choice.chosen == "db2" and choice.covers_all


def test_diverged_histories_are_reported_both_ways() -> None:
    # db2 missed 0-1-14 and took a direct write 0-2-14; db3 has 0-1-14.
    db2 = candidate("db2", "0-1-13,0-2-14")
    db3 = candidate("db3", "0-1-14")
    choice = choose_candidate([db2, db3], old_master_id=1)
    assert not choice.covers_all
    # Forced, the replica with more of the old master's transactions wins.
    assert choice.chosen == "db3"
    assert dict(choice.diverged) == {"db2": ((0, 2, 14),)}
    assert "db3 lacks 0-2-14 (on db2)" in choice.reason
    assert "db2 lacks 0-1-14 (on db3)" in choice.reason


def test_errant_transactions_behind_the_tail_are_not_divergence() -> None:
    # db3 once took a direct write (0-3-5), then replicated past it: MariaDB resumes
    # from the last GTID only, so does the choice.
    choice = choose_candidate(
        [candidate("db2", "0-1-10"), candidate("db3", "0-1-10,0-3-5", tail="0-1-10")], 1
    )
    assert choice.covers_all


def test_no_eligible_replica() -> None:
    choice = choose_candidate([candidate("db2", "0-1-10", eligible=False)], 1)
    assert choice.chosen is None and "no replica can be promoted" in choice.reason
    assert "db2: delayed replica" in choice.reason


# --------------------------------------------------------------------------- values


def test_topology_error_keeps_the_pep249_shape() -> None:
    step = Step("read-only db1", False, "db1: (2013) Lost connection", 0.5)
    err = TopologyError(
        ER_TOPOLOGY,
        "service 'shop': ...",
        service="shop",
        server="db1",
        step="read-only db1",
        reason="(2013) Lost connection",
        state="nothing was changed",
        steps=[step],
    )
    assert err.args == (ER_TOPOLOGY, "service 'shop': ...")
    assert isinstance(err, sqlrouter.OperationalError)
    assert isinstance(err, pymysql.err.OperationalError)
    assert err.steps == (step,) and err.state == "nothing was changed"


def test_plan_and_step_render_for_people() -> None:
    plan = Plan(
        service="shop",
        kind="switchover",
        old_master="db1",
        new_master="db2",
        steps=("read-only db1: SET GLOBAL read_only=1", "verify: ..."),
        warnings=("db3 is unreachable",),
        repointed=("db1",),
        left_out=("db3: unreachable",),
        positions=(("db1", "0-1-5"), ("db2", "")),
    )
    text = str(plan)
    assert text.splitlines()[0] == (
        "switchover of service 'shop': db1 -> db2; repoint db1; 1 left out; 1 warning(s)"
    )
    assert "positions: db1 0-1-5, db2 (empty)" in text
    assert "  1. read-only db1: SET GLOBAL read_only=1" in text
    assert "  left out: db3: unreachable" in text and "  warning: db3 is unreachable" in text
    assert str(Step("verify", True, "fine", 0.25)) == "[ok] verify (0.250s): fine"
    assert str(Step("verify", False, "bad", 1)) == "[FAILED] verify (1.000s): bad"
    # Warnings, servers left out and waits are not steps: never "[ok] warning".
    assert str(Step("warning", True, "db1 must not come back", 0, "warning")) == (
        "WARNING: db1 must not come back"
    )
    assert str(Step("left out", True, "db3: unreachable", 0, "left out")) == (
        "LEFT OUT: db3: unreachable"
    )
    assert str(Step("plan", True, "inspecting db1, db2", 0, "wait")) == "... inspecting db1, db2"


def test_every_run_reports_what_is_left_out_and_the_warnings() -> None:
    """The plan's left-out servers and warnings are reported before anything changes,
    in a real run as in a dry run (``_report_plan_notes`` runs for both)."""
    plan = Plan(
        service="shop",
        kind="failover",
        old_master="db1",
        new_master="db2",
        steps=("choose: db2",),
        warnings=("db1 must not come back as it was",),
        left_out=("db3: unreachable; ... CHANGE MASTER TO MASTER_HOST='h', MASTER_PORT=1",),
    )
    seen: list[Step] = []
    _report_plan_notes(_Run(service(), "failover", seen.append, []), plan)
    assert [(s.kind, s.detail) for s in seen] == [
        ("left out", plan.left_out[0]),
        ("warning", plan.warnings[0]),
    ]


def test_change_master_keeps_the_password_out_of_the_sql() -> None:
    ds = DataSource("db2", "127.0.0.1", 3307)
    sql, args = _change_master(ds, credentials=Credentials("repl", SECRET), demote=True)
    assert SECRET not in sql and SECRET in args
    assert sql.endswith("MASTER_USE_GTID=slave_pos, MASTER_DEMOTE_TO_SLAVE=1")
    sql, args = _change_master(ds, credentials=None)
    assert "MASTER_USER" not in sql and args == ["127.0.0.1", 3307]


def test_messages_are_scrubbed_of_passwords() -> None:
    run = _Run(service(), "switchover", None, [SECRET])
    assert run.scrub(f"near '{SECRET}' at line 1") == "near '***' at line 1"
    seen: list[Step] = []
    run = _Run(service(), "switchover", seen.append, [SECRET])
    run.add(Step("x", True, f"pw {SECRET}", 0.0))
    assert seen[0].detail == "pw ***" and run.steps == seen


def test_a_failing_reporter_does_not_stop_the_operation() -> None:
    def boom(step: Step) -> None:
        raise RuntimeError("printer on fire")

    run = _Run(service(), "switchover", boom, [])
    run.add(Step("x", True, "fine", 0.0))
    assert len(run.steps) == 1


# --------------------------------------------------------------------------- refusals without I/O


def test_no_admin_credentials_is_refused_before_any_connection() -> None:
    svc = service(admin_credentials=None)
    for call in (
        lambda: plan_switchover(svc, "db2"),
        lambda: switchover(svc, "db2"),
        lambda: plan_failover(svc),
        lambda: failover(svc),
    ):
        with pytest.raises(TopologyError) as info:
            call()
        message = str(info.value)
        assert "no administrative credentials" in message and "[services.shop.admin]" in message
        assert "nothing was changed" in message and info.value.step == "plan"


def test_unknown_candidate_is_refused_before_any_connection() -> None:
    with pytest.raises(TopologyError) as info:
        plan_switchover(service(), "db9")
    assert "no datasource 'db9' (datasources: db1, db2)" in str(info.value)
    assert info.value.server == "db9" and info.value.service == "shop"


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_timeout_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        switchover(service(), "db2", timeout=bad)


def test_timeout_type_and_max_lag() -> None:
    with pytest.raises(TypeError, match="timeout must be a number"):
        failover(service(), timeout="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_lag must be a number of seconds >= 0"):
        plan_switchover(service(), "db2", max_lag=-1)


# --------------------------------------------------------------------------- registry


def test_replication_credentials_round_trip_through_the_registry(tmp_path: Path) -> None:
    svc = service(replication_credentials=Credentials("repl", SECRET))
    path = write_registry_file(tmp_path / "sqlrouter.toml", [svc])
    text = path.read_text(encoding="utf-8")
    assert "[services.shop.replication]" in text
    loaded = load_registry_file(path).lookup("shop")
    assert loaded.replication_credentials == Credentials("repl", SECRET)
    assert SECRET not in repr(loaded)


def test_replication_table_accepts_a_password_file(tmp_path: Path) -> None:
    (tmp_path / "repl.pw").write_text(SECRET + "\n", encoding="utf-8")
    (tmp_path / "repl.pw").chmod(0o600)
    (tmp_path / "r.toml").write_text(
        '[services.shop.replication]\nuser = "repl"\npassword_file = "repl.pw"\n'
        '[[services.shop.datasources]]\nname = "db1"\nhost = "127.0.0.1"\nport = 3306\n',
        encoding="utf-8",
    )
    loaded = load_registry_file(tmp_path / "r.toml").lookup("shop")
    assert loaded.replication_credentials == Credentials("repl", SECRET)
    assert loaded.admin_credentials is None
