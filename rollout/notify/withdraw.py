"""Withdraw queued emails that must no longer go: by phase, by kind, or by the runs
that queued them (a rolled-back phase's enforcement).

A withdrawn email is not deleted: it stays in the outbox as ``skipped`` with the
reason, so ``notify status`` shows it and its natural key still stops it from being
queued again. Every email that has not gone is taken: ``queued`` ones, and ``failed``
ones (``notify send --retry-failed`` would send them). One a drain holds (``sending``)
may be on the wire, so it cannot be taken back; it is marked instead (its
``skip_reason`` set while it is in flight, :func:`marked_withdrawn`), and whatever
would queue it again (a stop putting it back, a crashed drain's rows requeued, a
lapsed lease, a failed send) makes it ``skipped`` instead: it goes only if the send
in flight goes. Each withdrawal writes one audit row with the counts, in the same
transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Select, and_, case, func, select, true, update

from rollout.core.errors import BadInput, GuardRefused
from rollout.core.fingerprints import list_fingerprint, same_list
from rollout.core.words import counted
from rollout.registry import Registry
from rollout.registry.ledger import record_actions, utc_now
from rollout.registry.models import Account, Notification

NOTIFICATIONS = Notification.__table__
ACCOUNTS = Account.__table__
WITHDRAWN = "withdrawn"
# Not gone yet and never to go once withdrawn; and the one state a withdrawal can only mark.
NOT_GONE = ("queued", "failed")
IN_FLIGHT = "sending"
# A preview's list of the emails a withdrawal would take back or mark, one row each: the
# saved CSV's columns (rollout.phases.withdrawals). ``email`` is the email's kind, as
# ``--email`` names it; ``username`` is empty for an account gone since it was queued.
LIST_COLUMNS = ("notification_id", "account_id", "username", "email", "phase", "occasion", "state")


def withdrawn_reason(reason: str) -> str:
    """The skip reason a withdrawal for ``reason`` leaves on each email it takes."""
    return f"{WITHDRAWN}: {reason}"[:200]


def marked_withdrawn() -> Any:
    """SQL: a row withdrawn while a drain held it: it must not be queued again. Never
    NULL (a NOT of it must hold for rows without a reason)."""
    return func.coalesce(NOTIFICATIONS.c.skip_reason, "").like(f"{WITHDRAWN}:%")


@dataclass(frozen=True)
class Withdrawn:
    """What a withdrawal did: emails taken back, and those in flight marked (they go
    only if the send under way goes)."""

    taken: int
    in_flight: int
    # Which emails were taken back: not compared, two withdrawals of as many emails are
    # the same outcome. A refusal says which changed since the preview by them.
    taken_ids: frozenset[int] = field(default=frozenset(), compare=False, repr=False)

    @property
    def fingerprint(self) -> str:
        """Which emails were taken back (withdrawn_fingerprint of their ids)."""
        return withdrawn_fingerprint(self.taken_ids)


def in_flight_note(count: int) -> str:
    """What a message says of the ``count`` emails in flight a withdrawal marks."""
    return f" ({count} being sent now: withdrawn unless that send goes)" if count else ""


@dataclass(frozen=True)
class Selection:
    """Which emails: any of the given phase, kind, queueing runs and occasion (None:
    any)."""

    phase: str | None = None
    email: str | None = None
    runs: Select[Any] | None = None
    occasion: str | None = None
    # Of those, the rows this SQL condition holds for stay (a rollback keeps the
    # enforcement email of an account whose tokens the phase revoked: they stay revoked).
    keep: Any = None

    def where(self, states: tuple[str, ...] = (*NOT_GONE, IN_FLIGHT)) -> Any:
        conditions = [NOTIFICATIONS.c.state.in_(states)]
        if self.keep is not None:
            conditions.append(~self.keep)
        if self.phase is not None:
            conditions.append(NOTIFICATIONS.c.phase == self.phase)
        if self.email is not None:
            conditions.append(NOTIFICATIONS.c.email == self.email)
        if self.runs is not None:
            conditions.append(NOTIFICATIONS.c.run_id.in_(self.runs))
        if self.occasion is not None:
            conditions.append(NOTIFICATIONS.c.occasion == self.occasion)
        return and_(true(), *conditions)


def withdraw_preview(connection: Connection, selection: Selection) -> list[dict[str, Any]]:
    """What a withdrawal would do, by phase and kind: the emails not gone it would take
    back (``queued``: queued or failed) and those in flight it would mark."""
    c = NOTIFICATIONS.c
    flying = func.sum(case((c.state == IN_FLIGHT, 1), else_=0))
    rows = connection.execute(
        select(c.phase, c.email, func.count() - flying, flying)
        .where(and_(selection.where(), ~_already_marked()))
        .group_by(c.phase, c.email)
        .order_by(c.phase, c.email)
    ).all()
    return [{"phase": p, "email": e, "queued": n, "in_flight": f} for p, e, n, f in rows]


def withdrawn_fingerprint(ids: Any) -> str:
    """Which emails not gone a withdrawal takes, as its preview's ``--expect-list``:
    their ids, so other emails at the same count (one sent, another queued since the
    preview) are not the list previewed."""
    return list_fingerprint(ids)


def withdraw_list(connection: Connection, selection: Selection) -> list[dict[str, Any]]:
    """Each email a withdrawal would take back (``queued``, ``failed``) or mark (in
    flight), oldest first, as a preview lists and saves it (LIST_COLUMNS): one read, so
    its counts (listed_counts) and its fingerprint (listed_fingerprint) are of one list."""
    c = NOTIFICATIONS.c
    rows = connection.execute(
        select(c.id, c.account_id, ACCOUNTS.c.username, c.email, c.phase, c.occasion, c.state)
        .select_from(NOTIFICATIONS.outerjoin(ACCOUNTS, ACCOUNTS.c.id == c.account_id))
        .where(and_(selection.where(), ~_already_marked()))
        .order_by(c.id)
    ).all()
    return [dict(zip(LIST_COLUMNS, row, strict=True)) for row in rows]


def listed_counts(listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A list's emails by phase and kind, as :func:`withdraw_preview` counts them."""
    counts: dict[tuple[str, str], list[int]] = {}
    for row in listed:
        count = counts.setdefault((row["phase"], row["email"]), [0, 0])
        count[row["state"] == IN_FLIGHT] += 1
    return [
        {"phase": p, "email": e, "queued": n, "in_flight": f}
        for (p, e), (n, f) in sorted(counts.items())
    ]


def listed_fingerprint(listed: list[dict[str, Any]]) -> str:
    """The fingerprint of a list's emails not gone (queued or failed): what the preview
    prints and the apply compares (``Withdrawn.fingerprint``)."""
    return withdrawn_fingerprint(r["notification_id"] for r in listed if r["state"] in NOT_GONE)


class EmailsNotAsPreviewed(GuardRefused):
    """Refused: the emails a withdrawal would take back now (``taken``: their ids) are
    not the ones previewed (their count or fingerprint) for ``selection``: a caller
    holding the preview's files can say which changed (rollout.phases.withdrawals)."""

    def __init__(self, message: str, selection: Selection, taken: frozenset[int]) -> None:
        super().__init__(message)
        self.selection, self.taken = selection, taken

    def __reduce__(self) -> tuple[type[GuardRefused], tuple[str]]:
        # Passed on as the refusal it is: its message, not the emails' ids.
        return GuardRefused, (str(self),)


def _already_marked() -> Any:
    """SQL: an in-flight row an earlier withdrawal marked (not counted again)."""
    return and_(NOTIFICATIONS.c.state == IN_FLIGHT, marked_withdrawn())


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
) -> Withdrawn:
    """Mark the selected emails not gone skipped with ``withdrawn: <reason>``, and those
    in flight with the reason alone; audited once with the counts. Inside the caller's
    transaction."""
    now = utc_now()
    skip_reason = withdrawn_reason(reason)
    taken_ids = connection.scalars(
        update(NOTIFICATIONS)
        .where(selection.where(NOT_GONE))
        .values(state="skipped", skip_reason=skip_reason, error=None, updated_at=now)
        .returning(NOTIFICATIONS.c.id)
    ).all()
    taken = len(taken_ids)
    in_flight = connection.execute(
        update(NOTIFICATIONS)
        .where(and_(selection.where((IN_FLIGHT,)), ~_already_marked()))
        .values(skip_reason=skip_reason)
    ).rowcount
    if taken or in_flight:
        scope = ":".join(str(part or "*") for part in (selection.phase, selection.email))
        if selection.occasion is not None:
            scope += f":{selection.occasion}"
        record_actions(
            connection,
            [
                {
                    "effect_key": f"emails-withdrawn:{run_id or now.isoformat()}:{scope}",
                    "action": "emails_withdrawn",
                    # The column's 300 (an org's phase and an occasion may pass it);
                    # the details keep each part whole.
                    "subject": f"emails {scope}"[:300],
                    "phase": selection.phase,
                    "reason": reason,
                    "actor": actor,
                    "run_id": run_id,
                    "created_at": now,
                    "details": {
                        "count": taken,
                        "in_flight": in_flight,
                        "phase": selection.phase,
                        "email": selection.email,
                        "occasion": selection.occasion,
                    },
                }
            ],
        )
    return Withdrawn(taken, in_flight, frozenset(taken_ids))


def withdraw(
    registry: Registry,
    selection: Selection,
    *,
    reason: str,
    actor: str,
    expect: int | None = None,
    expect_list: str | None = None,
    preview: str = "rollout notify withdraw",
) -> Withdrawn:
    """``rollout notify withdraw --apply``: one transaction. With ``expect`` (the count
    of queued or failed emails the preview showed, typed back), refused (GuardRefused,
    nothing changed) when it would take another count: the outbox moved since the
    preview (a queue run added emails that a withdrawal would silence for good); with
    ``expect_list`` (its fingerprint: listed_fingerprint), refused as well when the
    emails it would take are others at the same count (one sent, another queued since).
    ``preview``: the command that previews it again."""
    if selection.phase is None and selection.email is None:
        raise BadInput(None, None, "say which emails to withdraw: --phase, --email or both")
    if not reason.strip():
        raise BadInput(None, None, "say why: --reason")
    with registry.writing() as connection:
        withdrawn = withdraw_queued(connection, selection, reason=reason, actor=actor, run_id=None)
        # Counted as taken, in the same transaction: a mismatch rolls all of it back.
        if expect is not None and withdrawn.taken != expect:
            raise EmailsNotAsPreviewed(
                f"{counted(withdrawn.taken, 'queued or failed email')} would be withdrawn "
                f"now, not the {expect} expected: the outbox changed since the preview; "
                f"nothing was withdrawn. Run `{preview}` and check",
                selection,
                withdrawn.taken_ids,
            )
        if expect_list is not None and not same_list(withdrawn.fingerprint, expect_list):
            raise EmailsNotAsPreviewed(
                "the queued or failed emails it would withdraw now are not the ones "
                f"previewed (list {withdrawn.fingerprint}, not {expect_list.strip()}): the "
                "outbox changed since the preview, though the count may not have; nothing "
                f"was withdrawn. Run `{preview}` and check",
                selection,
                withdrawn.taken_ids,
            )
        return withdrawn
