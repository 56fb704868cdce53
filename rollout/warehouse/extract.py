"""Copy the registry tables the warehouse needs into DuckDB, through Arrow.

DuckDB 2.0 has no SQLite/PostgreSQL scanner offline, so rows travel as Arrow record
batches: from PostgreSQL through ADBC (binary COPY), from SQLite through ADBC in
child processes, two at once (rollout.registry.sqlite_export says why not here), or,
when the tables to read are small, through sqlite3 in this process.
Column types come from the SQLAlchemy models, so the warehouse's ``registry.*``
tables have the same types whatever the backend.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Generator, Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from sqlalchemy import JSON, BigInteger, Boolean, Date, DateTime, Integer, Table
from sqlalchemy.engine import make_url
from sqlalchemy.types import TypeEngine

import rollout
from rollout import warehouse
from rollout.core.errors import RolloutError
from rollout.core.stopping import PARENT_PID_VARIABLE, stop_requested_by_signals
from rollout.registry import Registry, changes
from rollout.registry.engine import adbc_connect, is_sqlite, normalize_url
from rollout.registry.models import LEDGER_TABLES, REGISTRY_TABLES, Base, extracted_columns
from rollout.registry.readonly import reading_uri
from rollout.registry.sqlite_export import NULL_INT, select_with_sentinels

EXTRACTED_TABLES = (*REGISTRY_TABLES, *LEDGER_TABLES)
# Up to this many rows in all (by the tables' largest rowids), SQLite tables are read in
# this process: starting the exporters costs about a second, which sqlite3 here spends
# on about 450k rows (and the exporters, once started, read about 1.2M rows/s).
IN_PROCESS_ROWS = 200_000


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


# Exporter processes at once: SQLite reads on one core each, and this machine kind
# has two; more would only queue.
EXPORTERS = 2


def _table_sizes(database: str, tables: tuple[str, ...]) -> dict[str, int]:
    """Each table's largest rowid: its row count near enough to share the work, read
    off the b-tree at once instead of counting."""
    connection = sqlite3.connect(reading_uri(database), uri=True)
    try:
        return {
            name: connection.execute(f"select coalesce(max(rowid), 0) from {name}").fetchone()[0]
            for name in tables
        }
    finally:
        connection.close()


def _share(sizes: dict[str, int], ways: int) -> list[tuple[str, ...]]:
    """Tables in up to ``ways`` groups of about equal rows (each table to the group
    with the fewest so far, biggest first), the group with the fewest rows first."""
    groups: list[list[str]] = [[] for _ in range(ways)]
    totals = [0] * ways
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        emptiest = totals.index(min(totals))
        groups[emptiest].append(name)
        totals[emptiest] += sizes[name]
    ordered = sorted(zip(totals, groups, strict=True), key=lambda pair: pair[0])
    return [tuple(group) for _, group in ordered if group]


def _export_sqlite(
    registry_url: str, sizes: dict[str, int], folder: Path
) -> Generator[tuple[str, ...]]:
    """Dump the tables to Arrow files through ADBC in child processes (see
    rollout.registry.sqlite_export for why not in this one), several at once, each
    with a share of the tables. Yields each share's tables once its files are
    complete, so the caller loads them while the other exporters still work: at npm
    scale the report's extract (8 tables, 10.4M rows) went from 12.4-14.9 s to 8.6-9.2 s.

    Across the process boundary goes a string, the database's path, not the caller's
    Registry: an exporter reads through ADBC alone, so it has no engine (nor Registry) to
    make. ``sizes``: each table's rows (``_table_sizes``), to share them out."""
    database = _sqlite_database(registry_url)
    shares = _share(sizes, EXPORTERS)
    running: list[tuple[subprocess.Popen[str], tuple[str, ...]]] = []
    # They die with this process (rollout.core.stopping.as_child), and a stop ends it at
    # once: the exporters have nothing to put back, and the finally below kills them
    # before their folder is removed.
    environment = {**os.environ, PARENT_PID_VARIABLE: str(os.getpid())}
    # The exporters run this process's rollout: ``-P`` keeps the working folder off
    # their path (``-m`` would put it first, so a ``rollout`` folder there, another
    # checkout's, would be what they run), and the folder this one came from goes first.
    here = str(Path(rollout.__file__).resolve().parents[1])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, (here, environment.get("PYTHONPATH"))))
    with stop_requested_by_signals(raise_at_once=True):
        try:
            for share in shares:
                specs = [
                    f"{name}:{','.join(_numeric_columns(Base.metadata.tables[name]))}"
                    for name in share
                ]
                command = [sys.executable, "-P", "-m", "rollout.registry.sqlite_export", database]
                child = subprocess.Popen(
                    [*command, str(folder), *specs],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=environment,
                )
                running.append((child, share))
            # The share with the fewest rows first: most likely done first.
            for child, share in running:
                _, errors = child.communicate()
                if child.returncode != 0:
                    last = (errors.strip().splitlines() or ["no output"])[-1]
                    raise RolloutError(f"reading the registry {database} failed: {last}")
                yield share
        finally:
            for child, _ in running:  # an error, a stop or a caller that stopped early
                if child.poll() is None:
                    child.kill()
                    child.communicate()


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
    with adbc_connect(registry_url) as connection, connection.cursor() as cursor:
        yield cursor


def _read_sqlite_here(registry_url: str, tables: tuple[str, ...]) -> dict[str, pa.Table]:
    """The same export in this process through sqlite3, straight to Arrow: slower per
    row, but no child process to start (see ``IN_PROCESS_ROWS``)."""
    database = _sqlite_database(registry_url)
    connection = sqlite3.connect(reading_uri(database), uri=True)
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
    registry: Registry,
    tables: tuple[str, ...] = EXTRACTED_TABLES,
    *,
    exporters: bool | None = None,
    full: bool = False,
) -> dict[str, int]:
    """Bring ``registry.*`` in the warehouse up to the registry's current rows; returns
    each table's row count.

    On SQLite, a table whose change version (rollout.registry.changes) is the one the
    warehouse copied is not read again; ``full`` reads every table regardless, as on
    PostgreSQL. On SQLite, ``exporters`` says how the stale tables are read: by the
    child exporters (True), in this process (False), or by their size (None: up to
    ``IN_PROCESS_ROWS`` rows in this process, which a daily run's small re-reads and a
    small registry are).

    It reads through connections of its own, not ``registry.engine``: ADBC on
    PostgreSQL; on SQLite Python's sqlite3 here, or ADBC in the exporter processes, which
    are handed the database's path (a string crosses the process boundary, the Registry
    stays in this one).
    """
    registry.check_schema()
    registry_url = registry.url
    sqlite = registry.is_sqlite
    versions = None
    if sqlite and not full:
        versions = changes.claim_versions(_sqlite_database(registry_url), tables)
    stale = tables if versions is None else _stale(con, tables, versions)
    counts: dict[str, int] = {}
    if stale:  # (most days, for most callers, nothing is: no transaction to commit)
        with warehouse.transaction(con):
            counts = _replace_tables(con, registry_url, stale, exporters=exporters)
            if versions is not None:
                # Only those no write moved while they were read: see changes.
                versions = changes.still_claimed(
                    _sqlite_database(registry_url), {name: versions[name] for name in stale}
                )
            _record_versions(con, counts, versions)
    unchanged = [name for name in tables if name not in counts]
    if unchanged:
        counts.update(
            con.execute(
                "select table_name, rows from registry_extract_versions "
                "where table_name in (select unnest($tables))",
                {"tables": unchanged},
            ).fetchall()
        )
    return {name: counts[name] for name in tables}


def _sqlite_database(registry_url: str) -> str:
    return make_url(normalize_url(registry_url)).database or ":memory:"


def _stale(
    con: duckdb.DuckDBPyConnection, tables: tuple[str, ...], versions: dict[str, changes.Version]
) -> tuple[str, ...]:
    """The tables whose warehouse copy is not at the registry's current version (its
    stamp too: a restored registry's), or has other columns than an extract now copies
    (a copy made before a column was added to the models, or left out of the
    warehouse: ``NOT_EXTRACTED``)."""
    copied = {
        name: changes.Version(instance, version, stamp)
        for name, instance, version, stamp in con.execute(
            "select table_name, instance, version, stamp from registry_extract_versions "
            "where table_name in (select unnest($tables)) and table_name in "
            "(select table_name from duckdb_tables() where schema_name = 'registry')",
            {"tables": list(tables)},
        ).fetchall()
    }
    columns = dict(
        con.execute(
            "select table_name, list(column_name order by column_index) "
            "from duckdb_columns() where database_name = current_database() "
            "and schema_name = 'registry' "
            "and table_name in (select unnest($tables)) group by table_name",
            {"tables": list(tables)},
        ).fetchall()
    )
    return tuple(
        name
        for name in tables
        if copied.get(name) != versions[name]
        or columns.get(name) != [c.name for c in extracted_columns(Base.metadata.tables[name])]
    )


def _record_versions(
    con: duckdb.DuckDBPyConnection,
    counts: dict[str, int],
    versions: dict[str, changes.Version] | None,
) -> None:
    """The version and rows of each table just read; no version when it is unknown
    (None: of any; a table left out of ``versions``: of that one), and the table is
    then read whole next time."""
    con.execute(
        "delete from registry_extract_versions where table_name in (select unnest($tables))",
        {"tables": list(counts)},
    )
    if versions is None:
        return
    names = [name for name in counts if name in versions]
    if not names:
        return
    # One statement for them all: a daily run records a few tables many times a day.
    con.execute(
        "insert into registry_extract_versions by name "
        "select unnest($names) as table_name, unnest($instances) as instance, "
        "unnest($versions) as version, unnest($stamps) as stamp, unnest($rows) as rows, "
        "$now as extracted_at",
        {
            "names": names,
            "instances": [versions[name].instance for name in names],
            "versions": [versions[name].version for name in names],
            "stamps": [versions[name].stamp for name in names],
            "rows": [counts[name] for name in names],
            "now": datetime.now(UTC).replace(tzinfo=None),
        },
    )


def _scratch_folder(con: duckdb.DuckDBPyConnection) -> tempfile.TemporaryDirectory[str]:
    """A folder for the exporters' Arrow files, beside the warehouse file, after removing
    what a killed extract left there (a SIGKILL runs no cleanup: in the system's temp
    folder, a copy of the registry's tables stayed behind for good). Only this process
    has the warehouse open to write, so every such folder beside it is a dead one's.
    An in-memory warehouse's goes to the system's temp folder."""
    database = warehouse.database_path(con)
    if not database:
        return tempfile.TemporaryDirectory(prefix="rollout-extract-")
    path = Path(database)
    prefix = f".{path.name}.extract-"
    for stale in path.parent.glob(f"{glob.escape(prefix)}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=prefix, dir=path.parent)


def _any_row_order(con: duckdb.DuckDBPyConnection) -> AbstractContextManager[None]:
    """The copies in whatever order DuckDB's threads write them: a table has no order
    but the one a query asks for, and keeping the rows' arrival order made each copy
    cost twice the CPU (5.2M emails: 4.8 s against 2.3 s), the most of a cold report.
    The setting is the database's, put back after as it was, even when a copy failed
    and aborted the caller's transaction (warehouse.database_setting)."""
    return warehouse.database_setting(con, "preserve_insertion_order", lambda _: "false")


def _replace_tables(
    con: duckdb.DuckDBPyConnection,
    registry_url: str,
    tables: tuple[str, ...],
    *,
    exporters: bool | None,
) -> dict[str, int]:
    """Replace ``registry.<table>`` for each of ``tables`` with the registry's rows
    (inside the caller's warehouse transaction); returns each table's rows."""
    sqlite = is_sqlite(registry_url)
    # Read once: what decides the reader and what shares the tables out among exporters.
    sizes = (
        _table_sizes(_sqlite_database(registry_url), tables)
        if sqlite and exporters is not False
        else {}
    )
    if sqlite and exporters is None:
        exporters = sum(sizes.values()) > IN_PROCESS_ROWS
    exported = sqlite and bool(exporters)
    counts: dict[str, int] = {}
    # A folder only for the child exporters' files (a daily run makes many small reads).
    folder = _scratch_folder(con) if exported else None
    with folder or nullcontext() as scratch, _any_row_order(con):
        in_memory = _read_sqlite_here(registry_url, tables) if sqlite and not exported else {}
        # In the order the tables become readable: exported shares as they finish.
        order: Generator[tuple[str, ...]] = (share for share in [tables])
        if exported:
            order = _export_sqlite(registry_url, sizes, Path(scratch))
        source = nullcontext(None) if sqlite else _postgres_cursor(registry_url)
        # closing(): on an error the exporters stop before their folder is removed.
        with closing(order), source as cursor:
            for name in (name for share in order for name in share):
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
                # An Arrow table knows its rows; a stream from PostgreSQL is counted.
                counts[name] = (
                    data.num_rows
                    if isinstance(data, pa.Table)
                    else warehouse.scalar(con, f"select count(*) from registry.{name}")
                )
    return counts
