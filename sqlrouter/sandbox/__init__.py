"""A real local replicated MariaDB cluster, for trying and testing sqlrouter.

``sqlrouter sandbox up --dir DIR`` builds it from the MariaDB server installed on the
machine (``mariadbd`` and ``mariadb-install-db``): one master and N replicas bound to
127.0.0.1, GTID replication (``MASTER_USE_GTID=slave_pos``, ``gtid_strict_mode``,
``log_slave_updates``, a binlog on every node, ``read_only=1`` on replicas),
semi-synchronous replication, an application user and database, a monitoring user, an
administrative user, the heartbeat table, and ``DIR/sqlrouter.toml``: the registry
describing service ``sandbox``.

The same :class:`Sandbox` class is the Python API the test fixtures use.  The sandbox
trades durability for speed (``innodb_flush_log_at_trx_commit=2``, ``sync_binlog=0``):
it is for development and tests, never for data that matters.

:class:`EtcdCluster` starts a local etcd cluster (three members on free loopback ports)
for automatic failover's tests and benchmark (docs/autofailover.md).
"""

from __future__ import annotations

from ._cluster import Sandbox
from ._etcd import EtcdCluster
from ._process import Binaries, find_server_binaries
from ._state import (
    DATABASE,
    FAULTS,
    HEARTBEAT_TABLE,
    REGISTRY_FILE,
    SERVICE_NAME,
    NodeSpec,
    NodeStatus,
    SandboxError,
    SandboxState,
    format_status,
)

__all__ = [
    "DATABASE",
    "FAULTS",
    "HEARTBEAT_TABLE",
    "REGISTRY_FILE",
    "SERVICE_NAME",
    "Binaries",
    "EtcdCluster",
    "NodeSpec",
    "NodeStatus",
    "Sandbox",
    "SandboxError",
    "SandboxState",
    "find_server_binaries",
    "format_status",
]
