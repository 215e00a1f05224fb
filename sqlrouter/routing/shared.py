"""Snapshots shared by the processes of one user on one host: one monitor, many readers.

Twenty workers of one host that watch the same service need one monitor between them,
not twenty.  For each service, the processes of one user on one host (those given the
same private directory) elect one *publisher*: it probes the servers and writes each
round's observations to a file; the others (*followers*) read that file instead of
probing.  Nothing else is needed: no daemon, no configuration (``sqlrouter agent`` is
only a publisher that outlives the workers).

The directory and its files
    ``DIR/NAME-KEY.json`` holds the last published round, ``DIR/NAME-KEY.lock`` is
    locked (``lockf``) for the instant it takes to read and replace it.  ``KEY`` is a
    hash of what the observations depend on (the datasources' addresses, the heartbeat
    table, the interval, the probe timeout, the probes' account) and of the file's
    format version: processes
    that define the service alike (and run versions that read the same format) share,
    the others do not.  ``DIR`` is private (mode 0700, owned by the user, the
    control socket's directory: :mod:`sqlrouter._runtime` checks it, and each use opens it
    again without following a symlink and checks it again); a file that is not
    a regular file of this user, that is too big, malformed, from another boot, or that
    names other datasources is refused with one WARNING line, and this process probes
    for itself (then replaces the file when it wins the election).  A file is replaced
    by ``rename()``: a reader never sees half of one.

The lease
    The file names its publisher (pid, PID namespace and start time, a random id,
    whether it is an agent) and when it
    last wrote (``lease_at``, ``time.monotonic()``: CLOCK_MONOTONIC is one clock for
    every process of a host).  The publisher writes every round, and every monitor
    interval while a round waits for a frozen server.  A follower takes over (under the
    lock, after reading the file again) when the publisher's pid is gone (it died or
    exited: at its next poll; a zombie, or a pid that now names a process or thread
    started at another time, is gone; from another PID namespace only the lease
    counts), when it resigned (it stopped: at once), or when the lease
    is older than :data:`LEASE_INTERVALS` intervals (it stalls: a stopped process, a
    starved thread): within two intervals in each case.  (On a machine so loaded that
    the publisher's thread misses its turn by that much, a follower takes over: safe,
    since the one that comes back steps down, but the publisher changes.)  A publisher
    that finds another one named in the file when it comes to write (it stalled and was
    replaced) writes nothing and becomes a follower.  An agent takes over from a
    publisher that is not one; nothing takes over from a live agent.

Reading stays off the statement path
    A follower's monitor thread waits on the file's wake-up counter (``KEY.wake``, a
    futex in a shared page: :mod:`sqlrouter.routing._wake`), which the publisher's every
    write bumps, and looks at the file's ``stat()`` at half past each tick besides (a
    publisher that died wakes nobody) and when its publisher's lease ends (one that
    stalled); where futexes are not available, or fail, it looks just
    after each tick of the wall clock, when the publisher's round lands, then every
    tenth of an interval (:mod:`sqlrouter.routing._ticks`).  It reads the file when it
    changed; the snapshot it installs is the process's, like a round of its own:
    connections read it from memory.  The freshness bound applies unchanged (the
    snapshot keeps the publisher's ``taken_at``): a follower never routes on a round
    older than ``Snapshot.max_age``, whoever made it.

The file's format and the checks of its content are :mod:`._shareformat`; the
wake-up counter :mod:`._wake`; when followers look :mod:`._ticks`.  (Just over 600
lines: the checks of the directory and the file, the lock and the election are one
protocol, best read together.)

What stays per process: the operator's routing-level state (``offline``, ``promote``
through the control socket), the open connections and their invalidation, events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import re
import secrets
import stat as stat_mode
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from .. import _forksafe, _pid
from ..topology import Service
from ._shareformat import Published, ShareError, decode, encode, service_key
from ._wake import Wake, open_wake
from .health import Health

__all__ = [
    "LEASE_INTERVALS",
    "POLLS_PER_INTERVAL",
    "POLLS_WHEN_WOKEN",
    "Published",
    "Share",
    "ShareError",
    "decode",
    "encode",
    "service_key",
]

logger = logging.getLogger("sqlrouter.monitor")

#: A publisher that has not written for this many monitor intervals has stalled (it
#: writes every interval, plus the round's time; followers look every tenth of an
#: interval: a stalled publisher is replaced within two intervals).
LEASE_INTERVALS: Final = 1.8
#: A follower looks at the file this many times per monitor interval.
POLLS_PER_INTERVAL: Final = 10
#: ... and this many where the publisher's writes wake it (the looks only notice a
#: publisher that died; one that stalls is noticed when its lease ends: see
#: :meth:`Share.lease_left`).
POLLS_WHEN_WOKEN: Final = 2
#: The largest file read (a service of a few hundred datasources fits).
MAX_FILE_BYTES: Final = 1 << 20
#: The longest wait for the file's lock at a time.  A follower that cannot have it
#: keeps following and tries again at its next poll; only when it could not for
#: :data:`LOCK_GIVE_UP_INTERVALS` intervals (a process stopped in the instant it held
#: it) does it probe alone.  Generous: on an overloaded host a holder that is merely
#: slow is common, and a herd of processes probing alone would load it more.
LOCK_TIMEOUT: Final = 0.2
LOCK_GIVE_UP_INTERVALS: Final = 10.0
#: The files of another definition of a service (another key: the registry changed, an
#: older version of sqlrouter) unwritten for this long are removed by a new publisher:
#: a definition in use is written every interval (one hour at most), and its followers
#: take over within two when its publisher stops.
STALE_AFTER: Final = 86400.0
#: What a shared snapshot file's name looks like without its extension (see
#: :func:`service_key`): only such files, next to their ``.lock``, are ever removed.
_KEY_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,40}-[0-9a-f]{20}")
#: One thread of a process at a time holds a file's lock (``lockf`` locks belong to
#: the process, not the thread, and are dropped when the process closes any
#: descriptor of the file); a forked child holds none of its parent's.
_thread_lock = _forksafe.lock()


class Share:
    """One service's shared snapshot file, as one process sees it.

    Used by the monitor's thread only (``describe`` excepted: it reads attributes).
    ``role`` is ``"follower"``, ``"publisher"`` or ``"alone"`` (probing without
    publishing: the file was unusable, or its lock could not be had).
    """

    def __init__(self, directory: Path, *, agent: bool = False) -> None:
        self.directory = directory
        self.agent = agent
        self.role = "follower"
        self._me = secrets.token_hex(8)
        self._key = ""
        self._account = ""
        self._service: Service | None = None
        self._signature: tuple[int, int, int] | None = None
        self._read: Published | None = None
        #: The round last handed to the monitor (its ``taken_at``).
        self._taken: float | None = None
        self._warned: str | None = None
        #: Since when the lock could not be had (``None``: it could, last time).
        self._lock_failed_since: float | None = None
        #: When it last stepped down because its rounds cannot be published.
        self._stood_down_at: float | None = None
        #: The last write failed (logged once until one succeeds: a full disk).
        self._write_failed = False
        #: The publisher (pid, start time) last found running, and when.
        self._checked: tuple[tuple[int, int], float] | None = None
        #: The file's wake-up counter (:mod:`._wake`; opened at first use), and its value
        #: when the file was last looked at.
        self._wake: Wake | None = None
        self._wake_opened = False
        self._seen = 0
        self.changes = 0

    def __repr__(self) -> str:
        return f"<Share {self.role} {self._path_text()}>"

    def _path_text(self) -> str:
        return str(self.path) if self._key else str(self.directory)

    @property
    def path(self) -> Path:
        return self.directory / self._file

    @property
    def _file(self) -> str:
        """The file's name in :attr:`directory` (a follower's every look opens it)."""
        return f"{self._key}.json"

    def describe(self, now: float) -> dict[str, Any]:
        """Who publishes, for ``status``."""
        read = self._read
        out: dict[str, Any] = {"role": self.role, "file": self._path_text()}
        if self.role == "publisher":
            out.update(publisher_pid=os.getpid(), agent=self.agent)
        elif read is not None and read.pid:
            out.update(publisher_pid=read.pid, agent=read.agent, lease_age=now - read.lease_at)
        return out

    def after_fork(self) -> None:
        """In a forked child: a follower with a new identity, that read nothing yet."""
        self._me = secrets.token_hex(8)
        self.role = "follower"
        self._signature = None
        self._read = None
        self._taken = None
        self._stood_down_at = None
        self._checked = None

    # -- the monitor's calls ---------------------------------------------------------

    def lead(self, service: Service, now: float, *, account: str = "") -> bool:
        """Whether this process probes this time (a publisher, or alone); a follower
        whose publisher is gone or stalled tries to take over first.  ``account``: the
        user this process's probes log in as (processes of other accounts do not
        share)."""
        if service is self._service and account == self._account:
            key = self._key
        else:
            key = service_key(service, account)
        self._account = account
        if key != self._key:
            if self.role == "publisher":
                self.resign(now)
            self._key, self.role, self._signature, self._read = key, "follower", None, None
            self._taken = None
            self._wake, self._wake_opened = None, False
        self._service = service
        if self.role == "publisher":
            return True
        wake = self._waker()
        if wake is not None:
            # Read before the file: a round written from now on wakes :meth:`wait`.
            self._seen = wake.value()
        problem = self._refresh(service, now)
        read = self._read
        if problem is None and read is not None and self._alive(read, service, now):
            if self.role == "alone":
                logger.info("service %r: following the snapshots of pid %d", service.name, read.pid)
            self.role = "follower"
            return False
        since = self._stood_down_at
        if since is not None and now - since < LEASE_INTERVALS * service.monitor_interval:
            self.role = "alone"  # leaves the file to a process that can publish
            return True
        return self._elect(service, now)

    @property
    def wakes(self) -> bool:
        """Whether a publisher's writes wake :meth:`wait` (else: poll)."""
        wake = self._waker()
        return wake is not None and not wake.broken

    def interrupt(self) -> None:
        """End this process's :meth:`wait` now (it stops), or make the next one return at
        once: the counter moves (a wait about to start sees it), and the host's other
        followers wake too, look at the file once and wait again."""
        wake = self._wake
        if wake is not None:
            wake.wake()

    def lease_left(self, now: float) -> float | None:
        """Seconds until the lease of the publisher last read ends (a follower takes over
        then if it was not renewed); ``None``: no publisher named."""
        read, service = self._read, self._service
        if read is None or not read.pid or service is None:
            return None
        return max(0.0, LEASE_INTERVALS * service.monitor_interval - (now - read.lease_at))

    def wait(self, timeout: float) -> bool:
        """Wait (a follower) until the publisher writes the file again, at most
        ``timeout`` seconds: whether it did (always False where writes do not wake)."""
        wake = self._waker()
        return wake is not None and wake.wait(self._seen, timeout)

    def take(self) -> tuple[float, Mapping[str, Health]] | None:
        """The round read from the file, if it is one not handed over yet."""
        read = self._read
        if self.role != "follower" or read is None or read.health is None:
            return None
        if read.taken_at is None or (self._taken is not None and read.taken_at <= self._taken):
            return None  # handed over already, or older than the last one handed over
        self._taken = read.taken_at
        return read.taken_at, read.health

    def publish(self, taken_at: float, health: Mapping[str, Health], now: float) -> bool:
        """Write a round (a publisher); False: another process publishes now, and this
        one became a follower."""
        if self.role != "publisher":
            return self.role == "alone"
        return self._write_if_mine(now, taken_at, health)

    def renew(self, now: float) -> None:
        """Renew the lease (a round waits for a frozen server)."""
        if self.role == "publisher":
            read = self._read
            self._write_if_mine(now, None if read is None else read.taken_at, None, keep=True)

    def step_down(self, now: float, why: str) -> None:
        """This process's rounds cannot be published (``why``: its probes' login was
        refused): stop publishing, so that a follower takes over at its next poll, and
        do not claim the file again for :data:`LEASE_INTERVALS` intervals (meanwhile it
        follows a publisher if one appears, else it probes alone)."""
        self._stood_down_at = now
        if self.role == "publisher":
            logger.warning(
                "service %r: this process's rounds cannot be shared (%s): handing the "
                "snapshots over",
                self._service_name(),
                why,
            )
            self.resign(now)

    def resign(self, now: float) -> None:
        """Stop publishing and say so, so that a follower takes over at its next poll."""
        if self.role != "publisher" or not self._key:
            return
        self.role = "follower"
        with self._locked() as locked:
            if not locked:
                return
            current = self._load(now)
            if current is None or current.publisher != self._me:
                return
            self._write(dataclasses.replace(current, pid=0, publisher="", agent=False))
        logger.info("service %r: no longer publishing snapshots", self._service_name())

    # -- internals -------------------------------------------------------------------

    def _service_name(self) -> str:
        return self._service.name if self._service is not None else "?"

    def _alive(self, read: Published, service: Service, now: float) -> bool:
        """The publisher named in the file publishes (and is not to be replaced)."""
        if read.pid == 0 or read.publisher == self._me:
            return False
        if self.agent and not read.agent:
            return False
        if now - read.lease_at > LEASE_INTERVALS * service.monitor_interval:
            return False
        _, pidns, _ = _pid.identity()
        if not pidns or read.pidns != pidns:
            # Another PID namespace (a sidecar agent, a container sharing the
            # directory): its pid means nothing here; the lease decides alone.
            return True
        # /proc is read at every regular look (a tenth of an interval apart), not at
        # each of the early looks that follow a tick a few milliseconds apart, nor when
        # the publisher wrote within that step: it was running then, which is what a
        # look at /proc would say (the look of a follower its write woke: the host's
        # followers all look at once then, and each one's turn delays the last).  A
        # write after ``now`` (a stale ``now``; a ``lease_at`` ahead of it) vouches for
        # nothing at the look: the pid is looked up.
        step = 0.9 * service.monitor_interval / POLLS_PER_INTERVAL
        if 0 <= now - read.lease_at < step:
            return True
        who = (read.pid, read.started)
        checked = self._checked
        if checked is not None and checked[0] == who and 0 <= now - checked[1] < step:
            return True
        running = _pid.running(read.pid, read.started)
        self._checked = (who, now) if running else None
        return running

    @contextlib.contextmanager
    def _dir(self) -> Iterator[int]:
        """The directory, opened and checked again at each use (it was checked when
        this process started watching; it may have been replaced since): a directory,
        not a symlink, this user's, closed to others.  :class:`ShareError`."""
        try:
            fd = os.open(
                self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            )
        except OSError as exc:
            raise ShareError(
                f"its directory cannot be opened (a symlink? gone?): {exc.strerror}"
            ) from None
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise ShareError(
                    f"its directory is not private (uid {st.st_uid}, mode "
                    f"{stat_mode.S_IMODE(st.st_mode):o}; expected uid {os.getuid()}, 0700)"
                )
            yield fd
        finally:
            os.close(fd)

    def _refresh(self, service: Service, now: float) -> str | None:
        """Read the file again if it changed (one ``stat()`` otherwise; the directory
        opened and checked once for both)."""
        try:
            with self._dir() as d:
                try:
                    st = os.stat(self._file, dir_fd=d, follow_symlinks=False)
                except FileNotFoundError:
                    self._signature, self._read = None, None
                    return None
                signature = (st.st_ino, st.st_mtime_ns, st.st_size)
                if signature == self._signature and self._read is not None:
                    return None
                try:
                    read = self._load_checked(now, d)
                except ShareError as exc:
                    self._read = None
                    self._signature = signature
                    return self._unusable(str(exc))
        except ShareError as exc:  # the directory
            self._signature, self._read = None, None
            return self._unusable(str(exc))
        except OSError as exc:
            return self._unusable(f"cannot stat it: {exc.strerror}")
        self._read = read
        self._signature = signature
        self._warned = None
        return None

    def _unusable(self, why: str) -> str:
        if why != self._warned:
            self._warned = why
            logger.warning(
                "service %r: shared snapshot file %s is unusable: %s; probing for this "
                "process (it will be replaced)",
                self._service_name(),
                self.path,
                why,
            )
        return why

    def _load_checked(self, now: float, directory: int | None = None) -> Published | None:
        """The file's content, checked; ``None`` if there is none.  :class:`ShareError`.
        ``directory``: the directory, opened and checked by the caller."""
        if self._service is None:
            raise ShareError("no service yet")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            if directory is not None:
                fd = os.open(self._file, flags, dir_fd=directory)
            else:
                with self._dir() as d:
                    fd = os.open(self._file, flags, dir_fd=d)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ShareError(f"cannot open it: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat_mode.S_ISREG(st.st_mode):
                raise ShareError("not a regular file")
            if st.st_uid != os.getuid():
                raise ShareError(f"it belongs to uid {st.st_uid}, not {os.getuid()}")
            if st.st_size > MAX_FILE_BYTES:
                raise ShareError(f"{st.st_size} bytes, more than {MAX_FILE_BYTES}")
            chunks = []
            while chunk := os.read(fd, MAX_FILE_BYTES + 1):
                chunks.append(chunk)
        except OSError as exc:
            raise ShareError(f"cannot read it: {exc.strerror}") from None
        finally:
            os.close(fd)
        # The caller's ``now`` was read before this (maybe long before, on a loaded
        # machine): a file written since is not "in the future".
        return decode(b"".join(chunks), self._key, self._service, max(now, time.monotonic()))

    def _load(self, now: float) -> Published | None:
        try:
            return self._load_checked(now)
        except ShareError:
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[bool | None]:
        """The file's lock, for at most :data:`LOCK_TIMEOUT` seconds (False: not had,
        another process holds it; ``None``: it cannot be opened, logged)."""
        with _thread_lock:
            try:
                with self._dir() as d:
                    fd = os.open(
                        f"{self._key}.lock",
                        os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o600,
                        dir_fd=d,
                    )
            except (OSError, ShareError) as exc:
                why = str(exc) if isinstance(exc, ShareError) else exc.strerror
                self._unusable(f"cannot open its lock: {why}")
                yield None
                return
            try:
                deadline = time.monotonic() + LOCK_TIMEOUT
                while True:
                    try:
                        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as exc:
                        if exc.errno not in (errno.EACCES, errno.EAGAIN):
                            raise
                        if time.monotonic() >= deadline:
                            yield False
                            return
                        time.sleep(0.005)
                yield True
            finally:
                os.close(fd)  # releases the lock

    def _elect(self, service: Service, now: float) -> bool:
        """Take over if, under the lock, the file still names no live publisher."""
        with self._locked() as locked:
            if locked is None:
                return self._alone("its lock cannot be opened")
            if not locked:
                since = self._lock_failed_since
                if since is None:
                    self._lock_failed_since = since = now
                if now - since <= LOCK_GIVE_UP_INTERVALS * service.monitor_interval:
                    self.role = "follower" if self.role != "alone" else "alone"
                    return self.role == "alone"
                return self._alone("its lock is held by a process that does not answer")
            self._lock_failed_since = None
            try:
                current = self._load_checked(now)
            except ShareError as exc:
                current = None
                self._unusable(str(exc))
            if current is not None and self._alive(current, service, now):
                self._read, self._signature, self.role = current, None, "follower"
                return False
            taken_at = current.taken_at if current is not None else None
            health = current.health if current is not None else None
            self._remove_orphans()
            claim = self._mine(now, taken_at, health)
            if not self._write(claim):
                return self._alone("it cannot be written")
            self._read = claim
        self.role = "publisher"
        self.changes += 1
        previous = "" if current is None or not current.pid else f" (after pid {current.pid})"
        logger.info(
            "service %r: this process publishes the snapshots%s in %s",
            service.name,
            previous,
            self.path,
        )
        return True

    def _alone(self, why: str) -> bool:
        if self.role != "alone":
            logger.warning(
                "service %r: shared snapshot file %s: %s; probing for this process",
                self._service_name(),
                self.path,
                why,
            )
        self.role = "alone"
        return True

    def _write_if_mine(
        self,
        now: float,
        taken_at: float | None,
        health: Mapping[str, Health] | None,
        *,
        keep: bool = False,
    ) -> bool:
        with self._locked() as locked:
            if not locked:
                return True  # keep probing; the lease says whether others take over
            current = self._load(now)
            if current is None or current.publisher != self._me:
                self.role = "follower"
                self._read, self._signature = current, None
                if current is not None and current.pid:
                    who = f"another process (pid {current.pid}) took over the snapshots"
                else:
                    who = "the snapshot file no longer names this process (replaced meanwhile)"
                logger.info("service %r: %s; following it", self._service_name(), who)
                return False
            if keep:
                taken_at, health = current.taken_at, current.health
            mine = self._mine(now, taken_at, health)
            self._write(mine)
            self._read = mine
        return True

    def _mine(
        self, now: float, taken_at: float | None, health: Mapping[str, Health] | None
    ) -> Published:
        pid, pidns, started = _pid.identity()
        return Published(pid, self._me, self.agent, now, taken_at, health, pidns, started)

    def _write(self, published: Published) -> bool:
        tmp = f".{self._key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        data = encode(published, self._key)
        try:
            with self._dir() as d:
                try:
                    fd = os.open(
                        tmp,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o600,
                        dir_fd=d,
                    )
                    try:
                        view = memoryview(data)
                        while view:
                            view = view[os.write(fd, view) :]
                    finally:
                        os.close(fd)
                    os.replace(tmp, self._file, src_dir_fd=d, dst_dir_fd=d)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=d)
                    raise
        except (OSError, ShareError) as exc:
            if not self._write_failed:
                logger.warning(
                    "service %r: cannot write the shared snapshot file %s: %s (said once "
                    "until a write succeeds)",
                    self._service_name(),
                    self.path,
                    str(exc) if isinstance(exc, ShareError) else exc.strerror,
                )
            self._write_failed = True
            return False
        if self._write_failed:
            self._write_failed = False
            logger.info(
                "service %r: this process writes the shared snapshot file %s again",
                self._service_name(),
                self.path,
            )
        wake = self._waker()
        if wake is not None:
            wake.wake()
        return True

    def _waker(self) -> Wake | None:
        """The wake-up counter of this file, opened once per file (``None``: none)."""
        if not self._wake_opened and self._key:
            self._wake_opened = True
            with contextlib.suppress(ShareError), self._dir() as d:
                self._wake = open_wake(d, f"{self._key}.wake")
        return self._wake

    def _remove_orphans(self) -> None:
        """Remove this file's temporary copies left by writers killed before their
        ``rename()`` (``.KEY.PID.HEX.tmp`` of a pid that no longer runs), and the rounds
        and wake-up files of other keys unwritten for :data:`STALE_AFTER` seconds."""
        prefix = f".{self._key}."
        with contextlib.suppress(OSError, ShareError), self._dir() as d:
            for name in os.listdir(d):
                stem, _, extension = name.rpartition(".")
                if stem != self._key and extension == "lock" and _KEY_NAME.fullmatch(stem):
                    with contextlib.suppress(OSError):
                        self._remove_stale(d, stem)
                if not (name.startswith(prefix) and name.endswith(".tmp")):
                    continue
                pid = name[len(prefix) :].split(".", 1)[0]
                if pid.isdigit() and not _pid.exists(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=d)

    def _remove_stale(self, directory: int, key: str) -> None:
        """Remove ``key``'s round and wake-up files if neither was written for
        :data:`STALE_AFTER` seconds, under its lock (skipped when another process holds
        it).  Its lock file stays: a process may hold it open, and one that locked the
        removed file and one that created a new one would both think they hold it."""
        names = (f"{key}.json", f"{key}.wake")
        fd = os.open(f"{key}.lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # in use
            found = []
            for name in names:
                try:
                    st = os.stat(name, dir_fd=directory, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat_mode.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                    return
                if time.time() - st.st_mtime < STALE_AFTER:
                    return
                found.append(name)
            for name in found:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=directory)
            if found:
                logger.info(
                    "shared snapshots in %s: removed %s (not written for a day)",
                    self.directory,
                    ", ".join(found),
                )
        finally:
            os.close(fd)
