"""The monitor: one background thread per service, probing every datasource.

Each round (every ``monitor_interval`` seconds, on the wall clock's ticks: see
:mod:`sqlrouter.routing._ticks`) probes every
datasource in parallel on a persistent monitoring connection, in one round trip (a
multi-statement query: ``@@server_id``, ``@@read_only``, the GTID positions, the
server's clock, the freshest heartbeat, then ``SHOW SLAVE STATUS``), computes each
replica's lag, and publishes an immutable :class:`~sqlrouter.routing.health.Snapshot`.

Who the master is follows from each round's observations alone, by the routing rule
(:func:`~sqlrouter.routing.router.resolve_master`: the writable server that does not replicate
and that the replicas replicate from), never from earlier rounds: a process that starts
now and one that has watched for hours reach the same answer.  While a server that is
not the master is writable, the monitor logs a WARNING (once per change) saying where
writes go, or that they are refused and why.

Lag is measured from a heartbeat row (pt-heartbeat style) written on that master, and
nowhere else, once per round by one process of the whole cluster: the monitor that
holds the writer's ``GET_LOCK()`` on the master (see ``Prober.write_heartbeat``; the
others write nothing, so the master's binlog gets one heartbeat commit per interval
whatever the number of processes and hosts), half an interval after the round's tick
(when no host probes).  The write runs on a connection of its
own so that a slow write (semi-sync waiting for a replica) never delays a probe.  The
statement itself writes nothing on a read-only server or on one whose replication SQL
thread runs.  How the round's observations become each replica's lag is pure, in
:mod:`sqlrouter.routing.lag`.

A probe that does not answer within ``probe_timeout`` marks its datasource unreachable
for that round; it never delays the probes of the other datasources.

(Just over 600 lines: the rounds, a follower's turn and the heartbeat writer share one
thread and its state.  The pure parts are apart: :mod:`.lag`, :mod:`.router`,
:mod:`._ticks`; the probe's I/O is :mod:`._probe`.)
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import pymysql

from .. import _forksafe, telemetry
from ..errors import AUTH_ERRNOS
from ..topology import Credentials, DataSource, Service
from . import _ticks
from ._probe import Clock, Connect, Prober, describe_error
from .health import Health, Snapshot, unknown
from .lag import Observation, compute_health
from .router import Mastership, explain_master, mastership
from .shared import POLLS_PER_INTERVAL, POLLS_WHEN_WOKEN, Share

__all__ = ["HEARTBEAT_TAKEOVER_INTERVALS", "Monitor"]

logger = logging.getLogger("sqlrouter.monitor")

#: A heartbeat writer whose last heartbeat is older than this many monitor intervals
#: (plus the probe timeout: a round waits that long for a frozen server) is taken to be
#: stalled: another process ends its lock's connection and takes over.
HEARTBEAT_TAKEOVER_INTERVALS = 2.0


class Monitor:
    """Watches one service in a background thread and publishes snapshots.

    ``start()`` launches the thread; ``stop()`` stops and joins it (and the probe
    workers) within a bounded time.  ``snapshot`` is the latest published value;
    :meth:`wait_for_round` blocks (with a timeout) until a round completes.
    """

    def __init__(
        self,
        service: Service,
        *,
        credentials: Credentials | None = None,
        connect: Connect = pymysql.connect,
        clock: Clock = time.monotonic,
        on_snapshot: Callable[[Snapshot, Snapshot], None] | None = None,
        refresh: Callable[[], Service | None] | None = None,
        share: Share | None = None,
        wall: Clock = time.time,
    ) -> None:
        self._service = service
        #: The wall clock whose ticks the rounds and the heartbeat follow (a seam for
        #: tests; ``clock`` stamps the observations).
        self._wall = wall
        #: The service's shared snapshots (:mod:`sqlrouter.routing.shared`): this
        #: monitor probes and publishes, or follows another process's rounds.
        self.share = share
        #: Called before each round: the service as the registry defines it now
        #: (``None``: keep the current one).  Lets a registry change (a DNS TTL
        #: expiring) reach the monitor without any connect().
        self._refresh = refresh
        creds = service.monitor_credentials or credentials
        if creds is None:
            raise ValueError(
                f"service {service.name!r}: the monitor needs credentials: give "
                "[services.NAME.monitor] in the registry or a user in the URL"
            )
        self._credentials: Credentials = creds
        #: The registry names the monitor's account: the monitor uses it whatever
        #: happens.  Otherwise it uses the credentials of this process's connect()
        #: calls: those of the first, replaced by a later connect's (see
        #: offer_credentials) until a probe has logged in with them.
        self._fixed_credentials = service.monitor_credentials is not None
        self._logged_in = False
        self._pending_credentials: Credentials | None = None
        #: The generation after which snapshots use the pending credentials.
        self._pending_after = 0
        #: The first generation made with the current credentials.
        self._credentials_from = 0
        self._in_round = False
        self._connect = connect
        self._clock = clock
        self._on_snapshot = on_snapshot
        self._lock = _forksafe.lock()
        self._round_done = threading.Condition(self._lock)
        self._stop = threading.Event()
        #: Set to run the next round now (new credentials to try).
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._probers: dict[str, Prober] = {}
        self._inflight: dict[str, concurrent.futures.Future[Observation]] = {}
        self._heartbeat_future: concurrent.futures.Future[None] | None = None
        self._offline: frozenset[str] = frozenset()
        self._pending_service: Service | None = None
        self._promoted: str | None = None
        #: What the last split-brain log line said (master, writable non-masters).
        self._warned: tuple[str | None, tuple[str, ...]] = (None, ())
        self._snapshot = Snapshot(
            service=service,
            health={ds.name: unknown(ds.name) for ds in service.datasources},
        )
        self.rounds = 0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<Monitor service={self._service.name!r} {state} rounds={self.rounds} "
            f"datasources={len(self._service.datasources)}>"
        )

    @property
    def service(self) -> Service:
        return self._service

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def heartbeat_writer(self) -> bool:
        """This process writes the cluster's heartbeat (it holds the writer's lock)."""
        return any(prober.writer for prober in list(self._probers.values()))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread; again if it died (idempotent while it runs)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._pool = concurrent.futures.ThreadPoolExecutor(
                # Threads start lazily; the margin covers datasources added later and
                # probes still stuck on a frozen server.
                max_workers=2 * len(self._service.datasources) + 8,
                thread_name_prefix=f"sqlrouter-probe-{self._service.name}",
            )
            self._thread = threading.Thread(
                target=self._run, name=f"sqlrouter-monitor-{self._service.name}", daemon=True
            )
            self._thread.start()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's thread, workers and monitoring
        connections without using or closing them, and make the last snapshot stale
        (its age is unknown to the child), so that the first use in the child starts a
        monitor of its own and waits for its first round."""
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread = None
        self._pool = None
        for prober in self._probers.values():
            prober.forget()
        self._probers = {}
        self._inflight = {}
        self._heartbeat_future = None
        self._in_round = False
        self._snapshot = replace(self._snapshot, taken_at=-math.inf)
        if self.share is not None:
            self.share.after_fork()

    def offer_credentials(self, credentials: Credentials) -> int | None:
        """Credentials a connect() is about to use.

        The monitor takes them when the registry names no monitor account and its own
        credentials have not logged in (a typo in the first connect's password must not
        blind the monitor for the life of the process).  Returns the generation after
        which snapshots are made with them (``None``: nothing changes).
        """
        if self._fixed_credentials:
            return None
        if credentials == self._credentials:
            # Taken already: wait for the first round made with them, if it is to come.
            first = self._credentials_from
            return first - 1 if self._snapshot.generation < first else None
        if self._logged_in:
            return None
        with self._lock:
            if self._logged_in:
                return None
            if credentials == self._pending_credentials:
                return self._pending_after
            self._pending_credentials = credentials
            after = self._snapshot.generation + (1 if self._in_round else 0)
            self._pending_after = after
        logger.info(
            "service %r: the monitor's credentials (user %r) have not logged in; trying "
            "those of a new connection (user %r)",
            self._service.name,
            self._credentials.user,
            credentials.user,
        )
        self._kick.set()
        return after

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the monitoring connections; never hangs."""
        self._stop.set()
        self._kick.set()
        if self.share is not None:
            self.share.interrupt()  # a follower's thread waits on the wake-up counter
        with self._lock:
            thread, self._thread = self._thread, None
            self._round_done.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self.share is not None:
            self.share.resign(self._clock())
        pool, self._pool = self._pool, None
        if pool is not None:
            # Probes have their own timeouts: do not wait for a frozen server.
            pool.shutdown(wait=False, cancel_futures=True)
        for prober in self._probers.values():
            prober.close()
        self._probers.clear()
        self._inflight.clear()

    def wait_for_round(self, after: int | None = None, timeout: float = 5.0) -> Snapshot:
        """Wait until a round newer than generation ``after`` (default: current) ends."""
        deadline = self._clock() + timeout
        with self._lock:
            target = self._snapshot.generation if after is None else after
            while self._snapshot.generation <= target and not self._stop.is_set():
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._round_done.wait(remaining)
            return self._snapshot

    # -- operator state (routing-level, this process only) --------------------------

    def set_offline(self, name: str, offline: bool) -> None:
        self._service.datasource(name)  # KeyError names the known ones
        with self._lock:
            names = set(self._offline)
            (names.add if offline else names.discard)(name)
            self._offline = frozenset(names)
            previous = self._snapshot
            self._snapshot = replace(previous, offline=self._offline)
        self._notify(previous, self._snapshot)

    def promote(self, name: str | None) -> None:
        if name is not None:
            self._service.datasource(name)
        with self._lock:
            self._promoted = name
            previous = self._snapshot
            self._snapshot = replace(previous, promoted=name)
        self._notify(previous, self._snapshot)

    def update_service(self, service: Service) -> None:
        """Use a new definition of the service (registry reloaded) from the next round.

        While the monitor runs, the change waits for the start of the next round (in
        the monitor's thread), so a round never mixes two definitions.
        """
        with self._lock:
            if self._thread is not None:
                self._pending_service = service
                return
        self._apply_service(service)

    def _apply_service(self, service: Service) -> None:
        with self._lock:
            self._pending_service = None
            old = {ds.name: ds for ds in self._service.datasources}
            if service.monitor_credentials not in (None, self._credentials):
                # New monitoring credentials: every prober reconnects with them.
                self._credentials = service.monitor_credentials
                old = {}
            self._service = service
            for ds in service.datasources:
                if old.get(ds.name) != ds:
                    prober = self._probers.pop(ds.name, None)
                    if prober is not None:
                        prober.close()
            names = {ds.name for ds in service.datasources}
            for gone in set(self._probers) - names:
                self._probers.pop(gone).close()
            self._offline = self._offline & names
            health = {n: self._snapshot.health_of(n) for n in names}
            self._snapshot = replace(self._snapshot, service=service, health=health)

    # -- the loop ------------------------------------------------------------------

    def _run(self) -> None:
        followed = -math.inf
        #: When a follower last installed a publisher's round (wall clock).
        installed_at = -math.inf
        woken = False
        while not self._stop.is_set():
            started = self._clock()
            if _ticks.reads_registry(
                started - followed, self._service.monitor_interval, woken=woken
            ):
                followed = started
                self._follow_registry()
            woken = False
            service = self._service
            following = False
            try:
                account = self._credentials.user
                if self.share is not None and not self.share.lead(
                    service, started, account=account
                ):
                    following = True
                    self._stop_probing()
                    if self._follow(self.share):
                        installed_at = self._wall()
                else:
                    self.run_round()
            except Exception:  # a bug must not kill the monitor silently
                logger.exception("service %r: monitor round failed", self._service.name)
            # Rounds start on the wall clock's ticks, in every process and host alike
            # (see sqlrouter.routing._ticks); a follower looks just after each tick.
            interval, now = self._service.monitor_interval, self._wall()
            share = self.share
            if not following:
                self._kick.wait(_ticks.until_tick(interval, now))
            elif share is not None and share.wakes:
                # The publisher's write wakes this follower; the regular looks notice a
                # publisher that died, the end of its lease one that stalled.
                wait = _ticks.until_look(
                    interval, now, POLLS_WHEN_WOKEN, early=False, early_next=False
                )
                left = share.lease_left(self._clock())
                if not self._stop.is_set():  # stop() moves the counter after setting it
                    woken = share.wait(wait if left is None else min(wait, left + 0.001))
            else:
                # This tick's round is in: no early looks until the next tick.
                early = now // interval != installed_at // interval
                self._kick.wait(_ticks.until_look(interval, now, POLLS_PER_INTERVAL, early=early))
            self._kick.clear()

    def _follow(self, share: Share) -> bool:
        """A follower's turn: install the publisher's round if it is a new one (True)."""
        pending = self._pending_service
        if pending is not None:
            self._apply_service(pending)
        got = share.take()
        if got is None:
            return False
        taken_at, health = got
        service, promoted = self._service, self._promoted
        # Not installed if older than what this process routes on (its own last round,
        # before it followed; a late write of a replaced publisher).
        installed = self._install(service, health, promoted, taken_at)
        if installed is None:
            return False
        previous, snap = installed
        self._warn_split_brain(snap, mastership(snap))
        self._notify(previous, snap)
        return True

    def _stop_probing(self) -> None:
        """A follower probes nothing: close the monitoring connections (and so give up
        the heartbeat writer's lock) once it stops publishing."""
        if not self._probers:
            return
        if any(not f.done() for f in self._inflight.values()):
            return
        if self._heartbeat_future is not None and not self._heartbeat_future.done():
            return
        probers, self._probers = self._probers, {}
        self._inflight.clear()
        for prober in probers.values():
            prober.close()

    def _follow_registry(self) -> None:
        if self._refresh is None:
            return
        try:
            service = self._refresh()
        except Exception:  # a broken registry must not stop the probes
            logger.exception("service %r: reading the registry failed", self._service.name)
            return
        if service is not None and service != self._service:
            logger.info("service %r: registry changed, following it", service.name)
            self.update_service(service)

    def _prober(self, ds: DataSource) -> Prober:
        prober = self._probers.get(ds.name)
        if prober is None:
            prober = Prober(ds, self._service, self._credentials, self._connect, self._clock)
            self._probers[ds.name] = prober
        return prober

    def _apply_credentials(self) -> None:
        with self._lock:
            creds, self._pending_credentials = self._pending_credentials, None
            if creds is None or self._logged_in:
                return
            self._credentials = creds
            self._credentials_from = self._snapshot.generation + 1
            probers, self._probers = self._probers, {}
            self._inflight = {}
        for prober in probers.values():
            prober.close()

    def _note_logins(self, observations: Sequence[Observation]) -> None:
        """Whether this round's probes logged in: the credentials are then kept.

        Kept only while no server refuses them: one refusal (a password changed on the
        servers, seen where a monitoring session had to log in again) lets a connect's
        credentials replace them.
        """
        if self._fixed_credentials:
            return
        if any(o.error_code in AUTH_ERRNOS for o in observations):
            self._logged_in = False
        elif any(o.reachable for o in observations):
            self._logged_in = True

    def run_round(self) -> Snapshot:
        """Probe every datasource once (in parallel) and publish a new snapshot."""
        self._in_round = True
        started = self._clock()
        try:
            snap = self._round()
        finally:
            self._in_round = False
        if telemetry.observers and snap.taken_at >= started:
            failed = tuple(name for name, h in snap.health.items() if not h.reachable)
            telemetry.emit(
                telemetry.MonitorRound(snap.service.name, started, self._clock() - started, failed)
            )
        return snap

    def _round(self) -> Snapshot:
        if self._pending_credentials is not None:
            self._apply_credentials()
        pending = self._pending_service
        if pending is not None:
            self._apply_service(pending)
        service = self._service
        pool = self._pool
        if pool is None:
            raise RuntimeError("monitor is not started")
        try:
            for ds in service.datasources:
                if ds.name not in self._inflight:
                    self._inflight[ds.name] = pool.submit(self._prober(ds).probe)
        except RuntimeError:  # stop() shut the pool down under this round
            return self._snapshot
        futures = [self._inflight[ds.name] for ds in service.datasources]
        self._wait_probes(futures, service)
        observations = []
        for ds in service.datasources:
            fut = self._inflight[ds.name]
            if fut.done():
                del self._inflight[ds.name]
                observations.append(fut.result())
            else:
                observations.append(
                    Observation(
                        ds.name,
                        self._clock(),
                        reachable=False,
                        error=f"probe timed out after {service.probe_timeout:g}s",
                    )
                )
        self._note_logins(observations)
        return self.publish(observations)

    def _wait_probes(
        self, futures: Sequence[concurrent.futures.Future[Observation]], service: Service
    ) -> None:
        """Wait for the round's probes (``probe_timeout`` at most), renewing the shared
        snapshots' lease every interval meanwhile (a frozen server is no stall)."""
        deadline = time.monotonic() + service.probe_timeout + 0.2
        while True:
            left = deadline - time.monotonic()
            step = min(left, service.monitor_interval)
            _, pending = concurrent.futures.wait(futures, timeout=max(0.0, step))
            if not pending or left <= step:
                return
            if self.share is not None:
                self.share.renew(self._clock())

    def publish(self, observations: Sequence[Observation]) -> Snapshot:
        """Publish the snapshot of one round of ``observations`` (one per datasource).

        :meth:`run_round` calls it after probing.  The snapshot depends on these
        observations and the operator's state only: who the master is, the heartbeat
        target and the lag reference follow from :func:`~sqlrouter.routing.router.resolve_master`,
        never from earlier rounds.
        """
        service = self._service
        promoted = self._promoted
        health = compute_health(
            observations,
            service.datasources,
            promoted=promoted,
            monitor_interval=service.monitor_interval,
        )
        installed = self._install(service, health, promoted, None)
        if installed is None:  # never: a round of this process's is the newest
            return self._snapshot
        previous, snap = installed
        share = self.share
        if share is not None and (self._fixed_credentials or self._logged_in):
            # Only rounds whose probes logged in: a mistyped password of this process's
            # first connect must not be what the other processes see.
            share.publish(snap.taken_at, health, self._clock())
        elif share is not None:
            # Nor does it keep the file (and its followers) without rounds.
            share.step_down(self._clock(), "its probes have not logged in")
        m = mastership(snap)
        self._maybe_write_heartbeat(service, m)
        self._warn_split_brain(snap, m)
        self._notify(previous, snap)
        return snap

    def _install(
        self,
        service: Service,
        health: Mapping[str, Health],
        promoted: str | None,
        taken_at: float | None,
    ) -> tuple[Snapshot, Snapshot] | None:
        """Make a round's observations the current snapshot: (previous, new).
        ``taken_at``: when another process's round was taken (``None``: a round of this
        one, now); such a round no newer than the current snapshot is not installed."""
        with self._lock:
            previous = self._snapshot
            if taken_at is None:
                taken_at = self._clock()
            elif taken_at <= previous.taken_at:
                return None
            snap = Snapshot(
                service=service,
                health=health,
                offline=self._offline,
                promoted=promoted,
                taken_at=taken_at,
                generation=previous.generation + 1,
            )
            self._snapshot = snap
            self.rounds += 1
            self._round_done.notify_all()
        return previous, snap

    def _warn_split_brain(self, snap: Snapshot, m: Mastership) -> None:
        """Say (once per change) where writes go while a server that is not the master
        is writable."""
        key = (m.master.name if m.master else None, tuple(ds.name for ds in m.not_master))
        if key == self._warned:
            return
        was_split, self._warned = bool(self._warned[1]), key
        name = snap.service.name
        if m.not_master:
            where = f"writes go to {m.master.name} only" if m.master else "writes are refused"
            logger.warning(
                "service %r: writable servers: %s; %s: %s",
                name,
                ", ".join(ds.name for ds in m.writable),
                where,
                explain_master(snap),
            )
        elif was_split and m.master is not None:
            logger.info("service %r: %s is the only writable server again", name, m.master.name)

    def _notify(self, previous: Snapshot, snap: Snapshot) -> None:
        if self._on_snapshot is not None:
            try:
                self._on_snapshot(previous, snap)
            except Exception:
                logger.exception("service %r: snapshot listener failed", snap.service.name)

    def _maybe_write_heartbeat(self, service: Service, m: Mastership) -> None:
        """Write the heartbeat on the master the rule singles out, and nowhere else, if
        this process is the cluster's heartbeat writer (see ``Prober.write_heartbeat``);
        the heartbeat connections to other servers are closed (their lock with them)."""
        if not service.heartbeat.enabled or self._pool is None:
            return
        if self._heartbeat_future is not None and not self._heartbeat_future.done():
            return
        target = m.master.name if m.master is not None else None
        for name, other in self._probers.items():
            if name != target and other.has_heartbeat_connection:
                other.close_heartbeat()
        prober = self._probers.get(target) if target is not None else None
        if prober is None or not prober._heartbeat_ok:
            return
        # Half an interval after the tick, not now: the other hosts' probes run now.
        delay = _ticks.until_heartbeat(service.monitor_interval, self._wall())
        try:
            self._heartbeat_future = self._pool.submit(self._write_heartbeat, prober, delay)
        except RuntimeError:  # stop() shut the pool down under this round
            return

    def _write_heartbeat(self, prober: Prober, delay: float = 0.0) -> None:
        if delay > 0 and self._stop.wait(delay):
            return
        try:
            service = self._service
            prober.write_heartbeat(
                HEARTBEAT_TAKEOVER_INTERVALS * service.monitor_interval + service.probe_timeout
            )
        except (pymysql.err.MySQLError, OSError) as exc:
            logger.debug(
                "service %r: heartbeat write on %s failed: %s",
                self._service.name,
                prober.ds.name,
                describe_error(exc),
            )
