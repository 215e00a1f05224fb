"""sqlrouter for Django: a database backend, a database router and a middleware.

``ENGINE: "sqlrouter.contrib.django"`` is Django's MySQL backend running on sqlrouter
(PyMySQL underneath): an alias is a service and a quality of service.
:class:`QoSRouter` sends reads to the RO_RELAXED alias and writes to the RW_STRICT
alias (:func:`use_master` forces the master), and :class:`CausalConsistencyMiddleware`
gives each request one causal token shared by both aliases, carried to the user's next
requests in a signed cookie.  docs/django.md has the settings and the guarantees.
"""

from __future__ import annotations

try:
    import django  # noqa: F401  # checked here for a clear message
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sqlrouter.contrib.django needs Django: pip install 'sqlrouter[django]'"
    ) from exc

from .middleware import CausalConsistencyMiddleware
from .routers import QoSRouter, use_master

__all__ = ["CausalConsistencyMiddleware", "QoSRouter", "use_master"]
