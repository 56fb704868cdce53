"""Properties of the metrics and qualification SQL: on random small registries, the
warehouse's numbers equal a plain Python computation of the same definitions.

Each example writes landing files (one or two manifests files, one downloads file, in
any of the contract's formats) to a temporary folder, ingests them into a fresh DuckDB
file, computes the metrics for one or two as-of days, and compares every row, the
missing days and the exclusions with the model below. Names come from a small pool
with a scoped name, capitalised legacy names and names that differ only in case;
dependencies also name packages that have no manifest, and packages list themselves.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout import warehouse
from rollout.cohorts import rule_parameters
from rollout.core.plan import CohortRule, MetricsWindows
from rollout.metrics import MetricsReport, compute_metrics
from rollout.warehouse.ingest import ingest

from .rows import METRIC_COLUMNS, assert_same_rows

# Packages are drawn from POOL; dependencies and downloads also name UNKNOWN ones,
# which never get a manifest (nor does a POOL name that was not drawn).
POOL = ("a", "ab", "b-c", "x.y", "cap", "Cap", "JSONStream", "jsonstream", "@s/a", "@s/x", "z")
UNKNOWN = ("A", "ghost", "@s/ghost")
KINDS = ("prod", "dev", "peer")
MANIFEST_KEYS = {"prod": "dependencies", "dev": "devDependencies", "peer": "peerDependencies"}

FIRST_DAY = date(2022, 1, 1)
DAYS = 35  # download data can exist on FIRST_DAY .. FIRST_DAY + 34

# ROLLOUT_TEST_PROPERTY_EXAMPLES=2000 for a deeper search than the suite's 40.
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("ROLLOUT_TEST_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    database=None,  # write nothing outside the temporary folders
    suppress_health_check=[HealthCheck.too_slow],
)

Dependencies = dict[str, frozenset[str]]  # kind -> names


@dataclass(frozen=True)
class Registry:
    """What the landing files say: manifests files in load order, daily downloads."""

    manifest_files: tuple[dict[str, Dependencies], ...]
    downloads: dict[tuple[str, date], int]
    # Landing formats (docs/data-contracts.md): the numbers must not depend on them.
    manifest_formats: tuple[str, ...] = ("jsonl", "jsonl")
    downloads_format: str = "csv"

    @property
    def latest(self) -> dict[str, Dependencies]:
        """Each package's dependencies from the newest file holding it."""
        latest: dict[str, Dependencies] = {}
        for manifests in self.manifest_files:
            latest.update(manifests)
        return latest


# --- strategies ------------------------------------------------------------------------

dependency_sets = st.frozensets(st.sampled_from(POOL + UNKNOWN), max_size=5)
manifests = st.fixed_dictionaries({kind: dependency_sets for kind in KINDS})
# Small counts so that equal sums (ties) are common.
day_rows = st.dictionaries(st.sampled_from((*POOL, "ghost")), st.integers(0, 12), max_size=5)


@st.composite
def registries(draw: st.DrawFn) -> Registry:
    names = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=len(POOL), unique=True))
    # Some packages only in the older file, some only in the newer, some in both
    # (with different dependencies: the newer must win).
    where = {name: draw(st.sampled_from(("old", "old", "both", "new"))) for name in names}
    old = {name: draw(manifests) for name in names if where[name] in ("old", "both")}
    new = {name: draw(manifests) for name in names if where[name] in ("new", "both")}
    downloads: dict[tuple[str, date], int] = {}
    for offset in range(DAYS):
        day = FIRST_DAY + timedelta(days=offset)
        if draw(st.integers(0, 5)) == 0:
            continue  # no file that day: a gap
        for package, count in draw(day_rows).items():
            downloads[package, day] = count
    manifest_formats = (
        draw(st.sampled_from(("jsonl", "parquet"))),
        draw(st.sampled_from(("jsonl", "parquet"))),
    )
    downloads_format = draw(st.sampled_from(("csv", "parquet", "jsonl")))
    files = tuple(f for f in (old, new) if f)
    return Registry(files, downloads, manifest_formats, downloads_format)


windows_strategy = st.one_of(
    st.just(MetricsWindows()),
    st.integers(1, 10).flatmap(
        lambda weekly: st.builds(
            MetricsWindows,
            weekly_window_days=st.just(weekly),
            monthly_window_days=st.integers(weekly, 40),
        )
    ),
)
# From before the data starts (gaps at the start) to after it ends (gaps at the end).
as_of_days = st.integers(1, DAYS + 3).map(lambda offset: FIRST_DAY + timedelta(days=offset))


# --- landing files, warehouse ------------------------------------------------------------


def write_manifests(manifests_file: dict[str, Dependencies], path: Path, version: str) -> None:
    if path.suffix == ".parquet":
        maps = pa.map_(pa.string(), pa.string())
        columns: dict[str, Any] = {
            "name": list(manifests_file),
            "version": [version] * len(manifests_file),
        }
        for kind in KINDS:
            # An empty map is written as null for some names: the maps may be null.
            values = [
                [(d, "*") for d in sorted(deps[kind])] or (None if len(name) % 2 else [])
                for name, deps in manifests_file.items()
            ]
            columns[MANIFEST_KEYS[kind]] = pa.array(values, maps)
        columns["maintainers"] = [["someone"]] * len(manifests_file)
        pq.write_table(pa.table(columns), path)
        return
    with path.open("w") as handle:
        for name, dependencies in manifests_file.items():
            document: dict[str, Any] = {"name": name, "version": version}
            for kind, names in dependencies.items():
                if names:  # an empty map is left out: the maps are optional
                    document[MANIFEST_KEYS[kind]] = {d: "*" for d in sorted(names)}
            document["maintainers"] = ["someone"]
            handle.write(json.dumps(document) + "\n")


def write_downloads(downloads: dict[tuple[str, date], int], path: Path) -> None:
    rows = sorted(downloads.items())
    if path.suffix == ".parquet":
        table = pa.table(
            {
                "package": [p for (p, _), _ in rows],
                "day": pa.array([d for (_, d), _ in rows], pa.date32()),
                "downloads": pa.array([n for _, n in rows], pa.int64()),
            }
        )
        pq.write_table(table, path)
    elif path.suffix == ".jsonl":  # the downloads API's range format, a line a package
        with path.open("w") as handle:
            for package in sorted({p for (p, _), _ in rows}):
                days = [(d, n) for (p, d), n in rows if p == package]
                document = {
                    "package": package,
                    "start": days[0][0].isoformat(),
                    "end": days[-1][0].isoformat(),
                    "downloads": [{"day": d.isoformat(), "downloads": n} for d, n in days],
                }
                handle.write(json.dumps(document) + "\n")
    else:
        lines = ["package,day,downloads"]
        lines += [f"{p},{d.isoformat()},{n}" for (p, d), n in rows]
        path.write_text("\n".join(lines) + "\n")


def write_landing(registry: Registry, folder: Path) -> list[Path]:
    paths = []
    for number, manifests_file in enumerate(registry.manifest_files, start=1):
        suffix = registry.manifest_formats[number - 1]
        path = folder / f"manifests-{number}.{suffix}"
        write_manifests(manifests_file, path, f"{number}.0.0")
        paths.append(path)
    if registry.downloads:  # an empty file would be refused
        path = folder / f"downloads.{registry.downloads_format}"
        write_downloads(registry.downloads, path)
        paths.append(path)
    return paths


def load(con: duckdb.DuckDBPyConnection, registry: Registry, folder: Path) -> None:
    now = datetime.combine(FIRST_DAY + timedelta(days=DAYS + 5), time(0, 0))
    report = ingest(con, write_landing(registry, folder), quarantine_limit=0.0, now=now)
    assert report.rejected == [] and report.rows_quarantined == 0, [
        (f.path.name, f.status, f.message) for f in report.files
    ]


def stored_metrics(con: duckdb.DuckDBPyConnection, as_of: date) -> list[dict[str, Any]]:
    rows = con.execute(
        f"select {', '.join(METRIC_COLUMNS)} from package_metrics_daily where as_of = $as_of "
        "order by package",
        {"as_of": as_of},
    ).fetchall()
    return sorted(
        (dict(zip(METRIC_COLUMNS, row, strict=True)) for row in rows), key=lambda r: r["package"]
    )


# --- the model: the definitions, in plain Python ----------------------------------------


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def ranks(packages: Iterable[str], value: dict[str, int]) -> dict[str, int]:
    """Row numbers by value descending, then name ascending (code points)."""
    ordered = sorted(packages, key=lambda p: (-value[p], p))
    return {package: position for position, package in enumerate(ordered, start=1)}


def model_metrics(registry: Registry, as_of: date, windows: MetricsWindows) -> list[dict]:
    latest = registry.latest
    day_before = as_of - timedelta(days=1)
    weekly_days = set(days_between(as_of - timedelta(windows.weekly_window_days), day_before))
    monthly_days = set(days_between(as_of - timedelta(windows.monthly_window_days), day_before))

    def downloads(package: str, days: set[date]) -> int:
        return sum(n for (p, d), n in registry.downloads.items() if p == package and d in days)

    def dependents(package: str, kind: str) -> int:
        return sum(
            1 for other, deps in latest.items() if other != package and package in deps[kind]
        )

    weekly = {p: downloads(p, weekly_days) for p in latest}
    prod = {p: dependents(p, "prod") for p in latest}
    by_dependents = ranks(latest, prod)
    by_downloads = ranks(latest, weekly)
    return [
        {
            "package": p,
            "weekly_downloads": weekly[p],
            "monthly_downloads": downloads(p, monthly_days),
            "dependents": prod[p],
            "dev_dependents": dependents(p, "dev"),
            "peer_dependents": dependents(p, "peer"),
            "rank_by_dependents": by_dependents[p],
            "rank_by_downloads": by_downloads[p],
        }
        for p in sorted(latest)
    ]


def model_gaps(registry: Registry, as_of: date, windows: MetricsWindows) -> tuple[list[date], bool]:
    """(missing days of the monthly window, whether the weekly window is complete)."""
    loaded = {day for _, day in registry.downloads}
    monthly = days_between(as_of - timedelta(windows.monthly_window_days), as_of - timedelta(1))
    missing = [day for day in monthly if day not in loaded]
    weekly_start = as_of - timedelta(windows.weekly_window_days)
    return missing, not any(day >= weekly_start for day in missing)


def model_exclusions(registry: Registry) -> dict[str, int]:
    latest = registry.latest
    declared = [(p, d) for p, deps in latest.items() for kind in KINDS for d in deps[kind]]
    unknown = [d for p, d in declared if d != p and d not in latest]
    return {
        "self_dependencies": sum(1 for p, d in declared if d == p),
        "unknown_dependencies": len(unknown),
        "unknown_packages": len(set(unknown)),
    }


def report_exclusions(report: MetricsReport) -> dict[str, int]:
    return {
        "self_dependencies": report.self_dependencies,
        "unknown_dependencies": report.unknown_dependencies,
        "unknown_packages": report.unknown_packages,
    }


def model_qualified(metrics: list[dict[str, Any]], rule: CohortRule) -> list[dict[str, Any]]:
    qualified = []
    for row in metrics:
        rank, weekly, dependents = (
            row["rank_by_dependents"],
            row["weekly_downloads"],
            row["dependents"],
        )
        reasons = []
        # A package with no dependents is not among the top by them, whatever its rank.
        if rule.top_by_dependents is not None and rank <= rule.top_by_dependents and dependents:
            reasons.append(
                f"top {rule.top_by_dependents} by dependents (rank {rank}, {dependents} dependents)"
            )
        if rule.weekly_downloads_gt is not None and weekly > rule.weekly_downloads_gt:
            reasons.append(f"{weekly} weekly downloads (more than {rule.weekly_downloads_gt})")
        if rule.dependents_gte is not None and dependents >= rule.dependents_gte:
            reasons.append(f"{dependents} dependents (at least {rule.dependents_gte})")
        if reasons:
            qualified.append((row["package"], reasons))
    # One entry a lower-cased name: Foo and foo qualifying together are one, named by
    # the first name, each reason by its own name.
    entries: dict[str, list[tuple[str, list[str]]]] = {}
    for package, reasons in sorted(qualified):
        entries.setdefault(package.lower(), []).append((package, reasons))
    return [
        {
            "package": names[0][0],
            "package_key": key,
            "reasons": names[0][1]
            if len(names) == 1
            else [f"{package}: {reason}" for package, reasons in names for reason in reasons],
        }
        for key, names in entries.items()
    ]


# --- properties ------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    registry=registries(),
    as_ofs=st.lists(as_of_days, min_size=1, max_size=2, unique=True),
    windows=windows_strategy,
    rerun=st.booleans(),
)
def test_metrics_equal_the_definitions(
    registry: Registry, as_ofs: list[date], windows: MetricsWindows, rerun: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        con = warehouse.connect(Path(folder) / "w.duckdb")
        try:
            load(con, registry, Path(folder))
            reports = {as_of: compute_metrics(con, as_of, windows) for as_of in as_ofs}
            if rerun:  # a second run for a day replaces its rows, never adds to them
                reports[as_ofs[0]] = compute_metrics(con, as_ofs[0], windows)
            for as_of, report in reports.items():
                expected = model_metrics(registry, as_of, windows)
                assert_same_rows(f"metrics on {as_of}", expected, stored_metrics(con, as_of))
                assert report.packages == len(expected)
                missing, weekly_complete = model_gaps(registry, as_of, windows)
                assert report.missing_days == missing
                assert report.weekly_window_complete == weekly_complete
                assert report_exclusions(report) == model_exclusions(registry)
        finally:
            con.close()


@st.composite
def rules(draw: st.DrawFn, metrics: list[dict[str, Any]]) -> CohortRule:
    """Thresholds at, just under and just over the values present, so the strict and
    non-strict comparisons are exercised on every example."""
    weekly = {row["weekly_downloads"] for row in metrics}
    dependents = {row["dependents"] for row in metrics}
    weekly_gt = sorted({w + delta for w in weekly for delta in (-1, 0, 1) if w + delta >= 0})
    dependents_gte = sorted({d + delta for d in dependents for delta in (0, 1) if d + delta >= 1})
    top = draw(st.none() | st.integers(1, len(POOL) + 1))
    gt = draw(st.none() | st.sampled_from(weekly_gt))
    gte = draw(st.none() | st.sampled_from(dependents_gte))
    if top is None and gt is None and gte is None:
        top = draw(st.integers(1, len(POOL) + 1))
    return CohortRule(top_by_dependents=top, weekly_downloads_gt=gt, dependents_gte=gte)


@PROPERTY_SETTINGS
@given(registry=registries(), as_of=as_of_days, data=st.data())
def test_qualified_packages_are_the_rule_applied_to_the_metrics(
    registry: Registry, as_of: date, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        con = warehouse.connect(Path(folder) / "w.duckdb")
        try:
            load(con, registry, Path(folder))
            compute_metrics(con, as_of, MetricsWindows())
            # Another day's metrics in the table must not leak into this day's cohort.
            compute_metrics(con, as_of + timedelta(days=1), MetricsWindows())
            metrics = stored_metrics(con, as_of)
            for _ in range(3):
                rule = data.draw(rules(metrics), label="rule")
                rows = con.execute(
                    warehouse.render("marts/cohort_qualified_packages"),
                    rule_parameters(rule, as_of),
                ).fetchall()
                actual = sorted(
                    (
                        {"package": package, "package_key": key, "reasons": list(reasons)}
                        for package, key, reasons in rows
                    ),
                    key=lambda r: r["package"],
                )
                assert_same_rows(
                    f"qualified under {rule!r}", model_qualified(metrics, rule), actual
                )
        finally:
            con.close()


@settings(max_examples=15, deadline=None, database=None)
@given(registry=registries(), as_of=as_of_days, windows=windows_strategy)
def test_metrics_after_more_manifests_arrive_on_the_same_connection(
    registry: Registry, as_of: date, windows: MetricsWindows
) -> None:
    """The dependents a connection keeps between days (rollout.metrics) are counted
    again once another manifests file is loaded: the day's metrics are then those of
    every file, as a fresh connection computes them."""
    first, *later = registry.manifest_files
    with tempfile.TemporaryDirectory() as folder:
        con = warehouse.connect(Path(folder) / "w.duckdb")
        try:
            (Path(folder) / "first").mkdir()
            only_first = Registry(
                (first,),
                registry.downloads,
                registry.manifest_formats[:1],
                registry.downloads_format,
            )
            load(con, only_first, Path(folder) / "first")
            compute_metrics(con, as_of, windows)
            assert_same_rows(
                "before",
                model_metrics(Registry((first,), registry.downloads), as_of, windows),
                stored_metrics(con, as_of),
            )
            if later:
                second = Path(folder) / "second"
                second.mkdir()
                write_manifests(later[0], second / "manifests-2.jsonl", "2.0.0")
                now = datetime.combine(FIRST_DAY + timedelta(days=DAYS + 5), time(0, 0))
                ingest(con, [second / "manifests-2.jsonl"], quarantine_limit=0.0, now=now)
            report = compute_metrics(con, as_of, windows)
            assert_same_rows(
                "after", model_metrics(registry, as_of, windows), stored_metrics(con, as_of)
            )
            assert report_exclusions(report) == model_exclusions(registry)
        finally:
            con.close()
