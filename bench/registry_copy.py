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


def sample_into_postgres(url: str, scale: str, *, purpose: str) -> None:
    """Generate the ``scale`` sample (seed 1) into the PostgreSQL registry at ``url``
    from an empty schema, as the PostgreSQL runs of bench_enforce and bench_tokens do;
    prints how long it took (never part of the timed figure)."""
    import tempfile
    import time

    from rollout.demo.sample import generate_sample
    from rollout.registry import Registry
    from rollout.registry.engine import make_engine
    from rollout.registry.migrate import downgrade

    engine = make_engine(url)
    try:
        downgrade(engine, "base")
    finally:
        engine.dispose()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-{purpose}-pg-") as scratch:
        generate_sample(
            scale,
            1,
            registry=Registry(url),
            landing_dir=Path(scratch) / "landing",
            replace=True,
        )
    print(
        f"(the {scale} sample generated into PostgreSQL in "
        f"{time.perf_counter() - started:.0f} s, not counted)",
        flush=True,
    )
