"""Each account's own deadline in a phase with per-account deadlines, as SQL and as
dates: the one definition that the preview, enforcement, the reminders and snoozing
share.

An account's deadline is the day its phase notice was sent, plus the phase's
``days_after_notice``, plus the days of its one snooze (``deadline_snoozes``). An
account whose notice was never sent (not yet queued, skipped for an unverified or
suppressed address, failed) has no deadline: nobody is enforced unwarned.

Deadlines are whole UTC days: a notice sent at any time on 03-13 with 45 days makes
04-27 the deadline, and enforcement on 04-27 acts on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, exists, or_, select, true

from rollout.core.clock import day_end
from rollout.core.plan import Deadline, Phase
from rollout.registry.models import DeadlineSnooze, Notification

NOTIFICATIONS = Notification.__table__
SNOOZES = DeadlineSnooze.__table__
# The email whose sending starts an account's clock.
NOTICE = "phase_notice"


def _deadline(phase: Phase) -> Deadline:
    if phase.deadline is None:
        raise ValueError(f"phase {phase.name} has one deadline for everyone (enforce_on)")
    return phase.deadline


def _sent_notices(phase: Phase) -> ColumnElement[bool]:
    """The phase's notices that were sent (one per account: the outbox's natural key)."""
    n = NOTIFICATIONS.c
    return and_(n.email == NOTICE, n.phase == phase.name, n.occasion == "", n.state == "sent")


def notice_sent(phase: Phase, account_id: Any) -> ColumnElement[bool]:
    """SQL over the outbox: the row is the phase's notice to the account (an id or an id
    column), sent: what starts the account's own deadline, and what told it."""
    return and_(NOTIFICATIONS.c.account_id == account_id, _sent_notices(phase))


def due_by(phase: Phase, account_id: Any, day: date) -> ColumnElement[bool]:
    """SQL: the account's own deadline is ``day`` or earlier.

    Its notice was sent before the end of ``day`` minus the phase's days and its
    snooze's: one comparison of ``sent_at`` per possible snooze length (at most
    ``snooze_days`` + 1), so no date arithmetic in SQL, the same on SQLite and
    PostgreSQL."""
    deadline = _deadline(phase)
    end_of_day = day_end(day)
    n, s = NOTIFICATIONS.c, SNOOZES.c

    def sent_before(extra: int) -> ColumnElement[bool]:
        cutoff = end_of_day - timedelta(days=deadline.days_after_notice + extra)
        return n.sent_at < cutoff

    # The notice joined to its snooze (one at most: unique per phase and account) once,
    # rather than a correlated lookup of the snooze in each comparison: that read the
    # snoozes once per comparison and per notice where PostgreSQL had no statistics.
    by_snooze = [and_(s.days.is_(None), sent_before(0))] + [
        and_(s.days == days, sent_before(days)) for days in range(1, deadline.snooze_days + 1)
    ]
    noticed = NOTIFICATIONS.outerjoin(
        SNOOZES, and_(s.phase == phase.name, s.account_id == n.account_id)
    )
    return exists(
        select(1).select_from(noticed).where(notice_sent(phase, account_id), or_(*by_snooze))
    )


def own_deadline(phase: Phase, noticed_at: datetime, snoozed_days: int | None) -> date:
    """An account's deadline from when its notice was sent and its snooze."""
    deadline = _deadline(phase)
    return noticed_at.date() + timedelta(days=deadline.days_after_notice + (snoozed_days or 0))


def deadlines(
    connection: Connection, phase: Phase, account_ids: Sequence[int] | None = None
) -> dict[int, date]:
    """Every noticed account's own deadline in the phase, or those of ``account_ids``
    (accounts never sent the notice have none)."""
    return {a: day for a, (day, _) in deadlines_and_snoozes(connection, phase, account_ids).items()}


def deadlines_and_snoozes(
    connection: Connection, phase: Phase, account_ids: Sequence[int] | None = None
) -> dict[int, tuple[date, bool]]:
    """``deadlines``, each with whether the account postponed it (once is the most)."""
    n, s = NOTIFICATIONS.c, SNOOZES.c
    rows = connection.execute(
        select(n.account_id, n.sent_at, s.days)
        .select_from(
            NOTIFICATIONS.outerjoin(
                SNOOZES, and_(s.phase == phase.name, s.account_id == n.account_id)
            )
        )
        .where(_sent_notices(phase))
        .where(n.account_id.in_(account_ids) if account_ids is not None else true())
    )
    return {
        account_id: (own_deadline(phase, sent_at, days), days is not None)
        for account_id, sent_at, days in rows
    }
