"""Who falls short of a phase's requirements, as SQL: the one definition that the
preview, enforcement and `plan simulate` share.

An account falls short when it lacks the second factor the phase asks for, or holds a
live token one of the phase's token rules forbids. Enforcement acts only on accounts
that fall short, and on a token only when that token offends.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Boolean, ColumnElement, and_, exists, false, or_, true
from sqlalchemy.ext.compiler import compiles

from rollout.core.plan import Requirements
from rollout.registry.models import CLASSIC_TOKEN_KINDS, TfaFactor, Token, has_active_factor

TOKENS = Token.__table__
FACTORS = TfaFactor.__table__


def factor_counts(requires: Requirements, at: Any = None) -> ColumnElement[bool]:
    """The condition on ``tfa_factors`` rows that count for the phase: active (now, or
    at ``at``, a time or a time column: made by then and not removed by then), and a
    security key when the phase asks for a phishing-resistant factor."""
    active = FACTORS.c.removed_at.is_(None)
    if at is not None:
        active = and_(FACTORS.c.created_at <= at, or_(active, FACTORS.c.removed_at > at))
    if requires.two_factor == "phishing_resistant":
        return and_(active, FACTORS.c.kind == "webauthn")
    return active


def lacks_factor(requires: Requirements, account_id: Any) -> ColumnElement[bool]:
    """SQL: the account (an id or an id column) lacks the second factor the phase asks
    for. Never true when the phase asks for none."""
    if requires.two_factor == "none":
        return false()
    return ~exists().where(and_(FACTORS.c.account_id == account_id, factor_counts(requires)))


def lacked_factor_at(requires: Requirements, account_id: Any, at: Any) -> ColumnElement[bool]:
    """SQL: the account lacked the second factor the phase asks for at ``at`` (a time or
    a time column): no such factor made by then and not removed by then. Never true
    when the phase asks for none."""
    if requires.two_factor == "none":
        return false()
    return ~exists().where(and_(FACTORS.c.account_id == account_id, factor_counts(requires, at)))


def live_token(tokens: Any, now: datetime) -> ColumnElement[bool]:
    """A token that works at ``now``: not revoked, not expired."""
    return and_(
        tokens.c.revoked_at.is_(None), or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now)
    )


def offending_token(
    requires: Requirements, tokens: Any, now: datetime, aged_at: datetime | None = None
) -> ColumnElement[bool]:
    """SQL over ``tokens`` (the table or an alias): a live token that one of the phase's
    token rules forbids at ``now``, its age judged at ``aged_at`` (default ``now``:
    enforcement judges it at the start of the day it was announced for, not later).
    False when the phase has no token rule."""
    rules = token_rules(requires, tokens, aged_at or now)
    if not rules:
        return false()
    return and_(live_token(tokens, now), or_(*rules.values()))


def token_rules(
    requires: Requirements, tokens: Any, aged_at: datetime
) -> dict[str, ColumnElement[bool]]:
    """{the rule in words (as Requirements.describe says it): SQL over ``tokens``, the
    token breaks it} for each token rule of the phase, in describe's order, a token's
    age judged at ``aged_at``. Liveness aside (:func:`offending_token`)."""
    rules: dict[str, ColumnElement[bool]] = {}
    said = iter(r for r in requires.describe() if r.startswith("no "))
    if requires.no_classic_tokens:
        rules[next(said)] = tokens.c.kind.in_(CLASSIC_TOKEN_KINDS)
    if requires.no_unnamed_tokens:
        rules[next(said)] = tokens.c.name.is_(None)
    if requires.no_bypass_2fa_tokens:
        rules[next(said)] = tokens.c.bypass_2fa == true()
    if requires.token_max_age_days is not None:
        rules[next(said)] = tokens.c.created_at < aged_at - timedelta(
            days=requires.token_max_age_days
        )
    if requires.token_max_lifetime_days is not None:
        # Valid for longer than the cap, from its creation to its expiry (exactly the cap
        # is allowed), or never expiring: npm 2025's 90-day cap on write tokens. A
        # token's lifetime does not change with the day it is judged on.
        rules[next(said)] = _outlives(tokens, requires.token_max_lifetime_days)
    if requires.write_token_max_lifetime_days is not None:
        # The same cap on the tokens that publish alone (npm's of 2025-10-13 was on
        # write tokens; read-only ones were not capped).
        rules[next(said)] = and_(
            tokens.c.writes == true(), _outlives(tokens, requires.write_token_max_lifetime_days)
        )
    if requires.no_write_tokens_without_2fa:
        # "Without 2FA" is without any second factor, whatever the phase asks of the
        # factors: PyPI's 2024 rule stopped the tokens of accounts with no 2FA at all,
        # and a token-only phase (two_factor: none) applies it on its own.
        rules[next(said)] = and_(tokens.c.writes == true(), ~has_active_factor(tokens.c.account_id))
    return rules


def _outlives(tokens: Any, days: int) -> ColumnElement[bool]:
    """A token valid for more than ``days`` days from its creation, or never expiring."""
    return or_(
        tokens.c.expires_at.is_(None),
        _LastsLonger(tokens.c.created_at, tokens.c.expires_at, days),
    )


class _LastsLonger(ColumnElement[bool]):
    """SQL: ``expires`` is more than ``days`` days after ``created`` (two time columns),
    to the microsecond on both backends. SQLite stores a time as text, which neither
    ``+`` nor its datetime() (whole seconds, "2025-01-01 00:00:00" sorting before the
    same instant stored with ".000000") compares right: there, the whole seconds and the
    microseconds are counted apart, as integers."""

    inherit_cache = True
    type = Boolean()

    def __init__(self, created: Any, expires: Any, days: int) -> None:
        self.created, self.expires, self.days = created, expires, int(days)


@compiles(_LastsLonger)
def _lasts_longer(element: _LastsLonger, compiler: Any, **kw: Any) -> str:
    created, expires = (
        compiler.process(element.created, **kw),
        compiler.process(element.expires, **kw),
    )
    return f"({expires} > {created} + INTERVAL '{element.days} days')"


@compiles(_LastsLonger, "sqlite")
def _lasts_longer_sqlite(element: _LastsLonger, compiler: Any, **kw: Any) -> str:
    def micros(column: str) -> str:
        # "YYYY-MM-DD HH:MM:SS[.ffffff]": seconds since the epoch, then the fraction.
        return (
            f"(CAST(strftime('%s', substr({column}, 1, 19)) AS INTEGER) * 1000000"
            f" + CAST(substr(substr({column}, 21) || '000000', 1, 6) AS INTEGER))"
        )

    created, expires = (
        compiler.process(element.created, **kw),
        compiler.process(element.expires, **kw),
    )
    return f"({micros(expires)} - {micros(created)} > {element.days * 86_400_000_000})"


def holds_offending_token(
    requires: Requirements, account_id: Any, now: datetime
) -> ColumnElement[bool]:
    if not requires.token_rules:
        return false()
    return (
        exists()
        .select_from(TOKENS)
        .where(and_(TOKENS.c.account_id == account_id, offending_token(requires, TOKENS, now)))
    )


def judged_at(enforced_on: date, now: datetime) -> datetime:
    """The moment a warning judges an account's tokens by: the start of the day its
    enforcement comes (``now`` if that has begun). A token's age and expiry are what
    they will be then: a warning today would otherwise list a token that expires before
    enforcement and leave out one that is old enough only by then."""
    return max(now, datetime.combine(enforced_on, time.min))


def falls_short(requires: Requirements, account_id: Any, now: datetime) -> ColumnElement[bool]:
    """SQL: the account falls short of the phase's requirements at ``now``."""
    return or_(lacks_factor(requires, account_id), holds_offending_token(requires, account_id, now))


def phase_reason(phase_name: str, asked: str, cohort: str) -> str:
    """Why a phase revoked a session or token (their ``revoked_reason``)."""
    return f"phase {phase_name}: {asked} required of cohort {cohort}"


def revoked_by_phase(tokens: Any, phase_name: str) -> ColumnElement[bool]:
    """SQL: the token was revoked by the phase's enforcement (its reason says so; a
    phase name has no colon, so no phase's prefix is another's). A name's ``_`` is
    matched as itself, not LIKE's any character (phase a_b is not phase axb)."""
    escaped = phase_name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return tokens.c.revoked_reason.like(f"phase {escaped}:%", escape="\\")
