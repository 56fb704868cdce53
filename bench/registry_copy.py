"""A benchmark's own copy of a sample registry, so the sample is never changed."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_registry(source: Path, work: Path) -> str:
    """Copy the SQLite registry ``source`` into ``work`` as registry.db, migrated to
    this rollout's schema (a sample made by an older rollout works as given); returns
    the copy's URL."""
    from rollout.registry.engine import make_engine
    from rollout.registry.migrate import upgrade

    for leftover in work.glob("registry.db*"):
        leftover.unlink()
    for suffix in ("", "-wal"):  # a WAL file holds committed rows too
        if Path(f"{source}{suffix}").exists():
            shutil.copy(f"{source}{suffix}", work / f"registry.db{suffix}")
    url = f"sqlite:///{work / 'registry.db'}"
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url
