"""`rollout copy-warehouse`: the analyst's copy of the warehouse, to query for as long
as they like without holding the pipeline's runs off (docs/runbook-analyst.md).

A `cp` of the file is no copy: DuckDB keeps a run's commits in a log beside it
(`warehouse.duckdb.wal`) until it writes them into the file, so a `cp` taken after a
run was killed misses them, and one taken while a run writes the file can be half of
one write and half of the next (DuckDB cannot open it). The command reads the warehouse
as a reader does, so it is one committed state, log included, or refused while a run
writes it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner, Result

from rollout.cli import app

from .conftest import DATA
from .hostile import TERMINAL
from .support.warehouse_holder import warehouse_held


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def warehouse_file(rollout_home: Path) -> Path:
    """A warehouse with the good landing files loaded (and no registry extract)."""
    loaded = run("ingest", "--no-registry", str(DATA / "good"))
    assert loaded.exit_code == 0, loaded.stderr
    return rollout_home / "warehouse.duckdb"


# A run killed after it committed (SIGKILL, the machine lost): its commit is in the
# log beside the file, not in the file yet.
COMMIT_THEN_DIE = """
import os, sys, duckdb
connection = duckdb.connect(sys.argv[1])
connection.execute("create table committed_by_a_killed_run as select 42 as answer")
os._exit(0)
"""


def test_the_copy_holds_what_a_killed_run_committed_which_cp_misses(
    warehouse_file: Path, tmp_path: Path
) -> None:
    subprocess.run([sys.executable, "-c", COMMIT_THEN_DIE, str(warehouse_file)], check=True)
    assert Path(f"{warehouse_file}.wal").exists()
    by_cp = tmp_path / "by-cp.duckdb"
    shutil.copyfile(warehouse_file, by_cp)
    with duckdb.connect(str(by_cp), read_only=True) as con:
        assert "committed_by_a_killed_run" not in {
            row[0] for row in con.sql("show tables").fetchall()
        }

    result = run("copy-warehouse", str(tmp_path / "mine.duckdb"))

    assert result.exit_code == 0, result.stderr
    assert f"copied the warehouse to {tmp_path / 'mine.duckdb'}" in result.stderr
    with duckdb.connect(str(tmp_path / "mine.duckdb"), read_only=True) as con:
        assert con.sql("select answer from committed_by_a_killed_run").fetchall() == [(42,)]
        # The documented views, with their descriptions, come along.
        assert con.sql(
            "select comment from duckdb_views() where view_name = 'package_metrics'"
        ).fetchall()[0][0]
    # Written beside it and moved into place: no temp file, no log left behind.
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or "wal" in p.name]


def test_the_copy_is_a_warehouse_rollout_reads(
    warehouse_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = run("summary", "--format", "json")
    folder = tmp_path / "copies"
    folder.mkdir()
    # A folder: the copy is made in it, under the warehouse's name.
    assert run("copy-warehouse", str(folder)).exit_code == 0
    monkeypatch.setenv("ROLLOUT_WAREHOUSE", str(folder / "warehouse.duckdb"))
    copied = run("summary", "--format", "json")
    assert copied.exit_code == 0, copied.stderr
    assert copied.stdout == original.stdout


def test_while_a_run_writes_the_copy_is_refused_at_once_and_nothing_is_written(
    warehouse_file: Path, tmp_path: Path
) -> None:
    copies = tmp_path / "copies"
    copies.mkdir()
    with warehouse_held(warehouse_file) as holder:
        result = run("copy-warehouse", str(copies / "mine.duckdb"))
    assert result.exit_code == 1
    assert f"the warehouse is open in process {holder.pid}" in result.stderr
    assert list(copies.iterdir()) == []


def test_an_existing_file_is_replaced_only_when_asked_and_only_a_duckdb_one(
    warehouse_file: Path, rollout_home: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "mine.duckdb"
    assert run("copy-warehouse", str(mine)).exit_code == 0
    again = run("copy-warehouse", str(mine))
    assert again.exit_code == 2
    assert f"{mine}: already exists" in again.stderr and "--replace" in again.stderr
    assert run("copy-warehouse", str(mine), "--replace").exit_code == 0

    # A typo naming the registry (or any file not a DuckDB one) never replaces it.
    registry = tmp_path / "registry.db"
    registry.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    refused = run("copy-warehouse", str(registry), "--replace")
    assert refused.exit_code == 2 and "not a DuckDB file" in refused.stderr
    assert registry.read_bytes().startswith(b"SQLite format 3")

    itself = run("copy-warehouse", str(warehouse_file), "--replace")
    assert itself.exit_code == 2 and "the warehouse itself" in itself.stderr


@pytest.mark.parametrize("below", ["copy.duckdb", "copies/copy.duckdb"])
def test_a_copy_where_none_can_be_written_is_bad_input_naming_the_path(
    warehouse_file: Path, tmp_path: Path, below: str
) -> None:
    # A file where the copy's folder should be: said as a failure (exit 1) naming
    # "File exists", or the hidden folder the copy is first written in.
    mine = tmp_path / "mine"
    mine.mkdir()
    notes = mine / "notes.txt"
    notes.write_text("mine")
    target = notes / below

    result = run("copy-warehouse", str(target))

    assert result.exit_code == 2, result.stderr
    assert " ".join(result.stderr.split()) == (
        f"error: {target}: cannot write a copy there: {notes} is a file, not a folder"
    )
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert notes.read_text() == "mine"


# Every terminal trick a file name can hold (not NUL: no file name can).
NAMES = ['it\'s "mine".duckdb', *(name for name in TERMINAL if "\x00" not in name)]


@pytest.mark.parametrize("name", NAMES)
def test_a_copy_s_name_is_data(warehouse_file: Path, tmp_path: Path, name: str) -> None:
    """A name with quotes is a file name, not SQL; one with terminal escapes is shown
    escaped, never run by the terminal."""
    target = tmp_path / name
    result = run("copy-warehouse", str(target))
    assert result.exit_code == 0, result.stderr
    assert not {"\x1b", "\x07", "\u202e"} & set(result.stderr)
    with duckdb.connect(str(target), read_only=True) as con:
        assert con.sql("select count(*) from ingested_files").fetchall() == [(4,)]


def test_no_warehouse_yet_is_refused_and_makes_no_files(rollout_home: Path, tmp_path: Path) -> None:
    result = run("copy-warehouse", str(tmp_path / "copies" / "mine.duckdb"))
    assert result.exit_code == 2
    assert "no warehouse yet: run `rollout ingest` first" in result.stderr
    assert not (rollout_home / "warehouse.duckdb").exists()
    assert not (tmp_path / "copies").exists()


def test_a_copy_replaced_after_its_session_was_killed_opens_without_that_session_s_log(
    warehouse_file: Path, tmp_path: Path
) -> None:
    """An analyst's notebook wrote to the earlier copy and its kernel was killed: its
    log (`mine.duckdb.wal`) stays beside the file. The new copy moved into place with
    that log beside it could not be opened ("WAL does not match database file"): the
    replaced copy's log goes with it."""
    mine = tmp_path / "mine.duckdb"
    assert run("copy-warehouse", str(mine)).exit_code == 0
    subprocess.run([sys.executable, "-c", COMMIT_THEN_DIE, str(mine)], check=True)
    assert Path(f"{mine}.wal").exists()

    result = run("copy-warehouse", str(mine), "--replace")

    assert result.exit_code == 0, result.stderr
    assert not Path(f"{mine}.wal").exists()
    with duckdb.connect(str(mine), read_only=True) as con:
        assert con.sql("select count(*) from ingested_files").fetchall() == [(4,)]
        assert "committed_by_a_killed_run" not in {
            row[0] for row in con.sql("show tables").fetchall()
        }


def test_a_copy_made_where_an_earlier_one_was_deleted_without_its_log_opens(
    warehouse_file: Path, tmp_path: Path
) -> None:
    """`rm mine.duckdb` leaves a killed session's `mine.duckdb.wal`: a new copy of that
    name is made without it, as one DuckDB opens."""
    mine = tmp_path / "mine.duckdb"
    assert run("copy-warehouse", str(mine)).exit_code == 0
    subprocess.run([sys.executable, "-c", COMMIT_THEN_DIE, str(mine)], check=True)
    mine.unlink()

    assert run("copy-warehouse", str(mine)).exit_code == 0

    with duckdb.connect(str(mine), read_only=True) as con:
        assert con.sql("select count(*) from ingested_files").fetchall() == [(4,)]


def test_a_copy_a_notebook_has_open_for_writing_is_not_replaced_under_it(
    warehouse_file: Path, tmp_path: Path
) -> None:
    """An analyst's notebook writing to the earlier copy: replacing it moved a new file
    over the one the session writes and took its log away, so what it had written since
    its last checkpoint was lost. Refused, naming the process; the copy left as it was."""
    mine = tmp_path / "mine.duckdb"
    assert run("copy-warehouse", str(mine)).exit_code == 0
    before = mine.stat()
    with warehouse_held(mine) as notebook:
        result = run("copy-warehouse", str(mine), "--replace")
        assert result.exit_code == 1
        assert f"{mine}: the copy is open in process {notebook.pid}" in result.stderr
        assert mine.stat().st_ino == before.st_ino
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_copy_a_notebook_only_reads_is_replaced(warehouse_file: Path, tmp_path: Path) -> None:
    """A reader keeps what it opened (the file moved over it is a new one) and writes
    no log: the copy is replaced."""
    mine = tmp_path / "mine.duckdb"
    assert run("copy-warehouse", str(mine)).exit_code == 0
    with warehouse_held(mine, read_only=True):
        result = run("copy-warehouse", str(mine), "--replace")
    assert result.exit_code == 0, result.stderr


def test_a_copy_this_process_has_open_for_writing_is_not_replaced(
    warehouse_file: Path, tmp_path: Path
) -> None:
    """A notebook's kernel calling the copy with the old copy still open there: DuckDB
    refuses a second, read-only opening of the file in one process ("a different
    configuration"), which did not read as a lock, so the file was moved over that
    session's as if nothing had it open."""
    mine = tmp_path / "mine.duckdb"
    assert run("copy-warehouse", str(mine)).exit_code == 0
    before = mine.stat()
    with duckdb.connect(str(mine)) as notebook:
        notebook.execute("create table mine as select 42 as answer")
        result = run("copy-warehouse", str(mine), "--replace")
        assert result.exit_code == 1, result.stderr
        assert f"{mine}: the copy is open in this process for writing" in result.stderr
        assert mine.stat().st_ino == before.st_ino
    with duckdb.connect(str(mine), read_only=True) as kept:
        assert kept.execute("select answer from mine").fetchall() == [(42,)]


def test_a_copy_this_process_only_reads_is_replaced(warehouse_file: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine.duckdb"
    assert run("copy-warehouse", str(mine)).exit_code == 0
    with duckdb.connect(str(mine), read_only=True):
        result = run("copy-warehouse", str(mine), "--replace")
    assert result.exit_code == 0, result.stderr
