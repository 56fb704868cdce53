"""`rollout cohorts diff D1 D2 [--cohort C]` on the snapshots of the golden case
tests/sql/golden/cohort_diff/entered_and_left (the model itself: tests/sql/test_golden.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from rollout import warehouse
from rollout.cli import app

from .sql.golden_harness import GOLDEN_DIR, load_input

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOTS = (
    GOLDEN_DIR / "cohort_diff" / "entered_and_left" / "inputs" / "cohort_account_snapshots.csv"
)


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _built(rollout_home: Path) -> None:
    with warehouse.open_warehouse(rollout_home / "warehouse.duckdb") as con:
        load_input(con, SNAPSHOTS)


def test_diff_lists_who_entered_and_who_left_through_which_packages(rollout_home: Path) -> None:
    _built(rollout_home)
    result = run("cohorts", "diff", "2022-01-03", "2022-01-17", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [
        {
            "change": "entered",
            "cohort": "high-impact",
            "username": "cat",
            "tfa_status": "totp",
            "packages": ["vue"],
        },
        {
            "change": "left",
            "cohort": "high-impact",
            "username": "fay",
            "tfa_status": "none",
            "packages": ["express"],
        },
        {
            "change": "entered",
            "cohort": "top-100",
            "username": "eve",
            "tfa_status": "none",
            "packages": ["lodash", "lodash.get"],
        },
        {
            "change": "left",
            "cohort": "top-100",
            "username": "cat",
            "tfa_status": "none",
            "packages": ["vue", "vuex"],
        },
    ]
    only = run("cohorts", "diff", "2022-01-03", "2022-01-17", "--cohort", "top-100", "-f", "json")
    assert only.exit_code == 0, only.stderr
    assert [(r["change"], r["username"]) for r in json.loads(only.stdout)] == [
        ("entered", "eve"),
        ("left", "cat"),
    ]
    csv_lines = run("cohorts", "diff", "2022-01-03", "2022-01-17", "-f", "csv").stdout.splitlines()
    assert csv_lines[0] == "change,cohort,username,tfa_status,packages"
    # The packages one cell, a JSON array: a package named "a, b" would read as two.
    assert csv_lines[3] == 'entered,top-100,eve,none,"[""lodash"", ""lodash.get""]"'
    # Backwards, entered and left swap.
    back = json.loads(run("cohorts", "diff", "2022-01-17", "2022-01-03", "-f", "json").stdout)
    assert {(r["change"], r["cohort"], r["username"]) for r in back} == {
        ("left", "high-impact", "cat"),
        ("entered", "high-impact", "fay"),
        ("left", "top-100", "eve"),
        ("entered", "top-100", "cat"),
    }


def test_diff_refuses_days_without_a_build_and_unknown_cohorts(rollout_home: Path) -> None:
    _built(rollout_home)
    # 2022-01-04 was never built: not "everyone entered on 01-17".
    unbuilt = run("cohorts", "diff", "2022-01-04", "2022-01-17", "-f", "json")
    assert unbuilt.exit_code == 2
    assert "no cohorts were built for 2022-01-04" in unbuilt.stderr and unbuilt.stdout == ""
    typo = run("cohorts", "diff", "2022-01-03", "2022-01-17", "--cohort", "top-10")
    assert typo.exit_code == 2 and "no cohort 'top-10'" in typo.stderr
    assert run("cohorts", "diff", "2022-01-03", "yesterday").exit_code == 2


def _only_top_100_built_on(rollout_home: Path, day: str) -> None:
    """A build of top-100 alone on ``day`` (`cohorts build --cohort top-100`)."""
    with warehouse.open_warehouse(rollout_home / "warehouse.duckdb") as con:
        con.execute(
            "insert into cohort_account_snapshots select $day, * exclude (as_of) "
            "from cohort_account_snapshots where as_of = '2022-01-17' and cohort = 'top-100'",
            {"day": day},
        )


def _high_impact_fixed_early(rollout_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference plan with high-impact fixed from 2022-01-03, as top-100 is: the
    golden case's snapshots have it built in January."""
    text = (ROOT / "plans" / "npm-2022.yaml").read_text()
    assert "cohort_as_of: 2022-03-14" in text
    plan = rollout_home.parent / "plan.yaml"
    plan.write_text(text.replace("cohort_as_of: 2022-03-14", "cohort_as_of: 2022-01-03"))
    monkeypatch.setenv("ROLLOUT_PLAN", str(plan))


def test_a_day_only_another_cohort_was_built_is_no_day_of_this_one(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """high-impact's 70 accounts all read as "left" on a day only top-100 was built."""
    _high_impact_fixed_early(rollout_home, monkeypatch)
    _built(rollout_home)
    _only_top_100_built_on(rollout_home, "2022-01-18")
    other = run("cohorts", "diff", "2022-01-17", "2022-01-18", "--cohort", "high-impact")
    assert other.exit_code == 2 and other.stdout == ""
    assert "cohort high-impact was not built for 2022-01-18" in " ".join(other.stderr.split())
    same = run("cohorts", "diff", "2022-01-17", "2022-01-18", "--cohort", "top-100", "-f", "json")
    assert same.exit_code == 0 and json.loads(same.stdout) == []


def test_every_cohort_s_diff_needs_each_cohort_built_on_both_days(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --cohort the diff is of every cohort: one built on only one of the days
    (a `cohorts build --cohort top-100` on 01-18) is not "everyone left" of it; the day
    it lacks is named, as for --cohort."""
    _high_impact_fixed_early(rollout_home, monkeypatch)
    _built(rollout_home)
    _only_top_100_built_on(rollout_home, "2022-01-18")
    every = run("cohorts", "diff", "2022-01-17", "2022-01-18", "-f", "json")
    assert every.exit_code == 2 and every.stdout == ""
    assert "cohort high-impact was not built for 2022-01-18" in " ".join(every.stderr.split())


def test_a_day_before_the_cohort_is_fixed_is_said_so(rollout_home: Path) -> None:
    """high-impact is fixed from 2022-03-14 in the reference plan: no build can have a
    day before it, and "run cohorts build for it first" would send the user to a build
    that refuses."""
    _built(rollout_home)
    early = run("cohorts", "diff", "2022-01-04", "2022-01-17", "--cohort", "high-impact")
    assert early.exit_code == 2 and early.stdout == ""
    assert (
        "cohort high-impact is fixed from 2022-03-14 (phase high-impact's cohort_as_of): "
        "it has no build for 2022-01-04; pick days from then on"
    ) in " ".join(early.stderr.split())


def test_show_reads_the_cohorts_own_latest_day_and_refuses_a_day_it_was_not_built(
    rollout_home: Path,
) -> None:
    _built(rollout_home)
    _only_top_100_built_on(rollout_home, "2022-01-18")
    latest = run("cohorts", "show", "high-impact", "-f", "json")
    assert latest.exit_code == 0, latest.stderr
    assert json.loads(latest.stdout)  # 2022-01-17's, not an empty 2022-01-18
    unbuilt = run("cohorts", "show", "high-impact", "--as-of", "2022-01-18")
    assert unbuilt.exit_code == 2
    assert "no build of cohort high-impact for 2022-01-18" in " ".join(unbuilt.stderr.split())
    both = run("cohorts", "show", "top-100", "--packages", "--without-2fa")
    assert both.exit_code == 2 and "give one" in both.stderr


def test_show_reads_a_latest_build_without_accounts_as_none(rollout_home: Path) -> None:
    """high-impact built on 01-31 with its packages and no account: its latest accounts
    are none (the build before's read as its members today)."""
    _built(rollout_home)
    with warehouse.open_warehouse(rollout_home / "warehouse.duckdb") as con:
        con.execute(
            "insert into cohort_package_snapshots values "
            "('2022-01-31', 'high-impact', 'vue', '2022-01-03', ['rank'], true)"
        )
    latest = run("cohorts", "show", "high-impact", "-f", "json")
    assert latest.exit_code == 0, latest.stderr
    assert json.loads(latest.stdout) == []
    packages = run("cohorts", "show", "high-impact", "--packages", "-f", "json")
    assert [p["package"] for p in json.loads(packages.stdout)] == ["vue"]
