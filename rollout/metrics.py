"""Package reach for one as-of day: weekly and 30-day downloads, dependents, ranks.

``compute_metrics`` runs the ``sql/marts/package_metrics`` model and stores the day's
rows in ``package_metrics_daily`` (replacing any earlier run for that day), with a
``metrics_runs`` row recording what the numbers rest on: days of download data that
are missing, and the dependencies left out of the counts.

The download windows are kept between runs (``download_windows``): the next day's are
the kept ones moved by what entered and left them and by the files loaded since, not a
sum over the whole window again. So are the dependents by name (``dependency_counts``):
reused while no manifests file comes, moved by the packages whose latest manifest
changed when one does. So are the latest manifests themselves
(rollout.warehouse.manifests). ``rebuild=True`` computes all three whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, ClassVar

import duckdb

from rollout import warehouse
from rollout.core.clock import require_data_day
from rollout.core.plan import MetricsWindows
from rollout.warehouse import manifests


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

    LABELS: ClassVar[dict[str, str]] = {
        "missing_days": "missing download days",
        "self_dependencies_ignored": "self-dependencies ignored",
        "dependencies_on_unknown_packages": "dependencies on unknown packages ignored",
        "unknown_packages": "unknown packages depended on",
    }

    @property
    def missing(self) -> str:
        """The missing download days in words: "none", or the days."""
        return ", ".join(str(d) for d in self.missing_days) or "none"

    def summary(self) -> dict[str, Any]:
        """What the day's metrics rest on (rollout.core.output.Presentable)."""
        return {
            "as_of": self.as_of,
            "packages": self.packages,
            "weekly_window_complete": self.weekly_window_complete,
            # The days, a list (JSON gives ISO dates; a table and Markdown say "none").
            "missing_days": list(self.missing_days),
            "self_dependencies_ignored": self.self_dependencies,
            "dependencies_on_unknown_packages": self.unknown_dependencies,
            "unknown_packages": self.unknown_packages,
            "seconds": round(self.seconds, 2),
        }


def window_parameters(as_of: date, windows: MetricsWindows) -> dict[str, object]:
    return {
        "as_of": as_of,
        "weekly_days": windows.weekly_window_days,
        "monthly_days": windows.monthly_window_days,
    }


def compute_metrics(
    con: duckdb.DuckDBPyConnection, as_of: date, windows: MetricsWindows, *, rebuild: bool = False
) -> MetricsReport:
    """``rebuild``: sum the download windows over all their days and count the
    dependents over every latest manifest, ignoring the kept ones (the full path, and
    the check of the incremental one)."""
    require_data_day(as_of)
    started = time.perf_counter()
    # Every model below reads the latest manifests, most of them more than once.
    with manifests.latest_manifests(con, rebuild=rebuild):
        return _compute(con, as_of, windows, started, rebuild)


Exclusions = tuple[int, int, int]  # self-dependencies, unknown dependencies, unknown packages


def _dependency_counts(con: duckdb.DuckDBPyConnection, counted: int, rebuild: bool) -> Exclusions:
    """Bring ``dependency_counts``, which the mart and the exclusions read, to the
    manifests loaded now, the files up to ``counted`` (inside the caller's
    transaction): kept as they are when no manifests file came since they were
    counted, else moved by the packages whose latest manifest changed, or counted
    whole (nothing kept, or ``rebuild``). Returns what the counts leave out of the
    metrics, kept with them: it changes only when they do, and moves with them."""
    kept = (
        None
        if rebuild
        else warehouse.one(
            con,
            "select counted_file_id, self_dependencies, unknown_dependencies, unknown_packages "
            "from dependency_counts_state",
        )
    )
    exclusions: Exclusions | None = None
    if kept is not None:
        counted_before, *excluded = kept
        # (A state kept before the exclusions were has none: counted whole below.)
        known = None if None in excluded else (excluded[0], excluded[1], excluded[2])
        if manifests.loaded_since(con, counted_before):
            exclusions = _move_dependency_counts(con, counted_before, known)
        elif known is not None:
            return known
    else:
        # The sums are HUGEINT; the kept table holds BIGINT, as the mart.
        counts = warehouse.render("intermediate/int_dependency_counts")
        with warehouse.strings_uncompressed(con):
            con.execute(
                "create or replace table dependency_counts as select dependency, "
                "cast(dependents as bigint) as dependents, "
                "cast(dev_dependents as bigint) as dev_dependents, "
                "cast(peer_dependents as bigint) as peer_dependents, "
                f"cast(edges as bigint) as edges from ({counts}) where edges <> 0"
            )
    if exclusions is None:
        whole = warehouse.one(con, warehouse.render("intermediate/int_dependency_exclusions"))
        exclusions = whole or (0, 0, 0)
    self_deps, unknown_deps, unknown_packages = exclusions
    con.execute("delete from dependency_counts_state")
    con.execute(
        "insert into dependency_counts_state by name select $counted as counted_file_id, "
        "$self_deps as self_dependencies, $unknown_deps as unknown_dependencies, "
        "$unknown_packages as unknown_packages",
        {
            "counted": counted,
            "self_deps": self_deps,
            "unknown_deps": unknown_deps,
            "unknown_packages": unknown_packages,
        },
    )
    return self_deps, unknown_deps, unknown_packages


def _move_dependency_counts(
    con: duckdb.DuckDBPyConnection, counted_before: int, excluded: Exclusions | None
) -> Exclusions | None:
    """Add to the kept counts the changes the manifests loaded since file
    ``counted_before`` bring (``int_dependency_counts_step``), in place: a manifests
    file moves the counts of some thousand names of millions, and rewriting the whole
    table cost more than computing the changes. Returns the kept ``excluded`` moved by
    the same changes (None when nothing was kept)."""
    step = warehouse.render("intermediate/int_dependency_counts_step")
    con.execute(
        f"create or replace temp table dependency_changes as {step}",
        {"counted_file_id": counted_before},
    )
    moved: Exclusions | None = None
    if excluded is not None:
        # Read against the counts before they take the changes.
        row = warehouse.one(
            con,
            warehouse.render("intermediate/int_dependency_exclusions_step"),
            {
                "counted_file_id": counted_before,
                "unknown_dependencies": excluded[1],
                "unknown_packages": excluded[2],
            },
        ) or (0, 0, 0)  # (an aggregate: always a row)
        moved = (int(row[0]), int(row[1]), int(row[2]))
    con.execute(
        """
        update dependency_counts set
            dependents = dependency_counts.dependents + changes.dependents,
            dev_dependents = dependency_counts.dev_dependents + changes.dev_dependents,
            peer_dependents = dependency_counts.peer_dependents + changes.peer_dependents,
            edges = dependency_counts.edges + changes.edges
        from dependency_changes as changes
        where changes.dependency = dependency_counts.dependency
        """
    )
    # Names depended on for the first time; then those no longer depended on go, as
    # the full model has only names with edges.
    con.execute(
        "insert into dependency_counts select dependency, dependents, dev_dependents, "
        "peer_dependents, edges from dependency_changes "
        "anti join dependency_counts using (dependency)"
    )
    con.execute(
        "delete from dependency_counts where edges = 0 "
        "and dependency in (select dependency from dependency_changes)"
    )
    con.execute("drop table dependency_changes")
    return moved


# The kept windows, when they can be moved to $as_of: the same window lengths, a day
# not after it and at most a monthly window before (further back, summing the window
# whole reads no more).
_KEPT = """
select as_of, counted_file_id from download_windows_state
where weekly_days = $weekly_days and monthly_days = $monthly_days
  and as_of <= $as_of and $as_of - as_of <= $monthly_days
"""


def _download_windows(
    con: duckdb.DuckDBPyConnection, params: dict[str, object], counted: int, rebuild: bool
) -> None:
    """Bring ``download_windows``, which the mart reads, to ``params``' day over the
    files up to ``counted`` (inside the caller's transaction)."""
    kept = None if rebuild else warehouse.one(con, _KEPT, params)
    if kept is None:
        windows = warehouse.render("intermediate/int_download_windows")
        step_params: dict[str, object] = params
    else:
        previous, counted_before = kept
        windows = warehouse.render("intermediate/int_download_windows_step")
        step_params = {**params, "previous": previous, "counted_file_id": counted_before}
    # In one statement, though the step reads the table it replaces: DuckDB computes
    # the query before it swaps the table (a copy through a temp table cost 0.3 s more
    # at npm scale). The sums are HUGEINT; the kept table holds BIGINT, as the mart.
    # Only packages with a non-zero sum are kept, whichever way: the mart reads a
    # missing row as zeros, and the step drops the packages whose windows emptied.
    # Its names uncompressed: rewritten whole every run (warehouse.strings_uncompressed).
    with warehouse.strings_uncompressed(con):
        con.execute(
            "create or replace table download_windows as select package, "
            "cast(weekly_downloads as bigint) as weekly_downloads, "
            f"cast(monthly_downloads as bigint) as monthly_downloads from ({windows}) "
            "where monthly_downloads <> 0 or coalesce(weekly_downloads, 0) <> 0",
            step_params,
        )
    con.execute("delete from download_windows_state")
    con.execute(
        "insert into download_windows_state values ($as_of, $weekly_days, $monthly_days, $counted)",
        {**params, "counted": counted},
    )


def _compute(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    windows: MetricsWindows,
    started: float,
    rebuild: bool,
) -> MetricsReport:
    params = window_parameters(as_of, windows)
    gaps = con.execute(warehouse.render("intermediate/int_download_gaps"), params).fetchall()
    missing = [row[0] for row in gaps]
    weekly_complete = not any(row[1] for row in gaps)
    with warehouse.transaction(con):
        # What the kept counts and windows will count: every file loaded now.
        counted = warehouse.scalar(con, "select coalesce(max(file_id), 0) from ingested_files")
        self_deps, unknown_deps, unknown_packages = _dependency_counts(con, counted, rebuild)
        con.execute("delete from package_metrics_daily where as_of = $as_of", {"as_of": as_of})
        _download_windows(con, params, counted, rebuild)
        model = warehouse.render("marts/package_metrics")
        con.execute(f"insert into package_metrics_daily by name ({model})", {"as_of": as_of})
        packages = warehouse.scalar(
            con, "select count(*) from package_metrics_daily where as_of = $as_of", {"as_of": as_of}
        )
        seconds = time.perf_counter() - started
        con.execute(
            """
            insert or replace into metrics_runs (as_of, computed_at, packages, missing_days,
                weekly_window_complete, self_dependencies, unknown_dependencies,
                unknown_packages, seconds, weekly_window_days, monthly_window_days)
            values ($as_of, $computed_at, $packages, $missing, $complete, $self_deps,
                $unknown_deps, $unknown_packages, $seconds, $weekly_days, $monthly_days)
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
                "weekly_days": windows.weekly_window_days,
                "monthly_days": windows.monthly_window_days,
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
