"""The warehouse helpers that the metrics and cohort runs lean on."""

from __future__ import annotations

import duckdb
import pytest

from rollout import warehouse


@pytest.fixture
def con(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """The fresh warehouse of tests/conftest.py with two packages' manifests and
    dependencies in its raw tables: left-pad (two versions, by ann) and is-odd (by bob)."""
    con.execute(
        "insert into raw_manifests values ('left-pad', '1.0.0', ['ann'], 1, 1, []), "
        "('left-pad', '1.1.0', ['ann'], 2, 1, []), ('is-odd', '3.0.0', ['bob'], 2, 2, [])"
    )
    con.execute(
        "insert into raw_dependencies values (1, 1, 'is-odd', '^1', 'prod'), "
        "(2, 1, 'is-odd', '^3', 'prod'), (2, 2, 'is-number', '^6', 'prod')"
    )
    return con


def edges(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return con.execute("select * from stg_dependency_edges order by all").fetchall()


def test_a_materialized_view_is_read_by_the_views_built_on_it(
    con: duckdb.DuckDBPyConnection,
) -> None:
    before = edges(con)
    with warehouse.materialized(con, "stg_manifests", ("package", "file_id", "ordinal")):
        assert con.execute("select count(*) from temp.stg_manifests").fetchone() == (2,)
        # Proof the views read the copy: change it, and the edges follow.
        con.execute("delete from temp.stg_manifests where package = 'is-odd'")
        assert edges(con) == [("is-odd", "prod")]
    assert edges(con) == before == [("is-number", "prod"), ("is-odd", "prod")]


def test_the_copy_is_dropped_when_the_block_fails(con: duckdb.DuckDBPyConnection) -> None:
    with (
        pytest.raises(RuntimeError),
        warehouse.materialized(con, "stg_manifests", ("package", "file_id", "ordinal")),
    ):
        raise RuntimeError("a model failed")
    tables = con.execute("select table_name from duckdb_tables() where temporary").fetchall()
    assert ("stg_manifests",) not in tables


def test_a_model_reading_a_column_left_out_fails_instead_of_reading_wrong_data(
    con: duckdb.DuckDBPyConnection,
) -> None:
    with (
        warehouse.materialized(con, "stg_manifests", ("package",)),
        pytest.raises(duckdb.BinderException, match="maintainers"),
    ):
        con.execute("select maintainers from stg_manifests").fetchall()


def test_only_staging_views_can_be_materialized(con: duckdb.DuckDBPyConnection) -> None:
    with (
        pytest.raises(ValueError, match="not a staging view"),
        warehouse.materialized(con, "raw_downloads", ("package",)),
    ):
        pass
