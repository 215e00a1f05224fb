"""Topology operations on the real servers: switchover (planned) and failover (master dead).

Both connect to every datasource of a :class:`~sqlrouter.topology.Service` with its
administrative credentials (``[services.NAME.admin]``), inspect what each server really
is, build a :class:`Plan`, then (unless ``dry_run``) run it step by step, reporting each
:class:`Step` as it ends.  Nothing here tells running applications anything: roles are
observed, not configured, so every process's monitor sees the new master within one
monitor interval.

:func:`switchover` (the master is alive)::

    old master   SET GLOBAL read_only=1           application writes stop; waits (bounded)
                                                  for statements and commits in progress
    candidate    MASTER_GTID_WAIT(old master's @@gtid_binlog_pos)
    candidate    STOP SLAVE; semi-sync master on
    old master   semi-sync master off; CHANGE MASTER TO candidate,
                 MASTER_USE_GTID=slave_pos, MASTER_DEMOTE_TO_SLAVE=1; START SLAVE
    replicas     STOP SLAVE; CHANGE MASTER TO candidate; START SLAVE
    candidate    SET GLOBAL read_only=0            the point of no return
    candidate    RESET SLAVE ALL; old master: application sessions disconnected
    everyone     verified: one writable master, every replica replicating from it

A failure before the point of no return rolls every step back (the old master is
writable again, nothing else changed); after it, the error says what is left to fix.

:func:`failover` (the master is dead): check that it is dead (refused connections, not
a slow answer), start the stopped SQL threads, then stop every IO thread so that what
the replicas hold stops changing (in that order: MariaDB discards the relay log of a GTID
replica whose two threads are stopped when one starts), let each replica apply its relay
log, choose the replica whose history contains every other replica's position, promote
it and repoint the others to it.  With MariaDB's
semi-synchronous replication (wait point ``AFTER_SYNC``), every commit acknowledged to a
client was received by at least one replica, so the chosen replica has all of them.
When no replica contains every other's position (the histories diverged), failover
refuses, naming the transactions that would be lost, unless ``force=True``.

docs/operations.md describes both procedures, what a cluster without semi-sync can
lose, and how it is reported.  No password ever appears in a plan, a step, a log line
or an error.
"""

from __future__ import annotations

from ._failover import failover
from ._failover_plan import plan_failover
from ._history import Candidate, Choice, choose_candidate
from ._servers import Connected, accepted
from ._steps import ER_TOPOLOGY, Plan, Step, StepKind, TopologyError
from ._switchover import plan_switchover, switchover

__all__ = [
    "ER_TOPOLOGY",
    "Candidate",
    "Choice",
    "Connected",
    "Plan",
    "Step",
    "StepKind",
    "TopologyError",
    "accepted",
    "choose_candidate",
    "failover",
    "plan_failover",
    "plan_switchover",
    "switchover",
]
