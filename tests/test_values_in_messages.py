"""A value a person chose (an option typed, a cell of a file, a setting), named in a
refusal, is named the one way: ``rollout.core.controls.quoted``, its own quotes and
backslashes escaped and its control characters shown. Python's repr, which these
messages used, switched to double quotes when the value held a ``'`` and escaped
otherwise than a terminal shows a value, so one value read differently in two
messages (docs/security.md, terminals)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.config import load_settings, prefect_api
from rollout.core.controls import quoted
from rollout.core.errors import BadInput
from rollout.core.names import safe_path_component
from rollout.core.plan import parse_plan
from rollout.core.resources import resource_dir
from rollout.phases.snoozes import read_requests
from rollout.report.spec import load_report_spec
from tests.hostile import PROSE, TERMINAL

# Values holding a quote (repr's switch to double quotes), a control character, a
# backslash, and all three.
VALUES = [*PROSE, *TERMINAL, "o'neil\x1b[2K\\x1b"]


def said(result: Any) -> str:
    """What the command wrote on stderr, as one line however the console wrapped it."""
    return " ".join(result.stderr.split())


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize(
    ("args", "before", "after"),
    [
        (["orgs", "audit", "acme", "--role", "{}"], "--role", ": use owner, admin or developer"),
        (["sample", "--scale", "{}"], "unknown scale", ": use one of"),
        (["plan", "show", "--at", "{}"], "--at:", "is not"),
        (["cohorts", "diff", "{}", "2022-01-04", "--cohort", "high-impact"], "D1:", "is not"),
        (["db", "downgrade", "{}"], "revision", "is not one of this code's migrations"),
    ],
)
def test_a_value_typed_on_the_command_line_is_named_quoted(
    rollout_home: Path, value: str, args: list[str], before: str, after: str
) -> None:
    """An option's value the command refuses (exit 2) is named as ``quoted`` names it:
    ``--role "o'neil', 'x"`` and ``--role 'x'`` no longer read in two styles."""
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0

    result = runner.invoke(app, [a.replace("{}", value) for a in args])

    assert result.exit_code == 2, result.output
    assert f"{before} {one_line(quoted(value))}{'' if after[0] == ':' else ' '}{after}" in said(
        result
    )


@pytest.mark.parametrize("value", VALUES)
def test_a_run_id_and_a_fingerprint_typed_back_are_named_quoted(
    monkeypatch: pytest.MonkeyPatch, rollout_home: Path, value: str
) -> None:
    """`rollout approve` refuses a run id or a list's fingerprint that is none, naming
    what was typed the one way."""
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    runner = CliRunner()
    run_id = "0b6c8a52-9f1e-4c47-a1d2-5b0c3e7f9a10"

    bad_id = runner.invoke(app, ["approve", value, "--expect", "3", "--expect-list", "0" * 12])
    bad_list = runner.invoke(app, ["approve", run_id, "--expect", "3", "--expect-list", value])

    assert bad_id.exit_code == 2 and bad_list.exit_code == 2
    assert f"{one_line(quoted(value))} is not a flow run id" in said(bad_id)
    assert f"--expect-list: {one_line(quoted(value))} is not a list's fingerprint" in said(bad_list)


# A cell of a file, as a YAML double-quoted string writes it: a quote, ESC, a backslash.
CELL = "o'neil\x1b[2K\\x1b"
YAML_CELL = '"o\'neil\\e[2K\\\\x1b"'
PLAN = Path(__file__).resolve().parent.parent / "plans" / "npm-2022.yaml"


def plan_problems(old: str, new: str) -> list[str]:
    text = PLAN.read_text()
    assert old in text, old
    _, problems = parse_plan(text.replace(old, new, 1), "plan.yaml")
    return [p.reason for p in problems]


def test_a_value_of_a_snooze_file_is_named_quoted(tmp_path: Path) -> None:
    """A snooze file's days or requested_at that is none, or a column of its header, is
    named the one way."""
    now = datetime(2023, 6, 1)
    requests = tmp_path / "requests.csv"
    for body, reason in [
        (f"username,days\nann,{CELL}\n", f"days must be a whole number, not {quoted(CELL)}"),
        (
            f"username,days,requested_at\nann,3,{CELL}\n",
            f"requested_at is not a time: {quoted(CELL)}",
        ),
        (f"username,days,{CELL}\nann,3,x\n", f"unknown columns: {quoted(CELL)}"),
        (f"{CELL},days\nann,3\n", "the header must name the columns username and days"),
        (
            f"username,days,{CELL},{CELL}\nann,3,x,y\n",
            f"column {quoted(CELL.casefold())} appears twice",
        ),
        (
            "username,days,requested_at\nann,3,0001-01-01T00:00:00+05:00\n",
            f"requested_at {quoted('0001-01-01T00:00:00+05:00')} is not between",
        ),
    ]:
        requests.write_text(body)
        with pytest.raises(BadInput) as refused:
            read_requests(requests, now)
        line = 1 if "column" in reason or "header" in reason else 2
        assert (refused.value.line, refused.value.reason.startswith(reason)) == (line, True), (
            refused.value.reason
        )
        if "header" in reason:
            assert refused.value.reason.endswith(f"found {quoted(CELL)}, 'days'")


def test_a_key_or_a_date_of_a_plan_is_named_quoted() -> None:
    """A plan's key written twice, or a date that is none, is named the one way."""
    twice = plan_problems(
        "    batch_size: 500\n", f"    batch_size: 500\n    {YAML_CELL}: 1\n    {YAML_CELL}: 2\n"
    )
    assert len(twice) == 1 and twice[0].startswith(f"{quoted(CELL)} appears twice"), twice
    not_a_date = plan_problems("notice_on: 2022-01-04", f"notice_on: {YAML_CELL}")
    assert [r for r in not_a_date if f"expected a date, YYYY-MM-DD, not {quoted(CELL)}" in r]
    impossible = plan_problems("notice_on: 2022-01-04", "notice_on: 2022-02-30")
    assert [r for r in impossible if r.startswith("'2022-02-30' is not a real date")]


def test_a_row_order_and_a_mart_of_the_report_definition_are_named_quoted(
    tmp_path: Path,
) -> None:
    """The report's definition (reports/adoption.yml), edited by hand: a mart's name and
    a row order it refuses are named the one way."""
    shipped = (resource_dir("reports") / "adoption.yml").read_text()
    spec = tmp_path / "adoption.yml"
    for old, new, reason in [
        (
            "  notice_reach: phase",
            f'  notice_reach: {YAML_CELL[:-1]}; drop table x"',
            f"not {quoted(CELL + '; drop table x')}",
        ),
        ("  token_readiness: cohort", f"  {YAML_CELL}: phase", f"csvs: {quoted(CELL)} is no"),
    ]:
        assert old in shipped, old
        spec.write_text(shipped.replace(old, new, 1))
        with pytest.raises(BadInput) as refused:
            load_report_spec(spec, resource_dir("sql") / "marts")
        assert reason in refused.value.reason, refused.value.reason


def test_a_name_that_cannot_be_a_file_name_is_named_quoted() -> None:
    """A name a path would be built from, refused, is named the one way."""
    with pytest.raises(BadInput) as refused:
        safe_path_component(CELL, "phase")
    assert refused.value.reason.startswith(f"phase {quoted(CELL)} cannot be used in a file name")


@pytest.mark.parametrize(
    ("environ", "said"),
    [
        ({"ROLLOUT_QUARANTINE_LIMIT": CELL}, f"ROLLOUT_QUARANTINE_LIMIT={quoted(CELL)}: "),
        ({"PREFECT_API_URL": CELL}, f"PREFECT_API_URL={quoted(CELL)}: expected an http(s) URL"),
    ],
)
def test_a_setting_s_value_is_named_quoted(environ: dict[str, str], said: str) -> None:
    """A setting's value refused (a ``ROLLOUT_*`` variable, ``PREFECT_API_URL``) is
    named the one way."""
    with pytest.raises(BadInput) as refused:
        if "PREFECT_API_URL" in environ:
            prefect_api(environ)
        else:
            load_settings(environ)
    assert said in str(refused.value)
