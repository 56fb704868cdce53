"""Alembic environment: the engine comes from rollout.registry.migrate, never from a file."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from rollout.core.controls import quoted
from rollout.core.errors import BadInput
from rollout.registry import changes
from rollout.registry.locks import hold_migration_lock
from rollout.registry.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes["engine"]
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # SQLite alters a table by copying it and dropping the old one, which its
            # foreign keys refuse while other tables' rows point at it (plan_runs, on
            # any registry that has run a step). Off for the migration (the pragma is
            # ignored inside a transaction, so before it), then every key checked.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            # Ends the transaction SQLAlchemy began around the pragma, so that the
            # migration's own transaction is a real one and commits.
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=sqlite,
            # One transaction for the whole run on SQLite too (its DDL is
            # transactional): a downgrade one revision refuses leaves the revisions
            # above it as they were, not half undone.
            transactional_ddl=True,
        )
        driver = connection.connection.driver_connection
        if sqlite:
            # pysqlite begins a transaction only before INSERT/UPDATE/DELETE, so DDL
            # ahead of them committed at once: left in autocommit, the driver runs the
            # explicit BEGIN below and everything after it in that one transaction.
            isolation = driver.isolation_level
            driver.isolation_level = None
        try:
            with context.begin_transaction():
                # One migration of a registry at a time, taken before alembic reads the
                # revision: a second `rollout db upgrade` at the same time (the worker
                # host's and a release manager's) read the same revision and ran the
                # same migrations, and failed (a traceback on PostgreSQL, "database is
                # locked" on SQLite). It now waits, then finds what the first left.
                if sqlite:
                    # The write lock at once, waited for (the busy timeout).
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                else:
                    hold_migration_lock(connection)
                if sqlite:
                    # Rows written with the keys off (the sqlite3 shell's default) were
                    # blamed on the migration below, in a traceback: named here, first.
                    _refuse_broken_foreign_keys(connection)
                preview = config.attributes.get("preview")
                if preview is not None:
                    # `rollout db downgrade` without --apply: the migrations run, are
                    # looked at, and roll back (rollout.registry.migrate).
                    preview(connection, context.run_migrations)
                context.run_migrations()
                existing = set(sa.inspect(connection).get_table_names())
                if "registry_changes" in existing:
                    # Idempotent; after every run, because a migration that copies a
                    # table on SQLite drops the table's change triggers with it. Only
                    # the tables this revision has: a downgrade below a table's revision
                    # leaves nothing to put a trigger on.
                    tracked = [t for t in changes.TRACKED_TABLES if t in existing]
                    for statement in changes.install_sql(sqlite, tracked):
                        connection.exec_driver_sql(statement)
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                # The pooled connection goes back as it came, even from a failed run:
                # the driver's usual transactions, foreign keys checked.
                driver.isolation_level = isolation
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def _refuse_broken_foreign_keys(connection: sa.Connection) -> None:
    """SQLite: BadInput (exit 2) naming the rows (table, rowid, the key's values and the
    table they should be in) whose foreign key points at no row, before the migration
    changes anything. Rollout never writes such rows (its connections check the keys);
    an edit made outside it, with the keys off, can."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if not broken:
        return
    quote = connection.dialect.identifier_preparer.quote
    shown = []
    for table, rowid, parent, key in broken[:5]:
        columns = [
            row[3]
            for row in connection.exec_driver_sql(f"PRAGMA foreign_key_list({quote(table)})")
            if row[0] == key
        ]
        values = connection.exec_driver_sql(
            f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table)} WHERE rowid = ?",
            (rowid,),
        ).first()
        named = ", ".join(
            f"{c} {quoted(v) if isinstance(v, str) else v}"
            for c, v in zip(columns, values or (), strict=False)
        )
        shown.append(f"{table} rowid {rowid} ({named}: no such {parent} row)")
    more = f", and {len(broken) - 5} more" if len(broken) > 5 else ""
    raise BadInput(
        connection.engine.url.database,
        None,
        f"{len(broken)} row(s) name a row that is not there, which the migration cannot "
        f"carry over: {'; '.join(shown)}{more}. Written with foreign keys off (the sqlite3 "
        "shell's default), not by rollout: delete or mend them (`PRAGMA foreign_key_check` "
        "lists them all), then migrate again; nothing was changed",
    )


run_migrations_online()
