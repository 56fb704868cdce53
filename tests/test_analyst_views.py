"""The views docs/warehouse.md documents for analysts: each exists, described, with its
documented columns; and the "latest" ones show the latest day, whatever order the
days were built in."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from rollout.core.plan import MetricsWindows
from rollout.metrics import compute_metrics
from rollout.warehouse.ingest import ingest

from .sql.golden_harness import GOLDEN_DIR, load_input

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "warehouse.md"


def documented_views() -> dict[str, set[str]]:
    """{view: the columns its row in "Views to start from" names in backquotes}."""
    section = DOC.read_text().split("## Views to start from", 1)[1].split("\n## ", 1)[0]
    views: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        views[cells[0].strip("`")] = set(re.findall(r"`([a-z_]+)`", cells[2]))
    return views


def test_the_doc_lists_the_views() -> None:
    views = documented_views()
    assert set(views) == {
        "package_metrics",
        "cohort_accounts",
        "cohort_packages",
        "cohort_membership_history",
        "cohort_latest_builds",
    }
    assert "rank_by_downloads" in views["package_metrics"]
    assert "via" in views["cohort_accounts"]


@pytest.mark.parametrize(("view", "columns"), sorted(documented_views().items()))
def test_every_documented_view_exists_with_its_documented_columns(
    con: duckdb.DuckDBPyConnection, view: str, columns: set[str]
) -> None:
    found = con.execute(
        "select comment from duckdb_views() where not internal and view_name = $view",
        {"view": view},
    ).fetchall()
    assert found, f"docs/warehouse.md documents a view {view} the warehouse lacks"
    assert found[0][0], f"{view} has no comment: the doc says duckdb_views() describes it"
    actual = {d[0] for d in con.execute(f"select * from {view} limit 0").description}
    assert columns <= actual, f"{view} lacks the documented columns {columns - actual}"


def test_the_views_listed_by_the_doc_s_query_are_the_documented_ones(
    con: duckdb.DuckDBPyConnection,
) -> None:
    listed = {
        name
        for name, comment in con.execute(
            "select view_name, comment from duckdb_views() where not internal"
        ).fetchall()
        if comment
    }
    assert set(documented_views()) <= listed


def test_every_view_the_doc_s_query_lists_is_documented_and_described(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """The doc says its query lists the views with their descriptions: a view it lists
    bare (cohort_latest_builds was), or that the doc never names, is an analyst's
    puzzle."""
    doc = DOC.read_text()
    for name, comment in con.execute(
        "select view_name, comment from duckdb_views() where not internal"
    ).fetchall():
        assert comment, f"{name} has no comment"
        assert f"`{name}`" in doc, f"docs/warehouse.md does not name the view {name}"


# --- the latest day, across several builds --------------------------------------------------

DAYS = [date(2022, 1, 1) + timedelta(days=n) for n in range(20)]


def _landing(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    manifests = folder / "manifests.jsonl"
    manifests.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"name": "alpha", "version": "1.0.0", "maintainers": ["al"]},
                {"name": "beta", "version": "1.0.0", "maintainers": ["bo"]},
                {
                    "name": "gamma",
                    "version": "1.0.0",
                    "maintainers": ["gi"],
                    "dependencies": {"alpha": "^1.0.0"},
                },
            ]
        )
        + "\n"
    )
    downloads = folder / "downloads.csv"
    # alpha grows by day, beta shrinks: every day's figures differ.
    lines = ["package,day,downloads"]
    for n, day in enumerate(DAYS):
        lines += [f"alpha,{day},{10 * (n + 1)}", f"beta,{day},{1000 - 10 * n}", f"gamma,{day},1"]
    downloads.write_text("\n".join(lines) + "\n")
    return [manifests, downloads]


def test_package_metrics_is_the_latest_day_whatever_the_build_order(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    report = ingest(
        con, _landing(tmp_path / "landing"), quarantine_limit=0.0, now=datetime(2022, 2, 1)
    )
    assert report.rejected == [] and report.rows_quarantined == 0
    # Built out of order: a back-fill of an earlier day after the latest one.
    built = [date(2022, 1, 12), date(2022, 1, 19), date(2022, 1, 9), date(2022, 1, 15)]
    for day in built:
        compute_metrics(con, day, MetricsWindows())
    latest = max(built)
    columns = "package, weekly_downloads, monthly_downloads, dependents, rank_by_downloads"
    view = con.execute(f"select as_of, {columns} from package_metrics order by package").fetchall()
    history = con.execute(
        f"select as_of, {columns} from package_metrics_daily where as_of = $day order by package",
        {"day": latest},
    ).fetchall()
    assert view == history
    # By hand, 2022-01-19: the week 01-12..01-18 is days 11..17 (0-based).
    assert [(r[0], r[1], r[2]) for r in view] == [
        (latest, "alpha", sum(10 * (n + 1) for n in range(11, 18))),
        (latest, "beta", sum(1000 - 10 * n for n in range(11, 18))),
        (latest, "gamma", 7),
    ]
    earlier = con.execute(
        "select weekly_downloads from package_metrics_daily where as_of = '2022-01-15' "
        "and package = 'alpha'"
    ).fetchall()
    assert earlier and earlier[0][0] != view[0][2]  # the days do differ


def test_cohort_views_are_each_cohort_s_latest_day(con: duckdb.DuckDBPyConnection) -> None:
    load_input(
        con,
        GOLDEN_DIR / "cohort_diff" / "entered_and_left" / "inputs" / "cohort_account_snapshots.csv",
    )
    # high-impact's last build is a day before top-100's: each cohort its own latest.
    con.execute(
        "delete from cohort_account_snapshots where cohort = 'high-impact' and as_of = '2022-01-24'"
    )
    for cohort in ("top-100", "high-impact"):
        con.execute(
            "insert into cohort_package_snapshots select distinct as_of, cohort, "
            "unnest(packages), as_of, ['rank'], true from cohort_account_snapshots "
            "where cohort = $cohort",
            {"cohort": cohort},
        )
    accounts = con.execute(
        "select cohort, as_of, username from cohort_accounts order by cohort, username"
    ).fetchall()
    assert accounts == [
        ("high-impact", date(2022, 1, 17), "bob"),
        ("high-impact", date(2022, 1, 17), "cat"),
        ("top-100", date(2022, 1, 24), "anna"),
        ("top-100", date(2022, 1, 24), "bob"),
        ("top-100", date(2022, 1, 24), "eve"),
        ("top-100", date(2022, 1, 24), "gus"),
    ]
    packages = con.execute(
        "select cohort, as_of, package from cohort_packages order by cohort, package"
    ).fetchall()
    assert packages == [
        ("high-impact", date(2022, 1, 17), "react"),
        ("high-impact", date(2022, 1, 17), "vue"),
        ("top-100", date(2022, 1, 24), "chalk"),
        ("top-100", date(2022, 1, 24), "left-pad"),
        ("top-100", date(2022, 1, 24), "lodash"),
        ("top-100", date(2022, 1, 24), "lodash.get"),
        ("top-100", date(2022, 1, 24), "react"),
    ]
    history = con.execute("select count(*), count(distinct as_of) from cohort_membership_history")
    assert history.fetchall() == [(20, 4)]


def test_a_cohort_whose_latest_build_has_no_accounts_shows_none(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """high-impact built on 01-24 with its packages but no account (their maintainers'
    accounts gone, say): its latest membership is nobody, not 01-17's bob and cat, who
    are no longer in it."""
    load_input(
        con,
        GOLDEN_DIR / "cohort_diff" / "entered_and_left" / "inputs" / "cohort_account_snapshots.csv",
    )
    con.execute(
        "insert into cohort_package_snapshots select distinct as_of, cohort, "
        "unnest(packages), as_of, ['rank'], true from cohort_account_snapshots"
    )
    con.execute(
        "delete from cohort_account_snapshots where cohort = 'high-impact' and as_of = '2022-01-24'"
    )
    accounts = con.execute(
        "select distinct cohort, as_of from cohort_accounts order by cohort"
    ).fetchall()
    assert accounts == [("top-100", date(2022, 1, 24))]
    packages = con.execute(
        "select distinct cohort, as_of from cohort_packages order by cohort"
    ).fetchall()
    assert packages == [("high-impact", date(2022, 1, 24)), ("top-100", date(2022, 1, 24))]


def test_package_metrics_says_when_its_download_windows_have_gaps(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A day computed past the data counts its missing days as zeros: the view says
    which windows are incomplete, so those zeros do not read as packages nobody
    downloaded."""
    report = ingest(
        con, _landing(tmp_path / "landing"), quarantine_limit=0.0, now=datetime(2022, 3, 1)
    )
    assert report.rejected == []
    last = max(DAYS)
    shown = "select distinct weekly_window_complete, monthly_window_complete from package_metrics"
    # The 20 days of data: the week before the day after them is whole, its month not.
    compute_metrics(con, last + timedelta(days=1), MetricsWindows(monthly_window_days=20))
    assert con.execute(shown).fetchall() == [(True, True)]
    compute_metrics(con, last + timedelta(days=1), MetricsWindows())
    assert con.execute(shown).fetchall() == [(True, False)]

    # A week after the data: the weekly window is all gap, the monthly in part.
    compute_metrics(con, last + timedelta(days=8), MetricsWindows())
    rows = con.execute(
        "select distinct weekly_downloads, weekly_window_complete, monthly_window_complete "
        "from package_metrics"
    ).fetchall()
    assert rows == [(0, False, False)]
