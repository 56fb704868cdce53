"""Reach: whether a phase's warnings got to each account before enforcement.

Accepted by SendGrid is not delivered. An account was *reached* when one of the phase's
warnings (its notice or a reminder) was sent and SendGrid's events say it arrived
(``delivered``, or a spam report, which only a delivered email gets). Every other
account of the phase was never reached, and why is one line a release manager can act
on: a bounce or a drop (with the provider's reason), a skip (its reason: a suppressed or
unverified address; too late: tried, and never sent, its last day gone when the send
came), a failed send, a send with no delivery event yet, a notice still waiting, or none
at all. The why of an account with several warnings is the most
telling one (a bounce over a later skip of the same address).

``phase preview`` lists them, ``phase enforce`` refuses above the phase's
``max_unreached_share`` unless their count is typed back, and the report counts them
per phase (``sql/marts/notice_reach.sql``, the same rules in SQL).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, and_, case, literal, or_, select

from rollout.notify.outbox import TOO_LATE
from rollout.registry.models import REACHED_STATES, Notification

NOTIFICATIONS = Notification.__table__
# The emails that warn an account before its phase is enforced (the enforcement notice
# comes after; the phase summary goes to release managers).
WARNINGS = ("phase_notice", "reminder")
NEVER_SENT = "never sent a notice"
NOT_SENT_YET = "not sent yet"
SEND_FAILED = "send failed"
# The categories of why, most telling first: an account's why is its most telling
# warning's. Each why starts with its category (then ": " and the detail, if any).
CATEGORIES = (
    "bounced",
    "dropped",
    "suppressed",
    "unverified email",
    TOO_LATE,
    SEND_FAILED,
    "not delivered yet",
    NOT_SENT_YET,
    NEVER_SENT,
)


def category(why: str) -> str:
    """The category a why starts with ("suppressed: bounce" is "suppressed")."""
    return next((c for c in CATEGORIES if why == c or why.startswith(c + ":")), why)


def _warnings(phase: str) -> Any:
    c = NOTIFICATIONS.c
    return and_(c.phase == phase, c.email.in_(WARNINGS))


def reached(phase: str) -> Any:
    """SQL: the accounts one of ``phase``'s warnings reached (a subquery of
    ``account_id``), for a query over the phase's accounts to join."""
    c = NOTIFICATIONS.c
    return (
        select(c.account_id)
        .where(_warnings(phase), c.state == "sent", c.delivery.in_(REACHED_STATES))
        .group_by(c.account_id)
        .subquery("reached")
    )


def _rank_and_why() -> tuple[Any, Any]:
    """SQL: how telling a warning that did not reach is (lower: more), and its why. A
    skip as too late is final (the send came after its last day), so it tells more than
    a failed send, which may still be retried, and is no "never sent a notice": one was
    queued and tried. A skip for a reason that says nothing of the address (the account
    complied already, the notice was withdrawn or inside the repeat window) tells least:
    an account with nothing else was never sent a notice."""
    c = NOTIFICATIONS.c
    detail = case((c.delivery_reason.is_(None), literal("")), else_=": " + c.delivery_reason)
    sent = c.state == "sent"
    skipped = c.state == "skipped"
    about_the_address = or_(c.skip_reason.like("suppressed%"), c.skip_reason == "unverified email")
    whens = [
        (and_(sent, c.delivery == "bounced"), 0, "bounced" + detail),
        (and_(sent, c.delivery == "dropped"), 1, "dropped" + detail),
        (and_(skipped, about_the_address), 2, c.skip_reason),
        (and_(skipped, c.skip_reason == TOO_LATE), 3, literal(TOO_LATE)),
        (c.state == "failed", 4, literal(SEND_FAILED)),
        (and_(sent, c.delivery == "deferred"), 5, literal("not delivered yet: deferred")),
        (and_(sent, c.delivery == "processed"), 5, literal("not delivered yet: processed")),
        (sent, 5, literal("not delivered yet: no delivery event")),
        (skipped, 7, literal(NEVER_SENT)),
    ]
    rank = case(*((when, value) for when, value, _ in whens), else_=6)
    why = case(*((when, text) for when, _, text in whens), else_=literal(NOT_SENT_YET))
    return rank, why


def why_unreached(
    connection: Connection, phase: str, account_ids: Collection[int]
) -> dict[int, str]:
    """Why no warning of ``phase`` reached each of ``account_ids``: accounts a query
    joined with :func:`reached` found unreached."""
    wanted = set(account_ids)
    if not wanted:
        return {}
    c = NOTIFICATIONS.c
    rank, why = _rank_and_why()
    got = reached(phase)
    # Only the warnings of accounts not reached: usually a few of the phase's.
    rows = connection.execute(
        select(c.account_id, rank, why)
        .outerjoin(got, got.c.account_id == c.account_id)
        .where(_warnings(phase), got.c.account_id.is_(None))
    ).all()
    best: dict[int, tuple[int, str]] = {}
    for account_id, account_rank, account_why in rows:
        if account_id in wanted and (account_id not in best or account_rank < best[account_id][0]):
            best[account_id] = (account_rank, account_why)
    return {
        account_id: best[account_id][1] if account_id in best else NEVER_SENT
        for account_id in sorted(wanted)
    }
