"""The snapshots an observer reports on: this process's watched services by default."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .._runtime import handles
from ..routing.health import Snapshot

__all__ = ["Snapshots", "latest", "watched_snapshots"]

#: Where the health endpoint and the metrics read the monitors' snapshots from.
Snapshots = Callable[[], Iterable[Snapshot]]


def watched_snapshots() -> list[Snapshot]:
    """The latest snapshot of each service this process watches (none before its first
    round: a service not observed yet has nothing to report)."""
    return [s for h in handles() if (s := h.monitor.snapshot).generation > 0]


def latest(snapshots: Iterable[Snapshot]) -> dict[str, Snapshot]:
    """One snapshot per service name, the newest (a process may watch a service through
    two registries)."""
    found: dict[str, Snapshot] = {}
    for snap in snapshots:
        name = snap.service.name
        other = found.get(name)
        if other is None or snap.taken_at > other.taken_at:
            found[name] = snap
    return dict(sorted(found.items()))
