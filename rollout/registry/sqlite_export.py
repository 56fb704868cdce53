"""Export SQLite registry tables to Arrow IPC files, in a process of its own.

Run as ``python -m rollout.registry.sqlite_export DB FOLDER TABLE [TABLE ...]``.
ADBC's SQLite driver is fast (about 10x Python's sqlite3 row by row) but carries its
own copy of SQLite; inside a process where SQLAlchemy also has the file open, the
two copies do not share locks and ADBC was seen reading stale data. A child process
has only the one copy, and SQLite's locking between processes works as designed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import adbc_driver_sqlite.dbapi as adbc_sqlite
import pyarrow as pa

from rollout.core.stopping import as_child
from rollout.registry.models import Base, extracted_columns
from rollout.registry.readonly import reading_uri

# ADBC's SQLite driver guesses each column's type from a batch's values, and a batch
# whose values are all NULL is guessed as an integer; a later text value then fails.
# Typed sentinels instead of NULL keep every batch's type stable; the reader (see
# rollout.warehouse.extract) turns them back into NULL.
NULL_TEXT = "\x00null"
NULL_INT = -(2**63)


def select_with_sentinels(table_name: str, numeric: set[str]) -> str:
    table = Base.metadata.tables[table_name]
    columns = []
    for column in extracted_columns(table):
        name = column.name
        if name in numeric:
            columns.append(f'coalesce("{name}", {NULL_INT}) as "{name}"')
        else:
            columns.append(f'coalesce(cast("{name}" as text), char(0) || \'null\') as "{name}"')
    return f"select {', '.join(columns)} from {table_name}"


def export(database: str, folder: Path, tables: list[str], numeric: dict[str, set[str]]) -> None:
    with adbc_sqlite.connect(reading_uri(database)) as connection, connection.cursor() as cursor:
        for name in tables:
            cursor.execute(select_with_sentinels(name, numeric.get(name, set())))
            reader = cursor.fetch_record_batch()
            with (
                pa.OSFile(str(folder / f"{name}.arrow"), "wb") as sink,
                pa.ipc.new_file(sink, reader.schema) as writer,
            ):
                for batch in reader:
                    writer.write_batch(batch)


def main(argv: list[str]) -> None:
    # Nothing to put back: SIGTERM (the parent's stop, or its death) ends it at once;
    # Ctrl-C reaches the whole process group, and the parent decides.
    as_child(wind_down=False)
    database, folder, *specs = argv
    tables, numeric = [], {}
    for spec in specs:  # TABLE:col1,col2 (the numeric columns)
        name, _, columns = spec.partition(":")
        tables.append(name)
        numeric[name] = set(filter(None, columns.split(",")))
    export(database, Path(folder), tables, numeric)


if __name__ == "__main__":
    main(sys.argv[1:])
