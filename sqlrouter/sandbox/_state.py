"""What a sandbox is made of (its state file) and what ``status`` shows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .._faults import FAULTS
from .._table import CLIPPED_NOTE, GTID_WIDTH, clip, format_table
from ..topology import Credentials

__all__ = [
    "DATABASE",
    "FAULTS",
    "HEARTBEAT_TABLE",
    "REGISTRY_FILE",
    "SERVICE_NAME",
    "START_TIMEOUT",
    "STATE_FILE",
    "STOP_TIMEOUT",
    "NodeSpec",
    "NodeStatus",
    "SandboxError",
    "SandboxState",
    "format_status",
]


SERVICE_NAME = "sandbox"


DATABASE = "appdb"


STATE_FILE = "sandbox.json"


REGISTRY_FILE = "sqlrouter.toml"


HEARTBEAT_TABLE = "sqlrouter.heartbeat"


START_TIMEOUT = 60.0


STOP_TIMEOUT = 30.0


class SandboxError(Exception):
    """A sandbox operation failed; the message says what and what to do."""

    __module__ = "sqlrouter.sandbox"


@dataclass(slots=True)
class NodeSpec:
    __module__ = "sqlrouter.sandbox"
    name: str
    port: int
    server_id: int
    #: The role given at creation; topology operations may change the real one.
    initial_role: str


@dataclass(slots=True)
class SandboxState:
    """What ``DIR/sandbox.json`` holds (mode 0600: it has the passwords)."""

    __module__ = "sqlrouter.sandbox"

    nodes: list[NodeSpec]
    app: Credentials
    monitor: Credentials
    admin: Credentials
    repl: Credentials
    database: str = DATABASE
    service: str = SERVICE_NAME
    version: int = 1
    #: The node last seen as the writable master (the one made writable again when
    #: the sandbox starts): topology operations move it.
    master: str = "db1"

    def to_json(self) -> str:
        def cred(c: Credentials) -> dict[str, str]:
            return {"user": c.user, "password": c.password}

        return json.dumps(
            {
                "version": self.version,
                "master": self.master,
                "service": self.service,
                "database": self.database,
                "nodes": [asdict(n) for n in self.nodes],
                "app": cred(self.app),
                "monitor": cred(self.monitor),
                "admin": cred(self.admin),
                "repl": cred(self.repl),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> SandboxState:
        data = json.loads(text)

        def cred(key: str) -> Credentials:
            return Credentials(data[key]["user"], data[key]["password"])

        return cls(
            nodes=[NodeSpec(**n) for n in data["nodes"]],
            app=cred("app"),
            monitor=cred("monitor"),
            admin=cred("admin"),
            repl=cred("repl"),
            database=data["database"],
            service=data["service"],
            version=data["version"],
            master=data.get("master", data["nodes"][0]["name"]),
        )


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One row of ``sqlrouter sandbox status``."""

    __module__ = "sqlrouter.sandbox"

    name: str
    port: int
    pid: int | None
    state: str  # running, stopped, frozen, unresponsive
    role: str  # master, replica, ...; for a node that cannot be asked, what its files say
    read_only: bool | None = None
    io_running: str | None = None
    sql_running: str | None = None
    gtid_pos: str | None = None
    seconds_behind_master: int | None = None
    sql_delay: int | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


def format_status(rows: Sequence[NodeStatus]) -> str:
    """The rows as a table; long errors are cut (``sandbox status --json`` has them)."""
    table = format_table(
        ["node", "role", "port", "pid", "state", "io", "sql", "behind", "delay", "gtid", "error"],
        [
            (
                r.name,
                r.role,
                r.port,
                r.pid,
                r.state,
                r.io_running,
                r.sql_running,
                r.seconds_behind_master,
                r.sql_delay,
                clip(r.gtid_pos, GTID_WIDTH),
                clip(r.error),
            )
            for r in rows
        ],
    )
    if any(clip(r.error) != r.error or clip(r.gtid_pos, GTID_WIDTH) != r.gtid_pos for r in rows):
        table += "\n" + CLIPPED_NOTE
    return table
