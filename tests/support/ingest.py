"""Loading one landing file and counting what it left: shared by tests/test_ingest.py
and tests/test_landing_compression.py."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb

from rollout import warehouse
from rollout.warehouse import ingest, landing

NOW = datetime(2022, 2, 1, 12, 0)
LIMIT = 0.01


def load(con: duckdb.DuckDBPyConnection, path: Path, limit: float = LIMIT) -> ingest.FileResult:
    return ingest.ingest_file(con, landing.classify(path), quarantine_limit=limit, now=NOW)


def row_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    tables = (
        "ingested_files",
        "raw_downloads",
        "raw_manifests",
        "raw_dependencies",
        "raw_logins",
        "raw_events",
        "quarantine",
    )
    return {t: warehouse.scalar(con, f"select count(*) from {t}") for t in tables}


NOTHING = {
    "ingested_files": 0,
    "raw_downloads": 0,
    "raw_manifests": 0,
    "raw_dependencies": 0,
    "raw_logins": 0,
    "raw_events": 0,
    "quarantine": 0,
}
