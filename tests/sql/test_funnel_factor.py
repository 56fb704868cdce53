"""The compliance funnel as the phase enforces: for a security-key phase
(two_factor: phishing_resistant) an account with TOTP alone is still short, at the
notice and at enforcement, and enrolling TOTP is no enrolment (as deadline_survival
counts); with per-account deadlines, each account is judged "at enforcement" on its own
deadline, snooze included. Worked by hand on two golden cases' inputs."""

from __future__ import annotations

from pathlib import Path

import duckdb

from rollout.core.plan import parse_plan
from rollout.report.adoption import build_adoption
from tests.sql.golden_harness import load_case, load_inputs

CASE = Path(__file__).parent / "golden" / "adoption" / "phase_funnel"
DEADLINES = Path(__file__).parent / "golden" / "adoption" / "deadline_survival"


def test_a_security_key_phase_s_funnel_counts_only_security_keys(
    fresh_warehouse: duckdb.DuckDBPyConnection,
) -> None:
    """By hand, from the case's description: of the cohort at the notice (10), only jon
    held a key (ann's is TOTP): 9 without one. Notified, of those: ben, cat, dan, eve,
    fay, ida, kim (7; ann got no notice). Within 7 days of the notice only cat's key came
    (01-16; ben's and dan's factors are TOTP): enrolled_7d 1; eve's key came 01-25,
    after enforcement: enrolled_by_enforcement 1. Without a key at the start of 01-24,
    of the notified: all but cat = 6; of those, required (eve, fay) = 2 enforced, and eve
    enrolled her key after it: 1. Still without a key on 02-14, of the cohort then (ann,
    ben, cat, dan, eve, fay, hal, ida, jon, max): all but the key holders cat, eve and
    jon = 7, where any factor would leave 3; of those 7, never sent the notice by then:
    ann (none queued), hal (his comes 02-15) and max (failed) = 3."""
    case = load_case(CASE)
    text = (CASE / "plan.yaml").read_text()
    asked = text.replace(
        "    enforce_on: 2022-01-24\n",
        "    enforce_on: 2022-01-24\n    requires: {two_factor: phishing_resistant}\n",
        1,
    )
    plan, problems = parse_plan(asked)
    assert plan is not None and problems == []
    load_inputs(fresh_warehouse, case)
    build_adoption(fresh_warehouse, plan, case.parameters["as_of"])
    row = fresh_warehouse.execute(
        "select accounts, without_2fa_at_notice, notified, enrolled_7d, "
        "enrolled_by_enforcement, without_2fa_at_enforcement, enforced, "
        "enrolled_after_enforcement, still_without, never_noticed "
        "from compliance_funnel where phase = 'phase-top'"
    ).fetchone()
    assert row == (10, 9, 7, 1, 1, 6, 2, 1, 7, 3)


def test_a_per_account_deadline_phase_judges_each_account_at_its_own_deadline(
    fresh_warehouse: duckdb.DuckDBPyConnection,
) -> None:
    """The deadline_survival case (phase own: 3 days from each notice, bob snoozed 2
    days), its eight accounts in the cohort from 02-28, on 03-06. Notified while without
    2FA at the start of 03-01: ann, bob, eve, gus (03-01 10:00) and dan (03-03) = 5; cat
    had TOTP since 2022, fay's notice was skipped, hal's came 03-07. Own deadlines: ann,
    eve and gus 03-04, bob 03-06 (snoozed), dan 03-06. At the start of each: ann (TOTP
    03-02) and gus (03-01) hold one, bob his key of 03-05 (before his snoozed deadline:
    judged on the plan's first deadline, 03-04, he counted as a miss), eve none (hers
    was removed 03-01), dan none: eve and dan = 2."""
    case = load_case(DEADLINES)
    plan, problems = parse_plan((DEADLINES / "plan.yaml").read_text())
    assert plan is not None and problems == []
    load_inputs(fresh_warehouse, case)
    fresh_warehouse.execute(
        "insert into registry.cohort_memberships (cohort, account_id, first_qualified_on) "
        "select 'everyone', id, date '2023-02-28' from registry.accounts"
    )
    build_adoption(fresh_warehouse, plan, case.parameters["as_of"])
    row = fresh_warehouse.execute(
        "select accounts, without_2fa_at_notice, notified, without_2fa_at_enforcement "
        "from compliance_funnel where phase = 'own'"
    ).fetchone()
    assert row == (8, 7, 5, 2)


def test_a_factor_removed_before_the_deadline_leaves_the_account_without_it(
    fresh_warehouse: duckdb.DuckDBPyConnection,
) -> None:
    """The deadline_survival case with ann's TOTP (made 03-02 15:00, during day 1)
    removed 03-03 12:00: at the start of her deadline day (03-04, day 3) she holds no
    factor, so the deadline's enforcement meets her. The funnel counts her without 2FA at
    enforcement (ann, eve, dan = 3); the curve, read "as enforcement reads it", counts
    her from day 3 on too: day 2 (the start of 03-03, her TOTP held) bob, eve, dan = 3;
    day 3 ann, bob, eve, dan = 4 (bob snoozed: the accounts not snoozed, ann, eve and
    dan, are the funnel's 3); day 4 of ann, bob, eve (dan's clock stops at day 3): all 3;
    day 5: ann, eve = 2 (bob's key of 03-05 held)."""
    case = load_case(DEADLINES)
    plan, problems = parse_plan((DEADLINES / "plan.yaml").read_text())
    assert plan is not None and problems == []
    load_inputs(fresh_warehouse, case)
    fresh_warehouse.execute(
        "update registry.tfa_factors set removed_at = timestamp '2023-03-03 12:00:00' "
        "where account_id = 1"
    )
    fresh_warehouse.execute(
        "insert into registry.cohort_memberships (cohort, account_id, first_qualified_on) "
        "select 'everyone', id, date '2023-02-28' from registry.accounts"
    )
    build_adoption(fresh_warehouse, plan, case.parameters["as_of"])
    [[at_enforcement]] = fresh_warehouse.execute(
        "select without_2fa_at_enforcement from compliance_funnel where phase = 'own'"
    ).fetchall()
    curve = fresh_warehouse.execute(
        "select days_since_notice, accounts, still_without, snoozed "
        "from deadline_survival where phase = 'own' order by days_since_notice"
    ).fetchall()
    assert at_enforcement == 3
    assert curve == [
        (0, 4, 4, 0),
        (1, 4, 4, 0),
        (2, 4, 3, 1),
        (3, 4, 4, 1),
        (4, 3, 3, 1),
        (5, 3, 2, 0),
    ]
