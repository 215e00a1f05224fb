"""Bootstraps SQLAlchemy's pytest plugin for the dialect compliance suite.

The suite runs only under its runner (``scripts/sqla-suite``, which sets
``SQLROUTER_SQLA_SUITE=1`` and uses ``tests/sqla_suite/pytest.ini``): SQLAlchemy's
plugin takes over pytest's collection and options, so the main test run must not load
it, and ignores this directory instead.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("SQLROUTER_SQLA_SUITE") == "1":
    pytest.register_assert_rewrite("sqlalchemy.testing.assertions")
    # SQLAlchemy loads a dialect's provisioning hooks from the dialect's own package
    # (sqlrouter.contrib.provision, which does not exist): the MySQL ones apply.
    import sqlalchemy.dialects.mysql.provision  # noqa: F401  (imported for its hooks)

    # pytest finds SQLAlchemy's hooks and fixtures by name in this module.
    from sqlalchemy.testing.plugin.pytestplugin import *  # noqa: F403
else:
    collect_ignore_glob = ["*"]
