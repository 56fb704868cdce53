"""Queueing: the emails the plan calls for, on their days, into the outbox ledger.

Queueing is set-based (one INSERT ... SELECT per occasion) into ``notifications``,
whose natural key (account, email, phase, occasion) makes a re-run, of a flow, a
phase or the whole plan, queue nothing twice. Accounts the email must not reach are
recorded as ``skipped`` with the reason: unverified email, suppressed address,
already compliant, exempt by the plan, already enforced (the last three for warnings
only: a phase's notice and reminders; already enforced also for the heads-ups of a
brown-out and of ELV, to an account any phase has required 2FA of).

A mailing is too late from its ``too_late_at`` (rollout.core.calendar.too_late: the
start of the day it announces, so its last day is the one before; a brown-out heads-up's
window start, to the minute; for a reminder of per-account deadlines, also each
account's own deadline). A past day queued once it is too late (``--as-of``, catching
up) would send now "your deadline is in 3 days" after the deadline: such a mailing, or
such an account, is held back (not queued, counted as ``held_back``) unless asked for
with ``late`` (``notify queue --late``), which marks its rows (QUEUED_LATE) for the
drain to send however late.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Select,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)

from rollout.core.calendar import (
    WITHOUT_2FA_NOR_ELV,
    audience_cohort,
    audience_due_within,
    plan_calendar,
    too_late,
)
from rollout.core.clock import day_start
from rollout.core.errors import BadInput
from rollout.core.plan import Phase, Plan
from rollout.notify.emails import (
    ENFORCED_ON,
    HEADS_UP_EMAIL,
    LOGIN_HEADS_UPS,
    asks_only_2fa,
    skips_compliant,
)
from rollout.notify.message import normal_address
from rollout.notify.outbox import (
    ACCOUNTS,
    COMPLIANT,
    ENFORCED,
    EXEMPT,
    NOTIFICATIONS,
    QUEUED_LATE,
    RUN_DAY,
    UNVERIFIED,
    suppressed_accounts,
    suppression_reasons,
)
from rollout.notify.reach import WARNINGS
from rollout.registry import Registry
from rollout.registry.batches import in_chunks
from rollout.registry.deadlines import due_by
from rollout.registry.engine import begin_writing
from rollout.registry.ledger import (
    dialect_insert,
    insert_ignoring_existing,
    recorded_run,
    utc_now,
)
from rollout.registry.models import (
    CohortMembership,
    PhaseRequirement,
    ahead_until,
    current_members,
    has_active_factor,
    state_at,
    windows_named,
)
from rollout.registry.requirements import falls_short, judged_at
from rollout.registry.statistics import refresh_statistics

log = logging.getLogger(__name__)


# --- what the plan calls for, and when ---------------------------------------------------


@dataclass(frozen=True)
class Occasion:
    """One mailing of the plan: an email to an audience, due from one day until another."""

    step: str  # the plan_runs step (rollout plan show)
    email: str
    phase: str
    occasion: str
    due_on: date
    # Queued only before this instant (a reminder after the deadline is noise): the
    # Mailing's, or a heads-up's window start as the registry has it. A reminder of
    # per-account deadlines has, for each account, its own deadline too.
    too_late_at: datetime
    audience: str  # as rollout.core.calendar.Mailing.audience: audience() reads it
    context: dict[str, Any]


def plan_occasions(plan: Plan) -> list[Occasion]:
    """Every mailing the plan makes, in date order: the calendar's steps that send an email."""
    return [
        Occasion(
            step.key,
            m.email,
            m.phase,
            m.occasion,
            step.on,
            m.too_late_at,
            m.audience,
            dict(m.context),
        )
        for step in plan_calendar(plan)
        if (m := step.mailing) is not None
    ]


def _due_on(o: Occasion, day: date) -> bool:
    """Due on ``day``, and not too late from the day's start on (catches up missed days;
    a heads-up of a window beginning at 14:00 is still due on its day)."""
    return o.due_on <= day and not too_late(o.too_late_at, day_start(day))


def due_occasions(
    plan: Plan,
    day: date,
    as_scheduled: Callable[[list[Occasion]], list[Occasion]] = lambda occasions: occasions,
) -> list[Occasion]:
    """The mailings to queue on ``day``: due by then, and not too late from the day's
    start (catches up missed days). ``as_scheduled`` moves the begun ones first, as the
    registry stands (the queue's :func:`_as_scheduled`): a window moved later than the
    plan's is still announced after the plan's day, as `plan show` reads its heads-up
    pending (judged by the plan's day, it was never queued)."""
    begun = [o for o in plan_occasions(plan) if o.due_on <= day]
    return [o for o in as_scheduled(begun) if _due_on(o, day)]


def _due_as_scheduled(
    connection: Connection, plan: Plan, day: date, now: datetime
) -> list[Occasion]:
    """:func:`due_occasions`, each heads-up as its window stands in the registry."""
    return due_occasions(plan, day, lambda begun: _as_scheduled(connection, begun, now))


def past_last_day(o: Occasion, now: datetime) -> bool:
    """The mailing is too late by ``now`` (its last day passed; a heads-up's window
    begun): sent now, it would announce as still to come what has come."""
    return too_late(o.too_late_at, now)


def last_day_said(too_late_at: datetime) -> str:
    """The last a mailing too late from ``too_late_at`` could go, as every message says
    it: ``its last day was 2022-01-31`` (the day before the date it announces: a
    deadline, ELV's day), or, for a heads-up of a window that begins other than at
    midnight, ``it had to go before 2022-02-16 14:00 UTC``."""
    if too_late_at == day_start(too_late_at.date()):
        return f"its last day was {too_late_at.date() - timedelta(days=1)}"
    return f"it had to go before {too_late_at:%Y-%m-%d %H:%M} UTC"


def last_day_words(o: Occasion, now: datetime) -> str:
    """Why a mailing past its last day is: ``its last day was 2022-01-31, before today
    (2022-02-03)``; a heads-up of a window that begins other than at midnight, to the
    minute."""
    if o.too_late_at == day_start(o.too_late_at.date()):
        return f"{last_day_said(o.too_late_at)}, before today ({now.date()})"
    return f"{last_day_said(o.too_late_at)}, now {now:%Y-%m-%d %H:%M}"


def _parts(o: Occasion, plan: Plan, day: date, now: datetime) -> list[tuple[Select, bool]]:
    """The accounts of the mailing queued on ``day``, each part with whether it is too
    late for them by ``now``: all of them once the mailing is; for a reminder of
    per-account deadlines, the accounts whose own deadline is today or before (queued
    for a past day, "in 3 days" would reach them after it)."""
    ids = audience(o.audience, plan, day)
    if past_last_day(o, now):
        return [(ids, True)]
    due_within = audience_due_within(o.audience)
    today = now.date()
    if due_within is not None and day < today:
        phase = plan.phase(due_within[0])
        passed = due_by(phase, CohortMembership.account_id, today)
        return [(ids.where(~passed), False), (ids.where(passed), True)]
    return [(ids, False)]


def _as_scheduled(
    connection: Connection, occasions: list[Occasion], now: datetime
) -> list[Occasion]:
    """``occasions`` with each brown-out's heads-up as the registry's window stands: none
    for a window started, ended or cancelled (it told every account without 2FA of a
    rehearsal that was not coming, or had been), and the window's own times where it
    was scheduled apart from the plan."""
    names = [o.occasion for o in occasions if o.email == HEADS_UP_EMAIL]
    if not names:
        return occasions
    windows = windows_named(connection, names)
    kept = []
    for o in occasions:
        window = windows.get(o.occasion) if o.email == HEADS_UP_EMAIL else None
        if window is None:
            kept.append(o)
        elif state_at(window, now) == "scheduled":
            times = {
                "starts_at": window.starts_at.isoformat(),
                "ends_at": window.ends_at.isoformat(),
                "hours": round((window.ends_at - window.starts_at).total_seconds() / 3600),
            }
            # Too late once the window starts (or is called off), wherever and at
            # whatever hour that is.
            kept.append(replace(o, context={**o.context, **times}, too_late_at=ahead_until(window)))
    return kept


def audience(spec: str, plan: Plan, day: date) -> Select:
    """The account ids a mailing goes to, queued on ``day``."""
    due_within = audience_due_within(spec)
    if due_within is not None:
        name, days = due_within
        phase = plan.phase(name)
        member = CohortMembership.account_id
        return current_members(phase.cohort).where(
            due_by(phase, member, day + timedelta(days=days)), ~due_by(phase, member, day)
        )
    cohort = audience_cohort(spec)
    if cohort is not None:
        return current_members(cohort)
    if spec == WITHOUT_2FA_NOR_ELV:
        # The heads-ups of a brown-out and of ELV for all: both tell of emailed codes at
        # login to come, which an account in ELV already (the opt-in trial, an early
        # `elv enroll-all`) meets at every login now: for it, neither changes anything.
        return select(ACCOUNTS.c.id).where(
            ~has_active_factor(ACCOUNTS.c.id), ACCOUNTS.c.elv_enrolled_at.is_(None)
        )
    raise ValueError(f"unknown audience {spec!r}")


def _short_of(phase: Phase | None, now: datetime) -> Any:
    """SQL: the account falls short of the phase as its enforcement will judge it (a
    token old enough only by then falls short: at the phase's enforcement day); of any
    second factor, for an email of no phase or a phase asking only that."""
    if phase is not None and not asks_only_2fa(phase):
        return falls_short(phase.requires, ACCOUNTS.c.id, judged_at(phase.enforce_on, now))
    return ~has_active_factor(ACCOUNTS.c.id)


def _skip_reason(
    email: str,
    phase: Phase | None,
    now: datetime,
    suppressed: Mapping[int, str],
    exempt: frozenset[str] = frozenset(),
) -> Any:
    """SQL: why an account gets no email at queue time, or NULL. "Compliant" means
    meeting the phase's requirements for a phase that asks more than any 2FA. An account
    in ``exempt`` (the plan's exemptions) gets no warning of a phase: "you will be
    signed out" of an enforcement that never touches it. ``suppressed``: the accounts
    whose address a suppression stops, and why (``suppressed_accounts``: matched as the
    send matches them, which SQL cannot)."""
    whens: list[tuple[Any, Any]] = [(~ACCOUNTS.c.email_verified, UNVERIFIED)]
    by_reason: dict[str, list[int]] = {}
    for account_id, why in suppressed.items():
        by_reason.setdefault(why, []).append(account_id)
    whens += [
        # Inline: as many as are suppressed, past any limit of bound parameters.
        (ACCOUNTS.c.id.in_(bindparam(f"suppressed_{i}", sorted(ids), literal_execute=True)), why)
        for i, (why, ids) in enumerate(sorted(by_reason.items()))
    ]
    if exempt and phase is not None and email in WARNINGS:
        whens.append((ACCOUNTS.c.username.in_(sorted(exempt)), EXEMPT))
    # With per-account deadlines, tokens are judged at each account's own, which the
    # drain reads (its standing) and skips by: judged here at the phase's first deadline,
    # a token old enough only by the account's own passed, and the reminder before its
    # revocation was skipped as compliant.
    judged_when_sent = (
        phase is not None and phase.deadline is not None and phase.requires.token_rules
    )
    if skips_compliant(email, phase) and not judged_when_sent:
        whens.append((~_short_of(phase, now), COMPLIANT))
    if email in WARNINGS and phase is not None:
        # "In 3 days you will be signed out", to an account signed out already (the
        # phase enforced before the date, or its date moved after enforcement); or its
        # notice, queued again for an address fixed since (_reopenable), after the
        # enforcement notice. The drain judges the rows queued before the enforcement
        # the same way (rollout.notify.drain._enforced).
        required = exists().where(
            and_(
                PhaseRequirement.account_id == ACCOUNTS.c.id,
                PhaseRequirement.phase == phase.name,
            )
        )
        whens.append((required, ENFORCED))
    if email in LOGIN_HEADS_UPS:
        # Without 2FA and required it (by any phase): signed out, it sets 2FA up at its
        # next login; a heads-up of emailed codes at login is false for it.
        whens.append((ACCOUNTS.c.tfa_required_at.is_not(None), ENFORCED))
    return case(*whens, else_=None)


def queue_email(
    connection: Connection,
    *,
    email: str,
    phase: str,
    occasion: str,
    account_ids: Select,
    context: Mapping[str, Any],
    run_id: str | None,
    now: datetime,
    requirements_of: Phase | None = None,
    exempt: frozenset[str] = frozenset(),
) -> tuple[int, int]:
    """Queue (or record as skipped) one email to each account; returns the rows added,
    and how many of them were recorded as skipped (with why).
    ``requirements_of``: the phase whose requirements decide who is compliant;
    ``exempt``: the plan's exempt usernames, who get none of its warnings.

    An account that already has this (email, phase, occasion) keeps its row: queued,
    sent or skipped, it is never queued again; except a phase notice skipped for its
    address (unverified, suppressed) whose address no longer stops it, which is queued
    now (counted as added): notices go daily to whoever was not sent one, and without
    one an account is never told its deadline (nor, with per-account deadlines, has
    one: the campaign would pass it by for good); and a notice skipped as compliant
    (the plan sends none to an account meeting the phase) whose account falls short
    now: it lost its factor, or took a token the phase forbids, and must be told before
    the enforcement that will act on it."""
    ids = account_ids.subquery()
    reason = _skip_reason(email, requirements_of, now, suppressed_accounts(connection, ids), exempt)
    reopened = 0
    reopenable = _reopenable(
        connection, email, phase, occasion, ids, reason, requirements_of=requirements_of, now=now
    )
    for chunk in in_chunks(reopenable):
        reopened += connection.execute(
            update(NOTIFICATIONS)
            .where(NOTIFICATIONS.c.id.in_(chunk))
            .values(
                state="queued",
                skip_reason=None,
                context=literal(dict(context), JSON),
                attempts=0,
                run_id=run_id,
                updated_at=now,
            )
        ).rowcount
    rows = connection.execute(
        dialect_insert(connection, NOTIFICATIONS)
        .from_select(
            [
                "account_id",
                "email",
                "phase",
                "occasion",
                "state",
                "skip_reason",
                "context",
                "attempts",
                "run_id",
                "created_at",
                "updated_at",
            ],
            select(
                ACCOUNTS.c.id,
                literal(email),
                literal(phase),
                literal(occasion),
                case((reason.is_(None), "queued"), else_="skipped"),
                reason,
                literal(dict(context), JSON),
                literal(0),
                literal(run_id),
                literal(now, DateTime),
                literal(now, DateTime),
            ).where(ACCOUNTS.c.id.in_(select(ids.c[0]))),
        )
        .on_conflict_do_nothing(index_elements=["account_id", "email", "phase", "occasion"])
        .returning(NOTIFICATIONS.c.state)
    ).all()
    return len(rows) + reopened, sum(state == "skipped" for (state,) in rows)


# The emails a skip for the address, or as compliant, does not end for good: queued
# again once the address no longer stops them, or the account falls short
# (rollout.notify.queue.queue_email).
REOPENED_WHEN_ADDRESS_FIXED = frozenset({"phase_notice"})


def _reopenable(
    connection: Connection,
    email: str,
    phase: str,
    occasion: str,
    ids: Any,
    reason: Any,
    *,
    requirements_of: Phase | None,
    now: datetime,
) -> list[int]:
    """The ids of the mailing's rows for ``ids`` (a subquery of account ids) that were
    skipped for the address (unverified, suppressed, as rollout.notify.reach tells them
    apart) or as compliant (at the queue or the send), and that nothing stops any more:
    ``reason`` (the queue's skip reason) is NULL, the account falls short of the phase
    (judged here too: with per-account deadlines and token rules only the send judges
    it, and a row it skips again would be queued again every day), and no form of the
    address is suppressed. The drain checks each form (its
    domain in IDNA or Unicode), which the queue's SQL cannot: without that check here, a
    notice the drain skipped for the other form would be queued again, and skipped
    again, every day."""
    if email not in REOPENED_WHEN_ADDRESS_FIXED:
        return []
    n = NOTIFICATIONS.c
    rows = connection.execute(
        select(n.id, ACCOUNTS.c.email)
        .join(ACCOUNTS, ACCOUNTS.c.id == n.account_id)
        .where(
            n.email == email,
            n.phase == phase,
            n.occasion == occasion,
            n.state == "skipped",
            or_(
                n.skip_reason == UNVERIFIED,
                n.skip_reason.like("suppressed%"),
                and_(n.skip_reason == COMPLIANT, _short_of(requirements_of, now)),
            ),
            n.account_id.in_(select(ids.c[0])),
            reason.is_(None),
        )
    ).all()
    suppressed = suppression_reasons(connection, {address for _, address in rows})
    return [row_id for row_id, address in rows if normal_address(address) not in suppressed]


def queue_each(
    connection: Connection,
    *,
    email: str,
    phase: str,
    emails: Iterable[tuple[int, str, Mapping[str, Any]]],
    run_id: str,
    now: datetime,
) -> int:
    """Queue one email to each (account, occasion, context), each with a context of its
    own (``queue_email`` gives one to all); returns the rows added. An (account, email,
    phase, occasion) the outbox has already keeps its row: never queued twice. Who it
    cannot reach is skipped at sending, with why, as for every email."""
    return insert_ignoring_existing(
        connection,
        NOTIFICATIONS,
        [
            {
                "account_id": account_id,
                "email": email,
                "phase": phase,
                "occasion": occasion,
                "state": "queued",
                "context": dict(context),
                "attempts": 0,
                "run_id": run_id,
                "created_at": now,
                "updated_at": now,
            }
            for account_id, occasion, context in emails
        ],
        ["account_id", "email", "phase", "occasion"],
    )


@dataclass
class QueueOutcome:
    occasion: Occasion
    audience: int
    added: int = 0
    already: int = 0  # already queued, sent or skipped by an earlier run
    # Of added, recorded as skipped with why (unverified, suppressed, compliant, exempt):
    # rows that send nothing.
    skipped: int = 0
    # Not queued: the mailing (or the account, by its own deadline) is too late by now,
    # and ``late`` was not asked for (past_last_day).
    held_back: int = 0
    # Of added, queued past their last day because ``late`` was asked for (QUEUED_LATE).
    late: int = 0


def _count(
    connection: Connection, plan: Plan, o: Occasion, ids: Select, now: datetime
) -> tuple[int, int, int]:
    """(accounts, of them with a row of the mailing already, of the others those
    queue_email would record as skipped): what queueing ``ids`` would do. Reads only."""
    chosen = ids.subquery()
    # The new rows queue_email would record as skipped: the same reason, read.
    reason = _skip_reason(
        o.email,
        _requirements_of(plan, o),
        now,
        suppressed_accounts(connection, chosen),
        plan.exempt_usernames,
    )
    has_row = exists().where(
        and_(
            NOTIFICATIONS.c.account_id == ACCOUNTS.c.id,
            NOTIFICATIONS.c.email == o.email,
            NOTIFICATIONS.c.phase == o.phase,
            NOTIFICATIONS.c.occasion == o.occasion,
        )
    )
    total, existing, skipped = connection.execute(
        select(
            func.count(),
            func.count().filter(has_row),
            func.count().filter(and_(~has_row, reason.is_not(None))),
        )
        .select_from(ACCOUNTS)
        .where(ACCOUNTS.c.id.in_(select(chosen.c[0])))
    ).one()
    # A row it would queue again (a notice skipped for an address fixed since) is new,
    # and not skipped (its reason is NULL).
    reopened = len(
        _reopenable(
            connection,
            o.email,
            o.phase,
            o.occasion,
            chosen,
            reason,
            requirements_of=_requirements_of(plan, o),
            now=now,
        )
    )
    return total, existing - reopened, skipped


def _previewed(
    connection: Connection,
    plan: Plan,
    o: Occasion,
    parts: list[tuple[Select, bool]],
    now: datetime,
    *,
    late: bool,
) -> QueueOutcome:
    outcome = QueueOutcome(o, 0)
    for ids, past in parts:
        total, existing, skipped = _count(connection, plan, o, ids, now)
        outcome.audience += total
        outcome.already += existing
        if past and not late:
            outcome.held_back += total - existing
            continue
        outcome.added += total - existing
        outcome.skipped += skipped
        if past:
            outcome.late += total - existing
    return outcome


def queue_preview(
    registry: Registry, plan: Plan, day: date, *, late: bool = False
) -> list[QueueOutcome]:
    """What queueing on ``day`` would add, per mailing, and hold back (``late``: queue
    too, see queue_due). Reads only."""
    now = utc_now()
    with registry.engine.connect() as connection:
        return [
            _previewed(connection, plan, o, _parts(o, plan, day, now), now, late=late)
            for o in _due_as_scheduled(connection, plan, day, now)
        ]


def _requirements_of(plan: Plan, o: Occasion) -> Phase | None:
    """The phase whose requirements decide who is compliant for this mailing, if any."""
    return plan.phase(o.phase) if o.phase in {p.name for p in plan.phases} else None


def queue_due(
    registry: Registry, plan: Plan, day: date, *, actor: str, late: bool = False
) -> list[QueueOutcome]:
    """Queue every mailing due on ``day``, not after today (UTC, by the pipeline's
    clock): one recorded run per mailing. A day ahead would send now what its day is
    to bring: reminders counting days from a day not come, heads-ups early.

    A past day's mailing too late by now (its last day passed, a heads-up's window
    begun; for a reminder of per-account deadlines, the accounts whose own deadline has
    come) is held back: not
    queued (``held_back``), and a mailing held back whole records no run. With ``late``
    it is queued all the same, its rows marked (QUEUED_LATE) for the drain to send."""
    now = utc_now()
    today = now.date()
    if day > today:
        raise BadInput(
            None,
            None,
            f"--as-of: {day} is after today ({today}, UTC): its emails are not due yet "
            "(preview them without --apply)",
        )
    outcomes = []
    with registry.lock("queue") as held:
        engine = registry.engine
        with engine.connect() as connection:
            occasions = _due_as_scheduled(connection, plan, day, now)
        if occasions:  # the audiences below are what the statistics are for
            refresh_statistics(engine)
        for o in occasions:
            parts = _parts(o, plan, day, now)
            if not late and all(past for _, past in parts):
                # Too late for every account: nothing to queue, no run to record.
                with engine.connect() as connection:
                    outcomes.append(_previewed(connection, plan, o, parts, utc_now(), late=late))
                continue
            with recorded_run(
                engine,
                plan=plan.name,
                step=o.step,
                mode="apply",
                actor=actor,
                lock="queue",
                parameters={
                    "day": day.isoformat(),
                    "email": o.email,
                    **({"late": True} if late else {}),
                },
            ) as run:
                outcome = QueueOutcome(o, 0)
                with begin_writing(engine) as connection:
                    for ids, past in parts:
                        if past and not late:
                            total, existing, _ = _count(connection, plan, o, ids, utc_now())
                            outcome.audience += total
                            outcome.already += existing
                            outcome.held_back += total - existing
                            continue
                        total = connection.execute(
                            select(func.count()).select_from(ids.subquery())
                        ).scalar_one()
                        outcome.audience += total
                        context = {**o.context, RUN_DAY: day.isoformat()}
                        if past:
                            context[QUEUED_LATE] = True
                        added, skipped = queue_email(
                            connection,
                            email=o.email,
                            phase=o.phase,
                            occasion=o.occasion,
                            account_ids=ids,
                            context=context,
                            run_id=run.id,
                            now=utc_now(),
                            requirements_of=_requirements_of(plan, o),
                            exempt=plan.exempt_usernames,
                        )
                        outcome.added += added
                        outcome.skipped += skipped
                        outcome.already += total - added
                        if past:
                            outcome.late += added
                    # Before the commit: the lock gone with its PostgreSQL session,
                    # another queue run may be at work (a rerun queues what this left).
                    held.check()
                run.summary = {
                    "audience": outcome.audience,
                    "added": outcome.added,
                    "skipped": outcome.skipped,
                    "already": outcome.already,
                    **({"held_back": outcome.held_back} if outcome.held_back else {}),
                    **({"late": outcome.late} if outcome.late else {}),
                }
            outcomes.append(outcome)
    return outcomes


# The never-reached accounts a phase summary names; the rest are counted (the preview's
# CSV has them all).
SUMMARY_UNREACHED = 50


def queue_phase_summary(
    connection: Connection,
    plan: Plan,
    phase: str,
    *,
    counts: Mapping[str, int],
    run_id: str,
    now: datetime,
    unreached: Sequence[tuple[str, str]] = (),
) -> int:
    """The release managers' summary of one enforcement run; ``unreached``: the
    (username, why) of the accounts it acted on that no warning reached, of which the
    email lists the first ``SUMMARY_UNREACHED`` by username."""
    managers = plan.notifications.release_managers
    if not managers:
        return 0
    listed = sorted(unreached)[:SUMMARY_UNREACHED]
    added, _ = queue_email(
        connection,
        email="phase_summary",
        phase=phase,
        occasion=run_id,
        account_ids=select(ACCOUNTS.c.id).where(ACCOUNTS.c.username.in_(managers)),
        context={
            "phase": phase,
            "counts": dict(counts),
            "run_id": run_id,
            "unreached": [{"username": u, "why": why} for u, why in listed],
            "unreached_more": len(unreached) - len(listed),
            ENFORCED_ON: now.date().isoformat(),
        },
        run_id=run_id,
        now=now,
    )
    return added
