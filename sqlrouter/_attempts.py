"""One ``connect()``'s attempts: the decisions between them and the errors they end with.

No I/O: the connection (:mod:`sqlrouter.connection`, or :mod:`sqlrouter.aio`'s) does the
connecting and the waiting; everything it decides on the way is here, once for both:
which datasource an attempt goes to (:func:`decide`), what a failed attempt means
(:func:`connect_failed`), how long attempts go on (:func:`retry_arguments`), and the
errors a connect ends with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import tenacity

from ._connstate import ConnState
from .errors import (
    AUTH_ERRNOS,
    ER_NO_REPLICA,
    Error,
    NoMasterAvailable,
    NoReplicaAvailable,
    OperationalError,
    RoutingError,
)
from .gtid import EMPTY
from .qos import QoS
from .routing.health import Snapshot
from .routing.router import Decision, Policy, logins_refused, observed_master
from .telemetry import Reason, Routed, Verdict
from .topology import DataSource
from .url import ServiceURL

__all__ = [
    "FAILOVER_POLL",
    "Attempt",
    "Chooser",
    "TryAgain",
    "auth_error",
    "connect_failed",
    "decide",
    "not_caught_up",
    "plain_policy",
    "policy_for",
    "refused_everywhere",
    "retry_arguments",
    "routed",
    "stale_after_connect",
    "stale_since",
    "with_failures",
]

#: How often a RW_STRICT connect re-reads the snapshot while waiting for a master.
FAILOVER_POLL: Final = 0.05


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
    #: When the connect began (``time.monotonic()``).
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, url: ServiceURL, *, exclude: frozenset[str], allow_wait: bool) -> Attempt:
        """The first attempt of a connect with ``url``'s ``connect_timeout``."""
        now = time.monotonic()
        return cls(
            deadline=now + url.connect_timeout,
            grace=min(1.0, url.connect_timeout),
            exclude=exclude,
            allow_wait=allow_wait,
            started=now,
        )

    def left(self) -> float:
        """The time an attempt to connect may take (at least ``grace``)."""
        return max(self.deadline - time.monotonic(), self.grace)


def policy_for(
    url: ServiceURL,
    state: ConnState,
    snapshot: Snapshot,
    exclude: frozenset[str],
    *,
    allow_wait: bool = True,
) -> Policy:
    """What a connection of ``url`` asks of the router now."""
    max_lag = url.max_lag if url.max_lag is not None else snapshot.service.max_lag
    session = state.session
    return Policy(
        qos=url.qos,
        max_lag=max_lag,
        fallback=url.fallback,
        token=session.token if session is not None else EMPTY,
        allow_wait=allow_wait,
        exclude=exclude,
    )


def plain_policy(url: ServiceURL, snapshot: Snapshot) -> Policy:
    """What the first attempt of a connection of ``url`` asks of the router when its
    session has no token (:func:`policy_for` with nothing excluded and waits allowed)."""
    return Policy(
        qos=url.qos,
        max_lag=url.max_lag if url.max_lag is not None else snapshot.service.max_lag,
        fallback=url.fallback,
    )


def retry_arguments(url: ServiceURL, attempt: Attempt, datasources: int) -> dict[str, Any]:
    """The keywords of tenacity's ``Retrying`` (or ``AsyncRetrying``) for the attempts of
    a connect after its first failed with :class:`TryAgain`.

    - RW_STRICT retries while no writable master exists or it refuses connections,
      every 50 ms, for up to ``failover_timeout`` seconds (0: one attempt).
    - RO_RELAXED moves to the next qualifying datasource (then the master, with
      ``fallback=master``) when one does not answer, with no pause; each attempt is
      bounded by what is left of ``connect_timeout`` and by at least
      ``min(1, connect_timeout)`` seconds, so one frozen server costs at most
      ``connect_timeout + 1`` seconds.
    """
    spent = time.monotonic() - attempt.started
    common: dict[str, Any] = {
        "retry": tenacity.retry_if_exception_type(TryAgain),
        "reraise": True,
    }
    if url.qos is QoS.RW_STRICT:
        return {
            "stop": tenacity.stop_after_delay(max(0.0, url.failover_timeout - spent)),
            "wait": tenacity.wait_fixed(FAILOVER_POLL),
            **common,
        }
    return {
        "stop": tenacity.stop_after_delay(max(0.0, url.connect_timeout + attempt.grace - spent))
        | tenacity.stop_after_attempt(2 * datasources + 2),
        **common,
    }


#: The router's decision at the next turn (``ServiceHandle.choose``: routes decided on one
#: snapshot are kept, so a connect on the same snapshot only picks its turn).
Chooser = Callable[[Snapshot, Policy], Decision]


def decide(
    url: ServiceURL,
    state: ConnState,
    snapshot: Snapshot,
    attempt: Attempt,
    chooser: Chooser,
    *,
    refused_in: Callable[[Snapshot], tuple[int, str] | None] = logins_refused,
) -> Decision:
    """Where this attempt connects; :class:`TryAgain` (no master yet) or the error that
    ends the connect."""
    refused = refused_everywhere(snapshot, refused_in)
    if refused is not None:
        raise refused
    policy = policy_for(url, state, snapshot, attempt.exclude, allow_wait=attempt.allow_wait)
    try:
        return chooser(snapshot, policy)
    except NoMasterAvailable as exc:
        raise TryAgain(with_failures(exc, attempt.failures)) from None
    except RoutingError as exc:
        if attempt.auth_failures and len(attempt.auth_failures) == len(attempt.failures):
            raise auth_error(url, attempt.auth_errno, attempt.auth_failures) from None
        raise with_failures(exc, attempt.failures) from None


def connect_failed(
    url: ServiceURL, ds: DataSource, exc: OperationalError, attempt: Attempt
) -> TryAgain:
    """What a failed connection to ``ds`` means: the :class:`TryAgain` to raise, or
    (a refused login on the master) the error that ends the connect, raised."""
    failure = f"{ds.name} ({ds.host}:{ds.port}): {exc.args[-1]}"
    attempt.failures.append(failure)
    if exc.args[0] in AUTH_ERRNOS:
        # A refused login: no wait or retry changes it (another replica may know
        # the user, so a relaxed connect tries the others before it fails).
        attempt.auth_errno = exc.args[0]
        attempt.auth_failures.append(failure)
        if url.qos is QoS.RW_STRICT:
            raise auth_error(url, exc.args[0], [failure]) from exc
    if url.qos is QoS.RW_STRICT:
        return TryAgain(
            OperationalError(
                exc.args[0],
                f"service {url.service!r}: cannot connect to the master "
                f"{ds.name} ({ds.host}:{ds.port}): {exc.args[-1]}",
            )
        )
    attempt.exclude = attempt.exclude | {ds.name}
    return TryAgain(
        OperationalError(
            exc.args[0],
            f"service {url.service!r}: no connection within connect_timeout "
            f"{url.connect_timeout:g}s: {'; '.join(attempt.failures)}",
        )
    )


def not_caught_up(url: ServiceURL, ds: DataSource, attempt: Attempt) -> TryAgain:
    """The replica did not reach the session's token in time: the next attempt goes to
    a server that needs no wait."""
    attempt.allow_wait = False
    return TryAgain(
        NoReplicaAvailable(
            ER_NO_REPLICA,
            f"service {url.service!r}: {ds.name} did not reach the session's "
            f"token within consistency_wait {url.consistency_wait:g}s",
            service=url.service,
        )
    )


def auth_error(url: ServiceURL, errno: int, failures: list[str]) -> OperationalError:
    where = "the master" if url.qos is QoS.RW_STRICT else "every server tried"
    return OperationalError(
        errno,
        f"service {url.service!r}: authentication failed on {where} for user "
        f"{url.user!r}: {'; '.join(failures)}; not retried (check the user and password)",
    )


def refused_everywhere(
    snapshot: Snapshot, refused_in: Callable[[Snapshot], tuple[int, str] | None] = logins_refused
) -> OperationalError | None:
    """The error to raise when the monitor's own logins were refused by every server:
    nothing can be observed, so nothing can be routed, and the cause is the account
    (see :func:`sqlrouter.routing.router.logins_refused`, or ``refused_in``: the same,
    remembered per snapshot by the service's handle)."""
    refused = refused_in(snapshot)
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


def stale_since(
    url: ServiceURL, routed_on: Snapshot, latest: Snapshot, ds: DataSource
) -> str | None:
    """Why a connection that was routed on ``routed_on`` and just opened on ``ds`` is
    invalid already, if it is: a newer snapshot replaced that one while it connected,
    and an event published meanwhile may not have seen the connection."""
    if latest.generation == routed_on.generation:
        return None
    return stale_after_connect(latest, ds, writes=url.qos is QoS.RW_STRICT)


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
