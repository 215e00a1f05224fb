"""One ``connect()``'s attempts: what they carry from one to the next, and the errors
they end with (no I/O: the connection does the connecting)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Error, NoMasterAvailable, OperationalError, RoutingError
from .gtid import EMPTY
from .qos import QoS
from .routing.health import Snapshot
from .routing.router import Decision, Policy, logins_refused, observed_master
from .telemetry import Reason, Routed, Verdict
from .topology import DataSource
from .url import ServiceURL

__all__ = [
    "Attempt",
    "TryAgain",
    "auth_error",
    "refused_everywhere",
    "routed",
    "stale_after_connect",
    "with_failures",
]


class TryAgain(Exception):
    """An attempt failed in a way another attempt may fix; ``error`` if none does."""

    def __init__(self, error: Error) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class Attempt:
    """The state one connect() carries from attempt to attempt."""

    deadline: float
    grace: float
    exclude: frozenset[str]
    allow_wait: bool
    failures: list[str] = field(default_factory=list)
    #: The failures that were refused logins, and the last such errno.
    auth_failures: list[str] = field(default_factory=list)
    auth_errno: int = 1045


def auth_error(url: ServiceURL, errno: int, failures: list[str]) -> OperationalError:
    where = "the master" if url.qos is QoS.RW_STRICT else "every server tried"
    return OperationalError(
        errno,
        f"service {url.service!r}: authentication failed on {where} for user "
        f"{url.user!r}: {'; '.join(failures)}; not retried (check the user and password)",
    )


def refused_everywhere(snapshot: Snapshot) -> OperationalError | None:
    """The error to raise when the monitor's own logins were refused by every server:
    nothing can be observed, so nothing can be routed, and the cause is the account
    (see :func:`sqlrouter.routing.router.logins_refused`)."""
    refused = logins_refused(snapshot)
    if refused is None:
        return None
    errno, message = refused
    return OperationalError(errno, message)


def stale_after_connect(snapshot: Snapshot, ds: DataSource, *, writes: bool) -> str | None:
    """Why a connection just opened on ``ds`` is already invalid, if it is."""
    if ds.name in snapshot.offline:
        return f"{ds.name} was taken offline by an operator"
    if not snapshot.health_of(ds.name).reachable:
        return f"{ds.name} went down"
    if writes:
        master = observed_master(snapshot)
        if master is None or master.name != ds.name:
            return f"{ds.name} is no longer the master"
    return None


def with_failures(exc: RoutingError, failures: list[str]) -> RoutingError:
    """``exc`` with the failed connection attempts of this connect added to its message."""
    if not failures:
        return exc
    return type(exc)(
        exc.args[0],
        f"{exc.args[1]}; connection attempts failed: {'; '.join(failures)}",
        service=exc.service,
    )


def routed(
    url: ServiceURL,
    snapshot: Snapshot,
    policy: Policy | None,
    decision: Decision | None,
    *,
    started: float,
    ended: float,
    error: Error | None = None,
    server_version: str = "",
) -> Routed:
    """The telemetry record of one attempt (:class:`sqlrouter.telemetry.Routed`):
    ``decision`` ``None`` when the router refused with ``error``."""
    verdict: Verdict
    reason: Reason
    ds = decision.datasource if decision is not None else None
    if decision is None:
        verdict = "refused"
        if policy is None:
            reason = "auth"
        elif snapshot.generation > 0 and snapshot.age(ended) > snapshot.max_age:
            reason = "stale"
        else:
            reason = "no_master" if isinstance(error, NoMasterAvailable) else "no_replica"
    elif decision.is_fallback:
        verdict, reason = "fallback", "token" if decision.for_token else "no_replica"
    else:
        verdict, reason = ("master" if decision.on_master else "replica"), "ok"
    token = policy.token if policy is not None else None
    covered: bool | None = None
    if ds is not None and token and decision is not None and not decision.on_master:
        covered = decision.needs_wait is None
    if error is not None:
        detail = str(error.args[-1])
    else:
        detail = decision.reason if decision is not None else ""
    return Routed(
        service=url.service,
        qos=url.qos.value,
        verdict=verdict,
        reason=reason,
        datasource=ds,
        detail=detail,
        connected=decision is not None and error is None,
        started=started,
        duration=ended - started,
        lag=snapshot.health_of(ds.name).lag if ds is not None else None,
        token=token if token is not None else EMPTY,
        token_covered=covered,
        database=url.database or "",
        server_version=server_version,
        error=str(error.args[-1]) if error is not None else "",
    )
