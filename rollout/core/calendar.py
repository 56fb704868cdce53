"""The plan's calendar: every dated step of a plan, in one ordered list.

``plan_calendar(plan)`` is the one place that walks a plan's dates. What reads the
calendar filters it rather than walking the plan again: ``rollout plan show`` lists
every step (rollout.phases.timeline), the outbox queues the steps that send an email
(rollout.notify.outbox), the report marks the steps with a chart label
(rollout.report.reporting), and the adoption series starts before the first milestone
(rollout.report.adoption). So a step added here reaches all four at once, and a date can no
longer mean one thing to the timeline and another to the outbox.

Step keys (``plan_runs.step``) are built here too, by the functions below, and only
here: a run records the key its calendar step carries, which is how ``plan show``
finds a step's runs. Some runs are of no dated step (``UNPLANNED_STEPS`` says which
and why); ``unplanned_kind`` recognises their keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

from rollout.core.clock import day_start, naive_utc
from rollout.core.plan import ELV_STEPS, EmailName, Phase, Plan
from rollout.core.words import counted

# What a step is. The adoption chart styles its milestones by these names
# (rollout.report.charts), and notebooks filter on them: they are part of the interface.
StepKind = Literal[
    "trial",  # the ELV opt-in trial starts (and lasts until ``ends``)
    "trial_end",  # the ELV opt-in trial ends
    "heads_up",  # an email ahead of a brown-out or of ELV for all
    "brownout",  # a brown-out window starts (and lasts until ``ends``)
    "elv",  # every account is enrolled in ELV
    "cohorts",  # a phase's cohort is fixed from that day's metrics
    "notice",  # a phase's notice emails
    "reminder",  # a phase's reminder emails
    "enforce",  # a phase is enforced
]

# The subject of the ELV steps, and the occasion of its heads-up email (plan.py keeps
# brown-outs from taking the name).
ELV = ELV_STEPS

# Audiences of a mailing, as rollout.notify.queue.audience reads them.
WITHOUT_2FA_NOR_ELV = "without-2fa-nor-elv"
_COHORT_AUDIENCE = "cohort:"


def cohort_audience(cohort: str) -> str:
    """The audience of a phase's emails: its cohort's current members."""
    return f"{_COHORT_AUDIENCE}{cohort}"


def audience_cohort(audience: str) -> str | None:
    """The cohort a ``cohort_audience`` names; None for another audience."""
    if audience.startswith(_COHORT_AUDIENCE):
        return audience.removeprefix(_COHORT_AUDIENCE)
    return None


_DUE_WITHIN = "due-within:"


def due_within_audience(phase: str, days: int) -> str:
    """The audience of a reminder in a phase with per-account deadlines: its cohort's
    members whose own deadline is at most ``days`` days after the day of queueing (and
    not past)."""
    return f"{_DUE_WITHIN}{days}:{phase}"


def audience_due_within(audience: str) -> tuple[str, int] | None:
    """The (phase, days) a ``due_within_audience`` names; None for another audience."""
    if not audience.startswith(_DUE_WITHIN):
        return None
    days, phase = audience.removeprefix(_DUE_WITHIN).split(":", 1)
    return phase, int(days)


# --- step keys: what plan_runs.step holds, built nowhere else -------------------------

ENROLL_ALL_STEP = "enroll all"
BROWNOUTS_SCHEDULE_STEP = "brownouts schedule"
_COHORTS = "cohorts "
_ORG_ENFORCEMENT = "enforce "
_ORG_REINVITE = "reinvite "
_SNOOZE = "snooze "


def phase_step(phase: str) -> str:
    """A phase's enforcement (and rollback) runs."""
    return f"phase {phase}"


def cohorts_step(as_of: date) -> str:
    """A cohort build for a day, planned or not (see UNPLANNED_STEPS)."""
    return f"{_COHORTS}{as_of}"


def cohorts_step_prefix() -> str:
    """What every cohort build's step starts with (``cohorts_step``), to find them all."""
    return _COHORTS


def notices_step(phase: str) -> str:
    return f"notices {phase}"


def reminders_step(phase: str, days_before: int) -> str:
    return f"reminders {phase} {days_before}d"


def heads_up_step(name: str) -> str:
    """The heads-up emails before a brown-out, or before ELV for all (``ELV``)."""
    return f"heads-up {name}"


def brownout_step(name: str) -> str:
    return f"brownout {name}"


def org_enforcement_step(org: str) -> str:
    return f"{_ORG_ENFORCEMENT}{org}"


def org_reinvite_step(org: str) -> str:
    """An org owner's invitations back of the members its enforcement removed."""
    return f"{_ORG_REINVITE}{org}"


def snooze_step(phase: str) -> str:
    """Accounts postponing their own deadlines in a phase (rollout phase snooze)."""
    return f"{_SNOOZE}{phase}"


# The parameter of a snooze run that says which requests it judged (a fingerprint of
# them): a run killed is finished by a later one with the same requests, not by any.
REQUESTS_FINGERPRINT = "requests_fingerprint"


# Runs that plan_runs records for no dated step of the calendar, by kind, and why the
# calendar leaves them out.
UNPLANNED_STEPS: Mapping[str, str] = {
    "cohorts": "the daily flow rebuilds the cohorts every day; the plan dates only the day "
    "each phase's cohort is fixed",
    "brownouts schedule": "creating or moving the plan's brown-out windows is setup, run "
    "whenever the plan changes; each window itself is a dated step",
    "org enforcement": "an org owner turns 2FA enforcement on when they choose: no plan dates it",
    "org invitations": "an org owner invites removed members back when they choose: no plan "
    "dates it",
    "snoozes": "an account postpones its own deadline when it asks, within its phase's days",
}


def unplanned_kind(key: str) -> str | None:
    """The UNPLANNED_STEPS kind a plan_runs step key is of, or None. A cohort build on a
    day the plan fixes a cohort is of kind "cohorts" too, and a calendar step as well."""
    if key == BROWNOUTS_SCHEDULE_STEP:
        return "brownouts schedule"
    if key.startswith(_ORG_ENFORCEMENT):
        return "org enforcement"
    if key.startswith(_ORG_REINVITE):
        return "org invitations"
    if key.startswith(_SNOOZE):
        return "snoozes"
    if key.startswith(_COHORTS):
        try:
            date.fromisoformat(key.removeprefix(_COHORTS))
        except ValueError:
            return None
        return "cohorts"
    return None


# --- the calendar ---------------------------------------------------------------------


@dataclass(frozen=True)
class Mailing:
    """The email a step sends: what rollout.notify.outbox queues for it."""

    email: EmailName
    phase: str  # notifications.phase: "" for an email of no phase
    occasion: str  # notifications.occasion: which mailing of that email ("14d", "elv"...)
    audience: str  # cohort_audience(name) | WITHOUT_2FA_NOR_ELV | due_within_audience(...)
    # Queued and sent only before this instant (too_late): a warning that arrives after
    # the event is noise. The start (00:00 UTC) of the day it announces, its last day
    # the one before; a brown-out heads-up's is its window's start, to the minute: at
    # 09:00 it still announces a window that begins at 14:00.
    too_late_at: datetime
    context: Mapping[str, Any] = field(default_factory=dict)


def too_late_by_plan(plan: Plan, email: str, phase_name: str, occasion: str) -> datetime | None:
    """The instant an email of ``plan``'s mailings is too late from by the plan alone,
    the ``Mailing.too_late_at`` its step gives: a notice from its phase's deadline (with
    per-account deadlines, the day after the last notice), a reminder from the latest
    deadline it can count to, whatever its days (the plan's may have changed since it
    was queued), a heads-up from its brown-out's start, the ELV heads-up from the day it
    tells. None for an email of no date, or of a phase or brown-out the plan has not."""
    phase = next((p for p in plan.phases if p.name == phase_name), None)
    if email == "phase_notice" and phase is not None:
        return day_start(phase.notices_until)
    if email == "reminder" and phase is not None:
        return day_start(phase.enforce_until)
    if email == "brownout_heads_up":
        brownout = next((b for b in plan.brownouts if b.name == occasion), None)
        return naive_utc(brownout.starts_at) if brownout is not None else None
    if email == "elv_enrollment" and plan.elv is not None:
        return day_start(plan.elv.enroll_all_on)
    return None


def too_late(too_late_at: datetime, at: datetime) -> bool:
    """An email due before ``too_late_at`` would come too late at ``at``: sent then, it
    would announce as still to come what has come (a deadline, a brown-out under way).
    The one judgement of the queue's hold-back, the drain's skip and plan show's missed."""
    return at >= too_late_at


def _too_late_at(plan: Plan, email: str, phase_name: str, occasion: str) -> datetime:
    """:func:`too_late_by_plan` of a mailing the plan has, so never None."""
    at = too_late_by_plan(plan, email, phase_name, occasion)
    if at is None:
        raise ValueError(f"no last moment for {email} {phase_name!r} {occasion!r}")
    return at


@dataclass(frozen=True)
class Step:
    """One dated step of the plan."""

    on: date
    kind: StepKind
    # The plan_runs.step its runs carry; "" for a date nothing runs for. A brown-out has
    # no runs: its state is its window's (brownout_windows, named by ``subject``).
    key: str
    subject: str  # the phase, brown-out (window name) or ELV the step is about; "" if none
    label: str  # what `rollout plan show` says
    chart_label: str | None = None  # the adoption chart's mark; None: not on the chart
    ends: date | None = None  # the day a span ends (the ELV trial, a brown-out)
    mailing: Mailing | None = None


def _told(phase: Phase) -> dict[str, Any]:
    """A notice's context: its phase, the deadline it tells as the plan gives it when
    queued (one date for all, or the days from each account's notice), and what the
    phase asks and does then (Phase.asks), so that an edit of the plan since is seen
    against what accounts were told (rollout.phases.drift)."""
    if phase.deadline is not None:
        told = {"phase": phase.name, "days_after_notice": phase.deadline.days_after_notice}
    else:
        told = {"phase": phase.name, "deadline": phase.enforce_on.isoformat()}
    return {**told, "asks": phase.asks()}


def plan_calendar(plan: Plan) -> list[Step]:
    """Every dated step of the plan, in date order; steps of one day keep the plan's
    order: the ELV trial, the brown-outs, ELV for all, then each phase."""
    steps: list[Step] = []
    elv = plan.elv
    if elv is not None and elv.trial is not None:
        steps.append(
            Step(
                elv.trial.starts,
                "trial",
                "",
                ELV,
                "ELV opt-in trial starts",
                "ELV trial",
                ends=elv.trial.ends,
            )
        )
        steps.append(Step(elv.trial.ends, "trial_end", "", ELV, "ELV opt-in trial ends"))
    for b in plan.brownouts:
        starts_at = naive_utc(b.starts_at)
        day = starts_at.date()
        steps.append(
            Step(
                day - timedelta(days=b.heads_up_days_before),
                "heads_up",
                heads_up_step(b.name),
                b.name,
                f"brown-out heads-up emails for {b.name}",
                mailing=Mailing(
                    "brownout_heads_up",
                    "",
                    b.name,
                    WITHOUT_2FA_NOR_ELV,
                    _too_late_at(plan, "brownout_heads_up", "", b.name),
                    {
                        "brownout": b.name,
                        "starts_at": b.starts_at.isoformat(),
                        "ends_at": b.ends_at.isoformat(),
                        "hours": b.hours,
                    },
                ),
            )
        )
        steps.append(
            Step(
                day,
                "brownout",
                brownout_step(b.name),
                b.name,
                f"{b.name}: {b.hours} h of ELV for all",
                b.name,
                ends=b.ends_at.date(),
            )
        )
    if elv is not None:
        on = elv.enroll_all_on
        steps.append(
            Step(
                on - timedelta(days=elv.heads_up_days_before),
                "heads_up",
                heads_up_step(ELV),
                ELV,
                "ELV enrollment notice emails",
                mailing=Mailing(
                    "elv_enrollment",
                    "",
                    ELV,
                    WITHOUT_2FA_NOR_ELV,
                    _too_late_at(plan, "elv_enrollment", "", ELV),
                    {"enrolled_on": on.isoformat()},
                ),
            )
        )
        steps.append(
            Step(on, "elv", ENROLL_ALL_STEP, ELV, "every account enrolled in ELV", "ELV for all")
        )
    # One cohort build a day builds every cohort (one run, one step key): phases that fix
    # their cohorts on the same day share its step, listed where the first one is.
    fixed_on: dict[date, list[Phase]] = {}
    for phase in plan.phases:
        fixed_on.setdefault(phase.cohort_as_of, []).append(phase)
    for phase in plan.phases:
        name, members = phase.name, cohort_audience(phase.cohort)
        same_day = fixed_on[phase.cohort_as_of]
        if same_day[0] is phase:
            steps.append(
                Step(
                    phase.cohort_as_of,
                    "cohorts",
                    cohorts_step(phase.cohort_as_of),
                    name,
                    "; ".join(f"cohort {p.cohort} fixed for phase {p.name}" for p in same_day),
                )
            )
        steps.append(
            Step(
                phase.notice_on,
                "notice",
                notices_step(name),
                name,
                f"phase {name} notices"
                + (f" (daily until {phase.deadline.last_notice_on})" if phase.deadline else ""),
                f"{name} notices",
                mailing=Mailing(
                    "phase_notice",
                    name,
                    "",
                    members,
                    _too_late_at(plan, "phase_notice", name, ""),
                    _told(phase),
                ),
                # Per-account deadlines: notices go out daily to newcomers until then.
                ends=phase.deadline.last_notice_on if phase.deadline else None,
            )
        )
        for days in sorted(phase.reminders_days_before, reverse=True):
            own = phase.deadline is not None
            steps.append(
                Step(
                    phase.enforce_on - timedelta(days=days),
                    "reminder",
                    reminders_step(name, days),
                    name,
                    f"phase {name} reminders ({counted(days, 'day')} before"
                    + (" each account's own deadline)" if own else ")"),
                    f"{name} reminder ({counted(days, 'day')} before)",
                    mailing=Mailing(
                        "reminder",
                        name,
                        f"{days}d",
                        due_within_audience(name, days) if own else members,
                        _too_late_at(plan, "reminder", name, f"{days}d"),
                        {"phase": name, "days_before": days, "asks": phase.asks()},
                    ),
                    ends=phase.enforce_until - timedelta(days=days) if own else None,
                )
            )
        steps.append(
            Step(
                phase.enforce_on,
                "enforce",
                phase_step(name),
                name,
                f"phase {name} enforced"
                + (
                    f" daily until {phase.enforce_until}, each account at its own deadline"
                    if phase.deadline
                    else ""
                ),
                f"{name} enforced",
                ends=phase.enforce_until if phase.deadline else None,
            )
        )
    # A stable sort: ties keep the order above.
    return sorted(steps, key=lambda s: s.on)
