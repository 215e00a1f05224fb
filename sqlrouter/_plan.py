"""Connect plans: what every ``connect()`` of one URL does alike, made once.

``sqlrouter.connect(url)`` is called again and again with the same URL (a pool, a
request per connection).  Parsing it, finding its service, checking and completing
PyMySQL's keywords, choosing TLS and deciding the route on a snapshot do not change
from one call to the next: :func:`plan_for` keeps them in a :class:`ConnectPlan` per
URL and keywords, made again when what it depends on changes (the table of watched
services, ``$SQLROUTER_REGISTRY`` or the current directory for a relative registry).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Final

from . import _runtime
from ._connbase import credentials_of, parse_cached
from ._connrules import complete_args
from ._pymysql import SSL_ENABLED
from ._runtime import REGISTRY_ENV_VAR, handle_for, registry_inputs
from .qos import QoS
from .routing.health import Snapshot
from .routing.router import Route
from .routing.service import REFRESH_EVERY, ServiceHandle
from .topology import Credentials
from .url import Consistency, ServiceURL

__all__ = ["MAX_PLANS", "ConnectPlan", "plan_for"]


@dataclass(slots=True, eq=False)
class ConnectPlan:
    """What every ``connect()`` of one parsed URL to one watched service does alike, made
    once: PyMySQL's keywords (checked and completed: the TLS choice, session tracking),
    the credentials, and the route of a first attempt without a session token on the
    last snapshot it was decided on (routes are pure: a new snapshot decides anew).

    Nothing in it belongs to a process: a forked child uses its parent's plans with its
    own handle (the same object, restarted there: see ``_runtime``) and its own
    snapshots.
    """

    url: ServiceURL
    handle: ServiceHandle
    credentials: Credentials
    #: PyMySQL's ``Connection.__init__`` keywords (the password among them: not shown).
    args: dict[str, Any] = field(repr=False)
    #: TLS PREFERRED with the context built once per process (see Connection).
    preferred_tls: bool
    relaxed: bool
    #: ``consistency=session`` without a ``causal_token``: a connection's session is the
    #: current one (``with sqlrouter.session()``) or its own, new and empty.
    own_or_current_session: bool
    #: The least time an attempt to connect may take: ``min(1, connect_timeout)``.
    grace: float
    #: :func:`sqlrouter._runtime.registry_inputs` and ``table_version`` when the handle
    #: was found: the plan is made again when they change.
    inputs: tuple[str | None, str] | None = None
    table_version: int = -1
    #: The route of :func:`sqlrouter._attempts.plain_policy` on a snapshot.
    kept: tuple[Snapshot, Route] | None = None

    @classmethod
    def make(
        cls,
        url: ServiceURL,
        handle: ServiceHandle,
        credentials: Credentials | None = None,
        *,
        inputs: tuple[str | None, str] | None = None,
        table_version: int = -1,
    ) -> ConnectPlan:
        args: dict[str, Any] = dict(url.connect_args)
        complete_args(url, args)
        # TLS: PyMySQL's default is PREFERRED, with a new SSL context built at every
        # connection (it loads the system's CA bundle: tens of milliseconds).  sqlrouter
        # keeps PREFERRED and builds that same context once per process.
        preferred_tls = SSL_ENABLED and not any(k == "ssl" or k.startswith("ssl_") for k in args)
        if preferred_tls:
            args["ssl_disabled"] = True
        given = {
            "user": url.user,
            "password": url.password or "",
            "database": url.database,
            "connect_timeout": url.connect_timeout,
            "read_timeout": url.read_timeout,
            "write_timeout": url.write_timeout,
            "defer_connect": True,
        }
        for name in args:
            if name in given:  # as a call with both would say
                raise TypeError(f"got multiple values for keyword argument {name!r}")
        return cls(
            url=url,
            handle=handle,
            credentials=credentials or credentials_of(url.user or "", url.password or ""),
            args={**given, **args},
            preferred_tls=preferred_tls,
            relaxed=url.qos is QoS.RO_RELAXED,
            own_or_current_session=url.consistency is Consistency.SESSION and not url.causal_token,
            grace=min(1.0, url.connect_timeout),
            inputs=inputs,
            table_version=table_version,
        )


def plan_for(url: str | ServiceURL | None, kwargs: dict[str, Any]) -> ConnectPlan:
    """The plan of ``connect(url, **kwargs)``: the one kept, or a new one."""
    key: tuple[object, ...] | None = None
    plan: ConnectPlan | None = None
    if url is None or type(url) is str:
        key = (url, *kwargs.items())
        try:
            plan = _plans.get(key)
        except TypeError:  # an unhashable keyword value (an ssl dict, say)
            key = None
    if (
        plan is None
        or plan.table_version != _runtime.table_version
        or (
            plan.inputs is not None
            and plan.inputs != (os.environ.get(REGISTRY_ENV_VAR), os.getcwd())
        )
    ):
        plan = _plan(url, kwargs, key)
    else:
        handle = plan.handle
        # As handle_for: the registry's changes are looked at most twice a second.
        now = time.monotonic()
        if now >= handle.refresh_after:
            handle.refresh_after = now + REFRESH_EVERY
            handle.refresh()
    return plan


#: The connect plans of the URLs (and keywords) ``connect()`` was called with.
_plans: dict[tuple[object, ...], ConnectPlan] = {}
#: The most plans kept (past it, they are all forgotten and made again on use).
MAX_PLANS: Final = 128


def _plan(
    url: str | ServiceURL | None, kwargs: dict[str, Any], key: tuple[object, ...] | None
) -> ConnectPlan:
    """The plan of ``connect(url, **kwargs)``, made (and kept under ``key``)."""
    parsed = parse_cached(url, kwargs)
    inputs = registry_inputs(parsed.registry)
    version = _runtime.table_version
    creds = credentials_of(parsed.user or "", parsed.password or "")
    handle = handle_for(parsed.registry, parsed.service, creds)
    plan = ConnectPlan.make(parsed, handle, creds, inputs=inputs, table_version=version)
    if key is not None:
        if len(_plans) >= MAX_PLANS:
            _plans.clear()
        _plans[key] = plan
    return plan
