"""The pure parts of the HAProxy benchmark: its configuration, its health-check agent's
verdicts, ``show stat`` parsing, and the p99 interval.  No timing, no server here: the
benchmark itself (``./scripts/bench``) is never part of the test suite.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmarks._common import SideResult
from benchmarks._haproxy import (
    READER,
    WRITER,
    CheckAgent,
    NodeState,
    Server,
    agent_answer,
    is_up,
    parse_stat,
    render_config,
)
from benchmarks.bench_haproxy import Check, p99_ratio_ci

M = Server("db1", "127.0.0.1", 3301)
R1 = Server("db2", "127.0.0.1", 3302)
R2 = Server("db3", "127.0.0.1", 3303)


def config(**overrides: object) -> str:
    args: dict[str, object] = {
        "writers": [M, R1, R2],
        "readers": [R1, R2],
        "backups": [M],
        "writer_port": 6001,
        "reader_port": 6002,
        "agent_port": 6003,
        "stats_socket": Path("/run/bench/haproxy.sock"),
    }
    args.update(overrides)
    return render_config(**args)  # type: ignore[arg-type]


# --- configuration -----------------------------------------------------------------------


def test_config_has_two_loopback_frontends_and_checked_servers() -> None:
    text = config()
    assert "bind 127.0.0.1:6001" in text
    assert "bind 127.0.0.1:6002" in text
    assert "mode tcp" in text
    assert "stats socket /run/bench/haproxy.sock mode 600 level admin" in text
    lines = text.splitlines()
    servers = [line.strip() for line in lines if line.strip().startswith("server ")]
    assert len(servers) == 6  # 3 writers, 2 readers, 1 backup
    for line in servers:
        assert "check inter 500ms rise 1 fall 1" in line
        assert "agent-check agent-addr 127.0.0.1 agent-port 6003 agent-inter 500ms" in line
    assert "server db2 127.0.0.1:3302 check" in text
    assert 'agent-send "db2 reader\\n"' in text
    assert 'agent-send "db2 writer\\n"' in text
    backup = [line for line in servers if " backup " in line]
    assert backup == [
        "server db1_master 127.0.0.1:3301 backup check inter 500ms rise 1 fall 1 "
        "agent-check agent-addr 127.0.0.1 agent-port 6003 agent-inter 500ms "
        'agent-send "db1 writer\\n"'
    ]


def test_config_check_interval() -> None:
    assert "inter 250ms" in config(check_interval=0.25)
    assert "agent-inter 2000ms" in config(check_interval=2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"readers": []}, "at least one writer and one reader"),
        ({"writers": []}, "at least one writer and one reader"),
        ({"check_interval": 0}, "check_interval=0: expected seconds > 0"),
        ({"reader_port": 0}, "reader_port=0: expected a port between 1 and 65535"),
        ({"agent_port": 70000}, "agent_port=70000"),
    ],
)
def test_config_rejects_bad_input(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(**overrides)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("db 1", "127.0.0.1", 1), "expected letters, digits"),
        (("db1", "10.0.0.1", 1), "is not a loopback address"),
        (("db1", "127.0.0.1", 0), "port 0 is not between 1 and 65535"),
    ],
)
def test_server_rejects_bad_input(args: tuple[str, str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Server(*args)


# --- the agent's verdicts ----------------------------------------------------------------

HEALTHY_REPLICA = NodeState(
    reachable=True,
    read_only=True,
    replica=True,
    io_running="Yes",
    sql_running="Yes",
    seconds_behind_master=0,
)


def test_writer_is_up_only_when_writable() -> None:
    assert agent_answer(WRITER, NodeState(reachable=True, read_only=False), 1.0) == "up"
    assert agent_answer(WRITER, HEALTHY_REPLICA, 1.0) == "down #read_only=1"
    assert agent_answer(WRITER, NodeState(reachable=False, error="refused"), 1.0) == (
        "down #unreachable: refused"
    )


def test_reader_up_within_max_lag() -> None:
    assert agent_answer(READER, HEALTHY_REPLICA, 1.0) == "up"
    at_limit = dataclasses.replace(HEALTHY_REPLICA, seconds_behind_master=1)
    assert agent_answer(READER, at_limit, 1.0) == "up"


@pytest.mark.parametrize(
    ("changes", "answer"),
    [
        ({"seconds_behind_master": 2}, "down #Seconds_Behind_Master=2 > 1"),
        ({"seconds_behind_master": None}, "down #Seconds_Behind_Master is NULL"),
        ({"io_running": "No"}, "down #threads io=No sql=Yes"),
        ({"sql_running": "No"}, "down #threads io=Yes sql=No"),
        ({"read_only": False}, "down #writable: not a replica"),
        ({"replica": False}, "down #not replicating"),
        ({"reachable": False, "error": None}, "down #unreachable: no answer"),
    ],
)
def test_reader_down(changes: dict[str, object], answer: str) -> None:
    state = dataclasses.replace(HEALTHY_REPLICA, **changes)  # type: ignore[arg-type]
    assert agent_answer(READER, state, 1.0) == answer


def test_agent_answer_rejects_an_unknown_role() -> None:
    with pytest.raises(ValueError, match="role 'backup': expected one of writer, reader"):
        agent_answer("backup", HEALTHY_REPLICA, 1.0)


def test_agent_refuses_bad_requests_without_asking_a_server() -> None:
    def no_server(**kwargs: object) -> object:
        raise AssertionError("the agent must not connect for a bad request")

    agent = CheckAgent([R1], user="u", password="secret", max_lag=1.0, connect=no_server)
    assert agent.answer("db9 reader") == "down #unknown server 'db9'"
    assert agent.answer("db2 master").startswith("down #bad request 'db2 master'")
    assert agent.answer("").startswith("down #bad request ''")
    assert "secret" not in repr(agent)


# --- show stat ---------------------------------------------------------------------------

STAT = (
    "# pxname,svname,qcur,status,weight\n"
    "writer,FRONTEND,,OPEN,\n"
    "writer_be,db1,0,UP,1\n"
    "writer_be,db2,0,DOWN (agent),1\n"
    "writer_be,BACKEND,0,UP,1\n"
    "reader_be,db2,0,UP 1/2,1\n"
    "reader_be,db1_master,0,MAINT,1\n"
)


def test_parse_stat_keeps_server_rows() -> None:
    assert parse_stat(STAT) == {
        ("writer_be", "db1"): "UP",
        ("writer_be", "db2"): "DOWN (agent)",
        ("reader_be", "db2"): "UP 1/2",
        ("reader_be", "db1_master"): "MAINT",
    }


def test_parse_stat_rejects_other_text() -> None:
    with pytest.raises(ValueError, match="not HAProxy 'show stat' output"):
        parse_stat("Unknown command\n")


@pytest.mark.parametrize(
    ("status", "up"),
    [("UP", True), ("UP 1/2", True), ("DOWN", False), ("DOWN (agent)", False), ("MAINT", False)],
)
def test_is_up(status: str, up: bool) -> None:
    assert is_up(status) is up


# --- results -----------------------------------------------------------------------------


def side(blocks: list[list[int]]) -> SideResult:
    res = SideResult("s")
    for b in blocks:
        res.blocks.append(b)
        res.samples.extend(b)
    return res


def test_p99_interval_of_identical_sides_is_one() -> None:
    blocks = [[i * 10 + j for j in range(10)] for i in range(20)]
    assert p99_ratio_ci(side(blocks), side(blocks)) == (1.0, 1.0)


def test_p99_interval_is_reproducible_and_brackets_a_shift() -> None:
    base = [[100 + i + j for j in range(20)] for i in range(30)]
    slower = [[2 * v for v in b] for b in base]
    low, high = p99_ratio_ci(side(base), side(slower), resamples=50, seed=3)
    assert (low, high) == p99_ratio_ci(side(base), side(slower), resamples=50, seed=3)
    assert low == pytest.approx(2.0)
    assert high == pytest.approx(2.0)


def test_p99_interval_needs_blocks() -> None:
    with pytest.raises(ValueError, match="no blocks"):
        p99_ratio_ci(side([]), side([]))


def test_check_verdicts() -> None:
    assert Check("a", 1.01, 1.02, "<=").met
    assert not Check("a", 1.03, 1.02, "<=").met
    assert Check("t", 0.98, 0.97, ">=").met
    assert not Check("t", 0.96, 0.97, ">=").met
    assert Check("a", 1.0, 1.02, "<=").to_json()["met"] is True
