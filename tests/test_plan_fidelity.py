"""The shipped plans keep the dates and thresholds the registries actually used, their
comments say where a date rests only on third-party reports and name the steps of the
campaign the plan leaves out, and the plan language page quotes a shipped campaign with
its own dates.

The facts below are those of the research behind the plans (registry-campaigns.md,
cited in each plan's comments): a plan that drifts from them, or a page that quotes a
campaign with dates it never used, fails here."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "plans"


def _plan(name: str) -> dict[str, Any]:
    return yaml.safe_load((PLANS / f"{name}.yaml").read_text())


def _phase(plan: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in plan["phases"] if p["name"] == name)


def _header(name: str) -> str:
    """The plan's opening comment, its lines joined into one text."""
    lines = []
    for line in (PLANS / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return " ".join(lines)


# (plan, phase, field, value the registry used): the days each registry acted on.
DAYS = [
    # npm: top-100 required 2022-02-01.
    ("npm-2022", "top-100", "enforce_on", date(2022, 2, 1)),
    # PyPI: critical projects 2022-07-08; all maintainers announced 2023-05-25, enforced
    # 2024-01-01; two-week notice and banner 2023-12-13; old tokens 2024-07-30.
    ("pypi-2023", "critical", "notice_on", date(2022, 7, 8)),
    ("pypi-2023", "everyone", "notice_on", date(2023, 5, 25)),
    ("pypi-2023", "everyone", "enforce_on", date(2024, 1, 1)),
    ("pypi-2023", "everyone-banner", "enforce_on", date(2023, 12, 13)),
    ("pypi-2023", "tokens-without-2fa", "enforce_on", date(2024, 7, 30)),
    # RubyGems: warnings 2022-06-13, required 2022-08-15.
    ("rubygems-2022", "recommended", "enforce_on", date(2022, 6, 13)),
    ("rubygems-2022", "required", "notice_on", date(2022, 6, 13)),
    ("rubygems-2022", "required", "enforce_on", date(2022, 8, 15)),
    # npm 2025: the plan 2025-09-22; new TOTP set-ups closed 2025-10-13; classic tokens
    # revoked 2025-12-09; bypass-2FA tokens 2026-05-19 (third-party reports).
    ("npm-2025-tokens", "totp-closed", "notice_on", date(2025, 9, 22)),
    ("npm-2025-tokens", "totp-closed", "enforce_on", date(2025, 10, 13)),
    ("npm-2025-tokens", "classic-tokens", "enforce_on", date(2025, 12, 9)),
    ("npm-2025-tokens", "bypass-tokens", "enforce_on", date(2026, 5, 19)),
]


@pytest.mark.parametrize(("plan", "phase", "field", "day"), DAYS)
def test_each_shipped_plan_acts_on_the_day_its_registry_did(
    plan: str, phase: str, field: str, day: date
) -> None:
    assert _phase(_plan(plan), phase)[field] == day


def test_each_shipped_plan_keeps_its_registrys_thresholds_and_windows() -> None:
    npm = _plan("npm-2022")
    assert npm["cohorts"]["top-100"]["top_by_dependents"] == 100
    assert npm["cohorts"]["high-impact"]["weekly_downloads_gt"] == 1_000_000
    assert npm["cohorts"]["high-impact"]["dependents_gte"] == 500  # the design's 500 or more
    assert npm["elv"]["trial"] == {"starts": date(2021, 12, 7), "ends": date(2022, 1, 4)}
    assert npm["elv"]["enroll_all_on"] == date(2022, 3, 1)
    assert [(b["starts_at"].date(), b["hours"]) for b in npm["brownouts"]] == [
        (date(2022, 2, 16), 24),
        (date(2022, 2, 23), 24),
    ]
    gems = _plan("rubygems-2022")
    assert gems["cohorts"]["recommended"]["downloads_gt"] == {"count": 165_000_000, "total": True}
    assert gems["cohorts"]["required"]["downloads_gt"] == {"count": 180_000_000, "total": True}
    # Emails one month and one week before the requirement: 2022-07-15 and 2022-08-08.
    assert _phase(gems, "required")["reminders_days_before"] == [31, 7]
    pypi = _plan("pypi-2023")
    # The top 1% by downloads over 6 months (the plan language counts days: 180).
    assert pypi["cohorts"]["critical"]["top_share_by_downloads"] == {"share": 0.01, "days": 180}
    # Reminders 6 months, 3 months, 90 days, 3 weeks and 1 week before 2024-01-01.
    assert _phase(pypi, "everyone")["reminders_days_before"] == [184, 92, 90, 21, 7]
    github = _plan("github-2023")
    deadline = _phase(github, "publishers")["deadline"]
    assert (deadline["days_after_notice"], deadline["snooze_days"]) == (45, 7)


# Dates the research has from third-party coverage only, by plan.
THIRD_PARTY = {"npm-2025-tokens": ["2026-05-19"]}


@pytest.mark.parametrize("plan", sorted(THIRD_PARTY))
def test_a_date_only_third_party_reports_give_is_said_to_be_one(plan: str) -> None:
    header = _header(plan)
    for day in THIRD_PARTY[plan]:
        sentences = [s for s in re.split(r"(?<=\.)\s", header) if day in s]
        assert sentences, f"{plan}'s comment does not give {day}"
        for sentence in sentences:
            assert "third-party" in sentence, sentence


# Steps of each campaign in the research that the plan does not model: its opening
# comment must name each (a word or date of it) and say it is left out.
LEFT_OUT = {
    "npm-2022": ["top 500"],
    "pypi-2023": ["2023-06-01", "2023-08-08", "newly critical"],
    "github-2023": ["banner", "org admins"],
    "npm-2025-tokens": ["2026-02-03", "2-hour session", "staged publishing"],
    "rubygems-2022": ["MX"],
}


@pytest.mark.parametrize("plan", sorted(LEFT_OUT))
def test_each_plan_names_the_steps_of_its_campaign_it_leaves_out(plan: str) -> None:
    header = _header(plan)
    for step in LEFT_OUT[plan]:
        sentences = [s for s in re.split(r"(?<=\.)\s", header) if step in s]
        assert sentences, f"{plan}'s comment does not name {step!r}"
        assert any("not modelled" in s.lower() for s in sentences), sentences


DATE_FIELDS = ("cohort_as_of", "notice_on", "enforce_on", "reminders_days_before")


def test_the_plan_language_page_quotes_a_shipped_campaign_with_its_own_dates() -> None:
    """An example phase named as a shipped plan's phase, on a cohort of the same rule,
    is that campaign's: its days are the plan's (a reader copies them)."""
    shipped = {}
    for path in sorted(PLANS.glob("*.yaml")):
        plan = yaml.safe_load(path.read_text())
        for phase in plan["phases"]:
            rule = {k: v for k, v in plan["cohorts"][phase["cohort"]].items() if k != "description"}
            shipped[phase["name"], yaml.safe_dump(rule)] = (path.name, phase)
    page = (ROOT / "docs" / "plans.md").read_text()
    quoted = 0
    for block in re.findall(r"```yaml\n(.*?)```", page, flags=re.S):
        example = yaml.safe_load(block)
        cohorts = example.get("cohorts", {})
        for phase in example.get("phases", []):
            if phase["cohort"] not in cohorts:
                continue
            rule = {k: v for k, v in cohorts[phase["cohort"]].items() if k != "description"}
            found = shipped.get((phase["name"], yaml.safe_dump(rule)))
            if found is None:
                continue
            quoted += 1
            name, theirs = found
            for field in DATE_FIELDS:
                assert phase.get(field) == theirs.get(field), (name, phase["name"], field)
    assert quoted >= 3  # GitHub's publishers, RubyGems' two tiers
