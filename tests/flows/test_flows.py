"""The flows against a temporary Prefect server, on the tiny sample (downloads end 2022-01-31).

One module-scoped home: the sample, plus one landing file that ingest refuses. The
daily run for 2022-02-01 has a complete weekly window; 2022-02-02's window misses
2022-02-01, so its cohorts refuse to build without allow_gaps. The markdown is also
checked through the plain functions that render it, without a server.
"""

from __future__ import annotations

import csv
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from flows import brownouts as brownout_flows
from flows import common as common_flows
from flows import notify as notify_flows
from flows import phases
from flows import report as report_flows
from flows.cohorts import cohorts, cohorts_markdown, daily, entered_list
from flows.common import artifact_key
from flows.metrics import metrics, metrics_markdown
from rollout.cohorts import CohortResult
from rollout.core.config import Settings, load_settings
from rollout.core.errors import BadInput, GuardRefused
from rollout.core.output import markdown_text as cell
from rollout.core.plan import load_plan
from rollout.demo.sample import generate_sample
from rollout.metrics import MetricsReport
from rollout.notify.drain import DrainReport, ShardOrphaned
from rollout.registry import Registry
from rollout.warehouse import open_warehouse
from rollout.warehouse.ingest import FileResult, IngestReport
from tests.factories import AccountFactory, bound_to
from tests.support.artifacts import logs_since, read_artifact, run_as_deployed
from tests.support.env import without_rollout_settings
from tests.support.outbox import on
from tests.support.warehouse_holder import warehouse_held

ROOT = Path(__file__).resolve().parents[2]
DAY = date(2022, 2, 1)
GAP_DAY = date(2022, 2, 2)  # its weekly window, 2022-01-26..2022-02-01, misses 2022-02-01
BROKEN = "downloads-broken.csv"


@dataclass
class Home:
    path: Path
    settings: Settings

    def warehouse_rows(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        with open_warehouse(self.settings.warehouse_path, read_only=True) as con:
            return con.execute(query, params).fetchall()

    def registry_rows(self, query: str) -> list[tuple[Any, ...]]:
        database = self.settings.registry_url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(database)) as connection:
            return connection.execute(query).fetchall()

    def registry_write(self, statement: str) -> None:
        database = self.settings.registry_url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(database)) as connection, connection:
            connection.execute(statement)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    """Like tests/conftest.py's rollout_home, for the module: the tiny sample in a temp home."""
    path = tmp_path_factory.mktemp("flows") / "home"
    with pytest.MonkeyPatch.context() as mp:
        without_rollout_settings(mp)
        mp.setenv("ROLLOUT_HOME", str(path))
        # The reference plan with high-impact fixed from top-100's day: the module's one
        # daily run (2022-02-01) builds both cohorts (none is built before its phase's
        # cohort_as_of), and the notify tests reach high-impact's members.
        plan = path.parent / "npm-2022.yaml"
        text = (ROOT / "plans" / "npm-2022.yaml").read_text()
        assert "cohort_as_of: 2022-03-14" in text
        plan.write_text(text.replace("cohort_as_of: 2022-03-14", "cohort_as_of: 2022-01-03"))
        mp.setenv("ROLLOUT_PLAN", str(plan))
        settings = load_settings()
        generate_sample(
            "tiny", 7, registry=Registry(settings.registry_url), landing_dir=settings.landing_dir
        )
        # Every row bad: ingest refuses the whole file, the others still load.
        (settings.landing_dir / "downloads" / BROKEN).write_text(
            "package,day,downloads\nreact,2022-01-10,-5\nvue,2022-01-10,-7\n"
        )
        yield Home(path, settings)


@pytest.fixture(scope="module")
def daily_state(prefect_server: None, home: Home) -> Any:
    return daily(as_of=DAY, return_state=True)


@pytest.fixture(scope="module")
def gap_state(daily_state: Any) -> Any:
    """After the complete day: the landing files are already loaded."""
    return daily(as_of=GAP_DAY, ingest_first=False, return_state=True)


# --- with the Prefect server ---------------------------------------------------------


def test_the_daily_run_completes(daily_state: Any) -> None:
    assert daily_state.is_completed(), daily_state.message


def test_it_writes_the_days_metrics_and_both_cohorts(daily_state: Any, home: Home) -> None:
    [(packages,)] = home.warehouse_rows(
        "select count(*) from package_metrics_daily where as_of = $d", d=DAY
    )
    assert packages == 1000
    snapshots = home.warehouse_rows(
        "select cohort, count(*) from cohort_package_snapshots where as_of = $d group by cohort",
        d=DAY,
    )
    assert {cohort for cohort, count in snapshots if count > 0} == {"top-100", "high-impact"}
    accounts = home.warehouse_rows(
        "select distinct cohort from cohort_account_snapshots where as_of = $d", d=DAY
    )
    assert {cohort for (cohort,) in accounts} == {"top-100", "high-impact"}


def test_cohorts_ran_after_metrics_with_the_flow_run_as_actor(daily_state: Any, home: Home) -> None:
    [(computed_at,)] = home.warehouse_rows(
        "select computed_at from metrics_runs where as_of = $d", d=DAY
    )
    [(actor, started_at, state)] = home.registry_rows(
        "select actor, started_at, state from plan_runs where step = 'cohorts 2022-02-01'"
    )
    assert actor.startswith("prefect/") and len(actor) > len("prefect/")
    assert state == "succeeded"
    assert datetime.fromisoformat(str(started_at)) > computed_at


def test_the_metrics_artifact_says_what_the_numbers_rest_on(daily_state: Any, home: Home) -> None:
    markdown = read_artifact("metrics-2022-02-01").data
    # Every file of the tiny sample's landing folder but the broken one (and the
    # sample's mark, a dot-file ingest passes over).
    landing = home.settings.landing_dir.rglob("*")
    sample_files = [p for p in landing if p.is_file() and not p.name.startswith(".")]
    assert len(sample_files) > 40
    assert "# Package metrics 2022-02-01" in markdown
    assert "| packages | 1000 |" in markdown
    assert "| missing download days | none |" in markdown
    assert "| self-dependencies ignored |" in markdown
    assert "| dependencies on unknown packages ignored |" in markdown
    assert f"| files loaded | {len(sample_files) - 1} |" in markdown
    assert "| files refused | 1 |" in markdown
    assert "weekly window is incomplete" not in markdown
    # The refused file is not silently ignored.
    assert "landing file(s) refused" in markdown
    assert f"/downloads/{BROKEN}:2: " in markdown
    assert "nothing was loaded" in markdown


def test_the_cohorts_artifact_has_a_table_per_cohort(daily_state: Any) -> None:
    markdown = read_artifact("cohorts-2022-02-01").data
    assert "## top-100" in markdown and "## high-impact" in markdown
    top, high = markdown.split("## high-impact")
    assert "| packages | 100 |" in top and "| packages entered | 100 |" in top
    assert "and 80 more" in top  # 20 listed
    for text in (top, high):
        for row in ("qualifying today", "accounts", "without 2FA", "accounts entered"):
            assert f"| {row} |" in text
        assert "| accounts left | 0 |" in text
        assert "| unresolved maintainers |" in text


def test_a_gap_in_the_weekly_window_stops_the_cohorts(gap_state: Any, home: Home) -> None:
    assert gap_state.is_failed()
    assert gap_state.message == (
        "download data is missing for 1 of the 7 days of 2022-02-02's weekly window "
        "(2022-01-26..2022-02-01): 2022-02-01. Load it, or allow gaps (--allow-gaps; "
        "allow_gaps in the flows) to decide on partial data"
    )
    with pytest.raises(BadInput, match=r"weekly window \(2022-01-26\.\.2022-02-01\)"):
        gap_state.result()
    markdown = read_artifact("metrics-2022-02-02").data
    assert "**Warning: the weekly window is incomplete.**" in markdown
    assert "| missing download days | 2022-02-01 |" in markdown
    assert "| ingest | skipped (ingest_first=false) |" in markdown
    snapshots = home.warehouse_rows(
        "select count(*) from cohort_package_snapshots where as_of = $d", d=GAP_DAY
    )
    assert snapshots == [(0,)]


def test_allow_gaps_decides_on_partial_data(gap_state: Any, home: Home) -> None:
    state = cohorts(as_of=GAP_DAY, allow_gaps=True, return_state=True)
    assert state.is_completed(), state.message
    assert "## top-100" in read_artifact("cohorts-2022-02-02").data


# --- the markdown, without a server ------------------------------------------------


def metrics_report(**changes: Any) -> MetricsReport:
    values: dict[str, Any] = {
        "as_of": DAY,
        "packages": 12,
        "missing_days": [],
        "weekly_window_complete": True,
        "self_dependencies": 3,
        "unknown_dependencies": 4,
        "unknown_packages": 2,
        "seconds": 0.5,
    }
    return MetricsReport(**(values | changes))


def test_metrics_markdown_without_gaps_or_refusals() -> None:
    ingested = IngestReport([FileResult(Path("a.csv"), "downloads", "loaded")])
    markdown = metrics_markdown(metrics_report(), ingested)
    assert "Warning" not in markdown
    assert "| missing download days | none |" in markdown
    assert "| self-dependencies ignored | 3 |" in markdown
    assert "| dependencies on unknown packages ignored | 4 |" in markdown
    assert "| files loaded | 1 |" in markdown and "| files refused | 0 |" in markdown


def test_metrics_markdown_puts_gaps_and_refused_files_first() -> None:
    report = metrics_report(
        missing_days=[date(2022, 1, 30), date(2022, 1, 31)], weekly_window_complete=False
    )
    ingested = IngestReport(
        [
            FileResult(Path("x/ok.csv"), "downloads", "skipped"),
            FileResult(
                Path("x/bad.csv"), "downloads", "rejected", message="x/bad.csv:2: 3 of 3 bad | 100%"
            ),
        ]
    )
    markdown = metrics_markdown(report, ingested)
    warning = markdown.index("**Warning: the weekly window is incomplete.**")
    assert warning < markdown.index("| packages |")
    assert "2022-01-30, 2022-01-31" in markdown[warning:]
    assert markdown.index("1 landing file(s) refused") < markdown.index("| packages |")
    assert "- x/bad.csv:2: 3 of 3 bad \\| 100%" in markdown
    assert "| files skipped \\(already loaded\\) | 1 |" in markdown


def test_metrics_markdown_names_a_file_nothing_of_which_loaded_first() -> None:
    """A SendGrid post whose every event is bad is taken, not refused: said all the same."""
    ingested = IngestReport(
        [
            FileResult(Path("x/events-a.json"), "events", "loaded", 3, 3),
            FileResult(Path("x/events-|b.json"), "events", "loaded", 2, 0, 0, 2),
        ]
    )
    markdown = metrics_markdown(metrics_report(), ingested)
    warning = markdown.index("**Warning: 1 landing file(s) wholly quarantined**")
    assert warning < markdown.index("| packages |")
    assert "events-\\|b.json" in markdown[warning:]
    assert "events-a.json" not in markdown


def test_cohorts_markdown_lists_at_most_20_entered_packages() -> None:
    names = [f"pkg-{i}" for i in range(23)]
    result = CohortResult("top-100", DAY, 30, 25, names, 40, 9, 5, 1, 2)
    markdown = cohorts_markdown(DAY, [result])
    assert "| without 2FA | 9 |" in markdown and "| accounts left | 1 |" in markdown
    assert "'pkg-19' and 3 more" in markdown and "pkg-20" not in markdown
    assert entered_list([]) == "none"


def test_cohorts_markdown_counts_a_key_cohort_short_of_a_security_key() -> None:
    """A cohort a phase requires a security key of: the artifact says how many of its
    accounts lack one (TOTP users too) beside those without 2FA; another cohort of the
    plan has no such count (an empty cell, not a 0)."""
    keys = CohortResult("everyone", DAY, 30, 25, [], 40, 9, 5, 1, 2, 22, plan_asks_keys=True)
    other = CohortResult("top-100", DAY, 30, 25, [], 40, 9, 5, 1, 2, plan_asks_keys=True)
    markdown = cohorts_markdown(DAY, [keys, other])
    everyone, top = markdown.split("## top-100")
    assert "| without 2FA | 9 |" in everyone and "| short of a security key | 22 |" in everyone
    assert "| short of a security key |  |" in top


def test_cohorts_markdown_names_the_cohorts_not_built_before_their_day() -> None:
    """A daily run before a phase's cohort_as_of builds no cohort of it: an artifact
    with no table would read as a build that found nothing."""
    from rollout.cohorts import cohorts_not_fixed_yet
    from rollout.core.plan import load_plan

    plan = load_plan(ROOT / "plans" / "npm-2022.yaml")
    later = cohorts_not_fixed_yet(plan, date(2022, 1, 2))
    assert later == [
        "top-100 (fixed from 2022-01-03 by phase top-100)",
        "high-impact (fixed from 2022-03-14 by phase high-impact)",
    ]
    assert cohorts_not_fixed_yet(plan, date(2022, 3, 14)) == []
    markdown = cohorts_markdown(date(2022, 1, 2), [], later)
    # (Markdown's escapes: a name is data.)
    assert "Not built before their day: top-100 \\(fixed from 2022-01-03 by phase top-100\\)" in (
        markdown
    )


def test_artifact_keys_are_lowercase_letters_digits_and_dashes() -> None:
    assert artifact_key("metrics", DAY) == "metrics-2022-02-01"


# --- the rollout engine's flows -------------------------------------------------------


def _paused_run(flow_name: str, timeout: float = 60) -> Any:
    """The flow run of ``flow_name`` that is paused, waiting for its approval."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowRunFilter

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name={"any_": [flow_name]}),
                flow_run_filter=FlowRunFilter(state={"type": {"any_": ["PAUSED"]}}),
            )
            if runs:
                return runs[0]
            time.sleep(0.5)
    raise AssertionError(f"no paused {flow_name} run within {timeout} s")


def _enforce_with_approval(
    monkeypatch: pytest.MonkeyPatch,
    approval: dict[str, Any],
    while_paused: Callable[[dict[str, Any]], None] = lambda request: None,
) -> Any:
    """Run phase-enforce in a thread, approve it as a release manager would, return its
    state. Without an ``expect_list``, the approval types back the run's preview's.
    ``while_paused`` is given the run's approval request before it is approved."""
    from prefect.flow_runs import resume_flow_run
    from prefect.input import read_flow_run_input

    from rollout.phases.approvals import REQUEST_INPUT_KEY

    monkeypatch.setattr(phases, "APPROVAL_POLL_SECONDS", 1)
    result: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: result.update(state=phases.phase_enforce("top-100", return_state=True))
    )
    worker.start()
    paused = _paused_run("phase-enforce")
    request = read_flow_run_input(REQUEST_INPUT_KEY, flow_run_id=paused.id)
    while_paused(request)
    resume_flow_run(paused.id, run_input={"expect_list": request["fingerprint"], **approval})
    worker.join(timeout=120)
    assert not worker.is_alive()
    return result["state"]


def _required(home: Home) -> int:
    [(count,)] = home.registry_rows(
        "select count(*) from accounts where tfa_required_at is not null"
    )
    return count


@pytest.fixture(scope="module")
def preview_count(daily_state: Any, home: Home) -> int:
    count = phases.phase_preview("top-100")
    assert count > 0, "the tiny sample's top-100 cohort has accounts without 2FA"
    return count


def test_the_phase_preview_flow_publishes_the_list_and_changes_nothing(
    preview_count: int, home: Home
) -> None:
    markdown = read_artifact("phase-preview-top-100").data
    assert f"| accounts without 2FA to require it of | {preview_count} |" in markdown
    [csv] = (home.path / "reports" / "previews").glob("top-100-*.csv")
    assert len(csv.read_text().splitlines()) == preview_count + 1
    assert _required(home) == 0


def test_an_approval_with_the_wrong_count_applies_nothing(
    preview_count: int, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = datetime.now(UTC)
    state = _enforce_with_approval(
        monkeypatch, {"expect": preview_count + 1, "approved_by": "rita"}
    )
    assert state.is_failed() and state.name == "Refused"  # the guard's line, no traceback
    logs = logs_since(start)
    assert "Task run failed with exception: NotAsPreviewed('phase top-100 would change" in logs
    assert "Traceback" not in logs
    assert state.message.startswith(f"phase top-100 would change {preview_count} accounts, not")
    assert f"not the {preview_count + 1} expected" in state.message and "\n" not in state.message
    assert _required(home) == 0
    # What a deployed run's engine raises at its end: the refusal, a user error, whose
    # traceback the run's log leaves out, not a FailedRun it would log as a crash.
    with pytest.raises(GuardRefused):
        state.result()


def test_an_approval_types_back_the_list_s_fingerprint_the_form_shows() -> None:
    """As `phase enforce --apply` needs --expect-list: the form asks for the list's
    fingerprint (12 hex digits; the server refuses another shape, the run keeps
    waiting), its description gives it, and the run refuses a list not its preview's."""
    from flows.phases import Approval, approved_list
    from rollout.phases.approvals import ApprovalRequest

    schema = Approval.model_json_schema()
    assert set(schema["required"]) == {"expect", "expect_list", "approved_by"}
    pattern = schema["properties"]["expect_list"]["pattern"]
    assert re.fullmatch(pattern, "7d1e40b2c9a3") and not re.fullmatch(pattern, "87")
    request = ApprovalRequest(
        "top-100", 87, 29, 24, "/r/a.csv", "k", "t", fingerprint="7d1e40b2c9a3"
    )
    approved_list(request, " 7D1E40B2C9A3 ")  # as typed: any case, spaces around
    with pytest.raises(GuardRefused, match=r"the list approved \(0123456789ab\) is not the one"):
        approved_list(request, "0123456789ab")
    # A request recorded before fingerprints: the fresh preview's list is checked.
    approved_list(replace(request, fingerprint=None), "0123456789ab")


def test_the_approval_form_says_the_sessions_are_every_live_one_when_enforced() -> None:
    """The form said "29 web sessions" as a list approved; enforcement signs out every
    session live when it runs, one signed in since too (counted apart in its result)."""
    from flows.phases import approval_description
    from rollout.phases.approvals import ApprovalRequest

    request = ApprovalRequest(
        "top-100", 87, 29, 24, "/r/a.csv", "k", "t", fingerprint="7d1e40b2c9a3"
    )
    said = approval_description(request, "run-1")
    assert "87 accounts, 29 web sessions signed out (live now; any signed in since too)" in said
    assert "rollout approve run-1 --expect 87 --expect-list 7d1e40b2c9a3" in said
    no_sessions = approval_description(replace(request, sessions=None), "run-1")
    assert "web session" not in no_sessions


def test_an_approval_refused_as_the_list_changed_since_names_who_changed(
    preview_count: int, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the run waited for its approval, one account it listed set up 2FA: the
    refusal (the count is not the one approved) names who left the list since the
    run's preview, as the CLI's does, from the preview's saved files."""
    left: list[str] = []

    def one_listed_account_sets_up_2fa(request: dict[str, Any]) -> None:
        with open(request["csv_path"], newline="", encoding="utf-8") as listed:
            first = next(csv.DictReader(listed))
        left.append(first["username"])
        home.registry_write(
            "insert into tfa_factors (account_id, kind, created_at) "
            f"values ({int(first['account_id'])}, 'totp', '2000-01-01 00:00:00')"
        )

    try:
        state = _enforce_with_approval(
            monkeypatch,
            {"expect": preview_count, "approved_by": "rita"},
            one_listed_account_sets_up_2fa,
        )
    finally:
        home.registry_write("delete from tfa_factors where created_at = '2000-01-01 00:00:00'")
    assert state.is_failed() and state.name == "Refused"
    assert f"not the {preview_count} expected" in state.message
    assert "since the preview of " in state.message
    assert f"1 account no longer listed ('{left[0]}'); 0 accounts newly listed" in state.message
    assert "\n" not in state.message
    assert _required(home) == 0


def test_an_approval_of_another_list_applies_nothing(
    preview_count: int, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _enforce_with_approval(
        monkeypatch,
        {"expect": preview_count, "expect_list": "0123456789ab", "approved_by": "rita"},
    )
    assert state.is_failed() and state.name == "Refused"
    assert "the list approved (0123456789ab) is not the one this run previewed" in state.message
    assert _required(home) == 0


def test_an_approved_enforce_run_applies_exactly_the_previewed_accounts(
    preview_count: int, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _enforce_with_approval(monkeypatch, {"expect": preview_count, "approved_by": "rita"})
    assert state.is_completed(), state.message
    assert state.result()["accounts_flagged"] == preview_count
    # Its own preview's time is known: no session was signed in since it.
    assert state.result()["sessions_signed_in_since_preview"] == 0
    assert _required(home) == preview_count
    [(actor,)] = home.registry_rows(
        "select distinct actor from actions where action = 'tfa_required'"
    )
    assert actor.startswith("rita via prefect/")
    # The artifact names the list approved, as the approver typed it back.
    assert re.search(
        rf"Approved by rita for {preview_count:,} accounts? \(list `[0-9a-f]{{12}}`\)",
        read_artifact("phase-enforce-top-100").data,
    )


def _plan_with_brownouts(home: Home, first: datetime, second: datetime) -> Path:
    """The reference plan with brownout-1 and brownout-2 starting at ``first`` and
    ``second`` (the real ones are in 2022; the flows read the real clock), and ELV for
    all the day after the later one (a brown-out rehearses it: none may come after it)."""
    text = (ROOT / "plans" / "npm-2022.yaml").read_text()
    path = home.path / f"plan-brownouts-{first:%Y%m%d%H%M%S}.yaml"
    elv_for_all = (max(first, second) + timedelta(days=1)).date()
    for planned, when in (
        ("2022-02-16T00:00:00", first.replace(microsecond=0).isoformat()),
        ("2022-02-23T00:00:00", second.replace(microsecond=0).isoformat()),
        ("enroll_all_on: 2022-03-01", f"enroll_all_on: {elv_for_all.isoformat()}"),
    ):
        assert planned in text
        text = text.replace(planned, when)
    path.write_text(text)
    return path


def _scheduled_then_dropped(home: Home, first: datetime, second: datetime, name: str) -> Path:
    """The plan with brownout-1 and brownout-2 renamed ``name``-1 and ``name``-2
    (windows of their own: the registry is shared with the other flows' tests),
    scheduled; returns the same plan without ``name``-2."""
    from rollout.phases.brownouts import schedule

    text = _plan_with_brownouts(home, first, second).read_text()
    text = text.replace("brownout-1", f"{name}-1").replace("brownout-2", f"{name}-2")
    both = home.path / f"plan-with-{name}.yaml"
    both.write_text(text)
    schedule(Registry(home.settings.registry_url), load_plan(both), actor="rm")
    dropped = home.path / f"plan-without-{name}-2.yaml"
    start = text.index(f"  - name: {name}-2")  # the last window, a blank line after it
    dropped.write_text(text[:start] + text[text.index("\n\n", start) + 1 :])
    return dropped


def _window(home: Home, name: str) -> Any:
    from rollout.phases.brownouts import status

    return {w.name: w for w in status(Registry(home.settings.registry_url))}[name]


def test_the_brownout_flows_start_and_end_a_window_at_its_planned_times(
    daily_state: Any, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    # brownout-1's start is due (the worker's clock a minute behind the server's).
    monkeypatch.setenv(
        "ROLLOUT_PLAN",
        str(_plan_with_brownouts(home, now + timedelta(minutes=1), now + timedelta(days=10))),
    )
    assert brownout_flows.brownout_start("brownout-1") == "active"
    assert "| state | active |" in read_artifact("brownout-brownout-1-started").data
    # Its plan has it end a day later (brownout-1 keeps 24 hours): the end is due then.
    ended_now = now - timedelta(hours=24) + timedelta(minutes=1)
    monkeypatch.setenv(
        "ROLLOUT_PLAN", str(_plan_with_brownouts(home, ended_now, now + timedelta(days=10)))
    )
    assert brownout_flows.brownout_end("brownout-1") == "ended early"
    ended = brownout_flows.brownout_end("brownout-1", return_state=True)
    assert ended.is_completed()  # ending an ended window again is a no-op
    refused = brownout_flows.brownout_start("brownout-1", return_state=True)
    assert refused.is_failed() and "cannot start again" in refused.message


def test_a_brownout_end_run_for_a_window_there_is_not_names_the_windows_there_are(
    daily_state: Any, home: Home
) -> None:
    """A mistyped window's end says which windows there are, each with its state, as
    `rollout brownout end` does (the wording: tests/test_brownouts.py). The module's
    registry is shared with the other brown-out tests, which schedule, start, end and
    move its windows (scheduling another plan here would call theirs off): the windows
    named are whatever it holds now."""
    from rollout.phases.brownouts import no_window_named, status

    windows = status(Registry(home.settings.registry_url))

    refused = brownout_flows.brownout_end("brownout-9", return_state=True)

    assert refused.is_failed() and "\n" not in refused.message
    assert refused.message == no_window_named("brownout-9", windows)
    assert refused.message.startswith("no brown-out window named 'brownout-9': the registry has")


def test_a_brownout_run_well_before_the_window_s_planned_times_changes_nothing(
    daily_state: Any, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The plan moved brownout-2 later since prefect.yaml was deployed: its old
    # schedules fire days before the window is due, before its heads-up.
    from rollout.phases.brownouts import end_now, start_now

    now = datetime.now(UTC).replace(tzinfo=None)
    later = _plan_with_brownouts(home, now + timedelta(days=10), now + timedelta(days=20))
    monkeypatch.setenv("ROLLOUT_PLAN", str(later))
    refused = brownout_flows.brownout_start("brownout-2", return_state=True)
    window = _window(home, "brownout-2")
    assert window.state == "scheduled" and window.starts_at > now + timedelta(days=9)
    assert refused.is_failed() and "\n" not in refused.message
    assert refused.message.startswith(
        f"brown-out brownout-2 is planned to start at {window.starts_at:%Y-%m-%d %H:%M} UTC, "
        "not now: nothing was changed"
    )
    assert "prefect deploy --all" in refused.message
    # A window a release manager started early (the CLI's `brownout start`) is not cut
    # short by the old end's run either.
    registry = Registry(home.settings.registry_url)
    start_now(registry, "brownout-2", actor="rm", reason="agreed with support")
    refused = brownout_flows.brownout_end("brownout-2", return_state=True)
    assert refused.is_failed() and "planned to end at" in refused.message
    assert _window(home, "brownout-2").state == "active"
    end_now(registry, "brownout-2", actor="rm", reason="the test is over")


def test_a_brownout_start_left_over_for_a_window_the_plan_dropped_calls_it_off(
    daily_state: Any, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prefect.yaml still has a window's start after the plan dropped it, and nobody
    scheduled the plan since: the registry would apply the window at login from its
    time (ELV's challenge reads the registry, not the plan). The run calls it off, as
    `brownout schedule --apply` would, rather than fail and leave it to start."""
    from rollout.phases.brownouts import elv_required

    now = datetime.now(UTC).replace(tzinfo=None)
    dropped = _scheduled_then_dropped(
        home, now + timedelta(days=10), now + timedelta(minutes=30), "drill"
    )
    registry = Registry(home.settings.registry_url)
    assert [b.name for b in load_plan(dropped).brownouts] == ["drill-1"]
    monkeypatch.setenv("ROLLOUT_PLAN", str(dropped))
    window = _window(home, "drill-2")
    with bound_to(registry.engine):
        account_id = AccountFactory(username="drill-watcher").id  # no 2FA, no ELV
    with registry.engine.connect() as connection:  # the window would challenge them
        assert elv_required(connection, account_id, window.starts_at + timedelta(minutes=1))
    assert brownout_flows.brownout_start("drill-2") == "ended early"
    assert _window(home, "drill-2").state == "ended early"
    with registry.engine.connect() as connection:
        assert not elv_required(connection, account_id, window.starts_at + timedelta(minutes=1))
    assert "| state | ended early |" in read_artifact("brownout-drill-2-called-off").data
    [(reason,)] = home.registry_rows(
        "select reason from actions where action = 'brownout_ended' "
        "and subject = 'brownout:drill-2'"
    )
    assert reason == "cancelled: no longer in plan npm-2022"
    # Again (a retry, a second old schedule): it is over, nothing to call off.
    again = brownout_flows.brownout_start("drill-2", return_state=True)
    assert again.is_failed() and again.message.startswith(
        "brown-out 'drill-2' is not in plan npm-2022 (it is ended early in the registry): "
        "nothing was started"
    )


def test_a_brownout_start_for_a_dropped_window_already_under_way_ends_it(
    daily_state: Any, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run fires at the window's start: the window has begun by itself by the time
    the worker runs it. Dropped from the plan, it ends there."""
    now = datetime.now(UTC).replace(tzinfo=None)
    dropped = _scheduled_then_dropped(
        home, now + timedelta(days=30), now + timedelta(seconds=2), "late"
    )
    monkeypatch.setenv("ROLLOUT_PLAN", str(dropped))
    while _window(home, "late-2").state == "scheduled":
        time.sleep(0.2)
    assert _window(home, "late-2").state == "active"
    assert brownout_flows.brownout_start("late-2") == "ended early"
    [(reason,)] = home.registry_rows(
        "select reason from actions where action = 'brownout_ended' and subject = 'brownout:late-2'"
    )
    assert reason == "ended: no longer in plan npm-2022"


def test_the_daily_run_cancels_a_window_the_plan_dropped_before_it_starts(
    gap_state: Any, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prefect.yaml redeployed without the window's runs, and nobody scheduled the plan
    since: no brownout-start comes, and the registry would apply the window at login at
    its time. The daily run cancels it first thing, even on a day whose metrics fail."""
    now = datetime.now(UTC).replace(tzinfo=None)
    dropped = _scheduled_then_dropped(
        home, now + timedelta(days=40), now + timedelta(days=50), "gone"
    )
    monkeypatch.setenv("ROLLOUT_PLAN", str(dropped))
    state = daily(as_of=GAP_DAY, ingest_first=False, return_state=True)
    assert state.is_failed()  # the day's weekly window has a gap: cohorts refused
    assert _window(home, "gone-2").state == "ended early"
    assert _window(home, "gone-1").state == "scheduled"  # the plan's own, untouched
    [(reason, actor)] = home.registry_rows(
        "select reason, actor from actions where action = 'brownout_ended' "
        "and subject = 'brownout:gone-2'"
    )
    assert reason == "cancelled: no longer in plan npm-2022"
    assert actor.startswith("prefect/")  # the daily run


def test_the_elv_flow_enrols_every_account(daily_state: Any, home: Home) -> None:
    enrolled = brownout_flows.elv_enroll_all(batch_size=100)
    [(total, left)] = home.registry_rows(
        "select count(*), count(*) - count(elv_enrolled_at) from accounts"
    )
    assert left == 0 and 0 < enrolled <= total
    assert brownout_flows.elv_enroll_all() == 0  # a rerun has nothing left to do


def test_the_notify_flow_queues_the_days_mailings_and_sends_them_once(
    daily_state: Any, home: Home
) -> None:
    with on(date(2022, 1, 4)):  # the day's run, at 09:00
        first = notify_flows.notify(as_of=date(2022, 1, 4))
    assert first["queued"] > 0 and first["sent"] > 0 and first["failed"] == 0
    assert len(list((home.path / "outbox").glob("*.eml"))) == first["sent"]
    # Escaped as text: rendered, it reads "notices top-100 (phase_notice)".
    assert "notices top-100 \\(phase\\_notice\\)" in read_artifact("notify-2022-01-04").data
    assert "| mailing | new | of which skipped |" in read_artifact("notify-2022-01-04").data
    with on(date(2022, 1, 4), hour=10):
        again = notify_flows.notify(as_of=date(2022, 1, 4))
    assert (again["queued"], again["sent"]) == (0, 0)


def test_the_notify_artifact_counts_the_emails_taken_over_as_notify_send_does() -> None:
    """A sender that outlived its lease (a stall) left some claimed emails to another:
    `notify send` counts them (``overtaken``), and so does the run's artifact; a run in
    shards sums what its shard runs told, and says so when some told nothing."""
    report = DrainReport("sendgrid", sent=5, overtaken=2)
    shown = notify_flows.notify_markdown(date(2022, 1, 4), [], report)
    assert f"| {cell(notify_flows.OVERTAKEN_ROW)} | 2 |" in shown
    every = notify_flows.notify_markdown(date(2022, 1, 4), [], report, shards=3, shards_reported=3)
    assert f"| {cell(notify_flows.OVERTAKEN_ROW)} | 2 |" in every
    some = notify_flows.notify_markdown(date(2022, 1, 4), [], report, shards=3, shards_reported=2)
    told = cell("2 (told by 2 of the 3 shard runs: one that did not complete tells none)")
    assert f"| {cell(notify_flows.OVERTAKEN_ROW)} | {told} |" in some


def test_a_notify_run_reads_what_each_shard_run_had_taken_over(
    prefect_server: None, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shard runs are other processes, on other machines: their return values are
    nowhere their notify run can read (Prefect persists none by default, and then on the
    shard's own disk). Each leaves its counts as an artifact of its run, which is."""
    stalled = iter([DrainReport("file", sent=3, overtaken=2), DrainReport("file", overtaken=1)])
    monkeypatch.setattr(notify_flows, "drain_shard", lambda *_a, **_k: next(stalled))
    runs = [notify_flows.notify_shard(return_state=True) for _ in range(2)]
    assert [r.is_completed() for r in runs] == [True, True]
    ids = [r.state_details.flow_run_id for r in runs]
    never_told = uuid4()  # a shard run killed before it ended
    counts = notify_flows.read_shard_counts([*ids, never_told])
    assert {i: c["overtaken"] for i, c in counts.items()} == {ids[0]: 2, ids[1]: 1}
    assert counts[ids[0]]["sent"] == 3


def test_the_notify_flow_catching_up_holds_back_a_mailing_past_its_last_day(
    daily_state: Any, home: Home
) -> None:
    """A run for 2022-01-29, years after top-100's deadline (2022-02-01): its 3-day
    reminders would tell accounts they will be signed out "in 3 days". None is queued,
    and the artifact says why and how to send them anyway."""
    caught_up = notify_flows.notify(as_of=date(2022, 1, 29))
    assert (caught_up["queued"], caught_up["sent"]) == (0, 0)
    artifact = read_artifact("notify-2022-01-29").data
    assert "held back: past its last day" in artifact and "--late" in artifact
    assert home.registry_rows("select count(*) from notifications where occasion = '3d'") == [(0,)]


def test_the_sendgrid_key_can_come_from_a_secret_block_and_never_shows(
    daily_state: Any, home: Home, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.blocks.system import Secret

    from rollout.dev.sendgrid_api import DevSendGrid

    key = "SG.flow-secret.never-to-be-seen"
    # A cohort member due a reminder whose address bounced: the run copies SendGrid's
    # lists before queueing, so the reminder is skipped with the reason. (high-impact's
    # 30-day reminder: top-100 may be enforced by this module's approval tests, and a
    # reminder skips an account its phase requires already.)
    [(bounced_id, bounced)] = home.registry_rows(
        "select id, lower(email) from accounts where email_verified and id in "
        "(select account_id from cohort_memberships where cohort = 'high-impact') and id not in "
        "(select account_id from tfa_factors where removed_at is null) order by id limit 1"
    )
    Secret(value=key).save("sendgrid-api-key", overwrite=True)
    try:
        with DevSendGrid(api_key=key) as server, caplog.at_level(logging.DEBUG):
            server.suppress({"bounces": [{"email": bounced.upper(), "created": 1640995200}]})
            monkeypatch.setenv("ROLLOUT_SENDGRID_URL", server.url)
            with on(date(2022, 4, 3)):
                state = notify_flows.notify(as_of=date(2022, 4, 3), return_state=True)
            received = len(server.messages)
            recipients = {
                m["body"]["personalizations"][0]["to"][0]["email"].lower() for m in server.messages
            }
    finally:
        Secret(value="").save("sendgrid-api-key", overwrite=True)
    assert state.is_completed(), state.message
    assert state.result()["sent"] == received > 0
    assert bounced not in recipients
    assert home.registry_rows(
        "select state, skip_reason from notifications where email = 'reminder' "
        f"and phase = 'high-impact' and account_id = {bounced_id}"
    ) == [("skipped", "suppressed: bounce")]
    artifact = read_artifact("notify-2022-04-03").data
    assert "| sender | sendgrid |" in artifact
    assert "SendGrid suppressions" in artifact and "| bounces | 1 |" in artifact
    assert "| spam reports | 0 |" in artifact and "| pages read |" in artifact
    assert key not in artifact and key not in caplog.text
    assert not any(key in p.read_text(errors="ignore") for p in home.path.rglob("*") if p.is_file())


def test_unreadable_suppression_lists_warn_and_the_notices_still_go(
    daily_state: Any, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rollout.dev.sendgrid_api import DEFAULT_API_KEY, DevSendGrid

    with DevSendGrid() as server:
        server.script_suppression_faults([{"status": 403}])
        monkeypatch.setenv("SENDGRID_API_KEY", DEFAULT_API_KEY)
        monkeypatch.setenv("ROLLOUT_SENDGRID_URL", server.url)
        # high-impact's 14-day reminder (see the test above on top-100's).
        with on(date(2022, 4, 19)):
            state = notify_flows.notify(as_of=date(2022, 4, 19), return_state=True)
        received = len(server.messages)
    assert state.is_completed(), state.message
    assert state.result()["sent"] == received > 0
    artifact = read_artifact("notify-2022-04-19").data
    assert "not synced" in artifact and "403" in artifact


def test_the_report_flow_writes_the_report_and_publishes_its_markdown(
    daily_state: Any, home: Home
) -> None:
    html = Path(report_flows.report(as_of=DAY))
    assert html == home.path / "reports" / DAY.isoformat() / "adoption.html"
    assert "<svg" in html.read_text()
    assert (html.parent / "adoption_daily.csv").exists()
    assert "2FA adoption" in read_artifact(f"adoption-{DAY}").data


def test_a_run_started_late_does_the_day_it_was_scheduled_for(prefect_server: None) -> None:
    """A daily run scheduled for 02:30 on one day and picked up after midnight (the
    pool paused over an upgrade) does its own day, not the day it ran: two late runs
    did one day twice and left the other without metrics, cohorts or report."""
    from prefect import flow, get_client
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    from flows.common import day_or_today

    @flow(name="which-day")
    def which_day(as_of: date | None = None) -> date:
        return day_or_today(as_of)

    scheduled = datetime(2022, 2, 1, 2, 30, tzinfo=UTC)
    client: SyncPrefectClient
    with get_client(sync_client=True) as client:
        late = client.create_flow_run(which_day, state=Scheduled(scheduled_time=scheduled))
    assert run_flow(which_day, flow_run=late) == date(2022, 2, 1)
    # Started by hand (scheduled as it is made), or given its day: as before.
    before = datetime.now(UTC).date()
    assert which_day() in {before, datetime.now(UTC).date()}  # (a run across midnight)
    assert which_day(date(2021, 12, 1)) == date(2021, 12, 1)


# --- the warehouse held by another process ---------------------------------------------


def test_a_run_waits_for_the_warehouse_another_run_holds_and_completes(
    daily_state: Any, home: Home
) -> None:
    """Runs that come due together (late runs after the pool was paused over a few
    nights, a manual metrics run beside the daily one) take turns at the warehouse: the
    second to open it waits for the first, it does not fail."""
    start = datetime.now(UTC)
    with warehouse_held(home.settings.warehouse_path, seconds=4) as holder:
        state = metrics(as_of=DAY, ingest_first=False, return_state=True)
        assert holder.poll() is not None  # it held the warehouse until it was done
    assert state.is_completed(), state.message
    logs = logs_since(start)
    assert f"the warehouse is open in process {holder.pid}; waiting for it" in logs
    report = state.result()
    assert report.as_of == DAY and report.packages > 0


def test_a_run_fails_naming_the_holder_once_it_has_waited_long_enough(
    daily_state: Any, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common_flows, "WAREHOUSE_WAIT_SECONDS", 1)
    with warehouse_held(home.settings.warehouse_path) as holder:
        state = metrics(as_of=DAY, ingest_first=False, return_state=True)
    assert state.is_failed()
    assert state.message == (
        f"{home.settings.warehouse_path}: the warehouse is open in process {holder.pid} "
        "(a notebook, a duckdb shell, another rollout run?), waited for 1 s; close it or "
        "wait, then run again"
    )


# --- how a deployed run that fails ends its log ----------------------------------------


def test_a_deployed_run_failed_by_bad_input_logs_its_line_and_no_traceback(
    prefect_server: None, home: Home
) -> None:
    """A phase the plan does not have: the state's one line, and no "unexpected
    exception" with a traceback under it, which reads as a bug."""
    error, logs = run_as_deployed(phases.phase_preview, phase="top-1000")
    assert isinstance(error, BadInput)
    assert "Finished in state Failed(\"no phase 'top-1000' in plan npm-2022" in logs
    assert "unexpected exception" not in logs and "Traceback" not in logs


def test_a_deployed_run_given_a_parameter_of_the_wrong_type_logs_no_traceback(
    prefect_server: None, home: Home
) -> None:
    """``as_of`` typed in the UI as 2022-13-01: refused before the flow starts, nothing
    written, the reason in the state's message."""
    error, logs = run_as_deployed(metrics, as_of="2022-13-01", ingest_first=True)
    assert "as_of" in str(error)
    assert (
        "the run's parameters were refused, the flow did not start: Flow run received "
        "invalid parameters:\n - as_of: Input should be a valid date or datetime, month "
        "value is outside expected range of 1-12"
    ) in logs
    assert "unexpected exception" not in logs and "Traceback" not in logs


def test_a_deployed_shard_without_its_notify_run_ends_cancelled_with_no_traceback(
    prefect_server: None, home: Home
) -> None:
    error, logs = run_as_deployed(notify_flows.notify_shard)
    assert isinstance(error, ShardOrphaned)
    assert "no notify run holds the notify lock" in logs
    assert "unexpected exception" not in logs and "Traceback" not in logs


def test_a_deployed_run_failed_by_a_bug_keeps_its_traceback(prefect_server: None) -> None:
    from prefect import flow

    from flows.common import fail_on_user_error

    @flow(name="a-bug")
    @fail_on_user_error
    def a_bug() -> None:
        raise ZeroDivisionError("a bug")

    error, logs = run_as_deployed(a_bug)
    assert isinstance(error, ZeroDivisionError)
    assert "Engine execution exited with unexpected exception" in logs
    assert "ZeroDivisionError: a bug" in logs


def test_the_enforcement_artifact_says_a_count_it_could_not_take_is_not_known() -> None:
    """A run that signed out sessions with no approved preview's time to count against
    has no count of those signed in since: the artifact says so, not a blank or 0."""
    from rollout.phases.enforce import EnforceResult

    result = EnforceResult(
        "top-100", "run-1", sessions_revoked=3, sessions_signed_in_since_preview=None
    )
    approval = phases.Approval(expect=1, expect_list="0123456789ab", approved_by="rm")
    markdown = phases.enforce_markdown(result, approval)
    [row] = [line for line in markdown.splitlines() if "signed in since the preview" in line]
    assert "not known: no saved preview here" in row
