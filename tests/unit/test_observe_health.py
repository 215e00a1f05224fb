"""The health endpoint's answers (observe.health.respond, pure) and its address rule."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqlrouter.observe.agentcheck import AgentCheckServer, agent_reply
from sqlrouter.observe.health import HealthServer, parse_address, respond
from sqlrouter.routing.health import Snapshot

from .test_router import SECRET, cluster, down, healthy, master, replica


def ask(path: str, *snaps: Snapshot, method: str = "GET", now: float = 0.0) -> tuple[int, str]:
    request = f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    response, _ = respond(request, snaps or (healthy(),), now=now)
    text = response.body.decode()
    assert SECRET not in text
    return response.status, text


def test_a_replica_within_max_lag_is_up() -> None:
    assert ask("/health/sandbox/db2") == (200, "up: db2 replica, lag 0.120s <= 1s\n")
    assert ask("/health/sandbox/db3?role=replica&max_lag=0.5")[0] == 200


def test_a_lagging_replica_is_down_with_one_line_saying_why() -> None:
    snap = cluster(master("db1"), replica("db2", 3.25), replica("db3", 0.3))
    assert ask("/health/sandbox/db2?max_lag=1", snap) == (503, "down: db2 lag 3.25s > 1.0s\n")
    assert ask("/health/sandbox/db2?max_lag=5", snap)[0] == 200


def test_the_master_role() -> None:
    assert ask("/health/sandbox/db1?role=master") == (200, "up: db1 is the master\n")
    assert ask("/health/sandbox/db2?role=master") == (503, "down: db2 read_only=1\n")
    assert ask("/health/sandbox/db1") == (503, "down: db1 writable master\n")


def test_an_unreachable_server_and_a_stale_snapshot_are_down() -> None:
    snap = cluster(master("db1"), down("db2"), replica("db3"))
    assert ask("/health/sandbox/db2", snap) == (503, "down: db2 unreachable (connection refused)\n")
    old = replace(healthy(), taken_at=10.0, generation=3)
    status, text = ask("/health/sandbox/db2", old, now=60.0)
    assert status == 503
    assert text == "down: db2 the monitor's last observation is 50.0s old (trusted for 2.5s)\n"


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/health/shop/db2", 404, "service 'shop' is not watched here (watched: sandbox)"),
        ("/health/sandbox/db9", 404, "'db9' is not a datasource of service 'sandbox'"),
        ("/health/sandbox", 404, "not found"),
        ("/etc/passwd", 404, "not found"),
        ("/health/sandbox/db2?role=writer", 400, "role='writer': expected replica or master"),
        ("/health/sandbox/db2?max_lag=-1", 400, "max_lag='-1': expected a number of seconds"),
        ("/health/sandbox/db2?max_lag=nan", 400, "max_lag='nan'"),
        ("/health/sandbox/db2?lag=1", 400, "unknown parameter 'lag'"),
        ("/health/sandbox/db2?role=replica&role=master", 400, "role given twice"),
        ("/health/sandbox/db2?garbage", 400, "bad query string"),
        ("/metrics", 404, "no metrics here"),
    ],
)
def test_bad_requests_say_what_is_accepted(path: str, status: int, says: str) -> None:
    got, text = ask(path)
    assert got == status and says in text, text


def test_other_methods_and_garbage() -> None:
    assert ask("/health/sandbox/db2", method="POST")[0] == 405
    for junk in (
        b"",
        b"\x00\xff\xfe",
        b"GET\r\n\r\n",
        b"GET / SMTP/1.0\r\n\r\n",
        b"GET x HTTP/1.1",
    ):
        response, _ = respond(junk, [healthy()], now=0.0)
        assert response.status == 400, junk


def test_head_answers_the_status_without_a_body() -> None:
    response, head = respond(b"HEAD /health/sandbox/db2 HTTP/1.0\r\n\r\n", [healthy()], now=0.0)
    assert head and response.status == 200
    raw = response.encode(head=True)
    assert raw.startswith(b"HTTP/1.0 200 OK\r\n") and raw.endswith(b"\r\n\r\n")


def test_status_is_json_without_secrets() -> None:
    status, text = ask("/status")
    assert status == 200
    (svc,) = json.loads(text)["services"]
    assert svc["service"] == "sandbox" and svc["master"] == "db1"
    assert [d["name"] for d in svc["datasources"]] == ["db1", "db2", "db3"]


@given(st.binary(max_size=300))
def test_property_any_bytes_get_an_answer(data: bytes) -> None:
    response, _ = respond(data, [healthy()], now=0.0)
    assert response.status in {200, 400, 404, 405, 503}
    assert response.body.endswith(b"\n")


def test_addresses_are_loopback_unless_allowed() -> None:
    assert parse_address("127.0.0.1:9200") == ("127.0.0.1", 9200)
    assert parse_address("9200") == ("127.0.0.1", 9200)
    assert parse_address("localhost:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:9200") == ("::1", 9200)
    with pytest.raises(ValueError, match="not a loopback address"):
        parse_address("0.0.0.0:9200")
    anywhere = "0.0.0.0"  # noqa: S104 - what allow_remote permits
    assert parse_address(f"{anywhere}:9200", allow_remote=True) == (anywhere, 9200)
    for bad in ("db.example:9200", "127.0.0.1:99999", "127.0.0.1:x", "x"):
        with pytest.raises(ValueError, match="expected PORT or 'HOST:PORT'"):
            parse_address(bad)
    with pytest.raises(ValueError, match="not a loopback address"):
        HealthServer("10.1.2.3:9200")


def test_agent_check_answers_up_or_down_with_the_reason() -> None:
    snap = cluster(master("db1"), replica("db2", 3.25), replica("db3", 0.3))
    assert agent_reply(b"sandbox db3\n", [snap], now=0.0) == b"up\n"
    assert agent_reply(b"sandbox db3 replica 0.5\n", [snap], now=0.0) == b"up\n"
    assert agent_reply(b"sandbox db2 replica 1\n", [snap], now=0.0) == (
        b"down #db2 lag 3.25s > 1.0s\n"
    )
    assert agent_reply(b"sandbox db1 master\n", [snap], now=0.0) == b"up\n"
    assert agent_reply(b"sandbox db9\n", [snap], now=0.0).startswith(
        b"down #'db9' is not a datasource of service 'sandbox'"
    )
    for bad in (b"\n", b"sandbox\n", b"a b c d e\n", b"\xff\xfe db2\n"):
        assert agent_reply(bad, [snap], now=0.0) == (
            b"down #bad request: expected 'SERVICE DATASOURCE [replica|master] [MAX_LAG]'\n"
        )
    assert agent_reply(b"sandbox db2 writer\n", [snap], now=0.0).startswith(b"down #role=")


@given(st.binary(max_size=200))
def test_property_any_line_gets_one_line(data: bytes) -> None:
    reply = agent_reply(data, [healthy()], now=0.0)
    assert reply in (b"up\n",) or reply.startswith(b"down #")
    assert reply.count(b"\n") == 1 and reply.endswith(b"\n")


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_the_listeners_accept_queue_is_the_systems_maximum() -> None:
    """HAProxy checks every server at once: a backlog of 5 (socketserver's default)
    timed out 22 of 300 parallel checks.  ss shows a listening socket's backlog as
    its Send-Q."""
    with HealthServer("127.0.0.1:0") as server, AgentCheckServer("127.0.0.1:0") as agent:
        for address in (server.address, agent.address):
            out = subprocess.run(
                ["ss", "-ltnH", f"sport = :{address[1]}"],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.split()
            assert int(out[2]) == min(socket.SOMAXCONN, _somaxconn()), out


def _somaxconn() -> int:
    """The kernel caps listen()'s backlog at net.core.somaxconn."""
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


def test_a_forked_child_neither_keeps_the_port_nor_hangs_in_stop() -> None:
    """A forked worker kept the listening socket (the port stayed taken after the
    parent stopped: EADDRINUSE on a restart) and its stop() hung for ever."""
    server = HealthServer("127.0.0.1:0", snapshots=list).start()
    port = server.address[1]
    stopped_r, stopped_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            server.stop()
            os.write(stopped_w, b"stopped")
            os.read(done_r, 1)  # alive while the parent binds the port again
        finally:
            os._exit(0)
    try:
        ready, _, _ = select.select([stopped_r], [], [], 60)  # a bound, not a measure
        assert ready and os.read(stopped_r, 100) == b"stopped", "stop() hung in the child"
        server.stop()
        with HealthServer(f"127.0.0.1:{port}", snapshots=list) as again:
            assert again.address[1] == port
    finally:
        os.write(done_w, b"x")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for fd in (stopped_r, stopped_w, done_r, done_w):
            os.close(fd)


def _agent_exchange(agent: AgentCheckServer, data: bytes) -> bytes:
    with socket.create_connection(agent.address, timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_agent_check_over_a_socket_oversized_slow_and_unknown() -> None:
    """HAProxy reads the one line it gets: an oversized or unfinished request is
    answered 'down #...' with the reason (the space after down matters to HAProxy)."""
    with AgentCheckServer("127.0.0.1:0", snapshots=list, timeout=0.5) as agent:
        assert _agent_exchange(agent, b"x" * 2000) == b"down #request over 512 bytes\n"
        # No newline: the deadline passes (a bound of 0.5 s, not a measured time).
        assert _agent_exchange(agent, b"sandbox db2") == b"down #request not received in time\n"
        answer = _agent_exchange(agent, b"sandbox db2 replica\n")
        assert answer.startswith(b"down #") and answer.endswith(b"\n") and b"sandbox" in answer


def test_every_answer_says_nosniff() -> None:
    for path in ("/health/sandbox/db2", "/nowhere", "/status"):
        response, _ = respond(f"GET {path} HTTP/1.0\r\n\r\n".encode(), (healthy(),), now=0.0)
        assert b"\r\nX-Content-Type-Options: nosniff\r\n" in response.encode(), path
