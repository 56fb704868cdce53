"""Copy the registry tables the warehouse needs into DuckDB, through Arrow.

DuckDB 2.0 has no SQLite/PostgreSQL scanner offline, so rows travel as Arrow record
batches: from PostgreSQL through ADBC (binary COPY), from SQLite through ADBC in a
child process (rollout.registry.sqlite_export says why). Column types come from the
SQLAlchemy models, so the warehouse's ``registry.*`` tables have the same types
whatever the backend.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from sqlalchemy import JSON, BigInteger, Boolean, Date, DateTime, Integer, Table
from sqlalchemy.engine import make_url
from sqlalchemy.types import TypeEngine

from rollout import warehouse
from rollout.errors import RolloutError
from rollout.registry.engine import adbc_uri, is_sqlite, normalize_url
from rollout.registry.migrate import require_current_schema
from rollout.registry.models import LEDGER_TABLES, REGISTRY_TABLES, Base, extracted_columns
from rollout.registry.sqlite_export import NULL_INT, select_with_sentinels

EXTRACTED_TABLES = (*REGISTRY_TABLES, *LEDGER_TABLES)


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
    columns = ", ".join(f'"{column.name}"' for column in extracted_columns(table))
    return f"select {columns} from {table.name}"


def _target_select(table: Table) -> str:
    return ", ".join(
        f'cast("{column.name}" as {_duckdb_type(column.type)}) as "{column.name}"'
        for column in extracted_columns(table)
    )


def _numeric_columns(table: Table) -> list[str]:
    return [c.name for c in extracted_columns(table) if _is_numeric(_duckdb_type(c.type))]


def _export_sqlite(registry_url: str, tables: tuple[str, ...], folder: Path) -> None:
    """Dump the tables to Arrow files through ADBC, in a child process (see
    rollout.registry.sqlite_export for why not in this one)."""
    database = make_url(normalize_url(registry_url)).database or ":memory:"
    specs = [f"{name}:{','.join(_numeric_columns(Base.metadata.tables[name]))}" for name in tables]
    done = subprocess.run(
        [sys.executable, "-m", "rollout.registry.sqlite_export", database, str(folder), *specs],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RolloutError(f"reading the registry {database} failed: {last}")


def _sqlite_select(table: Table) -> str:
    """Cast the exported columns to the model's types, sentinels back to NULL."""
    columns = []
    for column in extracted_columns(table):
        duck_type = _duckdb_type(column.type)
        sentinel = str(NULL_INT) if _is_numeric(duck_type) else "chr(0) || 'null'"
        columns.append(
            f'cast(nullif("{column.name}", {sentinel}) as {duck_type}) as "{column.name}"'
        )
    return ", ".join(columns)


@contextmanager
def _postgres_cursor(registry_url: str) -> Iterator[Any]:
    import adbc_driver_postgresql.dbapi as driver

    with driver.connect(adbc_uri(registry_url)) as connection, connection.cursor() as cursor:
        yield cursor


def _read_sqlite_here(registry_url: str, tables: tuple[str, ...]) -> dict[str, pa.Table]:
    """The same export in this process through sqlite3, straight to Arrow: slower per
    row, but no child process to start, for re-reading a few thousand rows just written."""
    database = make_url(normalize_url(registry_url)).database or ":memory:"
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    read: dict[str, pa.Table] = {}
    try:
        for name in tables:
            table = Base.metadata.tables[name]
            numeric = set(_numeric_columns(table))
            rows = connection.execute(select_with_sentinels(name, numeric)).fetchall()
            wanted = extracted_columns(table)
            columns = list(zip(*rows, strict=True)) or [() for _ in wanted]
            read[name] = pa.table(
                {
                    column.name: pa.array(
                        values, pa.int64() if column.name in numeric else pa.string()
                    )
                    for column, values in zip(wanted, columns, strict=True)
                }
            )
    finally:
        connection.close()
    return read


def extract_registry(
    con: duckdb.DuckDBPyConnection,
    registry_url: str,
    tables: tuple[str, ...] = EXTRACTED_TABLES,
    *,
    small: bool = False,
) -> dict[str, int]:
    """Replace ``registry.*`` in the warehouse with the registry's current rows.

    ``small``: the tables hold a few thousand rows; on SQLite read them in this
    process rather than starting the (faster per row) child exporter.
    """
    require_current_schema(registry_url)
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="rollout-extract-") as scratch:
        sqlite = is_sqlite(registry_url)
        in_memory = _read_sqlite_here(registry_url, tables) if sqlite and small else {}
        if sqlite and not small:
            _export_sqlite(registry_url, tables, Path(scratch))
        source = nullcontext(None) if sqlite else _postgres_cursor(registry_url)
        with source as cursor, warehouse.transaction(con):
            for name in tables:
                table = Base.metadata.tables[name]
                if cursor is None:
                    # Not `.get() or ...`: an empty Arrow table is falsy.
                    data: Any = (
                        in_memory[name]
                        if name in in_memory
                        else pa.ipc.open_file(pa.memory_map(f"{scratch}/{name}.arrow")).read_all()
                    )
                    select_list = _sqlite_select(table)
                else:
                    cursor.execute(_source_query(table))
                    data = cursor.fetch_record_batch()
                    select_list = _target_select(table)
                con.register("registry_batches", data)
                try:
                    con.execute(
                        f"create or replace table registry.{name} as "
                        f"select {select_list} from registry_batches"
                    )
                finally:
                    with suppress(duckdb.Error):  # never hide the error that got us here
                        con.unregister("registry_batches")
                counts[name] = warehouse.scalar(con, f"select count(*) from registry.{name}")
    return counts
