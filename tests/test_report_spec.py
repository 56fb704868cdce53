"""The report's definition lives in reports/adoption.yml (and the marts' columns in
sql/marts/<mart>.yml): an analyst's edit there changes the report, and a definition
that does not hold together is refused naming the file, the line and why."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from rollout.core.errors import BadInput
from rollout.core.plan import Plan
from rollout.core.resources import resource_dir
from rollout.report import reporting
from rollout.report.spec import load_report_spec, report_spec
from tests.support.reports import run_report

SHIPPED = resource_dir("reports") / "adoption.yml"
MARTS_DIR = resource_dir("sql") / "marts"


@pytest.fixture
def spec_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "adoption.yml"
    shutil.copy(SHIPPED, copy)
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def _line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_the_shipped_definition_takes_each_mart_s_columns_from_its_model_file() -> None:
    spec = report_spec()
    for mart, columns in spec.marts.items():
        model = yaml.safe_load((MARTS_DIR / f"{mart}.yml").read_text())
        assert columns == tuple(model["columns"]), mart
    assert spec.marts["time_to_comply"] == ("phase", "days_after_notice", "accounts")
    assert ("enforced", "enforced (2FA required)") in spec.funnel_stages
    assert all(m in spec.marts["brownout_impact"] for m, _ in spec.brownout_measures)


def test_an_edited_label_and_size_change_the_report(
    tmp_path: Path, plan: Plan, spec_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _edit(spec_copy, "  logins: Logins", "  logins: Sign-ins during the window")
    _edit(spec_copy, "top_orgs: 20", "top_orgs: 2")
    edited = load_report_spec(spec_copy, MARTS_DIR)
    monkeypatch.setattr(reporting, "report_spec", lambda: edited)
    report = run_report(tmp_path / "out", plan)
    html = report.html.read_text()
    assert '<th scope="col" class="num">Sign-ins during the window</th>' in html
    assert '<th scope="col" class="num">Logins</th>' not in html
    assert "The 2 largest orgs by members" in html


@pytest.mark.parametrize(
    ("old", "new", "marker", "reason"),
    [
        ("top_orgs: 20", "top_orgz: 20", "top_orgz", "top_orgz: Extra inputs are not permitted"),
        ("top_orgs: 20", "top_orgs: many", "top_orgs", "top_orgs: Input should be a valid"),
        (
            "  elv_failed: ELV failed",
            "  elv_faild: ELV failed",
            "elv_faild",
            "brownout_measures: elv_faild is no column of brownout_impact",
        ),
        (
            "  notified: notified",
            "  notifed: notified",
            "notifed",
            "funnel_stages: notifed is no column of compliance_funnel",
        ),
        (
            "  token_readiness: cohort",
            "  token_readyness: cohort",
            "token_readyness",
            "csvs: token_readyness has no model file",
        ),
        (
            "  ledger_activity: day, activity",
            "  ledger_activity: [day",
            "ledger_activity",
            "not valid YAML",
        ),
        (
            "  notice_reach: phase",
            "  notice_reach: phase; drop table adoption_daily",
            "notice_reach",
            "csvs: notice_reach: a row order is one `order by` list",
        ),
        (
            "  token_readiness: cohort",
            "  ../intermediate/int_funnel_accounts: phase",
            "../intermediate/int_funnel_accounts",
            "csvs: '../intermediate/int_funnel_accounts' is no mart's name",
        ),
    ],
    ids=[
        "unknown-key",
        "not-a-number",
        "no-such-measure",
        "no-such-stage",
        "no-model",
        "yaml",
        "second-statement",
        "path-as-mart",
    ],
)
def test_a_broken_definition_is_refused_naming_file_line_and_reason(
    spec_copy: Path, old: str, new: str, marker: str, reason: str
) -> None:
    _edit(spec_copy, old, new)
    line = _line_of(spec_copy, marker)
    with pytest.raises(BadInput) as refused:
        load_report_spec(spec_copy, MARTS_DIR)
    message = str(refused.value)
    assert message.startswith(f"{spec_copy}:"), message
    assert reason in message
    reported = int(message.split(":")[1])
    if reason == "not valid YAML":  # found where the parser stops, named where it began
        assert reported > line and f"began on line {line})" in message, message
    else:
        assert reported == line, message


def test_a_stage_list_without_its_mart_is_refused(spec_copy: Path) -> None:
    _edit(spec_copy, "  compliance_funnel: notice_on, phase\n", "")
    with pytest.raises(BadInput, match=r"funnel_stages needs compliance_funnel under csvs"):
        load_report_spec(spec_copy, MARTS_DIR)


@pytest.mark.parametrize("mart", ["notice_reach", "adoption_daily", "publishes_daily"])
def test_a_row_order_that_does_not_run_on_its_mart_is_refused_at_its_line(
    tmp_path: Path, plan: Plan, spec_copy: Path, monkeypatch: pytest.MonkeyPatch, mart: str
) -> None:
    """A misspelt column in a mart's row order was a DuckDB traceback (exit 1) from the
    middle of the report; it is the definition's line, and no report file is written."""
    line = _line_of(spec_copy, f"  {mart}: ")
    text = spec_copy.read_text().splitlines()
    text[line - 1] = f"  {mart}: no_such_column, day"
    spec_copy.write_text("\n".join(text) + "\n")
    edited = load_report_spec(spec_copy, MARTS_DIR)
    monkeypatch.setattr(reporting, "report_spec", lambda: edited)
    with pytest.raises(BadInput) as refused:
        run_report(tmp_path / "out", plan)
    message = str(refused.value)
    assert message.startswith(f"{spec_copy}:{line}: csvs: {mart}: the row order"), message
    assert "no_such_column" in message
    assert not (tmp_path / "out" / "reports").exists()
