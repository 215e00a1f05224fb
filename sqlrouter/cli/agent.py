"""``sqlrouter agent --registry FILE``: run :class:`sqlrouter.agent.Agent` until SIGTERM.

When a service it watches opts in to automatic failover
(``[services.NAME.autofailover] enabled = true``), the agent runs it too
(:class:`sqlrouter.autofailover.AutofailoverTask`, imported only then: it needs the
``etcd`` extra).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from ..agent import Agent
from ..registry.find import find_registry

__all__ = ["run"]

Out = Callable[[str], None]


def run(args: argparse.Namespace, out: Out) -> int:
    """Run the agent in the foreground (for systemd, a container, a terminal)."""
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
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
    agent.run()
    out("sqlrouter agent: stopped")
    return 0
