"""Days and times are bounded: a plan's dates, and the days and times given on the command
line, are between 1970-01-01 and 2199-12-31 (rollout.core.plan.SUPPORTED_DAYS). One
beyond is refused with exit code 2 and a one-line reason naming the file and line, or
the option, before anything runs: it used to pass, then overflow a date deep inside a
command (or rebuild the marts for millions of days first). A future day inside the
range is a day like any other: the demo's clock and a release manager's preview run
ahead."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from rollout.cli import app

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "plans" / "npm-2022.yaml"
RANGE = "between 1970-01-01 and 2199-12-31"


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def refused(result: Result) -> str:
    """The one-line refusal of a command that exited 2, never a traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.split())


def plan_with(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """The reference plan with one edit, and the line of the edit."""
    text = REFERENCE.read_text()
    assert old in text
    text = text.replace(old, new, 1)
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path, next(n for n, line in enumerate(text.splitlines(), 1) if new in line)


# --- plan dates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["plan", "check"],
        ["plan", "show"],
        ["notify", "queue", "--as-of", "2022-01-04"],
        ["brownout", "schedule"],
        ["report", "--as-of", "2022-02-01"],
    ],
    ids=" ".join,
)
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("starts_at: 2022-02-23T00:00:00", "starts_at: 9999-12-31T23:00:00"),
        ("    enforce_on: 2022-02-01", "    enforce_on: 0001-01-01"),
    ],
    ids=["brown-out in 9999", "enforcement in year 1"],
)
def test_a_plan_date_beyond_the_supported_years_is_refused_by_every_command(
    rollout_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    old: str,
    new: str,
) -> None:
    path, line = plan_with(tmp_path, old, new)
    monkeypatch.setenv("ROLLOUT_PLAN", str(path))
    stderr = refused(run(*command))
    assert f"{path}:{line}: " in stderr and "is out of range" in stderr and RANGE in stderr
    assert not rollout_home.exists()


def test_a_plan_nested_thousands_of_levels_deep_is_refused_by_plan_check(
    rollout_home: Path, tmp_path: Path
) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    stderr = refused(run("plan", "check", str(path)))
    assert stderr == f"error: {path}:1: nested more than 50 levels deep (a plan needs a few)"


# --- days and times on the command line -------------------------------------------------

DAY_COMMANDS = [
    ["report", "--as-of"],
    ["metrics", "--as-of"],
    ["notify", "queue", "--as-of"],
    ["cohorts", "build", "--as-of"],
    ["sample", "--scale", "tiny", "--end"],
    # Each of these read its plan, or opened the warehouse, before the day: with none
    # there it said "no warehouse yet" of a day it would refuse anyway.
    ["plan", "simulate", "--as-of"],
    ["cohorts", "simulate", "--top", "10", "--as-of"],
    ["cohorts", "show", "top-100", "--as-of"],
    ["notify", "preview", "--on"],
    ["demo", "--start"],
    ["demo", "--end"],
]


@pytest.mark.parametrize("command", DAY_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("day", ["9999-12-31", "2200-01-01", "1969-12-31", "0001-01-01"])
def test_a_day_option_beyond_the_supported_years_is_refused_naming_the_option(
    rollout_home: Path, command: list[str], day: str
) -> None:
    stderr = refused(run(*command, day))
    assert stderr == f"error: {command[-1]}: '{day}' is out of range: days are {RANGE}"
    assert not rollout_home.exists()


@pytest.mark.parametrize(
    "command", [*DAY_COMMANDS, ["cohorts", "diff", "2022-01-03"]], ids=" ".join
)
def test_a_bad_day_is_said_before_a_plan_or_warehouse_that_is_not_there(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Options are read before the environment is looked at: the day is what to fix
    first, and a missing plan or warehouse would only hide it."""
    monkeypatch.setenv("ROLLOUT_PLAN", str(tmp_path / "no-such-plan.yaml"))
    stderr = refused(run(*command, "1969-12-31"))
    assert stderr.startswith("error: ") and "'1969-12-31' is out of range" in stderr


def test_a_bad_time_is_said_before_a_plan_that_is_not_there(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLOUT_PLAN", str(tmp_path / "no-such-plan.yaml"))
    stderr = refused(run("plan", "show", "--at", "tomorrow"))
    assert stderr.startswith("error: --at: 'tomorrow'")


def test_both_days_of_a_cohort_diff_are_bounded(rollout_home: Path) -> None:
    stderr = refused(run("cohorts", "diff", "2022-01-03", "9999-12-31"))
    assert stderr == f"error: D2: '9999-12-31' is out of range: days are {RANGE}"


@pytest.mark.parametrize("day", ["20220131", "2022-W05-1", "2022W051", "2022-W05"])
def test_a_day_not_written_yyyy_mm_dd_is_refused(rollout_home: Path, day: str) -> None:
    # Python 3.11's date.fromisoformat reads these; the docs give only YYYY-MM-DD.
    stderr = refused(run("metrics", "--as-of", day))
    assert stderr == f"error: --as-of: '{day}' is not a date in the form YYYY-MM-DD"
    assert not rollout_home.exists()


@pytest.mark.parametrize("day", ["2022-02-30", "tomorrow", ""])
def test_a_day_that_is_no_date_is_still_refused_as_before(rollout_home: Path, day: str) -> None:
    stderr = refused(run("metrics", "--as-of", day))
    assert stderr == f"error: --as-of: '{day}' is not a date (YYYY-MM-DD)"


@pytest.mark.parametrize("command", DAY_COMMANDS, ids=" ".join)
def test_an_empty_day_is_refused_by_every_day_option_not_read_as_today(
    rollout_home: Path, command: list[str]
) -> None:
    """`report --as-of ""` wrote today's report: an empty value read as none given."""
    stderr = refused(run(*command, ""))
    assert stderr == f"error: {command[-1]}: '' is not a date (YYYY-MM-DD)"
    assert not rollout_home.exists()


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:00", "2200-01-01"])
def test_a_time_option_beyond_the_supported_years_is_refused_naming_it(
    rollout_home: Path, at: str
) -> None:
    # 0001-01-01T00:00+05:00 has no UTC time: converting it was an OverflowError.
    stderr = refused(run("plan", "show", "--at", at))
    assert stderr == f"error: --at: '{at}' is out of range: times are {RANGE} (UTC)"


def test_a_future_day_inside_the_range_is_a_day_like_any_other(rollout_home: Path) -> None:
    assert run("db", "upgrade").exit_code == 0
    for day in ("2199-12-31", "2150-06-01", "1970-01-01"):
        queued = run("notify", "queue", "--as-of", day)
        assert queued.exit_code == 0, queued.stderr
    shown = run("plan", "show", "--at", "2199-12-31T23:59:59")
    assert shown.exit_code == 0, shown.stderr


@pytest.mark.parametrize(
    "at",
    [
        "20220216",  # --as-of refuses these days; --at took them too
        "2022-W07-3",
        "2022W073",
        "20220216T10:00",
        "2022-02-16x10:00",  # Python reads any separator
        "2022-02-16 10:00",
        "2022-02-16T10",
        "2022-02-16T1000",
        "2022-02-16T10:00:00.5",
        "2022-02-16T10:00+0530",
    ],
)
def test_a_time_not_written_as_the_docs_give_it_is_refused(rollout_home: Path, at: str) -> None:
    """The CLI's day and time options take the same day, YYYY-MM-DD: `--at 20220216` and
    `--at 2022-W07-3` were read as 2022-02-16, which `--as-of` refuses."""
    stderr = refused(run("plan", "show", "--at", at))
    assert stderr == (
        f"error: --at: '{at}' is not a time in the form YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS], "
        "UTC or with an offset (Z, +HH:MM)"
    )
    assert not rollout_home.exists()


@pytest.mark.parametrize(
    ("at", "utc"),
    [
        ("2022-02-16", datetime(2022, 2, 16)),
        ("2022-02-16T10:00", datetime(2022, 2, 16, 10)),
        ("2022-02-16T10:00:30", datetime(2022, 2, 16, 10, 0, 30)),
        ("2022-02-16T10:00Z", datetime(2022, 2, 16, 10)),
        ("2022-02-16T10:00:30+05:30", datetime(2022, 2, 16, 4, 30, 30)),
        ("2022-02-16T20:00-08:00", datetime(2022, 2, 17, 4)),
    ],
)
def test_a_time_in_a_documented_form_is_taken_as_naive_utc(at: str, utc: datetime) -> None:
    from rollout.cli.app import _parse_time

    assert _parse_time(at) == utc
