"""What a session asks of the router: its quality of service and its fallback.

These are the values of the ``qos=`` and ``fallback=`` URL parameters; the URL parser
and the router share them from here.
"""

from __future__ import annotations

import enum

__all__ = ["Fallback", "QoS"]


class QoS(enum.Enum):
    """The quality of service a session asks for."""

    #: Read and write the observed writable master; never a replica.
    RW_STRICT = "RW_STRICT"
    #: Read from a replica whose lag is at most ``max_lag`` seconds.
    RO_RELAXED = "RO_RELAXED"

    def __str__(self) -> str:
        return self.value


class Fallback(enum.Enum):
    """What a RO_RELAXED session gets when no replica qualifies."""

    #: The observed writable master serves the reads.
    MASTER = "master"
    #: The connection fails with :class:`sqlrouter.errors.NoReplicaAvailable`.
    ERROR = "error"

    def __str__(self) -> str:
        return self.value
