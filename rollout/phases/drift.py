"""Where the plan file and the registry disagree: what was done or told under an
earlier version of the plan.

A release manager edits the plan mid-campaign. These edits leave the registry behind:

- a phase renamed or deleted after it emailed or required accounts: its emails no
  longer render, it cannot be rolled back, and a renamed phase starts its emails over;
- a phase named like one another plan ran on the same registry: that plan's emails
  count as this one's, so this one's are "already" sent;
- a phase's ``enforce_on`` moved after its notices or reminders went: they told
  accounts a date the plan no longer has (earlier, and enforcement would come before
  it); with per-account deadlines, ``days_after_notice`` cut after notices told each
  account its own (every one of them would come sooner: an error);
- a phase's ``requires`` or ``effects`` edited to ask or do more after its notices or
  reminders told what it asked (``Phase.asks``, recorded when each was queued): an
  account that met what it was told (a TOTP user, told any factor would do) would be
  enforced unwarned (an error; asking less is a warning);
- a phase's ``snooze_days`` cut below a snooze already granted: enforcement still
  reads that account's deadline, but its reminders look only as far as the plan's
  snooze now, so none would reach it.

- a phase's ``cohort_as_of`` moved later after its cohort was built (or a build made
  before it by an earlier rollout, which built every cohort daily): the packages that
  entered before the cohort's day stay in it for good (sticky), though its rule was
  never judged on that day, and their maintainers are emailed and enforced.

- a brown-out window the plan scheduled, then dropped or dated otherwise: the registry
  applies it at its stored times until ``brownout schedule`` cancels or moves it.

And edits that need no history: an exemption naming no account (usernames are
exact: ``U2`` exempts nobody when the account is ``u2``), a lockout of someone meant
to be spared; a release manager naming no account (enforcement's summary goes to
nobody); a cohort's ``orgs`` naming an org the registry does not have (a warning: a
plan may be written before its orgs exist; ``cohorts build`` refuses it).

``plan check`` and ``plan show`` say so; ``phase enforce`` refuses before the latest
date the accounts were told (``told_deadline``), while a phase gives each account
fewer days than its notice told (``told_days_after_notice``), and while it asks more
than its emails told (``told_less``).
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Connection, Select, and_, case, func, or_, select

from rollout.cohorts import orgs_not_in_registry
from rollout.core.clock import naive_utc
from rollout.core.controls import quoted
from rollout.core.plan import Phase, Plan, asks_more_than
from rollout.core.words import by_count, counted
from rollout.notify.emails import ELV_HEADS_UP_EMAIL
from rollout.notify.outbox import NOTIFICATIONS, RUN_DAY
from rollout.registry import Registry
from rollout.registry.ledger import utc_now
from rollout.registry.models import (
    Account,
    BrownoutWindow,
    CohortPackage,
    DeadlineSnooze,
    PhaseRequirement,
    PlanRun,
    state_at,
)

COHORT_PACKAGES = CohortPackage.__table__
REQUIREMENTS = PhaseRequirement.__table__
PLAN_RUNS = PlanRun.__table__
SNOOZES = DeadlineSnooze.__table__
ACCOUNTS = Account.__table__


def plan_runs(plan: str) -> Select[Any]:
    """The ids of ``plan``'s runs: what ties a notification or a requirement to the plan
    that made it (a registry may have run another plan before)."""
    return select(PLAN_RUNS.c.id).where(PLAN_RUNS.c.plan == plan)


def _emails(connection: Connection, phase: str | None = None) -> list[Any]:
    """(phase, plan, deadline told, days after notice told, asks told, count) of the
    emails of phases, by the plan whose run queued them. What was told: a sent
    reminder's deadline (the day it was queued for plus its days before), a sent
    notice's (the date, or the days from each account's notice, its context recorded
    when it was queued), else None; what a sent notice or reminder said the phase asks
    and does (Phase.asks, recorded when queued; None for one queued before it was).
    Of ``phase``: its sent reminders and notices only (what enforcement asks). One pass,
    grouped in SQL: a phase of a million accounts sends millions of emails."""
    c = NOTIFICATIONS.c
    reminded = and_(c.email == "reminder", c.state == "sent")
    noticed = and_(c.email == "phase_notice", c.state == "sent")
    queued_on = case((reminded, c.context[RUN_DAY].as_string()))
    days_before = case((reminded, c.context["days_before"].as_string()))
    deadline = case((noticed, c.context["deadline"].as_string()))
    days_after = case((noticed, c.context["days_after_notice"].as_string()))
    asks = case((or_(reminded, noticed), c.context["asks"].as_string()))
    told = (queued_on, days_before, deadline, days_after, asks)
    query = (
        select(c.phase, PLAN_RUNS.c.plan, *told, func.count())
        .select_from(NOTIFICATIONS.join(PLAN_RUNS, PLAN_RUNS.c.id == c.run_id))
        .where(c.phase != "" if phase is None else and_(c.phase == phase, or_(reminded, noticed)))
        .group_by(c.phase, PLAN_RUNS.c.plan, *told)
    )
    return [
        (name, plan, _told(day, before, on), _number(after), asks, count)
        for name, plan, day, before, on, after, asks, count in connection.execute(query)
    ]


def _told(day: object, before: object, on: object) -> date | None:
    try:
        if on is not None:
            return date.fromisoformat(str(on))
        if day is None or before is None:
            return None
        return date.fromisoformat(str(day)) + timedelta(days=int(str(before)))
    except ValueError:
        return None  # a row queued before the context said its day


def _number(value: object) -> int | None:
    try:
        return None if value is None else int(str(value))
    except ValueError:
        return None


def told_deadline(connection: Connection, phase: Phase, plan: str) -> date | None:
    """The latest deadline ``plan``'s sent notices and reminders of the phase gave, if
    any. (A phase with per-account deadlines tells each account its own: see
    ``told_days_after_notice``.)"""
    if phase.deadline is not None:
        return None
    told = [day for _, run_plan, day, *_ in _emails(connection, phase.name) if run_plan == plan]
    return max((day for day in told if day is not None), default=None)


def told_days_after_notice(connection: Connection, phase: Phase, plan: str) -> int | None:
    """The most days from its notice to its own deadline that ``plan``'s sent notices of
    a phase with per-account deadlines told an account, if any: fewer in the plan now
    would bring those deadlines before the dates the accounts were given."""
    if phase.deadline is None:
        return None
    told = [
        days for _, run_plan, _, days, *_ in _emails(connection, phase.name) if run_plan == plan
    ]
    return max((days for days in told if days is not None), default=None)


def told_less(connection: Connection, phase: Phase, plan: str) -> tuple[int, str, list[str]] | None:
    """If ``plan``'s sent notices and reminders of the phase told accounts it asks less
    than it does now (a stronger factor, a token rule, an effect added since): how many
    emails, what the first of them told, and what the phase asks beyond it. Accounts
    that met what they were told would be enforced unwarned."""
    short = [
        (count, told, more)
        for _, run_plan, _, _, told, count in _emails(connection, phase.name)
        if run_plan == plan and told is not None and (more := asks_more_than(told, phase))
    ]
    if not short:
        return None
    return sum(count for count, _, _ in short), short[0][1], short[0][2]


def plan_drift(registry: Registry, plan: Plan) -> tuple[list[str], list[str]]:
    """(errors, warnings): phases the registry knows that the plan no longer names, or
    that another plan ran under the same name, and deadlines told that the plan has
    since moved."""
    names = {p.name for p in plan.phases}
    errors: list[str] = []
    warnings: list[str] = []
    with registry.engine.connect() as connection:
        # Of this plan's runs only: a registry that ran another plan before (npm 2022,
        # then npm 2025's tokens) has that plan's phases too.
        required = dict(
            connection.execute(
                select(REQUIREMENTS.c.phase, func.count())
                .where(REQUIREMENTS.c.run_id.in_(plan_runs(plan.name)))
                .group_by(REQUIREMENTS.c.phase)
            ).all()
        )
        emails = _emails(connection)
        longest_snooze = dict(
            connection.execute(
                select(SNOOZES.c.phase, func.max(SNOOZES.c.days)).group_by(SNOOZES.c.phase)
            ).all()
        )
        early = _entered_early(connection, plan)
        exempt = sorted(plan.exempt_usernames)
        managers = list(plan.notifications.release_managers)
        known = set(
            connection.execute(
                select(ACCOUNTS.c.username).where(ACCOUNTS.c.username.in_(exempt + managers))
            ).scalars()
        )
    emailed: Counter[str] = Counter()
    others: dict[str, str] = {}
    told: dict[str, Counter[date]] = {}
    told_days: dict[str, Counter[int]] = {}
    told_asks: dict[str, Counter[str]] = {}
    for name, run_plan, day, days_after, asks, count in emails:
        if run_plan != plan.name:
            others.setdefault(name, run_plan)
            continue
        emailed[name] += count
        if day is not None:
            told.setdefault(name, Counter())[day] += count
        if days_after is not None:
            told_days.setdefault(name, Counter())[days_after] += count
        if asks is not None:
            told_asks.setdefault(name, Counter())[asks] += count
    for name in sorted((set(required) | set(emailed)) - names):
        errors.append(
            f"phase {quoted(name)} is not in plan {plan.name}, but the registry has "
            f"{counted(required.get(name, 0), 'account')} it requires and {emailed[name]:,} "
            "of its emails: renamed or deleted after it acted? Its emails no longer "
            "render and it cannot be rolled back; keep its name (roll it back first "
            "to retire it)"
        )
    for phase in plan.phases:
        # Named like a phase another plan ran here: its emails and requirements count as
        # this one's (notices "already" sent, a requirement held), so it would write to
        # no one and enforce on the unwarned.
        if phase.name in others:
            errors.append(
                f"phase {phase.name!r} of plan {plan.name} has the name of a phase plan "
                f"{others[phase.name]} ran on this registry: their emails and requirements "
                "would be taken for this one's (notices counted as sent, so none go); name "
                "it differently"
            )
    for phase in plan.phases:
        if phase.deadline is not None:
            # Each account is told its own: days from its notice, which the plan's
            # days_after_notice must not cut (every deadline told would come sooner).
            now_days = phase.deadline.days_after_notice
            for days, count in sorted(told_days.get(phase.name, Counter()).items()):
                said = (
                    f"phase {phase.name}: {counted(count, 'notice')} sent "
                    f"told accounts their deadline came {counted(days, 'day')} after their "
                    "notice, "
                    f"the plan now says {now_days}"
                )
                if days > now_days:
                    # Every such deadline would come sooner than told: enforcement refuses.
                    errors.append(
                        f"{said}: their deadlines would come before the dates they were "
                        f"given, and `phase enforce` refuses; keep days_after_notice at "
                        f"{days} or more"
                    )
                elif days < now_days:
                    warnings.append(said)
            continue
        for day, count in sorted(told.get(phase.name, Counter()).items()):
            if day != phase.enforce_on:
                warnings.append(
                    f"phase {phase.name}: {counted(count, 'sent email')} "
                    f"(notices, reminders) told accounts {day}, the plan now says "
                    f"{phase.enforce_on}"
                    + (
                        " (`phase enforce` refuses before the date told)"
                        if day > phase.enforce_on
                        else ""
                    )
                )
    for phase in plan.phases:
        # What the sent notices and reminders said the phase asks and does: asking more
        # now (a security key where any factor was told, a token rule, an effect) locks
        # out accounts that did what they were told; asking less is only said.
        for asks, count in sorted(told_asks.get(phase.name, Counter()).items()):
            if asks == phase.asks():
                continue
            said = (
                f"phase {phase.name}: {counted(count, 'sent email')} "
                f"(notices, reminders) told accounts it asks and does {asks!r}, the plan now "
                f"says {phase.asks()!r}"
            )
            if more := asks_more_than(asks, phase):
                errors.append(
                    f"{said}: it now asks more ({'; '.join(more)}), and accounts that met "
                    "what they were told would be enforced unwarned; `phase enforce` "
                    "refuses. Put the requirements and effects back, and ask the rest in "
                    "a new phase with its own notice and dates"
                )
            else:
                warnings.append(said)
    for phase in plan.phases:
        longest = longest_snooze.get(phase.name)
        if phase.deadline is not None and longest and longest > phase.deadline.snooze_days:
            errors.append(
                f"phase {phase.name}: snooze_days is {phase.deadline.snooze_days}, but a "
                f"snooze of {counted(longest, 'day')} was granted under the plan before: "
                "that account's "
                "deadline still counts it, and its reminders would not (they look as far as "
                f"snooze_days); keep snooze_days at {longest} or more"
            )
    for cohort, (day, phase_name, count, packages) in early.items():
        # Each quoted: a package named "a, b" reads as one (rollout.core.controls.quoted).
        shown = ", ".join(quoted(p) for p in packages) + (", ..." if count > len(packages) else "")
        warnings.append(
            f"cohort {cohort}: {counted(count, 'package')} entered on a build "
            f"before {day}, the day phase {phase_name} fixes it (cohort_as_of), and "
            f"{by_count(count, 'stays', 'stay')} for "
            f"good though its rule was not judged on that day: {shown}. Their maintainers "
            "are emailed and enforced with the cohort's; release each that should not be "
            f"(`rollout cohorts release PACKAGE --cohort {cohort} --reason ...`)"
        )
    if plan.elv is not None:
        told_elv = elv_day_told(registry)
        if told_elv is not None and told_elv != plan.elv.enroll_all_on:
            warnings.append(
                f"elv: the heads-ups sent told accounts they would be enrolled on {told_elv}, "
                f"the plan now says {plan.elv.enroll_all_on}"
                + (
                    " (`elv enroll-all` refuses before the date told)"
                    if told_elv > plan.elv.enroll_all_on
                    else ""
                )
            )
    warnings += _windows_astray(registry, plan)
    for username in exempt:
        if username not in known:
            warnings.append(
                f"exemptions: no account is named {quoted(username)} in the registry (usernames "
                "are exact): it exempts nobody"
            )
    for username in managers:
        if username not in known:
            # The phase summary goes to the accounts named: one misspelt (or not made
            # yet) gets none, and enforcement's summary went to nobody without a word.
            warnings.append(
                f"notifications.release_managers: no account is named {quoted(username)} in the "
                "registry (usernames are exact): no phase summary goes to it"
            )
    with registry.engine.connect() as connection:
        warnings += [
            f"{line} (`cohorts build` refuses it until the registry has the org)"
            for line in orgs_not_in_registry(connection, plan.cohorts)
        ]
    return errors, warnings


# Packages a warning names; the rest are counted.
EARLY_SHOWN = 5


def _entered_early(
    connection: Connection, plan: Plan
) -> dict[str, tuple[date, str, int, list[str]]]:
    """Of each cohort a phase fixes: (the day it is fixed from, that phase, how many
    unreleased packages entered on a build before it, the first few by name). The
    builds of this version refuse such days (rollout.cohorts.cohorts_built_on)."""
    c = COHORT_PACKAGES.c
    early: dict[str, tuple[date, str, int, list[str]]] = {}
    for cohort in plan.cohorts:
        fixed = plan.cohort_fixed_from(cohort)
        if fixed is None:
            continue
        day, phase = fixed
        before = and_(c.cohort == cohort, c.released_at.is_(None), c.first_qualified_on < day)
        count = connection.execute(select(func.count()).where(before)).scalar_one()
        if count:
            names = connection.execute(
                select(c.package).where(before).order_by(c.package_key).limit(EARLY_SHOWN)
            ).scalars()
            early[cohort] = (day, phase, count, list(names))
    return early


def _windows_astray(registry: Registry, plan: Plan) -> list[str]:
    """The plan's brown-out windows in the registry that still apply or will, and that
    the plan no longer names or dates otherwise: the registry applies a window at its
    own times, whatever the plan now says."""
    planned = {b.name: (naive_utc(b.starts_at), naive_utc(b.ends_at)) for b in plan.brownouts}
    now = utc_now()
    with registry.engine.connect() as connection:
        windows = connection.execute(
            select(BrownoutWindow)
            .where(BrownoutWindow.reason == f"plan {plan.name}")
            .order_by(BrownoutWindow.starts_at)
        ).all()
    said = []
    for window in windows:
        state = state_at(window, now)
        if state not in ("scheduled", "active"):
            continue
        when = f"{window.starts_at:%Y-%m-%d %H:%M} to {window.ends_at:%Y-%m-%d %H:%M} UTC"
        times = planned.get(window.name)
        if times is None:
            said.append(
                f"brown-out {window.name} is {state} in the registry ({when}) but no longer "
                f"in plan {plan.name}: it "
                + (
                    "starts by itself at its time unless the next daily run cancels it first; "
                    "`rollout brownout schedule --apply` cancels it now"
                    if state == "scheduled"
                    else "applies until its end; `rollout brownout end "
                    f"{window.name} --reason ... --apply` stops it now"
                )
            )
        elif times != (window.starts_at, window.ends_at):
            said.append(
                f"brown-out {window.name} is {state} in the registry {when}, the plan now "
                f"says {times[0]:%Y-%m-%d %H:%M} to {times[1]:%Y-%m-%d %H:%M} UTC: the "
                "registry's times apply"
                + (
                    " until `rollout brownout schedule --apply` moves it"
                    if state == "scheduled"
                    else ""
                )
            )
    return said


def elv_day_told(registry: Registry) -> date | None:
    """The latest enrolment day the sent ELV heads-ups gave, if any."""
    n = NOTIFICATIONS.c
    day = n.context["enrolled_on"].as_string()
    with registry.engine.connect() as connection:
        told = connection.execute(
            select(day).where(n.email == ELV_HEADS_UP_EMAIL, n.state == "sent").group_by(day)
        ).scalars()
        days = []
        for value in told:
            try:
                days.append(date.fromisoformat(str(value)))
            except ValueError:
                continue  # a row without the day: nothing told to hold to
    return max(days, default=None)
