"""Withdraw queued emails that must no longer go: by phase, by kind, or by the runs
that queued them (a rolled-back phase's enforcement).

A withdrawn email is not deleted: it stays in the outbox as ``skipped`` with the
reason, so ``notify status`` shows it and its natural key still stops it from being
queued again. Only ``queued`` rows are touched: one a drain has claimed (``sending``)
is already on its way. Each withdrawal writes one audit row with the count, in the
same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, and_, func, select, true, update

from rollout.core.errors import BadInput
from rollout.registry import Registry
from rollout.registry.ledger import record_actions, utc_now
from rollout.registry.models import Notification

NOTIFICATIONS = Notification.__table__
WITHDRAWN = "withdrawn"


@dataclass(frozen=True)
class Selection:
    """Which queued emails: any of the given phase, kind and queueing runs (None: any)."""

    phase: str | None = None
    email: str | None = None
    runs: Select[Any] | None = None

    def where(self) -> Any:
        conditions = [NOTIFICATIONS.c.state == "queued"]
        if self.phase is not None:
            conditions.append(NOTIFICATIONS.c.phase == self.phase)
        if self.email is not None:
            conditions.append(NOTIFICATIONS.c.email == self.email)
        if self.runs is not None:
            conditions.append(NOTIFICATIONS.c.run_id.in_(self.runs))
        return and_(true(), *conditions)


def withdraw_preview(connection: Connection, selection: Selection) -> list[dict[str, Any]]:
    """The queued emails a withdrawal would take back, counted by phase and kind."""
    rows = connection.execute(
        select(NOTIFICATIONS.c.phase, NOTIFICATIONS.c.email, func.count())
        .where(selection.where())
        .group_by(NOTIFICATIONS.c.phase, NOTIFICATIONS.c.email)
        .order_by(NOTIFICATIONS.c.phase, NOTIFICATIONS.c.email)
    ).all()
    return [{"phase": p, "email": e, "queued": n} for p, e, n in rows]


def phase_in_outbox(connection: Connection, phase: str) -> bool:
    """Whether any email, in any state, was ever queued for ``phase``: a phase an
    earlier plan had is known by its emails, withdrawn ones too."""
    found = connection.execute(
        select(NOTIFICATIONS.c.id).where(NOTIFICATIONS.c.phase == phase).limit(1)
    ).first()
    return found is not None


def withdraw_queued(
    connection: Connection,
    selection: Selection,
    *,
    reason: str,
    actor: str,
    run_id: str | None,
) -> int:
    """Mark the selected queued emails skipped with ``withdrawn: <reason>``, audited
    once with the count; returns how many. Inside the caller's transaction."""
    now = utc_now()
    skip_reason = f"{WITHDRAWN}: {reason}"[:200]
    withdrawn = connection.execute(
        update(NOTIFICATIONS)
        .where(selection.where())
        .values(state="skipped", skip_reason=skip_reason, updated_at=now)
    ).rowcount
    if withdrawn:
        scope = ":".join(str(part or "*") for part in (selection.phase, selection.email))
        record_actions(
            connection,
            [
                {
                    "effect_key": f"emails-withdrawn:{run_id or now.isoformat()}:{scope}",
                    "action": "emails_withdrawn",
                    "subject": f"emails {scope}",
                    "phase": selection.phase,
                    "reason": reason,
                    "actor": actor,
                    "run_id": run_id,
                    "created_at": now,
                    "details": {
                        "count": withdrawn,
                        "phase": selection.phase,
                        "email": selection.email,
                    },
                }
            ],
        )
    return withdrawn


def withdraw(registry: Registry, selection: Selection, *, reason: str, actor: str) -> int:
    """``rollout notify withdraw --apply``: one transaction."""
    if selection.phase is None and selection.email is None:
        raise BadInput(None, None, "say which emails to withdraw: --phase, --email or both")
    if not reason.strip():
        raise BadInput(None, None, "say why: --reason")
    with registry.engine.begin() as connection:
        return withdraw_queued(connection, selection, reason=reason, actor=actor, run_id=None)
