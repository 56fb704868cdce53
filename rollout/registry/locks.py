"""One run at a time: an advisory lock on PostgreSQL, a lock file on SQLite.

Reached through :meth:`rollout.registry.Registry.lock`; here, below the handle, so the
registry package needs nothing from the layers above it."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.pool import NullPool

from rollout.core.errors import GuardRefused
from rollout.core.names import safe_path_component
from rollout.registry.engine import make_engine, normalize_url


@contextmanager
def exclusive_run(registry_url: str, name: str) -> Iterator[None]:
    """Refuse a second concurrent run: an advisory lock on PostgreSQL, a lock file
    next to the database on SQLite. Both vanish with the process that held them, so
    a crash never leaves a stale lock behind."""
    url = normalize_url(registry_url)
    if url.get_backend_name() == "sqlite":
        path = Path(f"{url.database}.{safe_path_component(name, 'lock')}.lock")
        handle = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise GuardRefused(
                    f"another {name} run holds {path}; wait for it to finish"
                ) from error
            yield
        finally:
            os.close(handle)
        return
    # Its own connection, not pooled: the lock lives exactly as long as it.
    engine = make_engine(registry_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            # One lock per run kind and per registry: the schema is part of the key, so
            # registries sharing a database (one a schema) do not block each other.
            schema = connection.execute(text("select current_schema()")).scalar()
            digest = hashlib.sha256(f"rollout:{schema}:{name}".encode()).digest()
            key = int.from_bytes(digest[:8], "big", signed=True)
            got = connection.execute(text("select pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            if not got:
                raise GuardRefused(
                    f"another {name} run holds the registry's advisory lock; wait for it to finish"
                )
            try:
                yield
            finally:
                connection.execute(text("select pg_advisory_unlock(:k)"), {"k": key})
                connection.commit()
    finally:
        engine.dispose()
