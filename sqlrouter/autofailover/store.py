"""The coordination store of automatic failover: etcd, through its v3 JSON gateway.

The client is etcd3gw (OpenStack's, typed, on ``requests``): plain HTTP requests with a
timeout each, no gRPC, no thread of its own as long as its watches are not used (they
are not).  One :class:`Store` per agent and service; every key is under
``/sqlrouter/autofailover/SERVICE/``:

================  ======================================================  ===========
key               value (JSON)                                            lease
================  ======================================================  ===========
``agents/ID``     the agent: host, pid, since                             the agent's
``seen/ID``       its latest view of the master (:class:`AgentView`)       the agent's
``leader``        the leader's agent id; its ``create_revision`` is the    the leader's
                  *term*, which grows with every election
``decision``      the leader's latest decision, with its evidence          none
``failover``      a failover under way: term, leader, old master, steps    none
``outcome``       the last failover's outcome: service, new master, term   none
``history``       last automatic failover (time, term), acknowledged       none
``blocked``       why automation is blocked until acknowledged             none
``fenced``        the old master made read-only, when, by whom             none
``retry``         failed automatic failovers in a row, the last's time,     none
                  when the next may run (the backoff)
================  ======================================================  ===========

An agent's keys vanish with its lease (``lease_ttl`` seconds after its last refresh):
a dead agent stops counting, and a dead leader's ``leader`` key is free for another.
Every write of a leader is a transaction that first compares the ``leader`` key with
its id and its term (:meth:`Store.put_as_leader`): a leader that lost its lease cannot
write anything, and :meth:`Store.is_leader` is what the failover asks before each step.

Every request has a timeout (``timeout``, default 2 s); a store that cannot be reached
(or that lost its quorum) raises :class:`StoreError` naming the endpoints: automation
then does nothing, and says so.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

try:
    import etcd3gw
    import etcd3gw.exceptions
    import etcd3gw.lease
except ImportError as exc:  # pragma: no cover - the extra is installed by scripts/_setup.sh
    raise ImportError(
        "automatic failover needs etcd3gw, the etcd client: pip install 'sqlrouter[etcd]'"
    ) from exc

from .. import _forksafe
from .decision import AgentView, History

__all__ = ["PREFIX", "Store", "StoreError", "acknowledge", "read_status"]

logger = logging.getLogger("sqlrouter.autofailover")

PREFIX = "/sqlrouter/autofailover/"

_T = TypeVar("_T")


class StoreError(Exception):
    """The coordination store could not be used (unreachable, no quorum, lease lost)."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _client(endpoint: str, timeout: float) -> etcd3gw.Etcd3Client:
    host, _, port = endpoint.rpartition(":")
    # The v3 gateway's path is fixed (etcd >= 3.4): no discovery request per client.
    return etcd3gw.Etcd3Client(
        host=host.strip("[]"), port=int(port), timeout=timeout, api_path="/v3/"
    )


class _Endpoints:
    """The etcd endpoints, tried in turn: the first that answers is kept."""

    def __init__(self, endpoints: Sequence[str], timeout: float) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint given (expected 'host:port', ...)")
        self.endpoints = tuple(endpoints)
        self._clients = [_client(e, timeout) for e in self.endpoints]
        self._current = 0
        #: One request at a time: a requests session is not thread-safe.  The lease's
        #: keepalive has its own :class:`_Endpoints`, so it never waits for a round.
        self._lock = _forksafe.lock()

    def call(self, what: str, op: Callable[[etcd3gw.Etcd3Client], _T]) -> _T:
        with self._lock:
            return self._call(what, op)

    def _call(self, what: str, op: Callable[[etcd3gw.Etcd3Client], _T]) -> _T:
        errors = []
        for i in range(len(self._clients)):
            index = (self._current + i) % len(self._clients)
            try:
                result = op(self._clients[index])
            except (etcd3gw.exceptions.Etcd3Exception, OSError, ValueError) as exc:
                errors.append(f"{self.endpoints[index]}: {_reason(exc)}")
                continue
            self._current = index
            return result
        raise StoreError(f"etcd: {what} failed on every endpoint: " + "; ".join(errors))

    def close(self) -> None:
        for c in self._clients:
            c.session.close()


class Store:
    """One agent's access to the keys of one service (see the module's docstring)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        service: str,
        agent: str | None = None,
        lease_ttl: int = 5,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        # hostname-pid alone collides (PID 1 in every container): a random part too.
        self.agent = agent or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.lease_ttl = lease_ttl
        self._etcd = _Endpoints(endpoints, timeout)
        #: The lease's refresh has its own clients and lock (:meth:`keepalive`).
        self._keeper = _Endpoints(endpoints, timeout)
        self._clock = clock
        self._lease: etcd3gw.lease.Lease | None = None
        self._lease_lock = _forksafe.lock()
        self.prefix = f"{PREFIX}{service}/"

    def __repr__(self) -> str:
        lease = f"lease {self._lease.id}" if self._lease else "no lease"
        return (
            f"<Store {self.service!r} agent {self.agent!r}, {lease}, etcd {self._etcd.endpoints}>"
        )

    # ------------------------------------------------------------------ plain keys

    def _key(self, name: str) -> str:
        return self.prefix + name

    def get(self, name: str) -> dict[str, Any] | None:
        values = self._etcd.call(f"get {name}", lambda c: c.get(self._key(name)))
        return _loads(values[0]) if values else None

    def _prefix(self, name: str) -> list[dict[str, Any]]:
        values = self._etcd.call(f"get {name}*", lambda c: c.get_prefix(self._key(name)))
        return [v for v in (_loads(value) for value, _meta in values) if v is not None]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every key of the service (name under the prefix -> value), in one request.

        ``leader`` is ``{"agent": ID, "term": TERM}`` (its creation revision).
        """
        values = self._etcd.call("get *", lambda c: c.get_prefix(self.prefix))
        out: dict[str, dict[str, Any]] = {}
        for value, meta in values:
            key = meta["key"]
            text = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
            name = text[len(self.prefix) :]
            lease = int(meta.get("lease") or 0)
            if name == "leader":
                out[name] = {
                    "agent": _text(value),
                    "term": int(meta["create_revision"]),
                    "lease": lease,
                }
                continue
            if name.startswith(("seen/", "agents/")) and lease == 0:
                continue  # an agent's key lives under its lease; one without is not counted
            loaded = _loads(value)
            if loaded is not None:
                out[name] = loaded
            elif name in _GUARDED:  # never ignored: it may be what holds automation back
                out[name] = {"malformed": _text(value)[:200]}
        return out

    def put(self, name: str, value: Mapping[str, Any], *, leased: bool = False) -> None:
        lease = self._lease if leased else None
        self._etcd.call(
            f"put {name}", lambda c: c.put(self._key(name), json.dumps(value), lease=lease)
        )

    def delete(self, name: str) -> None:
        self._etcd.call(f"delete {name}", lambda c: c.delete(self._key(name)))

    # ------------------------------------------------------------------ the agent's lease

    def register(self) -> None:
        """Take a lease and register this agent under it (again, if the lease was lost)."""
        with self._lease_lock:
            self._register()

    def _register(self, etcd: _Endpoints | None = None) -> None:
        """Register under a new lease; refused while another lease holds this agent id.

        ``etcd``: the clients to use (default: the rounds'; the keepalive's own when it
        registers again)."""
        etcd = etcd or self._etcd
        lease = etcd.call("lease grant", lambda c: c.lease(self.lease_ttl))
        info = {"agent": self.agent, "host": socket.gethostname(), "pid": os.getpid()}
        value = json.dumps({**info, "since": self._clock()})
        key = _b64(self._key(f"agents/{self.agent}"))
        mine = [{"request_put": {"key": key, "value": _b64(value), "lease": lease.id}}]
        held = [  # free, or held by the lease this agent had (registering again)
            {"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": 0},
        ]
        answer = etcd.call(
            "register", lambda c: c.transaction({"compare": held, "success": mine, "failure": []})
        )
        if not answer.get("succeeded") and self._lease is not None:
            ours = [{"key": key, "result": "EQUAL", "target": "LEASE", "lease": self._lease.id}]
            answer = etcd.call(
                "register",
                lambda c: c.transaction({"compare": ours, "success": mine, "failure": []}),
            )
        if not answer.get("succeeded"):
            with contextlib.suppress(StoreError):
                etcd.call("lease revoke", lambda c: etcd3gw.lease.Lease(lease.id, c).revoke())
            raise StoreError(
                f"agent id {self.agent!r} is registered by another live agent (another lease): "
                "give each agent a unique id"
            )
        self._lease = lease

    @property
    def registered(self) -> bool:
        return self._lease is not None

    @property
    def lease_id(self) -> int | None:
        lease = self._lease
        return None if lease is None else int(lease.id)

    def keepalive(self) -> None:
        """Refresh the lease; register anew when it had expired (the keys went with it).

        On the lease's own clients and lock (``_keeper``): a slow request of a round
        (a snapshot, a transaction waiting for a timeout) does not delay the refresh, and
        the refresh is sent to whichever endpoint answers, not only to the one that
        granted the lease.
        """
        with self._lease_lock:
            lease = self._lease
            if lease is None:
                self._register(self._keeper)
                return
            lease_id = lease.id
            ttl = self._keeper.call(
                "lease keepalive", lambda c: etcd3gw.lease.Lease(lease_id, c).refresh()
            )
            if ttl <= 0:
                logger.warning(
                    "service %r: agent %s: its etcd lease had expired; registering again",
                    self.service,
                    self.agent,
                )
                self._register(self._keeper)

    def publish_view(self, view: AgentView) -> None:
        self.put(
            f"seen/{self.agent}",
            {
                "agent": view.agent,
                "master": view.master,
                "reachable": view.reachable,
                "at": view.at,
                "detail": view.detail,
            },
            leased=True,
        )

    def views(
        self, snapshot: Mapping[str, Mapping[str, Any]] | None = None
    ) -> tuple[AgentView, ...]:
        """The latest view of every agent whose lease is alive (from ``snapshot`` if given)."""
        if snapshot is None:
            snapshot = self.snapshot()
        out = []
        for name, v in snapshot.items():
            if not name.startswith("seen/"):
                continue
            if v.get("agent") != name[len("seen/") :]:
                continue
            try:
                out.append(
                    AgentView(
                        str(v["agent"]),
                        None if v.get("master") is None else str(v["master"]),
                        _strict_bool(v["reachable"]),
                        _number(v["at"]),
                        str(v.get("detail", "")),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue
        return tuple(out)

    def agents(self) -> list[str]:
        return sorted(str(a.get("agent")) for a in self._prefix("agents/"))

    # ------------------------------------------------------------------ leadership

    def campaign(self) -> int | None:
        """Become the leader if nobody is; the term if this agent leads, else ``None``."""
        if self._lease is None:
            return None
        key = _b64(self._key("leader"))
        txn = {
            "compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": [
                {"request_put": {"key": key, "value": _b64(self.agent), "lease": self._lease.id}}
            ],
            "failure": [{"request_range": {"key": key}}],
        }
        answer = self._etcd.call("campaign", lambda c: c.transaction(txn))
        if answer.get("succeeded"):
            return int(answer["header"]["revision"])
        kvs = answer["responses"][0]["response_range"].get("kvs", [])
        if kvs and int(kvs[0].get("lease", 0)) == self._lease.id:  # the lease, not the name
            return int(kvs[0]["create_revision"])
        return None

    def leader(self) -> tuple[str, int] | None:
        """``(agent, term)`` of the current leader, ``None`` if there is none."""
        found = self._etcd.call("get leader", lambda c: c.get(self._key("leader"), metadata=True))
        if not found:
            return None
        value, meta = found[0]
        return _text(value), int(meta["create_revision"])

    def _as_leader(self, term: int) -> list[dict[str, Any]]:
        """The leader key was created at ``term`` and is held by this agent's lease."""
        key = _b64(self._key("leader"))
        lease = self._lease.id if self._lease is not None else -1  # no lease: never leads
        return [
            {"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": term},
            {"key": key, "result": "EQUAL", "target": "LEASE", "lease": lease},
            {"key": key, "result": "EQUAL", "target": "VALUE", "value": _b64(self.agent)},
        ]

    def is_leader(self, term: int) -> bool:
        """Does this agent still lead with ``term``?  (Asked before every failover step.)"""
        txn = {"compare": self._as_leader(term), "success": [], "failure": []}
        answer = self._etcd.call("check leadership", lambda c: c.transaction(txn))
        return bool(answer.get("succeeded"))

    def put_as_leader(
        self,
        term: int,
        puts: Mapping[str, Mapping[str, Any]],
        deletes: Sequence[str] = (),
    ) -> bool:
        """Write ``puts`` and delete ``deletes`` in one transaction, only while leading."""
        ops: list[dict[str, Any]] = [
            {"request_put": {"key": _b64(self._key(k)), "value": _b64(json.dumps(v))}}
            for k, v in puts.items()
        ]
        ops += [{"request_delete_range": {"key": _b64(self._key(k))}} for k in deletes]
        txn = {"compare": self._as_leader(term), "success": ops, "failure": []}
        answer = self._etcd.call("write as leader", lambda c: c.transaction(txn))
        return bool(answer.get("succeeded"))

    # ------------------------------------------------------------------ history

    def _get_meta(self, name: str) -> list[Any]:
        key = self._key(name)
        return list(self._etcd.call(f"get {name}", lambda c: c.get(key, metadata=True)))

    def acknowledge(self, by: str) -> dict[str, Any]:
        """One transaction: the history acknowledged and the block deleted, as they were
        read (a failover or block written in between is not acknowledged unseen)."""
        names = ("history", "blocked")
        found = {n: self._get_meta(n) for n in names}
        compare, ops, seen = [], [], {}
        for n in names:
            key = _b64(self._key(n))
            rev = int(found[n][0][1]["mod_revision"]) if found[n] else 0
            compare.append({"key": key, "result": "EQUAL", "target": "MOD", "mod_revision": rev})
            seen[n] = _loads(found[n][0][0]) if found[n] else None
        hist = seen["history"]
        if hist is not None:
            value = json.dumps({**hist, "acknowledged": True, "acknowledged_by": by})
            ops.append({"request_put": {"key": _b64(self._key("history")), "value": _b64(value)}})
        if found["blocked"]:
            ops.append({"request_delete_range": {"key": _b64(self._key("blocked"))}})
        # An operator who looked may want the next attempt now: the backoff starts over.
        ops.append({"request_delete_range": {"key": _b64(self._key("retry"))}})
        txn = {"compare": compare, "success": ops, "failure": []}
        answer = self._etcd.call("acknowledge", lambda c: c.transaction(txn))
        if not answer.get("succeeded"):
            raise StoreError(
                f"service {self.service!r}: the history or the block changed while it was "
                "being acknowledged: look at the status again, then acknowledge"
            )
        return {"service": self.service, "history": hist, "blocked": seen["blocked"]}

    def history(self, snapshot: Mapping[str, Mapping[str, Any]] | None = None) -> History:
        if snapshot is None:
            snapshot = self.snapshot()
        hist = snapshot.get("history")
        blocked = snapshot.get("blocked")
        reason = None if blocked is None else blocked.get("reason")
        if blocked is not None and not isinstance(reason, str):
            reason = f"the store's block record is malformed: {json.dumps(blocked)[:200]}"
        failures, failed_at = _retry(snapshot.get("retry"))
        if hist is None:
            return History(blocked=reason, failures=failures, last_failure_at=failed_at)
        at, acknowledged = hist.get("at"), hist.get("acknowledged")
        if (
            isinstance(at, bool)
            or not isinstance(at, int | float)
            or not isinstance(acknowledged, bool)
        ):  # never read as "no failover" or "acknowledged": automation waits for an operator
            malformed = f"the store's history record is malformed: {json.dumps(hist)[:200]}"
            return History(blocked=reason or malformed)
        return History(
            last_failover_at=float(at),
            acknowledged=acknowledged,
            blocked=reason,
            failures=failures,
            last_failure_at=failed_at,
        )

    def close(self) -> None:
        """Revoke the lease (this agent's keys go at once) and close the connections."""
        lease, self._lease = self._lease, None
        if lease is not None:
            lease_id = lease.id
            try:
                self._etcd.call("lease revoke", lambda c: etcd3gw.lease.Lease(lease_id, c).revoke())
            except StoreError as exc:
                logger.info("service %r: lease not revoked (%s)", self.service, exc)
        self._etcd.close()
        self._keeper.close()


def _reason(exc: BaseException) -> str:
    """etcd3gw's error as one short line (its text is in ``detail_text``)."""
    text = str(getattr(exc, "detail_text", None) or exc or type(exc).__name__)
    if "[Errno" in text:  # requests' "HTTPConnectionPool(...): Max retries ... [Errno 111] ..."
        text = re.split(r"['\"]", text[text.index("[Errno") :])[0].rstrip(")")
    elif "timed out" in text.lower():
        text = "timed out"
    return " ".join(text.split())[:200]


#: Records that hold automation back or tell what happened: kept even when malformed.
_GUARDED: Final = ("history", "blocked", "failover", "outcome", "decision", "fenced", "retry")


def _retry(record: Mapping[str, Any] | None) -> tuple[int, float | None]:
    """``(failures, last failure's time)`` of the ``retry`` record; ``(0, None)`` when
    there is none or it is malformed (a backoff only delays: none is no less safe)."""
    if record is None:
        return 0, None
    failures, at = record.get("failures"), record.get("at")
    if isinstance(failures, bool) or not isinstance(failures, int) or failures <= 0:
        return 0, None
    if isinstance(at, bool) or not isinstance(at, int | float):
        return 0, None
    return failures, float(at)


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _strict_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _loads(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_status(endpoints: Sequence[str], service: str, timeout: float = 2.0) -> dict[str, Any]:
    """What the store holds about ``service``'s automatic failover (for ``sqlrouter admin``)."""
    store = Store(endpoints, service=service, agent="admin", timeout=timeout)
    try:
        leader = store.leader()
        return {
            "service": service,
            "agents": store.agents(),
            "leader": None if leader is None else {"agent": leader[0], "term": leader[1]},
            "views": [
                {"agent": v.agent, "master": v.master, "reachable": v.reachable, "at": v.at}
                for v in store.views()
            ],
            **{
                name: store.get(name)
                for name in (
                    "decision",
                    "failover",
                    "outcome",
                    "history",
                    "blocked",
                    "fenced",
                    "retry",
                )
            },
        }
    finally:
        store.close()


def acknowledge(
    endpoints: Sequence[str], service: str, by: str, timeout: float = 2.0
) -> dict[str, Any]:
    """Acknowledge ``service``'s last automatic failover and any block: automation resumes.

    Returns what was acknowledged (the history and block records as they were).
    """
    store = Store(endpoints, service=service, agent="admin", timeout=timeout)
    try:
        return store.acknowledge(by)
    finally:
        store.close()
