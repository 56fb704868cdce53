"""The compliance funnel counts the factor a phase asks for: for a security-key phase
(two_factor: phishing_resistant) an account with TOTP alone is still short, at the
notice and at enforcement, and enrolling TOTP is no enrolment (as deadline_survival
counts). On the phase_funnel golden case, its phase-top asking a security key."""

from __future__ import annotations

from pathlib import Path

import duckdb

from rollout.core.plan import parse_plan
from rollout.report.adoption import build_adoption
from tests.sql.golden_harness import load_case, load_inputs

CASE = Path(__file__).parent / "golden" / "adoption" / "phase_funnel"


def test_a_security_key_phase_s_funnel_counts_only_security_keys(
    fresh_warehouse: duckdb.DuckDBPyConnection,
) -> None:
    """By hand, from the case's description: of the cohort at the notice (10), only jon
    held a key (ann's is TOTP): 9 without one. Notified, of those: ben, cat, dan, eve,
    fay, ida, kim (7; ann got no notice). Within 7 days of the notice only cat's key came
    (01-16; ben's and dan's factors are TOTP): enrolled_7d 1; eve's key came 01-25,
    after enforcement: enrolled_by_enforcement 1. Without a key at the start of 01-24,
    of the notified: all but cat = 6; of those, required (eve, fay) = 2 enforced, and eve
    enrolled her key after it: 1."""
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
        "enrolled_after_enforcement from compliance_funnel where phase = 'phase-top'"
    ).fetchone()
    assert row == (10, 9, 7, 1, 1, 6, 2, 1)
