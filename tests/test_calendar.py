"""The plan's calendar: the reference plan's steps, keys and labels as shipped; the
timeline, the outbox, the report's milestones and the adoption window as filters of
it, in every shape of plan; and every run written to plan_runs names a calendar step
or a documented unplanned kind, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from rollout.core.calendar import (
    UNPLANNED_STEPS,
    cohorts_step,
    org_enforcement_step,
    org_reinvite_step,
    plan_calendar,
    snooze_step,
    unplanned_kind,
)
from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.plan import Plan, load_plan
from rollout.notify.queue import plan_occasions, queue_due
from rollout.phases import brownouts, enforce, orgs
from rollout.phases.timeline import plan_steps
from rollout.registry import Registry
from rollout.registry.models import PlanRun
from rollout.report.adoption import LEAD_DAYS, LEAD_UP_TO, adoption_since
from rollout.report.reporting import plan_milestones
from tests.factories import (
    AccountFactory,
    FactorFactory,
    OrgFactory,
    OrgMemberFactory,
    TeamFactory,
)

PLANS = Path(__file__).resolve().parent.parent / "plans"
REFERENCE = load_plan(PLANS / "npm-2022.yaml")


def _shapes() -> dict[str, Plan]:
    """Every plan file, and the reference plan in the other shapes a plan can take."""
    shapes = {path.stem: load_plan(path) for path in sorted(PLANS.glob("*.yaml"))}
    elv = REFERENCE.elv
    shapes |= {
        "no brown-outs": REFERENCE.model_copy(update={"brownouts": []}),
        "no ELV trial": REFERENCE.model_copy(
            update={"elv": elv.model_copy(update={"trial": None})}
        ),
        "no reminders": REFERENCE.model_copy(
            update={
                "phases": [
                    p.model_copy(update={"reminders_days_before": []}) for p in REFERENCE.phases
                ]
            }
        ),
        "no phases": REFERENCE.model_copy(update={"phases": []}),
        "no ELV": REFERENCE.model_copy(update={"elv": None}),
        "phases alone": REFERENCE.model_copy(update={"elv": None, "brownouts": []}),
        "ELV alone": REFERENCE.model_copy(
            update={"brownouts": [], "phases": [], "elv": elv.model_copy(update={"trial": None})}
        ),
    }
    return shapes


SHAPES = _shapes()


def test_the_reference_calendar_is_the_npm_program_step_by_step() -> None:
    assert [(s.on, s.kind, s.key, s.label) for s in plan_calendar(REFERENCE)] == [
        (date(2021, 12, 7), "trial", "", "ELV opt-in trial starts"),
        (
            date(2022, 1, 3),
            "cohorts",
            "cohorts 2022-01-03",
            "cohort top-100 fixed for phase top-100",
        ),
        (date(2022, 1, 4), "trial_end", "", "ELV opt-in trial ends"),
        (date(2022, 1, 4), "notice", "notices top-100", "phase top-100 notices"),
        (
            date(2022, 1, 18),
            "reminder",
            "reminders top-100 14d",
            "phase top-100 reminders (14 days before)",
        ),
        (
            date(2022, 1, 29),
            "reminder",
            "reminders top-100 3d",
            "phase top-100 reminders (3 days before)",
        ),
        (date(2022, 2, 1), "enforce", "phase top-100", "phase top-100 enforced"),
        (
            date(2022, 2, 13),
            "heads_up",
            "heads-up brownout-1",
            "brown-out heads-up emails for brownout-1",
        ),
        (date(2022, 2, 16), "brownout", "brownout brownout-1", "brownout-1: 24 h of ELV for all"),
        (
            date(2022, 2, 20),
            "heads_up",
            "heads-up brownout-2",
            "brown-out heads-up emails for brownout-2",
        ),
        (date(2022, 2, 22), "heads_up", "heads-up elv", "ELV enrollment notice emails"),
        (date(2022, 2, 23), "brownout", "brownout brownout-2", "brownout-2: 24 h of ELV for all"),
        (date(2022, 3, 1), "elv", "enroll all", "every account enrolled in ELV"),
        (
            date(2022, 3, 14),
            "cohorts",
            "cohorts 2022-03-14",
            "cohort high-impact fixed for phase high-impact",
        ),
        (date(2022, 3, 15), "notice", "notices high-impact", "phase high-impact notices"),
        (
            date(2022, 4, 3),
            "reminder",
            "reminders high-impact 30d",
            "phase high-impact reminders (30 days before)",
        ),
        (
            date(2022, 4, 19),
            "reminder",
            "reminders high-impact 14d",
            "phase high-impact reminders (14 days before)",
        ),
        (
            date(2022, 4, 30),
            "reminder",
            "reminders high-impact 3d",
            "phase high-impact reminders (3 days before)",
        ),
        (date(2022, 5, 3), "enforce", "phase high-impact", "phase high-impact enforced"),
    ]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_reader_is_a_filter_of_the_calendar(shape: str) -> None:
    plan = SHAPES[shape]
    steps = plan_calendar(plan)
    assert [s.on for s in steps] == sorted(s.on for s in steps)
    # One step a key: plan show reads a step's state from the runs under its key.
    keys = [s.key for s in steps if s.key]
    assert len(keys) == len(set(keys))
    assert plan_steps(plan) == steps
    mailings = [(s.key, s.on, s.mailing) for s in steps if s.mailing is not None]
    assert [
        (o.step, o.due_on, o.email, o.phase, o.occasion, o.too_late_at, o.audience, o.context)
        for o in plan_occasions(plan)
    ] == [
        (key, on, m.email, m.phase, m.occasion, m.too_late_at, m.audience, dict(m.context))
        for key, on, m in mailings
    ]
    assert [(m.on, m.label, m.kind, m.until) for m in plan_milestones(plan)] == [
        (s.on, s.chart_label, s.kind, s.ends) for s in steps if s.chart_label is not None
    ]
    first = min(s.on for s in steps if s.kind in LEAD_UP_TO)
    trial = plan.elv.trial if plan.elv is not None else None
    expected = first - timedelta(days=LEAD_DAYS)
    assert adoption_since(plan) == (min(expected, trial.starts) if trial else expected)
    if not plan.brownouts:
        assert "brownout" not in {s.kind for s in steps}
        expected_heads_up = ["heads-up elv"] if plan.elv is not None else []
        assert [s.key for s in steps if s.kind == "heads_up"] == expected_heads_up
    if trial is None:
        assert not {s.kind for s in steps} & {"trial", "trial_end"}


def test_unplanned_steps_are_recognised_and_calendar_steps_are_not() -> None:
    assert unplanned_kind("brownouts schedule") == "brownouts schedule"
    assert unplanned_kind(org_enforcement_step("acme")) == "org enforcement"
    assert unplanned_kind(org_reinvite_step("acme")) == "org invitations"
    assert unplanned_kind(snooze_step("publishers")) == "snoozes"
    assert unplanned_kind(cohorts_step(date(2021, 12, 15))) == "cohorts"
    assert unplanned_kind("cohorts someday") is None
    for step in plan_calendar(REFERENCE):
        if step.kind != "cohorts":
            assert unplanned_kind(step.key) is None, step.key
    assert set(UNPLANNED_STEPS) == {
        "cohorts",
        "brownouts schedule",
        "org enforcement",
        "org invitations",
        "snoozes",
    }


def test_every_run_in_plan_runs_is_a_calendar_step_or_unplanned(
    registry: Registry, factories: None, plan: Plan
) -> None:
    AccountFactory(username="ann", in_cohort="top-100", sessions=1)
    AccountFactory(username="ben", with_totp=True, in_cohort=["top-100", "high-impact"])
    owner = AccountFactory(username="ola", with_totp=True)
    acme = OrgFactory(name="acme")
    OrgMemberFactory(org=acme, account=owner, role="owner")
    returning = AccountFactory(username="rex")
    OrgMemberFactory(org=acme, account=returning)
    TeamFactory(org=acme, name="release")
    # Every job that records a run, as the deployments run them (the cohort builds,
    # which need the warehouse, are checked in the story: tests/test_story.py).
    brownouts.schedule(registry, plan, actor="rm")
    for day in sorted({o.due_on for o in plan_occasions(plan)}):
        # On the day (a brown-out's heads-up is queued only while its window is ahead).
        with use_clock(SimulatedClock(datetime(day.year, day.month, day.day, 9))):
            queue_due(registry, plan, day, actor="rm")
    for phase in plan.phases:
        preview = enforce.preview_phase(registry, plan, phase)
        enforce.enforce_phase(registry, plan, phase.name, expect=preview.count, actor="rm")
    enforce.rollback_phase(registry, plan, "top-100", actor="rm")
    brownouts.enroll_all(registry, plan, actor="rm")
    orgs.enforce_org(registry, "acme", confirm="acme", owner="ola", actor="rm")
    FactorFactory(account=returning)  # rex enables 2FA and is invited back
    orgs.reinvite(registry, "acme", "release", owner="ola", confirm="acme", expect=1, actor="rm")

    with registry.engine.connect() as connection:
        recorded = set(connection.execute(select(PlanRun.step).distinct()).scalars())
    calendar = {s.key for s in plan_calendar(plan) if s.key}
    unplanned = {step: unplanned_kind(step) for step in recorded - calendar}
    assert None not in unplanned.values(), unplanned
    assert set(unplanned.values()) == {"brownouts schedule", "org enforcement", "org invitations"}
    # And the other way: every keyed step but the cohort days (above) has its runs; a
    # brown-out's state is its window's (brownout_windows), not a run's.
    keyed = {s.key for s in plan_calendar(plan) if s.key and s.kind not in ("cohorts", "brownout")}
    assert keyed <= recorded, keyed - recorded


def test_a_plan_without_elv_has_no_elv_step() -> None:
    steps = plan_calendar(SHAPES["no ELV"])
    assert not [s for s in steps if s.subject == "elv" or s.kind in ("trial", "trial_end", "elv")]
    # The phases and brown-outs keep every step they have in the reference plan.
    reference = [s for s in plan_calendar(REFERENCE) if s.subject != "elv"]
    assert [(s.on, s.key) for s in steps] == [(s.on, s.key) for s in reference]
