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
at once (the others get ``503`` at once).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from ..qos import QoS
from ..routing.explain import snapshot_rows
from ..routing.health import Snapshot
from ..routing.router import Policy, health_check, observed_master
from ..topology import Role
from ._snapshots import Snapshots, latest, watched_snapshots

__all__ = [
    "MAX_REQUEST",
    "HealthServer",
    "Response",
    "parse_address",
    "respond",
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
    ``ValueError`` saying what is accepted."""
    expected = "expected PORT or 'HOST:PORT' with HOST a loopback IP address"
    host, _, port = value.strip().rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = {"": "127.0.0.1", "localhost": "127.0.0.1"}.get(host, host)
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{expected}, got {value!r} (the port must be 0-65535)")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{expected}, got {value!r} ({host!r} is not an IP address)") from None
    if not address.is_loopback and not allow_remote:
        raise ValueError(
            f"{value!r} is not a loopback address: the health endpoint listens on loopback "
            "only unless remote addresses are allowed (allow_remote)"
        )
    return host, int(port)


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
    role_text = params.get("role", ["replica"])[0]
    if role_text not in ("replica", "master"):
        return _text(400, f"role={role_text!r}: expected replica or master")
    snap = snapshots.get(service)
    if snap is None:
        known = ", ".join(snapshots) or "none"
        return _text(404, f"service {service!r} is not watched here (watched: {known})")
    if name not in {ds.name for ds in snap.datasources}:
        known = ", ".join(ds.name for ds in snap.datasources)
        return _text(404, f"{name!r} is not a datasource of service {service!r} ({known})")
    max_lag = snap.service.max_lag
    if "max_lag" in params:
        text = params["max_lag"][0]
        try:
            max_lag = float(text)
        except ValueError:
            max_lag = math.nan
        if not math.isfinite(max_lag) or max_lag < 0:
            return _text(400, f"max_lag={text!r}: expected a number of seconds >= 0")
    role = Role(role_text)
    why = health_check(snap, name, role=role, max_lag=max_lag, now=now)
    if why is not None:
        return _text(503, f"down: {name} {why}")
    if role is Role.MASTER:
        return _text(200, f"up: {name} is the master")
    lag = snap.health_of(name).lag
    return _text(200, f"up: {name} replica, lag {lag:.3f}s <= {max_lag:g}s")


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


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    owner: HealthServer

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.owner._slots.acquire(blocking=False):
            logger.debug("health: %s: too many clients, closed", client_address)
            with contextlib.suppress(OSError):  # a few bytes into an empty socket buffer
                request.setblocking(False)
                request.send(_text(503, "busy: too many clients").encode())
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.owner._slots.release()


def _recv(sock: socket.socket, deadline: float) -> bytes | None:
    """What the client sent next (``b""``: it closed); ``None`` past ``deadline``."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    sock.settimeout(remaining)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return None


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        owner = self.server.owner
        sock: socket.socket = self.request
        data = b""
        deadline = time.monotonic() + owner.timeout
        try:
            while b"\n\r\n" not in data and b"\n\n" not in data:
                if len(data) > MAX_REQUEST:
                    sock.sendall(_text(431, f"request over {MAX_REQUEST} bytes").encode())
                    return
                chunk = _recv(sock, deadline)
                if chunk is None:
                    sock.settimeout(owner.timeout)
                    sock.sendall(_text(408, "request not received in time").encode())
                    return
                if not chunk:
                    if not data:
                        return
                    break
                data += chunk
            response, head = owner.answer(data)
            sock.sendall(response.encode(head=head))
        except OSError as exc:  # a client that went away, or sent nothing in time
            logger.debug("health: %s: %s", self.client_address, exc)


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
        if not timeout > 0 or not max_clients > 0:
            raise ValueError(
                f"timeout ({timeout!r}) and max_clients ({max_clients!r}) must be positive"
            )
        self._wanted = parse_address(address, allow_remote=allow_remote)
        self._snapshots = snapshots
        self._metrics = metrics
        self._clock = clock
        self.timeout = timeout
        self._slots = threading.BoundedSemaphore(max_clients)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"listening on {self.url}" if self._server is not None else "stopped"
        return f"<HealthServer {state}>"

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the port chosen, once started with port 0)."""
        if self._server is None:
            return self._wanted
        host, port = self._server.server_address[:2]
        return str(host), int(port)

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

    def start(self) -> HealthServer:
        if self._server is not None:
            return self
        host, _ = self._wanted
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_Server", (_Server,), {"address_family": family})
        server: _Server = server_class(self._wanted, _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"sqlrouter-health-{self.address[1]}",
            daemon=True,
        )
        self._thread.start()
        logger.info("health endpoint listening on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and join the thread (at most ``timeout`` seconds)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
