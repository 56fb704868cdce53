"""Which registry tables changed since the warehouse last copied them (SQLite).

A daily run used to copy every registry table into the warehouse several times (each
cohort build, the report), though most days only a few small tables change. Each
tracked table has a row in ``registry_changes`` with a ``version`` that the database
itself bumps (triggers, so writes by the registry's own application count too), and
the warehouse records the version it copied: an unchanged version means the copy is
current and the table is not read again.

The triggers bump a version only on the first change after a read (``version =
read_version``), so a bulk write costs one check per row, not one update; a reader
sets ``read_version = version`` for the tables it is about to read, in a write
transaction of its own, before its snapshot (none when no table is to be set: a
write after that read bumps the version, as after a claim). Why that loses nothing:
SQLite has one writer at a time, so every write commits either before that
transaction (and is in the snapshot read after it) or after it, when its trigger finds ``version =
read_version`` (nothing changed since) and bumps the version, or finds it already
bumped by an earlier write since; either way the version differs from the one the
reader recorded, and the next run reads the table again. A write committed between
the transaction and the snapshot is read, and bumps too: the next run reads once more,
which is safe.

PostgreSQL has no tracking: a counter row bumped by every writing statement would
make the registry's own writers queue on it. Its extract is a full binary COPY each
time (see rollout.warehouse.extract).

``instance`` tells registries apart: a registry replaced by another (``rollout sample
--replace`` builds the schema afresh) starts a new instance, and versions of the old
one say nothing about it.

A registry restored from a backup keeps its instance, and its versions go back with
its rows: the next writes count them up to the version a copy holds, with other rows
(or the backup, made between a write and the read that claimed it, holds that version
already, with fewer rows). A counter kept in the database cannot tell, since the
restore takes it back too; so the claim that closes a table's run of changes (``version
<> read_version``) draws a random ``stamp`` for it, and the copy records the stamp
with the version. A registry shows a version as claimed (``version = read_version``)
with a stamp only with the rows that claim saw: any write since bumps the version, and
a later claim draws another stamp, which no backup made before it holds. The copy
holds exactly those rows only if no write came between the claim and its read (the
race above): ``still_claimed`` says which tables that is, and the others are recorded
with no version, so read whole next time (as they would be anyway: their version moved).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, text

from rollout.registry.models import LEDGER_TABLES, REGISTRY_TABLES
from rollout.registry.readonly import file_uri, reading_uri, why_read_only

TRACKED_TABLES: tuple[str, ...] = (*REGISTRY_TABLES, *LEDGER_TABLES)
OPERATIONS = ("insert", "update", "delete")
TRIGGER_PREFIX = "registry_changes_"


def _trigger_name(table: str, operation: str) -> str:
    return f"{TRIGGER_PREFIX}{table}_{operation}"


# The triggers a SQLite registry has (their names).
_TRIGGERS_SQL = "SELECT name FROM sqlite_master WHERE type = 'trigger'"


def _has_triggers(found: Iterable[str], tables: Iterable[str]) -> bool:
    """Whether the triggers ``found`` include every one of ``tables``' change triggers."""
    wanted = {_trigger_name(table, operation) for table in tables for operation in OPERATIONS}
    return wanted <= set(found)


def create_triggers_sql(tables: Iterable[str] = TRACKED_TABLES) -> list[str]:
    """The statements that (re)install the triggers of ``tables`` (SQLite)."""
    statements = []
    for table in tables:
        row = f"(SELECT {{}} FROM registry_changes WHERE table_name = '{table}')"
        for operation in OPERATIONS:
            statements.append(
                f"CREATE TRIGGER IF NOT EXISTS {_trigger_name(table, operation)} "
                f"AFTER {operation.upper()} ON {table} "
                f"WHEN {row.format('version = read_version')} "
                "BEGIN UPDATE registry_changes SET version = version + 1 "
                f"WHERE table_name = '{table}'; END"
            )
    return statements


def drop_triggers_sql(tables: Iterable[str] = TRACKED_TABLES) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS {_trigger_name(table, operation)}"
        for table in tables
        for operation in OPERATIONS
    ]


def rows_sql(tables: Iterable[str] = TRACKED_TABLES) -> list[str]:
    """A row for every tracked table, kept if there (portable SQL: on PostgreSQL the
    rows are there too, unused, so both backends have the same registry)."""
    instance = uuid.uuid4().hex
    return [
        "INSERT INTO registry_changes (table_name, instance, version, read_version) "
        f"SELECT '{table}', coalesce((SELECT min(instance) FROM registry_changes), "
        f"'{instance}'), 1, 0 "
        f"WHERE NOT EXISTS (SELECT 1 FROM registry_changes WHERE table_name = '{table}')"
        for table in tables
    ]


def install_sql(sqlite: bool, tables: Iterable[str] = TRACKED_TABLES) -> list[str]:
    """The rows, then (SQLite) the triggers: idempotent, so it runs after every
    upgrade (a migration that copies a table on SQLite loses the table's triggers)."""
    tables = tuple(tables)
    return rows_sql(tables) + (create_triggers_sql(tables) if sqlite else [])


def is_installed(connection: Connection, tables: Iterable[str] = TRACKED_TABLES) -> bool:
    """Whether ``install_sql`` would change nothing (read only): every table's row, and
    on SQLite its triggers."""
    tables = set(tables)
    rows = set(connection.execute(text("SELECT table_name FROM registry_changes")).scalars())
    if not tables <= rows:
        return False
    if connection.dialect.name != "sqlite":
        return True
    return _has_triggers(connection.execute(text(_TRIGGERS_SQL)).scalars(), tables)


def bump_sql(tables: Iterable[str]) -> list[str]:
    """Mark ``tables`` changed whatever their triggers did: for a bulk write made with
    the triggers dropped (rollout.registry.bulk)."""
    return [
        f"UPDATE registry_changes SET version = version + 1 WHERE table_name = '{table}'"
        for table in tables
    ]


@dataclass(frozen=True)
class Version:
    instance: str
    version: int
    stamp: str | None  # drawn by the claim that closed the version (see above)


def _new_stamp() -> str:
    return uuid.uuid4().hex


def claim_versions(database: str, tables: Iterable[str]) -> dict[str, Version] | None:
    """The current version of each of ``tables``, marked read (``read_version =
    version``, a new stamp where it was not) in one write transaction, before the
    caller's snapshot (when none is to be marked, a read alone); None when the registry
    does not track all of them (no table, a trigger missing): the caller then reads
    everything."""
    tables = tuple(tables)
    if not tables:
        return {}
    if why_read_only(database) is not None:
        # Not to be written by this process (an analyst's read access): nothing can be
        # marked read, so everything is read, as from a registry that tracks nothing.
        return None
    marks = ",".join("?" * len(tables))
    # Where a write moved the version (or no stamp was drawn yet).
    unread = f"(read_version <> version OR stamp IS NULL) AND table_name IN ({marks})"
    connection = sqlite3.connect(file_uri(database) + "?mode=rw", uri=True, timeout=60)
    connection.isolation_level = None  # explicit transactions only
    try:
        # First a read alone: most days no table an extract reads has changed since it
        # was last read, and with nothing to mark the extract need not wait for a
        # running job's writes (the write lock, up to the timeout). A write committed
        # after this read bumps the version, as after a claim.
        connection.execute("BEGIN")
        tracked = _tracks(connection, tables)
        if (
            tracked
            and connection.execute(
                f"SELECT 1 FROM registry_changes WHERE {unread}", tables
            ).fetchone()
        ):
            connection.execute("COMMIT")
            connection.execute("BEGIN IMMEDIATE")
            tracked = _tracks(connection, tables)
            # One stamp for all: each table's is new to it.
            connection.execute(
                f"UPDATE registry_changes SET read_version = version, stamp = ? WHERE {unread}",
                (_new_stamp(), *tables),
            )
        if not tracked:
            connection.execute("ROLLBACK")
            return None
        versions = _select_versions(connection, tables)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    finally:
        connection.close()
    return versions if set(versions) == set(tables) else None


def _tracks(connection: sqlite3.Connection, tables: tuple[str, ...]) -> bool:
    """Whether every one of ``tables`` has its change triggers."""
    return _has_triggers((name for (name,) in connection.execute(_TRIGGERS_SQL)), tables)


def _select_versions(connection: sqlite3.Connection, tables: tuple[str, ...]) -> dict[str, Version]:
    marks = ",".join("?" * len(tables))
    return {
        name: Version(instance, version, stamp)
        for name, instance, version, stamp in connection.execute(
            "SELECT table_name, instance, version, stamp FROM registry_changes "
            f"WHERE table_name IN ({marks})",
            tables,
        )
    }


def still_claimed(database: str, claimed: dict[str, Version]) -> dict[str, Version]:
    """Of the versions a claim gave, those the registry still has, read after the
    caller's read: a table written since the claim may have rows in the caller's copy
    that its claimed version does not stand for (in a backup made between the claim and
    that write, say), so it is left out. Its version moved: it is read again anyway."""
    if not claimed:
        return {}
    connection = sqlite3.connect(reading_uri(database), uri=True, timeout=60)
    try:
        current = _select_versions(connection, tuple(claimed))
    finally:
        connection.close()
    return {name: version for name, version in claimed.items() if current.get(name) == version}
