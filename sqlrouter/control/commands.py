"""What each control command does, on the watched services of this process.

:class:`Commands` is given the services to act on (``handles``) and the lookup of the
one a ``registry=`` spec names (``watched``) by its owner: the control package never
imports the process-wide table, which starts it."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from .. import telemetry
from ..errors import ProgrammingError
from ..qos import QoS
from ..registry.base import Registry
from ..routing.explain import explain_handle, snapshot_rows
from ..routing.health import Health, Snapshot
from ..routing.router import Policy, explain_master, mastership, observed_master
from ..routing.service import ServiceHandle
from ..url import parse_url
from .protocol import ControlError, Request, RequestError, error_response

__all__ = [
    "Commands",
    "Handles",
    "Listening",
    "Watched",
]

logger = logging.getLogger("sqlrouter.control")

#: The longest one wait for a monitor round lasts, so that a stopping server is seen.
_TICK: Final = 0.5


def _role_of(name: str, h: Health, master: str | None) -> str:
    """What a datasource is observed to be: master, replica, writable, read_only, ..."""
    if not h.reachable:
        return "unreachable"
    if name == master:
        return "master"
    if h.read_only is False:
        return "writable"  # writable and not the master: split brain
    return "replica" if h.replicating else "read_only"


#: Parts of this process that add to a service's status (an agent's automatic failover):
#: name -> a function of the service's name, returning what to show, or ``None``.
_STATUS_PARTS: dict[str, Callable[[str], Mapping[str, Any] | None]] = {}


def add_status_part(name: str, part: Callable[[str], Mapping[str, Any] | None]) -> None:
    """Show what ``part`` returns for each service under ``parts[name]`` of ``status``."""
    _STATUS_PARTS[name] = part


def remove_status_part(name: str) -> None:
    _STATUS_PARTS.pop(name, None)


def _parts(service: str) -> dict[str, Any]:
    out = {}
    for name, part in list(_STATUS_PARTS.items()):
        try:
            shown = part(service)
        except Exception:  # a part's bug must not break status
            logger.exception("status part %r failed", name)
            continue
        if shown is not None:
            out[name] = dict(shown)
    return out


def _service_status(handle: ServiceHandle, now: float) -> dict[str, Any]:
    snap: Snapshot = handle.monitor.snapshot
    service = snap.service
    m = mastership(snap)
    master_name = m.master.name if m.master is not None else None
    rows = snapshot_rows(snap, Policy(qos=QoS.RO_RELAXED, max_lag=service.max_lag))
    conns = handle.open_connections()
    datasources = []
    for ds, row in zip(service.datasources, rows, strict=True):
        h = snap.health_of(ds.name)
        datasources.append(
            {
                "name": ds.name,
                "address": ds.address,
                "declared": ds.role.value,
                "role": _role_of(ds.name, h, master_name),
                "admin": row["admin"],
                "reachable": h.reachable,
                "read_only": h.read_only,
                "io_running": h.io_running,
                "sql_running": h.sql_running,
                "lag": h.lag,
                "lag_source": h.lag_source or None,
                "gtid": row["gtid"] or None,
                "weight": ds.weight,
                "open_connections": conns.get(ds.name, 0),
                "error": h.error,
                "verdict": row["verdict"],
            }
        )
    return {
        "service": service.name,
        "registry": handle.registry.describe(),
        "registry_error": handle.registry.last_error,
        "max_lag": service.max_lag,
        "overrides": handle.overrides,
        "master": master_name,
        "promoted": snap.promoted,
        "offline": sorted(snap.offline),
        "split_brain": [ds.name for ds in m.not_master],
        "monitor": {
            "running": handle.monitor.running,
            "rounds": handle.monitor.rounds,
            "generation": snap.generation,
            "snapshot_age": round(now - snap.taken_at, 3) if snap.taken_at else None,
            "shared": share.describe(now) if (share := handle.monitor.share) else None,
            "heartbeat_writer": handle.monitor.heartbeat_writer,
        },
        "open_connections": sum(conns.values()),
        "datasources": datasources,
        "parts": _parts(service.name),
    }


def _settle(handle: ServiceHandle, timeout: float, stopping: threading.Event) -> None:
    """Wait (bounded) until the monitor uses the service last given to it.

    The monitor applies a new definition at the start of its next round: once this
    returns, new connections route with it.  Gives up at once when ``stopping`` is set.
    """
    deadline = time.monotonic() + timeout
    monitor = handle.monitor
    while monitor.service != handle.wanted and monitor.running and not stopping.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        monitor.wait_for_round(timeout=min(remaining, _TICK))


def _settle_timeout(handle: ServiceHandle) -> float:
    service = handle.wanted
    return min(10.0, 2 * (service.monitor_interval + service.probe_timeout) + 1.0)


#: The services a control socket acts on (every service this process watches).
Handles = Callable[[], list[ServiceHandle]]
#: The service a ``connect()`` with this ``registry=`` spec uses now, without finding
#: anything new (see ``sqlrouter._runtime.watched``); ``None`` when there is none.
Watched = Callable[[str | None, str], ServiceHandle | None]


class Listening(Protocol):
    """What the commands need of the server that runs them."""

    socket_path: Path | None
    tcp_address: tuple[str, int] | None
    #: Set when the server stops: commands waiting for a monitor give up.
    stopping: threading.Event

    def reload_tokens(self) -> None: ...


class Commands:
    """What each command does, on the services ``handles`` gives."""

    def __init__(
        self,
        handles: Handles,
        watched: Watched,
        server: Listening | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handles = handles
        self._watched = watched
        self._server = server
        self._clock = clock
        self._stopping = threading.Event() if server is None else server.stopping
        #: The error each registry had at the last ``reload`` (to say when it is fixed).
        self._reload_errors: dict[str, str] = {}

    def run(self, request: Request) -> dict[str, Any]:
        """The response to ``request`` (never raises)."""
        response = self._run(request)
        if telemetry.observers:
            telemetry.emit(telemetry.ControlCommand(request.cmd, bool(response.get("ok"))))
        return response

    def _run(self, request: Request) -> dict[str, Any]:
        try:
            result = getattr(self, f"cmd_{request.cmd}")(request.args)
        except RequestError as exc:
            exc.request_id = request.id
            return exc.response()
        except Exception as exc:  # a bug must not kill the control thread
            logger.exception("control: %s failed", request.cmd)
            return error_response("internal", f"{type(exc).__name__}: {exc}", request.id)
        response: dict[str, Any] = {"ok": True}
        if request.id is not None:
            response["id"] = request.id
        response.update(result)
        return response

    # -- helpers ---------------------------------------------------------------------

    def _by_service(self, service: str | None) -> list[ServiceHandle]:
        handles = self._handles()
        if service is None:
            return handles
        found = [h for h in handles if h.name == service]
        if not found:
            used = ", ".join(sorted({h.name for h in handles})) or "none"
            raise RequestError(
                "not_found", f"this process does not use service {service!r} (it uses: {used})"
            )
        return found

    def _with_datasource(self, datasource: str, service: str | None) -> list[ServiceHandle]:
        handles = self._by_service(service)
        found = [h for h in handles if any(ds.name == datasource for ds in h.service.datasources)]
        if not found:
            known = "; ".join(
                f"{h.name}: {', '.join(ds.name for ds in h.service.datasources)}" for h in handles
            )
            where = (
                f"service {service!r} has no datasource"
                if service
                else "no service of this process has datasource"
            )
            raise RequestError("not_found", f"{where} {datasource!r} (known: {known or 'none'})")
        names = sorted({h.name for h in found})
        if len(names) > 1:
            raise RequestError(
                "ambiguous",
                f"datasource {datasource!r} is in services {', '.join(names)}: give the service",
            )
        return found

    # -- commands --------------------------------------------------------------------

    def cmd_status(self, args: Mapping[str, Any]) -> dict[str, Any]:
        now = self._clock()
        services = [_service_status(h, now) for h in self._by_service(args.get("service"))]
        server = self._server
        return {
            "process": {
                "pid": os.getpid(),
                "uid": os.getuid(),
                "program": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python",
            },
            "control": {
                "socket": str(server.socket_path) if server and server.socket_path else None,
                "tcp": "{}:{}".format(*server.tcp_address)
                if server and server.tcp_address
                else None,
            },
            "services": services,
        }

    def _admin_state(self, args: Mapping[str, Any], offline: bool) -> dict[str, Any]:
        datasource: str = args["datasource"]
        applied = []
        for h in self._with_datasource(datasource, args.get("service")):
            try:
                h.monitor.set_offline(datasource, offline)
            except KeyError as exc:  # the registry dropped it meanwhile
                raise RequestError("not_found", str(exc.args[0])) from None
            snap = h.monitor.snapshot
            applied.append(
                {
                    "service": h.name,
                    "registry": h.registry.describe(),
                    "datasource": datasource,
                    "offline": sorted(snap.offline),
                    "open_connections": h.open_connections().get(datasource, 0),
                }
            )
        return {"applied": applied}

    def cmd_offline(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return self._admin_state(args, True)

    def cmd_online(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return self._admin_state(args, False)

    def cmd_promote(self, args: Mapping[str, Any]) -> dict[str, Any]:
        datasource: str | None = args["datasource"]
        service: str | None = args.get("service")
        targets = (
            self._by_service(service)
            if datasource is None
            else self._with_datasource(datasource, service)
        )
        applied = []
        for h in targets:
            try:
                h.monitor.promote(datasource)
            except KeyError as exc:
                raise RequestError("not_found", str(exc.args[0])) from None
            snap = h.monitor.snapshot
            master = observed_master(snap)
            entry: dict[str, Any] = {
                "service": h.name,
                "registry": h.registry.describe(),
                "promoted": snap.promoted,
                "master": master.name if master is not None else None,
            }
            if datasource is not None and not snap.health_of(datasource).writable:
                entry["warning"] = (
                    f"{datasource} is not writable now (read-only or unreachable): writes "
                    "never go to it until it is; the promotion decides only between "
                    "writable servers"
                )
            elif datasource is not None and entry["master"] != datasource:
                entry["warning"] = (
                    f"{datasource} is not the master: the promotion only breaks a tie between "
                    "writable servers that do not replicate, when the replicas do not tell "
                    f"them apart; now: {explain_master(snap)}"
                )
            applied.append(entry)
        return {"applied": applied}

    def cmd_set(self, args: Mapping[str, Any]) -> dict[str, Any]:
        setting: str = args["setting"]
        value: float | None = args["value"]
        applied = []
        for h in self._by_service(args["service"]):
            try:
                registry_value = getattr(h.registry.lookup(h.name), setting)
                service = h.override(**{setting: value})
            except ProgrammingError as exc:
                raise RequestError("failed", str(exc.args[-1])) from None
            _settle(h, _settle_timeout(h), self._stopping)
            applied.append(
                {
                    "service": h.name,
                    "registry": h.registry.describe(),
                    setting: getattr(service, setting),
                    "registry_value": registry_value,
                    "overrides": h.overrides,
                }
            )
        return {"applied": applied}

    def cmd_reload(self, args: Mapping[str, Any]) -> dict[str, Any]:
        del args
        handles = self._handles()
        registries: dict[int, Registry] = {}
        for h in handles:
            registries.setdefault(id(h.registry), h.registry)
        results = []
        for registry in registries.values():
            results.append(self._reload_one(registry))
        for h in handles:
            h.refresh()
        for h in handles:
            _settle(h, _settle_timeout(h), self._stopping)
        response: dict[str, Any] = {
            "registries": results,
            "services": [
                {"service": h.name, "max_lag": h.wanted.max_lag, "overrides": h.overrides}
                for h in handles
            ],
        }
        problems = [str(r["error"]) for r in results if r["error"]]  # each names its registry
        if self._server is not None:
            try:
                self._server.reload_tokens()
            except ControlError as exc:
                problems.append(f"{exc.args[-1]} (the previous tokens stay in use)")
        if problems:
            return {
                **response,
                "ok": False,
                "code": "failed",
                "error": "; ".join(problems) + " (the last good registry content is kept)",
            }
        return response

    def _reload_one(self, registry: Registry) -> dict[str, Any]:
        """Reload ``registry`` now; ``fixed`` holds the error it had before, if it is gone."""
        name = registry.describe()
        reported = self._reload_errors.pop(name, None)
        before = registry.last_error or reported
        changed = registry.refresh(force=True)
        item: dict[str, Any] = {"registry": name, "changed": changed, "error": registry.last_error}
        if registry.last_error is not None:
            self._reload_errors[name] = registry.last_error
        elif before is not None:
            item["fixed"] = before
        return item

    def cmd_explain(self, args: Mapping[str, Any]) -> dict[str, Any]:
        try:
            parsed = parse_url(args["url"])
        except ProgrammingError as exc:
            raise RequestError("bad_request", f"explain: {exc.args[-1]}") from None
        in_use = self._handles()
        watched = [h for h in in_use if h.name == parsed.service]
        if not watched:
            used = ", ".join(sorted({h.name for h in in_use})) or "none"
            raise RequestError(
                "not_found",
                f"this process does not use service {parsed.service!r} (it uses: {used}); "
                "`sqlrouter route URL` starts a monitor of its own",
            )
        # Only a registry this process found already, by the same registry= (or its
        # absence): a request never makes the process open, resolve or connect to
        # anything its own configuration did not name.  Nothing about what the URL's
        # registry= names is looked at, so the answer says nothing about it.
        handle = self._watched(parsed.registry, parsed.service)
        if handle is None or not any(h is handle for h in watched):
            raise RequestError(
                "not_found",
                f"this process uses service {parsed.service!r} from "
                f"{', '.join(h.registry.describe() for h in watched)}, and no connection "
                "of it gave this URL's registry= (or its absence): explain works on the "
                "registries in use only; give registry= as the application gives it",
            )
        try:
            text = explain_handle(handle, parsed)
        except ProgrammingError as exc:
            raise RequestError("failed", str(exc.args[-1])) from None
        return {"text": text}
