"""What changed between two snapshots of a service, as :mod:`sqlrouter.events` (pure).

The watched service (:mod:`sqlrouter.routing.service`) calls :func:`diff` after each
monitor round and each operator change, invalidates the connections the change made
wrong, and publishes the events.  Who the master is before and after follows from the
routing rule (:func:`~sqlrouter.routing.router.observed_master`).
"""

from __future__ import annotations

from ..events import Event
from .health import Snapshot
from .router import observed_master

__all__ = ["diff"]


def diff(previous: Snapshot, current: Snapshot) -> list[Event]:
    """The events that lead from ``previous`` to ``current`` (pure).

    A first snapshot (``previous.generation == 0``, nothing observed yet) yields no
    ``down``/``up`` events, only what a pool needs: nothing.
    """
    if previous.generation == 0:
        return []
    service = current.service.name
    events: list[Event] = []
    old_master = observed_master(previous)
    new_master = observed_master(current)
    old_name = old_master.name if old_master else None
    new_name = new_master.name if new_master else None
    if old_name != new_name:
        events.append(Event("master_changed", service, new_name, previous=old_name))
    max_lag = current.service.max_lag
    for ds in current.service.datasources:
        before = previous.health.get(ds.name)
        after = current.health_of(ds.name)
        if before is None:
            continue
        if before.reachable and not after.reachable:
            events.append(Event("datasource_down", service, ds.name, detail=after.error or ""))
        elif not before.reachable and after.reachable and before.observed_at > 0:
            events.append(Event("datasource_up", service, ds.name))
        if after.reachable and after.replicating:
            was_over = before.lag is None or before.lag > max_lag
            is_over = after.lag is None or after.lag > max_lag
            if is_over and not was_over:
                lag = "unknown" if after.lag is None else f"{after.lag:.2f}s"
                events.append(
                    Event("lag_exceeded", service, ds.name, detail=f"lag {lag} > {max_lag:g}s")
                )
            elif was_over and not is_over and before.reachable:
                events.append(Event("lag_recovered", service, ds.name))
    for name in sorted(current.offline - previous.offline):
        events.append(Event("datasource_offline", service, name, detail="operator"))
    for name in sorted(previous.offline - current.offline):
        events.append(Event("datasource_online", service, name, detail="operator"))
    return events
