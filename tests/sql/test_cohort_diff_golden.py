"""Golden cases for ``sql/marts/cohort_diff.sql`` (``rollout cohorts diff``), in the
style of test_golden.py and test_adoption_marts.py: each folder under ``diff_cases/``
holds cohort snapshots and the expected diff, worked out by hand from them.

A case folder holds:

- ``case.yaml``: ``description``, ``d1``, ``d2`` and ``cohort`` (a cohort name, or
  null for all cohorts): the model's parameters;
- ``snapshots.csv``: rows of ``cohort_account_snapshots`` (``as_of``, ``cohort``,
  ``account_id``, ``username``, ``tfa_status``, ``packages`` joined by ``; ``); the
  other columns get neutral values (no methods, no login, first qualified on the
  day, via maintainer);
- ``expected/cohort_diff.csv``: every row of the model, in its order and columns,
  ``packages`` joined by ``; ``.

Adding a folder adds a test.
"""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import pytest
import yaml

from rollout import warehouse

from .rows import assert_same_rows

CASES_DIR = Path(__file__).parent / "diff_cases"
CASE_KEYS = {"description", "d1", "d2", "cohort"}


def load_snapshots(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Insert a case's snapshots.csv into ``cohort_account_snapshots``."""
    con.execute(
        """
        insert into cohort_account_snapshots
        select
            cast(as_of as date),
            cohort,
            cast(account_id as bigint),
            username,
            tfa_status,
            case when tfa_status = 'none' then [] else [tfa_status] end,
            null,
            cast(as_of as date),
            string_split(packages, '; '),
            ['maintainer']
        from read_csv($path, header = true, all_varchar = true)
        """,
        {"path": str(path)},
    )


def _case_folders() -> list[Path]:
    return sorted(p for p in CASES_DIR.iterdir() if (p / "case.yaml").is_file())


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.mark.parametrize("folder", _case_folders(), ids=lambda p: p.name)
def test_golden_case(folder: Path, tmp_path: Path) -> None:
    spec = yaml.safe_load((folder / "case.yaml").read_text())
    assert set(spec) == CASE_KEYS, f"{folder}/case.yaml: keys must be {sorted(CASE_KEYS)}"
    header, expected = _read_csv(folder / "expected" / "cohort_diff.csv")
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        load_snapshots(con, folder / "snapshots.csv")
        result = con.execute(
            warehouse.render("marts/cohort_diff"),
            {"d1": spec["d1"], "d2": spec["d2"], "cohort": spec["cohort"]},
        )
        columns = [d[0] for d in result.description]
        rows = result.fetchall()
    assert columns == header, f"cohort_diff columns {columns}, the case says {header}"
    actual = [
        {
            column: "; ".join(value) if isinstance(value, list) else str(value)
            for column, value in zip(columns, row, strict=True)
        }
        for row in rows
    ]
    assert_same_rows("cohort_diff", expected, actual)


def test_every_case_folder_is_a_case() -> None:
    """A folder without case.yaml would silently be no test at all."""
    folders = sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())
    assert folders == [p.name for p in _case_folders()]
    assert len(folders) >= 2
