"""Django's MySQL backend module, importable without mysqlclient.

``django.db.backends.mysql.base`` (and its ``introspection`` module) run ``import
MySQLdb`` at import time, check ``MySQLdb.version_info`` and read
``MySQLdb.constants`` and ``MySQLdb.converters``.  The sqlrouter backend subclasses
that module's ``DatabaseWrapper`` and talks to the server through PyMySQL (sqlrouter's
connections *are* PyMySQL connections), so it needs the module, not mysqlclient.

When ``MySQLdb`` imports (mysqlclient is installed, or the application called
``pymysql.install_as_MySQLdb()``), Django's module is imported as it is.  Otherwise a
stand-in named ``MySQLdb`` is placed in :data:`sys.modules` *only while Django's module
is imported*, then removed: nothing else in the process sees a ``MySQLdb`` module
afterwards (``import MySQLdb`` still fails as before).  The stand-in carries PyMySQL's
constants, converters and exception classes, which are what Django's module reads at
import time and in its ``except`` clauses; its ``connect()`` refuses, so an alias
with ENGINE ``django.db.backends.mysql`` in the same process still fails, with a
message saying that mysqlclient is missing, as it would without sqlrouter.  The
sqlrouter backend overrides every method of Django's wrapper that uses the module's
``Database`` (``get_new_connection``, ``is_usable``, the cursor wrapper), so it never
depends on which of the two Django's module got.

This is a narrow exception to "no import side effects": the alternative, a copy of
Django's 450-line MySQL backend, would drift from Django's with every release.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import TYPE_CHECKING, Any, NoReturn

import pymysql
import pymysql.constants.CLIENT
import pymysql.constants.FIELD_TYPE
import pymysql.converters
from django.core.exceptions import ImproperlyConfigured

__all__ = ["MySQLDatabaseClient", "MySQLDatabaseCreation", "MySQLDatabaseFeatures", "mysql_base"]

_MODULE = "django.db.backends.mysql.base"
_lock = threading.Lock()


def _refuse_connect(*args: Any, **kwargs: Any) -> NoReturn:
    raise ImproperlyConfigured(
        "Error loading MySQLdb module.\nDid you install mysqlclient?  (ENGINE "
        "'django.db.backends.mysql' needs mysqlclient; ENGINE 'sqlrouter.contrib.django' "
        "loaded Django's MySQL backend without it, through PyMySQL)"
    )


def _stand_in() -> dict[str, types.ModuleType]:
    """The ``MySQLdb`` modules Django's MySQL backend imports, made of PyMySQL's parts."""
    root = types.ModuleType("MySQLdb", "Stand-in used by sqlrouter.contrib.django (PyMySQL).")
    constants = types.ModuleType("MySQLdb.constants")
    converters = types.ModuleType("MySQLdb.converters")
    constants.CLIENT = pymysql.constants.CLIENT  # type: ignore[attr-defined]  # a module's new attribute
    constants.FIELD_TYPE = pymysql.constants.FIELD_TYPE  # type: ignore[attr-defined]  # same
    converters.conversions = dict(pymysql.converters.conversions)  # type: ignore[attr-defined]  # same
    attributes: dict[str, Any] = {
        # PyMySQL's own mysqlclient-compatible version, which Django's check accepts.
        "version_info": pymysql.version_info,
        "__version__": pymysql.__version__,
        "connect": _refuse_connect,
        "constants": constants,
        "converters": converters,
    }
    for name in (
        "Warning",
        "Error",
        "InterfaceError",
        "DatabaseError",
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
    ):
        attributes[name] = getattr(pymysql.err, name)
    for name, value in attributes.items():
        setattr(root, name, value)
    return {"MySQLdb": root, "MySQLdb.constants": constants, "MySQLdb.converters": converters}


def _load() -> types.ModuleType:
    loaded = sys.modules.get(_MODULE)
    if loaded is not None:
        return loaded
    try:
        importlib.import_module("MySQLdb")
    except ImportError:
        pass
    else:
        return importlib.import_module(_MODULE)
    with _lock:
        added = {name: module for name, module in _stand_in().items() if name not in sys.modules}
        sys.modules.update(added)
        try:
            return importlib.import_module(_MODULE)
        finally:
            for name, module in added.items():
                if sys.modules.get(name) is module:
                    del sys.modules[name]


if TYPE_CHECKING:
    from django.db.backends.mysql import base as mysql_base
    from django.db.backends.mysql.client import DatabaseClient as MySQLDatabaseClient
    from django.db.backends.mysql.creation import DatabaseCreation as MySQLDatabaseCreation
    from django.db.backends.mysql.features import DatabaseFeatures as MySQLDatabaseFeatures
else:
    mysql_base = _load()
    MySQLDatabaseClient = mysql_base.DatabaseClient
    MySQLDatabaseCreation = mysql_base.DatabaseCreation
    MySQLDatabaseFeatures = mysql_base.DatabaseFeatures
