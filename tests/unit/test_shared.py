"""Shared snapshots (sqlrouter.routing.shared) without a server: the file format, the
lease and the election between Share objects given explicit times, and what a corrupt,
foreign or half-written file does (a WARNING and probing, never a crash or a route)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqlrouter import _pid
from sqlrouter.gtid import CausalToken
from sqlrouter.routing import _shareformat, shared
from sqlrouter.routing.health import Health
from sqlrouter.routing.lag import Observation
from sqlrouter.routing.monitor import Monitor
from sqlrouter.routing.shared import (
    LEASE_INTERVALS,
    Published,
    Share,
    ShareError,
    decode,
    encode,
    service_key,
)
from sqlrouter.topology import Credentials, DataSource, Role, Service

SERVICE = Service(
    "shop",
    (
        DataSource("db1", "127.0.0.1", 3306, Role.MASTER),
        DataSource("db2", "127.0.0.1", 3307),
    ),
    monitor_interval=0.5,
)
KEY = service_key(SERVICE)
NOW = 1000.0
#: A follower's regular look comes a tenth of an interval after the last; a publisher
#: that wrote less than that ago was running then, and its pid is not looked up.
LOOK = SERVICE.monitor_interval / 10


def health(at: float = NOW - 0.1) -> dict[str, Health]:
    return {
        "db1": Health("db1", True, at, read_only=False, server_id=1, lag=0.0, lag_source="master"),
        "db2": Health(
            "db2",
            True,
            at,
            read_only=True,
            server_id=2,
            replicating=True,
            master_host="127.0.0.1",
            master_port=3306,
            io_running=True,
            sql_running=True,
            lag=0.25,
            lag_source="heartbeat",
            position=CausalToken.from_gtid_list("0-1-10"),
            gtid_slave_pos="0-1-10",
        ),
    }


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    d = tmp_path / "fleet"
    d.mkdir(mode=0o700)
    return d


def test_a_round_survives_the_file_unchanged() -> None:
    published = Published(os.getpid(), "me", False, NOW, NOW - 0.1, health())
    assert decode(encode(published, KEY), KEY, SERVICE, NOW) == published


def test_the_key_names_what_observations_depend_on_and_no_secret() -> None:
    moved = Service("shop", (DataSource("db1", "127.0.0.1", 4406), *SERVICE.datasources[1:]))
    assert service_key(moved) != KEY
    assert service_key(SERVICE) == KEY
    assert KEY.startswith("shop-")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: d.update(format=99), "format"),
        (lambda d: d.update(pidns=-1), "pidns"),
        (lambda d: d.update(started="1"), "started"),
        (lambda d: d.update(key="other"), "another definition"),
        (lambda d: d.update(boot="another-boot"), "boot"),
        (lambda d: d.update(lease_at=NOW + 60), "in the future"),
        (lambda d: d.update(pid=-1), "not a process id"),
        (lambda d: d.update(pid=1 << 70), "not a process id"),
        (lambda d: d["health"].pop(), "not the datasources"),
        (lambda d: d["health"][0].update(lag="0.1"), "lag"),
        (lambda d: d["health"][0].update(position="garbage"), "position"),
        (lambda d: d["health"][0].update(extra=1), "unknown fields"),
        (lambda d: d["health"][0].update(server_id=True), "server_id is bool"),
        (lambda d: d["health"][0].update(observed_at=False), "observed_at is bool"),
        (lambda d: d["health"][1].update(lag_source=None), "lag_source is NoneType"),
        (lambda d: d["health"][1].pop("error"), "missing or unknown fields"),
        (lambda d: d.update(taken_at=None), "without its observations"),
    ],
)
def test_a_wrong_file_is_refused_saying_why(change: object, why: str) -> None:
    doc = json.loads(encode(Published(1, "x", False, NOW, NOW, health()), KEY))
    change(doc)  # type: ignore[operator]
    with pytest.raises(ShareError, match=why):
        decode(json.dumps(doc).encode(), KEY, SERVICE, NOW)


def test_a_record_whose_fields_come_in_another_order_is_read_alike() -> None:
    doc = json.loads(encode(Published(1, "x", False, NOW, NOW, health()), KEY))
    doc["health"] = [dict(reversed(list(item.items()))) for item in doc["health"]]
    assert decode(json.dumps(doc).encode(), KEY, SERVICE, NOW).health == health()


def _huge_lag(doc: dict[str, Any]) -> None:
    doc["health"][0]["lag"] = -(10**400)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b'{"pid":' + b"1" * 5000 + b"}", "digits"),  # int() refuses over 4300 digits
        (b"[" * 100_000, "recursion"),  # nesting deeper than the interpreter's stack
        (lambda d: d.update(lease_at=-(10**400)), "too large"),  # float() overflows
        (_huge_lag, "too large"),
    ],
)
def test_a_file_that_breaks_the_parser_is_refused(data: object, why: str) -> None:
    if callable(data):
        doc = json.loads(encode(Published(1, "x", False, NOW, NOW, health()), KEY))
        data(doc)
        data = json.dumps(doc).encode()
    assert isinstance(data, bytes)
    with pytest.raises(ShareError, match=why):
        decode(data, KEY, SERVICE, NOW)


def test_a_follower_probes_around_a_file_that_breaks_the_parser(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    a.path.write_bytes(b"[" * 100_000)
    b = Share(directory)
    with caplog.at_level(logging.WARNING, logger="sqlrouter.monitor"):
        assert b.lead(SERVICE, NOW + 0.01) is True  # probes, and replaces the file
    assert "is unusable" in caplog.text
    assert b.role == "publisher"
    b.publish(NOW + 0.01, health(), NOW + 0.02)
    # The old publisher, and anyone, read the replaced file.
    assert a.publish(NOW + 0.02, health(), NOW + 0.03) is False
    assert a.lead(SERVICE, NOW + 0.04) is False
    assert a.take() == (NOW + 0.01, health())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(st.binary(max_size=300))
def test_no_content_crashes_the_reader(data: bytes) -> None:
    with contextlib.suppress(ShareError):
        decode(data, KEY, SERVICE, NOW)


@given(st.sampled_from(["pid", "agent", "lease_at", "taken_at", "health", "h0", "h1"]), JSON)
def test_no_wrong_value_crashes_the_reader(field: str, value: object) -> None:
    doc = json.loads(encode(Published(1, "x", False, NOW, NOW, health()), KEY))
    if field in ("h0", "h1"):
        item = doc["health"][int(field[1])]
        item[sorted(item)[len(str(value)) % len(item)]] = value
    else:
        doc[field] = value
    with contextlib.suppress(ShareError):
        decode(json.dumps(doc).encode(), KEY, SERVICE, NOW)


@given(st.integers(min_value=0, max_value=2000))
def test_any_prefix_of_a_file_is_refused_or_whole(cut: int) -> None:
    data = encode(Published(1, "x", False, NOW, NOW, health()), KEY)
    try:
        decode(data[:cut], KEY, SERVICE, NOW)
    except ShareError:
        assert cut < len(data)
    else:
        assert cut >= len(data)


def test_one_publisher_the_others_follow_its_rounds(directory: Path) -> None:
    a, b = Share(directory), Share(directory)
    assert a.lead(SERVICE, NOW) is True
    assert a.role == "publisher"
    assert b.lead(SERVICE, NOW) is False
    assert b.role == "follower"
    assert b.take() is None  # nothing observed yet
    rows = health()
    assert a.publish(NOW - 0.1, rows, NOW)
    assert b.lead(SERVICE, NOW + 0.05) is False
    assert b.take() == (NOW - 0.1, rows)
    assert b.take() is None  # handed over once
    assert b.describe(NOW)["publisher_pid"] == os.getpid()


def test_a_stalled_publisher_is_replaced_and_steps_down(directory: Path) -> None:
    a, b = Share(directory), Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    lease = LEASE_INTERVALS * SERVICE.monitor_interval
    assert b.lead(SERVICE, NOW + lease * 0.9) is False
    assert b.lead(SERVICE, NOW + lease + 0.01) is True
    assert b.role == "publisher"
    # The old one resumes: its round is not written, it follows.
    assert a.publish(NOW + lease, health(NOW + lease), NOW + lease + 0.02) is False
    assert a.role == "follower"
    assert a.lead(SERVICE, NOW + lease + 0.03) is False


def test_a_publisher_that_stops_hands_over_at_once(directory: Path) -> None:
    a, b = Share(directory), Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    assert b.lead(SERVICE, NOW + 0.01) is False
    a.resign(NOW + 0.02)
    assert b.lead(SERVICE, NOW + 0.03) is True
    # The last round is kept: followers route on it while it is fresh.
    c = Share(directory)
    assert c.lead(SERVICE, NOW + 0.04) is False
    assert c.take() == (NOW, health())


def test_a_dead_publisher_is_replaced_at_once(directory: Path) -> None:
    a = Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    path = a.path
    doc = json.loads(path.read_bytes())
    pid = _reaped_pid()
    doc["pid"] = pid  # a process that no longer exists
    path.write_text(json.dumps(doc))
    b = Share(directory)
    # At the first look after its last write's step.
    assert b.lead(SERVICE, NOW + LOOK) is True


def test_an_agent_takes_over_and_is_not_replaced(directory: Path) -> None:
    worker, agent, other = Share(directory), Share(directory, agent=True), Share(directory)
    worker.lead(SERVICE, NOW)
    assert agent.lead(SERVICE, NOW + 0.01) is True
    assert worker.publish(NOW, health(), NOW + 0.02) is False
    agent.publish(NOW + 0.02, health(), NOW + 0.03)
    assert other.lead(SERVICE, NOW + 0.04) is False
    assert other.describe(NOW + 0.04)["agent"] is True


@pytest.mark.parametrize("damage", ["half-written", "not json", "symlink", "other uid", "huge"])
def test_an_unusable_file_is_logged_probed_around_and_replaced(
    directory: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    path = a.path
    data = path.read_bytes()
    path.unlink()
    if damage == "half-written":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not json":
        path.write_bytes(b"\x00\xff" * 10)
    elif damage == "symlink":
        target = directory / "elsewhere"
        target.write_bytes(data)
        path.symlink_to(target)
    elif damage == "other uid":
        if os.getuid() != 0:
            pytest.skip("chown needs root")
        path.write_bytes(data)
        os.chown(path, 12345, 12345)
    else:
        path.write_bytes(b" " * (2 << 20))
    b = Share(directory)
    with caplog.at_level(logging.WARNING, logger="sqlrouter.monitor"):
        assert b.lead(SERVICE, NOW + 0.01) is True  # probes for itself
    assert b.take() is None  # nothing read from it
    assert "is unusable" in caplog.text
    assert b.role == "publisher"
    c = Share(directory)
    b.publish(NOW + 0.01, health(), NOW + 0.02)
    assert c.lead(SERVICE, NOW + 0.03) is False  # replaced by a good one
    assert c.take() is not None


def test_after_fork_a_publisher_copy_is_a_follower(directory: Path) -> None:
    a = Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    a.after_fork()  # what the child's copy does
    assert a.role == "follower"
    # The child has a new identity: the file names the parent (this pid, alive)... but
    # this test runs in one process, so the "parent" is this pid too: still alive.
    assert a.lead(SERVICE, NOW + 0.01) is False
    assert a.take() == (NOW, health())


def test_a_follower_never_installs_a_round_older_than_its_snapshot(directory: Path) -> None:
    # This process published a round of its own (as the publisher, or alone) and now
    # follows another one whose file holds an older round (it took over with the old
    # file's round, or a stalled publisher's late write): that round is not installed.
    other, mine = Share(directory), Share(directory)
    monitor = Monitor(
        dataclasses.replace(SERVICE, monitor_credentials=Credentials("m", "pw")), share=mine
    )
    monitor.publish(
        [
            Observation("db1", time.monotonic(), True, server_id=1, read_only=False),
            Observation("db2", time.monotonic(), True, server_id=2, read_only=True),
        ]
    )
    before = monitor.snapshot
    now = time.monotonic()
    assert other.lead(SERVICE, now) is True
    other.publish(before.taken_at - 1.0, health(before.taken_at - 1.1), now)
    assert mine.lead(SERVICE, now) is False
    monitor._follow(mine)
    assert monitor.snapshot is before
    # A newer round is installed.
    other.publish(before.taken_at + 0.5, health(before.taken_at + 0.4), time.monotonic())
    assert mine.lead(SERVICE, time.monotonic()) is False
    monitor._follow(mine)
    assert monitor.snapshot.taken_at == before.taken_at + 0.5
    assert monitor.snapshot.generation == before.generation + 1


def test_a_publisher_whose_logins_are_refused_hands_over(directory: Path) -> None:
    # Its probes' login is refused (a mistyped password in its URL): its rounds are
    # not published, and it does not keep the file either.
    mine, other = Share(directory), Share(directory)
    monitor = Monitor(SERVICE, credentials=Credentials("app", "wrong"), share=mine)
    now = time.monotonic()
    assert mine.lead(SERVICE, now) is True
    assert other.lead(SERVICE, now) is False
    refused = "Access denied for user 'app'"
    monitor.publish(
        [
            Observation("db1", time.monotonic(), False, error=refused, error_code=1045),
            Observation("db2", time.monotonic(), False, error=refused, error_code=1045),
        ]
    )
    assert mine.role != "publisher"
    # Another process takes over at its next poll (not after the lease), and this one
    # follows it.
    assert other.lead(SERVICE, now + 0.01) is True
    other.publish(now + 0.01, health(now), now + 0.02)
    assert mine.lead(SERVICE, now + 0.03) is False
    assert mine.take() == (now + 0.01, health(now))
    # Alone, it probes for itself without claiming the file back until the lease
    # would have run out; then it may try again.
    (directory / "alone").mkdir(mode=0o700)
    alone = Share(directory / "alone")
    assert alone.lead(SERVICE, now) is True
    alone.step_down(now, "refused")
    lease = LEASE_INTERVALS * SERVICE.monitor_interval
    assert alone.lead(SERVICE, now + lease / 2) is True
    assert alone.role == "alone"
    assert alone.lead(SERVICE, now + lease + 0.01) is True
    assert alone.role == "publisher"


def test_two_versions_of_the_format_do_not_take_over_from_each_other(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # During an upgrade, processes of the old and the new version run on one host:
    # each would find the other's file unusable and replace it, endlessly.  The
    # format is part of the file's name: each version has its own publisher.
    old = Share(directory)
    assert old.lead(SERVICE, NOW) is True
    assert old.publish(NOW, health(), NOW)
    monkeypatch.setattr(_shareformat, "_FORMAT", _shareformat._FORMAT + 1)
    new = Share(directory)
    assert new.lead(SERVICE, NOW + 0.01) is True
    assert new.path != old.path
    assert new.publish(NOW + 0.01, health(), NOW + 0.02)
    monkeypatch.undo()
    assert old.publish(NOW + 0.02, health(), NOW + 0.03) is True
    assert old.role == "publisher"


def _rewrite(path: Path, **fields: object) -> None:
    doc = json.loads(path.read_bytes())
    doc.update(fields)
    path.write_text(json.dumps(doc))


def _reaped_pid() -> int:
    """The pid of a process that no longer exists (a child that exited, reaped)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only exits
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


def test_a_publisher_in_another_pid_namespace_is_judged_by_its_lease(directory: Path) -> None:
    # A sidecar agent in its own PID namespace: its pid means nothing here (it may be
    # no process, or another one, of this namespace).  Not replaced while its lease
    # holds, replaced when it runs out.
    a = Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    pid = _reaped_pid()  # no such process here
    pidns = os.stat("/proc/self/ns/pid").st_ino
    _rewrite(a.path, pid=pid, pidns=pidns + 1, started=12345)
    b = Share(directory)
    assert b.lead(SERVICE, NOW + 0.01) is False
    lease = LEASE_INTERVALS * SERVICE.monitor_interval
    assert b.lead(SERVICE, NOW + lease + 0.01) is True


def test_a_zombie_or_a_reused_pid_is_no_publisher(directory: Path) -> None:
    a = Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only exits
        os.close(read)
        os.write(write, b"x")
        os._exit(0)
    os.close(write)
    try:
        os.read(read, 1)
        started = _start_time(pid)
        # Not reaped yet: a zombie (its pid answers signal 0).
        while Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            time.sleep(0.01)
        _rewrite(a.path, pid=pid, started=started)
        assert Share(directory).lead(SERVICE, NOW + LOOK) is True
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    # A pid that now names another process (this one; or a thread's id): its start
    # time is not the publisher's.
    # (The file is now that of the process that took over at NOW + LOOK.)
    _rewrite(a.path, pid=os.getpid(), started=_start_time(os.getpid()) + 1, publisher="old")
    assert Share(directory).lead(SERVICE, NOW + 2 * LOOK) is True


def test_a_replaced_publisher_says_who_replaced_it(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = Share(directory), Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    lease = LEASE_INTERVALS * SERVICE.monitor_interval
    assert b.lead(SERVICE, NOW + lease + 0.01) is True
    b.resign(NOW + lease + 0.02)  # the file names nobody now
    with caplog.at_level(logging.INFO, logger="sqlrouter.monitor"):
        assert a.publish(NOW + lease, health(), NOW + lease + 0.03) is False
    assert "pid 0" not in caplog.text
    assert "no longer names this process" in caplog.text


def test_a_new_publisher_removes_the_temporary_files_of_dead_writers(directory: Path) -> None:
    # A publisher killed between writing its temporary file and renaming it leaves it.
    a = Share(directory)
    a.lead(SERVICE, NOW)
    pid = _reaped_pid()
    key = a.path.stem
    dead = directory / f".{key}.{pid}.0123abcd.tmp"
    live = directory / f".{key}.{os.getpid()}.4567cdef.tmp"  # being written right now
    other = directory / f".other-key.{pid}.0123abcd.tmp"
    for path in (dead, live, other):
        path.write_bytes(b"{}")
    a.resign(NOW)
    assert Share(directory).lead(SERVICE, NOW + 0.01) is True
    assert not dead.exists()
    assert live.exists() and other.exists()


def test_a_write_that_keeps_failing_is_logged_once(
    directory: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = Share(directory)
    a.lead(SERVICE, NOW)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with caplog.at_level(logging.INFO, logger="sqlrouter.monitor"):
        monkeypatch.setattr(os, "write", full)  # a full disk
        for i in range(5):
            a.renew(NOW + i * 0.1)
        monkeypatch.undo()
        a.renew(NOW + 0.6)
    failed = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(failed) == 1
    assert "No space left" in failed[0].getMessage()
    assert "writes the shared snapshot file" in caplog.text
    assert caplog.records[-1].getMessage().endswith(" again")


def test_processes_probing_with_other_accounts_do_not_share(directory: Path) -> None:
    # What a probe sees depends on its account (its grants, a server refusing it):
    # a process is not routed on another account's observations.
    app, report = Share(directory), Share(directory)
    assert app.lead(SERVICE, NOW, account="app") is True
    assert report.lead(SERVICE, NOW, account="report") is True  # a file of its own
    assert app.path != report.path
    assert service_key(SERVICE, "app") != service_key(SERVICE, "report")
    same = Share(directory)
    assert same.lead(SERVICE, NOW, account="app") is False  # follows app's publisher


def test_the_directory_is_checked_at_every_use(directory: Path) -> None:
    # Checked when the process started watching, the directory may be replaced later
    # (by a symlink to elsewhere, or made readable by others): nothing is written
    # through it then, and nothing read from it is trusted.
    a = Share(directory)
    a.lead(SERVICE, NOW)
    assert a.publish(NOW, health(), NOW)
    elsewhere = directory.parent / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    directory.rename(directory.parent / "moved")
    directory.symlink_to(elsewhere)
    a.publish(NOW + 0.01, health(), NOW + 0.02)
    a.renew(NOW + 0.03)
    assert list(elsewhere.iterdir()) == []
    b = Share(directory)
    assert b.lead(SERVICE, NOW + 0.04) is True
    assert b.role == "alone"
    assert list(elsewhere.iterdir()) == []
    directory.unlink()
    (directory.parent / "moved").rename(directory)
    directory.chmod(0o755)
    c = Share(directory)
    assert c.lead(SERVICE, NOW + 0.05) is True
    assert c.role == "alone"
    assert c.take() is None


def test_a_follower_reads_proc_once_per_regular_look_and_still_sees_a_death(
    directory: Path,
) -> None:
    """The looks just after a tick come a few ms apart: the publisher's /proc entry is
    read at most once per tenth of an interval, and its death is seen at the first
    look after that."""
    a = Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child waits to be told to exit
        os.close(write)
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    _rewrite(a.path, pid=pid, started=_start_time(pid), publisher="child")
    b = Share(directory)
    assert b.lead(SERVICE, NOW + LOOK) is False  # alive
    os.close(write)
    os.waitpid(pid, 0)
    # Dead, but looked at again within the step: not read again.
    assert b.lead(SERVICE, NOW + LOOK + LOOK / 2) is False
    assert b.role == "follower"
    # The next regular look reads it: gone, taken over.
    assert b.lead(SERVICE, NOW + 2 * LOOK) is True
    assert b.role == "publisher"


def test_a_write_after_the_followers_look_began_does_not_vouch_for_a_dead_publisher(
    directory: Path,
) -> None:
    """A file written after the ``now`` its follower looks with (a stale ``now``: the
    registry read, the lock's wait came first; or a file whose ``lease_at`` is ahead,
    within what :func:`decode` accepts) says nothing of the publisher at the look: its
    pid is looked up, and a dead one replaced at once, as before the step's shortcut."""
    a = Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    pid = _reaped_pid()
    _rewrite(a.path, pid=pid, started=0, publisher="dead", lease_at=NOW + 0.5)
    assert Share(directory).lead(SERVICE, NOW) is True


def test_a_follower_woken_by_a_write_does_not_look_the_publisher_up(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All of a host's followers look at once when a publisher's write wakes them: a
    publisher that wrote within a step of the look was running then, and no follower
    reads its /proc entry for that look; a later look does, and sees a death."""
    a = Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    looked: list[int] = []

    def running(pid: int, started: int) -> bool:
        looked.append(pid)
        return False  # what a dead publisher's lookup says

    monkeypatch.setattr(_pid, "running", running)
    b = Share(directory)
    assert b.lead(SERVICE, NOW + 0.005) is False  # woken by the write
    assert b.take() == (NOW, health())
    assert looked == []
    assert b.lead(SERVICE, NOW + LOOK) is True  # the next regular look: dead
    assert looked and set(looked) == {os.getpid()}  # (the election looks again)
    assert b.role == "publisher"


def test_a_publishers_write_wakes_its_followers(directory: Path) -> None:
    """A follower waiting for the next round is woken by the publisher's write (in
    another process), not by a timeout; with nothing written it waits it out."""
    a, b = Share(directory), Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    assert b.lead(SERVICE, NOW + 0.01) is False
    assert b.wakes
    assert b.wait(0.05) is False  # nothing written meanwhile
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the publisher writes once told to, then waits
        os.close(go_write)
        os.read(go_read, 1)
        a.publish(NOW + 0.5, health(NOW + 0.5), NOW + 0.5)
        os.read(go_read, 1)
        os._exit(0)
    os.close(go_read)
    try:
        os.write(go_write, b"x")
        assert b.wait(60.0) is True
        assert b.lead(SERVICE, NOW + 0.6) is False
        assert b.take() == (NOW + 0.5, health(NOW + 0.5))
    finally:
        os.close(go_write)
        os.waitpid(pid, 0)


def test_a_wake_file_that_is_not_this_users_regular_file_means_polling(
    directory: Path,
) -> None:
    a = Share(directory)
    a.lead(SERVICE, NOW)
    wake = directory / f"{a.path.stem}.wake"
    wake.unlink(missing_ok=True)
    wake.symlink_to("/dev/zero")
    b = Share(directory)
    assert b.lead(SERVICE, NOW + 0.01) is False
    assert not b.wakes
    assert b.wait(0.01) is False


def test_a_follower_knows_when_its_publishers_lease_ends(directory: Path) -> None:
    a, b = Share(directory), Share(directory)
    assert b.lease_left(NOW) is None  # nothing read yet
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    b.lead(SERVICE, NOW + 0.1)
    lease = LEASE_INTERVALS * SERVICE.monitor_interval
    assert b.lease_left(NOW + 0.1) == pytest.approx(lease - 0.1)
    assert b.lease_left(NOW + lease + 5) == 0.0
    a.resign(NOW + 0.2)
    b.lead(SERVICE, NOW + 0.3)  # takes over: the file names it
    assert b.role == "publisher"


def test_a_truncated_wake_up_file_means_polling_not_a_crash(directory: Path) -> None:
    """Another process empties the wake-up file (``: > KEY.wake``) under followers that
    have it mapped: the futex fails, the follower polls; nothing touches the mapping
    from Python, so no SIGBUS ends the process."""
    a, b = Share(directory), Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    assert b.lead(SERVICE, NOW + 0.01) is False
    assert b.wakes
    os.truncate(directory / f"{a.path.stem}.wake", 0)
    b.wait(0.2)  # an emptied counter reads as a change: a look, harmless
    assert not b.wakes  # polls from now on
    assert a.publish(NOW + 0.5, health(NOW + 0.5), NOW + 0.5)  # the publisher survives too
    assert b.lead(SERVICE, NOW + 0.6) is False
    assert b.take() == (NOW + 0.5, health(NOW + 0.5))


def test_stopping_a_following_monitor_ends_its_wait(directory: Path) -> None:
    """A follower's monitor thread sleeps on the wake-up counter, up to half an hour
    here: stop() wakes it, and the thread is gone when stop() returns."""
    hourly = dataclasses.replace(
        SERVICE, monitor_interval=3600.0, monitor_credentials=Credentials("m", "pw")
    )
    go_read, go_write = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - a publisher that stays until told to go
        os.close(go_write)
        os.close(ready_read)
        publisher = Share(directory)
        publisher.lead(hourly, time.monotonic(), account="m")
        now = time.monotonic()  # health() is at 999.9: after a boot less than 1000 s ago,
        publisher.publish(now, health(now - 0.1), now)  # "in the future"
        os.write(ready_write, b"x")
        os.read(go_read, 1)
        os._exit(0)
    os.close(go_read)
    os.close(ready_write)
    try:
        assert os.read(ready_read, 1) == b"x"
        share = Share(directory)
        assert share.lead(hourly, time.monotonic(), account="m") is False
        monitor = Monitor(hourly, share=share)
        monitor.start()
        monitor.wait_for_round(after=0, timeout=10)  # the publisher's round, installed
        thread = monitor._thread
        assert thread is not None and share.role == "follower" and share.wakes
        monitor.stop()
        assert not thread.is_alive()
    finally:
        os.close(go_write)
        os.close(ready_read)
        os.waitpid(pid, 0)


def test_a_futex_that_fails_turns_the_wake_ups_off(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A futex call that fails in an unexpected way (a seccomp filter, a 32-bit process
    on a 64-bit kernel, an emulator: ENOSYS) would make every wait return at once and
    the follower spin: the wake-ups are turned off, and the follower polls."""
    import ctypes
    import errno

    from sqlrouter.routing import _wake

    a, b = Share(directory), Share(directory)
    a.lead(SERVICE, NOW)
    a.publish(NOW, health(), NOW)
    assert b.lead(SERVICE, NOW + 0.01) is False
    assert b.wakes

    def enosys(*args: object) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(_wake, "_FUTEX", (enosys, 202))
    assert b.wait(0.05) is False
    assert not b.wakes


def test_a_new_publisher_removes_the_files_of_definitions_unwritten_for_a_day(
    directory: Path,
) -> None:
    """The registry changed (or sqlrouter was upgraded) long ago: the old definition's
    round and wake-up files go when a publisher is elected; its lock file stays (a
    process may hold it open).  A definition written within the day stays, as do files
    that are not a shared snapshot's, and those of a definition whose lock is held."""
    old_key, recent_key, held_key = (f"shop-{c * 20}" for c in "abc")
    day_ago = time.time() - shared.STALE_AFTER - 60
    for key in (old_key, recent_key, held_key):
        for ext in ("json", "wake", "lock"):
            (directory / f"{key}.{ext}").write_bytes(b"{}")
    for key in (old_key, held_key):
        for ext in ("json", "wake"):
            os.utime(directory / f"{key}.{ext}", (day_ago, day_ago))
    (directory / "notes.json").write_bytes(b"{}")  # not a shared snapshot's: no lock
    os.utime(directory / "notes.json", (day_ago, day_ago))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - holds the lock of held_key until told
        fd = os.open(directory / f"{held_key}.lock", os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        os.close(read)
        os.write(write, b"x")
        time.sleep(30)
        os._exit(0)
    os.close(write)
    try:
        os.read(read, 1)
        a = Share(directory)
        assert a.lead(SERVICE, NOW) is True
        assert a.role == "publisher"
    finally:
        os.close(read)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    left = {p.name for p in directory.iterdir()}
    assert f"{old_key}.json" not in left and f"{old_key}.wake" not in left
    assert f"{old_key}.lock" in left
    for key in (recent_key, held_key):
        assert {f"{key}.json", f"{key}.wake", f"{key}.lock"} <= left
    assert "notes.json" in left
    assert a.path.name in left  # its own
