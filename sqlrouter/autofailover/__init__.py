"""Opt-in automatic failover, decided by agreement and coordinated through etcd.

Run by ``sqlrouter agent`` processes only, never by applications: each agent runs a
:class:`Runner` per service whose registry entry enables it
(``[services.NAME.autofailover] enabled = true``).  The agents register in etcd under
leases and elect one leader per service; the leader declares the master dead only when
its own probes failed for ``rounds`` rounds, a majority of the live agents cannot reach
it and the replicas' IO threads lost it (:mod:`.decision`, pure); it then runs the
existing failover (:func:`sqlrouter.switchover.failover`), checking its lease and term
before every step, and publishes the outcome in etcd (:mod:`.store`).  An old master
that comes back writable is made read-only by the first agent that sees it.  See
docs/autofailover.md.

The entry point for an agent process::

    runners = sqlrouter.autofailover.start_runners(registry)   # the opted-in services
    ...
    for r in runners:
        r.stop()
"""

from __future__ import annotations

from collections.abc import Sequence

from ..registry import Registry
from ._observe import Address, registry_address
from .decision import (
    AgentView,
    Decision,
    Detection,
    History,
    ReplicaView,
    Round,
    Verdict,
    decide,
)
from .runner import Runner
from .store import Store, StoreError, acknowledge, read_status

__all__ = [
    "Address",
    "AgentView",
    "Decision",
    "Detection",
    "History",
    "ReplicaView",
    "Round",
    "Runner",
    "Store",
    "StoreError",
    "Verdict",
    "acknowledge",
    "decide",
    "opted_in",
    "read_status",
    "start_runners",
]


def opted_in(registry: Registry) -> list[str]:
    """The services of ``registry`` whose automatic failover is enabled."""
    return [n for n in registry.services() if registry.lookup(n).autofailover.enabled]


def start_runners(
    registry: Registry,
    *,
    services: Sequence[str] | None = None,
    agent: str | None = None,
    address: Address = registry_address,
) -> list[Runner]:
    """Start a :class:`Runner` for each opted-in service (or each of ``services``).

    What ``sqlrouter agent`` calls; stop each runner with :meth:`Runner.stop`.
    """
    names = list(services) if services is not None else opted_in(registry)
    runners: list[Runner] = []
    try:
        for name in names:
            runners.append(Runner(registry.lookup(name), agent=agent, address=address).start())
    except BaseException:
        for r in runners:
            r.stop()
        raise
    return runners


for _cls in (
    AgentView,
    Decision,
    Detection,
    History,
    ReplicaView,
    Round,
    Runner,
    Store,
    StoreError,
):
    _cls.__module__ = __name__
