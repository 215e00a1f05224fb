"""The shared snapshot file's format: a round's observations to bytes and back, checked.

Pure (no I/O but the boot id read once): :func:`encode` writes what
:class:`Published` holds; :func:`decode` refuses, with :class:`ShareError` saying why,
anything that is not a file this version wrote on this boot for this definition of the
service (whatever the bytes: nothing else escapes).  The protocol around it (who
writes, who reads, the lease) is :mod:`sqlrouter.routing.shared`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ..gtid import CausalToken
from ..topology import Service
from .health import Health

__all__ = ["Published", "ShareError", "decode", "encode", "service_key"]

_FORMAT: Final = 2
#: The largest process id Linux gives (``pid_max`` cannot exceed it).
_PID_MAX: Final = 4_194_304


class ShareError(ValueError):
    """A shared snapshot file that cannot be used, and why."""


def _boot_id() -> str:
    """This boot's id (monotonic clocks restart at boot); ``""`` where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


_BOOT: Final = _boot_id()


def service_key(service: Service, account: str = "") -> str:
    """A file-name-safe id of what a round's observations depend on (no secret):
    ``account`` is the user the probes log in as (its grants, a server refusing it)."""
    what = {
        "account": account,
        # Versions of the format have files of their own: during an upgrade, each
        # version would find the other's file unusable and replace it, endlessly.
        "format": _FORMAT,
        "name": service.name,
        "datasources": [(ds.name, ds.host, ds.port) for ds in service.datasources],
        "heartbeat": [service.heartbeat.enabled, service.heartbeat.table],
        "interval": service.monitor_interval,
        "probe_timeout": service.probe_timeout,
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", service.name)[:40]
    return f"{name}-{digest}"


@dataclass(frozen=True, slots=True)
class Published:
    """What a shared snapshot file says."""

    #: The publisher (``pid`` 0: nobody, it resigned).
    pid: int
    publisher: str
    agent: bool
    #: ``time.monotonic()`` of the publisher's last write.
    lease_at: float
    #: The round: when it ended, and what it observed (``None``: no round yet).
    taken_at: float | None = None
    health: Mapping[str, Health] | None = None
    #: The publisher's PID namespace (an inode number) and start time (clock ticks
    #: after boot; 0: unknown): its ``pid`` is only looked up from the same namespace,
    #: and must still name the process that started then.
    pidns: int = 0
    started: int = 0


_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "name": (str,),
    "reachable": (bool,),
    "observed_at": (float, int),
    "read_only": (bool, type(None)),
    "server_id": (int, type(None)),
    "replicating": (bool,),
    "master_server_id": (int, type(None)),
    "master_host": (str,),
    "master_port": (int, type(None)),
    "io_running": (bool, type(None)),
    "sql_running": (bool, type(None)),
    "lag": (float, int, type(None)),
    "lag_source": (str,),
    "position": (str,),
    "gtid_binlog_pos": (str,),
    "gtid_slave_pos": (str,),
    "tracks_last_gtid": (bool, type(None)),
    "error": (str, type(None)),
    "error_code": (int, type(None)),
}


#: The fields of a health record in :class:`Health`'s order (:func:`encode` writes them
#: so), the exact JSON types each accepts, and where the ones converted after are.
_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Health))
_KEYS: Final = frozenset(_FIELDS)
_EXACT: Final = tuple(frozenset(_TYPES[name]) for name in _FIELDS)
_OBSERVED_AT: Final = _FIELDS.index("observed_at")
_LAG: Final = _FIELDS.index("lag")
_POSITION: Final = _FIELDS.index("position")


def encode(published: Published, key: str) -> bytes:
    health = None
    if published.health is not None:
        health = [
            {
                name: (str(getattr(h, name)) if name == "position" else getattr(h, name))
                for name in _FIELDS
            }
            for h in published.health.values()
        ]
    return json.dumps(
        {
            "format": _FORMAT,
            "key": key,
            "boot": _BOOT,
            "pid": published.pid,
            "publisher": published.publisher,
            "agent": published.agent,
            "lease_at": published.lease_at,
            "pidns": published.pidns,
            "started": published.started,
            "taken_at": published.taken_at,
            "health": health,
        },
        separators=(",", ":"),
    ).encode()


def decode(data: bytes, key: str, service: Service, now: float) -> Published:
    """Parse and check a file's content; :class:`ShareError` says what is wrong (and
    nothing else escapes: whatever the content, a reader refuses it and probes)."""
    try:
        return _decode(data, key, service, now)
    except ShareError:
        raise
    except RecursionError:  # nesting deeper than the interpreter's stack
        raise ShareError("not JSON (nested too deep: recursion limit)") from None
    except Exception as exc:  # noqa: BLE001 - int() over 4300 digits, float() overflow...
        raise ShareError(f"malformed ({type(exc).__name__}: {exc})") from None


def _decode(data: bytes, key: str, service: Service, now: float) -> Published:
    try:
        doc = json.loads(data)
    except ValueError as exc:  # also int() refusing over 4300 digits
        raise ShareError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ShareError("not a JSON object")
    if doc.get("format") != _FORMAT:
        raise ShareError(f"format {doc.get('format')!r}, expected {_FORMAT}")
    if doc.get("key") != key:
        raise ShareError("written for another definition of the service")
    if doc.get("boot") != _BOOT:
        raise ShareError("written before this host's last boot")
    pid, publisher, agent = doc.get("pid"), doc.get("publisher"), doc.get("agent")
    lease_at, taken_at = doc.get("lease_at"), doc.get("taken_at")
    if not (isinstance(pid, int) and not isinstance(pid, bool) and 0 <= pid <= _PID_MAX):
        raise ShareError(f"pid {pid!r} is not a process id")
    if not isinstance(publisher, str) or not isinstance(agent, bool):
        raise ShareError("publisher or agent missing")
    pidns, started = _count(doc.get("pidns"), "pidns"), _count(doc.get("started"), "started")
    lease = _time(lease_at, "lease_at", now)
    if lease is None:
        raise ShareError("lease_at is missing")
    taken = _time(taken_at, "taken_at", now)
    raw = doc.get("health")
    if (raw is None) != (taken_at is None):
        raise ShareError("a round's time without its observations, or the reverse")
    health: dict[str, Health] | None = None
    if raw is not None:
        if not isinstance(raw, list):
            raise ShareError("health is not a list")
        health = {}
        for item in raw:
            h = _health(item, now)
            health[h.name] = h
        names = {ds.name for ds in service.datasources}
        if set(health) != names:
            raise ShareError(
                f"it observed {', '.join(sorted(health)) or 'nothing'}, not the "
                f"datasources {', '.join(sorted(names))}"
            )
    return Published(
        pid=pid,
        publisher=publisher,
        agent=agent,
        lease_at=lease,
        taken_at=taken,
        health=health,
        pidns=pidns,
        started=started,
    )


def _count(value: object, what: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64):
        raise ShareError(f"{what} {value!r} is not a count")
    return value


def _time(value: object, what: str, now: float) -> float | None:
    """A ``time.monotonic()`` reading of the file: a number, not after ``now``."""
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ShareError(f"{what} {value!r} is not a number")
    if not float(value) <= now + 1.0:
        raise ShareError(f"{what} {value!r} is in the future (or not a number)")
    return float(value)


@functools.lru_cache(maxsize=256)
def _position(text: str) -> CausalToken:
    """A GTID list read from a file, as a token: the same few lists come round after
    round (tokens are immutable: one serves every round that names it)."""
    return CausalToken.from_gtid_list(text)


def _health(item: object, now: float) -> Health:
    # Every follower checks every record of every round (all of them at once when a
    # publisher writes): the checks run in C (map), the slow loop only names the error.
    if type(item) is not dict or item.keys() != _KEYS:
        raise ShareError("a datasource's health has missing or unknown fields")
    values = list(item.values()) if tuple(item) == _FIELDS else [item[k] for k in _FIELDS]
    if not all(map(frozenset.__contains__, _EXACT, map(type, values))):
        for name, value, allowed in zip(_FIELDS, values, _EXACT, strict=True):
            if type(value) not in allowed:  # JSON's own types: bool is not an int here
                raise ShareError(f"health field {name} is {type(value).__name__}")
    if not values[_OBSERVED_AT] <= now + 1.0:
        raise ShareError("an observation is in the future")
    try:
        values[_POSITION] = _position(values[_POSITION])
    except ValueError as exc:
        raise ShareError(f"position: {exc}") from None
    values[_OBSERVED_AT] = float(values[_OBSERVED_AT])
    if values[_LAG] is not None:
        values[_LAG] = float(values[_LAG])
    return Health(*values)
