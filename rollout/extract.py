"""Copy the registry tables the warehouse needs into DuckDB, through Arrow.

DuckDB 2.0 has no SQLite/PostgreSQL scanner offline, so rows travel through ADBC as
Arrow record batches. Column types come from the SQLAlchemy models, so the
warehouse's ``registry.*`` tables have the same types whatever the backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb
from sqlalchemy import JSON, BigInteger, Boolean, Date, DateTime, Integer, Table
from sqlalchemy.types import TypeEngine

from rollout import warehouse
from rollout.registry.engine import adbc_uri, is_sqlite
from rollout.registry.models import LEDGER_TABLES, REGISTRY_TABLES, Base

EXTRACTED_TABLES = (*REGISTRY_TABLES, *LEDGER_TABLES)

# SQLite's ADBC driver guesses each column's type from the values in a batch, and a
# batch whose values are all NULL is guessed as an integer. Selecting a typed
# sentinel instead of NULL keeps every batch's type stable; DuckDB turns it back.
_NULL_TEXT = "\x00null"
_NULL_INT = -(2**63)


def _duckdb_type(sql_type: TypeEngine[Any]) -> str:
    if isinstance(sql_type, Boolean):
        return "BOOLEAN"
    if isinstance(sql_type, DateTime):
        return "TIMESTAMP"
    if isinstance(sql_type, Date):
        return "DATE"
    if isinstance(sql_type, Integer | BigInteger):
        return "BIGINT"
    if isinstance(sql_type, JSON):
        return "JSON"
    return "VARCHAR"


def _is_numeric(duck_type: str) -> bool:
    return duck_type in ("BIGINT", "BOOLEAN")


def _source_query(table: Table, sqlite: bool) -> str:
    columns = []
    for column in table.columns:
        name = column.name
        if not sqlite:
            columns.append(f'"{name}"')
        elif _is_numeric(_duckdb_type(column.type)):
            columns.append(f'coalesce("{name}", {_NULL_INT}) as "{name}"')
        else:
            columns.append(f'coalesce(cast("{name}" as text), char(0) || \'null\') as "{name}"')
    return f"select {', '.join(columns)} from {table.name}"


def _target_select(table: Table, sqlite: bool) -> str:
    columns = []
    for column in table.columns:
        duck_type = _duckdb_type(column.type)
        value = f'"{column.name}"'
        if sqlite:
            sentinel = str(_NULL_INT) if _is_numeric(duck_type) else "chr(0) || 'null'"
            value = f"nullif({value}, {sentinel})"
        columns.append(f'cast({value} as {duck_type}) as "{column.name}"')
    return ", ".join(columns)


@contextmanager
def _adbc_cursor(registry_url: str) -> Iterator[Any]:
    if is_sqlite(registry_url):
        import adbc_driver_sqlite.dbapi as driver
    else:
        import adbc_driver_postgresql.dbapi as driver  # type: ignore[no-redef]
    with driver.connect(adbc_uri(registry_url)) as connection, connection.cursor() as cursor:
        yield cursor


def extract_registry(con: duckdb.DuckDBPyConnection, registry_url: str) -> dict[str, int]:
    """Replace ``registry.*`` in the warehouse with the registry's current rows."""
    sqlite = is_sqlite(registry_url)
    counts: dict[str, int] = {}
    with _adbc_cursor(registry_url) as cursor, warehouse.transaction(con):
        for name in EXTRACTED_TABLES:
            table = Base.metadata.tables[name]
            cursor.execute(_source_query(table, sqlite))
            batches = cursor.fetch_record_batch()
            con.register("registry_batches", batches)
            try:
                con.execute(
                    f"create or replace table registry.{name} as "
                    f"select {_target_select(table, sqlite)} from registry_batches"
                )
            finally:
                con.unregister("registry_batches")
            counts[name] = warehouse.scalar(con, f"select count(*) from registry.{name}")
    return counts
