"""Bulk loading of Arrow tables into the registry through ADBC.

The ORM inserts a few thousand rows a second; ADBC's bulk ingest binds whole Arrow
columns (a COPY on PostgreSQL, one prepared INSERT in one transaction on SQLite), which
is what a sample registry of millions of rows needs. Column names and types must match
``rollout/registry/models.py``: timestamps are ``timestamp[us]`` without a time zone
(naive UTC), booleans are ``bool``.

SQLite: close (``engine.dispose()``) every SQLAlchemy connection of this process to the
database before ingesting. The ADBC driver links its own copy of SQLite, and two SQLite
libraries in one process do not see each other's file locks: with a pooled connection
still open the ingest fails with "disk I/O error" (or worse, see sqlite.org/howtocorrupt).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rollout.registry import changes
from rollout.registry.engine import adbc_connect, is_sqlite

# SQLAlchemy's own storage format for DateTime on SQLite. ADBC would write ISO 8601
# with a 'T', which sorts differently from what the ORM writes and binds, so string
# comparisons in SQL (``created_at < :cutoff``) would be wrong on the same day.
# Arrow's %S prints the fraction of a timestamp[us] (``05.000000``).
_SQLITE_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def for_backend(data: pa.Table, sqlite: bool) -> pa.Table:
    """``data`` with its columns in the representation the backend's ORM reads back."""
    if not sqlite:
        return data
    columns = []
    for field, column in zip(data.schema, data.columns, strict=True):
        if pa.types.is_timestamp(field.type):
            column = pc.strftime(column, format=_SQLITE_DATETIME_FORMAT)
        elif pa.types.is_boolean(field.type):
            # SQLAlchemy's Boolean is 0/1 on SQLite: say so rather than rely on the driver.
            column = pc.cast(column, pa.int8())
        columns.append(column)
    return pa.table(columns, names=data.column_names)


def insert_arrow(url: str, table: str, data: pa.Table) -> int:
    """Append ``data`` to ``table`` in one transaction; returns the number of rows.

    Rows with explicit ids leave PostgreSQL's id sequence behind: call
    :func:`reset_id_sequences` afterwards.
    """
    return insert_tables(url, [(table, data)])[table]


def insert_tables(
    url: str,
    tables: Iterable[tuple[str, pa.Table]],
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Append each (table, data) in the order given, all in one transaction.

    One transaction so that a failure half way leaves the registry as it was rather
    than with accounts but no factors. ``progress(table, rows)`` is called after each.
    """
    sqlite = is_sqlite(url)
    tables = list(tables)
    counts: dict[str, int] = {}
    with adbc_connect(url) as connection:
        try:
            with connection.cursor() as cursor:
                # The change triggers check a row per inserted row (a second or more
                # per million); dropped for the load, the tables marked changed once,
                # and the triggers back, all in this transaction.
                tracked = _tracked(cursor, [name for name, _ in tables]) if sqlite else []
                for statement in changes.drop_triggers_sql(tracked):
                    cursor.execute(statement)
                for name, data in tables:
                    rows = cursor.adbc_ingest(name, for_backend(data, sqlite), mode="append")
                    # Some drivers answer -1 when they do not count; the table knows.
                    counts[name] = data.num_rows if rows is None or rows < 0 else rows
                    if progress is not None:
                        progress(name, counts[name])
                for statement in changes.bump_sql(tracked) + changes.create_triggers_sql(tracked):
                    cursor.execute(statement)
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
    return counts


def _tracked(cursor: Any, tables: list[str]) -> list[str]:
    """Of ``tables``, those with change triggers (none before migration 0008)."""
    cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    if ("registry_changes",) not in cursor.fetchall():
        return []
    return [name for name in dict.fromkeys(tables) if name in changes.TRACKED_TABLES]


def reset_id_sequences(url: str, tables: Iterable[str]) -> None:
    """Move PostgreSQL's id sequences past the ids inserted explicitly.

    Without it the next ORM insert would be handed id 1 and fail on the primary key.
    SQLite needs nothing: an explicit id moves an AUTOINCREMENT table's sequence past it,
    and another table's next id is max(rowid) + 1.
    """
    if is_sqlite(url):
        return
    with adbc_connect(url) as connection:
        with connection.cursor() as cursor:
            for table in tables:
                # The table names come from models.py, never from users; quote anyway.
                quoted = '"' + table.replace('"', '""') + '"'
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{quoted}', 'id'), "
                    f"COALESCE(max(id), 1), max(id) IS NOT NULL) FROM {quoted}"
                )
                cursor.fetchall()
        connection.commit()
