"""Copy the registry tables the warehouse needs into DuckDB, through Arrow.

DuckDB 2.0 has no SQLite/PostgreSQL scanner offline, so rows travel as Arrow record
batches: from PostgreSQL through ADBC (binary COPY, fast), from SQLite through the
same sqlite3 library SQLAlchemy uses. ADBC's SQLite driver carries its own copy of
SQLite, and two copies in one process do not share file locks: reads after a write
through SQLAlchemy came back stale. Column types come from the SQLAlchemy models, so
the warehouse's ``registry.*`` tables have the same types whatever the backend.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import duckdb
import pyarrow as pa
from sqlalchemy import JSON, BigInteger, Boolean, Date, DateTime, Integer, Table
from sqlalchemy.engine import make_url
from sqlalchemy.types import TypeEngine

from rollout import warehouse
from rollout.registry.engine import adbc_uri, is_sqlite, normalize_url
from rollout.registry.models import LEDGER_TABLES, REGISTRY_TABLES, Base

EXTRACTED_TABLES = (*REGISTRY_TABLES, *LEDGER_TABLES)

_BATCH_ROWS = 100_000


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


def _source_query(table: Table) -> str:
    columns = ", ".join(f'"{column.name}"' for column in table.columns)
    return f"select {columns} from {table.name}"


def _target_select(table: Table) -> str:
    return ", ".join(
        f'cast("{column.name}" as {_duckdb_type(column.type)}) as "{column.name}"'
        for column in table.columns
    )


def _sqlite_batches(registry_url: str, table: Table) -> pa.RecordBatchReader:
    """The table's rows from SQLite as Arrow batches: numbers as int64, the rest as
    text that DuckDB casts (SQLite stores times as text anyway)."""
    schema = pa.schema(
        (c.name, pa.int64() if _is_numeric(_duckdb_type(c.type)) else pa.string())
        for c in table.columns
    )
    database = make_url(normalize_url(registry_url)).database or ":memory:"

    def batches() -> Iterator[pa.RecordBatch]:
        # DuckDB pulls batches from its own threads, one at a time.
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, check_same_thread=False)
        try:
            cursor = connection.execute(_source_query(table))
            while rows := cursor.fetchmany(_BATCH_ROWS):
                columns = list(zip(*rows, strict=True))
                yield pa.record_batch(
                    [
                        pa.array(values, field.type)
                        for values, field in zip(columns, schema, strict=True)
                    ],
                    schema=schema,
                )
        finally:
            connection.close()

    return pa.RecordBatchReader.from_batches(schema, batches())


@contextmanager
def _postgres_cursor(registry_url: str) -> Iterator[Any]:
    import adbc_driver_postgresql.dbapi as driver

    with driver.connect(adbc_uri(registry_url)) as connection, connection.cursor() as cursor:
        yield cursor


def _batches(cursor: Any, registry_url: str, table: Table) -> pa.RecordBatchReader:
    if cursor is None:
        return _sqlite_batches(registry_url, table)
    cursor.execute(_source_query(table))
    return cursor.fetch_record_batch()


def extract_registry(
    con: duckdb.DuckDBPyConnection,
    registry_url: str,
    tables: tuple[str, ...] = EXTRACTED_TABLES,
) -> dict[str, int]:
    """Replace ``registry.*`` in the warehouse with the registry's current rows."""
    counts: dict[str, int] = {}
    source = nullcontext(None) if is_sqlite(registry_url) else _postgres_cursor(registry_url)
    with source as cursor, warehouse.transaction(con):
        for name in tables:
            table = Base.metadata.tables[name]
            con.register("registry_batches", _batches(cursor, registry_url, table))
            try:
                con.execute(
                    f"create or replace table registry.{name} as "
                    f"select {_target_select(table)} from registry_batches"
                )
            finally:
                con.unregister("registry_batches")
            counts[name] = warehouse.scalar(con, f"select count(*) from registry.{name}")
    return counts
