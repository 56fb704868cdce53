"""The plan file: the reference plan is valid; every mistake names its line."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from rollout.core import plan as plan_module
from rollout.core.errors import BadInput
from rollout.core.plan import (
    CohortRule,
    EmailName,
    Phase,
    RepeatableEmail,
    Requirements,
    load_plan,
    parse_plan,
    plan_warnings,
)
from rollout.notify.emails import EMAILS

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
            "(2022-02-16 00:00 UTC + 24 h)",
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


# --- input that used to crash or pass silently -----------------------------------------


def test_an_impossible_date_names_its_line_instead_of_crashing(tmp_path: Path) -> None:
    text = edited("    notice_on: 2022-01-04", "    notice_on: 2022-02-30")
    assert problems_in(text) == [
        (
            line_of(text, "notice_on: 2022-02-30"),
            "'2022-02-30' is not a real date or time: day is out of range for month",
        )
    ]
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(BadInput, match=rf"^{path}:{line_of(text, '2022-02-30')}: '2022-02-30'"):
        load_plan(path)


def test_brownout_times_with_and_without_offsets_are_all_naive_utc() -> None:
    text = edited("starts_at: 2022-02-23T00:00:00", "starts_at: 2022-02-23T02:00:00+02:00")
    plan, problems = parse_plan(text, "plan.yaml")
    assert problems == [] and plan is not None
    assert [(b.starts_at, b.ends_at) for b in plan.brownouts] == [
        (datetime(2022, 2, 16), datetime(2022, 2, 17)),
        (datetime(2022, 2, 23), datetime(2022, 2, 24)),
    ]
    assert all(b.starts_at.tzinfo is None for b in plan.brownouts)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("starts_at: 2022-02-16T00:00:00", "starts_at: '20220216'", "a time"),
        ("starts_at: 2022-02-16T00:00:00", 'starts_at: "1645000000"', "a time"),
        ("starts_at: 2022-02-16T00:00:00", "starts_at: ' 1645000000.5 '", "a time"),
        ("enroll_all_on: 2022-03-01", "enroll_all_on: '1646092800'", "a date"),
        ("enroll_all_on: 2022-03-01", "enroll_all_on: '20220301'", "a date"),
    ],
)
def test_a_date_or_time_quoted_as_digits_is_refused_not_read_as_seconds_since_1970(
    old: str, new: str, expected: str
) -> None:
    """A templated plan (`starts_at: "${DAY}"`) quoted a day in digits: pydantic read
    '20220216' as seconds since 1970 (a brown-out on 1970-08-23, enrolment on the day
    the digits happened to count), as it would the number unquoted, which is refused."""
    text = edited(old, new)
    problems = problems_in(text)
    assert len(problems) == 1, problems
    line, reason = problems[0]
    assert line == line_of(text, new.strip())
    assert f"expected {expected}" in reason and "not a number" in reason


@pytest.mark.parametrize("written", ["2022-02-16", "'2022-02-16'", "' 2022-02-16 '"])
def test_a_brownout_start_given_as_a_day_without_a_time_is_refused_at_its_line(
    written: str,
) -> None:
    """docs/plans.md: times are YYYY-MM-DDTHH:MM:SS. A day alone was taken as its
    midnight UTC, which a release manager meaning the day's start at home did not say
    (as a day given with a time is refused, not read as its calendar day)."""
    new = f"starts_at: {written}"
    text = edited("starts_at: 2022-02-16T00:00:00", new)
    problems = problems_in(text)
    assert len(problems) == 1, problems
    line, reason = problems[0]
    assert line == line_of(text, new)
    assert reason == (
        "brownouts.0.starts_at: expected a time, YYYY-MM-DDTHH:MM:SS (UTC, or with an "
        "offset), not a day (2022-02-16): write 2022-02-16T00:00:00 for its midnight UTC"
    )


@pytest.mark.parametrize(
    "written",
    [
        "2022-03-01T00:00:00-08:00",  # 08:00 UTC on the day: taken as the day
        "2022-03-01T00:00:00+05:00",  # 19:00 UTC the day before: taken as 2022-03-01
        "2022-03-01T00:00:00Z",
        "2022-03-01 00:00:00",
        "'2022-03-01T00:00:00+05:00'",
        "'2022-03-01T00:00'",
        "' 2022-03-01'",
    ],
)
@pytest.mark.parametrize(
    "field", ["enroll_all_on: 2022-03-01", "notice_on: 2022-01-04", "starts: 2021-12-07"]
)
def test_a_date_given_as_a_time_or_with_an_offset_is_refused_at_its_line(
    field: str, written: str
) -> None:
    """A plan's dates are days: a midnight with an offset was read as its calendar day,
    whatever instant that was in UTC (the previous day, at +05:00), silently."""
    key = field.split(":")[0]
    text = edited(field, f"{key}: {written}")
    problems = problems_in(text)
    assert len(problems) == 1, problems
    line, reason = problems[0]
    assert line == line_of(text, f"{key}: {written}")
    assert f"{key}: expected a date, YYYY-MM-DD, not " in reason


def test_overlap_is_judged_in_utc_whatever_the_offsets() -> None:
    # 23:00 at UTC-01:00 is midnight UTC: brownout-1 (00:00 + 24 h) has just ended.
    touching = edited("starts_at: 2022-02-23T00:00:00", "starts_at: 2022-02-16T23:00:00-01:00")
    assert problems_in(touching) == []
    overlapping = edited("starts_at: 2022-02-23T00:00:00", "starts_at: 2022-02-16T22:00:00-01:00")
    assert problems_in(overlapping) == [
        (
            line_of(overlapping, "2022-02-16T22:00:00-01:00"),
            "brownouts.1.starts_at: brown-out brownout-2 overlaps brownout-1 "
            "(2022-02-16 00:00 UTC + 24 h)",
        )
    ]


def test_a_repeated_key_names_the_line_of_the_repeat() -> None:
    text = edited("    batch_size: 500\n", "    batch_size: 500\n    batch_size: 5000\n")
    assert problems_in(text) == [
        (
            line_of(text, "batch_size: 5000"),
            f"'batch_size' appears twice in one mapping (first on line "
            f"{line_of(text, 'batch_size: 500')})",
        )
    ]


@pytest.mark.parametrize("hours", ["1:30", "0x18", "1_2:00"])
def test_a_number_yaml_1_1_would_read_otherwise_is_refused_by_line(hours: str) -> None:
    """PyYAML reads `1:30` as base 60: a 90-hour brown-out from a plan that meant 1.5."""
    text = edited("hours: 24", f"hours: {hours}")
    assert problems_in(text) == [
        (line_of(text, f"hours: {hours}"), "brownouts.0.hours: Input should be a valid integer")
    ]


@pytest.mark.parametrize(
    ("before", "after", "tag"),
    [
        ("hours: 24", "hours: !!int 0x18", "!!int"),  # was a bare ValueError, a traceback
        ("name: npm-2022", "name: !!binary bnBtLTIwMjI=", "!!binary"),  # was the name, decoded
        ("hours: 24", "hours: !!float 24", "!!float"),
        ("hours: 24", "hours: !custom 24", "!custom"),
    ],
)
def test_an_explicit_yaml_tag_is_refused_by_line(before: str, after: str, tag: str) -> None:
    text = edited(before, after)
    assert problems_in(text) == [
        (
            line_of(text, after),
            f"the YAML tag {tag} is not part of a plan (write the value plainly)",
        )
    ]


def test_a_value_tagged_as_text_is_text() -> None:
    plan, problems = parse_plan(edited("name: npm-2022", "name: !!str npm-2022"), "plan.yaml")
    assert problems == [] and plan is not None and plan.name == "npm-2022"


def test_numbers_read_as_decimals() -> None:
    """A leading zero is not octal (YAML 1.1: 010 is 8); `_` may group digits."""
    text = edited("hours: 24", "hours: 010").replace("batch_size: 500", "batch_size: 1_000")
    plan, problems = parse_plan(text, "plan.yaml")
    assert problems == [] and plan is not None
    assert plan.brownouts[0].hours == 10
    assert {phase.batch_size for phase in plan.phases} >= {1000}


def test_a_control_character_in_a_plan_names_its_line() -> None:
    text = edited("hours: 24", "hours: 2\x004")
    assert problems_in(text) == [
        (
            line_of(text, "hours: 2"),
            "not valid YAML: character '\\x00' is not allowed in a plan",
        )
    ]


def test_a_repeated_cohort_is_refused_too() -> None:
    text = edited("  high-impact:\n", "  top-100:\n")
    [(line, reason)] = problems_in(text)
    assert line == line_of(text, "description: maintainers of packages with more") - 1
    assert reason.startswith("'top-100' appears twice")


def test_a_yaml_merge_key_is_not_a_repeat() -> None:
    text = edited(
        "  top-100:\n    description:",
        "  base: &base\n    top_by_dependents: 5\n  top-5:\n    <<: *base\n"
        "    top_by_dependents: 6\n  top-100:\n    description:",
    )
    plan, problems = parse_plan(text, "plan.yaml")
    assert problems == [] and plan is not None
    assert plan.cohorts["top-5"].top_by_dependents == 6


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("reminder: 7", "reminder: -7", "notifications.repeat_days.reminder"),
        ("reminder: 7", "reminder: 0", "notifications.repeat_days.reminder"),
        ("reminder: 7", "reminderr: 7", "notifications.repeat_days.reminderr"),
        ("weekly_window_days: 7", "weekly_window_days: 0", "metrics.weekly_window_days"),
        ("monthly_window_days: 30", "monthly_window_days: -30", "metrics.monthly_window_days"),
        ("top_by_dependents: 100", "top_by_dependents: 0", "cohorts.top-100.top_by_dependents"),
        ("top_by_dependents: 100", "top_by_dependents: true", "cohorts.top-100.top_by_dependents"),
        (
            "weekly_downloads_gt: 1000000",
            "weekly_downloads_gt: -1",
            "cohorts.high-impact.weekly_downloads_gt",
        ),
        ("dependents_gte: 500", "dependents_gte: 0", "cohorts.high-impact.dependents_gte"),
        (
            "dependents_gte: 500",
            "downloads_gt: {count: 10, days: 0}",
            "cohorts.high-impact.downloads_gt.days",
        ),
        (
            "dependents_gte: 500",
            "downloads_gt: {count: 10, days: 30, total: true}",
            "cohorts.high-impact.downloads_gt",
        ),
        ("dependents_gte: 500", "downloads_gt: {count: 10}", "cohorts.high-impact.downloads_gt"),
        (
            "dependents_gte: 500",
            "downloads_gt: {count: -1, total: true}",
            "cohorts.high-impact.downloads_gt.count",
        ),
        (
            "dependents_gte: 500",
            "top_share_by_downloads: {share: 0, days: 180}",
            "cohorts.high-impact.top_share_by_downloads.share",
        ),
        (
            "dependents_gte: 500",
            "top_share_by_downloads: {share: 1.5, days: 180}",
            "cohorts.high-impact.top_share_by_downloads.share",
        ),
        (
            "dependents_gte: 500",
            "top_share_by_downloads: {share: true, days: 180}",
            "cohorts.high-impact.top_share_by_downloads.share",
        ),
        (
            "dependents_gte: 500",
            "top_share_by_downloads: {share: '0.01', days: 180}",
            "cohorts.high-impact.top_share_by_downloads.share",
        ),
        (
            "dependents_gte: 500",
            "top_share_by_downloads: {share: 0.01}",
            "cohorts.high-impact.top_share_by_downloads.days",
        ),
        ("dependents_gte: 500", "every_maintainer: yes please", "cohorts.high-impact"),
        (
            "  heads_up_days_before: 7",
            "  heads_up_days_before: -7",
            "elv.heads_up_days_before",
        ),
        ("    hours: 24", "    hours: 0", "brownouts.0.hours"),
        ("    hours: 24", "    hours: 1.5", "brownouts.0.hours"),
        ("    heads_up_days_before: 3", "    heads_up_days_before: -3", "brownouts.0"),
        # Due on the day it announces, its last day the one before: never sent.
        ("    heads_up_days_before: 3", "    heads_up_days_before: 0", "brownouts.0"),
        ("  heads_up_days_before: 7", "  heads_up_days_before: 0", "elv.heads_up_days_before"),
        ("    batch_size: 500", "    batch_size: 0", "phases.0.batch_size"),
        ("    batch_size: 500", "    batch_size: '500'", "phases.0.batch_size"),
        ("    max_accounts: 1000", "    max_accounts: -1", "phases.0.max_accounts"),
        ("reminders_days_before: [14, 3]", "reminders_days_before: [14, true]", "phases.0"),
        ("enroll_all_on: 2022-03-01", "enroll_all_on: 20220301", "elv.enroll_all_on"),
        ("starts_at: 2022-02-16T00:00:00", "starts_at: 1645000000", "brownouts.0.starts_at"),
        ("  - name: top-100", "  - name: ../../x", "phases.0.name"),
        ("  - name: top-100", "  - name: .hidden", "phases.0.name"),
        ("    cohort: top-100", "    cohort: top/100", "phases.0.cohort"),
        ("  top-100:\n", "  ../top-100:\n", "cohorts.../top-100"),
        ("  - name: brownout-1", "  - name: a/b", "brownouts.0.name"),
        ("name: npm-2022", "name: npm 2022", "name"),
        (
            "from_name: Registry security",
            'from_name: "Security\\nBcc: x@y.z"',
            "notifications.from_name",
        ),
        ("release_managers: []", "release_managers: ['']", "notifications.release_managers.0"),
        ("report_url: https://", "report_url: javascript://", "notifications.report_url"),
        # What a terminal or a mail reader acts on, never seen in the plan as written: a
        # right-to-left override (the From name every email shows read reversed), a C1
        # control, a line separator, ESC in a link every email carries.
        (
            "from_name: Registry security",
            r'from_name: "Registry \u202eytiruces"',
            "notifications.from_name",
        ),
        (
            "from_name: Registry security",
            r'from_name: "Registry\x85security"',
            "notifications.from_name",
        ),
        (
            "release_managers: []",
            r'release_managers: ["rita\u2028"]',
            "notifications.release_managers.0",
        ),
        (
            "report_url: https://rollout.registry.example/reports",
            r'report_url: "https://rollout.example/\x1b[2Kreports"',
            "notifications.report_url",
        ),
        (
            "report_url: https://rollout.registry.example/reports",
            r'report_url: "https://rollout.example/\u202ereports"',
            "notifications.report_url",
        ),
    ],
)
def test_every_plan_field_refuses_what_it_cannot_mean(old: str, new: str, where: str) -> None:
    text = edited(old, new)
    problems = problems_in(text)
    assert problems, f"{new!r} was accepted"
    line, reason = problems[0]
    assert reason.startswith(where)
    assert line == line_of(text, new.strip())


@pytest.mark.parametrize(
    ("orgs", "reason"),
    [
        (
            "[]",
            "cohorts.high-impact.orgs: orgs names no org: an empty list would let every "
            "account in; name at least one org, or leave orgs out",
        ),
        ("[corp, corp-labs, corp]", "cohorts.high-impact.orgs: org 'corp' is listed twice"),
    ],
)
def test_an_org_filter_names_each_org_once_and_at_least_one(orgs: str, reason: str) -> None:
    """`orgs: []` read as no filter at all: a cohort meant for an org's members took in
    every maintainer of its packages (a templated list that came out empty widened it)."""
    text = edited("    dependents_gte: 500\n", f"    dependents_gte: 500\n    orgs: {orgs}\n")
    assert problems_in(text) == [(line_of(text, f"orgs: {orgs}"), reason)]


def test_an_activity_filter_names_each_activity_once() -> None:
    """`by: [published, published]` was taken, and the emails told the cohort as
    maintainers "who published or published in the last 365 days"."""
    by = "{days: 365, by: [published, published]}"
    text = edited(
        "    dependents_gte: 500\n", f"    dependents_gte: 500\n    active_within: {by}\n"
    )
    assert problems_in(text) == [
        (
            line_of(text, f"active_within: {by}"),
            "cohorts.high-impact.active_within.by: activity 'published' is listed twice",
        )
    ]


@pytest.mark.parametrize("value", ["true", "'0.5'", "1.5"])
def test_the_reach_guard_s_share_is_a_number_from_0_to_1(value: str) -> None:
    """`max_unreached_share: true` meant "turn the guard on" and read as 1.0, a guard
    that never refuses: a share is a number, as every number of a plan is strict."""
    text = edited(
        "    max_accounts: 1000", f"    max_accounts: 1000\n    max_unreached_share: {value}"
    )
    problems = problems_in(text)
    assert problems, f"max_unreached_share: {value} was accepted"
    line, reason = problems[0]
    assert reason.startswith("phases.0.max_unreached_share")
    assert line == line_of(text, f"max_unreached_share: {value}")
    assert (
        problems_in(
            edited("    max_accounts: 1000", "    max_accounts: 1000\n    max_unreached_share: 1")
        )
        == []
    )


@pytest.mark.parametrize(("weekly", "monthly"), [(60, 30), (8, 7)])
def test_a_weekly_window_longer_than_the_monthly_is_refused_at_its_line(
    weekly: int, monthly: int
) -> None:
    # The weekly downloads are summed inside the monthly window: 60 "weekly" days
    # counted the 30 monthly ones alone, and cohorts were built on that.
    text = edited("weekly_window_days: 7", f"weekly_window_days: {weekly}")
    text = text.replace("monthly_window_days: 30", f"monthly_window_days: {monthly}", 1)
    assert problems_in(text) == [
        (
            line_of(text, f"weekly_window_days: {weekly}"),
            f"metrics.weekly_window_days: the weekly window ({weekly} days) is longer than "
            f"the monthly one ({monthly} days)",
        )
    ]


def test_every_plan_model_refuses_unknown_fields() -> None:
    models = [
        value
        for value in vars(plan_module).values()
        if isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel
    ]
    assert len(models) >= 10
    assert {m.__name__ for m in models if m.model_config.get("extra") != "forbid"} == set()


def test_repeat_days_knows_exactly_the_emails_there_are() -> None:
    assert set(get_args(EmailName)) == set(EMAILS)
    assert set(get_args(RepeatableEmail)) < set(EMAILS)


@pytest.mark.parametrize("email", sorted(set(get_args(EmailName)) - set(get_args(RepeatableEmail))))
def test_a_repeat_window_on_an_email_that_must_go_is_refused_at_its_line(email: str) -> None:
    """`repeat_days: {phase_notice: 7}` held back the notice of a second phase to an
    account noticed by a first within the week: in a phase with per-account deadlines
    that account never got a deadline (never enforced), in another it was enforced
    without a notice. Only recurring warnings may be held back."""
    text = edited("    reminder: 7", f"    reminder: 7\n    {email}: 7")
    problems = problems_in(text)
    assert problems, f"repeat_days: {{{email}: 7}} was accepted"
    line, reason = problems[0]
    assert reason.startswith(f"notifications.repeat_days.{email}")
    assert line == line_of(text, f"{email}: 7")


def test_a_plan_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"name: x\ndescription: caf\xe9\n")
    with pytest.raises(BadInput, match=rf"^{path}:2: not UTF-8 text"):
        load_plan(path)


def test_a_brownout_may_not_take_the_name_of_elv_s_own_steps() -> None:
    # Its heads-up step would be "heads-up elv", the ELV enrolment notice's key.
    text = edited("- name: brownout-1", "- name: elv")
    assert (
        line_of(text, "- name: elv"),
        "brownouts.0.name: brown-out name 'elv' is taken by ELV's own steps and emails",
    ) in problems_in(text)


def test_a_reminder_day_listed_twice_is_refused() -> None:
    text = edited("reminders_days_before: [14, 3]", "reminders_days_before: [14, 3, 14]")
    assert any(
        reason == "phases.0.reminders_days_before.2: a reminder 14 days before enforcement "
        "is listed twice"
        for _, reason in problems_in(text)
    )


def test_the_download_rules_of_other_registries_parse() -> None:
    text = edited(
        "  top-100:\n    description: maintainers of the 100 packages with the most dependents\n"
        "    top_by_dependents: 100\n",
        "  top-100:\n    top_share_by_downloads: {share: 0.01, days: 180}\n"
        "  gems:\n    downloads_gt: {count: 180000000, total: true}\n"
        "  everyone:\n    every_maintainer: true\n",
    )
    plan, problems = parse_plan(text, "plan.yaml")
    assert problems == [] and plan is not None
    assert plan.cohorts["top-100"].download_window_days() == 180
    assert plan.cohorts["gems"].downloads_gt is not None
    assert plan.cohorts["gems"].download_window_days() is None
    assert plan.cohorts["everyone"].every_maintainer


def test_a_plan_nested_thousands_of_levels_deep_is_refused_at_its_line(tmp_path: Path) -> None:
    # PyYAML composes a node by recursion: 5000 levels were a RecursionError.
    assert problems_in("a: " + "[" * 5000 + "]" * 5000) == [
        (1, "nested more than 50 levels deep (a plan needs a few)")
    ]
    block = "a:\n" + "".join("  " * depth + "-\n" for depth in range(3000))
    assert problems_in(block) == [(51, "nested more than 50 levels deep (a plan needs a few)")]
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "{x: " * 5000 + "}" * 5000)
    with pytest.raises(BadInput, match=rf"^{path}:1: nested more than 50 levels deep"):
        load_plan(path)


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        # Brown-out ends and heads-ups overflowed in `plan show` and `notify queue`.
        (
            "starts_at: 2022-02-23T00:00:00",
            "starts_at: 9999-12-31T23:00:00",
            "brownouts.1.starts_at",
        ),
        # In range as written, past it once in UTC; and past Python's last year.
        (
            "starts_at: 2022-02-23T00:00:00",
            "starts_at: 2199-12-31T23:00:00-05:00",
            "brownouts.1.starts_at",
        ),
        (
            "starts_at: 2022-02-23T00:00:00",
            "starts_at: 9999-12-31T23:00:00-05:00",
            "brownouts.1.starts_at",
        ),
        (
            "starts_at: 2022-02-16T00:00:00",
            "starts_at: 1969-12-31T23:59:59",
            "brownouts.0.starts_at",
        ),
        # Reminders before it overflowed in plan_problems, so `plan check` itself crashed.
        ("    enforce_on: 2022-02-01", "    enforce_on: 0001-01-01", "phases.0.enforce_on"),
        ("    enforce_on: 2022-05-03", "    enforce_on: 9999-12-31", "phases.1.enforce_on"),
        ("    notice_on: 2022-01-04", "    notice_on: 2200-01-01", "phases.0.notice_on"),
        ("cohort_as_of: 2022-01-03", "cohort_as_of: 1969-12-31", "phases.0.cohort_as_of"),
        ("enroll_all_on: 2022-03-01", "enroll_all_on: 9999-12-31", "elv.enroll_all_on"),
        ("    starts: 2021-12-07", "    starts: 0001-01-01", "elv.trial.starts"),
    ],
)
def test_a_plan_date_beyond_the_supported_years_is_refused_at_its_line(
    old: str, new: str, where: str
) -> None:
    text = edited(old, new)
    problems = problems_in(text)
    assert problems, f"{new!r} was accepted"
    line, reason = problems[0]
    assert line == line_of(text, new.strip())
    assert reason.startswith(f"{where}: ")
    assert "is out of range" in reason and "between 1970-01-01 and 2199-12-31" in reason


def test_the_first_and_last_supported_days_make_a_valid_plan_and_calendar() -> None:
    from rollout.core.calendar import plan_calendar

    text = edited(
        "    starts: 2021-12-07\n    ends: 2022-01-04",
        "    starts: 1970-01-01\n    ends: 1970-01-02",
    )
    # ELV for all on the last day, a brown-out (which must come before it) ending then.
    text = text.replace("enroll_all_on: 2022-03-01", "enroll_all_on: 2199-12-31")
    text = text.replace("starts_at: 2022-02-23T00:00:00", "starts_at: 2199-12-30T23:00:00")
    plan, problems = parse_plan(text, "plan.yaml")
    assert problems == [] and plan is not None
    assert plan.brownouts[1].ends_at == datetime(2199, 12, 31, 23)
    steps = plan_calendar(plan)
    assert (steps[0].on, steps[-1].on) == (date(1970, 1, 1), date(2199, 12, 31))


@pytest.mark.parametrize("days", [1_000_000, 1_000_000_000_000, -1_000_000_000_000])
def test_a_reminder_too_many_days_before_enforcement_is_refused_not_an_overflow(
    days: int,
) -> None:
    text = edited("reminders_days_before: [14, 3]", f"reminders_days_before: [14, {days}]")
    assert (
        line_of(text, f"reminders_days_before: [14, {days}]"),
        f"phases.0.reminders_days_before.1: a reminder {days:,} days before enforcement "
        "is not between the notice and enforcement",
    ) in problems_in(text)
    # One that has a day still names it.
    text = edited("reminders_days_before: [14, 3]", "reminders_days_before: [14, 40]")
    assert any(
        reason.endswith(
            "a reminder 40 days before enforcement (2021-12-23) is not between "
            "the notice and enforcement"
        )
        for _, reason in problems_in(text)
    )


def warnings_in(text: str) -> list[str]:
    plan, problems = parse_plan(text, "plan.yaml")
    assert plan is not None and problems == []
    return plan_warnings(plan)


def test_the_shipped_plans_draw_no_warning() -> None:
    for path in sorted((ROOT / "plans").glob("*.yaml")):
        assert warnings_in(path.read_text()) == [], path.name


def test_a_cohort_no_phase_names_is_a_warning() -> None:
    text = edited("    cohort: high-impact", "    cohort: top-100")
    assert warnings_in(text) == [
        "cohort high-impact is named by no phase: it is built and reported, but nobody in "
        "it is warned or enforced"
    ]


def test_two_phases_on_one_cohort_on_the_same_days_are_a_warning() -> None:
    """Both mail each maintainer the same day; the same cohort on other days (a notice
    shared, enforcement apart: npm's 2025 token phases) is a plan's own business."""
    text = REFERENCE.read_text()
    text = text.replace("    cohort: high-impact", "    cohort: top-100")
    high_impact = text[text.index("  - name: high-impact") :]
    top_100 = text[text.index("  - name: top-100") : text.index("  - name: high-impact")]
    same_days = top_100.replace("name: top-100", "name: top-100-again")
    text = text.replace(
        high_impact, same_days + high_impact.replace("cohort: top-100", "cohort: high-impact")
    )
    assert warnings_in(text) == [
        "phases top-100 and top-100-again warn and enforce cohort top-100 on the same days "
        "(2022-01-04, 2022-02-01): its maintainers get two notices and two enforcements "
        "(one phase can have both phases' effects)"
    ]


@pytest.mark.parametrize(
    ("rule", "said"),
    [
        (
            {"top_by_dependents": 100},
            "maintainers of packages that are among the 100 with the most dependents",
        ),
        (
            {"weekly_downloads_gt": 1_000_000, "dependents_gte": 500},
            "maintainers of packages that have more than 1,000,000 weekly downloads "
            "or have 500 or more dependents",
        ),
        (
            {"downloads_gt": {"count": 165_000_000, "total": True}},
            "maintainers of packages that have more than 165,000,000 downloads in all",
        ),
        (
            {"top_share_by_downloads": {"share": 0.01, "days": 180}},
            "maintainers of packages that are in the top 1% by downloads over 180 days",
        ),
        # As people write a share: not 1e-05, nor a float's 7.000000000000001.
        (
            {"top_share_by_downloads": {"share": 1e-07, "days": 30}},
            "maintainers of packages that are in the top 0.00001% by downloads over 30 days",
        ),
        (
            {"top_share_by_downloads": {"share": 0.07, "days": 1}},
            "maintainers of packages that are in the top 7% by downloads over 1 day",
        ),
        (
            {"every_maintainer": True, "active_within": {"days": 365, "by": ["published"]}},
            "maintainers of packages on the registry who published in the last 365 days",
        ),
        (
            {"every_maintainer": True, "orgs": ["acme"]},
            "maintainers of packages on the registry in the org acme",
        ),
        ({"every_maintainer": True, "description": "everyone here"}, "everyone here"),
    ],
)
def test_a_cohort_is_told_in_words_by_its_description_or_else_its_rule(
    rule: dict[str, object], said: str
) -> None:
    assert CohortRule.model_validate(rule).in_words() == said


@pytest.mark.parametrize("starts_at", ["2022-02-23T00:00:00", "2022-02-24T10:00:00+02:00"])
def test_a_brownout_on_or_after_elv_for_all_is_refused_at_its_line(starts_at: str) -> None:
    # ELV for everyone from 2022-02-23: brownout-2 that day (or after) would change no
    # login, while its heads-up told every account without 2FA of "a rehearsal".
    text = edited("  enroll_all_on: 2022-03-01", "  enroll_all_on: 2022-02-23")
    text = text.replace("starts_at: 2022-02-23T00:00:00", f"starts_at: {starts_at}", 1)
    assert problems_in(text) == [
        (
            line_of(text, f"starts_at: {starts_at}"),
            "brownouts.1.starts_at: brown-out brownout-2 starts on or after "
            "elv.enroll_all_on (2022-02-23), when every account is enrolled in ELV for good: "
            "it would rehearse nothing, and its heads-up would announce a rehearsal of what "
            "already applies",
        )
    ]


def test_a_brownout_ending_as_elv_for_all_begins_is_valid() -> None:
    text = edited("  enroll_all_on: 2022-03-01", "  enroll_all_on: 2022-02-24")
    assert problems_in(text) == []


@pytest.mark.parametrize("two_factor", ["any", "phishing_resistant", "none"])
def test_each_requirement_in_words_reads_back_from_the_list_joined_by_semicolons(
    two_factor: str,
) -> None:
    """The audit ledger's reason, the report's asks and a preview's "Requires:" join
    what a phase asks by "; ": an item holding one ("a security key (WebAuthn); TOTP
    alone is not enough") read as two requirements. Each is a noun phrase, the factor
    said as the sentences about it say it."""
    requires = Requirements(
        two_factor=two_factor,
        no_classic_tokens=True,
        no_unnamed_tokens=True,
        no_bypass_2fa_tokens=True,
        token_max_age_days=90,
        no_write_tokens_without_2fa=True,
    )
    said = requires.describe()
    assert "; ".join(said).split("; ") == said and len(said) == 5 + (two_factor != "none")
    assert said[0] == requires.factor_in_words() or two_factor == "none"


def token_phase(**requires: object) -> Phase:
    """A phase revoking tokens under ``requires`` (with no 2FA asked), for the token
    rules' words, records and comparisons."""
    return Phase(
        name="cap",
        cohort="c",
        cohort_as_of=date(2025, 9, 1),
        notice_on=date(2025, 9, 2),
        enforce_on=date(2025, 12, 1),
        max_accounts=10,
        requires=Requirements(two_factor="none", **requires),
        effects=["revoke_tokens"],
        max_tokens=10,
    )


def test_a_token_lifetime_cap_is_said_recorded_and_a_shorter_one_asks_more() -> None:
    """token_max_lifetime_days: N (npm 2025's cap on write tokens) reads as one rule in
    words, is recorded in what the notices told (Phase.asks), and a cap made shorter
    after the notices went, or added, is asking more than they told; a longer one is
    not."""
    from rollout.core.plan import asks_more_than

    capped = token_phase(token_max_lifetime_days=90)
    assert capped.requires.token_rules
    assert capped.requires.describe() == ["no tokens valid for more than 90 days"]
    assert capped.asks() == "two_factor=none;token_max_lifetime_days=90;effects=revoke_tokens"
    assert asks_more_than(capped.asks(), capped) == []
    assert asks_more_than(token_phase(token_max_lifetime_days=120).asks(), capped) == [
        "no tokens valid for more than 90 days"
    ]
    assert asks_more_than(token_phase(token_max_lifetime_days=30).asks(), capped) == []
    assert asks_more_than(token_phase(no_classic_tokens=True).asks(), capped) == [
        "no tokens valid for more than 90 days"
    ]
    # A plan may not set a cap of no days, nor one beyond ten years.
    for days in (0, 3661):
        with pytest.raises(ValueError, match="token_max_lifetime_days"):
            Requirements(two_factor="none", token_max_lifetime_days=days)


def test_a_lifetime_cap_on_publishing_tokens_alone_is_said_recorded_and_compared() -> None:
    """npm's cap of 2025-10-13 was on write tokens (read-only ones kept no expiry):
    write_token_max_lifetime_days: N says so, in words of its own, recorded in what the
    notices told. A publishing token may not last longer than either cap; a plan asks
    more when a publishing token may now last less than the notices allowed it, or when
    a cap on every token replaces one on publishing tokens (read-only tokens then
    break it too)."""
    from rollout.core.plan import asks_more_than

    writes = token_phase(write_token_max_lifetime_days=90)
    said = "no publishing tokens valid for more than 90 days"
    assert writes.requires.token_rules
    assert writes.requires.describe() == [said]
    assert writes.requires.write_token_cap == 90
    assert writes.asks() == (
        "two_factor=none;write_token_max_lifetime_days=90;effects=revoke_tokens"
    )
    assert asks_more_than(writes.asks(), writes) == []
    assert asks_more_than(token_phase(write_token_max_lifetime_days=120).asks(), writes) == [said]
    assert asks_more_than(token_phase(token_max_lifetime_days=120).asks(), writes) == [said]
    assert asks_more_than(token_phase(token_max_lifetime_days=90).asks(), writes) == []
    assert asks_more_than(token_phase(no_classic_tokens=True).asks(), writes) == [said]
    # The cap on every token, after notices told of publishing tokens only: more.
    assert asks_more_than(writes.asks(), token_phase(token_max_lifetime_days=90)) == [
        "no tokens valid for more than 90 days"
    ]
    both = token_phase(token_max_lifetime_days=365, write_token_max_lifetime_days=90)
    assert both.requires.write_token_cap == 90
    assert both.requires.describe() == ["no tokens valid for more than 365 days", said]
    for days in (0, 3661, True, "90"):
        with pytest.raises(ValueError, match="write_token_max_lifetime_days"):
            Requirements(two_factor="none", write_token_max_lifetime_days=days)


@pytest.mark.parametrize(("every", "writes"), [(90, 365), (90, 90)])
def test_a_cap_on_publishing_tokens_no_shorter_than_the_cap_on_every_token_is_a_warning(
    every: int, writes: int
) -> None:
    """A publishing token is a token: with a cap on every token of 90 days, one on
    publishing tokens of 365 (or 90) holds nothing back the other does not, yet the
    notices would tell maintainers of both. `plan check` says it does nothing; a
    publishing cap shorter than the other (a year for every token, 90 days for those
    that publish) is what it is for, and draws no warning."""
    text = (ROOT / "plans" / "npm-2025-tokens.yaml").read_text()
    rules = "{two_factor: none, no_classic_tokens: true}"
    assert rules in text

    def capped(every: int, writes: int) -> str:
        return text.replace(
            rules,
            "{two_factor: none, no_classic_tokens: true, "
            f"token_max_lifetime_days: {every}, write_token_max_lifetime_days: {writes}}}",
        )

    assert warnings_in(capped(every, writes)) == [
        f"phase classic-tokens: write_token_max_lifetime_days ({writes} days) does nothing: "
        f"token_max_lifetime_days ({every} days) already caps every token, publishing ones "
        "too, and the notices would tell of both (drop it, or make it the shorter)"
    ]
    assert warnings_in(capped(365, 90)) == []


@pytest.mark.parametrize(("lifetime", "age"), [(90, 365), (90, 90)])
def test_an_age_cap_no_shorter_than_the_lifetime_cap_is_a_warning(lifetime: int, age: int) -> None:
    """A live token older than 365 (or 90) days has lasted more than 90 already: with
    every token capped at 90 days of lifetime, an age cap of 365 (or 90) forbids no
    token the lifetime cap does not, yet the notices would tell of both. An age cap
    shorter than the lifetime cap, or one beside a cap on publishing tokens alone (it
    still forbids old read-only tokens), draws no warning."""
    text = (ROOT / "plans" / "npm-2025-tokens.yaml").read_text()
    rules = "{two_factor: none, no_classic_tokens: true}"
    assert rules in text

    def capped(caps: str) -> str:
        return text.replace(rules, f"{{two_factor: none, no_classic_tokens: true, {caps}}}")

    said = (
        f"phase classic-tokens: token_max_age_days ({age} days) does nothing: "
        f"token_max_lifetime_days ({lifetime} days) already holds every live token older "
        "than that to less, and the notices would tell of both (drop it, or make it the "
        "shorter)"
    )
    caps = f"token_max_lifetime_days: {lifetime}, token_max_age_days: {age}"
    assert warnings_in(capped(caps)) == [said]
    both = f"{caps}, write_token_max_lifetime_days: {age}"
    assert len(warnings_in(capped(both))) == 2
    assert said in warnings_in(capped(both))
    assert warnings_in(capped("token_max_lifetime_days: 365, token_max_age_days: 90")) == []
    assert (
        warnings_in(capped(f"write_token_max_lifetime_days: {lifetime}, token_max_age_days: {age}"))
        == []
    )
