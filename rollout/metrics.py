"""Package reach for one as-of day: weekly and 30-day downloads, dependents, ranks.

``compute_metrics`` runs the ``sql/marts/package_metrics`` model and stores the day's
rows in ``package_metrics_daily`` (replacing any earlier run for that day), with a
``metrics_runs`` row recording what the numbers rest on: days of download data that
are missing, and the dependencies left out of the counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime

import duckdb

from rollout import warehouse
from rollout.plan import MetricsWindows


@dataclass(frozen=True)
class MetricsReport:
    as_of: date
    packages: int
    missing_days: list[date]
    weekly_window_complete: bool
    self_dependencies: int
    unknown_dependencies: int
    unknown_packages: int
    seconds: float


def window_parameters(as_of: date, windows: MetricsWindows) -> dict[str, object]:
    return {
        "as_of": as_of,
        "weekly_days": windows.weekly_window_days,
        "monthly_days": windows.monthly_window_days,
    }


def compute_metrics(
    con: duckdb.DuckDBPyConnection, as_of: date, windows: MetricsWindows
) -> MetricsReport:
    started = time.perf_counter()
    # Every model below reads the latest manifests, most of them more than once.
    latest = ("package", "self_dependency_kinds", "file_id", "ordinal")
    with warehouse.materialized(con, "stg_manifests", latest):
        # Read twice (package_metrics and the exclusions): computed once, as a temp table.
        con.execute(
            "create or replace temp table int_dependency_counts as "
            + warehouse.render("intermediate/int_dependency_counts")
        )
        try:
            return _compute(con, as_of, windows, started)
        finally:
            con.execute("drop table if exists int_dependency_counts")


def _compute(
    con: duckdb.DuckDBPyConnection, as_of: date, windows: MetricsWindows, started: float
) -> MetricsReport:
    params = window_parameters(as_of, windows)
    gaps = con.execute(warehouse.render("intermediate/int_download_gaps"), params).fetchall()
    missing = [row[0] for row in gaps]
    weekly_complete = not any(row[1] for row in gaps)
    exclusions = warehouse.one(con, warehouse.render("intermediate/int_dependency_exclusions"))
    self_deps, unknown_deps, unknown_packages = exclusions or (0, 0, 0)
    with warehouse.transaction(con):
        con.execute("delete from package_metrics_daily where as_of = $as_of", {"as_of": as_of})
        model = warehouse.render("marts/package_metrics")
        con.execute(f"insert into package_metrics_daily by name ({model})", params)
        packages = warehouse.scalar(
            con, "select count(*) from package_metrics_daily where as_of = $as_of", {"as_of": as_of}
        )
        seconds = time.perf_counter() - started
        con.execute(
            """
            insert or replace into metrics_runs values ($as_of, $computed_at, $packages,
                $missing, $complete, $self_deps, $unknown_deps, $unknown_packages, $seconds)
            """,
            {
                "as_of": as_of,
                "computed_at": datetime.now(UTC).replace(tzinfo=None),
                "packages": packages,
                "missing": missing,
                "complete": weekly_complete,
                "self_deps": self_deps,
                "unknown_deps": unknown_deps,
                "unknown_packages": unknown_packages,
                "seconds": seconds,
            },
        )
    return MetricsReport(
        as_of=as_of,
        packages=packages,
        missing_days=missing,
        weekly_window_complete=weekly_complete,
        self_dependencies=self_deps,
        unknown_dependencies=unknown_deps,
        unknown_packages=unknown_packages,
        seconds=seconds,
    )
