"""The WSGI application of the test project, for gunicorn (tests/integration/test_fork.py).

With ``--preload``, gunicorn imports this module in its master process and then forks
its workers.  With ``SQLROUTER_DJANGO_WARM_UP`` set it touches the database while it
loads, once through each alias, as many applications do: the master's sqlrouter is then
watching the service when the workers are forked.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application
from django.db import connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_project.settings")

application = get_wsgi_application()

if os.environ.get("SQLROUTER_DJANGO_WARM_UP"):
    for _alias in ("default", "replica"):
        with connections[_alias].cursor() as _cursor:
            _cursor.execute("SELECT 1")
    connections.close_all()
