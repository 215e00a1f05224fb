"""``sqlrouter agent --registry FILE [--http HOST:PORT]``: run :class:`sqlrouter.agent.Agent`
until SIGTERM, with the health endpoint (:class:`sqlrouter.observe.serve.HealthTask`) as
one of its tasks when ``--http`` is given.

When a service it watches opts in to automatic failover
(``[services.NAME.autofailover] enabled = true``), the agent runs it too
(:class:`sqlrouter.autofailover.AutofailoverTask`, imported only then: it needs the
``etcd`` extra).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ..agent import Agent
from ..observe.serve import HealthTask
from ..registry.find import find_registry

__all__ = ["run"]

Out = Callable[[str], None]


def run(args: argparse.Namespace, out: Out) -> int:
    """Run the agent in the foreground (for systemd, a container, a terminal)."""
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.agent_check is not None and args.http is None:
        print("sqlrouter agent: error: --agent-check needs --http", file=sys.stderr)
        return 2
    only = tuple(args.service)
    agent = Agent(args.registry, services=only)
    registry = find_registry(args.registry)
    opted = [
        n
        for n in registry.services()
        if (not only or n in only) and registry.lookup(n).autofailover.enabled
    ]
    if opted:
        from ..autofailover import AutofailoverTask  # noqa: PLC0415 (the etcd extra)

        logging.getLogger("sqlrouter.agent").info(
            "agent: automatic failover of %s", ", ".join(opted)
        )
        agent.add_task(AutofailoverTask())
    if args.http is not None:
        try:
            task = HealthTask(
                args.http, agent_check=args.agent_check, allow_remote=args.allow_remote
            )
        except ValueError as exc:
            print(f"sqlrouter agent: error: {exc}", file=sys.stderr)
            return 2
        agent.add_task(task)
    agent.run()
    out("sqlrouter agent: stopped")
    return 0
