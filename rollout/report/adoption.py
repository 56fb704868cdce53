"""The adoption marts: what the report, the notebooks and analysts read.

``build_adoption`` rebuilds every table of ``ADOPTION_TABLES`` from the extracted
registry (``registry.*``) and the login events (``stg_logins``), one model under
``sql/marts/`` each, as docs/adoption-marts.md specifies. All of them are replaced in
one transaction: a failing model leaves the previous tables as they were.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import duckdb

from rollout import warehouse
from rollout.core.calendar import StepKind, phase_step, plan_calendar
from rollout.core.clock import naive_utc
from rollout.core.errors import RolloutError
from rollout.core.plan import Plan

# In the order a reader meets them: the daily curve, then its breakdowns and causes.
ADOPTION_TABLES: tuple[str, ...] = (
    "adoption_daily",
    "adoption_by_org",
    "adoption_daily_by_org",
    "compliance_funnel",
    "notice_reach",
    "time_to_comply",
    "brownout_impact",
    "token_readiness",
    "deadline_survival",
    "ledger_activity",
    "publishes_daily",
)

# Made once per build as temp tables, read by more than one mart.
ADOPTION_INPUTS: tuple[str, ...] = (
    "int_memberships_known",
    "int_cohorts_built",
    "int_method_spans",
    "int_first_factors",
    "int_notice_enrolments",
)

# The daily series starts this long before the first of the plan's events of these
# kinds (rollout.core.calendar), so the chart shows where adoption stood before the plan
# first touched anyone; reminders and heads-ups only lead up to one of them.
LEAD_DAYS = 14
LEAD_UP_TO: frozenset[StepKind] = frozenset({"notice", "enforce", "brownout", "elv"})

_PARAMETER = re.compile(r"\$([a-z_]+)")
_REGISTRY_TABLE = re.compile(r"\bregistry\.([a-z_]+)")


@dataclass(frozen=True)
class AdoptionSummary:
    as_of: date
    since: date
    rows: dict[str, int]  # table name -> rows, in ADOPTION_TABLES order
    seconds: float


def adoption_since(plan: Plan) -> date:
    """The first day of adoption_daily: the plan's first milestone (a notice, an
    enforcement, a brown-out, everyone's ELV enrolment) minus ``LEAD_DAYS``, or the
    ELV trial's start when that is earlier."""
    steps = plan_calendar(plan)
    # The calendar always has ELV for all, so there is a first milestone.
    since = min(s.on for s in steps if s.kind in LEAD_UP_TO) - timedelta(days=LEAD_DAYS)
    return min([since, *(s.on for s in steps if s.kind == "trial")])


def _create_plan_tables(con: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    con.execute(
        "create or replace temp table plan_phases "
        "(phase varchar, cohort varchar, notice_on date, enforce_on date, step varchar, "
        "two_factor varchar, days_after_notice integer, snooze_days integer, "
        "token_max_lifetime_days integer, write_token_max_lifetime_days integer)"
    )
    for phase in plan.phases:
        deadline = phase.deadline
        con.execute(
            "insert into plan_phases values ($phase, $cohort, $notice_on, $enforce_on, $step, "
            "$two_factor, $days_after_notice, $snooze_days, $token_max_lifetime_days, "
            "$write_token_max_lifetime_days)",
            {
                "phase": phase.name,
                "cohort": phase.cohort,
                "notice_on": phase.notice_on,
                "enforce_on": phase.enforce_on,
                # The plan_runs step of its enforcement: the SQL matches runs by it
                # rather than spelling the key again.
                "step": phase_step(phase.name),
                "two_factor": phase.requires.two_factor,
                # Per-account deadlines (null: one date for everyone).
                "days_after_notice": deadline.days_after_notice if deadline else None,
                "snooze_days": deadline.snooze_days if deadline else None,
                # Its caps on how long a token is valid (token_readiness; null: none).
                "token_max_lifetime_days": phase.requires.token_max_lifetime_days,
                "write_token_max_lifetime_days": phase.requires.write_token_max_lifetime_days,
            },
        )
    con.execute(
        "create or replace temp table plan_brownouts "
        "(name varchar, starts_at timestamp, ends_at timestamp)"
    )
    for brownout in plan.brownouts:
        con.execute(
            "insert into plan_brownouts values ($name, $starts_at, $ends_at)",
            {
                "name": brownout.name,
                "starts_at": naive_utc(brownout.starts_at),
                "ends_at": naive_utc(brownout.ends_at),
            },
        )


# The registry tables the notebooks (notebooks/*.ipynb) read beside the marts that no mart
# reads: a report copies them too, so that a notebook opened on a report's warehouse reads
# them as fresh as the marts (tests/test_notebooks.py holds the notebooks to this list).
NOTEBOOK_INPUTS = ("brownout_windows",)


def registry_inputs() -> tuple[str, ...]:
    """The registry tables the marts and the notebooks read: all a report's extract needs
    to copy."""
    read = {t for sql in _models().values() for t in _REGISTRY_TABLE.findall(sql)}
    return tuple(sorted(read | set(NOTEBOOK_INPUTS)))


def _models() -> dict[str, str]:
    """Every query a build runs, by the table it makes: the shared inputs first."""
    inputs = {name: warehouse.render(f"intermediate/{name}") for name in ADOPTION_INPUTS}
    return inputs | {name: warehouse.render(f"marts/{name}") for name in ADOPTION_TABLES}


def _drop_plan_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("drop table if exists plan_phases")
    con.execute("drop table if exists plan_brownouts")


def _require_registry(con: duckdb.DuckDBPyConnection, models: dict[str, str]) -> None:
    needed = sorted({t for sql in models.values() for t in _REGISTRY_TABLE.findall(sql)})
    present = {
        row[0]
        for row in con.execute(
            "select table_name from information_schema.tables where table_schema = 'registry'"
        ).fetchall()
    }
    missing = [table for table in needed if table not in present]
    if missing:
        raise RolloutError(
            "the warehouse has no registry extract of "
            + ", ".join(f"registry.{table}" for table in missing)
            + ": extract the registry (rollout.warehouse.extract.extract_registry) before "
            "the adoption marts"
        )


def build_adoption(con: duckdb.DuckDBPyConnection, plan: Plan, as_of: date) -> AdoptionSummary:
    """Replace every table of ``ADOPTION_TABLES`` with its model's rows for ``as_of``."""
    started = time.perf_counter()
    # A report of a day before the plan's lead-up still has that day's figures (it said
    # "no adoption data yet" of a registry with thousands of accounts).
    since = min(adoption_since(plan), as_of)
    values: dict[str, Any] = {"as_of": as_of, "since": since}
    models = _models()
    _require_registry(con, models)
    rows: dict[str, int] = {}
    _create_plan_tables(con, plan)
    try:
        with warehouse.transaction(con):
            for name, sql in models.items():
                # DuckDB refuses parameters a statement does not use: pass its own.
                params = {key: values[key] for key in dict.fromkeys(_PARAMETER.findall(sql))}
                kind = "temp table" if name in ADOPTION_INPUTS else "table"
                con.execute(f"create or replace {kind} {name} as\n{sql}", params)
                if name in ADOPTION_TABLES:
                    rows[name] = warehouse.scalar(con, f"select count(*) from {name}")
    finally:
        _drop_plan_tables(con)
        for name in ADOPTION_INPUTS:
            con.execute(f"drop table if exists temp.{name}")
    return AdoptionSummary(
        as_of=as_of, since=since, rows=rows, seconds=time.perf_counter() - started
    )
