"""Settings of the test project: two aliases of one sqlrouter service.

The service comes from the environment: ``SQLROUTER_DJANGO_URL`` is a service URL with
the user, the password and the registry (tests/integration/test_django.py sets it to
its sandbox's).  ``default`` is configured with the URL, ``replica`` with the usual
NAME/USER/PASSWORD and OPTIONS, to show (and test) both forms.
"""

from __future__ import annotations

import os
from typing import Any

import sqlrouter

try:
    SERVICE_URL = os.environ["SQLROUTER_DJANGO_URL"]
except KeyError:
    raise RuntimeError(
        "tests.django_project.settings needs SQLROUTER_DJANGO_URL: a service URL such as "
        "sqlrouter://app:secret@sandbox/appdb?registry=/path/to/sqlrouter.toml"
    ) from None
_url = sqlrouter.parse_url(SERVICE_URL)

SECRET_KEY = "sqlrouter-tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "tests.django_project.urls"
INSTALLED_APPS = ["tests.django_project.shop"]
MIDDLEWARE = [
    "sqlrouter.contrib.django.CausalConsistencyMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "sqlrouter.contrib.django",
        # The URL's qos is overridden; a failover may take a few monitor rounds.
        "OPTIONS": {"url": SERVICE_URL, "qos": "RW_STRICT", "failover_timeout": 10},
    },
    "replica": {
        "ENGINE": "sqlrouter.contrib.django",
        "NAME": _url.database,
        "USER": _url.user,
        "PASSWORD": _url.password,
        "OPTIONS": {
            "service": _url.service,
            "registry": _url.registry,
            "qos": "RO_RELAXED",
            # Large enough that a replica delayed by a few seconds still qualifies
            # (the gunicorn test asks for less).
            "max_lag": float(os.environ.get("SQLROUTER_DJANGO_MAX_LAG", "10")),
        },
        "TEST": {"MIRROR": "default"},
    },
}
DATABASE_ROUTERS = ["sqlrouter.contrib.django.QoSRouter"]
SQLROUTER_CAUSAL_COOKIE = {"max_age": 60}
