"""A warehouse with an empty registry extract, for the golden cases and the adoption
property tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from rollout import warehouse
from rollout.registry import Registry
from rollout.registry.engine import make_engine
from rollout.registry.migrate import upgrade
from rollout.warehouse.extract import extract_registry


@pytest.fixture(scope="session")
def empty_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse file whose ``registry.*`` tables come from extracting an empty
    registry at the current schema: the same columns and types as a real extract."""
    folder = tmp_path_factory.mktemp("empty-warehouse")
    registry_url = f"sqlite:///{folder / 'registry.db'}"
    engine = make_engine(registry_url)
    upgrade(engine)
    engine.dispose()
    path = folder / "empty.duckdb"
    with warehouse.open_warehouse(path) as con:
        extract_registry(con, Registry(registry_url))
    return path


@pytest.fixture
def fresh_warehouse(empty_warehouse: Path, tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A copy of ``empty_warehouse`` of the test's own, open."""
    path = tmp_path / "w.duckdb"
    shutil.copy(empty_warehouse, path)
    con = warehouse.connect(path)
    try:
        yield con
    finally:
        con.close()
