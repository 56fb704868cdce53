"""The warehouse helpers that the metrics and cohort runs lean on."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import duckdb
import pytest

from rollout import warehouse
from rollout.core.errors import RolloutError
from rollout.ops.doctor import Status, check_warehouse
from rollout.warehouse.manifests import latest_manifests


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


def test_the_views_built_on_the_latest_manifests_read_the_kept_ones_within_the_block(
    con: duckdb.DuckDBPyConnection,
) -> None:
    before = edges(con)
    with latest_manifests(con):
        assert con.execute("select count(*) from latest_manifests").fetchone() == (2,)
        # Proof the views read the kept table: change it, and the edges follow.
        con.execute("delete from latest_manifests where package = 'is-odd'")
        assert edges(con) == [("is-odd", "prod")]
    # Outside the block, the view ranks the raw manifests again.
    assert edges(con) == before == [("is-number", "prod"), ("is-odd", "prod")]


def test_the_kept_latest_manifests_move_with_a_new_file_and_a_rebuild_makes_them_whole(
    con: duckdb.DuckDBPyConnection,
) -> None:
    def kept() -> list[tuple]:
        return con.execute("select package, version from latest_manifests order by 1").fetchall()

    with latest_manifests(con):
        pass
    assert kept() == [("is-odd", "3.0.0"), ("left-pad", "1.1.0")]
    con.execute("insert into raw_manifests values ('is-odd', '3.1.0', ['bob'], 3, 1, [])")
    with latest_manifests(con):
        assert con.execute(
            "select version from stg_manifests where package = 'is-odd'"
        ).fetchall() == [("3.1.0",)]
    assert kept() == [("is-odd", "3.1.0"), ("left-pad", "1.1.0")]
    con.execute("delete from latest_manifests")  # (kept rows gone astray)
    with latest_manifests(con, rebuild=True):
        pass
    assert kept() == [("is-odd", "3.1.0"), ("left-pad", "1.1.0")]


def test_the_view_is_dropped_when_the_block_fails(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(RuntimeError), latest_manifests(con):
        raise RuntimeError("a model failed")
    views = con.execute("select view_name from duckdb_views() where temporary").fetchall()
    assert ("stg_manifests",) not in views


# One more than a row group: DuckDB writes a full row group to disk during the statement.
MANY = 122_880 + 1_000


def string_compressions(con: duckdb.DuckDBPyConnection, table: str, column: str) -> set[str]:
    """How the first row group of ``column`` stores its strings (the one a large write
    flushed to disk as it went)."""
    con.execute("checkpoint")
    rows = con.execute(
        f"select distinct compression from pragma_storage_info('{table}') "
        "where column_name = $column and segment_type = 'VARCHAR' and row_group_id = 0",
        {"column": column},
    ).fetchall()
    return {row[0] for row in rows}


def test_a_metrics_rebuild_writes_the_names_of_the_tables_it_keeps_uncompressed(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """Compressing millions of unique names cost more than the queries that made the
    tables a run replaces whole (rollout.warehouse.strings_uncompressed)."""
    from datetime import date

    from rollout.core.plan import MetricsWindows
    from rollout.metrics import compute_metrics

    con.execute(
        f"insert into raw_manifests select 'package-' || i, '1.0.0', ['ann'], 5, i, [] "
        f"from range({MANY}) as t(i)"
    )
    con.execute(
        f"insert into raw_dependencies select 5, i, 'package-' || (i + 1), '^1', 'prod' "
        f"from range({MANY}) as t(i)"
    )
    con.execute(
        f"insert into raw_downloads select 'package-' || i, date '2022-01-30', i + 1, 5 "
        f"from range({MANY}) as t(i)"
    )
    report = compute_metrics(con, date(2022, 1, 31), MetricsWindows(), rebuild=True)

    assert report.packages == MANY + 2  # and the two of the fixture
    assert string_compressions(con, "latest_manifests", "package") == {"Uncompressed"}
    assert string_compressions(con, "latest_manifests", "package_key") == {"Uncompressed"}
    assert string_compressions(con, "download_windows", "package") == {"Uncompressed"}
    assert string_compressions(con, "dependency_counts", "dependency") == {"Uncompressed"}
    # The setting is the database's: put back.
    assert warehouse.scalar(con, "select current_setting('disabled_compression_methods')") == ""


def test_strings_uncompressed_puts_back_the_setting_it_found_even_when_the_block_fails(
    con: duckdb.DuckDBPyConnection,
) -> None:
    def setting() -> str:
        return warehouse.scalar(con, "select current_setting('disabled_compression_methods')")

    con.execute("set disabled_compression_methods = 'rle'")
    with pytest.raises(RuntimeError), warehouse.strings_uncompressed(con):
        assert set(setting().lower().split(",")) == {"rle", "dict_fsst"}
        raise RuntimeError("a write failed")
    assert setting().lower() == "rle"
    # A statement failing inside a transaction aborts it: the write's own error is
    # what the caller sees, and the setting is put back all the same.
    with (
        pytest.raises(duckdb.Error, match="a bad row"),
        warehouse.transaction(con),
        warehouse.strings_uncompressed(con),
    ):
        con.execute("create or replace table download_windows as select error('a bad row')")
    assert setting().lower() == "rle"


def test_strings_uncompressed_blocks_overlapping_on_one_warehouse_put_back_the_setting_they_found(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """The setting is the database's, shared by every connection of the process to the
    file (two threads, a notebook's second cursor): the first block to end put back
    what it found while the other still wrote, and the last put back the first's
    change, leaving every later write of the process (package_metrics_daily's copy a
    day) uncompressed for good."""

    def setting() -> str:
        return warehouse.scalar(con, "select current_setting('disabled_compression_methods')")

    other = con.cursor()
    first, second = warehouse.strings_uncompressed(con), warehouse.strings_uncompressed(other)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    # The second block still writes: its strings still uncompressed.
    other.execute(f"create table kept as select 'package-' || i as name from range({MANY}) t(i)")
    assert string_compressions(con, "kept", "name") == {"Uncompressed"}
    second.__exit__(None, None, None)
    assert setting() == ""
    other.close()


def views(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute("select view_name from duckdb_views() where not internal").fetchall()
    return {row[0] for row in rows}


def test_a_warehouse_as_this_rollout_made_it_is_opened_without_creating_it_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "warehouse.duckdb"
    with warehouse.open_warehouse(path):
        pass
    with (
        mock.patch.object(warehouse, "sql_text", side_effect=AssertionError("ran again")),
        warehouse.open_warehouse(path) as con,
    ):
        assert con.execute("select count(*) from stg_logins").fetchone() == (0,)


def test_a_view_dropped_or_replaced_or_other_sql_makes_it_create_everything_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "warehouse.duckdb"
    with warehouse.open_warehouse(path) as con:
        made = views(con)
        con.execute("drop view stg_logins")
    with warehouse.open_warehouse(path) as con:
        assert views(con) == made
        con.execute("create or replace view stg_logins as select 'by hand' as what")
    with warehouse.open_warehouse(path) as con:
        assert "what" not in [c[0] for c in con.execute("select * from stg_logins").description]
    # Another rollout's SQL (an upgrade): its statements run, though nothing was touched.
    statements, _ = warehouse._schema_statements()
    newer = (*statements, "create or replace view stg_newer as select 1 as one")
    with (
        mock.patch.object(warehouse, "_schema_statements", return_value=(newer, "newer")),
        warehouse.open_warehouse(path) as con,
    ):
        assert views(con) == {*made, "stg_newer"}


def test_duckdb_draws_no_progress_bar_on_stdout(tmp_path: Path) -> None:
    """DuckDB's own bar went to stdout for any query past two seconds, piped or not:
    into `--format json` and CSV written to a file."""
    with warehouse.open_warehouse(tmp_path / "warehouse.duckdb") as con:
        assert con.execute("select current_setting('enable_progress_bar')").fetchone() == (False,)


def _as_an_older_rollout_left_it(path: Path) -> None:
    """A warehouse an older rollout made, as the code's upgrade finds it: its views by
    that version's SQL (stg_manifests before package_key), under its fingerprint."""
    with warehouse.open_warehouse(path) as con:
        con.execute(
            "create or replace view stg_manifests as "
            "select name as package, version, maintainers from raw_manifests"
        )
        con.execute("update warehouse_schema set fingerprint = 'an older rollout'")


def test_a_read_only_connection_refuses_views_another_rollout_made_until_one_writes(
    tmp_path: Path,
) -> None:
    """Only a writing connection makes the views again: a command that only reads (plan
    and cohorts simulate, cohorts show and diff, summary) ran the old views, and failed
    with a traceback on a column they lack (package_key) or counted by the old rules."""
    path = tmp_path / "warehouse.duckdb"
    _as_an_older_rollout_left_it(path)
    with pytest.raises(RolloutError, match="made by another version of rollout") as refused:
        warehouse.connect(path, read_only=True)
    assert "run `rollout ingest`" in str(refused.value)
    with warehouse.open_warehouse(path):  # what `rollout ingest` (any writer) does first
        pass
    with warehouse.open_warehouse(path, read_only=True) as con:
        assert "package_key" in [
            c[0] for c in con.execute("select * from stg_manifests").description
        ]


def test_a_read_only_connection_refuses_another_schema_version(tmp_path: Path) -> None:
    """As a writing one does: the docs promise a warehouse of another version is refused."""
    path = tmp_path / "warehouse.duckdb"
    with warehouse.open_warehouse(path) as con:
        con.execute("update warehouse_meta set schema_version = 2")
    with pytest.raises(RolloutError, match="has schema version 2, this rollout needs"):
        warehouse.connect(path, read_only=True)


def test_the_advice_to_rebuild_says_what_a_rebuild_reads_again_and_what_it_loses(
    tmp_path: Path,
) -> None:
    """ "Delete it and rebuild from the landing files" hid that the warehouse is the only
    keeper of past days' metrics and cohort snapshots: every refusal that advises a
    rebuild (another schema version, a file DuckDB cannot open, the doctor) says to move
    it aside, what the new one reads again and what is lost, and how to get days back."""
    path = tmp_path / "warehouse.duckdb"
    with warehouse.open_warehouse(path) as con:
        con.execute("update warehouse_meta set schema_version = 2")
    with pytest.raises(RolloutError) as other_version:
        warehouse.connect(path)
    broken = tmp_path / "broken.duckdb"
    broken.write_text("not a DuckDB file\n" * 100)
    with pytest.raises(RolloutError) as unreadable:
        warehouse.connect(broken)
    doctor = check_warehouse(path)
    assert doctor.status is Status.fail
    for message in (str(other_version.value), str(unreadable.value), doctor.detail):
        assert "\n" not in message
        assert "move it aside" in message and "delete" not in message
        assert "re-reads every landing file still under the landing folder" in message
        assert "copies the registry again" in message
        assert "lost are the rows of landing files no longer there" in message
        for table in ("package_metrics_daily", "metrics_runs", "cohort_account_snapshots"):
            assert table in message
        assert "`rollout metrics --as-of DAY` and `rollout cohorts build --as-of DAY`" in message


def test_a_read_only_connection_takes_tables_made_since_the_schema_was_kept(
    tmp_path: Path,
) -> None:
    """Runs make tables after the schema's digest was kept (the report's marts): the
    read-only check looks at the fingerprint of the SQL alone, not at that digest."""
    path = tmp_path / "warehouse.duckdb"
    with warehouse.open_warehouse(path) as con:
        con.execute("create table adoption_daily (day date)")
    with warehouse.open_warehouse(path, read_only=True) as con:
        assert con.execute("select count(*) from adoption_daily").fetchone() == (0,)
