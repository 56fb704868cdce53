"""What-if across plans: what each phase of a plan would touch if it ran on a given
day, computed from the warehouse (that day's metrics, the registry as last extracted)
without writing anything. A release manager compares plans, or one plan's thresholds,
before choosing (``rollout plan simulate PLAN --as-of D``).

Each phase's cohort is its rule applied to that day's metrics, not the sticky cohort
the registry keeps: the question is "if this plan had fixed its cohort on D".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, time, timedelta
from typing import Any

import duckdb

from rollout import cohorts, warehouse
from rollout.core.plan import Plan


@dataclass(frozen=True)
class PhaseWhatIf:
    phase: str
    cohort: str
    packages: int
    accounts: int
    # Cohort accounts without 2FA and not exempt: whom the phase would require it of.
    accounts_to_require: int
    # Their live web sessions: what enforcement would revoke.
    sessions_to_revoke: int
    # Cohort accounts without 2FA the plan exempts: left alone, listed by the preview.
    exempt: int

    def row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def simulate_plan(con: duckdb.DuckDBPyConnection, plan: Plan, as_of: date) -> list[PhaseWhatIf]:
    """Per phase of ``plan``, in plan order, what it would touch on ``as_of``: the
    registry as it stood at the end of that day (accounts created, 2FA factors held,
    web sessions live), as far as the registry's times tell."""
    exempt = sorted(plan.exempt_usernames)
    day_end = datetime.combine(as_of + timedelta(days=1), time())
    found = []
    for phase in plan.phases:
        rule = plan.cohort(phase.cohort)
        with cohorts.selecting(con, rule, as_of):
            packages = warehouse.scalar(con, "select count(*) from selected_packages") or 0
            counts = warehouse.one(
                con,
                f"""
                with selected as ({warehouse.render("marts/cohort_accounts")}),
                cohort as (
                    select selected.account_id, selected.username
                    from selected
                    inner join registry.accounts as accounts
                        on accounts.id = selected.account_id
                    where accounts.created_at < $day_end
                ),
                with_2fa as (
                    select distinct account_id from registry.tfa_factors
                    where created_at < $day_end
                        and (removed_at is null or removed_at >= $day_end)
                ),
                without_2fa as (
                    select * from cohort
                    where account_id not in (select account_id from with_2fa)
                ),
                to_require as (
                    select account_id from without_2fa
                    where not list_contains($exempt::varchar[], username)
                )
                select
                    (select count(*) from cohort),
                    (select count(*) from to_require),
                    (select count(*) from registry.web_sessions as sessions
                        where sessions.account_id in (select account_id from to_require)
                            and sessions.created_at < $day_end
                            and (sessions.revoked_at is null
                                or sessions.revoked_at >= $day_end)),
                    (select count(*) from without_2fa
                        where list_contains($exempt::varchar[], username))
                """,
                {"exempt": exempt, "day_end": day_end},
            )
        accounts, to_require, sessions, exempted = counts or (0, 0, 0, 0)
        found.append(
            PhaseWhatIf(
                phase.name, phase.cohort, packages, accounts, to_require, sessions, exempted
            )
        )
    return found
