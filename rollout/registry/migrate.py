"""Alembic, driven from code so ``rollout db upgrade`` needs no alembic.ini."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from rollout.core.errors import RolloutError
from rollout.registry import changes
from rollout.registry.engine import make_engine, require_sqlite_file
from rollout.registry.locks import migration_exclusive

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


def downgrade(engine: Engine, revision: str) -> None:
    # As upgrade: from a revision this code does not have, alembic cannot find the way
    # down (its ResolutionError was a traceback).
    require_known_revision(current_revision(engine))
    with migration_exclusive(_url_of(engine)):
        command.downgrade(alembic_config(engine), revision)


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
    or on a SQLite registry that is not there (rather than make an empty one)."""
    require_sqlite_file(registry_url)
    engine = make_engine(registry_url)
    try:
        current, newest = current_revision(engine), head_revision()
    finally:
        engine.dispose()
    if current != newest:
        require_known_revision(current)
        raise RolloutError(
            f"the registry is at schema revision {current or 'none'}, this rollout needs "
            f"{newest}: run `rollout db upgrade`"
        )
