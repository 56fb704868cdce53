"""Hand-made adoption marts (docs/adoption-marts.md is the contract) and the report
built from them: shared by tests/test_reporting.py and tests/test_report_browser.py.

The marts are created with the contract's columns and filled with rows made by hand,
so the tests pin the report, not the SQL that builds the marts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from rollout.core.plan import Plan
from rollout.report.adoption import adoption_since
from rollout.report.reporting import ReportFiles, build_report, report_dir
from rollout.report.spec import report_spec
from rollout.warehouse import open_warehouse

AS_OF = date(2022, 5, 31)
HOSTILE_ORG = '<b>x</b>&"'
CSV_HOSTILE_ORG = 'comma, "quote"\nand a new line'
HOSTILE_ACTIVITY = "email <script>alert(1)</script> sent"

MART_DDL = {
    "adoption_daily": "day date, population varchar, accounts bigint, with_2fa bigint, "
    "totp bigint, webauthn bigint, share double, newly_enrolled bigint",
    "adoption_by_org": "org varchar, members bigint, with_2fa bigint, share double, "
    "owners bigint, owners_with_2fa bigint, tfa_enforced_at timestamp",
    "compliance_funnel": "phase varchar, cohort varchar, notice_on date, enforce_on date, "
    "accounts bigint, without_2fa_at_notice bigint, notified bigint, enrolled_7d bigint, "
    "enrolled_14d bigint, enrolled_30d bigint, enrolled_by_enforcement bigint, "
    "without_2fa_at_enforcement bigint, enforced bigint, sessions_revoked bigint, "
    "tokens_revoked bigint, enrolled_after_enforcement bigint, still_without bigint, "
    "never_noticed bigint, required bigint, "
    "rolled_back_at timestamp",
    "notice_reach": "phase varchar, cohort varchar, notified bigint, delivered bigint, "
    "bounced bigint, dropped bigint, suppressed bigint, too_late bigint, never_reached bigint, "
    "never_reached_enforced bigint, deleted bigint",
    "time_to_comply": "phase varchar, days_after_notice integer, accounts bigint",
    "brownout_impact": "brownout varchar, period varchar, starts_at timestamp, "
    "ends_at timestamp, logins bigint, elv_challenges bigint, elv_completed bigint, "
    "elv_failed bigint, elv_abandoned bigint, enrolments bigint, enrolments_until timestamp, "
    "enrolments_complete boolean",
    "token_readiness": "cohort varchar, maintainers bigint, publishing_legacy bigint, "
    "publishing_personal bigint, with_automation bigint, ready bigint, "
    "classic_in_use bigint, bypass_in_use bigint, with_webauthn bigint, "
    "never_expiring_in_use bigint, token_cap_days integer, over_cap_in_use bigint",
    "deadline_survival": "phase varchar, days_since_notice integer, accounts bigint, "
    "still_without bigint, snoozed bigint, share_still_without double",
    "ledger_activity": "day date, activity varchar, count bigint",
    "publishes_daily": "day date, via varchar, token_kind varchar, second_factor varchar, "
    "publishes bigint, publishers bigint, packages bigint",
}


def create_marts(con: duckdb.DuckDBPyConnection) -> None:
    """The report's marts, empty, with the contract's columns."""
    assert set(MART_DDL) == set(report_spec().marts)
    for table, columns in MART_DDL.items():
        con.execute(f"create or replace table {table} ({columns})")


def _logistic(day: date, middle: date, low: float, high: float, width: float) -> float:
    return low + (high - low) / (1 + math.exp(-(day - middle).days / width))


def adoption_rows(plan: Plan, as_of: date) -> Iterator[tuple[object, ...]]:
    """A plausible npm-like adoption curve per population, one row a day."""
    since = adoption_since(plan)
    top100_enforce, high_enforce = (p.enforce_on for p in plan.phases)
    populations = {
        "all": (2_000_000, lambda d: _logistic(d, date(2022, 3, 1), 0.06, 0.2, 20)),
        "cohort:top-100": (
            250,
            lambda d: (
                _logistic(d, date(2022, 1, 15), 0.55, 0.93, 6)
                + (0.05 if d >= top100_enforce else 0)
            ),
        ),
        "cohort:high-impact": (
            8000,
            lambda d: (
                _logistic(d, date(2022, 4, 5), 0.3, 0.85, 10) + (0.08 if d >= high_enforce else 0)
            ),
        ),
    }
    for population, (size, curve) in populations.items():
        previous = None
        day = since
        while day <= as_of:
            accounts = size + (day - since).days * (100 if population == "all" else 0)
            with_2fa = round(accounts * min(curve(day), 1.0))
            webauthn = with_2fa // 5
            newly = 0 if previous is None else max(with_2fa - previous, 0)
            yield (
                day,
                population,
                accounts,
                with_2fa,
                with_2fa - webauthn,
                webauthn,
                with_2fa / accounts,
                newly,
            )
            previous = with_2fa
            day += timedelta(days=1)


def fill_marts(con: duckdb.DuckDBPyConnection, plan: Plan, as_of: date = AS_OF) -> None:
    create_marts(con)
    daily = pd.DataFrame(
        list(adoption_rows(plan, as_of)), columns=list(report_spec().marts["adoption_daily"])
    )
    con.register("daily_rows", daily)
    con.execute("insert into adoption_daily select * from daily_rows")
    con.unregister("daily_rows")
    orgs = [(f"org-{i:02d}", 40 - i, (40 - i) // 2, 0.5, 2, 1, None) for i in range(30)]
    orgs.append((HOSTILE_ORG, 500, 250, 0.5, 3, 3, datetime(2022, 3, 2, 9, 30)))
    orgs.append((CSV_HOSTILE_ORG, 450, 450, 1.0, 1, 1, datetime(2022, 4, 1)))
    con.executemany("insert into adoption_by_org values (?, ?, ?, ?, ?, ?, ?)", orgs)
    con.execute(
        "insert into compliance_funnel values "
        "('top-100', 'top-100', '2022-01-04', '2022-02-01', 250, 100, 100, 30, 45, 70, 75, "
        "25, 25, 40, 0, 15, 10, 0, 27, null), "
        "('high-impact', 'high-impact', '2022-03-15', '2022-05-03', 8000, 5600, 5550, 1200, "
        "2100, 3500, 4500, 1050, 1000, 1500, 0, 600, 500, 0, 1100, null)"
    )
    # Reach: of high-impact's 5,600 accounts (warned, or required), 5,380 reached and 220
    # never: 95 bounced, 40 dropped, 25 suppressed, 30 skipped as too late (the send came
    # after their last day), 30 for other reasons; 130 of the 220 enforced (locked out
    # unwarned). 12 more the registry deleted since, counted apart.
    con.execute(
        "insert into notice_reach values "
        "('top-100', 'top-100', 100, 96, 2, 1, 1, 1, 7, 4, 0), "
        "('high-impact', 'high-impact', 5550, 5380, 95, 40, 25, 30, 220, 130, 12)"
    )
    con.executemany(
        "insert into time_to_comply values (?, ?, ?)",
        [("top-100", d, max(12 - d // 3, 1)) for d in range(0, 35)]
        + [("high-impact", d, max(200 - 4 * d, 5)) for d in range(0, 60)],
    )
    # The reference plan's: brown-out 1's enrolment window is cut at brown-out 2's start
    # (7 days), brown-out 2's runs 8 days, so its baseline is 3 weeks earlier.
    con.execute(
        "insert into brownout_impact values "
        "('brownout-1', 'baseline', '2022-02-09 00:00', '2022-02-10 00:00', 1200000, 41000, "
        "39500, 900, 600, 5600, '2022-02-16 00:00', true), "
        "('brownout-1', 'brownout', '2022-02-16 00:00', '2022-02-17 00:00', 1150000, 610000, "
        "571000, 21000, 18000, 21400, '2022-02-23 00:00', true), "
        "('brownout-2', 'baseline', '2022-02-02 00:00', '2022-02-03 00:00', 1190000, 40000, "
        "38200, 1000, 800, 6100, '2022-02-10 00:00', true), "
        "('brownout-2', 'brownout', '2022-02-23 00:00', '2022-02-24 00:00', 1180000, 598000, "
        "575000, 12000, 11000, 14800, '2022-03-03 00:00', true)"
    )
    con.execute(
        "insert into token_readiness values "
        "('high-impact', 8000, 900, 1400, 2600, 5700, 3100, 2500, 1900, 2900, null, null), "
        "('top-100', 250, 12, 30, 160, 208, 140, 150, 120, 130, null, null)"
    )
    con.executemany(
        "insert into ledger_activity values (?, ?, ?)",
        [
            (date(2022, 1, 4), "email phase_notice sent", 100),
            (date(2022, 2, 1), "tfa_required", 25),
            (date(2022, 2, 1), "revoke_session", 40),
            (date(2022, 2, 13), "email brownout_heads_up sent", 51000),
            (date(2022, 2, 13), "email brownout_heads_up failed", 12),
            (date(2022, 3, 1), "elv_enrolled", 1_700_000),
            (date(2022, 5, 3), "tfa_required", 1100),
            (date(2022, 5, 30), "org_member_removed", 7),
            (date(2022, 5, 30), HOSTILE_ACTIVITY, 1),
        ],
    )
    # Publishes in the 30 days to AS_OF (600 in all; 450 through tokens without a second
    # factor: 75%), and one on the day the window starts, which is left out.
    con.executemany(
        "insert into publishes_daily values (?, ?, ?, ?, ?, ?, ?)",
        [
            (date(2022, 5, 1), "token", "automation", "none", 999, 1, 1),
            (date(2022, 5, 2), "token", "automation", "none", 300, 40, 60),
            (date(2022, 5, 30), "token", "granular", "none", 150, 20, 25),
            (date(2022, 5, 30), "session", None, "webauthn", 90, 30, 40),
            (date(2022, 5, 31), "trusted", None, "none", 60, 5, 9),
        ],
    )


def make_warehouse(tmp_path: Path, plan: Plan, *, empty: bool = False) -> Path:
    path = tmp_path / "warehouse.duckdb"
    with open_warehouse(path) as con:
        if empty:
            create_marts(con)
        else:
            fill_marts(con, plan)
    return path


def run_report(tmp_path: Path, plan: Plan, *, empty: bool = False) -> ReportFiles:
    warehouse = make_warehouse(tmp_path, plan, empty=empty)
    with open_warehouse(warehouse, read_only=True) as con:
        return build_report(con, plan, AS_OF, report_dir(tmp_path / "reports", AS_OF))
