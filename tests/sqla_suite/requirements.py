"""What MariaDB (the sandbox) and MySQL support, for SQLAlchemy's compliance suite.

``SuiteRequirements`` closes every feature that is not universal, so that a dialect
opens what its database has.  The same class is used for the ``mysql+sqlrouter`` and
the ``mysql+pymysql`` runs, so both run the same tests.  Opened here: the MySQL and
MariaDB features that the MySQL dialect implements, so that as many tests as possible
exercise the driver.  Closed here: what ``SuiteRequirements`` assumes but MySQL and
MariaDB do not do, each with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.testing import exclusions
from sqlalchemy.testing.config import Config
from sqlalchemy.testing.requirements import SuiteRequirements

# SQLAlchemy's testing helpers are untyped (its modules say "mypy: ignore-errors"):
# reached through this name, their results are typed where they are returned.
_untyped: Any = exclusions

Rule = exclusions.compound


def _open() -> Rule:
    rule: Rule = _untyped.open()
    return rule


def _closed() -> Rule:
    rule: Rule = _untyped.closed()
    return rule


def _only_if(predicate: Callable[[Config], bool], reason: str) -> Rule:
    rule: Rule = _untyped.only_if(predicate, reason)
    return rule


def _skip(reason: str) -> Rule:
    """Skipped on every backend this suite runs on (MySQL, MariaDB), with ``reason``."""
    rule: Rule = _untyped.skip_if(lambda config: True, reason)
    return rule


def _mariadb(config: Config) -> bool:
    return bool(config.db.dialect.is_mariadb)


def _version(config: Config) -> tuple[int, ...]:
    return tuple(config.db.dialect.server_version_info or ())


class Requirements(SuiteRequirements):
    # -- DDL -------------------------------------------------------------------------

    @property
    def create_table_as(self) -> Rule:
        return _open()

    @property
    def create_temp_table_as(self) -> Rule:
        return _open()

    @property
    def table_ddl_if_exists(self) -> Rule:
        return _open()

    @property
    def index_ddl_if_exists(self) -> Rule:
        return _only_if(_mariadb, "MySQL has no CREATE INDEX IF NOT EXISTS")

    @property
    def views(self) -> Rule:
        return _open()

    @property
    def create_or_replace_view(self) -> Rule:
        return _open()

    @property
    def computed_columns(self) -> Rule:
        return _open()

    @property
    def computed_columns_stored(self) -> Rule:
        return _open()

    @property
    def computed_columns_virtual(self) -> Rule:
        return _open()

    @property
    def computed_columns_reflect_persisted(self) -> Rule:
        return _open()  # STORED or VIRTUAL (the default: computed_columns_default_persisted)

    @property
    def server_defaults(self) -> Rule:
        return _open()

    @property
    def expression_server_defaults(self) -> Rule:
        return _open()

    @property
    def unbounded_varchar(self) -> Rule:
        return _skip("MySQL and MariaDB need a length for VARCHAR")

    # -- reflection ------------------------------------------------------------------

    @property
    def foreign_keys_reflect_as_index(self) -> Rule:
        return _open()  # InnoDB creates an index for every foreign key

    @property
    def unique_constraints_reflect_as_index(self) -> Rule:
        return _open()  # a UNIQUE constraint is a unique index

    @property
    def unique_index_reflect_as_unique_constraints(self) -> Rule:
        return _open()

    @property
    def cross_schema_fk_reflection(self) -> Rule:
        return _open()

    @property
    def foreign_key_constraint_name_reflection(self) -> Rule:
        return _open()

    @property
    def foreign_key_constraint_option_reflection_ondelete(self) -> Rule:
        return _open()

    @property
    def foreign_key_constraint_option_reflection_onupdate(self) -> Rule:
        return _open()

    @property
    def fk_constraint_option_reflection_ondelete_noaction(self) -> Rule:
        return _open()

    @property
    def comment_reflection(self) -> Rule:
        return _open()

    @property
    def check_constraint_reflection(self) -> Rule:
        return _open()

    @property
    def reflect_table_options(self) -> Rule:
        return _open()

    # -- SQL -------------------------------------------------------------------------

    @property
    def ctes(self) -> Rule:
        return _open()

    @property
    def window_functions(self) -> Rule:
        return _open()

    @property
    def intersect(self) -> Rule:
        return _only_if(
            lambda config: _mariadb(config) or _version(config) >= (8, 0, 31),
            "INTERSECT needs MariaDB 10.3 or MySQL 8.0.31",
        )

    @property
    def except_(self) -> Rule:
        return self.intersect

    @property
    def tuple_in(self) -> Rule:
        return _open()

    @property
    def boolean_col_expressions(self) -> Rule:
        return _open()

    @property
    def update_from(self) -> Rule:
        return _open()

    @property
    def delete_from(self) -> Rule:
        return _open()

    @property
    def mod_operator_as_percent_sign(self) -> Rule:
        return _open()

    @property
    def regexp_match(self) -> Rule:
        return _open()

    @property
    def regexp_replace(self) -> Rule:
        return _open()

    @property
    def supports_bitwise_or(self) -> Rule:
        return _open()

    @property
    def supports_bitwise_and(self) -> Rule:
        return _open()

    @property
    def supports_bitwise_not(self) -> Rule:
        return _skip("~ is a 64-bit unsigned NOT: ~(-1) is 0, ~1 is 18446744073709551614")

    @property
    def supports_bitwise_xor(self) -> Rule:
        return _open()

    @property
    def supports_bitwise_shift(self) -> Rule:
        return _open()

    @property
    def sql_expression_limit_offset(self) -> Rule:
        return _skip("LIMIT and OFFSET take numbers or parameters, not expressions")

    # -- types -----------------------------------------------------------------------

    @property
    def json_type(self) -> Rule:
        return _open()

    @property
    def uuid_data_type(self) -> Rule:
        return _only_if(
            lambda config: _mariadb(config) and _version(config) >= (10, 7),
            "a UUID type needs MariaDB 10.7",
        )

    @property
    def precision_numerics_retains_significant_digits(self) -> Rule:
        return _open()

    @property
    def precision_generic_float_type(self) -> Rule:
        return _skip("FLOAT is single precision: it keeps about 7 digits, not 7 decimals")

    @property
    def datetime_microseconds(self) -> Rule:
        return _skip("DATETIME without a precision, as the generic type renders it, drops µs")

    @property
    def time_microseconds(self) -> Rule:
        return _skip("TIME without a precision, as the generic type renders it, drops µs")

    @property
    def datetime_implicit_bound(self) -> Rule:
        return _skip("SELECT of a bare date/time parameter returns a string on MySQL")

    @property
    def date_implicit_bound(self) -> Rule:
        return self.datetime_implicit_bound

    @property
    def time_implicit_bound(self) -> Rule:
        return self.datetime_implicit_bound

    # -- transactions ----------------------------------------------------------------

    @property
    def savepoints(self) -> Rule:
        return _open()

    @property
    def isolation_level(self) -> Rule:
        return _open()

    @property
    def autocommit(self) -> Rule:
        return _open()

    def get_isolation_levels(self, config: Config) -> dict[str, Any]:
        # In the dialect's order: the suite quotes the list in an expected message.
        levels = list(config.db.dialect.get_isolation_level_values(None))
        return {"default": "REPEATABLE READ", "supported": levels}
