"""Golden cases for the metrics and qualification SQL, in the style of bigquery-etl's
tests: each folder under ``cases/`` holds small landing files and the expected output,
worked out by hand from the inputs (never produced by running the code under test).

A case folder holds:

- ``case.yaml``: ``description``, ``as_of``, optionally ``windows`` (MetricsWindows
  fields) and ``rule`` (CohortRule fields), and optionally ``xfail: <reason>`` for a
  known bug (the test then must fail, strictly);
- landing files in the contract of docs/data-contracts.md: ``manifests*.jsonl`` and
  ``downloads*.csv`` (several manifests files load in name order: the newest wins);
- ``expected_package_metrics.csv``: every row of ``package_metrics_daily`` that day;
- optionally ``expected_gaps.csv`` (``day``, ``in_weekly_window``): the missing days;
- optionally ``expected_exclusions.yaml`` (``self_dependencies``,
  ``unknown_dependencies``, optionally ``unknown_packages``);
- ``expected_qualified.csv`` (``package``, ``reasons`` joined by ``; ``) when there is
  a rule: the result of ``sql/marts/cohort_qualified_packages``.

Adding a folder adds a test.
"""

from __future__ import annotations

import csv
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from rollout import warehouse
from rollout.cohorts import rule_parameters
from rollout.ingest import ingest
from rollout.metrics import MetricsReport, compute_metrics, window_parameters
from rollout.plan import CohortRule, MetricsWindows, load_plan

from .rows import METRIC_COLUMNS, assert_same_rows

CASES_DIR = Path(__file__).parent / "cases"
REFERENCE_PLAN = Path(__file__).parents[2] / "plans" / "npm-2022.yaml"

CASE_KEYS = {"description", "as_of", "windows", "rule", "xfail"}
EXCLUSION_KEYS = {"self_dependencies", "unknown_dependencies", "unknown_packages"}


def _case_params() -> list[Any]:
    params = []
    for folder in sorted(p for p in CASES_DIR.iterdir() if (p / "case.yaml").is_file()):
        spec = yaml.safe_load((folder / "case.yaml").read_text())
        marks = []
        if spec.get("xfail"):
            marks.append(pytest.mark.xfail(strict=True, reason=str(spec["xfail"])))
        params.append(pytest.param(folder, id=folder.name, marks=marks))
    return params


# --- reading a case --------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _expected_metrics(path: Path) -> list[dict[str, Any]]:
    rows = _read_csv(path)
    assert rows and tuple(rows[0]) == METRIC_COLUMNS, f"{path}: columns must be {METRIC_COLUMNS}"
    return sorted(
        ({c: row[c] if c == "package" else int(row[c]) for c in METRIC_COLUMNS} for row in rows),
        key=lambda row: row["package"],
    )


def _expected_gaps(path: Path) -> list[dict[str, Any]]:
    parsed = []
    for row in _read_csv(path):
        item: dict[str, Any] = {"day": date.fromisoformat(row["day"])}
        if "in_weekly_window" in row:
            assert row["in_weekly_window"] in ("true", "false"), path
            item["in_weekly_window"] = row["in_weekly_window"] == "true"
        parsed.append(item)
    return parsed


def _landing_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("manifests*.jsonl")) + sorted(folder.glob("downloads*.csv"))
    assert any(f.name.startswith("manifests") for f in files), f"{folder}: no manifests*.jsonl"
    return files


def _load_case(folder: Path) -> dict[str, Any]:
    spec = yaml.safe_load((folder / "case.yaml").read_text())
    unknown = set(spec) - CASE_KEYS
    assert not unknown, f"{folder}/case.yaml: unknown keys {sorted(unknown)}"
    assert isinstance(spec.get("as_of"), date), f"{folder}/case.yaml: as_of must be a date"
    assert spec.get("description"), f"{folder}/case.yaml: say what the case pins down"
    has_rule = "rule" in spec
    has_expected = (folder / "expected_qualified.csv").exists()
    assert has_rule == has_expected, f"{folder}: a rule and expected_qualified.csv go together"
    return spec


# --- running a case ----------------------------------------------------------------------


def _ingest_case(con: duckdb.DuckDBPyConnection, folder: Path, as_of: date) -> None:
    # "now" the morning after the as-of day: the as-of day's own rows are not "future".
    now = datetime.combine(as_of + timedelta(days=1), time(6, 0))
    report = ingest(con, _landing_files(folder), quarantine_limit=0.0, now=now)
    problems = [f"{f.path.name}: {f.status} {f.message}" for f in report.files]
    assert report.rejected == [] and report.rows_quarantined == 0, (
        "the case's landing files must load cleanly:\n" + "\n".join(problems)
    )


def _actual_metrics(con: duckdb.DuckDBPyConnection, as_of: date) -> list[dict[str, Any]]:
    rows = con.execute(
        f"select {', '.join(METRIC_COLUMNS)} from package_metrics_daily where as_of = $as_of",
        {"as_of": as_of},
    ).fetchall()
    return sorted((dict(zip(METRIC_COLUMNS, row, strict=True)) for row in rows), key=_by_package)


def _by_package(row: dict[str, Any]) -> str:
    return str(row["package"])


def _actual_gaps(
    con: duckdb.DuckDBPyConnection,
    report: MetricsReport,
    windows: MetricsWindows,
    expected: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    stored = warehouse.one(
        con,
        "select missing_days, weekly_window_complete from metrics_runs where as_of = $as_of",
        {"as_of": report.as_of},
    )
    assert stored == (report.missing_days, report.weekly_window_complete), (
        f"metrics_runs {stored} disagrees with the report {report}"
    )
    rows: list[dict[str, Any]] = [{"day": day} for day in report.missing_days]
    if expected and "in_weekly_window" in expected[0]:
        weekly = [row["in_weekly_window"] for row in expected]
        assert report.weekly_window_complete == (not any(weekly)), (
            f"weekly_window_complete is {report.weekly_window_complete}, "
            f"but the expected gaps in the weekly window are {weekly}"
        )
        # The report only says whether the weekly window is complete; which of the
        # missing days fall in it comes from the gaps model itself.
        flagged = dict(
            con.execute(
                warehouse.render("intermediate/int_download_gaps"),
                window_parameters(report.as_of, windows),
            ).fetchall()
        )
        for row in rows:
            row["in_weekly_window"] = flagged.get(row["day"])
    return rows


def _actual_exclusions(report: MetricsReport, keys: set[str]) -> dict[str, int]:
    return {key: getattr(report, key) for key in sorted(keys)}


def _actual_qualified(
    con: duckdb.DuckDBPyConnection, rule: CohortRule, as_of: date
) -> list[dict[str, Any]]:
    rows = con.execute(
        warehouse.render("marts/cohort_qualified_packages"), rule_parameters(rule, as_of)
    ).fetchall()
    return sorted(
        ({"package": package, "reasons": "; ".join(reasons)} for package, _key, reasons in rows),
        key=_by_package,
    )


@pytest.mark.parametrize("folder", _case_params())
def test_golden_case(folder: Path, tmp_path: Path) -> None:
    spec = _load_case(folder)
    as_of: date = spec["as_of"]
    windows = MetricsWindows(**(spec.get("windows") or {}))
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        _ingest_case(con, folder, as_of)
        report = compute_metrics(con, as_of, windows)

        expected = _expected_metrics(folder / "expected_package_metrics.csv")
        assert_same_rows("package metrics", expected, _actual_metrics(con, as_of))
        assert report.packages == len(expected)

        if (folder / "expected_gaps.csv").exists():
            expected_gaps = _expected_gaps(folder / "expected_gaps.csv")
            assert_same_rows(
                "missing days", expected_gaps, _actual_gaps(con, report, windows, expected_gaps)
            )

        if (folder / "expected_exclusions.yaml").exists():
            exclusions = yaml.safe_load((folder / "expected_exclusions.yaml").read_text())
            assert set(exclusions) <= EXCLUSION_KEYS, f"unknown keys in {exclusions}"
            assert _actual_exclusions(report, set(exclusions)) == dict(sorted(exclusions.items()))

        if "rule" in spec:
            rule = CohortRule(**spec["rule"])
            expected_qualified = sorted(
                _read_csv(folder / "expected_qualified.csv"), key=_by_package
            )
            assert_same_rows(
                "qualified packages", expected_qualified, _actual_qualified(con, rule, as_of)
            )
    finally:
        con.close()


def test_every_case_folder_is_a_case() -> None:
    """A folder without case.yaml would silently be no test at all."""
    folders = sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())
    cases = sorted(p.name for p in CASES_DIR.iterdir() if (p / "case.yaml").is_file())
    assert folders == cases
    assert len(cases) >= 7


def test_thresholds_case_uses_the_reference_high_impact_rule() -> None:
    spec = yaml.safe_load((CASES_DIR / "thresholds" / "case.yaml").read_text())
    reference = load_plan(REFERENCE_PLAN).cohort("high-impact")
    assert CohortRule(**spec["rule"]) == reference.model_copy(update={"description": ""})
