"""Where the plan file and the registry disagree: what was done or told under an
earlier version of the plan.

A release manager edits the plan mid-campaign. Two edits leave the registry behind:

- a phase renamed or deleted after it emailed or required accounts: its emails no
  longer render, it cannot be rolled back, and a renamed phase starts its emails over;
- a phase named like one another plan ran on the same registry: that plan's emails
  count as this one's, so this one's are "already" sent;
- a phase's ``enforce_on`` moved after its reminders went: they told accounts a date
  the plan no longer has (earlier, and enforcement would come before it).

``plan check`` and ``plan show`` say so; ``phase enforce`` refuses before the latest
date the accounts were told (``told_deadline``).
"""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import Connection, func, select

from rollout.core.plan import Phase, Plan
from rollout.notify.outbox import NOTIFICATIONS, RUN_DAY
from rollout.registry import Registry
from rollout.registry.models import PhaseRequirement, PlanRun

REQUIREMENTS = PhaseRequirement.__table__
PLAN_RUNS = PlanRun.__table__


def told_deadlines(connection: Connection, phase: Phase, plan: str) -> dict[date, int]:
    """{deadline told: reminders} of the phase's sent reminders, queued by ``plan``'s
    runs: the day each was queued for plus its days before. (A phase with per-account
    deadlines tells each account its own: nothing here.)"""
    if phase.deadline is not None:
        return {}
    c = NOTIFICATIONS.c
    queued_on = c.context[RUN_DAY].as_string()
    days_before = c.context["days_before"].as_string()
    told: dict[date, int] = {}
    # Grouped in SQL: a phase of a million accounts sends millions of reminders.
    for day, before, count in connection.execute(
        select(queued_on, days_before, func.count())
        .where(
            c.phase == phase.name,
            c.email == "reminder",
            c.state == "sent",
            c.run_id.in_(select(PLAN_RUNS.c.id).where(PLAN_RUNS.c.plan == plan)),
        )
        .group_by(queued_on, days_before)
    ):
        try:
            deadline = date.fromisoformat(str(day)) + timedelta(days=int(before))
        except (TypeError, ValueError):
            continue  # a row queued before the context said its day
        told[deadline] = told.get(deadline, 0) + count
    return told


def told_deadline(connection: Connection, phase: Phase, plan: str) -> date | None:
    """The latest deadline the phase's sent reminders (``plan``'s) gave, if any."""
    return max(told_deadlines(connection, phase, plan), default=None)


def plan_drift(registry: Registry, plan: Plan) -> tuple[list[str], list[str]]:
    """(errors, warnings): phases the registry knows that the plan no longer names,
    and deadlines told that the plan has since moved."""
    names = {p.name for p in plan.phases}
    errors: list[str] = []
    warnings: list[str] = []
    # Of this plan's runs only: a registry that ran another plan before (npm 2022, then
    # npm 2025's tokens) has that plan's phases too.
    runs = select(PLAN_RUNS.c.id).where(PLAN_RUNS.c.plan == plan.name)
    with registry.engine.connect() as connection:
        required = dict(
            connection.execute(
                select(REQUIREMENTS.c.phase, func.count())
                .where(REQUIREMENTS.c.run_id.in_(runs))
                .group_by(REQUIREMENTS.c.phase)
            ).all()
        )
        emailed = dict(
            connection.execute(
                select(NOTIFICATIONS.c.phase, func.count())
                .where(NOTIFICATIONS.c.phase != "", NOTIFICATIONS.c.run_id.in_(runs))
                .group_by(NOTIFICATIONS.c.phase)
            ).all()
        )
        for name in sorted((set(required) | set(emailed)) - names):
            errors.append(
                f"phase {name!r} is not in plan {plan.name}, but the registry has "
                f"{required.get(name, 0)} accounts it requires and {emailed.get(name, 0)} "
                "of its emails: renamed or deleted after it acted? Its emails no longer "
                "render and it cannot be rolled back; keep its name (roll it back first "
                "to retire it)"
            )
        # A phase of this plan named like one another plan ran on this registry: its
        # emails and requirements count as this one's (notices "already" sent, a
        # requirement held), so it would write to no one and enforce on the unwarned.
        for phase in plan.phases:
            other = connection.execute(
                select(PLAN_RUNS.c.plan)
                .where(
                    PLAN_RUNS.c.plan != plan.name,
                    PLAN_RUNS.c.id.in_(
                        select(NOTIFICATIONS.c.run_id).where(
                            NOTIFICATIONS.c.phase == phase.name,
                            NOTIFICATIONS.c.run_id.not_in(runs),
                        )
                    ),
                )
                .limit(1)
            ).scalar()
            if other is not None:
                errors.append(
                    f"phase {phase.name!r} of plan {plan.name} has the name of a phase plan "
                    f"{other} ran on this registry: their emails and requirements would be "
                    "taken for this one's (notices counted as sent, so none go); name it "
                    "differently"
                )
        for phase in plan.phases:
            for day, count in sorted(told_deadlines(connection, phase, plan.name).items()):
                if day != phase.enforce_on:
                    warnings.append(
                        f"phase {phase.name}: {count} reminder{'s' if count != 1 else ''} "
                        f"sent told accounts {day}, the plan now says {phase.enforce_on}"
                        + (
                            " (`phase enforce` refuses before the date told)"
                            if day > phase.enforce_on
                            else ""
                        )
                    )
    return errors, warnings
