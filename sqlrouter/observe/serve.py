"""The health endpoint as a long-running part of a process (``sqlrouter agent --http``).

::

    task = HealthTask("127.0.0.1:9200", agent_check="127.0.0.1:9201")
    task.start(None)      # or: agent.add_task(task), which starts and stops it
    ...
    task.stop(5.0)

:class:`HealthTask` has the shape of a task of ``sqlrouter agent`` (``name``,
``start(agent)``, ``stop(timeout)``): it serves :class:`~sqlrouter.observe.health.HealthServer`
on ``http`` with ``/metrics`` when the ``metrics`` extra is installed (a registry of its
own, counting what this process does), and optionally HAProxy's agent check
(:class:`~sqlrouter.observe.agentcheck.AgentCheckServer`) on ``agent_check``, both from
this process's watched services.  Addresses are checked when the task is made, so a
command line refuses a bad one before anything starts.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

from ._snapshots import Snapshots, watched_snapshots
from .agentcheck import AgentCheckServer
from .health import HealthServer, parse_address

__all__ = ["HealthTask"]

logger = logging.getLogger("sqlrouter.observe")


class HealthTask:
    """The health endpoint (and the agent check) of the module docstring."""

    name = "health endpoint"

    def __init__(
        self,
        http: str,
        *,
        agent_check: str | None = None,
        allow_remote: bool = False,
        snapshots: Snapshots = watched_snapshots,
    ) -> None:
        parse_address(http, allow_remote=allow_remote)
        if agent_check is not None:
            parse_address(agent_check, allow_remote=allow_remote)
        self._http = http
        self._agent_check = agent_check
        self._allow_remote = allow_remote
        self._snapshots = snapshots
        self.server: HealthServer | None = None
        self.agent: AgentCheckServer | None = None
        self._close_metrics: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<HealthTask {self.server!r} {self.agent!r}>"

    def _metrics(self) -> Callable[[], tuple[bytes, str]] | None:
        """``/metrics`` from a registry of this task, when prometheus_client is there."""
        if importlib.util.find_spec("prometheus_client") is None:
            logger.info("health endpoint: no /metrics (install sqlrouter[metrics])")
            return None
        # The extra is optional: imported only when installed (the module imports it).
        from prometheus_client import CollectorRegistry  # noqa: PLC0415

        from .metrics import CONTENT_TYPE, Metrics  # noqa: PLC0415

        metrics = Metrics(registry=CollectorRegistry(), snapshots=self._snapshots).start()
        self._close_metrics = metrics.close
        return lambda: (metrics.exposition(), CONTENT_TYPE)

    def start(self, agent: object) -> None:
        """Start listening (``agent``: the agent running the task, unused)."""
        if self.server is not None:
            return
        try:
            self.server = HealthServer(
                self._http,
                snapshots=self._snapshots,
                allow_remote=self._allow_remote,
                metrics=self._metrics(),
            ).start()
            if self._agent_check is not None:
                self.agent = AgentCheckServer(
                    self._agent_check, snapshots=self._snapshots, allow_remote=self._allow_remote
                ).start()
        except BaseException:
            self.stop(5.0)
            raise

    def stop(self, timeout: float) -> None:
        """Stop both listeners (each within ``timeout`` seconds) and the metrics."""
        server, agent, close = self.server, self.agent, self._close_metrics
        self.server = self.agent = self._close_metrics = None
        if agent is not None:
            agent.stop(timeout)
        if server is not None:
            server.stop(timeout)
        if close is not None:
            close()
