"""What-if across plans: what each phase of a plan would touch if it ran on a given
day, computed from the warehouse (that day's metrics, the registry as last extracted)
without writing anything. A release manager compares plans, or one plan's thresholds,
before choosing (``rollout plan simulate PLAN --as-of D``).

Each phase's cohort is its rule applied to that day's metrics, not the sticky cohort
the registry keeps: the question is "if this plan had fixed its cohort on D".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, time
from typing import Any

import duckdb

from rollout import cohorts, warehouse
from rollout.core.plan import Phase, Plan
from rollout.notify.emails import recommends_only


@dataclass(frozen=True)
class PhaseWhatIf:
    phase: str
    cohort: str
    packages: int
    accounts: int
    # Cohort accounts short of the phase's requirements (without the factor it asks
    # for, or holding a token it forbids) and not exempt, when its effects show them a
    # banner (warn): all a recommending phase does to them, which requires nothing.
    accounts_to_warn: int
    # The same accounts, when enforcement would require of them: flag them, sign them
    # out, revoke their tokens. 0 for a phase that only recommends (its effects only
    # warn and close TOTP enrolment: rollout.notify.emails.recommends_only), whose
    # emails say so: it stops no one signing in or publishing.
    accounts_to_require: int
    # The live web sessions of those without the factor, when the phase revokes them.
    sessions_to_revoke: int
    # Cohort accounts short of the requirements that the plan exempts: left alone.
    exempt: int
    # The live tokens of those accounts that the phase's token rules forbid, when it
    # revokes tokens.
    tokens_to_revoke: int = 0
    # Of the accounts short of the phase, those without the factor it asks for, when it
    # closes new authenticator-app (TOTP) set-ups to them (as enforcement marks them).
    totp_enrolments_to_close: int = 0

    def row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def simulate_plan(
    con: duckdb.DuckDBPyConnection, plan: Plan, as_of: date, *, allow_gaps: bool = False
) -> list[PhaseWhatIf]:
    """Per phase of ``plan``, in plan order, what it would touch on ``as_of``: the
    registry as enforcement on that day finds it, at the day's start (00:00 UTC), the
    one moment every fact is judged at: accounts made by then, 2FA factors held then
    (one added during the day does not keep an account from being flagged and signed
    out), web sessions live then (one opened during the day is not revoked); tokens
    made by then, not revoked nor expired by then, aged then, and for a rule on tokens
    without 2FA, the account's factors then. A token expiring or revoked during the
    day still works when enforcement runs, and its warnings listed it: it is counted,
    as the preview at that moment counts it; one made during the day is not. A cohort
    rule whose downloads have gaps that day is refused, as a build refuses it, unless
    ``allow_gaps`` (``cohorts.selecting``)."""
    exempt = sorted(plan.exempt_usernames)
    found = []
    for phase in plan.phases:
        rule = plan.cohort(phase.cohort)
        selected, selected_params = cohorts.accounts_query(rule, as_of, cohort="")
        with cohorts.selecting(
            con, rule, as_of, allow_gaps=allow_gaps, weekly_days=plan.metrics.weekly_window_days
        ):
            packages = warehouse.scalar(con, "select count(*) from selected_packages") or 0
            counts = warehouse.one(
                con,
                f"""
                with selected as ({selected}),
                cohort as (
                    select selected.account_id, selected.username
                    from selected
                    inner join registry.accounts as accounts
                        on accounts.id = selected.account_id
                    where accounts.created_at <= $day_start
                ),
                -- Every fact at the day's start, 00:00 UTC, when enforcement on the
                -- day acts: an account made later that day it never saw; one adding
                -- a factor at 10:00 it flagged and signed out first; a session opened
                -- later it did not revoke.
                with_factor as (
                    select distinct account_id from registry.tfa_factors
                    where created_at <= $day_start
                        and (removed_at is null or removed_at > $day_start)
                        and ($two_factor <> 'phishing_resistant' or kind = 'webauthn')
                ),
                lacking as (
                    select account_id from cohort
                    where $two_factor <> 'none'
                        and account_id not in (select account_id from with_factor)
                ),
                -- requirements.offending_token, at the day's start: enforcement on
                -- the day revokes from 00:00 UTC, and its warnings listed the tokens
                -- as they would stand then (requirements.judged_at). A token live at
                -- that instant: made by then (one made later in the day it never saw),
                -- neither revoked by then (one its owner revokes at 10:00 it revokes
                -- first) nor expired (one expiring during the day is revoked, not left
                -- to expire)
                offending as (
                    select tokens.id, tokens.account_id
                    from registry.tokens as tokens
                    inner join cohort using (account_id)
                    where tokens.created_at <= $day_start
                        and (tokens.revoked_at is null or tokens.revoked_at > $day_start)
                        and (tokens.expires_at is null or tokens.expires_at > $day_start)
                        and (
                            ($no_classic and tokens.kind in ('automation', 'publish', 'read_only'))
                            or ($no_unnamed and tokens.name is null)
                            or ($no_bypass and tokens.bypass_2fa)
                            -- aged as enforcement on the day ages it: at its start
                            -- (requirements.judged_at), not at its end
                            or (tokens.created_at
                                < $day_start - to_days(coalesce($max_age_days, 0)::integer)
                                and $max_age_days is not null)
                            -- valid for longer than the cap, from creation to expiry
                            -- (to the microsecond), or never expiring
                            or ($max_lifetime_days is not null
                                and (tokens.expires_at is null
                                    or tokens.expires_at > tokens.created_at
                                        + to_days(coalesce($max_lifetime_days, 0)::integer)))
                            -- the same cap on the tokens that publish alone
                            or ($max_write_lifetime_days is not null and tokens.writes
                                and (tokens.expires_at is null
                                    or tokens.expires_at > tokens.created_at
                                        + to_days(
                                            coalesce($max_write_lifetime_days, 0)::integer)))
                            -- without any second factor, whatever the phase asks:
                            -- at the day's start too, when enforcement judges the token
                            or ($no_write_without and tokens.writes
                                and tokens.account_id not in (
                                    select account_id from registry.tfa_factors
                                    where created_at <= $day_start
                                        and (removed_at is null or removed_at > $day_start)))
                        )
                ),
                short as (
                    select account_id, username from cohort
                    where account_id in (select account_id from lacking)
                        or account_id in (select account_id from offending)
                ),
                targets as (
                    select account_id from short
                    where not list_contains($exempt::varchar[], username)
                )
                select
                    (select count(*) from cohort),
                    (select count(*) from targets),
                    (select count(*) from registry.web_sessions as sessions
                        where $revokes_sessions
                            and sessions.account_id in (select account_id from targets)
                            and sessions.account_id in (select account_id from lacking)
                            and sessions.created_at <= $day_start
                            and (sessions.revoked_at is null
                                or sessions.revoked_at > $day_start)),
                    (select count(*) from short
                        where list_contains($exempt::varchar[], username)),
                    (select count(*) from offending
                        where $revokes_tokens
                            and account_id in (select account_id from targets)),
                    (select count(*) from targets
                        where $closes_totp
                            and account_id in (select account_id from lacking))
                """,
                {
                    "exempt": exempt,
                    "day_start": datetime.combine(as_of, time.min),
                    **_requirement_parameters(phase),
                    **selected_params,
                },
            )
        accounts, short, sessions, exempted, tokens, totp = counts or (0, 0, 0, 0, 0, 0)
        found.append(
            PhaseWhatIf(
                phase=phase.name,
                cohort=phase.cohort,
                packages=packages,
                accounts=accounts,
                accounts_to_warn=short if phase.does("warn") else 0,
                accounts_to_require=0 if recommends_only(phase) else short,
                sessions_to_revoke=sessions,
                exempt=exempted,
                tokens_to_revoke=tokens,
                totp_enrolments_to_close=totp,
            )
        )
    return found


def simulate_warnings(con: duckdb.DuckDBPyConnection, plan: Plan) -> list[str]:
    """What a person reading ``simulate_plan``'s counts should know: a phase's cohort
    whose ``orgs`` names an org the registry (as the warehouse last extracted it) does
    not have counts none of its members, as `plan check` warns and `cohorts build`
    refuses (rollout.cohorts.orgs_not_in_registry)."""
    used = {phase.cohort for phase in plan.phases}
    rules = {name: rule for name, rule in plan.cohorts.items() if name in used}
    return [
        f"{line} (so counted none here; `cohorts build` refuses it until the registry has the org)"
        for line in cohorts.orgs_not_in_extract(con, rules)
    ]


def _requirement_parameters(phase: Phase) -> dict[str, Any]:
    """The phase's requirements and effects as the query's parameters."""
    requires = phase.requires
    return {
        "two_factor": requires.two_factor,
        "no_classic": requires.no_classic_tokens,
        "no_unnamed": requires.no_unnamed_tokens,
        "no_bypass": requires.no_bypass_2fa_tokens,
        "max_age_days": requires.token_max_age_days,
        "max_lifetime_days": requires.token_max_lifetime_days,
        "max_write_lifetime_days": requires.write_token_max_lifetime_days,
        "no_write_without": requires.no_write_tokens_without_2fa,
        "revokes_sessions": phase.does("revoke_sessions"),
        "revokes_tokens": phase.does("revoke_tokens"),
        "closes_totp": phase.does("close_totp_enrolment"),
    }
