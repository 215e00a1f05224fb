"""Integrations of sqlrouter with other libraries: :mod:`sqlrouter.contrib.sqlalchemy`."""
