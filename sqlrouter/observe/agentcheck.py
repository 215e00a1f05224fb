"""HAProxy's agent check, for load balancers that are not Python: one line in, one out.

::

    from sqlrouter.observe.agentcheck import AgentCheckServer

    with AgentCheckServer("127.0.0.1:9201"):   # this process's watched services
        ...

HAProxy connects (``agent-check agent-port 9201``), sends the server's
``agent-send`` string, ``SERVICE DATASOURCE [replica|master] [MAX_LAG]`` and a newline,
and reads one line: ``up`` when the datasource qualifies (the rule of
:mod:`sqlrouter.observe.health`), else ``down #REASON`` (the space matters: HAProxy 2.6
ignores ``down#REASON``); an unknown service or datasource
or a malformed line also answers ``down #...`` saying what is accepted.  HAProxy takes a
server out at ``down`` and puts it back at ``up`` once its own check passes too.  The
same limits as the HTTP endpoint: loopback unless ``allow_remote``, ``timeout`` seconds
to send a line of at most :data:`MAX_LINE` bytes, at most ``max_clients`` at once (a
new client takes the slot of the oldest one still sending; when all are being answered
it is closed without an answer, which HAProxy ignores).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Final

from ..routing.health import Snapshot
from ._listener import Listener, Protocol
from ._snapshots import Snapshots, latest, watched_snapshots
from .health import parse_address, verdict

__all__ = ["MAX_LINE", "AgentCheckServer", "agent_reply"]

logger = logging.getLogger("sqlrouter.observe.agentcheck")

#: The longest request line read, in bytes.
MAX_LINE: Final = 512
_EXPECTED: Final = "expected 'SERVICE DATASOURCE [replica|master] [MAX_LAG]'"


def _line(text: str) -> bytes:
    return (" ".join(text.split()) + "\n").encode("utf-8")


def agent_reply(request: bytes, snapshots: Iterable[Snapshot], *, now: float) -> bytes:
    """The answer to one request line: ``up`` or ``down #REASON``.  Pure (``now``:
    ``time.monotonic()``)."""
    try:
        words = request.decode("ascii").split()
    except UnicodeDecodeError:
        words = []
    if not 2 <= len(words) <= 4:
        return _line(f"down #bad request: {_EXPECTED}")
    service, name = words[0], words[1]
    role = words[2] if len(words) > 2 else "replica"
    max_lag = words[3] if len(words) > 3 else None
    status, text = verdict(
        service, name, role_text=role, max_lag_text=max_lag, snapshots=latest(snapshots), now=now
    )
    if status == 200:
        return b"up\n"
    return _line("down #" + text.removeprefix("down: "))


class AgentCheckServer:
    """The agent-check listener of the module docstring, in a thread of its own
    (``address``, ``snapshots``, ``allow_remote``: as :class:`HealthServer
    <sqlrouter.observe.health.HealthServer>`)."""

    def __init__(
        self,
        address: str,
        *,
        snapshots: Snapshots = watched_snapshots,
        allow_remote: bool = False,
        timeout: float = 5.0,
        max_clients: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._snapshots = snapshots
        self._clock = clock
        self._listener = Listener(
            parse_address(address, allow_remote=allow_remote),
            Protocol(
                name="agentcheck",
                complete=lambda data: b"\n" in data,
                reply=self.answer,
                limit=MAX_LINE,
                too_large=_line(f"down #request over {MAX_LINE} bytes"),
                too_slow=_line("down #request not received in time"),
                # Busy: closed without an answer, which HAProxy ignores (an answer of
                # "down" would take the server out because of this listener's clients).
                busy=b"",
            ),
            timeout=timeout,
            max_clients=max_clients,
        )

    def __repr__(self) -> str:
        host, port = self.address
        state = f"listening on {host}:{port}" if self._listener.running else "stopped"
        return f"<AgentCheckServer {state}>"

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.address

    def answer(self, request: bytes) -> bytes:
        try:
            return agent_reply(request, self._snapshots(), now=self._clock())
        except Exception:  # a bug must not kill the client's thread without an answer
            logger.exception("agent check: request failed")
            return _line("down #internal error (see the process's log)")

    def start(self) -> AgentCheckServer:
        self._listener.start()
        logger.info("agent check listening on %s:%d", *self.address)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._listener.stop(timeout)

    def __enter__(self) -> AgentCheckServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
