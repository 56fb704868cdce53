"""The registry of one invocation: its URL, one engine made on first use, its run locks.

Every library function that reads or changes the registry takes a :class:`Registry`,
whatever it does with it: one that runs a few queries uses ``registry.engine``, one that
runs exclusively takes ``registry.lock(name)`` first, one that only hands the database to
something else (an ADBC reader, a child process) uses ``registry.url``. Why one type for
all: when some take an engine and others a URL (making an engine of their own, and
checking the schema again, on each call), every caller must know which, and one
invocation opens the registry many times over. With one rule, a command, a flow run or
the demo makes one Registry, passes it down, and closes it at the end; what a function
does with it is its own business.

Crossing a process boundary the URL goes, not the Registry (an engine does not pickle):
the process at the other end makes a Registry of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType

from sqlalchemy import Connection, Engine

from rollout.core.errors import GuardRefused
from rollout.registry.engine import begin_writing, is_sqlite, make_engine, registry_url_shown
from rollout.registry.locks import (
    RUN_LOCKS,
    WRITING_DURING_MIGRATION,
    HeldRunLock,
    exclusive_run,
    make_lock_engine,
    migration_at_work,
    refuse_writing_during_migration,
    run_lock_held,
    run_lock_holder,
)
from rollout.registry.migrate import current_revision, head_revision, require_current_schema


class Registry:
    """One registry database for one invocation (a command, a flow run, the demo).

    Making one touches nothing: the database is first reached by ``engine`` (which
    refuses a registry whose schema is not this code's, as a clear error rather than a
    'no such column' half way through a run), ``check_schema`` or ``lock``. ``close``
    disposes of the engine's pooled connections; a later use makes a new engine (so a
    caller can let go of every connection before ADBC writes the same SQLite file from
    this process: see rollout/registry/bulk.py, and rollout.demo.sample, which does). Also a
    context manager that closes.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._lock_engine: Engine | None = None
        self._schema_checked = False
        self._making = threading.Lock()

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.url)

    def check_schema(self) -> None:
        """Refuse (RolloutError) a registry whose schema is older, or newer, than this
        code's: checked on first use, and again only after ``close``."""
        if not self._schema_checked:
            require_current_schema(self.url)
            self._schema_checked = True

    @property
    def engine(self) -> Engine:
        """The engine, made on first use once the schema is checked (``check_schema``)."""
        engine = self._engine
        if engine is None:
            with self._making:  # threads sharing the Registry may reach it at once
                if self._engine is None:
                    self.check_schema()
                    self._engine = make_engine(self.url)
                engine = self._engine
        return engine

    def lock(self, name: str) -> AbstractContextManager[HeldRunLock]:
        """Run exclusively as ``name`` (``enforce``, ``notify``...): GuardRefused if
        another run holds it. An advisory lock on PostgreSQL, a lock file next to the
        database on SQLite (rollout.registry.locks); either goes with its process."""
        if name not in RUN_LOCKS:
            # A schema migration takes every run lock: one it does not know of would
            # let a run go on while the schema changes under it.
            raise ValueError(f"{name!r} is not one of rollout.registry.locks.RUN_LOCKS")
        return self._locked(name)

    @contextmanager
    def _locked(self, name: str) -> Iterator[HeldRunLock]:
        if self.is_sqlite:
            lock_engine = None
        else:
            with self._making:
                if self._lock_engine is None:  # its own pool: rollout.registry.locks says why
                    self._lock_engine = make_lock_engine(self.url)
                lock_engine = self._lock_engine
        with exclusive_run(self.url, name, lock_engine) as held:
            # The schema again, now that no migration can change it before the run
            # ends: one checked before the lock (when the run began) may have been
            # migrated since, by `rollout db upgrade` of a newer rollout or `db
            # downgrade`, while this run waited for approval or was queued.
            # One query on the registry's own engine (which checks the schema on first
            # use); the full check, and its message, only when the revision moved.
            if current_revision(self.engine) != head_revision():
                require_current_schema(self.url)
            yield held

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A transaction that changes the registry, for a writer that holds no run lock
        (`brownout schedule|start|end`, `notify suppress|unsuppress|withdraw`, `notify
        sync-suppressions`, retrying failed emails, ingest's delivery states): a schema
        migration keeps the runs out by their locks, and these by this. Refused
        (GuardRefused, exit 3, nothing changed) while a migration is at work, and
        refused as ``check_schema`` is (RolloutError) when one changed the schema since
        this writer checked it; otherwise no migration starts changing the schema
        before the transaction ends (rollout.registry.locks.WRITERS_LOCK)."""
        if migration_at_work(self.url):  # SQLite: refused now, not after the busy timeout
            raise GuardRefused(WRITING_DURING_MIGRATION)
        with begin_writing(self.engine) as connection:
            if refuse_writing_during_migration(self.url, connection) != head_revision():
                require_current_schema(self.url)
            yield connection

    def lock_held(self, name: str) -> bool:
        """Whether some run, in any process, holds the ``name`` lock now."""
        return run_lock_held(self.url, self.engine, name)

    def lock_holder(self, name: str) -> str | None:
        """Which run, in any process, holds the ``name`` lock now (a token drawn as it
        took it: the next run's differs); None when none does."""
        return run_lock_holder(self.url, self.engine, name)

    def close(self) -> None:
        """Dispose of the engine, if one was made: its pooled connections close. A later
        use makes a new engine, checking the schema again."""
        with self._making:
            engine, self._engine = self._engine, None
            lock_engine, self._lock_engine = self._lock_engine, None
            self._schema_checked = False
        for made in (engine, lock_engine):
            if made is not None:
                made.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({registry_url_shown(self.url)!r})"
