"""A lag-aware HTTP health endpoint for load balancers (HAProxy, Kubernetes) and scrapers.

::

    from sqlrouter.observe.health import HealthServer

    with HealthServer("127.0.0.1:9200") as server:   # this process's watched services
        ...

Routes (``GET`` or ``HEAD``; every answer closes the connection):

- ``/health/SERVICE/DATASOURCE?role=replica&max_lag=SECONDS``: ``200`` and ``up: ...``
  when the datasource qualifies as the routing rules say
  (:func:`sqlrouter.routing.router.health_check`): online, reachable, and a replica
  within ``max_lag`` (default: the service's ``max_lag``) or, with ``role=master``, the
  observed writable master; else ``503`` and ``down: REASON``, one line.  A snapshot
  older than its ``max_age`` (the monitor is not publishing) qualifies nothing.
- ``/metrics``: the Prometheus text format, when the server was given ``metrics``.
- ``/status``: JSON, what each monitor last saw (the rows of ``sqlrouter admin status``;
  addresses and errors, never a credential).

Unknown services, datasources and paths answer ``404``; a malformed request, an unknown
parameter or a bad value ``400`` saying what is accepted; other methods ``405``.  The
server listens on loopback unless ``allow_remote``; it never opens a file, resolves a
name or connects anywhere to answer.  Each client has ``timeout`` seconds in all to send
a request of at most :data:`MAX_REQUEST` bytes, and at most ``max_clients`` are served
at once: a new client takes the slot of the oldest one still sending its request (idle
clients cannot keep the health checks out); only when all are being answered does it
get ``503`` at once.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from ..control.config import parse_tcp
from ..qos import QoS
from ..routing.explain import snapshot_rows
from ..routing.health import Snapshot
from ..routing.router import Policy, health_check, observed_master
from ..topology import Role
from ._listener import Listener, Protocol
from ._snapshots import Snapshots, latest, watched_snapshots

__all__ = [
    "MAX_REQUEST",
    "HealthServer",
    "Response",
    "parse_address",
    "respond",
    "verdict",
]

logger = logging.getLogger("sqlrouter.observe.health")

#: The longest request (request line and headers) read, in bytes.
MAX_REQUEST: Final = 8192
_TEXT: Final = "text/plain; charset=utf-8"
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
_PARAMS: Final = ("role", "max_lag")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = _TEXT

    def encode(self, *, head: bool = False) -> bytes:
        """The whole HTTP/1.0 response (``head``: without the body)."""
        lines = [
            f"HTTP/1.0 {self.status} {_REASONS.get(self.status, 'Error')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",  # a browser never reads it as HTML
            "Connection: close",
            "",
            "",
        ]
        return "\r\n".join(lines).encode("ascii") + (b"" if head else self.body)


def _text(status: int, line: str) -> Response:
    return Response(status, (" ".join(line.split()) + "\n").encode("utf-8"))


def parse_address(value: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """``"HOST:PORT"``, ``"[IPv6]:PORT"`` or ``"PORT"`` -> ``(host, port)``; the host is an
    IP address (or ``localhost``), a loopback one unless ``allow_remote``.  Raises
    ``ValueError`` saying what is accepted (the control socket's rule)."""
    return parse_tcp(
        value, allow_remote=allow_remote, what="the health endpoint", unless="allow_remote"
    )


def respond(
    request: bytes,
    snapshots: Iterable[Snapshot],
    *,
    now: float,
    metrics: Callable[[], tuple[bytes, str]] | None = None,
) -> tuple[Response, bool]:
    """The response to one raw request (its request line and headers), and whether it
    was a ``HEAD``.  Pure but for ``metrics``; ``now`` is ``time.monotonic()``."""
    line, _, _ = request.partition(b"\n")
    try:
        method, target, version = line.decode("ascii").strip().split(" ")
    except (UnicodeDecodeError, ValueError):
        return _text(400, "bad request: expected 'GET /path HTTP/1.x'"), False
    if not version.startswith("HTTP/1.") or not target.startswith("/"):
        return _text(400, "bad request: expected 'GET /path HTTP/1.x'"), False
    head = method == "HEAD"
    if method not in ("GET", "HEAD"):
        return _text(405, f"method {method} not allowed: GET or HEAD"), False
    url = urllib.parse.urlsplit(target)
    parts = [urllib.parse.unquote(p) for p in url.path.split("/")[1:]]
    if parts == ["metrics"]:
        if metrics is None:
            return _text(404, "no metrics here (install sqlrouter[metrics])"), head
        body, content_type = metrics()
        return Response(200, body, content_type), head
    if parts == ["status"]:
        return _status(latest(snapshots), now), head
    if len(parts) == 3 and parts[0] == "health" and all(parts[1:]):
        return _health(parts[1], parts[2], url.query, latest(snapshots), now), head
    return _text(404, "not found: /health/SERVICE/DATASOURCE, /status or /metrics"), head


def _health(
    service: str, name: str, query: str, snapshots: dict[str, Snapshot], now: float
) -> Response:
    try:
        params = urllib.parse.parse_qs(query, strict_parsing=bool(query), max_num_fields=4)
    except ValueError:
        return _text(400, f"bad query string: expected parameters {', '.join(_PARAMS)}")
    unknown = sorted(set(params) - set(_PARAMS))
    repeated = sorted(k for k, v in params.items() if len(v) > 1)
    if unknown or repeated:
        what = f"unknown parameter {unknown[0]!r}" if unknown else f"{repeated[0]} given twice"
        return _text(400, f"{what}: expected role=replica|master and max_lag=SECONDS")
    role = params.get("role", ["replica"])[0]
    max_lag = params["max_lag"][0] if "max_lag" in params else None
    return _text(
        *verdict(service, name, role_text=role, max_lag_text=max_lag, snapshots=snapshots, now=now)
    )


def verdict(
    service: str,
    name: str,
    *,
    role_text: str,
    max_lag_text: str | None,
    snapshots: dict[str, Snapshot],
    now: float,
) -> tuple[int, str]:
    """``(HTTP status, one line)`` for datasource ``name`` of ``service`` as ``role_text``
    (``replica`` or ``master``) within ``max_lag_text`` seconds (``None``: the service's
    ``max_lag``): ``200`` and ``up: ...``, ``503`` and ``down: REASON``, or ``400``/``404``
    saying what is wrong.  Pure (``now``: ``time.monotonic()``)."""
    if role_text not in ("replica", "master"):
        return 400, f"role={role_text!r}: expected replica or master"
    snap = snapshots.get(service)
    if snap is None:
        known = ", ".join(snapshots) or "none"
        return 404, f"service {service!r} is not watched here (watched: {known})"
    if name not in {ds.name for ds in snap.datasources}:
        known = ", ".join(ds.name for ds in snap.datasources)
        return 404, f"{name!r} is not a datasource of service {service!r} ({known})"
    max_lag = snap.service.max_lag
    if max_lag_text is not None:
        try:
            max_lag = float(max_lag_text)
        except ValueError:
            max_lag = math.nan
        if not math.isfinite(max_lag) or max_lag < 0:
            return 400, f"max_lag={max_lag_text!r}: expected a number of seconds >= 0"
    role = Role(role_text)
    why = health_check(snap, name, role=role, max_lag=max_lag, now=now)
    if why is not None:
        return 503, f"down: {name} {why}"
    if role is Role.MASTER:
        return 200, f"up: {name} is the master"
    lag = snap.health_of(name).lag
    return 200, f"up: {name} replica, lag {lag:.3f}s <= {max_lag:g}s"


def _status(snapshots: dict[str, Snapshot], now: float) -> Response:
    services: list[dict[str, Any]] = []
    for name, snap in snapshots.items():
        master = observed_master(snap)
        policy = Policy(QoS.RO_RELAXED, max_lag=snap.service.max_lag)
        services.append(
            {
                "service": name,
                "generation": snap.generation,
                "age": round(snap.age(now), 3),
                "max_age": snap.max_age,
                "master": master.name if master is not None else None,
                "datasources": snapshot_rows(snap, policy),
            }
        )
    body = json.dumps({"services": services}, indent=1, default=str).encode("utf-8")
    return Response(200, body + b"\n", "application/json")


class HealthServer:
    """The HTTP endpoint of the module docstring, in a thread of its own.

    ``address`` is ``"HOST:PORT"`` (port 0: any free port, see :attr:`address`);
    ``snapshots`` gives the monitors' snapshots (default: the services this process
    watches); ``metrics`` returns ``(body, content type)`` for ``/metrics`` (e.g.
    ``lambda: (m.exposition(), CONTENT_TYPE)`` of :mod:`sqlrouter.observe.metrics`).
    """

    def __init__(
        self,
        address: str,
        *,
        snapshots: Snapshots = watched_snapshots,
        allow_remote: bool = False,
        metrics: Callable[[], tuple[bytes, str]] | None = None,
        timeout: float = 5.0,
        max_clients: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._snapshots = snapshots
        self._metrics = metrics
        self._clock = clock
        self._listener = Listener(
            parse_address(address, allow_remote=allow_remote),
            Protocol(
                name="health",
                complete=lambda data: b"\n\r\n" in data or b"\n\n" in data,
                reply=self._reply,
                limit=MAX_REQUEST,
                too_large=_text(431, f"request over {MAX_REQUEST} bytes").encode(),
                too_slow=_text(408, "request not received in time").encode(),
                busy=_text(503, "busy: too many clients").encode(),
            ),
            timeout=timeout,
            max_clients=max_clients,
        )

    def __repr__(self) -> str:
        state = f"listening on {self.url}" if self._listener.running else "stopped"
        return f"<HealthServer {state}>"

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the port chosen, once started with port 0)."""
        return self._listener.address

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def answer(self, request: bytes) -> tuple[Response, bool]:
        """The response to one raw request (see :func:`respond`)."""
        try:
            return respond(request, self._snapshots(), now=self._clock(), metrics=self._metrics)
        except Exception:  # a bug must not kill the client's thread without an answer
            logger.exception("health: request failed")
            return _text(503, "down: internal error (see the process's log)"), False

    def _reply(self, request: bytes) -> bytes:
        response, head = self.answer(request)
        return response.encode(head=head)

    def start(self) -> HealthServer:
        self._listener.start()
        logger.info("health endpoint listening on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and join the thread (at most ``timeout`` seconds)."""
        self._listener.stop(timeout)

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
