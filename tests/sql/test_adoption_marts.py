"""The adoption marts (docs/adoption-marts.md) beyond their golden cases (those are in
golden/adoption/, run by test_golden.py): the series' first day, property tests of
adoption_daily, of adoption_daily_by_org (forward-filled) and of compliance_funnel
against a plain Python count, the .yml beside each model, and the all-or-nothing
rebuild.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rollout import warehouse
from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.errors import RolloutError
from rollout.core.output import csv_cells
from rollout.core.plan import Plan
from rollout.registry import Registry
from rollout.report import adoption
from rollout.report.adoption import ADOPTION_TABLES, adoption_since, build_adoption
from rollout.report.spec import report_spec

from .golden_harness import GOLDEN_DIR, column_types, load_input

MARTS_DIR = Path(__file__).parents[2] / "sql" / "marts"


# --- the series' first day -----------------------------------------------------------------


def test_since_of_the_reference_plan_is_the_elv_trial_start(plan: Plan) -> None:
    assert adoption_since(plan) == date(2021, 12, 7)


def test_since_is_the_first_milestone_minus_14_days_without_an_earlier_trial(plan: Plan) -> None:
    plan = plan.model_copy(update={"elv": plan.elv.model_copy(update={"trial": None})})
    # top-100's notice on 2022-01-04 comes first.
    assert adoption_since(plan) == date(2021, 12, 21)


# --- adoption_daily against a plain count ---------------------------------------------------

PROPERTY_PLAN = Plan.model_validate(
    {
        "name": "property",
        "cohorts": {"c": {"top_by_dependents": 1}},
        "elv": {"enroll_all_on": "2022-01-20"},
        "phases": [
            {
                "name": "p",
                "cohort": "c",
                "cohort_as_of": "2022-01-19",
                "notice_on": "2022-01-20",
                "enforce_on": "2022-01-30",
                "max_accounts": 10,
            }
        ],
    }
)
SINCE = date(2022, 1, 6)
AS_OF = date(2022, 1, 14)
BASE = datetime(2022, 1, 1)

# Offsets in hours from BASE: some before the series, some after the as-of day.
hours = st.integers(min_value=-24 * 10, max_value=24 * 16)
account_strategy = st.fixed_dictionaries(
    {
        "created": hours,
        "factors": st.lists(
            st.tuples(st.sampled_from(["totp", "webauthn"]), hours, st.none() | hours),
            max_size=3,
        ),
        # Its stays in the cohort: the days it came in and left, in turn (the first an
        # entry), and how many days a backfill moved its first day earlier.
        "cohort": st.none()
        | st.tuples(
            st.lists(st.integers(-3, 14), min_size=1, max_size=5, unique=True).map(sorted),
            st.integers(0, 2),
        ),
    }
)


def _member(cohort: tuple[list[int], int], day: date) -> bool:
    """In the cohort on ``day``: its (backfilled) first day has come, and its latest
    move by then, if any, was an entry."""
    moves, backfilled = cohort
    if day < BASE.date() + timedelta(days=moves[0] - backfilled):
        return False
    done = [i for i, offset in enumerate(moves) if BASE.date() + timedelta(days=offset) <= day]
    return not done or done[-1] % 2 == 0


def _cohort_rows(accounts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], ...]:
    """registry.cohort_memberships as the builds leave it (the first day, the latest
    departure unless it came back since) and the ledger's entries and departures."""
    memberships, actions = [], []
    for i, a in enumerate(accounts, start=1):
        if a["cohort"] is None:
            continue
        moves, backfilled = a["cohort"]
        days = [BASE.date() + timedelta(days=offset) for offset in moves]
        memberships.append(
            {
                "cohort": "c",
                "account_id": i,
                "first_qualified_on": days[0] - timedelta(days=backfilled),
                "left_on": days[-1] if len(days) % 2 == 0 else None,
            }
        )
        for n, day in enumerate(days):
            kind = "enter" if n % 2 == 0 else "leave"
            actions.append(
                {
                    "id": len(actions) + 1,
                    "effect_key": f"cohort-{kind}:c:{i}:{day}",
                    "action": f"cohort_{kind}",
                    "account_id": i,
                    "phase": "c",
                    "created_at": datetime.combine(day, time(6)),
                }
            )
    return memberships, actions


def _at(offset_hours: int) -> datetime:
    return BASE + timedelta(hours=offset_hours)


def _replace_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    types = column_types(con, "registry", table)
    con.execute(f"delete from registry.{table}")
    if not rows:
        return
    data = pa.Table.from_pylist(rows)
    con.register("property_rows", data)
    try:
        columns = ", ".join(data.column_names)
        casts = ", ".join(f"cast({c} as {types[c]})" for c in data.column_names)
        con.execute(f"insert into registry.{table} ({columns}) select {casts} from property_rows")
    finally:
        con.unregister("property_rows")


def _expected_daily(accounts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """adoption_daily by brute force: every population, day and account."""
    rows = []
    end = datetime.combine(AS_OF + timedelta(days=1), time())
    for population in ("all", "cohort:c"):
        day = SINCE
        while day <= AS_OF:
            day_end = datetime.combine(day + timedelta(days=1), time())
            counts = {"accounts": 0, "totp": 0, "webauthn": 0, "new": 0}
            for account in accounts:
                if population == "all":
                    member = _at(account["created"]) < min(day_end, end)
                else:
                    if account["cohort"] is None:
                        continue
                    member = _member(account["cohort"], day)
                if not member:
                    continue
                counts["accounts"] += 1
                kinds = {
                    kind
                    for kind, created, removed in account["factors"]
                    if _at(created) < day_end and (removed is None or _at(removed) >= day_end)
                }
                if "webauthn" in kinds:
                    counts["webauthn"] += 1
                elif "totp" in kinds:
                    counts["totp"] += 1
                created_days = [_at(c).date() for _, c, _ in account["factors"] if _at(c) < end]
                if created_days and min(created_days) == day:
                    counts["new"] += 1
            with_2fa = counts["totp"] + counts["webauthn"]
            share = with_2fa / counts["accounts"] if counts["accounts"] else 0.0
            rows.append(
                (
                    day,
                    population,
                    counts["accounts"],
                    with_2fa,
                    counts["totp"],
                    counts["webauthn"],
                    round(share, 9),
                    counts["new"],
                )
            )
            day += timedelta(days=1)
    return rows


PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _replace_factors(con: duckdb.DuckDBPyConnection, accounts: list[dict[str, Any]]) -> None:
    """registry.tfa_factors: each drawn account's (kind, created, removed) factors."""
    _replace_rows(
        con,
        "tfa_factors",
        [
            {
                "account_id": i,
                "kind": kind,
                "created_at": _at(created),
                "removed_at": None if removed is None else _at(removed),
            }
            for i, a in enumerate(accounts, start=1)
            for kind, created, removed in a["factors"]
        ],
    )


@PROPERTY_SETTINGS
@given(accounts=st.lists(account_strategy, min_size=1, max_size=6))
def test_adoption_daily_matches_a_plain_count(
    fresh_warehouse: duckdb.DuckDBPyConnection, accounts: list[dict[str, Any]]
) -> None:
    con = fresh_warehouse
    _replace_rows(
        con,
        "accounts",
        [
            {"id": i, "username": f"u{i}", "created_at": _at(a["created"])}
            for i, a in enumerate(accounts, start=1)
        ],
    )
    _replace_factors(con, accounts)
    # The cohort exists (as a population) whenever it has a row, even a later one.
    memberships, actions = _cohort_rows(accounts)
    _replace_rows(con, "cohort_memberships", memberships)
    _replace_rows(con, "actions", actions)
    assert adoption_since(PROPERTY_PLAN) == SINCE
    build_adoption(con, PROPERTY_PLAN, AS_OF)
    actual = [
        (*row[:6], round(row[6], 9), row[7])
        for row in con.execute(
            "select * from adoption_daily order by population <> 'all', day"
        ).fetchall()
    ]
    expected = _expected_daily(accounts)
    if not any(a["cohort"] for a in accounts):
        expected = [row for row in expected if row[1] == "all"]
    assert actual == expected


# --- adoption_daily_by_org, forward-filled, against a plain count -----------------------------

ORGS = ("o1", "o2", "o3")
member_strategy = st.fixed_dictionaries(
    {
        "factors": st.lists(
            st.tuples(st.sampled_from(["totp", "webauthn"]), hours, st.none() | hours),
            max_size=3,
        ),
        # org index -> (joined, removed): at most one membership per org, as the registry
        "orgs": st.dictionaries(
            st.integers(0, len(ORGS) - 1), st.tuples(hours, st.none() | hours), max_size=2
        ),
    }
)


def _org_figures(accounts: list[dict[str, Any]], org: int, day: date) -> tuple[Any, ...]:
    """One org's figures on one day by brute force, as adoption_daily_by_org's columns."""
    end = datetime.combine(AS_OF + timedelta(days=1), time())
    day_end = datetime.combine(day + timedelta(days=1), time())
    members = totp = webauthn = new = 0
    for account in accounts:
        if org not in account["orgs"]:
            continue
        joined, removed = account["orgs"][org]
        if not (_at(joined) < day_end and (removed is None or _at(removed) >= day_end)):
            continue
        members += 1
        kinds = {
            kind
            for kind, created, removed_at in account["factors"]
            if _at(created) < day_end and (removed_at is None or _at(removed_at) >= day_end)
        }
        if "webauthn" in kinds:
            webauthn += 1
        elif "totp" in kinds:
            totp += 1
        created_days = [_at(c).date() for _, c, _ in account["factors"] if _at(c) < end]
        if created_days and min(created_days) == day:
            new += 1
    share = (totp + webauthn) / members if members else 0.0
    return (members, totp + webauthn, totp, webauthn, round(share, 9), new)


@PROPERTY_SETTINGS
@given(accounts=st.lists(member_strategy, min_size=1, max_size=6))
def test_adoption_daily_by_org_forward_filled_matches_a_plain_count(
    fresh_warehouse: duckdb.DuckDBPyConnection, accounts: list[dict[str, Any]]
) -> None:
    con = fresh_warehouse
    _replace_rows(
        con,
        "orgs",
        [
            {"id": i, "name": name, "created_at": BASE - timedelta(days=30)}
            for i, name in enumerate(ORGS)
        ],
    )
    _replace_rows(
        con,
        "org_members",
        [
            {
                "org_id": org,
                "account_id": i,
                "role": "developer",
                "joined_at": _at(joined),
                "removed_at": None if removed is None else _at(removed),
            }
            for i, a in enumerate(accounts, start=1)
            for org, (joined, removed) in a["orgs"].items()
        ],
    )
    _replace_factors(con, accounts)
    build_adoption(con, PROPERTY_PLAN, AS_OF)
    rows = con.execute("select * from adoption_daily_by_org order by org, day").fetchall()

    days = [SINCE + timedelta(days=n) for n in range((AS_OF - SINCE).days + 1)]
    for org, name in enumerate(ORGS):
        sparse = [(row[0], (*row[2:6], round(row[6], 9), row[7])) for row in rows if row[1] == name]
        # Sparse: within the series, each row differs from the one before (all 0 at first).
        assert all(SINCE <= day <= AS_OF for day, _ in sparse)
        figures = [f for _, f in sparse]
        zeros = (0, 0, 0, 0, 0.0, 0)
        assert all(a != b for a, b in zip([zeros, *figures], figures, strict=False)), sparse
        # Forward-filled: every day's figures are the last row's on or before it.
        filled = []
        for day in days:
            before = [f for row_day, f in sparse if row_day <= day]
            filled.append(before[-1] if before else zeros)
        assert filled == [_org_figures(accounts, org, day) for day in days], name


# --- compliance_funnel: a chain of subsets, against a plain count -----------------------------

FUNNEL_PLAN = Plan.model_validate(
    {
        "name": "funnel-property",
        "cohorts": {"c": {"top_by_dependents": 1}},
        "elv": {"enroll_all_on": "2022-01-20"},
        "phases": [
            {
                "name": "p",
                "cohort": "c",
                "cohort_as_of": "2022-01-04",
                "notice_on": "2022-01-05",
                "enforce_on": "2022-01-10",
                "max_accounts": 10,
            }
        ],
    }
)
FUNNEL_NOTICE, FUNNEL_ENFORCE = date(2022, 1, 5), date(2022, 1, 10)
# The columns of the funnel's stages, in order: each counts a subset of the one before.
FUNNEL_CHAIN = (
    "accounts",
    "without_2fa_at_notice",
    "notified",
    "without_2fa_at_enforcement",
    "enforced",
    "enrolled_after_enforcement",
)
REQUIREMENT_ACTIONS = ("tfa_required", "tfa_required_withdrawn", "tfa_required_cleared")

funnel_account_strategy = st.fixed_dictionaries(
    {
        "factors": st.lists(
            st.tuples(st.sampled_from(["totp", "webauthn"]), hours, st.none() | hours),
            max_size=3,
        ),
        "cohort": st.none() | st.tuples(st.integers(-3, 12), st.none() | st.integers(-3, 14)),
        "notice": st.none()
        | st.tuples(st.sampled_from(["sent", "sent", "failed", "skipped"]), hours),
        # The phase's audit rows of the account: enforced, rolled back, enforced again...
        "requirement": st.lists(st.tuples(st.sampled_from(REQUIREMENT_ACTIONS), hours), max_size=4),
    }
)


def _expected_funnel(accounts: list[dict[str, Any]]) -> dict[str, int]:
    """compliance_funnel's stages and `required` by brute force, account by account."""
    end = datetime.combine(AS_OF + timedelta(days=1), time())

    def has_2fa_at_start(account: dict[str, Any], day: date) -> bool:
        # 2FA on the day before, as known at the end of AS_OF.
        for _, created, removed in account["factors"]:
            if _at(created) >= end or _at(created).date() >= day:
                continue
            if removed is None or _at(removed) >= end or _at(removed).date() >= day:
                return True
        return False

    def required_since(account: dict[str, Any]) -> datetime | None:
        # Rows of one instant in the order written (the ledger's ids: the test writes
        # an account's rows in list order): a rollback and an enforcement again at one
        # instant leave the account required (int_phase_requirements_known).
        known = [
            (action, (_at(h), n))
            for n, (action, h) in enumerate(account["requirement"])
            if _at(h) < end
        ]
        withdrawn = [key for action, key in known if action != "tfa_required"]
        last = max(withdrawn, default=None)
        starts = [
            key[0]
            for action, key in known
            if action == "tfa_required" and (last is None or key > last)
        ]
        return min(starts, default=None)

    counts = dict.fromkeys((*FUNNEL_CHAIN, "required"), 0)
    for account in accounts:
        since = required_since(account)
        counts["required"] += since is not None
        if account["cohort"] is None:
            continue
        first = BASE.date() + timedelta(days=account["cohort"][0])
        left = account["cohort"][1]
        left_on = None if left is None else BASE.date() + timedelta(days=left)
        if left_on is not None and left_on > AS_OF:
            left_on = None  # a departure after AS_OF is not known yet
        if not (first <= FUNNEL_NOTICE and (left_on is None or left_on > FUNNEL_NOTICE)):
            continue
        stages = [
            True,
            not has_2fa_at_start(account, FUNNEL_NOTICE),
            account["notice"] is not None
            and account["notice"][0] == "sent"
            and _at(account["notice"][1]) < end,
            FUNNEL_ENFORCE <= AS_OF and not has_2fa_at_start(account, FUNNEL_ENFORCE),
            since is not None,
            since is not None and any(since < _at(c) < end for _, c, _ in account["factors"]),
        ]
        for column, reached in zip(FUNNEL_CHAIN, stages, strict=True):
            if not reached:
                break
            counts[column] += 1
    return counts


def _funnel_accounts(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """int_funnel_accounts' rows for AS_OF: build_adoption drops the temp tables it reads,
    so they are made again here, as build_adoption makes them."""
    adoption._create_plan_tables(con, FUNNEL_PLAN)
    inputs = ("int_memberships_known", "int_notice_enrolments")
    try:
        for name in inputs:
            con.execute(
                f"create or replace temp table {name} as\n"
                + warehouse.render(f"intermediate/{name}"),
                {"as_of": AS_OF},
            )
        result = con.execute(warehouse.render("intermediate/int_funnel_accounts"), {"as_of": AS_OF})
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    finally:
        for name in inputs:
            con.execute(f"drop table if exists temp.{name}")
        adoption._drop_plan_tables(con)


@PROPERTY_SETTINGS
@given(accounts=st.lists(funnel_account_strategy, min_size=1, max_size=6))
# Rolled back and enforced again at one instant: required (the row written last).
@example(
    accounts=[
        {
            "factors": [],
            "cohort": None,
            "notice": None,
            "requirement": [("tfa_required_withdrawn", 0), ("tfa_required", 0)],
        }
    ]
)
def test_each_funnel_stage_is_a_subset_of_the_one_before(
    fresh_warehouse: duckdb.DuckDBPyConnection, accounts: list[dict[str, Any]]
) -> None:
    con = fresh_warehouse
    _replace_rows(
        con,
        "accounts",
        [
            {"id": i, "username": f"u{i}", "created_at": BASE - timedelta(days=30)}
            for i in range(1, len(accounts) + 1)
        ],
    )
    _replace_factors(con, accounts)
    _replace_rows(
        con,
        "cohort_memberships",
        [
            {
                "cohort": "c",
                "account_id": i,
                "first_qualified_on": BASE.date() + timedelta(days=a["cohort"][0]),
                "left_on": None
                if a["cohort"][1] is None
                else BASE.date() + timedelta(days=a["cohort"][1]),
            }
            for i, a in enumerate(accounts, start=1)
            if a["cohort"] is not None
        ],
    )
    _replace_rows(
        con,
        "notifications",
        [
            {
                "id": i,
                "account_id": i,
                "email": "phase_notice",
                "phase": "p",
                "occasion": "",
                "state": a["notice"][0],
                "created_at": _at(a["notice"][1]),
                "updated_at": _at(a["notice"][1]),
                "sent_at": _at(a["notice"][1]) if a["notice"][0] == "sent" else None,
            }
            for i, a in enumerate(accounts, start=1)
            if a["notice"] is not None
        ],
    )
    _replace_rows(
        con,
        "actions",
        [
            {
                "id": n,
                "effect_key": f"k{n}",
                "action": action,
                "account_id": i,
                "phase": "p",
                "created_at": _at(h),
            }
            for n, (i, action, h) in enumerate(
                (i, action, h)
                for i, a in enumerate(accounts, start=1)
                for action, h in a["requirement"]
            )
        ],
    )
    build_adoption(con, FUNNEL_PLAN, AS_OF)
    [row] = _rows_of(con, "select * from compliance_funnel")

    # The chart's stages (reports/adoption.yml) are this chain, from its second step.
    assert [key for key, _ in report_spec().funnel_stages] == list(FUNNEL_CHAIN[1:])
    chain = [row[column] for column in FUNNEL_CHAIN]
    assert all(later <= earlier for earlier, later in pairwise(chain)), row
    assert row["enrolled_after_enforcement"] <= row["enforced"] <= row["required"]

    # Per account: a stage is reached only where the one before is.
    per_account = _funnel_accounts(con)
    for account in per_account:
        reached = [True, *(account[column] for column in FUNNEL_CHAIN[1:])]
        assert reached == sorted(reached, reverse=True), account
    for column in FUNNEL_CHAIN[1:]:
        assert row[column] == sum(a[column] for a in per_account), column
    assert row["accounts"] == len(per_account)

    expected = _expected_funnel(accounts)
    assert {c: row[c] for c in expected} == expected


def _rows_of(con: duckdb.DuckDBPyConnection, query: str) -> list[dict[str, Any]]:
    result = con.execute(query)
    names = [d[0] for d in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


# --- runs of one instant ------------------------------------------------------------------


@pytest.mark.parametrize("applied_again", [False, True], ids=["rolled-back", "applied-again"])
def test_a_phase_rolled_back_or_applied_again_at_one_instant(
    registry: Registry,
    factories: None,
    con: duckdb.DuckDBPyConnection,
    plan: Plan,
    applied_again: bool,
) -> None:
    """Under a clock that stands still (the demo's), a rollback starts and finishes at
    the instant of the apply before it, or an apply again at the instant of the rollback
    before it, and their audit rows share that instant. By time alone the funnel's last
    run was whichever the warehouse met first (rolled_back_at of a phase applied again,
    or none of one rolled back: the runs are read here in both orders), and a
    requirement written at the instant of its withdrawal counted as withdrawn (0
    required of a phase applied again). The order the runs were recorded in
    (plan_runs.seq) and the ledger's (actions.id) decide."""
    from rollout.phases import enforce
    from rollout.warehouse.extract import extract_registry
    from tests.factories import AccountFactory

    for name in ("alice", "dave"):
        AccountFactory(username=name, sessions=1, in_cohort="top-100")
    at = datetime(2022, 2, 1, 12)
    with use_clock(SimulatedClock(at - timedelta(hours=1) if applied_again else at)):
        enforce.enforce_phase(registry, plan, "top-100", expect=2, actor="rm")
    with use_clock(SimulatedClock(at)):
        enforce.rollback_phase(registry, plan, "top-100", actor="rm")
        if applied_again:
            enforce.enforce_phase(registry, plan, "top-100", expect=2, actor="rm")
    extract_registry(con, registry)
    expected = (
        {"required": 2, "rolled_back_at": None}
        if applied_again
        else {
            "required": 0,
            "rolled_back_at": at,
        }
    )
    for _ in ("as extracted", "reversed"):
        build_adoption(con, plan, at.date())
        [row] = _rows_of(
            con, "select required, rolled_back_at from compliance_funnel where phase = 'top-100'"
        )
        assert row == expected
        con.execute(
            "create or replace table registry.plan_runs as select * exclude (n) from "
            "(select *, row_number() over () as n from registry.plan_runs) order by n desc"
        )


# --- the models' metadata and the rebuild ----------------------------------------------------


@pytest.mark.parametrize("table", ADOPTION_TABLES)
def test_yml_describes_the_table(
    table: str, fresh_warehouse: duckdb.DuckDBPyConnection, plan: Plan
) -> None:
    meta = yaml.safe_load((MARTS_DIR / f"{table}.yml").read_text())
    assert meta["model"] == table
    assert meta["description"] and meta["grain"]
    build_adoption(fresh_warehouse, plan, date(2022, 3, 1))
    assert list(meta["columns"]) == list(column_types(fresh_warehouse, "main", table))


def test_every_column_of_a_mart_the_report_writes_as_csv_has_a_cell_rule(
    fresh_warehouse: duckdb.DuckDBPyConnection, plan: Plan
) -> None:
    """The marts' real types (built from their SQL, not the report tests' DDL): a BLOB
    or a list in one would be refused when the report writes its CSV (csv_cells)."""
    build_adoption(fresh_warehouse, plan, date(2022, 3, 1))
    for mart, columns in report_spec().marts.items():
        select = ", ".join(f'"{c}"' for c in columns)
        table = fresh_warehouse.sql(f"select {select} from {mart}").to_arrow_table()
        for name, column in zip(table.column_names, table.columns, strict=True):
            csv_cells(column, f"{mart}.{name}")


def test_a_failing_model_leaves_the_previous_tables(
    fresh_warehouse: duckdb.DuckDBPyConnection, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    con = fresh_warehouse
    load_input(
        con, GOLDEN_DIR / "adoption" / "daily_series" / "inputs" / "registry" / "accounts.csv"
    )
    build_adoption(con, plan, date(2022, 1, 12))
    before = {t: con.execute(f"select * from {t}").fetchall() for t in ADOPTION_TABLES}
    con.execute("delete from registry.accounts")

    real_render = warehouse.render

    def broken_last_model(name: str) -> str:
        if name == f"marts/{ADOPTION_TABLES[-1]}":
            return "select * from no_such_table"
        return real_render(name)

    monkeypatch.setattr(adoption.warehouse, "render", broken_last_model)
    with pytest.raises(duckdb.CatalogException):
        build_adoption(con, plan, date(2022, 1, 12))
    after = {t: con.execute(f"select * from {t}").fetchall() for t in ADOPTION_TABLES}
    assert after == before
    assert any(accounts > 0 for _day, _population, accounts, *_ in after["adoption_daily"])


def test_needs_a_registry_extract(con: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    with pytest.raises(RolloutError, match=r"registry\.cohort_memberships"):
        build_adoption(con, plan, date(2022, 3, 1))
    tables = {row[0] for row in con.execute("show tables").fetchall()}
    assert not tables & set(ADOPTION_TABLES)
