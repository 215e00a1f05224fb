"""``sqlrouter agent --registry FILE [--http HOST:PORT]``: run :class:`sqlrouter.agent.Agent`
until SIGTERM, with the health endpoint (:class:`sqlrouter.observe.serve.HealthTask`) as
one of its tasks when ``--http`` is given."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ..agent import Agent
from ..observe.serve import HealthTask

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
    agent = Agent(args.registry, services=tuple(args.service))
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
