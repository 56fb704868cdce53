"""Alembic, driven from code so ``rollout db upgrade`` needs no alembic.ini."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from rollout.core.errors import GuardRefused, RolloutError
from rollout.registry import changes
from rollout.registry.engine import make_engine, require_sqlite_file
from rollout.registry.locks import (
    READING_DURING_MIGRATION,
    migration_exclusive,
    migration_holding,
)

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.connect() as connection:
        current = _revision(connection)
        require_known_revision(current)
        # Nothing to do, checked by reading alone: a migration's transaction takes the
        # write lock first on SQLite (BEGIN IMMEDIATE, see migrations/env.py), so
        # `rollout db upgrade` at the newest revision waited for a running job's
        # writes (the busy timeout), then failed with "database is locked". Still at
        # the newest revision, a registry without its change tracking (a trigger
        # dropped) goes on: the migration environment puts it back after every run.
        newest = head_revision()
        if current == newest and revision in ("head", newest) and changes.is_installed(connection):
            return
    # Every run lock held while the schema changes: refused (exit 3, naming the runs)
    # while a run is at work, and none starts meanwhile (rollout.registry.locks).
    with migration_exclusive(_url_of(engine)):
        command.upgrade(alembic_config(engine), revision)


def _url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@cache
def _known_revisions() -> frozenset[str]:
    # Read once per process, as head_revision: loading the revision files costs ~10 ms.
    return frozenset(r.revision for r in ScriptDirectory(str(MIGRATIONS)).walk_revisions())


def is_known(revision: str | None) -> bool:
    """Whether this code's migrations have ``revision`` (None: an empty database)."""
    return revision is None or revision in _known_revisions()


def require_known_revision(current: str | None) -> None:
    """A registry migrated by a newer rollout: this one can neither use, upgrade nor
    downgrade it (alembic's own error was a traceback)."""
    if not is_known(current):
        raise RolloutError(
            f"the registry is at schema revision {current}, which this rollout does not "
            f"know (its newest is {head_revision()}): a newer rollout migrated it; run that "
            "version, or upgrade this one"
        )


def is_before(earlier: str, later: str) -> bool:
    """Whether revision ``earlier`` comes before ``later`` in this code's migrations."""
    script = ScriptDirectory(str(MIGRATIONS))
    return any(r.revision == earlier for r in script.iterate_revisions(later, "base")) and (
        earlier != later
    )


def downgrade(engine: Engine, revision: str, *, expect_current: str | None = None) -> None:
    # As upgrade: from a revision this code does not have, alembic cannot find the way
    # down (its ResolutionError was a traceback).
    require_known_revision(current_revision(engine))
    with migration_exclusive(_url_of(engine)):
        current = current_revision(engine)
        if expect_current is not None and current != expect_current:
            # Another migration between the preview and now: not the downgrade previewed.
            raise GuardRefused(
                f"the registry is at revision {current} now, not {expect_current}: "
                "preview the downgrade again"
            )
        command.downgrade(alembic_config(engine), revision)


@dataclass
class DowngradePreview:
    """What ``downgrade`` to ``target`` would do, found by doing it in a transaction
    that is then rolled back: the revisions it undoes (newest first, with what each
    added), the tables it drops (with their rows), the columns it drops (with the
    values they hold) and the rows it removes from tables it keeps."""

    current: str
    target: str
    revisions: list[tuple[str, str]] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)
    columns: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)


class _PreviewDone(Exception):
    """Raised out of the migration's transaction once the preview is taken: the
    transaction rolls back, nothing is changed."""


def preview_downgrade(engine: Engine, revision: str) -> DowngradePreview:
    """The downgrade to ``revision`` done and rolled back (under the run locks, as the
    downgrade itself: a migration's refusal, "cannot downgrade below ...", shows here
    as it would there). It takes as long as the downgrade (on SQLite one that copies a
    table, as long as a backup of it), and changes nothing."""
    current = current_revision(engine)
    require_known_revision(current)
    assert current is not None
    found = DowngradePreview(current, revision)
    script = ScriptDirectory(str(MIGRATIONS))
    for undone in script.iterate_revisions(current, revision):
        if undone.revision != revision:
            found.revisions.append((undone.revision, (undone.doc or "").strip()))

    def observe(connection: Connection, run: Callable[[], None]) -> None:
        before = _shape(connection)
        connection.exec_driver_sql("SAVEPOINT rollout_downgrade_preview")
        run()
        after = _shape(connection)
        connection.exec_driver_sql("ROLLBACK TO SAVEPOINT rollout_downgrade_preview")
        for table, (columns, count) in sorted(before.items()):
            if table not in after:
                found.tables[table] = count
                continue
            kept, left = after[table]
            if left < count:
                found.rows[table] = count - left
            for column in sorted(columns - kept):
                quoted = connection.dialect.identifier_preparer
                found.columns[f"{table}.{column}"] = connection.execute(
                    sa.text(
                        f"select count(*) from {quoted.quote(table)} "
                        f"where {quoted.quote(column)} is not null"
                    )
                ).scalar_one()
        raise _PreviewDone

    config = alembic_config(engine)
    config.attributes["preview"] = observe
    with migration_exclusive(_url_of(engine)), contextlib.suppress(_PreviewDone):
        command.downgrade(config, revision)
    if current_revision(engine) != current:  # the transaction rolled back, or say so
        raise RuntimeError("the downgrade preview changed the registry's revision")
    return found


def _shape(connection: Connection) -> dict[str, tuple[set[str], int]]:
    """Each table's columns and rows (alembic's own version table aside)."""
    inspector = sa.inspect(connection)
    quoted = connection.dialect.identifier_preparer
    shape = {}
    for table in inspector.get_table_names():
        if table == "alembic_version":
            continue
        columns = {c["name"] for c in inspector.get_columns(table)}
        rows = connection.execute(
            sa.text(f"select count(*) from {quoted.quote(table)}")
        ).scalar_one()
        shape[table] = (columns, rows)
    return shape


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return _revision(connection)


def _revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@cache
def head_revision() -> str | None:
    # Read once per process: the migrations are this installed code's, and alembic
    # loads every revision file to find the head (about 10 ms, on every registry open).
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def is_up_to_date(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()


def require_current_schema(registry_url: str) -> None:
    """Refuse to work on a registry whose schema is older (or newer) than this code's,
    or on a SQLite registry that is not there (rather than make an empty one). Refuse
    too (GuardRefused, exit 3) while a schema migration is at work: an upgrade's old
    revision would say to run `rollout db upgrade`, at work already, and a downgrade's
    newest one would let a reader on into tables it is changing (on PostgreSQL, a query
    waiting on the migration's locks then reads the schema it left)."""
    require_sqlite_file(registry_url)
    engine = make_engine(registry_url)
    try:
        with engine.connect() as connection:
            if migration_holding(registry_url, connection):
                raise GuardRefused(READING_DURING_MIGRATION)
        current, newest = current_revision(engine), head_revision()
    finally:
        engine.dispose()
    if current != newest:
        require_known_revision(current)
        raise RolloutError(
            f"the registry is at schema revision {current or 'none'}, this rollout needs "
            f"{newest}: run `rollout db upgrade`"
        )
