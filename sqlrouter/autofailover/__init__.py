"""Opt-in automatic failover, decided by agreement and coordinated through etcd.

Run by ``sqlrouter agent`` processes only, never by applications: each agent runs a
:class:`Runner` per service whose registry entry enables it
(``[services.NAME.autofailover] enabled = true``).  The agents register in etcd under
leases and elect one leader per service; the leader declares the master dead only when
its own probes failed for ``rounds`` rounds, a majority of ``min_agents`` agents cannot reach
it and the replicas' IO threads lost it (:mod:`.decision`, pure); it then runs the
existing failover (:func:`sqlrouter.switchover.failover`), checking its lease and term
before every step, and publishes the outcome in etcd (:mod:`.store`).  An old master
that comes back writable is made read-only by the first agent that sees it.  See
docs/autofailover.md.

The entry points for an agent process::

    runners = sqlrouter.autofailover.start_runners(registry)   # the opted-in services
    ...
    for r in runners:
        r.stop()

or, in ``sqlrouter agent`` (:class:`sqlrouter.agent.Agent`)::

    agent.add_task(AutofailoverTask())
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..control.commands import add_status_part, remove_status_part
from ..registry import Registry
from ..registry.find import find_registry
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
    "AutofailoverTask",
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


class _AgentLike(Protocol):
    """What :class:`AutofailoverTask` needs of ``sqlrouter.agent.Agent``."""

    registry_spec: str
    only: tuple[str, ...]


class AutofailoverTask:
    """The automatic failover of an ``sqlrouter agent``: a task of its ``add_task``.

    ``start(agent)`` starts a :class:`Runner` for each service of the agent's registry
    that opts in (among the agent's ``only`` services, when it names some); ``stop``
    stops them within ``timeout`` seconds in all.  Services added to the registry later
    are not followed: restart the agent.
    """

    name = "autofailover"

    def __init__(
        self,
        *,
        agent_id: str | None = None,
        find: Callable[[str | None], Registry] = find_registry,
    ) -> None:
        self.agent_id = agent_id
        self._find = find
        self.runners: list[Runner] = []

    def __repr__(self) -> str:
        return f"<AutofailoverTask {[r.service.name for r in self.runners]}>"

    def start(self, agent: _AgentLike) -> None:
        registry = self._find(agent.registry_spec)
        names = [n for n in opted_in(registry) if not agent.only or n in agent.only]
        self.runners = start_runners(registry, services=names, agent=self.agent_id)
        add_status_part(self.name, self.status_of)

    def status_of(self, service: str) -> dict[str, Any] | None:
        """This agent's part in ``service``'s automatic failover (``sqlrouter admin status``)."""
        for r in self.runners:
            if r.service.name == service:
                return r.status()
        return None

    def stop(self, timeout: float) -> None:
        remove_status_part(self.name)
        runners, self.runners = self.runners, []
        deadline = time.monotonic() + timeout
        for r in runners:
            r.stop(max(0.1, (deadline - time.monotonic()) / max(1, len(runners))))


_PUBLIC: tuple[type, ...] = (
    AgentView,
    AutofailoverTask,
    Decision,
    Detection,
    History,
    ReplicaView,
    Round,
    Runner,
    Store,
    StoreError,
)
for _cls in _PUBLIC:
    _cls.__module__ = __name__
