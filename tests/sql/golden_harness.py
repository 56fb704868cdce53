"""The one harness of the SQL golden cases, in the style of bigquery-etl's tests: each
folder ``golden/<model>/<case>/`` holds small inputs, the model's parameters and the
expected output, worked out by hand from the inputs (never produced by running the
code under test). golden/README.md says how to add a case; test_golden.py runs them.

A case folder holds:

- ``case.yaml``: ``description`` (what the case pins down), ``parameters`` (the model's
  named parameters, see ``MODELS``) and optionally ``xfail: <reason>`` for a known bug
  (the case must then fail, strictly);
- ``inputs/``: ``<table>.csv`` holds rows of ``main.<table>`` and ``<schema>/<table>.csv``
  rows of ``<schema>.<table>`` (``registry/accounts.csv``), only the columns that
  matter: the others are null (or, for a few tables, ``INPUT_DEFAULTS``); an empty cell
  is null and a list cell has its items joined by ``; ``. ``landing/`` holds landing
  files in the contract of docs/data-contracts.md, loaded by ``rollout.warehouse.ingest`` the
  morning after the ``as_of`` parameter (several manifests files load in name order:
  the newest wins);
- ``expected/<output>.csv``: every row of one of the model's outputs (``MODELS``), its
  columns in order; compared as text, in order when the model orders its rows and as
  a set of rows otherwise. An empty cell is null, ``true``/``false`` a boolean, a list
  has its items joined by ``; `` and a float matches within 5e-7 (shares are written
  rounded to 6 places);
- optionally ``expected/report.yaml``: fields of what running the model returns
  (``MetricsReport``, ``AdoptionSummary``), compared with ``==``.

Every case starts from a warehouse holding an empty registry extract
(conftest.py's ``fresh_warehouse``), then loads its inputs and runs its model.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from rollout import warehouse
from rollout.cohorts import rule_parameters
from rollout.core.plan import CohortRule, MetricsWindows, load_plan
from rollout.metrics import compute_metrics, window_parameters
from rollout.report.adoption import ADOPTION_TABLES, build_adoption
from rollout.warehouse.ingest import ingest

from .rows import METRIC_COLUMNS, assert_same_rows

GOLDEN_DIR = Path(__file__).parent / "golden"
REFERENCE_PLAN = Path(__file__).parents[2] / "plans" / "npm-2022.yaml"

CASE_KEYS = {"description", "parameters", "xfail"}
FLOAT_TOLERANCE = 5e-7

# Columns an input file may leave out that get these values (SQL over the file's
# columns) rather than null: a snapshot's methods follow its status, it qualified on
# the day, via maintainer.
INPUT_DEFAULTS: dict[str, dict[str, str]] = {
    "main.cohort_account_snapshots": {
        "tfa_methods": "case when tfa_status = 'none' then [] else [tfa_status] end",
        "first_qualified_on": "cast(as_of as date)",
        "via": "['maintainer']",
    },
}


# --- cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    model: str
    name: str
    folder: Path
    spec: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.model}/{self.name}"

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.spec.get("parameters") or {})

    def expected_files(self) -> list[Path]:
        return sorted((self.folder / "expected").glob("*.csv"))


def model_folders() -> list[Path]:
    return sorted(p for p in GOLDEN_DIR.iterdir() if p.is_dir())


def case_folders(model: Path) -> list[Path]:
    return sorted(p for p in model.iterdir() if (p / "case.yaml").is_file())


def load_case(folder: Path) -> Case:
    spec = yaml.safe_load((folder / "case.yaml").read_text())
    return Case(folder.parent.name, folder.name, folder, spec)


def all_cases() -> list[Case]:
    return [load_case(folder) for model in model_folders() for folder in case_folders(model)]


def case_params() -> list[Any]:
    """One pytest param per case, id ``<model>/<case>``, strictly xfail when it says so."""
    params = []
    for case in all_cases():
        marks = []
        if case.spec.get("xfail"):
            marks.append(pytest.mark.xfail(strict=True, reason=str(case.spec["xfail"])))
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


# --- inputs --------------------------------------------------------------------------------


def column_types(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> dict[str, str]:
    rows = con.execute(
        "select column_name, data_type from information_schema.columns "
        "where table_schema = $schema and table_name = $table order by ordinal_position",
        {"schema": schema, "table": table},
    ).fetchall()
    return dict(rows)


def input_table(path: Path) -> tuple[str, str]:
    """(schema, table) of ``inputs/<table>.csv`` or ``inputs/<schema>/<table>.csv``."""
    if path.parent.name == "inputs":
        return "main", path.stem
    assert path.parent.parent.name == "inputs", (
        f"{path}: a table's rows go in inputs/<table>.csv or inputs/<schema>/<table>.csv"
    )
    return path.parent.name, path.stem


def _cast(column: str, sql_type: str) -> str:
    if sql_type.endswith("[]"):
        return f"cast(string_split(\"{column}\", '; ') as {sql_type})"
    return f'cast("{column}" as {sql_type})'


def load_input(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Insert the rows of an input file into its table (see ``input_table``)."""
    schema, table = input_table(path)
    types = column_types(con, schema, table)
    assert types, f"{path}: no table {schema}.{table} in the warehouse"
    with path.open(newline="") as handle:
        header = next(csv.reader(handle))
    unknown = [column for column in header if column not in types]
    assert not unknown, f"{path}: {schema}.{table} has no columns {unknown}"
    defaults = INPUT_DEFAULTS.get(f"{schema}.{table}", {})
    columns = [*header, *(c for c in defaults if c not in header)]
    names = ", ".join(f'"{c}"' for c in columns)
    values = ", ".join(_cast(c, types[c]) if c in header else defaults[c] for c in columns)
    con.execute(
        f"insert into {schema}.{table} ({names}) select {values} "
        "from read_csv($path, header = true, all_varchar = true, nullstr = '')",
        {"path": str(path)},
    )


def landing_files(case: Case) -> list[Path]:
    landing = case.folder / "inputs" / "landing"
    return sorted(p for p in landing.iterdir() if p.is_file()) if landing.is_dir() else []


def table_files(case: Case) -> list[Path]:
    inputs = case.folder / "inputs"
    if not inputs.is_dir():
        return []
    files = sorted(p for p in inputs.rglob("*") if p.is_file() and "landing" not in p.parts)
    odd = [str(p.relative_to(inputs)) for p in files if p.suffix != ".csv"]
    assert not odd, f"{case.id}: inputs must be <table>.csv, <schema>/<table>.csv or landing/"
    return files


def load_inputs(con: duckdb.DuckDBPyConnection, case: Case) -> None:
    for path in table_files(case):
        load_input(con, path)
    files = landing_files(case)
    if not files:
        return
    as_of = case.parameters.get("as_of")
    assert isinstance(as_of, date), f"{case.id}: landing files need an as_of parameter"
    # "now" the morning after the as-of day: the as-of day's own rows are not "future".
    now = datetime.combine(as_of + timedelta(days=1), time(6, 0))
    report = ingest(con, files, quarantine_limit=0.0, now=now)
    problems = [f"{f.path.name}: {f.status} {f.message}" for f in report.files]
    assert report.rejected == [] and report.rows_quarantined == 0, (
        f"{case.id}: the landing files must load cleanly:\n" + "\n".join(problems)
    )


# --- models ----------------------------------------------------------------------------------

Rows = tuple[list[str], list[tuple[Any, ...]]]


@dataclass
class Run:
    """A case after its model ran: what the outputs and checks look at."""

    con: duckdb.DuckDBPyConnection
    case: Case
    report: Any
    expected: dict[str, list[dict[str, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Output:
    """Something a case can check with ``expected/<name>.csv``."""

    rows: Callable[[Run], Rows]
    ordered: bool  # the model orders its rows: compare them in order
    columns: tuple[str, ...] | None = None  # the columns a case checks; None: all


@dataclass(frozen=True)
class Model:
    run: Callable[[duckdb.DuckDBPyConnection, Case], Any]
    outputs: Mapping[str, Output]
    required: frozenset[str]  # parameters
    optional: frozenset[str] = frozenset()
    dates: tuple[str, ...] = ()  # parameters that must be dates
    always: tuple[str, ...] = ()  # outputs every case checks
    validate: Callable[[Case], None] | None = None  # before running
    check: Callable[[Run], None] | None = None  # after the comparisons


def _query(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any]) -> Rows:
    result = con.execute(sql, dict(params))
    return [d[0] for d in result.description], result.fetchall()


# package_metrics: sql/marts/package_metrics (and the models under it) through
# rollout.metrics.compute_metrics; a case with a rule also runs cohort_qualified_packages.


def _windows(case: Case) -> MetricsWindows:
    return MetricsWindows(**(case.parameters.get("windows") or {}))


def _package_metrics_daily(run: Run) -> Rows:
    return _query(
        run.con,
        "select * from package_metrics_daily where as_of = $as_of",
        {"as_of": run.case.parameters["as_of"]},
    )


def _download_gaps(run: Run) -> Rows:
    """The report's missing days, each flagged by the gaps model (the report only says
    whether the weekly window is complete), after checking metrics_runs and the report
    agree with each other and with the expected flags."""
    con, report = run.con, run.report
    stored = warehouse.one(
        con,
        "select missing_days, weekly_window_complete from metrics_runs where as_of = $as_of",
        {"as_of": report.as_of},
    )
    assert stored == (report.missing_days, report.weekly_window_complete), (
        f"metrics_runs {stored} disagrees with the report {report}"
    )
    weekly = [row["in_weekly_window"] == "true" for row in run.expected["int_download_gaps"]]
    assert report.weekly_window_complete == (not any(weekly)), (
        f"weekly_window_complete is {report.weekly_window_complete}, "
        f"but the expected gaps in the weekly window are {weekly}"
    )
    flagged = dict(
        con.execute(
            warehouse.render("intermediate/int_download_gaps"),
            window_parameters(report.as_of, _windows(run.case)),
        ).fetchall()
    )
    return ["day", "in_weekly_window"], [(day, flagged.get(day)) for day in report.missing_days]


def _qualified_packages(run: Run) -> Rows:
    parameters = run.case.parameters
    rule = CohortRule(**parameters["rule"])
    return _query(
        run.con,
        warehouse.render("marts/cohort_qualified_packages"),
        rule_parameters(rule, parameters["as_of"]),
    )


def _validate_package_metrics(case: Case) -> None:
    has_rule = "rule" in case.parameters
    has_expected = (case.folder / "expected" / "cohort_qualified_packages.csv").exists()
    assert has_rule == has_expected, (
        f"{case.id}: a rule and expected/cohort_qualified_packages.csv go together"
    )
    names = [p.name for p in landing_files(case)]
    assert any(n.startswith("manifests") for n in names), f"{case.id}: no manifests*.jsonl"


def _check_package_metrics(run: Run) -> None:
    assert run.report.packages == len(run.expected["package_metrics_daily"])


# adoption: the adoption marts (docs/adoption-marts.md), built together by
# rollout.report.adoption.build_adoption for a plan.


def _run_adoption(con: duckdb.DuckDBPyConnection, case: Case) -> Any:
    parameters = case.parameters
    plan = case.folder / parameters["plan"] if "plan" in parameters else REFERENCE_PLAN
    return build_adoption(con, load_plan(plan), parameters["as_of"])


def _table(name: str) -> Callable[[Run], Rows]:
    return lambda run: _query(run.con, f"select * from {name}", {})


def _validate_adoption(case: Case) -> None:
    plan = case.parameters.get("plan")
    assert plan is None or (case.folder / plan).is_file(), f"{case.id}: no plan file {plan}"
    report = case.folder / "expected" / "report.yaml"
    assert report.is_file() and "since" in yaml.safe_load(report.read_text()), (
        f"{case.id}: expected/report.yaml must give since, the series' first day"
    )


def _check_adoption(run: Run) -> None:
    assert list(run.report.rows) == list(ADOPTION_TABLES)
    for name, rows in run.expected.items():
        assert run.report.rows[name] == len(rows), f"{name}: {run.report.rows[name]} rows"


# cohort_diff: sql/marts/cohort_diff (`rollout cohorts diff`), a query over the snapshots.


def _cohort_diff(run: Run) -> Rows:
    parameters = run.case.parameters
    return _query(
        run.con,
        warehouse.render("marts/cohort_diff"),
        {key: parameters[key] for key in ("d1", "d2", "cohort")},
    )


# duplicate_sends: sql/marts/duplicate_sends (`rollout doctor`'s sends row), over the
# sends ingest keeps from raw_events (rollout.warehouse.keep_sends).


def _duplicate_sends(run: Run) -> Rows:
    # The case's events as one load: ingest keeps the sends they name (from file 0).
    with warehouse.transaction(run.con):
        warehouse.keep_sends(run.con, 0, datetime(2022, 2, 1))
    return _query(
        run.con,
        warehouse.render("marts/duplicate_sends"),
        {"since": run.case.parameters["since"]},
    )


MODELS: dict[str, Model] = {
    "package_metrics": Model(
        run=lambda con, case: compute_metrics(con, case.parameters["as_of"], _windows(case)),
        outputs={
            "package_metrics_daily": Output(
                _package_metrics_daily, ordered=False, columns=METRIC_COLUMNS
            ),
            "int_download_gaps": Output(_download_gaps, ordered=True),
            "cohort_qualified_packages": Output(
                _qualified_packages, ordered=False, columns=("package", "reasons")
            ),
        },
        required=frozenset({"as_of"}),
        optional=frozenset({"windows", "rule"}),
        dates=("as_of",),
        always=("package_metrics_daily",),
        validate=_validate_package_metrics,
        check=_check_package_metrics,
    ),
    "adoption": Model(
        run=_run_adoption,
        outputs={name: Output(_table(name), ordered=True) for name in ADOPTION_TABLES},
        required=frozenset({"as_of"}),
        optional=frozenset({"plan"}),
        dates=("as_of",),
        validate=_validate_adoption,
        check=_check_adoption,
    ),
    "cohort_diff": Model(
        run=lambda con, case: None,
        outputs={"cohort_diff": Output(_cohort_diff, ordered=True)},
        required=frozenset({"d1", "d2", "cohort"}),
        dates=("d1", "d2"),
    ),
    "duplicate_sends": Model(
        run=lambda con, case: None,
        outputs={"duplicate_sends": Output(_duplicate_sends, ordered=True)},
        required=frozenset({"since"}),
    ),
}


# --- comparing -------------------------------------------------------------------------------


def read_expected(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    for number, row in enumerate(rows, start=2):
        assert len(row) == len(header), f"{path}, line {number}: {len(header)} cells wanted"
    return header, rows


def cell_text(value: Any, expected: str = "") -> str:
    """The actual value as an expected file writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        try:
            if expected and abs(float(expected) - value) <= FLOAT_TOLERANCE:
                return expected
        except ValueError:
            pass
        return repr(value)
    if isinstance(value, list):
        return "; ".join(cell_text(item) for item in value)
    return str(value)


def compare_output(name: str, output: Output, path: Path, actual: Rows) -> None:
    """Fail unless the rows of ``path`` are the actual rows."""
    header, expected_rows = read_expected(path)
    columns, rows = actual
    wanted = list(output.columns) if output.columns else columns
    assert header == wanted, f"{name}: columns {wanted}, {path.name} says {header}"
    if output.columns:
        indexes = [columns.index(column) for column in output.columns]
        rows = [tuple(row[i] for i in indexes) for row in rows]
    if not output.ordered:
        expected_rows = sorted(expected_rows)
        rows = sorted(rows, key=lambda row: [cell_text(value) for value in row])
    blank = [""] * len(header)
    actual_text = [
        [
            cell_text(value, (expected_rows[i] if i < len(expected_rows) else blank)[j])
            for j, value in enumerate(row)
        ]
        for i, row in enumerate(rows)
    ]
    assert_same_rows(
        name,
        [dict(zip(header, row, strict=True)) for row in expected_rows],
        [dict(zip(header, row, strict=True)) for row in actual_text],
    )


def compare_report(case: Case, report: Any) -> None:
    path = case.folder / "expected" / "report.yaml"
    if not path.exists():
        return
    expected = yaml.safe_load(path.read_text())
    assert report is not None, f"{case.id}: the {case.model} model returns no report"
    assert isinstance(expected, dict) and expected, f"{path}: fields of the report, by name"
    known = {f.name for f in dataclasses.fields(report)} - {"seconds"}
    unknown = sorted(set(expected) - known)
    assert not unknown, f"{path}: {type(report).__name__} has no fields {unknown}"
    actual = {key: getattr(report, key) for key in sorted(expected)}
    assert actual == dict(sorted(expected.items())), f"{case.id}: report {actual}"


# --- running a case --------------------------------------------------------------------------


def validate_case(case: Case) -> Model:
    assert case.model in MODELS, f"{case.folder}: no model {case.model} in MODELS"
    model = MODELS[case.model]
    unknown = set(case.spec) - CASE_KEYS
    assert not unknown, f"{case.id}/case.yaml: unknown keys {sorted(unknown)}"
    assert case.spec.get("description"), f"{case.id}/case.yaml: say what the case pins down"
    keys = set(case.parameters)
    assert model.required <= keys <= model.required | model.optional, (
        f"{case.id}/case.yaml: parameters {sorted(keys)}; {case.model} needs "
        f"{sorted(model.required)} and may have {sorted(model.optional)}"
    )
    for key in model.dates:
        assert isinstance(case.parameters[key], date), f"{case.id}: {key} must be a date"
    names = [p.stem for p in case.expected_files()]
    assert names, f"{case.id}: no expected/*.csv"
    strange = sorted(set(names) - set(model.outputs))
    assert not strange, f"{case.id}: {strange} are not outputs of {case.model}"
    missing = sorted(set(model.always) - set(names))
    assert not missing, f"{case.id}: every {case.model} case checks {missing}"
    others = sorted(
        p.name
        for p in (case.folder / "expected").iterdir()
        if p.suffix != ".csv" and p.name != "report.yaml"
    )
    assert not others, f"{case.id}: expected/ holds <output>.csv and report.yaml, not {others}"
    if model.validate:
        model.validate(case)
    return model


def check_case(con: duckdb.DuckDBPyConnection, case: Case) -> None:
    """Load the case's inputs, run its model, and compare every expected file."""
    model = validate_case(case)
    load_inputs(con, case)
    run = Run(con, case, model.run(con, case))
    for path in case.expected_files():
        header, rows = read_expected(path)
        run.expected[path.stem] = [dict(zip(header, row, strict=True)) for row in rows]
    for path in case.expected_files():
        output = model.outputs[path.stem]
        compare_output(path.stem, output, path, output.rows(run))
    compare_report(case, run.report)
    if model.check:
        model.check(run)
