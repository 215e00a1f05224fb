"""A local etcd cluster on free loopback ports: the coordination store of automatic failover
(docs/autofailover.md), for the tests, the benchmark and trying it out.

Debian's ``etcd-server`` (installed by scripts/_setup.sh when missing) runs each member
in ``DIR/NAME`` with its log in ``DIR/NAME.log``; every member is started with
PR_SET_PDEATHSIG, so that an interrupted run leaves none behind.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from ._process import _free_ports, _pdeathsig
from ._state import SandboxError

__all__ = ["EtcdCluster"]


class EtcdCluster:
    """``members`` etcd members in ``directory``: :meth:`start`, :meth:`stop`, and the
    faults the tests need (:meth:`kill_member`, :meth:`start_member`)."""

    __module__ = "sqlrouter.sandbox"

    def __init__(self, directory: Path, members: int = 3) -> None:
        self.dir = directory
        ports = _free_ports(2 * members)
        self.client_ports = ports[:members]
        self.peer_ports = ports[members:]
        self.names = [f"m{i + 1}" for i in range(members)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def __repr__(self) -> str:
        return f"<EtcdCluster {self.dir} {len(self.procs)}/{len(self.names)} running>"

    @property
    def endpoints(self) -> list[str]:
        """``host:port`` of each member's client port, as the registry names them."""
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def _command(self, i: int) -> list[str]:
        name = self.names[i]
        peers = ",".join(
            f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        client = f"http://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        etcd = shutil.which("etcd")
        if etcd is None:
            raise SandboxError("etcd is not installed: apt-get install etcd-server")
        return [
            etcd,
            f"--name={name}",
            f"--data-dir={self.dir / name}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={peers}",
            "--initial-cluster-state=new",  # ignored when the member's data exists
            "--initial-cluster-token=sqlrouter-sandbox",
            "--logger=zap",
            f"--log-outputs={self.dir / (name + '.log')}",
        ]

    def start_member(self, i: int) -> None:
        """Start member ``i`` (again, with its data, after :meth:`kill_member`)."""
        self.procs[self.names[i]] = subprocess.Popen(
            self._command(i),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_pdeathsig,  # noqa: PLW1509 - no other thread starts processes here
        )

    def kill_member(self, i: int) -> None:
        """SIGKILL member ``i``."""
        proc = self.procs.pop(self.names[i])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def start(self, timeout: float = 30.0) -> None:
        """Start every member and wait until each one answers healthy."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for i in range(len(self.names)):
            self.start_member(i)
        deadline = time.monotonic() + timeout
        while not all(self.healthy(i) for i in range(len(self.names))):
            if time.monotonic() > deadline:
                self.stop()
                raise SandboxError(
                    f"etcd did not start within {timeout:g}s: see the logs in {self.dir}"
                )
            time.sleep(0.1)

    def healthy(self, i: int) -> bool:
        """Member ``i`` answers ``/health`` with a leader and a quorum."""
        url = f"http://127.0.0.1:{self.client_ports[i]}/health"
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                return bool(json.loads(answer.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """SIGKILL every member (its data stays in the directory)."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self.procs.clear()
