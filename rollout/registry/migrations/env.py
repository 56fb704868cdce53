"""Alembic environment: the engine comes from rollout.registry.migrate, never from a file."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

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


run_migrations_online()
