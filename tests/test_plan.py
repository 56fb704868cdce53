"""The plan file: the reference plan is valid; every mistake names its line."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pytest

from rollout.errors import BadInput
from rollout.plan import load_plan, parse_plan

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "plans" / "npm-2022.yaml"


def problems_in(text: str) -> list[tuple[int | None, str]]:
    _, problems = parse_plan(text, "plan.yaml")
    return [(p.line, p.reason) for p in problems]


def edited(old: str, new: str) -> str:
    text = REFERENCE.read_text()
    assert old in text, old
    return text.replace(old, new, 1)


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_the_reference_plan_encodes_the_npm_program() -> None:
    plan = load_plan(REFERENCE)
    assert plan.cohorts["top-100"].top_by_dependents == 100
    assert plan.cohorts["high-impact"].weekly_downloads_gt == 1_000_000
    assert plan.cohorts["high-impact"].dependents_gte == 500
    assert plan.elv.trial is not None
    assert (plan.elv.trial.starts, plan.elv.trial.ends) == (date(2021, 12, 7), date(2022, 1, 4))
    assert plan.elv.enroll_all_on == date(2022, 3, 1)
    assert [(b.starts_at, b.ends_at) for b in plan.brownouts] == [
        (datetime(2022, 2, 16), datetime(2022, 2, 17)),
        (datetime(2022, 2, 23), datetime(2022, 2, 24)),
    ]
    assert [p.name for p in plan.phases] == ["top-100", "high-impact"]
    assert plan_problems_of(REFERENCE) == []


def plan_problems_of(path: Path) -> list[tuple[int | None, str]]:
    return problems_in(path.read_text())


def test_dates_out_of_order() -> None:
    text = edited("    enforce_on: 2022-02-01", "    enforce_on: 2022-01-04")
    line = line_of(text, "enforce_on: 2022-01-04")
    assert (line, "phases.0.enforce_on: enforcement is not after the notice (notice_on)") in (
        problems_in(text)
    )


def test_unknown_cohort() -> None:
    text = edited("    cohort: high-impact", "    cohort: high-impakt")
    assert problems_in(text) == [
        (
            line_of(text, "cohort: high-impakt"),
            "phases.1.cohort: unknown cohort 'high-impakt' (cohorts: top-100, high-impact)",
        )
    ]


def test_overlapping_brownouts() -> None:
    text = edited("starts_at: 2022-02-23T00:00:00", "starts_at: 2022-02-16T12:00:00")
    assert problems_in(text) == [
        (
            line_of(text, "starts_at: 2022-02-16T12:00:00"),
            "brownouts.1.starts_at: brown-out brownout-2 overlaps brownout-1 "
            "(2022-02-16 00:00 + 24 h)",
        )
    ]


def test_missing_field() -> None:
    text = edited("    max_accounts: 1000\n", "")
    assert problems_in(text) == [
        (line_of(text, "- name: top-100"), "phases.0.max_accounts: required field is missing")
    ]


def test_unknown_field_is_a_typo() -> None:
    text = edited("    batch_size: 500", "    batch_sise: 500")
    assert (line_of(text, "batch_sise"), "phases.0.batch_sise: unknown field (a typo?)") in (
        problems_in(text)
    )


def test_a_cohort_needs_a_criterion() -> None:
    text = edited("    top_by_dependents: 100\n", "")
    [(line, reason)] = problems_in(text)
    assert line == line_of(text, "  top-100:")
    assert "needs at least one of" in reason


def test_load_plan_raises_the_first_problem_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "next.yaml"
    path.write_text(edited("    cohort: high-impact", "    cohort: nobody"))
    with pytest.raises(BadInput, match=rf"^{path}:\d+: phases\.1\.cohort: unknown cohort"):
        load_plan(path)


def test_broken_yaml_names_the_line() -> None:
    [(line, reason)] = problems_in("name: x\ncohorts: [\n")
    assert line == 3 and reason.startswith("not valid YAML: ")
