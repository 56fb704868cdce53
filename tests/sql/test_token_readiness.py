"""token_readiness's maintainers are the cohort's accounts on $as_of as every adoption
mart reads them (int_memberships_known: an account that left and came back is out of
the cohort in between), so its counts agree with adoption_daily's cohort population
of the day."""

from __future__ import annotations

from datetime import date

import duckdb

from rollout.core.plan import Plan
from rollout.report.adoption import build_adoption

LEFT_ON = date(2022, 2, 10)
BACK_ON = date(2022, 2, 20)


def test_an_account_out_of_the_cohort_that_day_is_no_maintainer_of_it(
    fresh_warehouse: duckdb.DuckDBPyConnection, plan: Plan
) -> None:
    """ann and bob in top-100 since 02-01; bob left on 02-10 and came back on 02-20, so
    the registry's row is his first day and no departure (the ledger's cohort_leave and
    cohort_enter say when he was out). bob publishes with a legacy token used 02-12. On
    02-15 top-100 is ann alone: 1 maintainer, publishing with no legacy token, ready;
    on 02-25 both, bob publishing with his legacy token."""
    con = fresh_warehouse
    con.execute(
        "insert into registry.accounts (id, username, created_at) values "
        "(1, 'ann', timestamp '2021-01-01'), (2, 'bob', timestamp '2021-01-01')"
    )
    con.execute(
        "insert into registry.cohort_memberships "
        "(id, cohort, account_id, first_qualified_on, left_on) values "
        "(1, 'top-100', 1, date '2022-02-01', null), (2, 'top-100', 2, date '2022-02-01', null)"
    )
    con.execute(
        "insert into registry.actions (id, effect_key, action, account_id, phase, created_at) "
        "values "
        f"(1, 'cohort-leave:top-100:2:{LEFT_ON}', 'cohort_leave', 2, 'top-100', "
        f"timestamp '{LEFT_ON} 03:00'), "
        f"(2, 'cohort-enter:top-100:2:{BACK_ON}', 'cohort_enter', 2, 'top-100', "
        f"timestamp '{BACK_ON} 03:00')"
    )
    con.execute(
        "insert into registry.tokens (id, account_id, name, kind, created_at, last_used_at) "
        "values (1, 2, null, 'publish', timestamp '2021-06-01', timestamp '2022-02-12 09:00')"
    )
    readiness = {}
    for day in (date(2022, 2, 15), date(2022, 2, 25)):
        build_adoption(con, plan, day)
        [[cohort_accounts]] = con.execute(
            "select accounts from adoption_daily where population = 'cohort:top-100' "
            "and day = $day",
            {"day": day},
        ).fetchall()
        [readiness[day]] = con.execute(
            "select maintainers, publishing_legacy, ready from token_readiness "
            "where cohort = 'top-100'"
        ).fetchall()
        assert readiness[day][0] == cohort_accounts
    assert readiness == {date(2022, 2, 15): (1, 0, 1), date(2022, 2, 25): (2, 1, 1)}
