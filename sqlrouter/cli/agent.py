"""``sqlrouter agent --registry FILE``: run :class:`sqlrouter.agent.Agent` until SIGTERM."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from ..agent import Agent

__all__ = ["run"]

Out = Callable[[str], None]


def run(args: argparse.Namespace, out: Out) -> int:
    """Run the agent in the foreground (for systemd, a container, a terminal)."""
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    Agent(args.registry, services=tuple(args.service)).run()
    out("sqlrouter agent: stopped")
    return 0
